//! What the network can do to ingest: thousands of silent connections, connections kept alive and
//! left idle, more connections than the bound, a shutdown with requests in flight, and bursts of
//! metrics scrapes. The service is served as the binary serves it, on a real listener.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use e2e::{TestApp, receipt_event, send, serve};
use loyalty_service::server::HttpLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limits(header_timeout_secs: u64, max_connections: u32) -> HttpLimits {
    HttpLimits {
        header_timeout_secs,
        max_connections,
    }
}

/// Waits until the server closes `stream` (end of stream or reset); how long that took, or None if
/// it was still open at `deadline`.
async fn closed_by_server(stream: &mut TcpStream, deadline: Instant) -> Option<Instant> {
    let mut buf = [0_u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(Instant::now()),
            // Bytes (an answer) before the close: keep reading.
            Ok(Ok(_)) => {}
        }
    }
}

/// Whether the server still holds `stream` open (nothing to read, no end of stream).
fn still_open(stream: &TcpStream) -> bool {
    let mut buf = [0_u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_silent_connections_are_closed_after_the_header_timeout_while_probes_and_receipts_answer()
 {
    const SILENT: usize = 3000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "pos").await;
    let (addr, _server) = serve(
        ingest::app(app.state.clone()),
        limits(HEADER_TIMEOUT.as_secs(), 10_000),
        std::future::pending(),
    )
    .await;

    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let stream = TcpStream::connect(addr).await.expect("connect");
        silent.push((Instant::now(), stream));
    }

    // A new connection for every request, as a probe or a cash register without keep-alive makes.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let started = Instant::now();
        let (status, body) = send(http.get(format!("http://{addr}/healthz"))).await;
        assert_eq!(status, 200, "{body}");
        let event = receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), None, "100");
        let (status, body) = send(
            http.post(format!("http://{addr}/api/v2/receipts"))
                .bearer_auth(&token)
                .json(&event),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        slowest = slowest.max(started.elapsed());
    }
    let open = silent.iter().filter(|(_, s)| still_open(s)).count();
    println!(
        "{SILENT} silent connections; slowest probe + receipt pair {slowest:?}; {open} still open"
    );
    assert_eq!(
        open, SILENT,
        "the requests were answered while every silent one was open"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "a probe and a receipt took {slowest:?}"
    );

    // Then the server closes each of them once its header timeout has passed, not before.
    let deadline = Instant::now() + HEADER_TIMEOUT + Duration::from_secs(10);
    let closes = futures::future::join_all(silent.iter_mut().map(|(opened, stream)| async {
        let closed = closed_by_server(stream, deadline).await;
        closed.map(|at| at - *opened)
    }))
    .await;
    let lived: Vec<Duration> = closes.into_iter().flatten().collect();
    assert_eq!(lived.len(), SILENT, "every silent connection is closed");
    let shortest = lived.iter().min().copied().unwrap_or_default();
    let longest = lived.iter().max().copied().unwrap_or_default();
    println!("silent connections lived {shortest:?} to {longest:?}");
    assert!(
        shortest >= HEADER_TIMEOUT - Duration::from_millis(50),
        "{shortest:?}"
    );
}

