//! The operator API as an operator uses it: organizations, customers, promo codes, wallets,
//! idempotency, authentication and tenant isolation.

use e2e::{TestApp, send};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn requests_without_the_admin_token_are_refused() {
    let app = TestApp::spawn().await;
    let (status, body) = send(app.http.get(app.url("/admin/v1/orgs/1"))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = send(
        app.http
            .get(app.url("/admin/v1/orgs/1"))
            .bearer_auth("wrong"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = send(
        app.http
            .post(app.url("/admin/v1/orgs"))
            .json(&json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 401);
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 0);
}

#[tokio::test]
async fn health_and_openapi_answer_without_a_token() {
    let app = TestApp::spawn().await;
    assert_eq!(send(app.http.get(app.url("/healthz"))).await.0, 200);
    let (status, doc) = send(app.http.get(app.url("/openapi.json"))).await;
    assert_eq!(status, 200);
    assert!(doc["paths"]["/admin/v1/orgs/{org}/customers/{id}/bonuses"]["post"].is_object());
}

#[tokio::test]
async fn an_organization_keeps_its_bot_token_write_only() {
    let app = TestApp::spawn().await;
    let org = app
        .create_org(&json!({"name": "Магазин", "time_zone": "Asia/Bishkek", "telegram_bot_token": "123456:ABCdefGhIJKlmnoPQRstuVWxyz0123"}))
        .await;
    let (_, read) = app.get(&format!("/admin/v1/orgs/{org}")).await;
    assert_eq!(read["time_zone"], "Asia/Bishkek");
    assert_eq!(read["telegram_bot_token_set"], true);
    assert!(
        !read.to_string().contains("ABCdef"),
        "the token never comes back: {read}"
    );

    let (status, patched) = send(
        app.admin(Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"bonus_program_settings": {"invoice_bonus_percentage": "2.5", "referral_promo_bonus": 50, "referrer_first_purchase_percentage": 5, "accrue_when_paying_with_bonuses": true}})),
    )
    .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["bonus_program_settings"]["invoice_bonus_percentage"],
        json!(2.5)
    );
    assert_eq!(patched["name"], "Магазин");

    let (status, body) = send(
        app.admin(Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"time_zone": "Mars/Olympus"})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("time_zone")),
        "{body}"
    );
    let (status, _) = app.get("/admin/v1/orgs/999999").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_pos_integration_token_is_shown_once_and_stored_hashed() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/integrations"),
            &json!({"system": "time-to-grow-pro"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let token = body["token"].as_str().expect("token");
    assert!(token.len() >= 40);
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from integrations where token_sha256 = sha256($1::bytea)",
    )
    .bind(token.as_bytes())
    .fetch_one(&app.db.pool)
    .await
    .expect("query");
    assert_eq!(stored, 1);
    let plain: i64 = sqlx::query_scalar(
        "select count(*) from integrations where position($1::bytea in token_sha256) > 0",
    )
    .bind(token.as_bytes())
    .fetch_one(&app.db.pool)
    .await
    .expect("query");
    assert_eq!(plain, 0);
}

