//! The rules of #12 in the money pipeline, end to end: POS receipts POSTed to ingest, a worker
//! stepped through the queue, then balances, entries and lots read back. Every test ends by
//! checking the lots invariant: a customer's spendable lots add up to each bonus wallet, their
//! pending lots to each pending wallet, and every lot's moves explain what it still holds.

use chrono::{DateTime, TimeDelta, Utc};
use e2e::{TestApp, receipt_event_at, send};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn d(s: &str) -> Decimal {
    Decimal::from_str_exact(s).expect("decimal literal")
}

/// An organization with the legacy seed's settings changed by `settings`, and a POS token.
struct Shop {
    org: i64,
    token: String,
}

async fn shop(app: &TestApp, settings: Value) -> Shop {
    let org = app.org().await;
    patch_settings(app, org, settings).await;
    let token = app.pos_token(org, "time-to-grow-pro").await;
    Shop { org, token }
}

async fn patch_settings(app: &TestApp, org: i64, settings: Value) {
    let (status, body) = send(
        app.admin(reqwest::Method::PATCH, &format!("/admin/v1/orgs/{org}"))
            .json(&json!({ "bonus_program_settings": settings })),
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

async fn customer(app: &TestApp, org: i64, name: &str) -> i64 {
    app.customer(org, name).await.parse().expect("numeric id")
}

/// A bill of one item at `price`, paying `bonuses` of it from the main wallet.
async fn bill(app: &TestApp, org: i64, customer: i64, price: &str, bonuses: Option<&str>) -> i64 {
    app.bill_paying(org, &customer.to_string(), price, bonuses)
        .await
}

async fn enter_promo(app: &TestApp, org: i64, customer: i64, friend: i64) {
    let (status, body) = app
        .post(
            &format!("/admin/v1/orgs/{org}/customers/{customer}/promo"),
            &json!({"code": format!("PROMO{friend}")}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// Steps a worker through the queue until it is empty.
async fn step(app: &TestApp) {
    app.worker()
        .consumer(1, 10)
        .run_until_empty()
        .await
        .expect("the receipts are consumed");
}

/// POSTs a receipt of `kind` (SELL or PAYBACK) sold at `at`, steps the worker, and returns the
/// receipt's row once processed.
async fn receipt(
    app: &TestApp,
    shop: &Shop,
    kind: &str,
    id: &str,
    bill: i64,
    total: &str,
    at: DateTime<Utc>,
) -> Value {
    let mut event = receipt_event_at(&format!("ev-{id}"), id, Some(bill), total, at);
    event["data"]["type"] = json!(kind);
    let (status, body) = app.post_receipt(&shop.token, &event).await;
    assert_eq!(status, 200, "{body}");
    step(app).await;
    app.wait_receipt(shop.org, &format!("ev-{id}"), "processed")
        .await
}

async fn sell(app: &TestApp, shop: &Shop, id: &str, bill: i64, total: &str) -> Value {
    receipt(app, shop, "SELL", id, bill, total, Utc::now()).await
}

async fn refund(app: &TestApp, shop: &Shop, id: &str, bill: i64, total: &str) -> Value {
    receipt(app, shop, "PAYBACK", id, bill, total, Utc::now()).await
}

/// A customer's wallets as stored.
#[derive(Debug, PartialEq, Eq)]
struct Wallets {
    bonuses: Decimal,
    referral: Decimal,
    pending: Decimal,
    pending_referral: Decimal,
    spent: Decimal,
}

async fn wallets(app: &TestApp, org: i64, customer: i64) -> Wallets {
    let (bonuses, referral, pending, pending_referral, spent): (
        Decimal,
        Decimal,
        Decimal,
        Decimal,
        Decimal,
    ) = sqlx::query_as(
        "select bonuses, referral_bonuses, pending_bonuses, pending_referral_bonuses, spent_total
         from customers where org_id = $1 and id = $2",
    )
    .bind(org)
    .bind(customer)
    .fetch_one(&app.db.pool)
    .await
    .expect("customer");
    Wallets {
        bonuses,
        referral,
        pending,
        pending_referral,
        spent,
    }
}

/// A lot as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Lot {
    id: i64,
    wallet: String,
    amount: Decimal,
    remaining: Decimal,
    pending: bool,
    activates_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    source: String,
    source_ref: Option<String>,
}

async fn lots(app: &TestApp, org: i64, customer: i64) -> Vec<Lot> {
    sqlx::query_as(
        "select id, wallet, amount, remaining, pending, activates_at, expires_at, source, source_ref
         from bonus_lots where org_id = $1 and customer_id = $2 order by id",
    )
    .bind(org)
    .bind(customer)
    .fetch_all(&app.db.pool)
    .await
    .expect("lots")
}

/// What the moves of `source`/`source_ref` did to each lot, in lot order.
async fn moves(app: &TestApp, org: i64, source: &str, source_ref: &str) -> Vec<(i64, Decimal)> {
    sqlx::query_as(
        "select lot_id, sum(amount) from lot_moves where org_id = $1 and source = $2 and source_ref = $3
         group by lot_id order by lot_id",
    )
    .bind(org)
    .bind(source)
    .bind(source_ref)
    .fetch_all(&app.db.pool)
    .await
    .expect("moves")
}

/// The lots invariant, for every customer of `org`: spendable lots = each bonus wallet, pending
/// lots = each pending wallet, and each lot holds what it was credited plus its moves.
async fn assert_lots_match_wallets(app: &TestApp, org: i64) {
    let apart: Vec<(i64, Value)> = sqlx::query_as(
        "select c.id, jsonb_build_object(
                    'bonuses', c.bonuses, 'main_lots', coalesce(sum(l.remaining) filter (where l.wallet = 'main' and not l.pending), 0),
                    'referral', c.referral_bonuses, 'referral_lots', coalesce(sum(l.remaining) filter (where l.wallet = 'referral' and not l.pending), 0),
                    'pending', c.pending_bonuses, 'pending_lots', coalesce(sum(l.remaining) filter (where l.wallet = 'main' and l.pending), 0),
                    'pending_referral', c.pending_referral_bonuses,
                    'pending_referral_lots', coalesce(sum(l.remaining) filter (where l.wallet = 'referral' and l.pending), 0))
         from customers c left join bonus_lots l on l.org_id = c.org_id and l.customer_id = c.id
         where c.org_id = $1
         group by c.org_id, c.id
         having c.bonuses <> coalesce(sum(l.remaining) filter (where l.wallet = 'main' and not l.pending), 0)
             or c.referral_bonuses <> coalesce(sum(l.remaining) filter (where l.wallet = 'referral' and not l.pending), 0)
             or c.pending_bonuses <> coalesce(sum(l.remaining) filter (where l.wallet = 'main' and l.pending), 0)
             or c.pending_referral_bonuses <> coalesce(sum(l.remaining) filter (where l.wallet = 'referral' and l.pending), 0)",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("invariant query");
    assert!(apart.is_empty(), "lots apart from wallets: {apart:?}");
    let unexplained: Vec<(i64, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "select l.id, l.amount, l.remaining, coalesce(sum(m.amount), 0)
         from bonus_lots l left join lot_moves m on m.lot_id = l.id
         where l.org_id = $1
         group by l.id
         having l.amount + coalesce(sum(m.amount), 0) <> l.remaining",
    )
    .bind(org)
    .fetch_all(&app.db.pool)
    .await
    .expect("moves query");
    assert!(
        unexplained.is_empty(),
        "lots whose moves do not explain them: {unexplained:?}"
    );
    let customers: i64 = sqlx::query_scalar("select count(*) from customers where org_id = $1")
        .bind(org)
        .fetch_one(&app.db.pool)
        .await
        .expect("count");
    assert!(customers > 0, "the invariant was checked on customers");
}

/// The entries of a customer's wallet made by `source`: (kind, amount, description, occurred_at).
async fn entries(
    app: &TestApp,
    org: i64,
    customer: i64,
    wallet: &str,
) -> Vec<(String, Decimal, String, DateTime<Utc>)> {
    sqlx::query_as(
        "select kind, amount, description, occurred_at from ledger_entries
         where org_id = $1 and customer_id = $2 and wallet = $3 order by seq",
    )
    .bind(org)
    .bind(customer)
    .bind(wallet)
    .fetch_all(&app.db.pool)
    .await
    .expect("entries")
}

/// Millisecond precision: what the receipt's `dateTime` carries.
fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

#[tokio::test]
async fn money_paid_accrues_on_the_part_of_the_sale_paid_in_money() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"accrual_base": "money_paid"})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    app.accrue(shop.org, alex, "500").await;
    let id = bill(&app, shop.org, alex, "10000", Some("500")).await;
    let row = sell(&app, &shop, "rc-1", id, "10000").await;

    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(w.bonuses, d("190"), "500 − 500 paid + 2 % of 9500");
    assert_eq!(w.spent, d("10000"));
    let lots = lots(&app, shop.org, alex).await;
    assert_eq!(lots.len(), 2);
    assert_eq!(
        (lots[0].source.as_str(), lots[0].remaining),
        ("operator", d("0")),
        "the payment took the operator's lot"
    );
    assert_eq!(
        (lots[1].source.as_str(), lots[1].amount, lots[1].pending),
        ("receipt", d("190"), false)
    );
    assert_eq!(
        moves(&app, shop.org, "receipt", "rc-1").await,
        [(lots[0].id, d("-500"))]
    );
    let invoice = row["invoice_id"].as_str().expect("invoice");
    let main = entries(&app, shop.org, alex, "main").await;
    assert_eq!(main[2].2, format!("Бонус с накладной #{invoice}"));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn nothing_when_paid_with_bonuses_accrues_nothing_on_a_bill_paid_with_bonuses() {
    let app = TestApp::spawn().await;
    let shop = shop(
        &app,
        json!({"accrual_base": "nothing_when_paid_with_bonuses"}),
    )
    .await;
    let alex = customer(&app, shop.org, "Alex").await;
    app.accrue(shop.org, alex, "500").await;
    let paid = bill(&app, shop.org, alex, "10000", Some("300")).await;
    sell(&app, &shop, "rc-1", paid, "10000").await;
    assert_eq!(wallets(&app, shop.org, alex).await.bonuses, d("200"));
    let cash = bill(&app, shop.org, alex, "1000", None).await;
    sell(&app, &shop, "rc-2", cash, "1000").await;
    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(w.bonuses, d("220"), "2 % of the bill paid in money");
    assert_eq!(w.spent, d("11000"));
    let lots = lots(&app, shop.org, alex).await;
    assert_eq!(
        lots.iter().map(|l| l.remaining).collect::<Vec<_>>(),
        [d("200"), d("20")]
    );
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn total_accrues_on_the_whole_sale_whatever_paid_it() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"accrual_base": "total"})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    app.accrue(shop.org, alex, "500").await;
    let id = bill(&app, shop.org, alex, "10000", Some("500")).await;
    sell(&app, &shop, "rc-1", id, "10000").await;
    assert_eq!(wallets(&app, shop.org, alex).await.bonuses, d("200"));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_customer_crossing_a_tier_earns_its_percentage_from_the_next_purchase_and_is_told_once() {
    let app = TestApp::spawn().await;
    let shop = shop(
        &app,
        json!({"tiers": [{"name": "Silver", "min_spent": 10000, "percentage": 3},
                         {"name": "Gold", "min_spent": 100000, "percentage": 5}]}),
    )
    .await;
    let alex = customer(&app, shop.org, "Alex").await;
    let mut expected = Decimal::ZERO;
    for (n, (price, earned)) in [("6000", "120"), ("5000", "100"), ("1000", "30")]
        .into_iter()
        .enumerate()
    {
        let id = bill(&app, shop.org, alex, price, None).await;
        sell(&app, &shop, &format!("rc-{n}"), id, price).await;
        expected += d(earned);
        assert_eq!(
            wallets(&app, shop.org, alex).await.bonuses,
            expected,
            "sale {n}: 2 % below Silver, 3 % once 10000 was spent before it"
        );
    }
    let told: Vec<Value> = sqlx::query_scalar(
        "select payload from outbox where org_id = $1 and customer_id = $2 and kind = 'tier_reached'",
    )
    .bind(shop.org)
    .bind(alex)
    .fetch_all(&app.db.pool)
    .await
    .expect("outbox");
    assert_eq!(told, [json!({"tier": "Silver", "percentage": "3"})]);
    assert_eq!(wallets(&app, shop.org, alex).await.spent, d("12000"));

    // A refund lowers what was spent: below Silver again, the next purchase earns 2 %.
    let second = sqlx::query_scalar::<_, i64>(
        "select bill_id from receipts where org_id = $1 and receipt_id = 'rc-1'",
    )
    .bind(shop.org)
    .fetch_one(&app.db.pool)
    .await
    .expect("bill");
    refund(&app, &shop, "rf-1", second, "5000").await;
    assert_eq!(wallets(&app, shop.org, alex).await.spent, d("7000"));
    let id = bill(&app, shop.org, alex, "1000", None).await;
    sell(&app, &shop, "rc-4", id, "1000").await;
    assert_eq!(
        wallets(&app, shop.org, alex).await.bonuses,
        expected - d("100") + d("20")
    );
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_delayed_accrual_lands_pending_until_days_after_the_sale_not_after_processing() {
    let app = TestApp::spawn().await;
    let shop = shop(
        &app,
        json!({"accrual_delay_days": 14, "bonus_lifetime_days": 30}),
    )
    .await;
    let friend = customer(&app, shop.org, "Synkris").await;
    let alex = customer(&app, shop.org, "Alex").await;
    enter_promo(&app, shop.org, alex, friend).await;
    let sold_at = Utc::now() - TimeDelta::days(3);
    let id = bill(&app, shop.org, alex, "10000", None).await;
    let row = receipt(&app, &shop, "SELL", "rc-1", id, "10000", sold_at).await;

    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(
        (w.bonuses, w.pending),
        (d("50"), d("200")),
        "the promo bonus is spendable, the accrual waits"
    );
    let accrual = lots(&app, shop.org, alex)
        .await
        .into_iter()
        .find(|l| l.source == "receipt")
        .expect("the accrual's lot");
    assert!(accrual.pending);
    assert_eq!(
        millis(accrual.activates_at),
        millis(sold_at + TimeDelta::days(14))
    );
    assert_eq!(
        accrual.expires_at.map(millis),
        Some(millis(sold_at + TimeDelta::days(44)))
    );
    let pending = entries(&app, shop.org, alex, "pending").await;
    let invoice = row["invoice_id"].as_str().expect("invoice");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].1, d("200"));
    assert_eq!(pending[0].2, format!("Бонус с накладной #{invoice}"));
    assert_eq!(millis(pending[0].3), millis(sold_at), "dated by the sale");

    // The referrer's reward waits the same way, in the pending referral wallet.
    let f = wallets(&app, shop.org, friend).await;
    assert_eq!((f.referral, f.pending_referral), (d("0"), d("500")));
    let reward = lots(&app, shop.org, friend).await;
    assert_eq!(reward.len(), 1);
    assert_eq!(
        (reward[0].wallet.as_str(), reward[0].pending),
        ("referral", true)
    );
    assert_eq!(
        millis(reward[0].activates_at),
        millis(sold_at + TimeDelta::days(14))
    );
    assert_eq!(
        entries(&app, shop.org, friend, "referral_pending").await[0].2,
        "Бонус от друга Alex"
    );
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_refund_before_activation_cancels_the_pending_part_without_shortfall() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"accrual_delay_days": 14})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    let id = bill(&app, shop.org, alex, "10000", None).await;
    sell(&app, &shop, "rc-1", id, "10000").await;
    assert_eq!(wallets(&app, shop.org, alex).await.pending, d("200"));

    // The main wallet is empty: the refunded share comes out of the pending wallet.
    let row = refund(&app, &shop, "rf-1", id, "2500").await;
    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(
        (w.bonuses, w.pending, w.spent),
        (d("0"), d("150"), d("7500"))
    );
    let (taken, shortfall): (Decimal, Decimal) =
        sqlx::query_as("select accrual_taken, shortfall from refunds where receipt_id = 'rf-1'")
            .fetch_one(&app.db.pool)
            .await
            .expect("refund");
    assert_eq!((taken, shortfall), (d("50"), d("0")));
    let pending = entries(&app, shop.org, alex, "pending").await;
    let invoice = row["invoice_id"].as_str().expect("invoice");
    assert_eq!(
        (pending[1].0.as_str(), pending[1].1, pending[1].2.as_str()),
        (
            "deduction",
            d("50"),
            format!("Возврат по накладной #{invoice}").as_str()
        )
    );
    let lot = &lots(&app, shop.org, alex).await[0];
    assert_eq!((lot.remaining, lot.pending), (d("150"), true));
    assert_eq!(
        moves(&app, shop.org, "refund", "rf-1").await,
        [(lot.id, d("-50"))]
    );
    // The rest of the sale, refunded too: nothing pending is left.
    refund(&app, &shop, "rf-2", id, "7500").await;
    assert_eq!(wallets(&app, shop.org, alex).await.pending, d("0"));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn money_paid_on_a_tiered_customer_with_a_delay_refunded_partly_before_activation() {
    let app = TestApp::spawn().await;
    let shop = shop(
        &app,
        json!({"accrual_base": "money_paid", "accrual_delay_days": 7,
               "tiers": [{"name": "Silver", "min_spent": 5000, "percentage": 4}]}),
    )
    .await;
    let alex = customer(&app, shop.org, "Alex").await;
    app.accrue(shop.org, alex, "1000").await;
    let first = bill(&app, shop.org, alex, "6000", None).await;
    sell(&app, &shop, "rc-1", first, "6000").await;
    // Silver now: the second sale earns 4 % of the 9000 paid in money, pending.
    let second = bill(&app, shop.org, alex, "10000", Some("1000")).await;
    sell(&app, &shop, "rc-2", second, "10000").await;
    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(
        (w.bonuses, w.pending, w.spent),
        (d("0"), d("480"), d("16000")),
        "1000 paid; 120 + 360 pending"
    );

    // Half of the second sale refunded before activation: half the payment back to the lot it
    // came from, half the accrual cancelled from the pending wallet.
    refund(&app, &shop, "rf-1", second, "5000").await;
    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(
        (w.bonuses, w.pending, w.spent),
        (d("500"), d("300"), d("11000"))
    );
    let lots = lots(&app, shop.org, alex).await;
    let by_source: Vec<(&str, Decimal, bool)> = lots
        .iter()
        .map(|l| (l.source.as_str(), l.remaining, l.pending))
        .collect();
    assert_eq!(
        by_source,
        [
            ("operator", d("500"), false),
            ("receipt", d("120"), true),
            ("receipt", d("180"), true)
        ]
    );
    assert_eq!(
        moves(&app, shop.org, "refund", "rf-1").await,
        [(lots[0].id, d("500")), (lots[2].id, d("-180"))]
    );
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_bill_payment_takes_the_soonest_expiring_lots_first_and_its_refund_gives_back_to_them() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"bonus_lifetime_days": 30})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    app.accrue(shop.org, alex, "100").await;
    patch_settings(&app, shop.org, json!({"bonus_lifetime_days": 10})).await;
    app.accrue(shop.org, alex, "100").await;
    patch_settings(&app, shop.org, json!({"bonus_lifetime_days": 60})).await;
    app.accrue(shop.org, alex, "100").await;
    let before = lots(&app, shop.org, alex).await;
    let (in30, in10, in60) = (before[0].id, before[1].id, before[2].id);
    assert!(before[1].expires_at < before[0].expires_at);

    let id = bill(&app, shop.org, alex, "1000", Some("150")).await;
    sell(&app, &shop, "rc-1", id, "1000").await;
    assert_eq!(
        moves(&app, shop.org, "receipt", "rc-1").await,
        [(in30, d("-50")), (in10, d("-100"))],
        "the lot expiring in 10 days first, then the one in 30"
    );
    let remaining = |lots: &[Lot]| lots.iter().map(|l| l.remaining).collect::<Vec<_>>();
    assert_eq!(
        remaining(&lots(&app, shop.org, alex).await),
        [d("50"), d("0"), d("100")]
    );

    // Half refunded: 75 back, to the lot taken from last first.
    refund(&app, &shop, "rf-1", id, "500").await;
    assert_eq!(
        moves(&app, shop.org, "refund", "rf-1").await,
        [(in30, d("50")), (in10, d("25"))]
    );
    // The rest: the other 75, never given twice.
    refund(&app, &shop, "rf-2", id, "500").await;
    assert_eq!(
        moves(&app, shop.org, "refund", "rf-2").await,
        [(in10, d("75"))]
    );
    let after = lots(&app, shop.org, alex).await;
    assert_eq!(remaining(&after), [d("100"), d("100"), d("100")]);
    assert_eq!(after[2].id, in60);
    assert_eq!(wallets(&app, shop.org, alex).await.bonuses, d("300"));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_refund_gives_back_to_a_lot_that_expired_meanwhile_and_it_burns_at_once() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"bonus_lifetime_days": 30})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    // A sale 40 days ago: its accrual expired 10 days ago (no expiry step has burned it yet).
    let old = bill(&app, shop.org, alex, "10000", None).await;
    let sold_at = Utc::now() - TimeDelta::days(40);
    receipt(&app, &shop, "SELL", "rc-old", old, "10000", sold_at).await;
    app.accrue(shop.org, alex, "100").await;
    let before = lots(&app, shop.org, alex).await;
    let (expired, fresh) = (before[0].id, before[1].id);
    assert!(before[0].expires_at.is_some_and(|at| at < Utc::now()));

    // The payment takes the expired lot first (it expires first), then the fresh one.
    let id = bill(&app, shop.org, alex, "1000", Some("250")).await;
    sell(&app, &shop, "rc-1", id, "1000").await;
    assert_eq!(
        moves(&app, shop.org, "receipt", "rc-1").await,
        [(expired, d("-200")), (fresh, d("-50"))]
    );
    // Refunded: each lot gets back what it gave; what the expired one got back burns at once, in
    // the refund's transaction and dated by it, so it is never spendable again.
    refund(&app, &shop, "rf-1", id, "1000").await;
    assert_eq!(
        moves(&app, shop.org, "refund", "rf-1").await,
        [(expired, d("200")), (fresh, d("50"))]
    );
    assert_eq!(
        moves(&app, shop.org, "expiry", &expired.to_string()).await,
        [(expired, d("-200"))]
    );
    let after = lots(&app, shop.org, alex).await;
    assert_eq!((after[0].remaining, after[1].remaining), (d("0"), d("100")));
    assert_eq!(wallets(&app, shop.org, alex).await.bonuses, d("100"));
    let (refunded_at, burned_at): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "select (select occurred_at from ledger_entries where org_id = $1 and source = 'refund'),
                (select occurred_at from ledger_entries where org_id = $1 and source = 'expiry')",
    )
    .bind(shop.org)
    .fetch_one(&app.db.pool)
    .await
    .expect("dates");
    assert_eq!(burned_at, refunded_at);
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn an_operator_deduction_takes_from_the_soonest_expiring_lots() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    app.accrue(shop.org, alex, "100").await;
    patch_settings(&app, shop.org, json!({"bonus_lifetime_days": 10})).await;
    app.accrue(shop.org, alex, "100").await;
    let before = lots(&app, shop.org, alex).await;
    assert_eq!(before[0].expires_at, None, "accrued without a lifetime");
    assert!(before[1].expires_at.is_some());

    let (status, body) = send(
        app.admin(
            reqwest::Method::POST,
            &format!("/admin/v1/orgs/{}/customers/{alex}/bonuses", shop.org),
        )
        .header("Idempotency-Key", "deduct-1")
        .json(&json!({"op": "deduct", "amount": 150})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        moves(&app, shop.org, "operator", "deduct-1").await,
        [(before[0].id, d("-50")), (before[1].id, d("-100"))]
    );
    // More than there is: refused, and no lot moves.
    let (status, _) = app
        .post(
            &format!("/admin/v1/orgs/{}/customers/{alex}/bonuses", shop.org),
            &json!({"op": "deduct", "amount": 51}),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(wallets(&app, shop.org, alex).await.bonuses, d("50"));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_promo_bonus_is_a_lot_that_expires_after_the_lifetime() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"bonus_lifetime_days": 30})).await;
    let friend = customer(&app, shop.org, "Synkris").await;
    let alex = customer(&app, shop.org, "Alex").await;
    let before = Utc::now();
    enter_promo(&app, shop.org, alex, friend).await;
    let lots = lots(&app, shop.org, alex).await;
    assert_eq!(lots.len(), 1);
    let lot = &lots[0];
    assert_eq!(
        (lot.source.as_str(), lot.amount, lot.source_ref.as_deref()),
        ("promo", d("50"), Some(friend.to_string().as_str()))
    );
    let expires = lot.expires_at.expect("a lifetime");
    assert!(expires >= before + TimeDelta::days(30) && expires <= Utc::now() + TimeDelta::days(30));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_merge_moves_the_lots_and_the_pending_wallets_to_the_survivor() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"accrual_delay_days": 7})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    let twin = customer(&app, shop.org, "Alex by phone").await;
    app.accrue(shop.org, alex, "30").await;
    app.accrue(shop.org, twin, "70").await;
    let id = bill(&app, shop.org, twin, "5000", None).await;
    sell(&app, &shop, "rc-1", id, "5000").await;

    let (status, merged) = app
        .post(
            &format!("/admin/v1/orgs/{}/customers/{alex}/merge", shop.org),
            &json!({"from": twin.to_string()}),
        )
        .await;
    assert_eq!(status, 200, "{merged}");
    let w = wallets(&app, shop.org, alex).await;
    assert_eq!(
        (w.bonuses, w.pending, w.spent),
        (d("100"), d("100"), d("5000"))
    );
    assert_eq!(lots(&app, shop.org, alex).await.len(), 3);
    assert!(lots(&app, shop.org, twin).await.is_empty());
    assert_eq!(
        wallets(&app, shop.org, twin).await,
        Wallets {
            bonuses: d("0"),
            referral: d("0"),
            pending: d("0"),
            pending_referral: d("0"),
            spent: d("0"),
        }
    );
    // The survivor spends the merged lots and a refund of the twin's sale finds its lot.
    let paid = bill(&app, shop.org, alex, "1000", Some("100")).await;
    sell(&app, &shop, "rc-2", paid, "1000").await;
    refund(&app, &shop, "rf-1", id, "5000").await;
    let w = wallets(&app, shop.org, alex).await;
    assert_eq!((w.bonuses, w.pending), (d("0"), d("0")));
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn a_receipt_replayed_a_day_later_is_still_dated_by_its_sale() {
    let app = TestApp::spawn().await;
    let shop = shop(&app, json!({"accrual_delay_days": 14})).await;
    let alex = customer(&app, shop.org, "Alex").await;
    let id = bill(&app, shop.org, alex, "10000", None).await;
    let sold_at = Utc::now() - TimeDelta::days(1);
    let event = receipt_event_at("ev-late", "rc-late", Some(id), "10000", sold_at);
    app.bury_receipt(shop.org, event, "the database was down")
        .await;
    let (status, replayed) = app
        .post(
            "/admin/v1/ops/dead-letters/replay",
            &json!({"queue": "receipts", "ids": ["ev-late"]}),
        )
        .await;
    assert_eq!(status, 200, "{replayed}");
    step(&app).await;
    let row = app.wait_receipt(shop.org, "ev-late", "processed").await;
    assert!(row["processed_at"].as_str().is_some());
    let pending = entries(&app, shop.org, alex, "pending").await;
    assert_eq!(millis(pending[0].3), millis(sold_at));
    let lot = &lots(&app, shop.org, alex).await[0];
    assert_eq!(
        millis(lot.activates_at),
        millis(sold_at + TimeDelta::days(14)),
        "14 days after the sale, not after the replay"
    );
    assert_lots_match_wallets(&app, shop.org).await;
}

#[tokio::test]
async fn imported_balances_become_lots_that_never_expire() {
    let app = TestApp::spawn().await;
    let org = app.imported_seed().await;
    let (lots, never, holders): (i64, i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where expires_at is null and source = 'import'),
                (select count(*) from customers where org_id = $1 and (bonuses > 0 or referral_bonuses > 0))
         from bonus_lots where org_id = $1",
    )
    .bind(org)
    .fetch_one(&app.db.pool)
    .await
    .expect("lots");
    assert!(holders > 0, "the seed has balances");
    assert_eq!(lots, never);
    assert!(lots >= holders);
    assert_lots_match_wallets(&app, org).await;
}
