//! What customers and cashiers see of the rules (#12): the share of a bill bonuses may pay, refused
//! above it and shown on the bill; the customer's view with pending bonuses, the next expiry, the
//! tier and the rest to the next one; and a legacy organization's documents unchanged.

use chrono::{Duration, NaiveDate, TimeZone, Utc};
use e2e::{BOT_TOKEN, TestApp, legacy_export, send, signed_init_data};
use loyalty::ledger::{self, EntryKind, NewEntry, Source, Wallet};
use loyalty::lots::{self, NewLot};
use loyalty::money::Amount;
use loyalty::time::{OrgTimeZone, Stamp};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn d(text: &str) -> Decimal {
    text.parse().expect("decimal")
}

/// A JSON number as a decimal, by its text.
fn num(value: &Value) -> Decimal {
    value.to_string().trim_matches('"').parse().expect("number")
}

async fn patch_settings(app: &TestApp, org: i64, settings: Value) {
    let (status, body) = send(
        app.admin(Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({ "bonus_program_settings": settings })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

/// A bill of 500 g at 1.91: 955.
fn bill(customer: &str, pay: Option<&str>) -> Value {
    let mut bill = json!({
        "customer_id": customer,
        "items": [{"name": "Чай", "quantity": "500", "unit_price": "1.91", "unit": "Грамм"}],
    });
    if let Some(pay) = pay {
        bill["bonus_payment"] = json!({"amount": pay, "wallet": "main"});
    }
    bill
}

#[tokio::test]
async fn a_bonus_payment_above_the_allowed_share_is_refused_and_the_bill_shows_the_maximum() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    patch_settings(&app, org, json!({"max_bonus_payment_percentage": 30})).await;
    let rich = app.customer(org, "Alex").await;
    app.accrue(org, &rich, "1000").await;
    let bills = format!("/admin/v1/orgs/{org}/bills");

    // 30 % of 955 is 286.50: a cent more is refused, naming the field and the maximum.
    let (status, body) = app.post(&bills, &bill(&rich, Some("286.51"))).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["field"], "bonus_payment.amount");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(message.contains("286.5"), "{message}");
    assert!(message.contains("30%"), "{message}");
    let held: Decimal =
        sqlx::query_scalar("select bonuses_held from customers where org_id = $1 and id = $2")
            .bind(org)
            .bind(rich.parse::<i64>().expect("id"))
            .fetch_one(&app.db.pool)
            .await
            .expect("held");
    assert_eq!(held, Decimal::ZERO, "a refused bill holds nothing");

    // The maximum itself is accepted, and the bill shows it (its own hold is the customer's).
    let (status, created) = app.post(&bills, &bill(&rich, Some("286.50"))).await;
    assert_eq!(status, 201, "{created}");
    let (_, shown) = app.get(&format!("{bills}/{}", created["id"])).await;
    assert_eq!(num(&shown["max_bonus_payment"]), d("286.5"), "{shown}");
    assert_eq!(num(&shown["bonus_payment"]["amount"]), d("286.5"));
    // The register sees it too, beside the prepayment.
    let token = app.pos_token(org, "time-to-grow-pro").await;
    let (status, pos_bill) = app
        .pos_get(&token, &format!("/api/v2/bill/byid/{}", created["id"]))
        .await;
    assert_eq!(status, 200, "{pos_bill}");
    assert_eq!(num(&pos_bill["maxbonuspayment"]), d("286.5"), "{pos_bill}");
    assert_eq!(num(&pos_bill["prepayment"]), d("286.5"));

    // A bill without a payment shows the share too; a customer with less than the share, the
    // wallet (less what other open bills hold).
    let poor = app.customer(org, "Dana").await;
    app.accrue(org, &poor, "100").await;
    let (_, held_elsewhere) = app.post(&bills, &bill(&poor, Some("40"))).await;
    let (status, plain) = app.post(&bills, &bill(&poor, None)).await;
    assert_eq!(status, 201, "{plain}");
    let (_, shown) = app.get(&format!("{bills}/{}", plain["id"])).await;
    assert_eq!(num(&shown["max_bonus_payment"]), d("60"), "{shown}");
    let (_, other) = app.get(&format!("{bills}/{}", held_elsewhere["id"])).await;
    assert_eq!(num(&other["max_bonus_payment"]), d("100"), "{other}");

    // A closed bill is no longer payable: no maximum.
    let (status, cancelled) =
        send(app.admin(Method::DELETE, &format!("{bills}/{}", held_elsewhere["id"]))).await;
    assert_eq!(status, 200, "{cancelled}");
    assert_eq!(cancelled["max_bonus_payment"], Value::Null);
    let (_, listed) = app.get(&format!("{bills}?status=open")).await;
    let maxima: Vec<Decimal> = listed["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|b| num(&b["max_bonus_payment"]))
        .collect();
    assert_eq!(maxima, vec![d("100"), d("286.5")], "{listed}");

    // At 0 % nothing may be paid with bonuses; at the default 100 % the whole total.
    patch_settings(&app, org, json!({"max_bonus_payment_percentage": 0})).await;
    let (status, body) = app.post(&bills, &bill(&rich, Some("0.01"))).await;
    assert_eq!(status, 422, "{body}");
    patch_settings(&app, org, json!({"max_bonus_payment_percentage": 100})).await;
    let (status, body) = app.post(&bills, &bill(&rich, Some("713.5"))).await;
    assert_eq!(status, 201, "{body}");
    // Without a cap the register's answer is the old system's, without the field.
    let (_, pos_bill) = app
        .pos_get(&token, &format!("/api/v2/bill/byid/{}", body["id"]))
        .await;
    assert_eq!(pos_bill.get("maxbonuspayment"), None, "{pos_bill}");
}

#[tokio::test]
async fn the_customer_view_shows_pending_bonuses_the_next_expiry_the_tier_and_the_rest() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    patch_settings(
        &app,
        org,
        json!({
            "max_bonus_payment_percentage": 50,
            "tiers": [
                {"name": "Silver", "min_spent": 1000, "percentage": 3},
                {"name": "Gold", "min_spent": 5000, "percentage": 5}
            ]
        }),
    )
    .await;
    let id = app.customer(org, "Alex").await;
    let customer: i64 = id.parse().expect("id");
    sqlx::query(
        "update customers set spent_total = 1500, birth_date = '2001-02-03' where org_id = $1 and id = $2",
    )
    .bind(org)
    .bind(customer)
    .execute(&app.db.pool)
    .await
    .expect("spent");

    // What the receipt path leaves: a pending accrual, and spendable lots expiring on two days.
    let zone = OrgTimeZone::default();
    let now = Utc::now();
    let today = Stamp::in_zone(now, zone).0.date_naive();
    let local = |date: NaiveDate, hour: u32| {
        zone.0
            .from_local_datetime(&date.and_hms_opt(hour, 0, 0).expect("time"))
            .single()
            .expect("one instant")
            .with_timezone(&Utc)
    };
    let expiry_day = today + Duration::days(10);
    let activation = now + Duration::days(3);
    let lot = |amount: &str, pending: bool, expires| NewLot {
        org_id: org,
        customer_id: customer,
        wallet: Wallet::Main,
        amount: d(amount),
        pending,
        activates_at: if pending { activation } else { now },
        expires_at: expires,
        source: Source::Receipt,
        source_ref: Some("r1"),
        invoice_id: Some("47827"),
    };
    let entry = |wallet, amount: &str| NewEntry {
        org_id: org,
        customer_id: customer,
        wallet,
        kind: EntryKind::Accrual,
        amount: Amount::new(d(amount)).expect("amount"),
        description: "Бонус с накладной #47827",
        source: Source::Receipt,
        source_ref: Some("r1"),
        at: Stamp::in_zone(now, zone),
    };
    let mut tx = app.db.pool.begin().await.expect("tx");
    ledger::post_many(
        &mut tx,
        &[entry(Wallet::Pending, "30.5"), entry(Wallet::Main, "125")],
    )
    .await
    .expect("entries");
    lots::open(
        &mut tx,
        &[
            lot("30.5", true, Some(activation + Duration::days(365))),
            lot("40", false, Some(local(expiry_day, 10))),
            lot("60", false, Some(local(expiry_day, 18))),
            lot("25", false, Some(local(expiry_day + Duration::days(1), 10))),
        ],
    )
    .await
    .expect("lots");
    tx.commit().await.expect("commit");

    let (status, view) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(num(&view["bonuses"]), d("125"));
    assert_eq!(num(&view["pending_bonuses"]["total"]), d("30.5"));
    let pending = view["pending_bonuses"]["lots"].as_array().expect("lots");
    assert_eq!(pending.len(), 1, "{view}");
    assert_eq!(num(&pending[0]["amount"]), d("30.5"));
    assert_eq!(pending[0]["wallet"], "main");
    assert_eq!(
        pending[0]["activates_at"],
        Stamp::in_zone(activation, zone).rfc3339()
    );
    // The two lots of the soonest expiry day burn together; the next day's lot is not counted.
    assert_eq!(num(&view["next_expiry"]["amount"]), d("100"), "{view}");
    assert_eq!(view["next_expiry"]["date"], expiry_day.to_string());
    assert_eq!(
        view["next_expiry"]["at"],
        Stamp::in_zone(local(expiry_day, 10), zone).rfc3339()
    );
    assert_eq!(view["tier"], json!({"name": "Silver", "percentage": 3}));
    assert_eq!(view["next_tier"]["name"], "Gold");
    assert_eq!(num(&view["next_tier"]["min_spent"]), d("5000"));
    assert_eq!(num(&view["next_tier"]["rest"]), d("3500"));
    assert_eq!(num(&view["spent_total"]), d("1500"));
    assert_eq!(num(&view["max_bonus_payment_percentage"]), d("50"));
    assert_eq!(view["birth_date"], "2001-02-03");

    // Without lots, tiers or a birth date: nothing pending, nothing expiring, no tier.
    let plain = app.customer(org, "Dana").await;
    let (_, view) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{plain}"))
        .await;
    assert_eq!(num(&view["pending_bonuses"]["total"]), Decimal::ZERO);
    assert_eq!(view["pending_bonuses"]["lots"], json!([]));
    assert_eq!(view["next_expiry"], Value::Null);
    assert_eq!(view["tier"], Value::Null);
    assert_eq!(num(&view["next_tier"]["rest"]), d("1000"));
    assert_eq!(view["birth_date"], Value::Null);
}

#[tokio::test]
async fn a_legacy_organization_keeps_its_documents_and_its_customers_gain_only_fields() {
    let app = TestApp::spawn().await;
    let org = app.imported_seed().await;
    let seed = legacy_export();
    let (status, exported) = app.get(&format!("/admin/v1/orgs/{org}/export")).await;
    assert_eq!(status, 200);
    assert!(
        e2e::same_json(&exported, &seed),
        "the export of an imported organization is the seed"
    );
    for (id, original) in seed.as_object().expect("seed").iter() {
        if !id.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let (status, view) = app
            .get(&format!("/admin/v1/orgs/{org}/customers/{id}"))
            .await;
        assert_eq!(status, 200, "{view}");
        for (key, value) in original.as_object().expect("customer") {
            assert!(
                e2e::same_json(&view[key], value),
                "customer {id}: {key} is as the seed has it"
            );
        }
        // The rules are off: all of a bill may be paid, nothing is pending or expiring.
        assert_eq!(num(&view["max_bonus_payment_percentage"]), d("100"));
        assert_eq!(view["next_expiry"], Value::Null);
        assert_eq!(view["tier"], Value::Null);
        assert_eq!(view["next_tier"], Value::Null);
    }
}

#[tokio::test]
async fn the_mini_app_shows_the_customer_where_they_stand() {
    let app = TestApp::spawn().await;
    let org = app
        .create_org(&json!({"name": "Shop", "telegram_bot_token": BOT_TOKEN,
                            "bonus_program_settings": {"invoice_bonus_percentage": 2, "referral_promo_bonus": 50,
                                "referrer_first_purchase_percentage": 5, "max_bonus_payment_percentage": 40,
                                "tiers": [{"name": "Silver", "min_spent": 1000, "percentage": 3}]}}))
        .await;
    let init = signed_init_data(
        &json!({"id": 5929031322_i64, "first_name": "Alex"}),
        BOT_TOKEN,
    );
    let me = |init: String| {
        send(
            app.http
                .get(app.url(&format!("/app/v1/orgs/{org}/me")))
                .header("Authorization", format!("tma {init}")),
        )
    };
    let (status, first) = me(init.clone()).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(num(&first["max_bonus_payment_percentage"]), d("40"));
    assert_eq!(first["tier"], Value::Null);
    assert_eq!(first["next_tier"]["name"], "Silver");
    assert_eq!(num(&first["next_tier"]["rest"]), d("1000"));
    assert_eq!(num(&first["pending_bonuses"]["total"]), Decimal::ZERO);
    assert_eq!(first["next_expiry"], Value::Null);

    // Spending past the first tier shows it, and nothing more to reach.
    let customer: i64 = first["id"].as_str().expect("id").parse().expect("id");
    sqlx::query("update customers set spent_total = 1200 where org_id = $1 and id = $2")
        .bind(org)
        .bind(customer)
        .execute(&app.db.pool)
        .await
        .expect("spent");
    let (status, again) = me(init).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["tier"], json!({"name": "Silver", "percentage": 3}));
    assert_eq!(again["next_tier"], Value::Null);
    assert_eq!(num(&again["spent_total"]), d("1200"));
}
