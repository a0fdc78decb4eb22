//! Access scoped to one shop: the shop's staff (Telegram users, `Authorization: tma <initData>`)
//! and API keys (`Bearer lk_…`) reach their own organization's routes that their role allows,
//! and nothing else; every change they make is in the audit trail.

use std::collections::{BTreeMap, BTreeSet};

use e2e::{BOT_TOKEN, TestApp, seed_settings, send, signed_init_data};
use loyalty::access::{Actor, Role};
use loyalty::init_data::sign;
use reqwest::Method;
use serde_json::{Value, json};

const OWNER_TG: i64 = 700_000_001;
const CASHIER_TG: i64 = 700_000_002;

/// An organization with a bot (so its staff's init data can be checked).
async fn shop(app: &TestApp, name: &str) -> i64 {
    app.create_org(&json!({"name": name, "telegram_bot_token": BOT_TOKEN,
                           "bonus_program_settings": seed_settings()}))
        .await
}

/// Init data of Telegram user `user_id`, signed by the test bot just now.
fn init_data(user_id: i64) -> String {
    signed_init_data(
        &json!({"id": user_id, "first_name": "Staff", "language_code": "ru"}),
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

    // Who asks, how, and what they get: their own shop's customer, another shop's, their own
    // shop's settings (an owner's), and a Telegram user who is not the shop's staff.
    let cases = [
        (
            CASHIER_TG,
            Method::GET,
            format!("/admin/v1/orgs/{org}/customers/{customer}"),
            None,
            200,
        ),
        (
            CASHIER_TG,
            Method::GET,
            format!("/admin/v1/orgs/{other}/customers/{foreign}"),
            None,
            403,
        ),
        (
            CASHIER_TG,
            Method::PATCH,
            format!("/admin/v1/orgs/{org}"),
            Some(json!({"name": "Mine now"})),
            403,
        ),
        (
            CASHIER_TG + 1,
            Method::GET,
            format!("/admin/v1/orgs/{org}"),
            None,
            403,
        ),
    ];
    for (user, method, path, body, expected) in cases {
        let (status, answer) = as_staff(&app, user, method.clone(), &path, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        if expected == 200 {
            assert_eq!(answer["id"], customer);
        } else {
            assert_eq!(answer["error"]["code"], "forbidden", "{method} {path}");
        }
    }

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

/// Who besides the platform may call each operator route, written out here apart from the
/// server's table: cashiers run the desk, owners everything of their shop, readers every read.
fn expected_roles() -> BTreeMap<(&'static str, &'static str), &'static [&'static str]> {
    const ALL: &[&str] = &["owner", "cashier", "reader"];
    const DESK: &[&str] = &["owner", "cashier"];
    const OWNER: &[&str] = &["owner"];
    const READS: &[&str] = &["owner", "reader"];
    const NONE: &[&str] = &[];
    BTreeMap::from([
        (("post", "/admin/v1/orgs"), NONE),
        (("post", "/admin/v1/import"), NONE),
        (("get", "/admin/v1/ops/summary"), NONE),
        (("get", "/admin/v1/ops/queues"), NONE),
        (("get", "/admin/v1/ops/dead-letters"), NONE),
        (("post", "/admin/v1/ops/dead-letters/replay"), NONE),
        (("get", "/admin/v1/ops/receipts"), NONE),
        (("get", "/admin/v1/ops/notifications"), NONE),
        (("get", "/admin/v1/orgs/{org}"), ALL),
        (("patch", "/admin/v1/orgs/{org}"), OWNER),
        (("post", "/admin/v1/orgs/{org}/integrations"), OWNER),
        (
            ("put", "/admin/v1/orgs/{org}/imported-bonuses/expiry"),
            OWNER,
        ),
        (("get", "/admin/v1/orgs/{org}/customers"), ALL),
        (("post", "/admin/v1/orgs/{org}/customers"), DESK),
        (("get", "/admin/v1/orgs/{org}/customers/{id}"), ALL),
        (("post", "/admin/v1/orgs/{org}/customers/{id}/promo"), DESK),
        (
            ("post", "/admin/v1/orgs/{org}/customers/{id}/bonuses"),
            DESK,
        ),
        (("post", "/admin/v1/orgs/{org}/customers/{id}/debts"), DESK),
        (("post", "/admin/v1/orgs/{org}/customers/{id}/merge"), OWNER),
        (
            ("put", "/admin/v1/orgs/{org}/customers/{id}/birth_date"),
            DESK,
        ),
        (("get", "/admin/v1/orgs/{org}/bills"), ALL),
        (("post", "/admin/v1/orgs/{org}/bills"), DESK),
        (("get", "/admin/v1/orgs/{org}/bills/{id}"), ALL),
        (("delete", "/admin/v1/orgs/{org}/bills/{id}"), DESK),
        (("get", "/admin/v1/orgs/{org}/receipts"), READS),
        (
            ("post", "/admin/v1/orgs/{org}/receipts/{receipt}/attach"),
            OWNER,
        ),
        (("get", "/admin/v1/orgs/{org}/notifications"), READS),
        (("get", "/admin/v1/orgs/{org}/reports/liability"), READS),
        (("get", "/admin/v1/orgs/{org}/reports/activity"), READS),
        (("get", "/admin/v1/orgs/{org}/export"), READS),
        (("get", "/admin/v1/orgs/{org}/staff"), READS),
        (("post", "/admin/v1/orgs/{org}/staff"), OWNER),
        (("patch", "/admin/v1/orgs/{org}/staff/{telegram_id}"), OWNER),
        (
            ("delete", "/admin/v1/orgs/{org}/staff/{telegram_id}"),
            OWNER,
        ),
        (("get", "/admin/v1/orgs/{org}/api-keys"), READS),
        (("post", "/admin/v1/orgs/{org}/api-keys"), OWNER),
        (("delete", "/admin/v1/orgs/{org}/api-keys/{id}"), OWNER),
        (("get", "/admin/v1/orgs/{org}/audit"), READS),
    ])
}

/// A key of `org` with `role`, made by the platform; returns its secret.
async fn key(app: &TestApp, org: i64, role: &str) -> String {
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/api-keys"),
            &json!({"name": format!("{role} key"), "role": role}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let secret = body["secret"].as_str().expect("secret").to_owned();
    assert!(secret.starts_with("lk_"), "{secret}");
    secret
}

async fn with_key(app: &TestApp, secret: &str, method: Method, path: &str) -> (u16, Value) {
    let mut request = app
        .http
        .request(method.clone(), app.url(path))
        .bearer_auth(secret);
    if method != Method::GET && method != Method::DELETE {
        request = request.json(&json!({}));
    }
    send(request).await
}

#[tokio::test]
async fn every_documented_operator_route_admits_exactly_the_roles_it_is_classified_for() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "A").await;
    let other = shop(&app, "B").await;
    let customer = app.customer(org, "Aigerim").await;
    let (_, doc) = app.get("/openapi.json").await;
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        if !path.starts_with("/admin/v1/") {
            continue;
        }
        for (method, operation) in item.as_object().expect("operations") {
            documented.insert((method.clone(), path.clone()));
            assert!(
                operation["responses"].get("403").is_some(),
                "{method} {path} documents no 403"
            );
        }
    }
    let expected = expected_roles();
    let classified: BTreeSet<(String, String)> = expected
        .keys()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, classified,
        "every operator route in the OpenAPI document is classified here, and nothing else"
    );

    let mut keys = Vec::new();
    for role in ["owner", "cashier", "reader"] {
        keys.push((role, key(&app, org, role).await));
    }
    for ((method, template), roles) in &expected {
        let doc_roles: Vec<&str> = doc["paths"][*template][*method]["x-roles"]
            .as_array()
            .expect("x-roles")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(&doc_roles, roles, "x-roles of {method} {template}");
        let method_of = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let concrete = |org: i64| {
            template
                .replace("{org}", &org.to_string())
                .replace("{id}", &customer)
                .replace("{telegram_id}", "1")
                .replace("{receipt}", "no-such-receipt")
        };
        let (status, body) =
            send(app.http.request(method_of.clone(), app.url(&concrete(org)))).await;
        assert_eq!(
            status, 401,
            "{method} {template} without credentials: {body}"
        );
        for (role, secret) in &keys {
            let (status, body) = with_key(&app, secret, method_of.clone(), &concrete(org)).await;
            if roles.contains(role) {
                assert!(
                    status != 401 && status != 403,
                    "{role} key on its own {method} {template}: {status} {body}"
                );
            } else {
                assert_eq!(status, 403, "{role} key on {method} {template}: {body}");
                assert_eq!(body["error"]["code"], "forbidden");
            }
            if template.contains("{org}") {
                let (status, body) =
                    with_key(&app, secret, method_of.clone(), &concrete(other)).await;
                assert_eq!(
                    status, 403,
                    "{role} key on another shop's {method} {template}: {body}"
                );
            }
        }
    }
}

