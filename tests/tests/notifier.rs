//! Telegram delivery against a fake Bot API that answers 429 with retry_after, 500, 403 and
//! success: the exact requests, none doubled, each outcome recorded.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use e2e::{BOT_TOKEN, TestApp};
use loyalty::queue::Handled;
use notifier::{Delivered, Notifier};
use serde_json::{Value, json};

/// Answers (status, body) waiting for each chat, first first.
type Script = HashMap<i64, VecDeque<(u16, Value)>>;

/// Every request the fake Bot API received, and scripted answers per chat (success when none).
#[derive(Clone, Default)]
struct FakeTelegram {
    requests: Arc<Mutex<Vec<(String, i64, String)>>>,
    script: Arc<Mutex<Script>>,
}

impl FakeTelegram {
    async fn start(&self) -> String {
        async fn send(
            State(fake): State<FakeTelegram>,
            Path(bot): Path<String>,
            Json(body): Json<Value>,
        ) -> (StatusCode, Json<Value>) {
            let chat = body["chat_id"].as_i64().unwrap_or_default();
            let mut requests = fake.requests.lock().expect("lock");
            requests.push((
                bot,
                chat,
                body["text"].as_str().unwrap_or_default().to_owned(),
            ));
            let scripted = fake
                .script
                .lock()
                .expect("lock")
                .get_mut(&chat)
                .and_then(VecDeque::pop_front);
            let (status, answer) = scripted.unwrap_or((
                200,
                json!({"ok": true, "result": {"message_id": requests.len(), "chat": {"id": chat}}}),
            ));
            (StatusCode::from_u16(status).expect("status"), Json(answer))
        }
        let app = Router::new()
            .route("/{bot}/sendMessage", post(send))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        url
    }

    fn script(&self, chat: i64, answers: Vec<(u16, Value)>) {
        self.script
            .lock()
            .expect("lock")
            .insert(chat, answers.into());
    }

    fn requests_to(&self, chat: i64) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.1 == chat)
            .map(|r| r.2.clone())
            .collect()
    }
}

/// The shop the messages name, with a bot and tenge for its currency.
async fn tom_and_jerry(app: &TestApp) -> i64 {
    app.create_org(
        &json!({"name": "Tom & Jerry", "telegram_bot_token": BOT_TOKEN, "currency_symbol": "₸"}),
    )
    .await
}

async fn customer(app: &TestApp, org: i64, telegram_id: Option<i64>) -> String {
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Alex", "telegram_id": telegram_id}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().expect("id").to_owned()
}

fn notifier(app: &TestApp, api: &str) -> Notifier {
    Notifier::new(
        app.db.pool.clone(),
        app.state.broker.clone(),
        api.to_owned(),
        30,
        1,
        e2e::token_keys(),
    )
}

/// A notifier relaying and sending until stopped (or dropped).
struct RunningNotifier {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningNotifier {
    /// Stops it: the relay ends, the messages in flight are handled and acknowledged.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).expect("the notifier is running");
        }
        (&mut self.task).await.expect("the notifier stops");
    }
}

impl Drop for RunningNotifier {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn run_notifier(notifier: Notifier) -> RunningNotifier {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        notifier
            .run(8, async {
                // Dropped without a word: the test is over.
                stopped.await.ok();
            })
            .await
            .expect("notifier runs");
    });
    RunningNotifier {
        stop: Some(stop),
        task,
    }
}

fn start_notifier(app: &TestApp, api: &str) -> RunningNotifier {
    run_notifier(notifier(app, api))
}

