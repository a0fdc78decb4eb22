//! The rules together over a customer's life: delayed accruals activated by the scheduled step, a
//! bill payment consuming lots across an expiry, the expiry burning what is left, a refund giving
//! back to lots that have expired meanwhile, and the reports agreeing with the ledger at each
//! step. POS receipts go in through ingest; the scheduled steps run with chosen instants.

use chrono::{DateTime, TimeDelta, Utc};
use e2e::{TestApp, receipt_event_at, send};
use loyalty::schedule;
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn d(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("decimal literal")
}

/// The JSON number `v` as a decimal.
fn n(v: &Value) -> Decimal {
    Decimal::from_str_exact(&v.to_string()).unwrap_or_else(|_| panic!("a number: {v}"))
}

/// An organization and its POS token.
struct Shop {
    org: i64,
    token: String,
}

async fn post_receipt(
    app: &TestApp,
    shop: &Shop,
    kind: &str,
    id: &str,
    bill: i64,
    total: &str,
    sold_at: DateTime<Utc>,
) {
    let event_id = format!("ev-{id}");
    let mut event = receipt_event_at(&event_id, id, Some(bill), total, sold_at);
    event["data"]["type"] = json!(kind);
    let (status, body) = app.post_receipt(&shop.token, &event).await;
    assert_eq!(status, 200, "{body}");
    app.worker()
        .consumer(1, 10)
        .run_until_empty()
        .await
        .expect("consumed");
    app.wait_receipt(shop.org, &event_id, "processed").await;
}

/// (spendable bonuses, pending bonuses) of the customer.
async fn wallets(app: &TestApp, org: i64, customer: &str) -> (Decimal, Decimal) {
    sqlx::query_as("select bonuses, pending_bonuses from customers where org_id = $1 and id = $2")
        .bind(org)
        .bind(customer.parse::<i64>().expect("id"))
        .fetch_one(&app.db.pool)
        .await
        .expect("customer")
}

/// What each of the customer's lots still holds, oldest first.
async fn remaining(app: &TestApp, org: i64) -> Vec<Decimal> {
    sqlx::query_scalar("select remaining from bonus_lots where org_id = $1 order by id")
        .bind(org)
        .fetch_all(&app.db.pool)
        .await
        .expect("lots")
}

/// The liability report's main wallet at `at`: (balance, pending).
async fn liability(app: &TestApp, org: i64, at: DateTime<Utc>) -> (Decimal, Decimal, Value) {
    let at = at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (status, report) = send(
        app.admin(
            reqwest::Method::GET,
            &format!("/admin/v1/orgs/{org}/reports/liability"),
        )
        .query(&[("at", at.as_str())]),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    let main = report["wallets"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["wallet"] == "main"))
        .cloned()
        .unwrap_or_else(|| panic!("a main wallet row: {report}"));
    (n(&main["balance"]), n(&main["pending"]), main)
}