/// `POST …/customers/{id}/bonuses` as `telegram_id` with an Idempotency-Key.
async fn accrue(
    app: &TestApp,
    org: i64,
    customer: &str,
    telegram_id: i64,
    key: &str,
) -> (u16, Value) {
    send(
        app.http
            .post(app.url(&format!(
                "/admin/v1/orgs/{org}/customers/{customer}/bonuses"
            )))
            .header("Authorization", format!("tma {}", init_data(telegram_id)))
            .header("Idempotency-Key", key)
            .json(&json!({"op": "accrue", "amount": "150.50", "description": "За отзыв"})),
    )
    .await
}

#[tokio::test]
async fn a_cashier_accrual_is_one_entry_naming_them_even_when_tapped_twice() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "A").await;
    make_staff(&app, org, OWNER_TG, Role::Owner).await;
    make_staff(&app, org, CASHIER_TG, Role::Cashier).await;
    let customer = app.customer(org, "Aigerim").await;

    let (first_status, first) = accrue(&app, org, &customer, CASHIER_TG, "tap-1").await;
    assert_eq!(first_status, 201, "{first}");
    let (again_status, again) = accrue(&app, org, &customer, CASHIER_TG, "tap-1").await;
    assert_eq!(again_status, 201, "{again}");
    assert_eq!(first, again);

    let customer_id: i64 = customer.parse().expect("id");
    let entries: Vec<(Option<String>, String)> = sqlx::query_as(
        "select actor, description from ledger_entries where org_id = $1 and customer_id = $2 \
         and source = 'operator'",
    )
    .bind(org)
    .bind(customer_id)
    .fetch_all(&app.db.pool)
    .await
    .expect("entries");
    assert_eq!(
        entries,
        vec![(Some(format!("staff:{CASHIER_TG}")), "За отзыв".to_owned())]
    );

    let (status, trail) = as_staff(
        &app,
        OWNER_TG,
        Method::GET,
        &format!("/admin/v1/orgs/{org}/audit?actor=staff:{CASHIER_TG}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{trail}");
    let items = trail["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{trail}");
    assert_eq!(items[0]["action"], "customer.bonuses");
    assert_eq!(items[0]["actor"], format!("staff:{CASHIER_TG}"));
    assert_eq!(items[0]["customer_id"], customer_id);
    assert_eq!(items[0]["detail"]["request"]["description"], "За отзыв");

    // A cashier does not read the trail.
    let (status, _) = as_staff(
        &app,
        CASHIER_TG,
        Method::GET,
        &format!("/admin/v1/orgs/{org}/audit"),
        None,
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn an_owner_adds_a_cashier_and_the_last_owner_cannot_be_removed_or_demoted() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "A").await;
    let (status, owner) = app
        .post(
            &format!("/admin/v1/orgs/{org}/staff"),
            &json!({"telegram_id": OWNER_TG, "role": "owner", "name": "Айдана"}),
        )
        .await;
    assert_eq!(status, 201, "{owner}");
    assert_eq!(owner["added_by"], "platform");

    let staff = format!("/admin/v1/orgs/{org}/staff");
    let (status, added) = as_staff(
        &app,
        OWNER_TG,
        Method::POST,
        &staff,
        Some(json!({"telegram_id": CASHIER_TG, "role": "cashier"})),
    )
    .await;
    assert_eq!(status, 201, "{added}");
    assert_eq!(added["added_by"], format!("staff:{OWNER_TG}"));
    let (status, _) = as_staff(
        &app,
        CASHIER_TG,
        Method::GET,
        &format!("/admin/v1/orgs/{org}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = as_staff(
        &app,
        CASHIER_TG,
        Method::POST,
        &staff,
        Some(json!({"telegram_id": CASHIER_TG + 1, "role": "owner"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = as_staff(
        &app,
        OWNER_TG,
        Method::POST,
        &staff,
        Some(json!({"telegram_id": CASHIER_TG, "role": "owner"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("staff_exists")),
        "{body}"
    );

    let me = format!("{staff}/{OWNER_TG}");
    let (status, body) = as_staff(
        &app,
        OWNER_TG,
        Method::PATCH,
        &me,
        Some(json!({"role": "cashier"})),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("last_owner")),
        "{body}"
    );
    let (status, body) = as_staff(&app, OWNER_TG, Method::DELETE, &me, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (409, &json!("last_owner")),
        "{body}"
    );

    // With a second owner, the first may step down.
    let (status, _) = as_staff(
        &app,
        OWNER_TG,
        Method::PATCH,
        &format!("{staff}/{CASHIER_TG}"),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = as_staff(
        &app,
        OWNER_TG,
        Method::PATCH,
        &me,
        Some(json!({"role": "cashier"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "cashier");

    let (_, trail) = app
        .get(&format!("/admin/v1/orgs/{org}/audit?limit=2"))
        .await;
    let actions: Vec<&str> = trail["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["staff.role", "staff.role"], "{trail}");
    let before = trail["next_before"].as_i64().expect("next page");
    let (_, older) = app
        .get(&format!("/admin/v1/orgs/{org}/audit?before={before}"))
        .await;
    let older: Vec<&str> = older["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(older, ["staff.add", "staff.add", "org.create"]);
}

#[tokio::test]
async fn a_revoked_key_stops_working_at_once_and_its_secret_is_never_shown_again() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "A").await;
    let secret = key(&app, org, "cashier").await;
    let (status, _) = with_key(&app, &secret, Method::GET, &format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(status, 200);

    let (status, listed) = app.get(&format!("/admin/v1/orgs/{org}/api-keys")).await;
    assert_eq!(status, 200, "{listed}");
    let listed = &listed["items"][0];
    assert!(listed.get("secret").is_none(), "{listed}");
    assert!(listed["last_used_at"].is_string(), "{listed}");
    let id = listed["id"].as_i64().expect("id");

    let (status, revoked) = send(app.admin(
        Method::DELETE,
        &format!("/admin/v1/orgs/{org}/api-keys/{id}"),
    ))
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let (status, body) =
        with_key(&app, &secret, Method::GET, &format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = with_key(
        &app,
        "lk_not-a-key",
        Method::GET,
        &format!("/admin/v1/orgs/{org}"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn staff_requests_are_limited_per_telegram_user() {
    let app = TestApp::spawn().await;
    let org = shop(&app, "A").await;
    make_staff(&app, org, OWNER_TG, Role::Owner).await;
    make_staff(&app, org, CASHIER_TG, Role::Cashier).await;
    let path = format!("/admin/v1/orgs/{org}");
    let mut limited = None;
    // The test server allows bursts of 20 at 5 a second.
    for _ in 0..40 {
        let response = app
            .http
            .get(app.url(&path))
            .header("Authorization", format!("tma {}", init_data(CASHIER_TG)))
            .send()
            .await
            .expect("send");
        if response.status() == 429 {
            limited = Some(response);
            break;
        }
        assert_eq!(response.status(), 200);
    }
    let limited = limited.expect("the cashier was limited");
    assert_eq!(limited.headers()["retry-after"], "1");
    let (status, _) = as_staff(&app, OWNER_TG, Method::GET, &path, None).await;
    assert_eq!(
        status, 200,
        "another staff member keeps their own allowance"
    );
}
