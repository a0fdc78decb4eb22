//! The operators' dashboard: the summary it reads, the page it is, and an operator replaying a dead
//! letter with it in headless Chromium.

use e2e::{ADMIN_TOKEN, TestApp, management_answers, receipt_event, run_browser_script};
use loyalty::queue::Stream;
use serde_json::{Value, json};

/// A status's row of a summary's counts.
fn counts<'a>(summary: &'a Value, list: &str, status: &str) -> &'a Value {
    summary[list]
        .as_array()
        .expect("counts")
        .iter()
        .find(|c| c["status"] == status)
        .unwrap_or_else(|| panic!("no {status} in {list}: {summary}"))
}

#[tokio::test]
async fn the_summary_counts_by_status_and_lists_the_latest_failures() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "Kassa").await;
    let customer = app.customer(org, "Alex").await;
    let bill = app.open_bill(org, &customer, 1000).await;
    let worker = app.start_worker();
    // One applied, then the same receipt again under a new event id (sent after the first was
    // applied: sent together, either could be the one applied), and one with no bill.
    let (sale, again, lost) = (
        receipt_event("ev-sale", "rc-sale", Some(bill), "1000"),
        receipt_event("ev-again", "rc-sale", Some(bill), "1000"),
        receipt_event("ev-lost", "rc-lost", None, "300"),
    );
    assert_eq!(app.post_receipt(&token, &sale).await.0, 200);
    app.wait_receipt(org, "ev-sale", "processed").await;
    for event in [again, lost] {
        assert_eq!(app.post_receipt(&token, &event).await.0, 200);
    }
    app.wait_receipt(org, "ev-again", "duplicate").await;
    app.wait_receipt(org, "ev-lost", "unmatched").await;
    worker.stop().await;
    // And one that failed every attempt.
    app.bury_receipt(
        org,
        receipt_event("ev-dead", "rc-dead", None, "50"),
        "database: connection refused",
    )
    .await;

    // The management plugin, where it runs, reports a new queue's figures within its statistics
    // interval (5 s by default): wait for them, then read everything from one summary.
    let management = management_answers().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let summary = loop {
        let (status, summary) = app.get("/admin/v1/ops/summary").await;
        assert_eq!(status, 200, "{summary}");
        let complete = summary["queues"].as_array().is_some_and(|queues| {
            queues
                .iter()
                .all(|q| q["messages_unacknowledged"].is_number())
        });
        if !management || complete || std::time::Instant::now() > deadline {
            break summary;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    for (name, expected) in [
        ("processed", 1),
        ("duplicate", 1),
        ("unmatched", 1),
        ("ignored", 0),
        ("retrying", 0),
        ("dead", 1),
    ] {
        let row = counts(&summary, "receipts", name);
        for window in ["last_minute", "last_hour", "last_day"] {
            assert_eq!(row[window], expected, "{name} {window}: {summary}");
        }
    }
    // The accrual's message waits for a notifier.
    assert_eq!(
        counts(&summary, "notifications", "pending")["last_minute"],
        1
    );
    assert_eq!(counts(&summary, "notifications", "sent")["last_day"], 0);
    let failed = &summary["failures"]["receipts"];
    assert_eq!(failed.as_array().map(Vec::len), Some(1), "{summary}");
    assert_eq!(failed[0]["event_id"], "ev-dead");
    assert_eq!(failed[0]["org_id"], org);
    assert_eq!(failed[0]["attempts"], 6);
    assert_eq!(failed[0]["last_error"], "database: connection refused");
    assert_eq!(summary["failures"]["notifications"], json!([]));

    // The queues, as RabbitMQ reports them.
    assert_eq!(summary["queues_error"], Value::Null);
    let queues = summary["queues"].as_array().expect("queues");
    assert_eq!(queues.len(), app.state.broker.topology().queues().len());
    let dead = app.state.broker.topology().dead(Stream::Receipts);
    let dead_row = queues
        .iter()
        .find(|q| q["name"] == dead.as_str())
        .expect("dead queue");
    assert_eq!(
        (dead_row["stream"].clone(), dead_row["role"].clone()),
        (json!("receipts"), json!("dead"))
    );
    assert_eq!(dead_row["messages_ready"], 1);
    // Unacknowledged counts and rates come from the management plugin where it runs.
    assert_eq!(summary["management"], management);
    for q in queues {
        for field in ["messages_unacknowledged", "publish_rate", "ack_rate"] {
            assert_eq!(q[field].is_number(), management, "{field} of {q}");
        }
    }

    // Another organization's view is empty; the summary needs the token.
    let (_, other) = app
        .get(&format!("/admin/v1/ops/summary?org={}", org + 1))
        .await;
    assert_eq!(counts(&other, "receipts", "processed")["last_day"], 0);
    assert_eq!(other["failures"]["receipts"], json!([]));
    let anonymous = app
        .http
        .get(app.url("/admin/v1/ops/summary"))
        .send()
        .await
        .expect("sent");
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn the_summary_still_answers_while_rabbitmq_is_unreachable() {
    let app = TestApp::spawn().await;
    // The same service with a broker handle pointing nowhere, as when RabbitMQ is down.
    let mut config = (*app.state.config).clone();
    config.backends.amqp_url = vec!["amqp://guest:guest@127.0.0.1:1/%2f".into()];
    let state = ingest::AppState::new(app.db.pool.clone(), config).expect("ingest state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        axum::serve(listener, ingest::app(state))
            .await
            .expect("serve")
    });

    let (status, summary) = e2e::send(
        app.http
            .get(format!("{base}/admin/v1/ops/summary"))
            .bearer_auth(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["queues"], Value::Null);
    assert_eq!(summary["queues_error"], "RabbitMQ is not reachable");
    assert_eq!(counts(&summary, "receipts", "processed")["last_day"], 0);
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    for path in ["/admin", "/admin/"] {
        let page = app.http.get(app.url(path)).send().await.expect("sent");
        assert_eq!(page.status(), 200, "{path}");
        let headers = page.headers().clone();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        let csp = headers["content-security-policy"].to_str().expect("ascii");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
            "{csp}"
        );
        assert_eq!(headers["x-frame-options"], "DENY");
        let html = page.text().await.expect("body");
        assert!(html.contains(r#"<script src="/admin/dashboard.js" defer></script>"#));
        // No inline script the policy would have to allow.
        assert_eq!(html.matches("<script").count(), 1);
    }
    for (path, kind) in [
        ("/admin/dashboard.js", "text/javascript; charset=utf-8"),
        ("/admin/dashboard.css", "text/css; charset=utf-8"),
    ] {
        let asset = app.http.get(app.url(path)).send().await.expect("sent");
        assert_eq!(asset.status(), 200, "{path}");
        assert_eq!(asset.headers()["content-type"], kind);
    }
    // The page holds no data: what it shows needs the token.
    let js = app
        .http
        .get(app.url("/admin/dashboard.js"))
        .send()
        .await
        .expect("sent");
    assert!(!js.text().await.expect("body").contains(ADMIN_TOKEN));
}

#[tokio::test]
#[cfg_attr(
    not(has_browser),
    ignore = "needs Node.js, Chromium and `npm ci --prefix tests/browser`"
)]
async fn an_operator_sees_a_dead_letter_and_replays_it_in_the_browser() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let customer = app.customer(org, "Alex").await;
    let bill = app.open_bill(org, &customer, 1000).await;
    let error = "database: connection refused";
    app.bury_receipt(
        org,
        receipt_event("ev-browser", "rc-browser", Some(bill), "1000"),
        error,
    )
    .await;
    let _worker = app.start_worker();

    let args = [app.base.as_str(), ADMIN_TOKEN, "ev-browser", error].map(String::from);
    let seen = run_browser_script("dashboard.mjs", &args, "dashboard")
        .finish()
        .await;
    assert_eq!(seen["wrong_token_refused"], true);
    assert_eq!(seen["token_in_session_storage"], true);
    assert_eq!(seen["token_in_local_storage"], false);
    assert!(
        seen["dead_letter_row"]
            .as_str()
            .is_some_and(|r| r.contains("ev-browser") && r.contains(error)),
        "{seen}"
    );
    assert_eq!(seen["health_class"], "bad", "{seen}");
    assert!(
        seen["health"]
            .as_str()
            .is_some_and(|h| h.contains("1 dead receipt waiting for a replay")),
        "{seen}"
    );
    assert_eq!(seen["dead_tile"], "1");
    assert_eq!(seen["phone_overflow"], false, "{seen}");
    assert!(
        seen["flash"]
            .as_str()
            .is_some_and(|f| f.contains("Replayed 1 receipt message: ev-browser")),
        "{seen}"
    );
    assert_eq!(seen["dead_letter_gone"], true);
    assert_eq!(seen["dead_tile_after"], "0");
    assert_eq!(seen["refreshed_by_itself"], true);
    assert_eq!(seen["token_after_signout"], Value::Null);

    // The replay really happened: the receipt was applied once, the dead-letter queue is empty.
    app.wait_receipt(org, "ev-browser", "processed").await;
    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{customer}"))
        .await;
    assert_eq!(read["bonuses"], json!(20));
    app.wait_queue_depth(&app.state.broker.topology().dead(Stream::Receipts), 0)
        .await;
}
