//! Ingest's in-flight limit (`INGEST_MAX_IN_FLIGHT`), which bounds its memory under a flood:
//! beyond it a request is answered 503 with `Retry-After` at once (not 500, not left waiting),
//! the probes still answer, and every receipt answered 200 is in the queue.

use e2e::{TestApp, receipt_event, send, serve};
use loyalty::queue::Stream;
use loyalty_service::server::HttpLimits;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: u32 = 4;

fn limits() -> HttpLimits {
    HttpLimits {
        header_timeout_secs: 10,
        max_connections: 4096,
    }
}

/// A receipt whose body is sent in two halves: the request holds its slot until the second.
struct HeldReceipt {
    stream: TcpStream,
    rest: Vec<u8>,
}

impl HeldReceipt {
    async fn open(addr: std::net::SocketAddr, token: &str, event_id: &str) -> Self {
        let body = serde_json::to_vec(&receipt_event(
            event_id,
            &format!("rc-{event_id}"),
            None,
            "100",
        ))
        .expect("json");
        let head = format!(
            "POST /api/v2/receipts HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let half = body.len() / 2;
        stream.write_all(head.as_bytes()).await.expect("head");
        stream.write_all(&body[..half]).await.expect("first half");
        Self {
            stream,
            rest: body[half..].to_vec(),
        }
    }

    /// Sends the rest of the body and returns the answer's status line.
    async fn finish(mut self) -> String {
        self.stream
            .write_all(&self.rest)
            .await
            .expect("second half");
        let mut answer = String::new();
        self.stream
            .read_to_string(&mut answer)
            .await
            .expect("answer");
        answer.lines().next().unwrap_or_default().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_beyond_the_in_flight_limit_are_answered_503_with_retry_after_and_every_accepted_receipt_is_queued()
 {
    let app = TestApp::spawn_with(|config| config.max_in_flight = LIMIT).await;
    let org = app.org().await;
    let token = app.pos_token(org, "pos").await;
    let (addr, _server) = serve(
        ingest::app(app.state.clone()),
        limits(),
        std::future::pending(),
    )
    .await;
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    let post = |event_id: String| {
        let event = receipt_event(&event_id, &format!("rc-{event_id}"), None, "100");
        send(
            http.post(format!("{base}/api/v2/receipts"))
                .bearer_auth(&token)
                .json(&event),
        )
    };
    // The token is looked up once, so the held requests below wait on their bodies only.
    let (status, body) = post("warm-up".into()).await;
    assert_eq!(status, 200, "{body}");

    // Every slot taken by a receipt whose body has not all arrived yet. A slot is given back just
    // after its answer is sent, so one opened at that instant can be refused: it is replaced.
    let mut held = Vec::new();
    for i in 0..LIMIT * 10 {
        if held.len() == LIMIT as usize {
            break;
        }
        let receipt = HeldReceipt::open(addr, &token, &format!("held-{i}")).await;
        let mut first = [0u8; 1];
        let answered =
            tokio::time::timeout(Duration::from_millis(100), receipt.stream.peek(&mut first)).await;
        if answered.is_err() {
            held.push(receipt);
        }
    }
    assert_eq!(held.len(), LIMIT as usize, "every slot is held");
    // Each request's slot is taken as its head is served: wait until the next one is refused.
    let mut refused = None;
    let mut attempts_accepted = 0;
    for attempt in 0..100 {
        let response = http
            .post(format!("{base}/api/v2/receipts"))
            .bearer_auth(&token)
            .json(&receipt_event(
                &format!("over-{attempt}"),
                "rc-over",
                None,
                "100",
            ))
            .send()
            .await
            .expect("answered");
        if response.status() == 503 {
            refused = Some(response);
            break;
        }
        assert_eq!(response.status(), 200, "an answer other than 200 or 503");
        attempts_accepted += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = refused.expect("a request beyond the limit is refused");
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: serde_json::Value = refused.json().await.expect("JSON body");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    // The probes are outside the limit.
    let (status, body) = send(http.get(format!("{base}/healthz"))).await;
    assert_eq!(status, 200, "{body}");

    // The held receipts complete and are accepted; then there is room again.
    for receipt in held {
        let line = receipt.finish().await;
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    }
    let (status, body) = post("after".into()).await;
    assert_eq!(status, 200, "{body}");

    // A burst of 200 at once over the limit of 4: each is answered, 200 or 503, never anything
    // else; and the queue holds exactly the receipts answered 200.
    let answers = futures::future::join_all((0..200).map(|i| post(format!("burst-{i}")))).await;
    let mut accepted = 0;
    for (status, body) in &answers {
        match status {
            200 => accepted += 1,
            503 => assert_eq!(body["error"]["code"], "unavailable", "{body}"),
            other => panic!("answered {other}: {body}"),
        }
    }
    let shed = answers.len() - accepted;
    println!("a burst of 200 over a limit of {LIMIT}: {accepted} accepted, {shed} shed");
    assert!(
        accepted > 0,
        "a burst is served up to the limit, not refused whole"
    );

    // Nothing answered 200 is lost: the warm-up, the attempts before the refusal, the held ones,
    // the one after, and the burst's.
    let expected = 1 + attempts_accepted + LIMIT as usize + 1 + accepted;
    let queue = app.state.broker.topology().main(Stream::Receipts);
    app.wait_queue_depth(&queue, u32::try_from(expected).expect("count"))
        .await;
}
