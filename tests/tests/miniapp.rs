//! The customers' Mini App API with real init data signed by a test bot token, and tampered,
//! expired and foreign-bot init data.

use e2e::{BOT_TOKEN, TestApp, seed_settings, send};
use loyalty::init_data::sign;
use serde_json::{Value, json};

async fn shop(app: &TestApp) -> i64 {
    app.create_org(&json!({"name": "тестовое", "phone_numbers": ["+77472479197"], "whatsapp_link": "wa.me/+77472479197",
                           "telegram_bot_token": BOT_TOKEN, "bonus_program_settings": seed_settings()}))
        .await
}

fn init_data(user_id: i64, first_name: &str, age_secs: i64, token: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let auth_date = (now - age_secs).to_string();
    let user = json!({"id": user_id, "first_name": first_name, "username": "alex", "is_premium": true, "photo_url": "https://t.me/i/userpic/320/x.svg"}).to_string();
    sign(
        &[
            ("auth_date", &auth_date),
            ("query_id", "AAE-test"),
            ("user", &user),
        ],
        token,
    )
}

async fn as_user(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    init: &str,
    body: Option<Value>,
) -> (u16, Value) {
    app.as_user(method, path, init, body).await
}

#[tokio::test]
async fn the_first_visit_creates_the_customer_and_welcomes_them_once() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let init = init_data(5929031322, "Alex", 10, BOT_TOKEN);
    let (status, me) = as_user(
        &app,
        reqwest::Method::GET,
        &format!("/app/v1/orgs/{org}/me"),
        &init,
        None,
    )
    .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["telegram_id"], 5929031322_i64);
    assert_eq!(me["first_name"], "Alex");
    assert_eq!(me["is_premium"], true);
    assert_eq!(me["has_been_welcomed"], true);
    assert!(me["visited_at"].as_f64().is_some());
    let id = me["id"].as_str().expect("id").to_owned();
    assert_eq!(me["referral_code"], format!("PROMO{id}"));
    assert_eq!(me["organization"]["whatsapp_link"], "wa.me/+77472479197");
    assert_eq!(
        me["bonus_program_settings"]["referral_promo_bonus"],
        json!(50)
    );
    for key in [
        "bonuses",
        "history",
        "debts",
        "debt_history",
        "invoices",
        "referrals",
        "referral_bonus_history",
        "combined_history",
    ] {
        assert!(me.get(key).is_some(), "legacy key {key}");
    }

    let (status, again) = as_user(
        &app,
        reqwest::Method::GET,
        &format!("/app/v1/orgs/{org}/me"),
        &init,
        None,
    )
    .await;
    assert_eq!((status, again["id"].clone()), (200, json!(id)));
    let welcomes: Vec<Value> =
        sqlx::query_scalar("select payload from outbox where kind = 'welcome'")
            .fetch_all(&app.db.pool)
            .await
            .expect("rows");
    assert_eq!(
        welcomes,
        [json!({"promo_code": format!("PROMO{id}")})],
        "welcomed once"
    );
    let customers: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(customers, 1);
}

#[tokio::test]
async fn tampered_expired_foreign_or_missing_init_data_gets_the_same_401() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let path = format!("/app/v1/orgs/{org}/me");
    let good = init_data(42, "Alex", 10, BOT_TOKEN);
    let tampered = good.replace("42%2C", "43%2C");
    assert_ne!(tampered, good);
    let cases = [
        tampered,
        init_data(42, "Alex", 2 * 86_400, BOT_TOKEN),
        init_data(42, "Alex", 10, "987654321:another-bot-entirely-here"),
        "auth_date=1&hash=00".to_owned(),
    ];
    let mut bodies = Vec::new();
    for init in &cases {
        let (status, body) = as_user(&app, reqwest::Method::GET, &path, init, None).await;
        assert_eq!(status, 401, "{init}");
        bodies.push(body);
    }
    let (status, body) = send(app.http.get(app.url(&path))).await;
    assert_eq!(status, 401);
    bodies.push(body);
    let (status, body) = send(app.http.get(app.url(&path)).bearer_auth(e2e::ADMIN_TOKEN)).await;
    assert_eq!(status, 401, "the admin token is not a Mini App credential");
    bodies.push(body);
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "no hint which part failed: {bodies:?}"
    );
    let customers: i64 = sqlx::query_scalar("select count(*) from customers")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(customers, 0);
}

