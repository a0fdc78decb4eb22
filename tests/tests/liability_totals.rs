//! The organization's wallet totals (`org_wallet_totals`, which the liability report reads instead
//! of summing every customer) stay the sum of the customers' wallets whatever moves them: receipts
//! applied by concurrent workers, an operator's accrual and deduction, a friend's promo code,
//! delayed accruals activated and bonuses expired by the scheduled steps, a legacy import, a merge,
//! a customer inserted with balances and deleted; and concurrent transactions that each credit two
//! customers commit without a deadlock. The liability report answers the same sums.

use chrono::{DateTime, TimeDelta, Utc};
use e2e::{TestApp, receipt_event, send};
use loyalty::schedule;
use rust_decimal::Decimal;
use serde_json::{Value, json};

/// The five wallets (main, referral, debt, pending, referral pending) summed over the
/// organization's customers, and as kept in its totals.
async fn sums(app: &TestApp, org: i64) -> (Vec<Decimal>, Vec<Decimal>) {
    let sum = "array[coalesce(sum(bonuses), 0), coalesce(sum(referral_bonuses), 0),
                     coalesce(sum(debts), 0), coalesce(sum(pending_bonuses), 0),
                     coalesce(sum(pending_referral_bonuses), 0)]";
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select (select {sum} from customers where org_id = $1),
                (select {sum} from org_wallet_totals where org_id = $1)"
    )))
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("sums")
}

fn num(value: &Value) -> Decimal {
    value.to_string().trim_matches('"').parse().expect("number")
}

