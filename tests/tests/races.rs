//! Transactions that lock the same rows from different ends (a bill cancelled while its sale is
//! applied, two customers entering each other's promo code) follow the one lock order of
//! `loyalty::locks`: none answers a 500, and each ends in a state the rules allow.

use std::time::Duration;

use e2e::{TestApp, receipt_event, send};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::json;

/// A customer with `amount` bonuses and an open bill holding 10 of them; returns (customer, bill).
async fn customer_with_open_bill(app: &TestApp, org: i64, amount: u32) -> (String, i64) {
    let id = app.customer(org, "Alex").await;
    app.accrue(org, &id, amount).await;
    let (status, bill) = app
        .post(
            &format!("/admin/v1/orgs/{org}/bills"),
            &json!({"customer_id": id, "items": [{"name": "x", "quantity": 1, "unit_price": 100}],
                    "bonus_payment": {"amount": 10, "wallet": "main"}}),
        )
        .await;
    assert_eq!(status, 201, "{bill}");
    (id, bill["id"].as_i64().expect("bill id"))
}

/// Waits (up to 30 s) until every event's receipt row has a final status; returns them in order.
async fn final_statuses(app: &TestApp, org: i64, events: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select event_id, status from receipts where org_id = $1 and event_id = any($2)",
        )
        .bind(org)
        .bind(events)
        .fetch_all(&app.db.pool)
        .await
        .expect("receipts");
        let done: std::collections::HashMap<String, String> = rows
            .into_iter()
            .filter(|(_, s)| matches!(s.as_str(), "processed" | "unmatched" | "dead"))
            .collect();
        if done.len() == events.len() {
            return events.iter().map(|e| done[e].clone()).collect();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "receipts never all applied: {done:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) until at least `n` of this test's connections wait for a row lock.
async fn lock_waiters(app: &TestApp, n: i64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
        )
        .fetch_one(&app.db.pool)
        .await
        .expect("activity");
        if waiting >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} waiting, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bills_cancelled_while_their_sales_are_applied_end_cancelled_or_paid_never_a_500() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let token = app.pos_token(org, "time-to-grow-pro").await;
    let mut bills = Vec::new();
    for _ in 0..20 {
        bills.push(customer_with_open_bill(&app, org, 100).await);
    }
    let worker = app.start_worker();
    // The race made certain: the customers' rows are held while every cancel, then the worker
    // applying the sales, queue up behind them; they are let go once the worker has waited past
    // PostgreSQL's deadlock_timeout (1 s), so a cycle, if the lock orders make one, is found by
    // the cancel's own check.
    let mut gate = app.db.pool.begin().await.expect("transaction");
    sqlx::query("select id from customers where org_id = $1 for update")
        .bind(org)
        .execute(&mut *gate)
        .await
        .expect("customers held");
    let cancels = futures::future::join_all(bills.iter().map(|(_, bill)| {
        send(app.admin(
            Method::DELETE,
            &format!("/admin/v1/orgs/{org}/bills/{bill}"),
        ))
    }));
    let events: Vec<String> = (0..bills.len()).map(|i| format!("race-sale-{i}")).collect();
    let sales = async {
        lock_waiters(&app, 20).await;
        for ((_, bill), event) in bills.iter().zip(&events) {
            let receipt = receipt_event(event, &format!("r-{event}"), Some(*bill), "100");
            let (status, body) = app.post_receipt(&token, &receipt).await;
            assert_eq!(status, 200, "{body}");
        }
        lock_waiters(&app, 21).await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        gate.rollback().await.expect("customers let go");
    };
    let (cancelled, ()) = tokio::join!(cancels, sales);
    let statuses = final_statuses(&app, org, &events).await;
    worker.stop().await;

    for (((customer, bill), (status, body)), receipt) in bills.iter().zip(&cancelled).zip(&statuses)
    {
        let bill_status: String =
            sqlx::query_scalar("select status from bills where org_id = $1 and id = $2")
                .bind(org)
                .bind(bill)
                .fetch_one(&app.db.pool)
                .await
                .expect("bill");
        match (bill_status.as_str(), *status) {
            // Cancelled first: the sale finds the bill closed and is kept unmatched.
            ("cancelled", 200) => assert_eq!(receipt, "unmatched", "bill {bill}"),
            // Paid first: the cancel is refused as the rules say.
            ("paid", 409) => {
                assert_eq!(body["error"]["code"], "bill_closed", "bill {bill}: {body}");
                assert_eq!(receipt, "processed", "bill {bill}");
            }
            other => panic!("bill {bill} of customer {customer}: {other:?} {body}"),
        }
    }
    // Holds equal what open bills hold (none is open), wallets equal their entries, and each paid
    // bill took its 10 bonuses exactly once.
    let (held, drift, spent): (Decimal, i64, Decimal) = sqlx::query_as(
        "select coalesce(sum(bonuses_held), 0),
                count(*) filter (where bonuses <> (select coalesce(sum(case when e.kind = 'accrual' then e.amount else -e.amount end), 0)
                                                   from ledger_entries e
                                                   where e.org_id = c.org_id and e.customer_id = c.id and e.wallet = 'main')),
                coalesce(sum(100 - bonuses), 0)
         from customers c where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("wallets");
    let paid = statuses.iter().filter(|s| *s == "processed").count();
    assert_eq!(held, Decimal::ZERO, "holds left behind");
    assert_eq!(drift, 0, "a cached balance differs from its entries");
    assert_eq!(
        spent,
        Decimal::from(10 * paid as i64),
        "bonus payments captured"
    );
}

#[tokio::test]
async fn customers_entering_each_others_promo_codes_at_once_end_with_one_referral_never_a_500() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let mut pairs = Vec::new();
    for _ in 0..10 {
        pairs.push((
            app.customer(org, "Ann").await,
            app.customer(org, "Bob").await,
        ));
    }
    let promo = |who: &str, friend: &str| {
        send(
            app.admin(
                Method::POST,
                &format!("/admin/v1/orgs/{org}/customers/{who}/promo"),
            )
            .json(&json!({"code": format!("PROMO{friend}")})),
        )
    };
    let answers = futures::future::join_all(
        pairs
            .iter()
            .map(|(a, b)| async { tokio::join!(promo(a, b), promo(b, a)) }),
    )
    .await;

    for ((a, b), ((status_a, body_a), (status_b, body_b))) in pairs.iter().zip(&answers) {
        // One code is taken; the other would close a loop of referrals and is refused.
        let mut statuses = [*status_a, *status_b];
        statuses.sort_unstable();
        assert_eq!(statuses, [200, 422], "pair {a}/{b}: {body_a} {body_b}");
        let refused = if *status_a == 422 { body_a } else { body_b };
        assert_eq!(refused["error"]["field"], "code", "{refused}");
        let referred: Vec<(i64, Option<i64>, Decimal)> = sqlx::query_as(
            "select id, referred_by, bonuses from customers where org_id = $1 and id = any($2) order by id",
        )
        .bind(org)
        .bind(vec![a.parse::<i64>().expect("id"), b.parse::<i64>().expect("id")])
        .fetch_all(&app.db.pool)
        .await
        .expect("customers");
        let winners: Vec<_> = referred.iter().filter(|r| r.1.is_some()).collect();
        assert_eq!(winners.len(), 1, "pair {a}/{b}: {referred:?}");
        assert_eq!(winners[0].2, Decimal::from(50), "the promo bonus, once");
        let loser = referred.iter().find(|r| r.1.is_none()).expect("loser");
        assert_eq!(loser.2, Decimal::ZERO, "no bonus for the refused code");
    }
}
