//! Faults injected for real: a worker process killed with SIGKILL mid-stream, and the broker
//! closing every connection of the service, and two workers competing for one queue. Every receipt
//! that got a 200 is applied exactly once.

use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::{TestApp, binary, cut_broker_connections, receipt_event};

/// Posts a receipt the way the POS does: again and again until it gets its 200.
async fn post_until_accepted(app: &TestApp, token: &str, event: &serde_json::Value) {
    for _ in 0..100 {
        if app.post_receipt(token, event).await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("receipt {} never accepted", event["id"]);
}

#[tokio::test]
async fn a_worker_killed_mid_stream_loses_and_doubles_nothing() {
    let app = TestApp::spawn().await;
    let n = 300;
    let shop = app.shop_with_bills(n).await;
    let (org, token, bills) = (shop.org, shop.token.as_str(), &shop.bills);
    for (i, bill) in bills.iter().enumerate() {
        post_until_accepted(
            &app,
            token,
            &receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(*bill), "100"),
        )
        .await;
    }
    let mut worker = Command::new(binary("workers"))
        .env("DATABASE_URL", &app.db.url)
        .env("AMQP_URL", app.state.config.backends.amqp_url.join(","))
        .env("QUEUE_PREFIX", &app.state.config.backends.queue_prefix)
        .env("WORKER_CONCURRENCY", "8")
        .env("METRICS_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("worker starts");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while app.processed(org).await < 30 {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker process applied nothing"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.kill().expect("SIGKILL");
    worker.wait().expect("reaped");
    let at_kill = app.processed(org).await;
    assert!(
        at_kill < n as i64,
        "killed mid-stream, not after the end ({at_kill})"
    );

    let _replacement = app.start_worker();
    app.assert_applied_exactly_once(&shop, n).await;
}

#[tokio::test]
async fn cut_broker_connections_lose_and_double_nothing() {
    if Command::new("rabbitmqctl").arg("version").output().is_err() {
        eprintln!(
            "SKIPPED: rabbitmqctl is not installed here, so the broker's connections cannot be cut"
        );
        return;
    }
    let app = TestApp::spawn().await;
    let n = 200;
    let shop = app.shop_with_bills(n).await;
    let (token, bills) = (shop.token.as_str(), &shop.bills);
    let _worker = app.start_worker();
    let prefix = app.state.config.backends.queue_prefix.clone();
    for (i, bill) in bills.iter().enumerate() {
        if i == n / 2 {
            let cut = cut_broker_connections(&prefix);
            assert!(
                cut >= 2,
                "the publisher's and the worker's connections were cut ({cut})"
            );
        }
        post_until_accepted(
            &app,
            token,
            &receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(*bill), "100"),
        )
        .await;
    }
    app.assert_applied_exactly_once(&shop, n).await;
}

#[tokio::test]
async fn two_workers_on_one_queue_apply_each_receipt_once() {
    let app = TestApp::spawn().await;
    let n = 300;
    let shop = app.shop_with_bills(n).await;
    let (token, bills) = (shop.token.as_str(), &shop.bills);
    let _first = app.start_worker();
    let _second = app.start_worker();
    let posts = bills.iter().enumerate().map(|(i, bill)| {
        let event = receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(*bill), "100");
        let app = &app;
        async move { post_until_accepted(app, token, &event).await }
    });
    futures::future::join_all(posts).await;
    // The POS resends a third of them: the competing consumers see those too.
    for (i, bill) in bills.iter().enumerate().step_by(3) {
        post_until_accepted(
            &app,
            token,
            &receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(*bill), "100"),
        )
        .await;
    }
    app.assert_applied_exactly_once(&shop, n).await;
}