#[tokio::test]
async fn customers_are_found_by_name_phone_and_username() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Ермек", "phone_number": "+7 747 247-91-97", "username": "ermek_kz", "telegram_id": 1759684971}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().expect("id").to_owned();
    app.customer(org, "Alex").await;

    for q in ["ерм", "7472479", "ERMEK_", &id] {
        let (status, found) = app
            .get(&format!(
                "/admin/v1/orgs/{org}/customers?q={}",
                urlencode(q)
            ))
            .await;
        assert_eq!(status, 200);
        let ids: Vec<&str> = found["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|c| c["id"].as_str())
            .collect();
        assert_eq!(ids, [id.as_str()], "q={q}");
    }
    let (_, all) = app
        .get(&format!("/admin/v1/orgs/{org}/customers?limit=1"))
        .await;
    assert_eq!(all["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(all["next_offset"], 1);

    let (_, customer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    assert_eq!(customer["phone_number"], "+77472479197");
    assert_eq!(customer["referral_code"], format!("PROMO{id}"));
    assert_eq!(customer["combined_history"], json!([]));

    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Twin", "telegram_id": 1759684971}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"phone_number": "call me"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("phone_number"))
    );
    let (status, _) = app
        .get(&format!("/admin/v1/orgs/{org}/customers?limit=0"))
        .await;
    assert_eq!(status, 422);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_friends_promo_code_credits_the_bonus_and_links_the_referral() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let friend = app.customer(org, "Synkris").await;
    let alex = app.customer(org, "Alex").await;

    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{alex}/promo"),
            &json!({"code": format!("promo{friend}")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bonuses"], json!(50));

    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{alex}"))
        .await;
    assert_eq!(read["referred_by"], friend.as_str());
    assert_eq!(read["history"][0]["description"], "Бонус за промокод");
    assert_eq!(read["history"][0]["transaction_type"], "bonus");
    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{friend}"))
        .await;
    assert_eq!(read["referrals"], json!([alex]));

    // Entered twice: refused, nothing credited again.
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{alex}/promo"),
            &json!({"code": format!("PROMO{friend}")}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_referred"))
    );
    // The friend cannot enter the code of the one they referred: no loops.
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{friend}/promo"),
            &json!({"code": format!("PROMO{alex}")}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("code")),
        "{body}"
    );
    let (_, read) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{alex}"))
        .await;
    assert_eq!(read["bonuses"], json!(50));
}

#[tokio::test]
async fn promo_codes_are_refused_when_own_unknown_or_after_the_first_purchase() {
    let app = TestApp::spawn().await;
    let org = app.imported_seed().await;
    // 13999 has not bought anything; 26084's code exists; its own code and unknown ones are refused.
    for (code, status) in [("PROMO13999", 422), ("PROMO1", 422), ("HELLO", 422)] {
        let (got, body) = app
            .post(
                &format!("/admin/v1/orgs/{org}/customers/13999/promo"),
                &json!({"code": code}),
            )
            .await;
        assert_eq!(got, status, "{code}: {body}");
        assert_eq!(body["error"]["field"], "code");
    }
    // 82423 has made purchases already.
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/82423/promo"),
            &json!({"code": "PROMO26084"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("after_first_purchase")),
        "{body}"
    );
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/424242/promo"),
            &json!({"code": "PROMO26084"}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn operators_accrue_and_deduct_bonuses_and_debts_without_overdrawing() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let id = app.customer(org, "Alex").await;
    let bonuses = format!("/admin/v1/orgs/{org}/customers/{id}/bonuses");
    let debts = format!("/admin/v1/orgs/{org}/customers/{id}/debts");

    let (status, body) = app
        .post(&bonuses, &json!({"op": "accrue", "amount": "250"}))
        .await;
    assert_eq!(
        (status, body["bonuses"].clone()),
        (201, json!(250)),
        "{body}"
    );
    let (status, body) = app
        .post(&bonuses, &json!({"op": "deduct", "amount": 250.01}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("insufficient_balance")),
        "{body}"
    );
    let (status, body) = app
        .post(&bonuses, &json!({"op": "deduct", "amount": 249.4}))
        .await;
    assert_eq!((status, body["bonuses"].clone()), (201, json!(0.6)));
    let (status, body) = app
        .post(
            &bonuses,
            &json!({"op": "accrue", "amount": 5, "wallet": "referral", "description": "Подарок"}),
        )
        .await;
    assert_eq!((status, body["referral_bonuses"].clone()), (201, json!(5)));

    let (status, body) = app
        .post(&debts, &json!({"op": "add", "amount": 10000}))
        .await;
    assert_eq!((status, body["debts"].clone()), (201, json!(10000)));
    let (status, _) = app
        .post(&debts, &json!({"op": "pay", "amount": 10000.01}))
        .await;
    assert_eq!(status, 409);
    let (status, body) = app
        .post(&debts, &json!({"op": "pay", "amount": 10000}))
        .await;
    assert_eq!((status, body["debts"].clone()), (201, json!(0)));

    let (_, customer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    let texts: Vec<&str> = customer["combined_history"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|e| e["description"].as_str())
        .collect();
    assert_eq!(
        texts,
        [
            "Погашение долга",
            "Добавление долга",
            "Подарок",
            "Списание бонусов (админ)",
            "Начисление бонусов (админ)"
        ]
    );
    assert_eq!(customer["debt_history"][1]["type"], "payment");
}

#[tokio::test]
async fn amounts_that_are_not_money_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let id = app.customer(org, "Alex").await;
    let path = format!("/admin/v1/orgs/{org}/customers/{id}/bonuses");
    for amount in [
        json!(0),
        json!(-5),
        json!("-5"),
        json!("abc"),
        json!(1.001),
        json!("1e3"),
        json!(null),
        json!(true),
    ] {
        let (status, body) = app
            .post(&path, &json!({"op": "accrue", "amount": amount}))
            .await;
        assert_eq!(status, 422, "{amount}: {body}");
        assert_eq!(body["error"]["field"], "amount", "{amount}: {body}");
    }
    let (status, body) = app.post(&path, &json!({"op": "steal", "amount": 5})).await;
    assert_eq!((status, body["error"]["field"].as_str()), (422, Some("op")));
    let (status, body) = app.post(&path, &json!({"amount": 5})).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("op")),
        "{body}"
    );
    let (status, body) = send(
        app.admin(Method::POST, &path)
            .header("content-type", "application/json")
            .body("{\"op\": "),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (status, body) = send(
        app.admin(Method::POST, &path)
            .body(vec![b' '; 2 * 1024 * 1024]),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (_, customer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    assert_eq!(customer["history"], json!([]), "nothing changed");
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_changes_nothing() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let id = app.customer(org, "Alex").await;
    let path = format!("/admin/v1/orgs/{org}/customers/{id}/bonuses");
    let request = || {
        app.admin(Method::POST, &path)
            .header("Idempotency-Key", "op-1")
            .json(&json!({"op": "accrue", "amount": 100}))
    };

    // Ten concurrent retries and one later: one effect, the same answer every time.
    let answers = futures::future::join_all((0..10).map(|_| send(request()))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 201);
        assert_eq!(body["bonuses"], json!(100));
    }
    let (status, body) = send(request()).await;
    assert_eq!((status, body["bonuses"].clone()), (201, json!(100)));

    let (_, customer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    assert_eq!(customer["bonuses"], json!(100));
    assert_eq!(customer["history"].as_array().map(Vec::len), Some(1));

    // The same key for a different request is refused rather than silently answered.
    let (status, body) = send(
        app.admin(Method::POST, &path)
            .header("Idempotency-Key", "op-1")
            .json(&json!({"op": "accrue", "amount": 7})),
    )
    .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("Idempotency-Key"))
    );
}

#[tokio::test]
async fn one_organization_never_sees_anothers_customers_or_bills() {
    let app = TestApp::spawn().await;
    let ours = app.org().await;
    let theirs = app.org().await;
    let customer = app.customer(theirs, "Secret").await;
    let (status, bill) = app
        .post(&format!("/admin/v1/orgs/{theirs}/bills"), &json!({"customer_id": customer, "items": [{"name": "x", "quantity": 1, "unit_price": 10}]}))
        .await;
    assert_eq!(status, 201, "{bill}");
    let bill = bill["id"].as_i64().expect("id");

    for path in [
        format!("/admin/v1/orgs/{ours}/customers/{customer}"),
        format!("/admin/v1/orgs/{ours}/bills/{bill}"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
    }
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{ours}/customers/{customer}/bonuses"),
            &json!({"op": "accrue", "amount": 1}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = send(app.admin(
        Method::DELETE,
        &format!("/admin/v1/orgs/{ours}/bills/{bill}"),
    ))
    .await;
    assert_eq!(status, 404);
    let (status, body) = app
        .post(&format!("/admin/v1/orgs/{ours}/bills"), &json!({"customer_id": customer, "items": [{"name": "x", "quantity": 1, "unit_price": 10}]}))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("customer_id"))
    );
    let (_, listed) = app.get(&format!("/admin/v1/orgs/{ours}/customers")).await;
    assert_eq!(listed["items"], json!([]));
    let (_, listed) = app.get(&format!("/admin/v1/orgs/{ours}/bills")).await;
    assert_eq!(listed["items"], Value::Array(vec![]));
}

#[tokio::test]
async fn a_phone_only_customer_merges_into_the_mini_app_one_once_keeping_every_entry() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let (_, phone) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Ермек", "phone_number": "+77472479197"}),
        )
        .await;
    let phone = phone["id"].as_str().expect("id").to_owned();
    let (_, tg) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers"),
            &json!({"first_name": "Ermek", "telegram_id": 777}),
        )
        .await;
    let tg = tg["id"].as_str().expect("id").to_owned();
    let friend = app.customer(org, "Friend").await;
    app.post(
        &format!("/admin/v1/orgs/{org}/customers/{phone}/bonuses"),
        &json!({"op": "accrue", "amount": 100}),
    )
    .await;
    app.post(
        &format!("/admin/v1/orgs/{org}/customers/{phone}/debts"),
        &json!({"op": "add", "amount": 20}),
    )
    .await;
    app.post(
        &format!("/admin/v1/orgs/{org}/customers/{tg}/bonuses"),
        &json!({"op": "accrue", "amount": 10}),
    )
    .await;
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{friend}/promo"),
            &json!({"code": format!("PROMO{phone}")}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, before) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{phone}"))
        .await;

    let path = format!("/admin/v1/orgs/{org}/customers/{tg}/merge");
    let (status, merged) = app.post(&path, &json!({"from": phone})).await;
    assert_eq!(status, 200, "{merged}");
    assert_eq!(
        (
            merged["entries_moved"].clone(),
            merged["referrals_moved"].clone()
        ),
        (json!(2), json!(1))
    );
    let (_, survivor) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{tg}"))
        .await;
    assert_eq!(
        (survivor["bonuses"].clone(), survivor["debts"].clone()),
        (json!(110), json!(20))
    );
    assert_eq!(survivor["phone_number"], "+77472479197");
    assert_eq!(survivor["referrals"], json!([friend]));
    for entry in before["combined_history"].as_array().expect("history") {
        assert!(
            survivor["combined_history"]
                .as_array()
                .expect("history")
                .contains(entry),
            "kept as it was: {entry}"
        );
    }
    let (_, emptied) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{phone}"))
        .await;
    assert_eq!(
        (
            emptied["bonuses"].clone(),
            emptied["combined_history"].clone()
        ),
        (json!(0), json!([]))
    );
    let (_, referred) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{friend}"))
        .await;
    assert_eq!(referred["referred_by"], tg.as_str());

    let (status, body) = app.post(&path, &json!({"from": phone})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("already_merged"))
    );
    let (status, body) = app.post(&path, &json!({"from": tg})).await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (422, Some("from"))
    );
    // Outside a merge the ledger stays append-only.
    let rewrite = sqlx::query("update ledger_entries set customer_id = customer_id")
        .execute(&app.db.pool)
        .await;
    assert!(rewrite.is_err());
}

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_organization_and_route() {
    let app = TestApp::spawn().await;
    let (ours, theirs) = (app.org().await, app.org().await);
    let create = |org: i64| {
        app.admin(Method::POST, &format!("/admin/v1/orgs/{org}/customers"))
            .header("Idempotency-Key", "same-key")
            .json(&json!({"first_name": "Alex"}))
    };
    let (status, mine) = send(create(ours)).await;
    assert_eq!(status, 201, "{mine}");
    let (status, other) = send(create(theirs)).await;
    assert_eq!(
        status, 201,
        "another organization's key is its own: {other}"
    );

    // The same key on another route of the same organization is another request too.
    let accrue = || {
        app.admin(
            Method::POST,
            &format!(
                "/admin/v1/orgs/{ours}/customers/{}/bonuses",
                mine["id"].as_str().unwrap_or("")
            ),
        )
        .header("Idempotency-Key", "same-key")
        .json(&json!({"op": "accrue", "amount": 100}))
    };
    let (status, accrued) = send(accrue()).await;
    assert_eq!(
        (status, accrued["bonuses"].clone()),
        (201, json!(100)),
        "{accrued}"
    );

    // A retry in one organization still replays its own answer, with no second effect.
    assert_eq!(send(create(ours)).await, (201, mine.clone()));
    assert_eq!(send(accrue()).await, (201, accrued));
    for org in [ours, theirs] {
        let customers: i64 = sqlx::query_scalar("select count(*) from customers where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.pool)
            .await
            .expect("count");
        assert_eq!(customers, 1, "organization {org}");
    }
    let (_, customer) = app
        .get(&format!(
            "/admin/v1/orgs/{ours}/customers/{}",
            mine["id"].as_str().unwrap_or("")
        ))
        .await;
    assert_eq!(customer["bonuses"], json!(100));
}

#[tokio::test]
async fn a_list_at_the_largest_offset_answers_with_no_next_page() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    for path in [
        format!("/admin/v1/orgs/{org}/bills"),
        format!("/admin/v1/orgs/{org}/receipts"),
        format!("/admin/v1/orgs/{org}/notifications"),
        format!("/admin/v1/orgs/{org}/customers"),
        "/admin/v1/ops/receipts".to_owned(),
    ] {
        let (status, body) = app
            .get(&format!("{path}?limit=1&offset={}", i64::MAX))
            .await;
        assert_eq!(status, 200, "{path}: {body}");
        assert_eq!(body["next_offset"], Value::Null, "{path}");
    }
}
