//! The shop's bot: updates posted to the webhook as Telegram sends them, and the bot's set-up when
//! its token is set, against a stand-in Bot API that records every call (the offline emulator
//! answers neither getMe nor setWebhook nor setChatMenuButton).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use e2e::{TestApp, send};
use serde_json::{Value, json};

const PUBLIC_URL: &str = "https://bonus.example.kz";
const TOKEN: &str = "123456789:TEST-fake-token_for-unit-tests";
/// A token the stand-in refuses, as Telegram refuses a revoked one.
const REVOKED: &str = "987654321:revoked-token-for-the-tests";

/// One recorded Bot API call: the token, the method, the parameters.
#[derive(Debug, Clone)]
struct Call {
    token: String,
    method: String,
    params: Value,
}

#[derive(Clone, Default)]
struct BotApi(Arc<Mutex<Vec<Call>>>);

impl BotApi {
    /// Serves the stand-in on a port of its own; returns its base URL.
    async fn serve(&self) -> String {
        async fn answer(
            State(api): State<BotApi>,
            Path((bot, method)): Path<(String, String)>,
            Json(params): Json<Value>,
        ) -> (axum::http::StatusCode, Json<Value>) {
            let token = bot.strip_prefix("bot").unwrap_or(&bot).to_owned();
            api.0.lock().expect("calls").push(Call {
                token: token.clone(),
                method: method.clone(),
                params,
            });
            if token == REVOKED {
                return (
                    axum::http::StatusCode::UNAUTHORIZED,
                    Json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
                );
            }
            let result = match method.as_str() {
                "getMe" => {
                    json!({"id": 123456789, "is_bot": true, "first_name": "Shop", "username": "shop_bot"})
                }
                "sendMessage" => {
                    json!({"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}})
                }
                _ => json!(true),
            };
            (
                axum::http::StatusCode::OK,
                Json(json!({"ok": true, "result": result})),
            )
        }
        let router = Router::new()
            .route("/{bot}/{method}", post(answer))
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
        format!("http://{addr}")
    }

    fn calls(&self, method: &str) -> Vec<Call> {
        self.0
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    /// Waits for the `n`th `sendMessage` (the bot answers after the webhook's 200).
    async fn sent(&self, n: usize) -> Call {
        for _ in 0..100 {
            if let Some(call) = self.calls("sendMessage").get(n - 1) {
                return call.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no sendMessage number {n}: {:?}", self.calls("sendMessage"));
    }
}

/// The service with `PUBLIC_URL` set and its Bot API at the stand-in.
async fn spawn(api: &BotApi) -> TestApp {
    let api_url = api.serve().await;
    TestApp::spawn_with(|config| {
        config.telegram_api_url = api_url;
        config.public_url = Some(PUBLIC_URL.parse().expect("url"));
    })
    .await
}

async fn shop(app: &TestApp) -> i64 {
    let (status, body) = app
        .post(
            "/admin/v1/orgs",
            &json!({"name": "Ромашка & Co", "telegram_bot_token": TOKEN,
                    "bonus_program_settings": {"invoice_bonus_percentage": 2, "referral_promo_bonus": 50, "referrer_first_purchase_percentage": 5}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().expect("id")
}

/// A message update exactly as Telegram posts it.
fn update(update_id: i64, user_id: i64, language: &str, text: &str) -> Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": 1365,
            "from": {"id": user_id, "is_bot": false, "first_name": "Айгерим", "last_name": "Ким",
                     "username": "aigerim", "language_code": language, "is_premium": true},
            "chat": {"id": user_id, "first_name": "Айгерим", "last_name": "Ким", "username": "aigerim",
                     "type": "private"},
            "date": 1_764_500_000,
            "text": text,
            "entities": [{"offset": 0, "length": 6, "type": "bot_command"}]
        }
    })
}

async fn post_update(
    app: &TestApp,
    org: i64,
    secret: Option<&str>,
    update: &Value,
) -> (u16, Value) {
    let mut request = app
        .http
        .post(app.url(&format!("/telegram/v1/orgs/{org}/webhook")))
        .json(update);
    if let Some(secret) = secret {
        request = request.header("X-Telegram-Bot-Api-Secret-Token", secret);
    }
    send(request).await
}

async fn customer_by_telegram(
    app: &TestApp,
    org: i64,
    telegram_id: i64,
) -> Option<(i64, String, bool)> {
    sqlx::query_as(
        "select id, bonuses::text, messages_allowed_at is not null from customers where org_id = $1 and telegram_id = $2",
    )
    .bind(org)
    .bind(telegram_id)
    .fetch_optional(&app.db.pool)
    .await
    .expect("customer")
}

#[tokio::test]
async fn setting_the_token_points_the_webhook_and_the_menu_button_here() {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;

    let get_me = api.calls("getMe");
    assert_eq!(get_me.len(), 1);
    assert_eq!(get_me[0].token, TOKEN);
    let webhooks = api.calls("setWebhook");
    assert_eq!(webhooks.len(), 1);
    assert_eq!(
        webhooks[0].params,
        json!({
            "url": format!("{PUBLIC_URL}/telegram/v1/orgs/{org}/webhook"),
            "secret_token": ingest::telegram::webhook_secret(TOKEN, org),
            "allowed_updates": ["message"],
        })
    );
    let buttons = api.calls("setChatMenuButton");
    assert_eq!(
        buttons.iter().map(|c| c.params.clone()).collect::<Vec<_>>(),
        [json!({"menu_button": {"type": "web_app", "text": "Бонусы",
                                "web_app": {"url": format!("{PUBLIC_URL}/app/{org}/")}}})]
    );
    let (_, org_body) = app.get(&format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(org_body["telegram_bot_username"], "shop_bot");
    assert_eq!(org_body["telegram_bot_token_set"], true);
}

#[tokio::test]
async fn a_token_telegram_refuses_is_not_stored() {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"telegram_bot_token": REVOKED, "name": "Renamed"})),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "telegram_bot_token");
    assert_eq!(api.calls("setWebhook").len(), 1, "only the first token's");
    let (_, org_body) = app.get(&format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(
        org_body["name"], "Ромашка & Co",
        "nothing of the change stored"
    );
    assert_eq!(org_body["telegram_bot_username"], "shop_bot");
    // The first token still answers the webhook.
    let secret = ingest::telegram::webhook_secret(TOKEN, org);
    let (status, _) = post_update(&app, org, Some(&secret), &update(1, 77, "ru", "/start")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn telegram_unreachable_when_the_token_is_set_is_a_503_and_nothing_stored() {
    let app = TestApp::spawn_with(|config| {
        config.public_url = Some(PUBLIC_URL.parse().expect("url"));
    })
    .await;
    let (status, body) = app
        .post(
            "/admin/v1/orgs",
            &json!({"name": "Shop", "telegram_bot_token": TOKEN}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    let stored: bool = sqlx::query_scalar("select exists (select from organizations)")
        .fetch_one(&app.db.pool)
        .await
        .expect("exists");
    assert!(!stored, "no organization without its bot");
}

#[tokio::test]
async fn updates_without_the_right_secret_are_refused_and_change_nothing() {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;
    let start = update(1, 501, "ru", "/start");
    for secret in [
        None,
        Some("wrong"),
        Some(ingest::telegram::webhook_secret(REVOKED, org).as_str()),
    ] {
        let (status, body) = post_update(&app, org, secret, &start).await;
        assert_eq!(status, 401, "{secret:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    let secret = ingest::telegram::webhook_secret(TOKEN, org);
    let (status, _) = post_update(&app, org + 1000, Some(&secret), &start).await;
    assert_eq!(status, 401, "an unknown organization is the same 401");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(api.calls("sendMessage").is_empty());
    assert_eq!(customer_by_telegram(&app, org, 501).await, None);
}

#[tokio::test]
async fn start_with_a_friends_code_welcomes_in_russian_and_applies_it_once() {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;
    let secret = ingest::telegram::webhook_secret(TOKEN, org);
    let friend = app.customer(org, "Friend").await;
    let code = format!("PROMO{friend}");

    let start = update(10, 601, "ru", &format!("/start {code}"));
    let (status, _) = post_update(&app, org, Some(&secret), &start).await;
    assert_eq!(status, 200);
    let answer = api.sent(1).await;
    assert_eq!(answer.token, TOKEN);
    assert_eq!(answer.params["chat_id"], 601);
    let text = answer.params["text"].as_str().expect("text");
    assert!(text.contains("Добро пожаловать"), "{text}");
    assert!(text.contains("Ромашка &amp; Co"), "escaped: {text}");
    assert!(
        text.contains(&format!("Промокод {code} применён")),
        "{text}"
    );
    assert_eq!(
        answer.params["reply_markup"],
        json!({"inline_keyboard": [[{"text": "Открыть бонусы",
                                     "web_app": {"url": format!("{PUBLIC_URL}/app/{org}/")}}]]})
    );
    let (id, bonuses, allowed) = customer_by_telegram(&app, org, 601).await.expect("created");
    assert_eq!(bonuses, "50", "the promo bonus");
    assert!(allowed, "may be written to");
    let (_, customer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    assert_eq!(customer["referred_by"], json!(friend));
    assert_eq!(customer["first_name"], "Айгерим");

    let again = update(11, 601, "ru", &format!("/start {code}"));
    let (status, _) = post_update(&app, org, Some(&secret), &again).await;
    assert_eq!(status, 200);
    let second = api.sent(2).await;
    let text = second.params["text"].as_str().expect("text");
    assert!(
        text.contains(&format!("Промокод {code} не применён")),
        "{text}"
    );
    assert_eq!(
        customer_by_telegram(&app, org, 601).await.map(|c| c.1),
        Some(bonuses)
    );

    let invalid = update(12, 602, "ru", "/start PROMO999999999");
    let (status, _) = post_update(&app, org, Some(&secret), &invalid).await;
    assert_eq!(status, 200, "an invalid code is a line in the answer");
    let third = api.sent(3).await;
    assert!(
        third.params["text"]
            .as_str()
            .expect("text")
            .contains("не применён")
    );
    assert!(customer_by_telegram(&app, org, 602).await.is_some());
}

#[tokio::test]
async fn english_speakers_are_answered_in_english_and_other_messages_get_help() {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;
    let secret = ingest::telegram::webhook_secret(TOKEN, org);

    let (status, _) = post_update(
        &app,
        org,
        Some(&secret),
        &update(20, 701, "en-US", "/start"),
    )
    .await;
    assert_eq!(status, 200);
    let answer = api.sent(1).await;
    assert!(
        answer.params["text"]
            .as_str()
            .expect("text")
            .starts_with("Welcome")
    );
    assert_eq!(
        answer.params["reply_markup"]["inline_keyboard"][0][0]["text"],
        "Open bonuses"
    );

    let (status, _) = post_update(
        &app,
        org,
        Some(&secret),
        &update(21, 702, "kk", "сколько у меня бонусов?"),
    )
    .await;
    assert_eq!(status, 200);
    let help = api.sent(2).await;
    assert!(
        help.params["text"]
            .as_str()
            .expect("text")
            .starts_with("Нажмите кнопку")
    );
    assert_eq!(
        help.params["reply_markup"]["inline_keyboard"][0][0]["web_app"]["url"],
        format!("{PUBLIC_URL}/app/{org}/")
    );
    assert_eq!(
        customer_by_telegram(&app, org, 702).await,
        None,
        "only /start records a customer"
    );
}

#[tokio::test]
async fn updates_the_bot_does_not_handle_are_accepted_and_ignored() {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;
    let secret = ingest::telegram::webhook_secret(TOKEN, org);
    let others = [
        json!({"update_id": 30, "edited_message": {"message_id": 1, "date": 1, "chat": {"id": 1, "type": "private"}, "text": "x"}}),
        json!({"update_id": 31, "my_chat_member": {"chat": {"id": 1, "type": "private"}, "date": 1}}),
        json!({"update_id": 32, "message": {"message_id": 2, "date": 1, "chat": {"id": -100, "type": "group"},
                                             "from": {"id": 5, "is_bot": false, "first_name": "G"}, "text": "/start"}}),
        json!({"update_id": 33, "message": {"message_id": 3, "date": 1, "chat": {"id": 9, "type": "private"},
                                             "from": {"id": 9, "is_bot": false, "first_name": "S"}, "sticker": {"file_id": "x"}}}),
        json!({"not": "an update"}),
    ];
    for other in &others {
        let (status, body) = post_update(&app, org, Some(&secret), other).await;
        assert_eq!(status, 200, "{other}: {body}");
    }
    // The sticker is a message like any other: help; the rest get nothing.
    let help = api.sent(1).await;
    assert_eq!(help.params["chat_id"], 9);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.calls("sendMessage").len(), 1);
    let customers: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(customers, 0);
}
