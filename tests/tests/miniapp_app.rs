//! What the Mini App page needs of `/app/v1` beyond the legacy API: the referral by a friend's
//! link on the first visit, the share link, the cashier's QR code, write access and the staff role.

use e2e::{BOT_TOKEN, TestApp, seed_settings, send};
use loyalty::init_data::sign;
use serde_json::{Value, json};

async fn shop(app: &TestApp) -> i64 {
    app.create_org(
        &json!({"name": "Shop", "telegram_bot_token": BOT_TOKEN, "currency_symbol": "сом",
                           "bonus_program_settings": seed_settings()}),
    )
    .await
}

/// Init data as Telegram signs it for `user` (a JSON object), with `start_param` when the app was
/// opened through a `startapp` link.
fn init_data(user: &Value, start_param: Option<&str>) -> String {
    let auth_date = (chrono::Utc::now().timestamp() - 5).to_string();
    let user = user.to_string();
    let mut fields = vec![
        ("auth_date", auth_date.as_str()),
        ("query_id", "AAE-test"),
        ("user", user.as_str()),
    ];
    if let Some(param) = start_param {
        fields.push(("start_param", param));
    }
    sign(&fields, BOT_TOKEN)
}

fn user(id: i64, name: &str) -> Value {
    json!({"id": id, "first_name": name, "language_code": "ru"})
}

async fn me(app: &TestApp, org: i64, init: &str) -> Value {
    let (status, me) = app
        .as_user(
            reqwest::Method::GET,
            &format!("/app/v1/orgs/{org}/me"),
            init,
            None,
        )
        .await;
    assert_eq!(status, 200, "{me}");
    me
}

#[tokio::test]
async fn a_first_visit_through_a_friends_link_applies_the_code_once() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let friend = me(&app, org, &init_data(&user(1001, "Friend"), None)).await;
    let code = friend["referral_code"].as_str().expect("code").to_owned();

    let link = init_data(&user(1002, "Newcomer"), Some(&code));
    let first = me(&app, org, &link).await;
    assert_eq!(first["referral"], json!({"code": code, "applied": true}));
    assert_eq!(first["referred_by"], friend["id"]);
    assert_eq!(first["has_been_welcomed"], true);
    assert_eq!(
        first["bonuses"].as_f64(),
        Some(50.0),
        "the promo bonus: {first}"
    );

    let second = me(&app, org, &link).await;
    assert!(
        second.get("referral").is_none(),
        "tried on the first visit only: {second}"
    );
    assert_eq!(second["bonuses"], first["bonuses"]);
    let promos: i64 = sqlx::query_scalar(
        "select count(*) from customers where org_id = $1 and referred_by is not null",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!(promos, 1);
}

#[tokio::test]
async fn an_invalid_code_in_the_link_is_a_note_not_an_error() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let first = me(
        &app,
        org,
        &init_data(&user(2001, "Ann"), Some("PROMO999999999")),
    )
    .await;
    assert_eq!(first["referral"]["code"], "PROMO999999999");
    assert_eq!(first["referral"]["applied"], false);
    assert_eq!(first["referral"]["error"], "invalid");
    assert!(
        first["referral"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{first}"
    );
    assert_eq!(first["referred_by"], Value::Null);

    // A parameter that is no promo code is not a referral at all.
    let other = me(
        &app,
        org,
        &init_data(&user(2002, "Bob"), Some("from_instagram")),
    )
    .await;
    assert!(other.get("referral").is_none(), "{other}");
}

#[tokio::test]
async fn the_share_link_opens_the_app_when_its_short_name_is_known_else_the_bot() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let init = init_data(&user(3001, "Ann"), None);
    let first = me(&app, org, &init).await;
    assert_eq!(first["share_link"], Value::Null, "no bot username yet");
    assert_eq!(first["organization"]["currency_symbol"], "сом");
    let code = first["referral_code"].as_str().expect("code").to_owned();

    sqlx::query("update organizations set telegram_bot_username = 'shop_bot' where id = $1")
        .bind(org)
        .execute(&app.db.pool)
        .await
        .expect("username");
    assert_eq!(
        me(&app, org, &init).await["share_link"],
        format!("https://t.me/shop_bot?start={code}")
    );
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"miniapp_short_name": "bonus"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        me(&app, org, &init).await["share_link"],
        format!("https://t.me/shop_bot/bonus?startapp={code}")
    );
}