async fn wait_status(app: &TestApp, org: i64, customer: &str, status: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let row: Option<Value> = sqlx::query_scalar(
            "select to_jsonb(o) from outbox o where org_id = $1 and customer_id = $2 order by id desc limit 1",
        )
        .bind(org)
        .bind(customer.parse::<i64>().expect("id"))
        .fetch_optional(&app.db.pool)
        .await
        .expect("query");
        if row.as_ref().is_some_and(|r| r["status"] == status) {
            return row.expect("row");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "notification of {customer} never became {status}: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn each_accrual_is_sent_once_whatever_telegram_answers() {
    let app = TestApp::spawn().await;
    let fake = FakeTelegram::default();
    let api = fake.start().await;
    let org = tom_and_jerry(&app).await;
    let ok = customer(&app, org, Some(1001)).await;
    let throttled = customer(&app, org, Some(1002)).await;
    let flaky = customer(&app, org, Some(1003)).await;
    let blocked = customer(&app, org, Some(1004)).await;
    let phone_only = customer(&app, org, None).await;
    fake.script(1002, vec![(429, json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 1", "parameters": {"retry_after": 1}}))]);
    fake.script(
        1003,
        vec![(
            500,
            json!({"ok": false, "error_code": 500, "description": "Internal Server Error"}),
        )],
    );
    fake.script(1004, vec![(403, json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"}))]);
    for id in [&ok, &throttled, &flaky, &blocked, &phone_only] {
        app.accrue(org, id, "1234.5").await;
    }
    let sender = notifier(&app, &api);
    let running = run_notifier(sender.clone());

    let sent = wait_status(&app, org, &ok, "sent").await;
    assert!(sent["telegram_message_id"].as_i64().is_some());
    wait_status(&app, org, &throttled, "sent").await;
    wait_status(&app, org, &flaky, "sent").await;
    let unreachable = wait_status(&app, org, &blocked, "unreachable").await;
    assert!(
        unreachable["last_error"]
            .as_str()
            .expect("error")
            .contains("blocked")
    );
    wait_status(&app, org, &phone_only, "skipped").await;

    let expected =
        "🎁 «Tom &amp; Jerry» начислил вам 1\u{a0}234,50 ₸ бонусов.\nБаланс: 1\u{a0}234,50 ₸.";
    assert_eq!(fake.requests_to(1001), [expected]);
    assert_eq!(
        fake.requests_to(1002),
        [expected, expected],
        "429 first, then sent once"
    );
    assert_eq!(
        fake.requests_to(1003),
        [expected, expected],
        "500 first, then sent once after a backoff"
    );
    assert_eq!(
        fake.requests_to(1004),
        [expected],
        "a blocked bot is not retried"
    );
    let all = fake.requests.lock().expect("lock").clone();
    assert!(
        all.iter()
            .all(|(bot, _, _)| bot == &format!("bot{BOT_TOKEN}"))
    );
    assert_eq!(all.len(), 6);
    let (status, listed) = app
        .get(&format!(
            "/admin/v1/orgs/{org}/notifications?status=unreachable"
        ))
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        listed["items"][0]["customer_id"].as_i64(),
        blocked.parse().ok()
    );
    let marked: bool = sqlx::query_scalar(
        "select telegram_unreachable_at is not null from customers where id = $1",
    )
    .bind(blocked.parse::<i64>().expect("id"))
    .fetch_one(&app.db.pool)
    .await
    .expect("query");
    assert!(marked);

    // The same notifications delivered again (a redelivery, a replay) send nothing more: the
    // notifier, stopped and then stepped through the queue, finds each a duplicate.
    running.stop().await;
    let ids: Vec<i64> = sqlx::query_scalar("select id from outbox where org_id = $1")
        .bind(org)
        .fetch_all(&app.db.pool)
        .await
        .expect("ids");
    let queue = app
        .state
        .broker
        .topology()
        .main(loyalty::queue::Stream::Notifications);
    for id in ids {
        let body = serde_json::to_vec(&json!({"outbox_id": id})).expect("json");
        app.state
            .broker
            .publish(&queue, &body, lapin::BasicProperties::default())
            .await
            .expect("published");
    }
    let handled = sender
        .consumer(8)
        .run_until_empty()
        .await
        .expect("the redeliveries are consumed");
    assert_eq!(
        handled,
        vec![Handled::Done(Delivered::Duplicate); 5],
        "each redelivery is a duplicate"
    );
    assert_eq!(
        fake.requests.lock().expect("lock").len(),
        6,
        "nothing was sent twice"
    );
    // A later accrual to the first customer waits for the chat's limit, and is the only new
    // request.
    app.accrue(org, &ok, "10").await;
    assert_eq!(sender.relay_once().await.expect("relayed"), 1);
    let handled = sender
        .consumer(8)
        .run_until_empty()
        .await
        .expect("the new accrual is consumed");
    assert!(
        matches!(handled[..], [Handled::Done(Delivered::Sent { .. })]),
        "{handled:?}"
    );
    assert_eq!(fake.requests_to(1001).len(), 2);
    assert_eq!(fake.requests.lock().expect("lock").len(), 7);
}

#[tokio::test]
async fn outbox_rows_wait_for_the_broker_and_are_relayed_once_it_is_back() {
    let app = TestApp::spawn().await;
    let org = tom_and_jerry(&app).await;
    let id = customer(&app, org, Some(2001)).await;
    app.accrue(org, &id, "5").await;
    let topology = app.state.broker.topology().clone();
    let down = std::sync::Arc::new(loyalty::queue::Broker::new(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        topology,
    ));
    let relay = notifier::Notifier::new(
        app.db.pool.clone(),
        down,
        "http://127.0.0.1:9".into(),
        30,
        1,
        e2e::token_keys(),
    );
    assert!(relay.relay_once().await.is_err(), "the broker is down");
    let unpublished: i64 =
        sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&app.db.pool)
            .await
            .expect("count");
    assert_eq!(unpublished, 1, "the row is kept");

    let relay = notifier::Notifier::new(
        app.db.pool.clone(),
        app.state.broker.clone(),
        "http://127.0.0.1:9".into(),
        30,
        1,
        e2e::token_keys(),
    );
    assert_eq!(relay.relay_once().await.expect("relayed"), 1);
    assert_eq!(relay.relay_once().await.expect("nothing left"), 0);
    let queue = app
        .state
        .broker
        .topology()
        .main(loyalty::queue::Stream::Notifications);
    assert_eq!(app.queue_depth(&queue).await, 1);
}

/// The npm package `telegram-test-api` running in Node.js, stopped when dropped.
struct TelegramTestApi {
    child: std::process::Child,
    url: String,
}

impl Drop for TelegramTestApi {
    fn drop(&mut self) {
        if let Err(err) = self.child.kill().and_then(|()| self.child.wait().map(drop)) {
            eprintln!("telegram-test-api did not stop: {err}");
        }
    }
}

impl TelegramTestApi {
    /// Starts the emulator, or says why it cannot (no Node.js, package not installed).
    async fn start() -> Result<Self, String> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/telegram-test-api");
        if !std::path::Path::new(dir)
            .join("node_modules/telegram-test-api")
            .exists()
        {
            return Err(format!(
                "telegram-test-api is not installed (npm install --prefix {dir})"
            ));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let script = format!(
            "new (require('telegram-test-api'))({{host: '127.0.0.1', port: {port}, storeTimeout: 600}}).start()"
        );
        let child = std::process::Command::new("node")
            .args(["-e", &script])
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("Node.js is not available: {e}"))?;
        let api = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(api);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("telegram-test-api did not start".into())
    }

    async fn sent(&self, token: &str) -> Vec<Value> {
        let history: Value = reqwest::Client::new()
            .post(format!("{}/getUpdatesHistory", self.url))
            .json(&json!({ "token": token }))
            .send()
            .await
            .expect("history")
            .json()
            .await
            .expect("json");
        history["result"].as_array().cloned().unwrap_or_default()
    }
}

/// Ignored (reported as skipped) where `build.rs` finds no Node.js or no emulator package.
#[tokio::test]
#[cfg_attr(
    not(has_telegram_test_api),
    ignore = "needs Node.js and `npm ci --prefix tests/telegram-test-api`"
)]
async fn a_pos_receipt_ends_as_one_telegram_message() {
    let telegram = TelegramTestApi::start()
        .await
        .unwrap_or_else(|why| panic!("the Bot API emulator cannot run: {why}"));
    let app = TestApp::spawn().await;
    let org = app
        .create_org(&json!({"name": "Магазин", "telegram_bot_token": BOT_TOKEN,
                            "bonus_program_settings": {"invoice_bonus_percentage": 2, "referral_promo_bonus": 0, "referrer_first_purchase_percentage": 0}}))
        .await;
    let id = customer(&app, org, Some(5929031322)).await;
    let token = app.pos_token(org, "shop").await;
    let (status, bill) = app
        .post(&format!("/admin/v1/orgs/{org}/bills"), &json!({"customer_id": id, "items": [{"name": "тест", "quantity": 17, "unit_price": 654}]}))
        .await;
    assert_eq!(status, 201, "{bill}");
    let _worker = app.start_worker();
    let _notifier = start_notifier(&app, &telegram.url);

    let event = e2e::receipt_event("ev-tg", "rc-tg", bill["id"].as_i64(), "11118");
    assert_eq!(app.post_receipt(&token, &event).await.0, 200);
    let row = app.wait_receipt(org, "ev-tg", "processed").await;
    wait_status(&app, org, &id, "sent").await;

    let sent = telegram.sent(BOT_TOKEN).await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["message"]["chat_id"], 5929031322_i64);
    assert_eq!(sent[0]["message"]["parse_mode"], "HTML");
    let invoice = row["invoice_id"].as_str().expect("invoice");
    assert_eq!(
        sent[0]["message"]["text"],
        format!(
            "🎁 Начислено 222,36 ₸ бонусов за покупку по накладной #{invoice} в «Магазин».\nБаланс: 222,36 ₸."
        )
    );
}

#[tokio::test]
async fn an_organization_sets_its_own_templates_and_currency() {
    let app = TestApp::spawn().await;
    let fake = FakeTelegram::default();
    let api = fake.start().await;
    let org = tom_and_jerry(&app).await;
    let (status, body) = e2e::send(app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}")).json(&json!({
        "currency_symbol": "сом",
        "notification_templates": {"operator_accrual": "<b>+{amount} {currency}</b> от {shop}"}
    })))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["notification_templates"]["operator_accrual"],
        "<b>+{amount} {currency}</b> от {shop}"
    );
    let (status, body) = e2e::send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"notification_templates": {"birthday": "x"}})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("notification_templates.birthday"))
    );

    let id = customer(&app, org, Some(3001)).await;
    app.accrue(org, &id, "50").await;
    let _notifier = start_notifier(&app, &api);
    wait_status(&app, org, &id, "sent").await;
    assert_eq!(
        fake.requests_to(3001),
        ["<b>+50 сом</b> от Tom &amp; Jerry"]
    );
}
