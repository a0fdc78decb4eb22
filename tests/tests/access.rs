//! Access scoped to one shop: the shop's staff (Telegram users, `Authorization: tma <initData>`)
//! and API keys (`Bearer lk_…`) reach their own organization's routes that their role allows,
//! and nothing else; every change they make is in the audit trail.

use e2e::{TestApp, send};
use loyalty::access::{Actor, Role};
use loyalty::init_data::sign;
use reqwest::Method;
use serde_json::{Value, json};

const BOT_TOKEN: &str = "123456789:TEST-fake-token_for-unit-tests";
const CASHIER_TG: i64 = 700_000_002;

/// An organization with a bot (so its staff's init data can be checked).
async fn shop(app: &TestApp, name: &str) -> i64 {
    let (status, body) = app
        .post(
            "/admin/v1/orgs",
            &json!({"name": name, "telegram_bot_token": BOT_TOKEN,
                    "bonus_program_settings": {"invoice_bonus_percentage": 2, "referral_promo_bonus": 50,
                                               "referrer_first_purchase_percentage": 5}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_i64().expect("id")
}

/// Init data of Telegram user `user_id`, signed by the test bot just now.
fn init_data(user_id: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let user = json!({"id": user_id, "first_name": "Staff", "language_code": "ru"}).to_string();
    sign(
        &[("auth_date", &now.to_string()), ("user", &user)],
        BOT_TOKEN,
    )
}

/// Makes `telegram_id` staff of `org` straight in the database (the platform's first owner).
async fn make_staff(app: &TestApp, org: i64, telegram_id: i64, role: Role) {
    let mut conn = app.db.pool.acquire().await.expect("conn");
    loyalty::access::add_staff(&mut conn, org, telegram_id, role, "", Actor::Platform)
        .await
        .expect("staff added");
}

async fn as_staff(
    app: &TestApp,
    telegram_id: i64,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .header("Authorization", format!("tma {}", init_data(telegram_id)));
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

#[tokio::test]
async fn a_cashier_runs_the_desk_of_their_own_shop_and_nothing_else() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "A").await;
    let other = shop(&app, "B").await;
    make_staff(&app, org, CASHIER_TG, Role::Cashier).await;
    let customer = app.customer(org, "Aigerim").await;
    let foreign = app.customer(other, "Bolat").await;

    let (status, found) = as_staff(
        &app,
        CASHIER_TG,
        Method::GET,
        &format!("/admin/v1/orgs/{org}/customers/{customer}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["id"], customer);

    let (status, body) = as_staff(
        &app,
        CASHIER_TG,
        Method::GET,
        &format!("/admin/v1/orgs/{other}/customers/{foreign}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    let (status, body) = as_staff(
        &app,
        CASHIER_TG,
        Method::PATCH,
        &format!("/admin/v1/orgs/{org}"),
        Some(json!({"name": "Mine now"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "forbidden");

    // A Telegram user who is not the shop's staff (a customer, say) is refused too.
    let (status, body) = as_staff(
        &app,
        CASHIER_TG + 1,
        Method::GET,
        &format!("/admin/v1/orgs/{org}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    // Init data signed by another bot is no credential at all.
    let forged = sign(
        &[
            ("auth_date", "1"),
            ("user", &json!({"id": CASHIER_TG}).to_string()),
        ],
        "987:other-bot",
    );
    let (status, _) = send(
        app.http
            .get(app.url(&format!("/admin/v1/orgs/{org}")))
            .header("Authorization", format!("tma {forged}")),
    )
    .await;
    assert_eq!(status, 401);
}