#[tokio::test]
async fn a_kept_alive_connection_is_closed_when_it_sends_no_next_request_within_the_header_timeout()
{
    let app = TestApp::spawn().await;
    let (addr, _server) = serve(
        ingest::app(app.state.clone()),
        limits(1, 100),
        std::future::pending(),
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: ingest\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    let mut buf = [0_u8; 1024];
    while !String::from_utf8_lossy(&answer).contains(r#"{"status":"ok"}"#) {
        let n = stream.read(&mut buf).await.expect("answer");
        assert_ne!(n, 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    let answered = Instant::now();
    assert!(still_open(&stream), "kept alive after the answer");

    let closed = closed_by_server(&mut stream, answered + Duration::from_secs(5))
        .await
        .expect("the idle connection is closed");
    let idle = closed - answered;
    assert!(idle >= Duration::from_millis(950), "closed after {idle:?}");
}

#[tokio::test]
async fn a_body_that_stalls_is_answered_400_and_its_connection_freed() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "pos").await;
    let (addr, _server) = serve(
        ingest::app(app.state.clone()),
        limits(30, 100),
        std::future::pending(),
    )
    .await;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // A head promising 1000 bytes, one byte of them, then nothing.
    let head = format!(
        "POST /api/v2/receipts HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let sent = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0_u8; 1024];
    let deadline = sent + ingest::edge::BODY_STALL_TIMEOUT + Duration::from_secs(5);
    while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    let waited = sent.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "after {waited:?}: {answer}"
    );
    assert!(answer.contains(r#""code":"bad_request""#), "{answer}");
    assert!(
        waited >= ingest::edge::BODY_STALL_TIMEOUT - Duration::from_millis(100),
        "answered after {waited:?}, before the body stalled that long"
    );
    let queue = app
        .state
        .broker
        .topology()
        .main(loyalty::queue::Stream::Receipts);
    let published = app.queue_depth(&queue).await;
    assert_eq!(published, 0, "a cut-off receipt is never published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bound_are_closed_at_once_and_the_server_answers_when_they_go() {
    let app = TestApp::spawn().await;
    let (addr, _server) = serve(
        ingest::app(app.state.clone()),
        limits(30, 100),
        std::future::pending(),
    )
    .await;
    let held = connect_all(addr, 100).await;
    // The server takes connections in order: the first hundred hold the permits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut over = connect_all(addr, 50).await;
    let deadline = Instant::now() + Duration::from_secs(2);
    for stream in &mut over {
        assert!(
            closed_by_server(stream, deadline).await.is_some(),
            "a connection over the bound was left open"
        );
    }
    assert!(held.iter().all(still_open), "the ones within it stay");

    // The held ones hang up; their permits come back and the service answers again.
    drop(held);
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match http.get(format!("http://{addr}/healthz")).send().await {
            Ok(r) if r.status() == 200 => break,
            answer => assert!(
                Instant::now() < deadline,
                "no answer after the connections closed: {answer:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect_all(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        streams.push(TcpStream::connect(addr).await.expect("connect"));
    }
    streams
}

#[tokio::test]
async fn on_shutdown_idle_connections_close_at_once_and_a_request_in_flight_is_answered() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "pos").await;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (addr, server) = serve(ingest::app(app.state.clone()), limits(30, 100), async {
        let _ = stopped.await;
    })
    .await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    // A receipt whose body is half sent when the shutdown comes.
    let body = serde_json::to_vec(&receipt_event("ev-1", "rc-1", None, "100")).expect("json");
    let mut busy = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/v2/receipts HTTP/1.1\r\nHost: ingest\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    busy.write_all(head.as_bytes()).await.expect("head");
    let (first, rest) = body.split_at(body.len() / 2);
    busy.write_all(first).await.expect("half the body");
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.send(()).expect("server running");
    let soon = Instant::now() + Duration::from_secs(2);
    assert!(
        closed_by_server(&mut idle, soon).await.is_some(),
        "the idle connection is closed at once"
    );
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no new connection is taken"
    );
    busy.write_all(rest).await.expect("the rest of the body");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), busy.read_to_string(&mut answer))
        .await
        .expect("answered and closed")
        .expect("read");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the server ends once its connections are closed")
        .expect("server task");
}

/// How many times this process has read the queues' depths from the broker.
fn depth_reads() -> u64 {
    loyalty_service::telemetry::metrics()
        .render()
        .lines()
        .find_map(|l| l.strip_prefix("loyalty_queue_depth_reads_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_metrics_scrapes_reads_the_queue_depths_from_the_broker_once() {
    let app = TestApp::spawn().await;
    let (addr, _server) = serve(
        ingest::health::metrics_router(app.state.clone()),
        limits(10, 1000),
        std::future::pending(),
    )
    .await;
    let before = depth_reads();
    let http = reqwest::Client::new();
    let scrapes = futures::future::join_all((0..200).map(|_| async {
        let response = http
            .get(format!("http://{addr}/metrics"))
            .send()
            .await
            .expect("scrape");
        (response.status(), response.text().await.unwrap_or_default())
    }))
    .await;
    for (status, text) in &scrapes {
        assert_eq!(*status, 200);
        assert!(text.contains("loyalty_queue_messages{"), "{text}");
    }
    let reads = depth_reads() - before;
    assert!(
        (1..=2).contains(&reads),
        "200 scrapes read the broker {reads} times"
    );
}

#[tokio::test]
async fn metrics_are_served_on_their_own_address_not_the_apis() {
    let app = TestApp::spawn().await;
    let (status, _) = send(app.http.get(app.url("/metrics"))).await;
    assert_eq!(status, 404);
    let (addr, _server) = serve(
        ingest::health::metrics_router(app.state.clone()),
        limits(10, 100),
        std::future::pending(),
    )
    .await;
    let (status, body) = send(app.http.get(format!("http://{addr}/metrics"))).await;
    assert_eq!(status, 200);
    assert!(
        body.as_str()
            .is_some_and(|t| t.contains("loyalty_queue_consumers{")),
        "{body}"
    );
}
