//! Entries made from a receipt are dated by the sale (the receipt's own `dateTime`), not by when a
//! worker applied it; the processing time is kept beside it.

use chrono::{DateTime, TimeDelta, Utc};
use e2e::{TestApp, receipt_event_at, send};
use serde_json::json;

/// The instant of a JSON timestamp.
fn instant(value: &serde_json::Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().expect("a timestamp"))
        .expect("RFC 3339")
        .to_utc()
}

/// An organization earning 10 %, in Bishkek's time (UTC+6), with a customer and a POS.
async fn shop(app: &TestApp) -> (i64, String, String) {
    let org = app.org().await;
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({"time_zone": "Asia/Bishkek", "bonus_program_settings": {"invoice_bonus_percentage": 10}})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let customer = app.customer(org, "Alex").await;
    let token = app.pos_token(org, "time-to-grow-pro").await;
    (org, customer, token)
}

#[tokio::test]
async fn a_receipt_replayed_from_the_dead_letters_a_day_later_is_dated_by_its_sale() {
    let app = TestApp::spawn().await;
    let (org, customer, _) = shop(&app).await;
    let bill = app.open_bill(org, &customer, 1000).await;
    // Bought 26 hours ago (18:00 local the day before), received a second later, failed every
    // attempt while the database was away, and replayed by an operator now.
    let sold_at = Utc::now() - TimeDelta::hours(26);
    let event = receipt_event_at("ev-late", "rc-late", Some(bill), "1000", sold_at);
    app.bury_receipt_received(
        org,
        event,
        "database: connection refused",
        sold_at + TimeDelta::seconds(1),
    )
    .await;
    let worker = app.start_worker();
    let (status, replayed) = app
        .post(
            "/admin/v1/ops/dead-letters/replay",
            &json!({"queue": "receipts", "ids": ["ev-late"]}),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    app.wait_receipt(org, "ev-late", "processed").await;
    drop(worker);

    let (_, receipts) = app.get(&format!("/admin/v1/orgs/{org}/receipts")).await;
    let row = &receipts["items"][0];
    assert_eq!(
        instant(&row["sold_at"]).timestamp_millis(),
        sold_at.timestamp_millis()
    );
    assert!(
        instant(&row["processed_at"]) > sold_at + TimeDelta::hours(25),
        "the processing time is kept beside the sale's: {row}"
    );

    let (_, alex) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/{customer}"))
        .await;
    assert_eq!(alex["bonuses"], json!(100));
    let entry = &alex["history"][0];
    assert_eq!(
        entry["description"]
            .as_str()
            .map(|d| d.starts_with("Бонус с накладной #")),
        Some(true)
    );
    let local = sold_at.with_timezone(&chrono_tz::Asia::Bishkek);
    assert_eq!(
        entry["date_str"],
        json!(local.format("%Y-%m-%d %H:%M:%S").to_string()),
        "the sale's local time, not the replay's"
    );
    let invoice_date: DateTime<Utc> = sqlx::query_scalar(
        "select occurred_at from invoices where org_id = $1 and receipt_id = 'rc-late'",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("invoice");
    assert_eq!(invoice_date.timestamp_millis(), sold_at.timestamp_millis());
}

#[tokio::test]
async fn a_pos_clock_far_ahead_or_behind_dates_the_sale_when_it_arrived() {
    let app = TestApp::spawn().await;
    let (org, customer, token) = shop(&app).await;
    let worker = app.start_worker();
    for (n, sold_at) in [
        Utc::now() + TimeDelta::days(1),
        Utc::now() - TimeDelta::days(400),
    ]
    .into_iter()
    .enumerate()
    {
        let bill = app.open_bill(org, &customer, 1000).await;
        let event_id = format!("ev-clock-{n}");
        let event = receipt_event_at(
            &event_id,
            &format!("rc-clock-{n}"),
            Some(bill),
            "1000",
            sold_at,
        );
        let before = Utc::now();
        let (status, _) = app.post_receipt(&token, &event).await;
        assert_eq!(status, 200);
        let row = app.wait_receipt(org, &event_id, "processed").await;
        let dated = instant(&row["sold_at"]);
        assert!(
            dated >= before - TimeDelta::seconds(1) && dated <= Utc::now(),
            "a wrong clock ({sold_at}) is replaced by the arrival: {row}"
        );
    }
    drop(worker);
}