#[tokio::test]
async fn staff_see_their_role_and_customers_see_none() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    sqlx::query(
        "insert into staff (org_id, telegram_id, role, added_by) values ($1, 4001, 'cashier', 'platform')",
    )
    .bind(org)
    .execute(&app.db.pool)
    .await
    .expect("staff");
    assert_eq!(
        me(&app, org, &init_data(&user(4001, "Cashier"), None)).await["staff_role"],
        "cashier"
    );
    assert_eq!(
        me(&app, org, &init_data(&user(4002, "Customer"), None)).await["staff_role"],
        Value::Null
    );
}

/// The dark modules of a `qrcode` SVG (one `M{x} {y}h{w}v{h}H{x}V{y}` rectangle each, one unit a
/// module), as a greyscale bitmap `scale` pixels a module.
fn rasterize(svg: &str, scale: usize) -> (usize, Vec<u8>) {
    let size: usize = svg
        .split("width=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|w| w.parse().ok())
        .expect("width");
    let path = svg
        .split(" d=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("path");
    let side = size * scale;
    let mut pixels = vec![255u8; side * side];
    for rect in path.split('M').filter(|r| !r.is_empty()) {
        let numbers: Vec<usize> = rect
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .map(|n| n.parse().expect("number"))
            .collect();
        let (x, y, w, h) = (numbers[0], numbers[1], numbers[2], numbers[3]);
        for row in y * scale..(y + h) * scale {
            for col in x * scale..(x + w) * scale {
                pixels[row * side + col] = 0;
            }
        }
    }
    (side, pixels)
}

#[tokio::test]
async fn the_cashier_code_is_a_private_qr_of_the_customer_id() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let init = init_data(&user(5001, "Ann"), None);
    let id = me(&app, org, &init).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let response = app
        .http
        .get(app.url(&format!("/app/v1/orgs/{org}/me/code.svg")))
        .header("Authorization", format!("tma {init}"))
        .send()
        .await
        .expect("code");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/svg+xml");
    let cache = response.headers()["cache-control"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(cache.starts_with("private"), "{cache}");
    let svg = response.text().await.expect("svg");
    assert!(svg.contains("<svg"), "{svg}");

    let (side, pixels) = rasterize(&svg, 4);
    let mut image =
        rqrr::PreparedImage::prepare_from_greyscale(side, side, |x, y| pixels[y * side + x]);
    let grids = image.detect_grids();
    assert_eq!(grids.len(), 1, "one QR code");
    let (_, content) = grids[0].decode().expect("decodes");
    assert_eq!(content, id);

    let (status, _) = send(
        app.http
            .get(app.url(&format!("/app/v1/orgs/{org}/me/code.svg")))
            .header("Authorization", "tma auth_date=1&hash=00"),
    )
    .await;
    assert_eq!(status, 401, "no code without valid init data");
}

#[tokio::test]
async fn write_access_lets_the_bot_write_and_clears_unreachable() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let init = init_data(&user(6001, "Ann"), None);
    let first = me(&app, org, &init).await;
    assert_eq!(first["can_message"], false, "never started the bot");
    let id: i64 = first["id"].as_str().expect("id").parse().expect("digits");
    let mut conn = app.db.pool.acquire().await.expect("conn");
    loyalty::customers::mark_telegram_unreachable(&mut conn, org, id, "blocked")
        .await
        .expect("mark");

    let (status, body) = app
        .as_user(
            reqwest::Method::POST,
            &format!("/app/v1/orgs/{org}/me/write-access"),
            &init,
            Some(json!({"granted": true})),
        )
        .await;
    assert_eq!((status, body), (200, json!({"can_message": true})));
    let unreachable: bool = sqlx::query_scalar(
        "select telegram_unreachable_at is not null from customers where org_id = $1 and id = $2",
    )
    .bind(org)
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .expect("row");
    assert!(!unreachable);
    assert_eq!(me(&app, org, &init).await["can_message"], true);

    let (status, body) = app
        .as_user(
            reqwest::Method::POST,
            &format!("/app/v1/orgs/{org}/me/write-access"),
            &init,
            Some(json!({"granted": "yes"})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
}

#[tokio::test]
async fn init_data_that_allows_writing_is_recorded() {
    let app = TestApp::spawn().await;
    let org = shop(&app).await;
    let allowing = json!({"id": 7001, "first_name": "Ann", "allows_write_to_pm": true});
    assert_eq!(
        me(&app, org, &init_data(&allowing, None)).await["can_message"],
        true
    );
}