#[tokio::test]
async fn a_customer_enters_a_friends_promo_code_and_reads_their_history_page_by_page() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let friend = init_data(1, "Synkris", 10, BOT_TOKEN);
    let alex = init_data(2, "Alex", 10, BOT_TOKEN);
    let (_, friend_me) = as_user(
        &app,
        reqwest::Method::GET,
        &format!("/app/v1/orgs/{org}/me"),
        &friend,
        None,
    )
    .await;
    let code = friend_me["referral_code"]
        .as_str()
        .expect("code")
        .to_owned();
    let (status, balances) = as_user(
        &app,
        reqwest::Method::POST,
        &format!("/app/v1/orgs/{org}/me/promo"),
        &alex,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(
        (status, balances["bonuses"].clone()),
        (200, json!(50)),
        "{balances}"
    );
    let (status, body) = as_user(
        &app,
        reqwest::Method::POST,
        &format!("/app/v1/orgs/{org}/me/promo"),
        &alex,
        Some(json!({"code": code})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_referred"))
    );

    let (_, me) = as_user(
        &app,
        reqwest::Method::GET,
        &format!("/app/v1/orgs/{org}/me"),
        &alex,
        None,
    )
    .await;
    let id = me["id"].as_str().expect("id").to_owned();
    for amount in 1..=4 {
        app.accrue(org, &id, amount).await;
    }
    let (_, me) = as_user(
        &app,
        reqwest::Method::GET,
        &format!("/app/v1/orgs/{org}/me"),
        &alex,
        None,
    )
    .await;
    let mut pages = Vec::new();
    let mut before = String::new();
    loop {
        let path = format!("/app/v1/orgs/{org}/me/history?limit=2&before={before}");
        let (status, page) = as_user(&app, reqwest::Method::GET, &path, &alex, None).await;
        assert_eq!(status, 200, "{page}");
        pages.extend(page["items"].as_array().expect("items").clone());
        match page["next_before"].as_str() {
            Some(next) => before = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        Value::Array(pages),
        me["combined_history"],
        "the pages add up to the combined history"
    );
    let (status, _) = as_user(
        &app,
        reqwest::Method::GET,
        &format!("/app/v1/orgs/{org}/me/history?before=nonsense"),
        &alex,
        None,
    )
    .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn requests_are_rate_limited_per_telegram_user() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let eager = init_data(7, "Eager", 10, BOT_TOKEN);
    let calm = init_data(8, "Calm", 10, BOT_TOKEN);
    let path = format!("/app/v1/orgs/{org}/me/history");
    let answers = futures::future::join_all(
        (0..40).map(|_| as_user(&app, reqwest::Method::GET, &path, &eager, None)),
    )
    .await;
    let limited = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited >= 15, "{limited} of 40 limited");
    assert_eq!(
        as_user(&app, reqwest::Method::GET, &path, &calm, None)
            .await
            .0,
        200,
        "others are not slowed down"
    );
}

#[tokio::test]
async fn a_flood_is_refused_before_the_database_is_touched() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    // Init data no bot signed, claiming one user: the flood an attacker can send.
    let forged = init_data(9, "Flood", 10, "999:not-the-shops-bot-token");
    // With the database gone, only an answer given before any query can be a 429.
    app.db.pool.close().await;
    let path = format!("/app/v1/orgs/{org}/me");
    let answers = futures::future::join_all(
        (0..40).map(|_| as_user(&app, reqwest::Method::GET, &path, &forged, None)),
    )
    .await;
    let limited = answers.iter().filter(|(s, _)| *s == 429).count();
    assert!(limited >= 15, "{limited} of 40 limited: {answers:?}");
    assert!(
        answers.iter().all(|(s, _)| matches!(s, 429 | 500 | 503)),
        "{answers:?}"
    );
}