/// The totals equal the customers' sum, and the liability report says the same at an instant
/// after every entry (the scheduled steps here run at instants to come); returns the sum.
async fn assert_totals(app: &TestApp, org: i64, step: &str) -> Vec<Decimal> {
    let (summed, kept) = sums(app, org).await;
    assert_eq!(kept, summed, "totals after {step}");
    let after: DateTime<Utc> = sqlx::query_scalar(
        "select greatest(now(), max(occurred_at)) + interval '1 second'
         from ledger_entries where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("last entry");
    let (status, report) = app
        .get(&format!(
            "/admin/v1/orgs/{org}/reports/liability?at={}",
            after.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ))
        .await;
    assert_eq!(status, 200, "{report}");
    let wallet = |name: &str| {
        report["wallets"]
            .as_array()
            .expect("wallets")
            .iter()
            .find(|w| w["wallet"] == name)
            .unwrap_or_else(|| panic!("wallet {name} in {report}"))
            .clone()
    };
    let reported = [
        num(&wallet("main")["balance"]),
        num(&wallet("referral")["balance"]),
        num(&wallet("debt")["balance"]),
        num(&wallet("main")["pending"]),
        num(&wallet("referral")["pending"]),
    ];
    assert_eq!(
        reported.as_slice(),
        summed.as_slice(),
        "report after {step}"
    );
    summed
}

async fn set_rules(app: &TestApp, org: i64, settings: Value) {
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({ "bonus_program_settings": settings })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn customer_with_bill(app: &TestApp, org: i64, name: &str) -> (String, i64) {
    let id = app.customer(org, name).await;
    let bill = app.open_bill(org, &id, 1000).await;
    (id, bill)
}

#[tokio::test]
async fn the_wallet_totals_follow_every_path_that_moves_a_wallet() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let zero = assert_totals(&app, org, "creating the organization").await;
    assert!(zero.iter().all(Decimal::is_zero));

    // Bonuses live 30 days, so the expiry has something to burn.
    set_rules(
        &app,
        org,
        json!({"invoice_bonus_percentage": 10, "bonus_lifetime_days": 30}),
    )
    .await;

    // Twelve customers, every second one brought by the one before with their promo code.
    let mut customers = Vec::new();
    for i in 0..12 {
        customers.push(customer_with_bill(&app, org, &format!("Customer{i}")).await);
    }
    for pair in customers.chunks_exact(2) {
        let (status, body) = app
            .post(
                &format!("/admin/v1/orgs/{org}/customers/{}/promo", pair[1].0),
                &json!({"code": format!("PROMO{}", pair[0].0)}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let referred = assert_totals(&app, org, "promo codes").await;
    assert_eq!(
        referred[0],
        Decimal::from(6 * 50),
        "promo bonuses: {referred:?}"
    );

    // An operator's accrual and deduction, and a debt.
    for (wallet, op, amount) in [
        ("bonuses", "accrue", "150.50"),
        ("bonuses", "deduct", "20.25"),
        ("debts", "add", "40"),
    ] {
        let (status, body) = app
            .post(
                &format!("/admin/v1/orgs/{org}/customers/{}/{wallet}", customers[0].0),
                &json!({"op": op, "amount": amount}),
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "{wallet} {op}: {status} {body}"
        );
    }
    let operated = assert_totals(&app, org, "an operator's accrual, deduction and debt").await;
    assert_eq!(operated[2], Decimal::from(40));

    // Every bill paid at once, applied by a worker running four batches concurrently (the
    // referrers' first-purchase rewards included).
    let token = app.pos_token(org, "totals").await;
    let worker = app.start_worker();
    let posted = futures::future::join_all(customers.iter().enumerate().map(|(i, (_, bill))| {
        let event = receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(*bill), "1000");
        let (app, token) = (&app, &token);
        async move { app.post_receipt(token, &event).await }
    }))
    .await;
    for (status, body) in posted {
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..customers.len() {
        app.wait_receipt(org, &format!("ev-{i}"), "processed").await;
    }
    worker.stop().await;
    let bought = assert_totals(&app, org, "receipts applied by the worker").await;
    assert!(bought[0] > referred[0], "accruals: {bought:?}");

    // Expiry, 31 days on: the scheduled step burns what is left of the lots.
    let expired = schedule::expire_due(&app.db.pool, Utc::now() + TimeDelta::days(31), 100)
        .await
        .expect("expiry");
    assert!(expired > 0);
    let burnt = assert_totals(&app, org, "expiry").await;
    assert!(burnt[0] < bought[0], "expired: {burnt:?}");

    // Two customers merged into one: the sum does not change, the totals follow both rows.
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{}/merge", customers[2].0),
            &json!({"from": customers[5].0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(assert_totals(&app, org, "a merge").await, burnt);

    // A row inserted with balances (as a restore would) and deleted again.
    sqlx::query(
        "insert into customers (org_id, id, bonuses, referral_bonuses, debts, pending_bonuses,
                                pending_referral_bonuses)
         values ($1, 900000001, 12.34, 5, 7.5, 1, 2)",
    )
    .bind(org)
    .execute(&app.db.pool)
    .await
    .expect("insert");
    let inserted = assert_totals(&app, org, "an insert with balances").await;
    assert_eq!(inserted[2], burnt[2] + Decimal::new(75, 1));
    sqlx::query("delete from customers where org_id = $1 and id = 900000001")
        .bind(org)
        .execute(&app.db.pool)
        .await
        .expect("delete");
    assert_eq!(assert_totals(&app, org, "a delete").await, burnt);
}

#[tokio::test]
async fn pending_bonuses_activated_by_the_scheduled_step_move_the_totals() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    set_rules(
        &app,
        org,
        json!({"invoice_bonus_percentage": 10, "accrual_delay_days": 7}),
    )
    .await;
    let (_, bill) = customer_with_bill(&app, org, "Alex").await;
    let token = app.pos_token(org, "totals").await;
    let (status, body) = app
        .post_receipt(&token, &receipt_event("ev-a", "rc-a", Some(bill), "1000"))
        .await;
    assert_eq!(status, 200, "{body}");
    app.worker()
        .consumer(1, 10)
        .run_until_empty()
        .await
        .expect("consumed");
    app.wait_receipt(org, "ev-a", "processed").await;
    let waiting = assert_totals(&app, org, "a delayed accrual").await;
    assert_eq!(waiting[3], Decimal::from(100), "pending: {waiting:?}");
    let activated = schedule::activate_due(&app.db.pool, Utc::now() + TimeDelta::days(8), 100)
        .await
        .expect("activation");
    assert_eq!(activated, 1);
    let spendable = assert_totals(&app, org, "activation").await;
    assert_eq!(
        (spendable[0], spendable[3]),
        (Decimal::from(100), Decimal::ZERO)
    );
}

#[tokio::test]
async fn a_legacy_import_brings_its_balances_into_the_totals() {
    let app = TestApp::spawn().await;
    let org = app.imported_seed().await;
    let imported = assert_totals(&app, org, "the import").await;
    assert!(imported.iter().any(|w| !w.is_zero()), "{imported:?}");
}

/// Many transactions at once, each crediting two customers (in id order, as the program locks
/// them) through ledger entries: none deadlocks, and the totals, spread over the shards, add up.
/// (A shard row locked at the first credit instead of at commit deadlocks here: T1 holds customer
/// a and the shard and waits for b, T2 holds b and waits for the shard.)
#[tokio::test]
async fn concurrent_credits_commit_without_deadlock_and_add_up() {
    let app = TestApp::spawn().await;
    let org = app.org().await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            app.customer(org, &format!("C{i}"))
                .await
                .parse::<i64>()
                .expect("id"),
        );
    }
    let credit = "insert into ledger_entries (org_id, customer_id, wallet, kind, amount, description,
                                              source, transaction_type, occurred_at, utc_offset_seconds)
                  values ($1, $2, 'main', 'accrual', 1.5, 'test', 'operator', 'bonus', now(), 18000)";
    let tasks = (0..8).map(|t| {
        let (pool, ids) = (app.db.pool.clone(), ids.clone());
        tokio::spawn(async move {
            for k in 0..40 {
                let a = ids[(t + k) % ids.len()];
                let b = ids[(t + k + 1) % ids.len()];
                let mut tx = pool.begin().await.expect("begin");
                for customer in [a.min(b), a.max(b)] {
                    sqlx::query(credit)
                        .bind(org)
                        .bind(customer)
                        .execute(&mut *tx)
                        .await
                        .expect("credit");
                    // Holds the first customer while others take theirs.
                    tokio::task::yield_now().await;
                }
                tx.commit().await.expect("commit without deadlock");
            }
        })
    });
    for task in futures::future::join_all(tasks).await {
        task.expect("task");
    }
    let totals = assert_totals(&app, org, "concurrent credits").await;
    assert_eq!(totals[0], Decimal::new(15, 1) * Decimal::from(8 * 40 * 2));
    let shards: i64 =
        sqlx::query_scalar("select count(*) from org_wallet_totals where org_id = $1")
            .bind(org)
            .fetch_one(&app.db.pool)
            .await
            .expect("shards");
    assert!(
        shards > 1,
        "one transaction's change goes to one of 16 shards: {shards}"
    );
}
