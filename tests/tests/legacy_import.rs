//! Importing the old system's export reproduces its balances and history exactly, and exports back.

use e2e::{TestApp, legacy_export, same_json};
use serde_json::{Value, json};

/// The combined history without the rows that have no transaction_type, as the old system showed it.
fn typed_only(history: &Value) -> Value {
    Value::Array(
        history
            .as_array()
            .expect("array")
            .iter()
            .filter(|e| e.get("transaction_type").is_some())
            .cloned()
            .collect(),
    )
}

async fn imported(app: &TestApp) -> i64 {
    let (status, body) = app.post("/admin/v1/import", &legacy_export()).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["customers"], 4);
    assert_eq!(body["created"], true);
    body["id"].as_i64().expect("org id")
}

#[tokio::test]
async fn seed_import_reproduces_the_legacy_balances() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;

    let (_, alex_friend) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/82423"))
        .await;
    assert_eq!(alex_friend["bonuses"], json!(0.6));
    assert_eq!(alex_friend["referral_bonuses"], json!(50.0));
    assert_eq!(alex_friend["debts"], json!(0.0));
    assert_eq!(alex_friend["referrals"], json!(["94618"]));
    assert_eq!(
        alex_friend["referral_bonus_history"][0]["description"],
        "Бонус от друга Alex"
    );

    let (_, alex) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/94618"))
        .await;
    assert_eq!(alex["bonuses"], json!(222.36));
    assert_eq!(alex["referred_by"], "82423");
    let last = &alex["history"][14];
    assert_eq!(last["description"], "Бонус с накладной #14F7559E");
    assert_eq!(last["amount"], json!(222.36));
    assert!(
        last.get("transaction_type").is_none(),
        "a missing transaction_type stays missing"
    );

    // The database sums every wallet's entries itself: balance equals history for everyone.
    let drift: i64 = sqlx::query_scalar(
        "select count(*) from customers c where c.org_id = $1 and (
             bonuses <> coalesce((select sum(case kind when 'accrual' then amount else -amount end)
                                  from ledger_entries e where e.org_id = c.org_id and e.customer_id = c.id and wallet = 'main'), 0)
          or referral_bonuses <> coalesce((select sum(case kind when 'accrual' then amount else -amount end)
                                  from ledger_entries e where e.org_id = c.org_id and e.customer_id = c.id and wallet = 'referral'), 0)
          or debts <> coalesce((select sum(case kind when 'accrual' then amount else -amount end)
                                  from ledger_entries e where e.org_id = c.org_id and e.customer_id = c.id and wallet = 'debt'), 0))",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("query");
    assert_eq!(drift, 0);
}

#[tokio::test]
async fn combined_history_is_newest_first_by_the_real_instant() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;
    let seed = legacy_export();
    for id in ["82423", "94618"] {
        let (_, customer) = app
            .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
            .await;
        let ours = typed_only(&customer["combined_history"]);
        assert!(
            same_json(&ours, &seed[id]["combined_history"]),
            "customer {id}: {ours}\n!=\n{}",
            seed[id]["combined_history"]
        );
    }
    // The old system left rows without transaction_type out of combined_history (94618's last
    // accrual of 222.36); ours lists every movement, newest first.
    let (_, alex) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/94618"))
        .await;
    assert_eq!(alex["combined_history"][0]["amount"], json!(222.36));
    assert_eq!(alex["combined_history"].as_array().map(Vec::len), Some(15));
    // Walking 94618's history oldest first by instant, the balance never goes below zero; by the
    // local date_str text it would (the +06:00 entries sort after the +05:00 ones of earlier instants).
    let mut by_instant: Vec<Value> = alex["combined_history"].as_array().expect("array").clone();
    by_instant.reverse();
    let lowest = |entries: &[Value]| {
        let mut balance = rust_decimal::Decimal::ZERO;
        let mut lowest = balance;
        for e in entries {
            let amount: rust_decimal::Decimal = e["amount"].to_string().parse().expect("amount");
            balance += if e["type"] == "accrual" {
                amount
            } else {
                -amount
            };
            lowest = lowest.min(balance);
        }
        lowest
    };
    assert!(lowest(&by_instant) >= rust_decimal::Decimal::ZERO);
    let mut by_text = by_instant.clone();
    by_text.sort_by(|a, b| a["date_str"].as_str().cmp(&b["date_str"].as_str()));
    assert!(lowest(&by_text) < rust_decimal::Decimal::ZERO);
}