#[tokio::test]
async fn a_payment_consumes_lots_across_an_expiry_and_every_figure_follows_the_ledger() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(
                &json!({"bonus_program_settings": {"invoice_bonus_percentage": 10,
                "accrual_delay_days": 7, "bonus_lifetime_days": 30}}),
            ),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let shop = Shop {
        org,
        token: app.pos_token(org, "time-to-grow-pro").await,
    };
    let alex = app.customer(org, "Alex").await;

    // Two sales a day apart, 60 and 59 days ago: 100 each, pending for 7 days, then 30 days to live.
    let t0 = Utc::now() - TimeDelta::days(60);
    for (i, at) in [t0, t0 + TimeDelta::days(1)].into_iter().enumerate() {
        let b = app.bill_paying(org, &alex, "1000", None).await;
        post_receipt(&app, &shop, "SELL", &format!("s{i}"), b, "1000", at).await;
    }
    assert_eq!(wallets(&app, org, &alex).await, (d("0"), d("200")));
    // The messages say the bonuses wait, and until when (the shop's local date).
    let told: Vec<(String, Value)> =
        sqlx::query_as("select kind, payload from outbox where org_id = $1 order by id")
            .bind(org)
            .fetch_all(&app.db.pool)
            .await
            .expect("outbox");
    let on = |days: i64| {
        (t0 + TimeDelta::days(days))
            .with_timezone(&chrono_tz::Asia::Almaty)
            .format("%d.%m.%Y")
            .to_string()
    };
    assert_eq!(
        told.iter()
            .map(|(kind, payload)| (
                kind.as_str(),
                payload["amount"].clone(),
                payload["date"].clone()
            ))
            .collect::<Vec<_>>(),
        vec![
            ("pending_accrual", json!("100"), json!(on(7))),
            ("pending_accrual", json!("100"), json!(on(8))),
        ]
    );
    assert_eq!(
        liability(&app, org, t0 + TimeDelta::days(2)).await.1,
        d("200")
    );

    // The scheduled step, as it would have run 10 days after the first sale.
    let activated = schedule::activate_due(&app.db.pool, t0 + TimeDelta::days(10), 100)
        .await
        .expect("activation");
    assert_eq!(activated, 2);
    assert_eq!(wallets(&app, org, &alex).await, (d("200"), d("0")));

    // A bill paid with 150 bonuses: the lot that expires first (the first sale's) is emptied,
    // the second gives 50. Paying with bonuses earns nothing (the default accrual base).
    let paid = app.bill_paying(org, &alex, "500", Some("150")).await;
    post_receipt(
        &app,
        &shop,
        "SELL",
        "s-paid",
        paid,
        "500",
        t0 + TimeDelta::days(20),
    )
    .await;
    assert_eq!(remaining(&app, org).await, vec![d("0"), d("50")]);
    assert_eq!(wallets(&app, org, &alex).await, (d("50"), d("0")));

    // The first lot's expiry finds nothing to burn; the second's burns what is left of it.
    let first_expiry = t0 + TimeDelta::days(37);
    assert_eq!(
        schedule::expire_due(&app.db.pool, first_expiry + TimeDelta::seconds(1), 100)
            .await
            .expect("expiry"),
        0
    );
    let second_expiry = t0 + TimeDelta::days(38);
    assert_eq!(
        schedule::expire_due(&app.db.pool, second_expiry + TimeDelta::seconds(1), 100)
            .await
            .expect("expiry"),
        1
    );
    assert_eq!(wallets(&app, org, &alex).await, (d("0"), d("0")));
    let burned: Vec<(Decimal, String, DateTime<Utc>)> = sqlx::query_as(
        "select amount, description, occurred_at from ledger_entries
         where org_id = $1 and source = 'expiry' order by seq",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("entries");
    assert_eq!(burned.len(), 1);
    assert_eq!(
        (burned[0].0, burned[0].1.as_str()),
        (d("50"), "Сгорание бонусов")
    );
    assert_eq!(
        burned[0].2.timestamp_millis(),
        second_expiry.timestamp_millis(),
        "dated when the lot expired"
    );

    // Half the paid bill refunded: 75 of the payment goes back, to the lots it came from in
    // reverse (50 to the second, 25 to the first); both have expired by then, so it burns at once,
    // dated by the refund, and is never spendable again.
    let refunded_at = t0 + TimeDelta::days(40);
    post_receipt(&app, &shop, "PAYBACK", "r-paid", paid, "250", refunded_at).await;
    assert_eq!(remaining(&app, org).await, vec![d("0"), d("0")]);
    assert_eq!(wallets(&app, org, &alex).await, (d("0"), d("0")));
    let burned: Vec<(Decimal, DateTime<Utc>)> = sqlx::query_as(
        "select amount, occurred_at from ledger_entries
         where org_id = $1 and source = 'expiry' order by seq",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("entries");
    assert_eq!(
        burned
            .iter()
            .map(|(amount, at)| (*amount, at.timestamp_millis()))
            .collect::<Vec<_>>(),
        vec![
            (d("50"), second_expiry.timestamp_millis()),
            (d("25"), refunded_at.timestamp_millis()),
            (d("50"), refunded_at.timestamp_millis()),
        ]
    );
    assert_eq!(
        schedule::expire_due(&app.db.pool, Utc::now(), 100)
            .await
            .expect("expiry"),
        0
    );

    // The reports at each step equal the ledger: 200 accrued, 150 spent, 75 given back, 125
    // burned; pending until activation.
    let day = |offset: i64| t0 + TimeDelta::days(offset) + TimeDelta::hours(1);
    assert_eq!(liability(&app, org, day(5)).await.0, d("0"));
    assert_eq!(liability(&app, org, day(5)).await.1, d("200"));
    assert_eq!(liability(&app, org, day(21)).await.0, d("50"));
    assert_eq!(liability(&app, org, day(39)).await.0, d("0"));
    assert_eq!(liability(&app, org, Utc::now()).await.0, d("0"));
    let (status, activity) = send(
        app.admin(
            reqwest::Method::GET,
            &format!("/admin/v1/orgs/{org}/reports/activity"),
        )
        .query(&[
            ("from", (t0 - TimeDelta::days(1)).date_naive().to_string()),
            ("to", Utc::now().date_naive().to_string()),
            ("by", "day".to_owned()),
        ]),
    )
    .await;
    assert_eq!(status, 200, "{activity}");
    let total = |column: &str| -> Decimal {
        activity["days"]
            .as_array()
            .unwrap_or_else(|| panic!("days: {activity}"))
            .iter()
            .map(|day| day.get(column).map_or(Decimal::ZERO, n))
            .sum()
    };
    assert_eq!(
        (total("accrued"), total("spent"), total("expired")),
        (d("200"), d("150"), d("125")),
        "{activity}"
    );
}
