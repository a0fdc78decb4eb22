//! The shop's bot: updates posted to the webhook as Telegram sends them, and the bot's set-up when
//! its token is set, against a stand-in Bot API that records every call (the offline emulator
//! answers neither getMe nor setWebhook nor setChatMenuButton).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use e2e::{BOT_TOKEN, TestApp, seed_settings, send};
use serde_json::{Value, json};

const PUBLIC_URL: &str = "https://bonus.example.kz";
/// A token the stand-in refuses, as Telegram refuses a revoked one.
const REVOKED: &str = "987654321:revoked-token-for-the-tests";

/// One recorded Bot API call: the token, the method, the parameters.
#[derive(Debug, Clone)]
struct Call {
    token: String,
    method: String,
    params: Value,
}

/// The stand-in: every call it was made, and whether it plays Telegram away (502 to everything).
#[derive(Clone, Default)]
struct BotApi(Arc<Mutex<Vec<Call>>>, Arc<AtomicBool>);

impl BotApi {
    /// Serves the stand-in on a port of its own; returns its base URL.
    async fn serve(&self) -> String {
        async fn answer(
            State(api): State<BotApi>,
            Path((bot, method)): Path<(String, String)>,
            Json(params): Json<Value>,
        ) -> (axum::http::StatusCode, Json<Value>) {
            let token = bot.strip_prefix("bot").unwrap_or(&bot).to_owned();
            // The webhook a token has: what its last setWebhook or deleteWebhook left.
            let webhook = api
                .0
                .lock()
                .expect("calls")
                .iter()
                .filter(|c| c.token == token)
                .filter_map(|c| match c.method.as_str() {
                    "setWebhook" => Some(c.params["url"].clone()),
                    "deleteWebhook" => Some(json!("")),
                    _ => None,
                })
                .next_back()
                .unwrap_or(json!(""));
            api.0.lock().expect("calls").push(Call {
                token: token.clone(),
                method: method.clone(),
                params,
            });
            if api.1.load(Ordering::SeqCst) {
                return (
                    axum::http::StatusCode::BAD_GATEWAY,
                    Json(json!({"ok": false, "error_code": 502, "description": "Bad Gateway"})),
                );
            }
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
                "getWebhookInfo" => json!({"url": webhook, "pending_update_count": 0}),
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

    /// Telegram away (every call a 502), or back.
    fn set_down(&self, down: bool) {
        self.1.store(down, Ordering::SeqCst);
    }

    /// The methods called with `token`, in order.
    fn methods_of(&self, token: &str) -> Vec<String> {
        self.0
            .lock()
            .expect("calls")
            .iter()
            .filter(|c| c.token == token)
            .map(|c| c.method.clone())
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
    app.create_org(
        &json!({"name": "Ромашка & Co", "telegram_bot_token": BOT_TOKEN,
                           "bonus_program_settings": seed_settings()}),
    )
    .await
}

/// The service at a fresh stand-in, and a shop whose bot it set up.
async fn shop_with_bot() -> (BotApi, TestApp, i64) {
    let api = BotApi::default();
    let app = spawn(&api).await;
    let org = shop(&app).await;
    (api, app, org)
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
    let (api, app, org) = shop_with_bot().await;

    let get_me = api.calls("getMe");
    assert_eq!(get_me.len(), 1);
    assert_eq!(get_me[0].token, BOT_TOKEN);
    let webhooks = api.calls("setWebhook");
    assert_eq!(webhooks.len(), 1);
    assert_eq!(
        webhooks[0].params,
        json!({
            "url": format!("{PUBLIC_URL}/telegram/v1/orgs/{org}/webhook"),
            "secret_token": ingest::telegram::webhook_secret(BOT_TOKEN, org),
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
    let (api, app, org) = shop_with_bot().await;
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
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
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
            &json!({"name": "Shop", "telegram_bot_token": BOT_TOKEN}),
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
    let (api, app, org) = shop_with_bot().await;
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
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
    let (status, _) = post_update(&app, org + 1000, Some(&secret), &start).await;
    assert_eq!(status, 401, "an unknown organization is the same 401");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(api.calls("sendMessage").is_empty());
    assert_eq!(customer_by_telegram(&app, org, 501).await, None);
}

#[tokio::test]
async fn start_with_a_friends_code_welcomes_in_russian_and_applies_it_once() {
    let (api, app, org) = shop_with_bot().await;
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
    let friend = app.customer(org, "Friend").await;
    let code = format!("PROMO{friend}");

    let start = update(10, 601, "ru", &format!("/start {code}"));
    let (status, _) = post_update(&app, org, Some(&secret), &start).await;
    assert_eq!(status, 200);
    let answer = api.sent(1).await;
    assert_eq!(answer.token, BOT_TOKEN);
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
    let (api, app, org) = shop_with_bot().await;
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);

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
    let (api, app, org) = shop_with_bot().await;
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
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

/// Another bot's token (another bot id), and a new token of that bot (BotFather's revoke).
const OTHER_BOT: &str = "555555555:another-bots-token_for-tests";
const SAME_BOT_NEW_TOKEN: &str = "555555555:the-same-bots-new-token-for-tests";

async fn set_token(app: &TestApp, org: i64, token: &str) -> (u16, Value) {
    send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"telegram_bot_token": token})),
    )
    .await
}

#[tokio::test]
async fn replacing_the_token_removes_the_old_bots_webhook_and_menu_button() {
    let (api, app, org) = shop_with_bot().await;
    let (status, body) = set_token(&app, org, OTHER_BOT).await;
    assert_eq!(status, 200, "{body}");

    assert_eq!(
        api.methods_of(OTHER_BOT),
        ["getMe", "setWebhook", "setChatMenuButton"],
        "the new bot is set up first"
    );
    assert_eq!(
        api.methods_of(BOT_TOKEN),
        [
            "getMe",
            "setWebhook",
            "setChatMenuButton",
            "getWebhookInfo",
            "deleteWebhook",
            "setChatMenuButton"
        ]
    );
    let old_calls: Vec<Value> = api
        .0
        .lock()
        .expect("calls")
        .iter()
        .filter(|c| c.token == BOT_TOKEN)
        .skip(4)
        .map(|c| c.params.clone())
        .collect();
    assert_eq!(
        old_calls,
        [
            json!({"drop_pending_updates": true}),
            json!({"menu_button": {"type": "default"}})
        ]
    );
    // The new bot's updates are answered, the old bot's refused.
    let old_secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
    let new_secret = ingest::telegram::webhook_secret(OTHER_BOT, org);
    let start = update(1, 901, "ru", "/start");
    assert_eq!(
        post_update(&app, org, Some(&old_secret), &start).await.0,
        401
    );
    assert_eq!(
        post_update(&app, org, Some(&new_secret), &start).await.0,
        200
    );
    assert_eq!(
        api.sent(1).await.token,
        OTHER_BOT,
        "answered by the new bot"
    );

    // A new token of the same bot (BotFather's revoke) has replaced its webhook itself: nothing
    // of the old token is undone.
    let (status, body) = set_token(&app, org, SAME_BOT_NEW_TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        api.methods_of(OTHER_BOT),
        ["getMe", "setWebhook", "setChatMenuButton", "sendMessage"]
    );
    assert_eq!(
        api.methods_of(SAME_BOT_NEW_TOKEN),
        ["getMe", "setWebhook", "setChatMenuButton"]
    );
}

#[tokio::test]
async fn removing_the_token_removes_the_webhook_and_a_revoked_token_is_only_logged() {
    let (api, app, org) = shop_with_bot().await;
    let (status, body) = set_token(&app, org, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["telegram_bot_token_set"], false);
    assert_eq!(body["telegram_bot_username"], Value::Null);
    assert_eq!(
        api.calls("deleteWebhook")
            .iter()
            .map(|c| c.token.as_str())
            .collect::<Vec<_>>(),
        [BOT_TOKEN]
    );
    // Removing it again: no token, nothing to call.
    let calls = api.0.lock().expect("calls").len();
    assert_eq!(set_token(&app, org, "").await.0, 200);
    assert_eq!(api.0.lock().expect("calls").len(), calls);

    // A token Telegram no longer accepts: the removal goes through all the same.
    let revoked_shop = shop(&app).await;
    let keys = e2e::token_keys();
    let sealed = keys.seal(revoked_shop, REVOKED).expect("sealed");
    sqlx::query(
        "update organizations set telegram_bot_token_key = $2, telegram_bot_token_sealed = $3 where id = $1",
    )
    .bind(revoked_shop)
    .bind(&sealed.key_id)
    .bind(&sealed.bytes)
    .execute(&app.db.pool)
    .await
    .expect("revoked token stored");
    let (status, body) = set_token(&app, revoked_shop, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["telegram_bot_token_set"], false);
    assert_eq!(api.methods_of(REVOKED), ["getWebhookInfo"]);
}

#[tokio::test]
async fn telegram_unreachable_when_the_token_is_removed_is_a_503_and_nothing_changed() {
    let (api, app, org) = shop_with_bot().await;
    api.set_down(true);
    let (status, body) = set_token(&app, org, "").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    api.set_down(false);
    let (_, org_body) = app.get(&format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(org_body["telegram_bot_token_set"], true);
    assert_eq!(org_body["telegram_bot_username"], "shop_bot");
    assert!(api.calls("deleteWebhook").is_empty());
    // The bot still works, and the removal succeeds once Telegram is back.
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
    let (status, _) = post_update(&app, org, Some(&secret), &update(1, 77, "ru", "/start")).await;
    assert_eq!(status, 200);
    assert_eq!(set_token(&app, org, "").await.0, 200);
    assert_eq!(api.calls("deleteWebhook").len(), 1);
}

#[tokio::test]
async fn an_update_delivered_again_changes_nothing_and_gets_no_second_answer() {
    let (api, app, org) = shop_with_bot().await;
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
    let friend = app.customer(org, "Friend").await;
    let start = update(40, 801, "ru", &format!("/start PROMO{friend}"));

    for _ in 0..2 {
        let (status, body) = post_update(&app, org, Some(&secret), &start).await;
        assert_eq!(status, 200, "{body}");
    }
    let answer = api.sent(1).await;
    assert!(
        answer.params["text"]
            .as_str()
            .is_some_and(|t| t.contains("применён")),
        "{answer:?}"
    );
    // Delivered twice at once (Telegram gave up waiting on the first): still one answer.
    let help = update(41, 801, "ru", "hello");
    let (first, second) = tokio::join!(
        post_update(&app, org, Some(&secret), &help),
        post_update(&app, org, Some(&secret), &help)
    );
    assert_eq!((first.0, second.0), (200, 200));
    api.sent(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.calls("sendMessage").len(), 2, "one answer per update");
    let (_, bonuses, _) = customer_by_telegram(&app, org, 801).await.expect("created");
    assert_eq!(bonuses, "50", "the promo bonus once");
    let promos: i64 = sqlx::query_scalar(
        "select count(*) from ledger_entries where org_id = $1 and customer_id = (select id from customers where org_id = $1 and telegram_id = 801)",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!(promos, 1, "one entry");
}

#[tokio::test]
async fn answered_updates_are_forgotten_after_two_days() {
    let (api, app, org) = shop_with_bot().await;
    let secret = ingest::telegram::webhook_secret(BOT_TOKEN, org);
    sqlx::query(
        "insert into bot_updates (org_id, bot_id, update_id, received_at)
         values ($1, 123456789, 1, now() - interval '3 days'), ($1, 123456789, 2, now() - interval '1 day')",
    )
    .bind(org)
    .execute(&app.db.pool)
    .await
    .expect("old updates");
    let (status, _) = post_update(&app, org, Some(&secret), &update(3, 77, "ru", "hi")).await;
    assert_eq!(status, 200);
    api.sent(1).await;
    let kept: Vec<i64> =
        sqlx::query_scalar("select update_id from bot_updates where org_id = $1 order by 1")
            .bind(org)
            .fetch_all(&app.db.pool)
            .await
            .expect("kept");
    assert_eq!(kept, [2, 3]);
}
