//! Bot tokens at rest: sealed under `TOKEN_KEYS`, so no column of any table shows them, while the
//! Mini App and the notifier still use them; rotation reseals them at ingest's start, after which
//! the old key can go; without keys no token is stored and no service runs on tokens it cannot read.

use std::time::Duration;

use e2e::{TOKEN_KEYS, TestApp, send};
use loyalty::crypto::TokenKeys;
use loyalty::orgs::{self, OrgChanges};
use serde_json::json;

/// The first token of these tests (a second replaces it); no table may show its secret part.
const BOT_TOKEN: &str = "123456789:AAF-secret-part-of-the-first-token";
const NEW_KEY: &str = "next:bmV4dC1rZXktb2YtdGhlLXJvdGF0aW9uLXRlc3QtMzI=";

/// The tables that show `text` anywhere in a row (as text, or its bytes as hex in a bytea).
async fn tables_showing(app: &TestApp, text: &str) -> Vec<String> {
    let tables: Vec<String> =
        sqlx::query_scalar("select tablename::text from pg_tables where schemaname = 'public'")
            .fetch_all(&app.db.pool)
            .await
            .expect("tables");
    let hex: String = text.bytes().map(|b| format!("{b:02x}")).collect();
    let mut showing = Vec::new();
    for table in tables {
        let found: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "select exists (select 1 from {table} x
                            where strpos(x::text, $1) > 0 or strpos(lower(x::text), $2) > 0)"
        )))
        .bind(text)
        .bind(&hex)
        .fetch_one(&app.db.pool)
        .await
        .expect("scan");
        if found {
            showing.push(table);
        }
    }
    showing
}

/// A Mini App `GET …/me` signed for the bot `token`; returns the status.
async fn mini_app_status(app: &TestApp, org: i64, token: &str) -> u16 {
    let now = chrono::Utc::now().timestamp().to_string();
    let user = json!({"id": 42, "first_name": "Alex"}).to_string();
    let init = loyalty::init_data::sign(&[("auth_date", &now), ("user", &user)], token);
    send(
        app.http
            .get(app.url(&format!("/app/v1/orgs/{org}/me")))
            .header("Authorization", format!("tma {init}")),
    )
    .await
    .0
}

/// ingest's command line against this test's database and queues, with `keys` as TOKEN_KEYS.
fn ingest_config(app: &TestApp, keys: &str) -> ingest::Config {
    use clap::Parser;
    let backends = &app.state.config.backends;
    ingest::Config::try_parse_from([
        "ingest",
        "--database-url",
        &backends.database_url,
        "--amqp-url",
        &backends.amqp_url.join(","),
        "--queue-prefix",
        &backends.queue_prefix,
        "--admin-token",
        "secrets-test",
        "--addr",
        "127.0.0.1:0",
        "--token-keys",
        keys,
    ])
    .expect("config parses")
}

#[tokio::test]
async fn a_bot_token_is_in_no_column_of_any_table_and_still_signs_mini_app_data() {
    let app = TestApp::spawn().await;
    let org = app.org_with_bot(BOT_TOKEN).await;
    let secret = BOT_TOKEN.split_once(':').expect("token").1;
    assert_eq!(tables_showing(&app, secret).await, Vec::<String>::new());
    let (_, read) = app.get(&format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(read["telegram_bot_token_set"], true);
    assert_eq!(mini_app_status(&app, org, BOT_TOKEN).await, 200);

    // A new token replaces the old one, sealed too; the old one no longer signs.
    let second = "987654321:BBG-secret-part-of-the-second-token";
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"telegram_bot_token": second})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        tables_showing(&app, "secret-part-of-the").await,
        Vec::<String>::new()
    );
    assert_eq!(mini_app_status(&app, org, second).await, 200);
    assert_eq!(mini_app_status(&app, org, BOT_TOKEN).await, 401);
}