#[tokio::test]
async fn export_gives_back_what_was_imported() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;
    let (status, exported) = app.get(&format!("/admin/v1/orgs/{org}/export")).await;
    assert_eq!(status, 200);
    let seed = legacy_export();
    let seed = seed.as_object().expect("object");
    let exported = exported.as_object().expect("object");
    assert_eq!(
        seed.keys().collect::<Vec<_>>(),
        exported.keys().collect::<Vec<_>>(),
        "the same organization sections and customers"
    );
    for (key, original) in seed {
        let back = &exported[key];
        for (field, value) in original.as_object().expect("object") {
            let back = if field == "combined_history" {
                typed_only(&back[field])
            } else {
                back[field].clone()
            };
            assert!(same_json(value, &back), "{key}.{field}: {value} != {back}");
        }
        // Export only ever adds the derived combined_history the old system sometimes left out.
        let extra: Vec<&String> = back
            .as_object()
            .expect("object")
            .keys()
            .filter(|k| original.get(k.as_str()).is_none())
            .collect();
        assert!(
            extra.is_empty() || extra == ["combined_history"],
            "{key} gained {extra:?}"
        );
    }
}

#[tokio::test]
async fn importing_the_same_export_twice_doubles_nothing() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;
    let (status, again) = app.post("/admin/v1/import", &legacy_export()).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], org);
    assert_eq!(again["created"], false);
    let (orgs, entries): (i64, i64) = sqlx::query_as(
        "select (select count(*) from organizations), (select count(*) from ledger_entries)",
    )
    .fetch_one(&app.db.pool)
    .await
    .expect("count");
    assert_eq!((orgs, entries), (1, 15 + 6 + 3 + 1));
    let (_, alex) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/94618"))
        .await;
    assert_eq!(alex["bonuses"], json!(222.36));
}

#[tokio::test]
async fn an_export_whose_balance_differs_from_its_history_is_refused_naming_the_customer() {
    let app = TestApp::spawn().await;
    let mut tampered = legacy_export();
    tampered["94618"]["bonuses"] = json!(300);
    let (status, body) = app.post("/admin/v1/import", &tampered).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "94618.bonuses");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("94618")
    );
    let orgs: i64 = sqlx::query_scalar("select count(*) from organizations")
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert_eq!(orgs, 0, "a refused import writes nothing");
}

#[tokio::test]
async fn an_export_whose_history_overdraws_a_wallet_is_refused() {
    let app = TestApp::spawn().await;
    let mut tampered = legacy_export();
    // Spend 100 before anything was earned; the balance still adds up, but went negative on the way.
    let history = tampered["26084"]["history"].as_array_mut().expect("array");
    history.push(json!({"type": "deduction", "amount": 100.0, "description": "x", "date": "2025-01-01T10:00:00+05:00", "date_str": "2025-01-01 10:00:00"}));
    history.push(json!({"type": "accrual", "amount": 100.0, "description": "y", "date": "2025-01-02T10:00:00+05:00", "date_str": "2025-01-02 10:00:00"}));
    let (status, body) = app.post("/admin/v1/import", &tampered).await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("26084"),
        "{body}"
    );
}

#[tokio::test]
async fn a_malformed_export_is_refused_with_the_field_at_fault() {
    let app = TestApp::spawn().await;
    let mut broken = legacy_export();
    broken["82423"]["history"][0]["amount"] = json!("lots");
    let (status, body) = app.post("/admin/v1/import", &broken).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "82423");
    let (status, _) = app
        .post(
            "/admin/v1/import",
            &json!({"organization_details": {"name": "x"}}),
        )
        .await;
    assert_eq!(status, 422);
}

#[tokio::test]
async fn a_replayed_import_gets_the_status_its_first_answer_had() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;
    let with_key = |key: &str| {
        app.admin(reqwest::Method::POST, "/admin/v1/import")
            .header("Idempotency-Key", key)
            .json(&legacy_export())
    };
    // Under a key, the export already imported answers 200; its replay must say 200 too.
    let (status, first) = e2e::send(with_key("import-again")).await;
    assert_eq!((status, &first["created"]), (200, &json!(false)), "{first}");
    let (status, replayed) = e2e::send(with_key("import-again")).await;
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(replayed, first);
    assert_eq!(replayed["id"], org);
    let stored: Vec<i16> = sqlx::query_scalar("select status from idempotency_keys")
        .fetch_all(&app.db.pool)
        .await
        .expect("stored answers");
    assert_eq!(stored, [200]);
}

#[tokio::test]
async fn a_first_import_under_a_key_replays_its_201() {
    let app = TestApp::spawn().await;
    let with_key = || {
        app.admin(reqwest::Method::POST, "/admin/v1/import")
            .header("Idempotency-Key", "first-import")
            .json(&legacy_export())
    };
    let (status, first) = e2e::send(with_key()).await;
    assert_eq!((status, &first["created"]), (201, &json!(true)), "{first}");
    let (status, replayed) = e2e::send(with_key()).await;
    assert_eq!((status, replayed), (201, first));
}
