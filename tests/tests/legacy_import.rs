//! Importing the old system's export reproduces its balances and history exactly, and exports back.

use e2e::{TestApp, legacy_export};
use serde_json::{Value, json};

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
        assert_eq!(
            customer["combined_history"].to_string(),
            seed[id]["combined_history"].to_string(),
            "customer {id}: an imported combined_history stays as it was, row for row"
        );
    }
    // The old system left 94618's last accrual of 222.36 (no transaction_type) out of its
    // combined_history; the import keeps the list as it was, not recomputed.
    let (_, alex) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/94618"))
        .await;
    assert_eq!(alex["combined_history"].as_array().map(Vec::len), Some(14));
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

/// The export's text, compact.
async fn exported_text(app: &TestApp, org: i64) -> String {
    let response = app
        .admin(
            reqwest::Method::GET,
            &format!("/admin/v1/orgs/{org}/export"),
        )
        .send()
        .await
        .expect("export answers");
    assert_eq!(response.status(), 200);
    response.text().await.expect("body")
}

/// The seed export's own text without its whitespace: its keys in their order, its numbers as
/// written (`2`, `384.0`, `0`, `0.0`).
fn seed_text() -> String {
    serde_json::to_string(&legacy_export()).expect("serializes")
}

/// Key for key, number for number, in order: the export's text is the original's.
#[tokio::test]
async fn export_gives_back_what_was_imported() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;
    let ours = exported_text(&app, org).await;
    let original = seed_text();
    if ours != original {
        let at = ours
            .bytes()
            .zip(original.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(original.len()));
        let around = |text: &str| {
            text.get(at.saturating_sub(120)..)
                .unwrap_or("")
                .chars()
                .take(240)
                .collect::<String>()
        };
        panic!(
            "the export differs from the original at byte {at}:\nours:     {}\noriginal: {}",
            around(&ours),
            around(&original)
        );
    }
}

#[tokio::test]
async fn only_what_happens_after_the_import_is_added_to_the_export() {
    let app = TestApp::spawn().await;
    let org = imported(&app).await;
    // Changing the zone does not rewrite the texts written before.
    let (status, body) = e2e::send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"time_zone": "Europe/Moscow"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    app.accrue(org, 26084, "5.50").await;
    let exported: Value =
        serde_json::from_str(&exported_text(&app, org).await).expect("export parses");
    let mut expected = legacy_export();
    let mut added = exported["26084"]["history"][0].clone();
    assert_eq!(added["amount"].to_string(), "5.5", "no trailing zero");
    assert_eq!(exported["26084"]["bonuses"].to_string(), "5.5");
    assert_eq!(
        exported["26084"]["combined_history"],
        json!([added.clone()])
    );
    // Everything else is as imported, texts written in the old zone included.
    added["amount"] = json!(5.5);
    expected["26084"]["bonuses"] = json!(5.5);
    expected["26084"]["history"] = json!([added.clone()]);
    let mut with_combined = expected["26084"].as_object().expect("object").clone();
    with_combined.insert("combined_history".into(), json!([added]));
    expected["26084"] = Value::Object(with_combined);
    assert_eq!(
        serde_json::to_string(&exported).expect("serializes"),
        serde_json::to_string(&expected).expect("serializes")
    );
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
