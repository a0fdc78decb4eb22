//! The real binaries as an operator runs them, each in its own process: what `/metrics` shows at
//! the first scrape, what `--help` lists, what the logs look like through a pipe.

use std::process::Stdio;
use std::time::{Duration, Instant};

use e2e::{BOT_TOKEN, TestApp, binary, receipt_event};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A port nothing listens on now, for a binary's `METRICS_ADDR`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `name` started on the test's database and queues, with `env` besides, its logs piped to the
/// test.
fn start(app: &TestApp, name: &str, metrics_port: u16, env: &[(&str, &str)]) -> Child {
    let backends = &app.state.config.backends;
    Command::new(binary(name))
        .envs(env.iter().copied())
        .env("DATABASE_URL", &app.db.url)
        .env("AMQP_URL", backends.amqp_url.join(","))
        .env("QUEUE_PREFIX", &backends.queue_prefix)
        .env("TOKEN_KEYS", e2e::TOKEN_KEYS)
        .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
        .env_remove("RUST_LOG")
        .env_remove("RUST_LOG_FORMAT")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts")
}

/// The first scrape of the binary's `/metrics` (connections refused while it starts are not one).
async fn first_scrape(port: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(answer) => return answer.text().await.expect("metrics text"),
            Err(err) => assert!(Instant::now() < deadline, "no /metrics: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_workers_first_scrape_counts_the_receipts_applied_before_it() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "shop").await;
    let customer = app.customer(org, "Alex").await;
    let bill = app.open_bill(org, &customer, 100).await;
    let event = receipt_event("ev-1", "rc-1", Some(bill), "100");
    assert_eq!(app.post_receipt(&token, &event).await.0, 200);

    let port = free_port();
    let _workers = start(&app, "workers", port, &[]);
    app.wait_receipt(org, "ev-1", "processed").await;

    let metrics = first_scrape(port).await;
    assert!(
        metrics.contains("loyalty_receipts_total{status=\"processed\"} 1\n"),
        "{metrics}"
    );

    // Within a fold's interval (1 s), the status change log is folded into the summary's counts.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (logged, kept): (i64, Option<i64>) = sqlx::query_as(
            "select (select count(*) from status_changes),
                    (select sum(n)::bigint from status_counts
                     where org_id = $1 and kind = 'receipts' and status = 'processed' and span < 3600)",
        )
        .bind(org)
        .fetch_one(&app.db.pool)
        .await
        .expect("status tables");
        if (logged, kept) == (0, Some(1)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not folded: {logged} logged, {kept:?} kept"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Bot API that answers every message as sent.
async fn telegram_that_accepts_everything() -> String {
    let api = axum::Router::new().fallback(|| async {
        axum::Json(json!({"ok": true, "result": {"message_id": 1, "chat": {"id": 1}}}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, api).await.expect("serve") });
    url
}

#[tokio::test]
async fn the_notifiers_first_scrape_counts_the_messages_sent_before_it() {
    let app = TestApp::spawn().await;
    let org = app.org_with_bot(BOT_TOKEN).await;
    let (status, customer) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Alex", "telegram_id": 42}),
        )
        .await;
    assert_eq!(status, 201, "{customer}");
    let customer = customer["id"].as_str().expect("id").to_owned();
    app.accrue(org, &customer, "10").await;

    let telegram = telegram_that_accepts_everything().await;
    let port = free_port();
    let _notifier = start(&app, "notifier", port, &[("TELEGRAM_API_URL", &telegram)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Option<String> =
            sqlx::query_scalar("select status from outbox where org_id = $1")
                .bind(org)
                .fetch_optional(&app.db.pool)
                .await
                .expect("outbox");
        if status.as_deref() == Some("sent") {
            break;
        }
        assert!(Instant::now() < deadline, "never sent: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let metrics = first_scrape(port).await;
    assert!(
        metrics.contains("loyalty_notifications_total{outcome=\"sent\"} 1\n"),
        "{metrics}"
    );
}

/// The variables of the README's configuration table, each with the binaries that read it.
fn configuration_table() -> Vec<(String, Vec<&'static str>)> {
    let readme = include_str!("../../README.md");
    readme
        .lines()
        .filter_map(|line| {
            let mut cells = line.split('|').map(str::trim).skip(1);
            let variable = cells.next()?.strip_prefix('`')?.strip_suffix('`')?;
            let used_by = cells.next()?;
            let binaries: Vec<&'static str> = ["ingest", "workers", "notifier"]
                .into_iter()
                .filter(|b| used_by == "all" || used_by.split(", ").any(|u| u == *b))
                .collect();
            let is_variable = variable
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            (is_variable && !binaries.is_empty()).then(|| (variable.to_owned(), binaries))
        })
        .collect()
}

#[test]
fn help_lists_every_variable_of_the_readmes_configuration_table() {
    let table = configuration_table();
    assert!(
        table.iter().any(|(v, _)| v == "RUST_LOG_FORMAT") && table.len() > 20,
        "{table:?}"
    );
    for name in ["ingest", "workers", "notifier"] {
        let help = std::process::Command::new(binary(name))
            .arg("--help")
            .output()
            .expect("--help runs");
        assert!(help.status.success(), "{name} --help failed");
        let help = String::from_utf8(help.stdout).expect("utf-8");
        for (variable, _) in table.iter().filter(|(_, b)| b.contains(&name)) {
            assert!(
                help.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .any(|word| word == variable),
                "`{name} --help` does not list {variable}:\n{help}"
            );
        }
    }
}

#[tokio::test]
async fn logs_through_a_pipe_have_no_colour_codes_and_no_migration_notice() {
    let app = TestApp::spawn().await;
    let mut workers = start(&app, "workers", free_port(), &[]);
    let mut lines = BufReader::new(workers.stdout.take().expect("piped")).lines();
    let mut logged = Vec::new();
    // Until it serves its metrics: connected, migrated (already done by the test app, so the
    // migrator's `create table if not exists` meets an existing table) and started.
    while !logged
        .iter()
        .any(|l: &String| l.contains("metrics on /metrics"))
    {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("a log line within 30 s")
            .expect("readable")
            .expect("the workers log until they serve their metrics");
        logged.push(line);
    }
    let logged = logged.join("\n");
    assert!(!logged.contains('\u{1b}'), "{logged:?}");
    assert!(!logged.contains("_sqlx_migrations"), "{logged}");
    assert!(
        logged.contains(" INFO "),
        "the default filter logs at info: {logged}"
    );
}