#[tokio::test]
async fn rotation_reseals_every_token_at_ingest_start_and_the_old_key_can_then_go() {
    let app = TestApp::spawn().await;
    let sealed = app.org_with_bot(BOT_TOKEN).await;
    // A token stored in clear, as before tokens were sealed.
    let plain_token = "555:CCH-token-stored-in-clear-before-sealing";
    let plain = app.org().await;
    sqlx::query("update organizations set telegram_bot_token = $2 where id = $1")
        .bind(plain)
        .bind(plain_token)
        .execute(&app.db.pool)
        .await
        .expect("stored in clear");

    // Step 1: the new key first, the old one still listed; ingest reseals at start.
    let both = format!("{NEW_KEY},{TOKEN_KEYS}");
    let ingest = tokio::spawn(ingest::run(ingest_config(&app, &both)));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let keys: Vec<Option<String>> = sqlx::query_scalar(
            "select telegram_bot_token_key from organizations where id = any($1) order by id",
        )
        .bind(vec![sealed, plain])
        .fetch_all(&app.db.pool)
        .await
        .expect("keys");
        if keys.iter().all(|k| k.as_deref() == Some("next")) {
            break;
        }
        assert!(!ingest.is_finished(), "ingest stopped");
        assert!(
            std::time::Instant::now() < deadline,
            "never resealed: {keys:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ingest.abort();
    assert_eq!(
        tables_showing(&app, "CCH-token-stored").await,
        Vec::<String>::new()
    );

    // Step 2: the old key removed; every token opens under the new one alone.
    let new_only: TokenKeys = NEW_KEY.parse().expect("keys");
    orgs::prepare_bot_tokens(&app.db.pool, &new_only, false)
        .await
        .expect("every token opens under the new key");
    let mut conn = app.db.pool.acquire().await.expect("connection");
    for (org, token) in [(sealed, BOT_TOKEN), (plain, plain_token)] {
        let opened = orgs::bot_token(&mut conn, &new_only, org)
            .await
            .expect("opens");
        assert_eq!(opened.as_deref(), Some(token));
    }
    // A service still holding only the old key refuses to start rather than run without tokens.
    let refused = orgs::prepare_bot_tokens(&app.db.pool, &e2e::token_keys(), false)
        .await
        .expect_err("the old key alone cannot open them");
    assert!(refused.to_string().contains("\"next\""), "{refused}");
}

#[tokio::test]
async fn without_token_keys_no_token_is_stored_and_no_service_starts_on_stored_tokens() {
    let app = TestApp::spawn().await;
    let mut conn = app.db.pool.acquire().await.expect("connection");
    let refused = orgs::create(
        &mut conn,
        &TokenKeys::default(),
        &OrgChanges {
            name: Some("Shop".into()),
            telegram_bot_token: Some(BOT_TOKEN.into()),
            ..OrgChanges::default()
        },
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(loyalty::Error::Conflict {
                code: "token_keys_missing",
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(tables_showing(&app, BOT_TOKEN).await, Vec::<String>::new());

    app.org_with_bot(BOT_TOKEN).await;
    let ingest = tokio::time::timeout(
        Duration::from_secs(30),
        ingest::run(ingest_config(&app, "")),
    )
    .await
    .expect("ingest stops at once");
    let error = ingest.expect_err("ingest refuses to start").to_string();
    assert!(error.contains("TOKEN_KEYS is not set"), "{error}");

    let backends = &app.state.config.backends;
    let notifier_config = <notifier::Config as clap::Parser>::try_parse_from([
        "notifier",
        "--database-url",
        &backends.database_url,
        "--amqp-url",
        &backends.amqp_url.join(","),
        "--queue-prefix",
        &backends.queue_prefix,
        "--metrics-addr",
        "127.0.0.1:0",
        "--token-keys",
        "",
    ])
    .expect("config parses");
    let notifier = tokio::time::timeout(Duration::from_secs(30), notifier::run(notifier_config))
        .await
        .expect("notifier stops at once");
    let error = notifier.expect_err("notifier refuses to start").to_string();
    assert!(error.contains("TOKEN_KEYS is not set"), "{error}");
}
