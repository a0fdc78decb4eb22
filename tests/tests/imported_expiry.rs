//! Imported legacy balances are lots that never expire, unless the operator gives them an expiry:
//! then they are announced, shown and burned like any other bonuses.

use chrono::{TimeDelta, TimeZone, Utc};
use e2e::{TestApp, send};
use loyalty::schedule;
use rust_decimal::Decimal;
use serde_json::{Value, json};

async fn set_expiry(app: &TestApp, org: i64, expires_on: Value) -> (u16, Value) {
    send(
        app.admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/orgs/{org}/imported-bonuses/expiry"),
        )
        .json(&json!({ "expires_on": expires_on })),
    )
    .await
}

/// What the organization's customers hold in their bonus wallets, together.
async fn held(app: &TestApp, org: i64) -> Decimal {
    sqlx::query_scalar(
        "select coalesce(sum(bonuses + referral_bonuses), 0) from customers where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("sum")
}

#[tokio::test]
async fn imported_balances_expire_only_when_the_operator_says_so_and_then_like_any_bonuses() {
    let app = TestApp::spawn().await;
    let org = app.imported_seed().await;
    let before = held(&app, org).await;
    assert!(before > Decimal::ZERO);
    // Nothing expires by itself.
    assert_eq!(
        schedule::expire_due(&app.db.pool, Utc::now() + TimeDelta::days(36500), 100)
            .await
            .expect("expiry"),
        0
    );

    let almaty = chrono_tz::Asia::Almaty;
    let today = Utc::now().with_timezone(&almaty).date_naive();
    for wrong in [json!(today.to_string()), json!("2026-02-30"), json!("soon")] {
        let (status, body) = set_expiry(&app, org, wrong.clone()).await;
        assert_eq!(
            (status, body["error"]["field"].clone()),
            (422, json!("expires_on")),
            "{wrong}: {body}"
        );
    }
    let (status, _) = set_expiry(&app, 987_654, json!(null)).await;
    assert_eq!(status, 404);

    let day = today + TimeDelta::days(30);
    let (status, changed) = set_expiry(&app, org, json!(day.to_string())).await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        Decimal::from_str_exact(&changed["amount"].to_string()).expect("amount"),
        before
    );
    assert!(changed["lots"].as_i64().is_some_and(|n| n > 0), "{changed}");
    let expires_at = almaty
        .from_local_datetime(&day.and_time(chrono::NaiveTime::MIN))
        .single()
        .expect("a midnight")
        .with_timezone(&Utc);

    // Shown to the customer: 94618 holds 222.36 (the seed's README).
    let (_, customer) = app
        .get(&format!("/admin/v1/orgs/{org}/customers/94618"))
        .await;
    assert_eq!(
        customer["next_expiry"]["amount"],
        json!(222.36),
        "{customer}"
    );
    assert_eq!(customer["next_expiry"]["date"], json!(day.to_string()));

    // Announced `expiry_warning_days` (7) before, once.
    for _ in 0..2 {
        schedule::warn_expiring(&app.db.pool, expires_at - TimeDelta::days(3), 100)
            .await
            .expect("warnings");
    }
    let warned: Vec<Value> = sqlx::query_scalar(
        "select payload from outbox where org_id = $1 and customer_id = 94618 and kind = 'expiry_warning'",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("outbox");
    assert_eq!(
        warned,
        vec![json!({"amount": "222.36", "date": day.format("%d.%m.%Y").to_string()})]
    );

    // Moved later, then burned at its start, whatever is left of it.
    let later = day + TimeDelta::days(1);
    let (status, _) = set_expiry(&app, org, json!(later.to_string())).await;
    assert_eq!(status, 200);
    assert_eq!(
        schedule::expire_due(&app.db.pool, expires_at + TimeDelta::hours(1), 100)
            .await
            .expect("expiry"),
        0,
        "not on the earlier day any more"
    );
    assert!(
        schedule::expire_due(&app.db.pool, expires_at + TimeDelta::days(1), 100)
            .await
            .expect("expiry")
            > 0
    );
    assert_eq!(held(&app, org).await, Decimal::ZERO);
    let burned: Decimal = sqlx::query_scalar(
        "select coalesce(sum(amount), 0) from ledger_entries
         where org_id = $1 and source = 'expiry' and description = 'Сгорание бонусов'",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("burned");
    assert_eq!(burned, before);

    // Nothing left to change; taking the expiry away is accepted.
    let (status, changed) = set_expiry(&app, org, json!(null)).await;
    assert_eq!((status, changed), (200, json!({"lots": 0, "amount": 0})));
}
