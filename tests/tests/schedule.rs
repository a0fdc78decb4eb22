//! The scheduled steps against the real database, each driven with a chosen `now`: pending lots
//! activate at their time and not before, expired lots burn only what open bills do not hold,
//! warnings go once per expiry date, birthday bonuses once a year inside the window, the welcome
//! bonus once. Two workers running the steps at once and a crash mid-batch apply nothing twice
//! and nothing by half; after every step a customer's lots add up to their wallets.

use std::str::FromStr;

use chrono::{DateTime, TimeZone, Utc};
use e2e::{BOT_TOKEN, TestApp, seed_settings, send, signed_init_data};
use loyalty::ledger::{self, EntryKind, NewEntry, Source, Wallet};
use loyalty::lots::{self, NewLot};
use loyalty::money::Amount;
use loyalty::schedule;
use loyalty::time::{OrgTimeZone, Stamp};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;

const BATCH: i64 = 100;

fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
        .single()
        .expect("a real instant")
}

fn dec(text: &str) -> Decimal {
    Decimal::from_str(text).expect("a decimal")
}

/// An organization with the seed's settings and `extra` ones (Asia/Almaty, UTC+5).
async fn org_with(app: &TestApp, extra: Value) -> i64 {
    let mut settings = seed_settings();
    for (key, value) in extra.as_object().expect("settings") {
        settings[key] = value.clone();
    }
    app.create_org(&json!({"name": "Shop", "bonus_program_settings": settings,
                           "telegram_bot_token": BOT_TOKEN}))
        .await
}

async fn customer(app: &TestApp, org: i64, name: &str) -> i64 {
    app.customer(org, name).await.parse().expect("numeric id")
}

/// A credit as the receipt path makes one: the entry (into the pending wallet while pending)
/// and its lot, in one transaction. Returns the lot's id.
#[allow(clippy::too_many_arguments)]
async fn credit(
    pool: &PgPool,
    org: i64,
    customer: i64,
    wallet: Wallet,
    amount: &str,
    pending: bool,
    activates_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    invoice: Option<&str>,
) -> i64 {
    let mut tx = pool.begin().await.expect("begin");
    let amount = Amount::from_str(amount).expect("an amount");
    ledger::post(
        &mut tx,
        &NewEntry {
            org_id: org,
            customer_id: customer,
            wallet: if pending {
                wallet.pending().expect("a bonus wallet")
            } else {
                wallet
            },
            kind: EntryKind::Accrual,
            amount,
            description: "Бонус с накладной #test",
            source: Source::Receipt,
            source_ref: invoice,
            at: Stamp::in_zone(activates_at, OrgTimeZone::default()),
        },
    )
    .await
    .expect("credit posted");
    let ids = lots::open(
        &mut tx,
        &[NewLot {
            org_id: org,
            customer_id: customer,
            wallet,
            amount: amount.get(),
            pending,
            activates_at,
            expires_at,
            source: Source::Receipt,
            source_ref: invoice,
            invoice_id: invoice,
        }],
    )
    .await
    .expect("lot opened");
    tx.commit().await.expect("commit");
    ids[0]
}

/// (main, referral, pending, referral pending, main held) of a customer.
async fn wallets(
    pool: &PgPool,
    org: i64,
    customer: i64,
) -> (Decimal, Decimal, Decimal, Decimal, Decimal) {
    sqlx::query_as(
        "select bonuses, referral_bonuses, pending_bonuses, pending_referral_bonuses, bonuses_held
         from customers where org_id = $1 and id = $2",
    )
    .bind(org)
    .bind(customer)
    .fetch_one(pool)
    .await
    .expect("customer")
}

/// The lots' invariant: for every customer, the spendable lots' remainders add up to each bonus
/// wallet and the pending lots' to each pending wallet.
async fn assert_lots_are_the_wallets(pool: &PgPool, org: i64) {
    let off: Vec<(i64, String)> = sqlx::query_as(
        "with sums as (
             select c.id, c.bonuses, c.referral_bonuses, c.pending_bonuses, c.pending_referral_bonuses,
                    coalesce(sum(l.remaining) filter (where l.wallet = 'main' and not l.pending), 0) as main,
                    coalesce(sum(l.remaining) filter (where l.wallet = 'referral' and not l.pending), 0) as referral,
                    coalesce(sum(l.remaining) filter (where l.wallet = 'main' and l.pending), 0) as pending,
                    coalesce(sum(l.remaining) filter (where l.wallet = 'referral' and l.pending), 0) as referral_pending
             from customers c left join bonus_lots l on l.org_id = c.org_id and l.customer_id = c.id
             where c.org_id = $1
             group by c.org_id, c.id)
         select id, format('wallets %s/%s/%s/%s, lots %s/%s/%s/%s', bonuses, referral_bonuses,
                           pending_bonuses, pending_referral_bonuses, main, referral, pending, referral_pending)
         from sums
         where bonuses <> main or referral_bonuses <> referral or pending_bonuses <> pending
            or pending_referral_bonuses <> referral_pending",
    )
    .bind(org)
    .fetch_all(pool)
    .await
    .expect("invariant query");
    assert!(off.is_empty(), "lots differ from wallets: {off:?}");
}

/// The entries of a customer from `source`: (wallet, kind, amount, description, occurred_at, source_ref).
async fn entries(
    pool: &PgPool,
    org: i64,
    customer: i64,
    source: &str,
) -> Vec<(
    String,
    String,
    Decimal,
    String,
    DateTime<Utc>,
    Option<String>,
)> {
    sqlx::query_as(
        "select wallet, kind, amount, description, occurred_at, source_ref from ledger_entries
         where org_id = $1 and customer_id = $2 and source = $3 order by seq",
    )
    .bind(org)
    .bind(customer)
    .bind(source)
    .fetch_all(pool)
    .await
    .expect("entries")
}

/// The payloads of the customer's notifications of `kind`.
async fn notes(pool: &PgPool, org: i64, customer: i64, kind: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "select payload from outbox where org_id = $1 and customer_id = $2 and kind = $3 order by id",
    )
    .bind(org)
    .bind(customer)
    .bind(kind)
    .fetch_all(pool)
    .await
    .expect("outbox")
}

#[tokio::test]
async fn a_pending_lot_activates_at_its_time_not_before_and_once() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(&app, json!({"accrual_delay_days": 14})).await;
    let buyer = customer(&app, org, "Aigerim").await;
    let due = at(2027, 3, 1, 9);
    let lot = credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "120.50",
        true,
        due,
        None,
        Some("INV-7"),
    )
    .await;
    // A friend's reward, without an invoice, waits in the referral pending wallet.
    let reward = credit(
        pool,
        org,
        buyer,
        Wallet::Referral,
        "30",
        true,
        due,
        None,
        None,
    )
    .await;
    assert_eq!(
        (
            wallets(pool, org, buyer).await.2,
            wallets(pool, org, buyer).await.3
        ),
        (dec("120.50"), dec("30"))
    );

    let before = due - chrono::TimeDelta::seconds(1);
    assert_eq!(
        schedule::activate_due(pool, before, BATCH)
            .await
            .expect("step"),
        0
    );
    assert_eq!(
        wallets(pool, org, buyer).await,
        (dec("0"), dec("0"), dec("120.50"), dec("30"), dec("0"))
    );

    assert_eq!(
        schedule::activate_due(pool, due, BATCH)
            .await
            .expect("step"),
        2
    );
    assert_eq!(
        wallets(pool, org, buyer).await,
        (dec("120.50"), dec("30"), dec("0"), dec("0"), dec("0"))
    );
    let moved = entries(pool, org, buyer, "activation").await;
    let lot_ref = Some(lot.to_string());
    assert_eq!(
        moved
            .iter()
            .filter(|e| e.5 == lot_ref)
            .map(|e| (e.0.as_str(), e.1.as_str(), e.2, e.3.as_str(), e.4))
            .collect::<Vec<_>>(),
        vec![
            (
                "pending",
                "deduction",
                dec("120.50"),
                "Активация бонусов по накладной #INV-7",
                due
            ),
            (
                "main",
                "accrual",
                dec("120.50"),
                "Активация бонусов по накладной #INV-7",
                due
            ),
        ]
    );
    let reward_ref = Some(reward.to_string());
    assert_eq!(
        moved
            .iter()
            .filter(|e| e.5 == reward_ref)
            .map(|e| (e.0.as_str(), e.1.as_str(), e.2, e.3.as_str()))
            .collect::<Vec<_>>(),
        vec![
            (
                "referral_pending",
                "deduction",
                dec("30"),
                "Активация бонусов"
            ),
            ("referral", "accrual", dec("30"), "Активация бонусов"),
        ],
        "{moved:?}"
    );
    // Shown in the organization's zone (Almaty, +05:00).
    let offset: i32 = sqlx::query_scalar(
        "select utc_offset_seconds from ledger_entries where source = 'activation' limit 1",
    )
    .fetch_one(pool)
    .await
    .expect("offset");
    assert_eq!(offset, 5 * 3600);

    let later = due + chrono::TimeDelta::days(3);
    assert_eq!(
        schedule::activate_due(pool, later, BATCH)
            .await
            .expect("rerun"),
        0
    );
    assert_eq!(entries(pool, org, buyer, "activation").await.len(), 4);
    assert_lots_are_the_wallets(pool, org).await;
}

#[tokio::test]
async fn expiry_burns_only_what_is_due_and_leaves_what_an_open_bill_holds_until_it_is_cancelled() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(&app, json!({"bonus_lifetime_days": 30})).await;
    let buyer = customer(&app, org, "Dana").await;
    let t0 = at(2027, 1, 1, 0);
    let soon = at(2027, 2, 1, 0);
    let late = at(2027, 5, 1, 0);
    let first = credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "100",
        false,
        t0,
        Some(soon),
        Some("A"),
    )
    .await;
    let second = credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "50",
        false,
        t0,
        Some(late),
        Some("B"),
    )
    .await;
    credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "30",
        false,
        t0,
        None,
        Some("C"),
    )
    .await;
    // An open bill holds 160 of the 180: only 20 is free to burn.
    let (status, bill) = app
        .post(
            &format!("/admin/v1/orgs/{org}/bills"),
            &json!({"customer_id": buyer.to_string(), "items": [{"name": "x", "quantity": 1, "unit_price": 500}],
                    "bonus_payment": {"amount": 160, "wallet": "main"}}),
        )
        .await;
    assert_eq!(status, 201, "{bill}");
    let bill_id = bill["id"].as_i64().expect("bill id");

    let now = at(2027, 2, 2, 0);
    assert_eq!(
        schedule::expire_due(pool, now, BATCH).await.expect("step"),
        1
    );
    assert_eq!(wallets(pool, org, buyer).await.0, dec("160"));
    assert_eq!(wallets(pool, org, buyer).await.4, dec("160"));
    let burned = entries(pool, org, buyer, "expiry").await;
    assert_eq!(burned.len(), 1);
    assert_eq!(
        (
            burned[0].1.as_str(),
            burned[0].2,
            burned[0].3.as_str(),
            burned[0].4,
            burned[0].5.clone()
        ),
        (
            "deduction",
            dec("20"),
            "Сгорание бонусов",
            soon,
            Some(first.to_string())
        )
    );
    // The held rest is not burned by a rerun while the bill is open.
    assert_eq!(
        schedule::expire_due(pool, now, BATCH).await.expect("rerun"),
        0
    );
    assert_lots_are_the_wallets(pool, org).await;

    let (status, body) = send(app.admin(
        reqwest::Method::DELETE,
        &format!("/admin/v1/orgs/{org}/bills/{bill_id}"),
    ))
    .await;
    assert!(status == 200 || status == 204, "{status} {body}");
    // Released: the rest of the expired lot burns; the later and the everlasting lots stay.
    assert_eq!(
        schedule::expire_due(pool, now, BATCH)
            .await
            .expect("after cancel"),
        1
    );
    assert_eq!(wallets(pool, org, buyer).await.0, dec("80"));
    let remaining: Vec<(i64, Decimal)> =
        sqlx::query_as("select id, remaining from bonus_lots where org_id = $1 order by id")
            .bind(org)
            .fetch_all(pool)
            .await
            .expect("lots");
    assert_eq!(remaining[0], (first, dec("0")));
    assert_eq!(remaining[1], (second, dec("50")));
    let moves: Vec<Decimal> = sqlx::query_scalar(
        "select amount from lot_moves where lot_id = $1 and source = 'expiry' order by created_at",
    )
    .bind(first)
    .fetch_all(pool)
    .await
    .expect("moves");
    assert_eq!(moves, vec![dec("-20"), dec("-80")]);
    assert_eq!(
        schedule::expire_due(pool, now, BATCH).await.expect("rerun"),
        0
    );
    assert_lots_are_the_wallets(pool, org).await;
}

#[tokio::test]
async fn an_expiry_warning_goes_once_per_customer_and_date_with_the_days_sum() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(
        &app,
        json!({"bonus_lifetime_days": 30, "expiry_warning_days": 7}),
    )
    .await;
    let buyer = customer(&app, org, "Erlan").await;
    let t0 = at(2027, 1, 1, 0);
    // 21:00 UTC on Jan 9 is Jan 10 in Almaty: both lots expire on the local date 10.01.2027.
    credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "40",
        false,
        t0,
        Some(at(2027, 1, 9, 21)),
        None,
    )
    .await;
    credit(
        pool,
        org,
        buyer,
        Wallet::Referral,
        "2.50",
        false,
        t0,
        Some(at(2027, 1, 10, 12)),
        None,
    )
    .await;
    credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "70",
        false,
        t0,
        Some(at(2027, 1, 20, 12)),
        None,
    )
    .await;
    let now = at(2027, 1, 5, 0);

    assert_eq!(
        schedule::warn_expiring(pool, now, BATCH)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        notes(pool, org, buyer, "expiry_warning").await,
        vec![json!({"amount": "42.5", "date": "10.01.2027"})]
    );
    assert_eq!(
        schedule::warn_expiring(pool, now, BATCH)
            .await
            .expect("rerun"),
        0
    );
    // Another lot expiring on a date already announced does not announce it again.
    credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "5",
        false,
        t0,
        Some(at(2027, 1, 10, 6)),
        None,
    )
    .await;
    assert_eq!(
        schedule::warn_expiring(pool, now + chrono::TimeDelta::hours(1), BATCH)
            .await
            .expect("rerun"),
        0
    );
    // A week before the later date, that one is announced.
    let week_before = at(2027, 1, 14, 0);
    assert_eq!(
        schedule::warn_expiring(pool, week_before, BATCH)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        notes(pool, org, buyer, "expiry_warning").await[1],
        json!({"amount": "70", "date": "20.01.2027"})
    );
    // Warnings off: nothing.
    let quiet = org_with(
        &app,
        json!({"bonus_lifetime_days": 30, "expiry_warning_days": 0}),
    )
    .await;
    let other = customer(&app, quiet, "Gulnar").await;
    credit(
        pool,
        quiet,
        other,
        Wallet::Main,
        "9",
        false,
        t0,
        Some(at(2027, 1, 6, 0)),
        None,
    )
    .await;
    assert_eq!(
        schedule::warn_expiring(pool, now, BATCH)
            .await
            .expect("step"),
        0
    );
}

async fn set_birth_date(pool: &PgPool, org: i64, customer: i64, date: &str) {
    sqlx::query("update customers set birth_date = $3::date where org_id = $1 and id = $2")
        .bind(org)
        .bind(customer)
        .bind(date)
        .execute(pool)
        .await
        .expect("birth date");
}

#[tokio::test]
async fn a_birthday_bonus_comes_inside_the_window_once_a_year() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(
        &app,
        json!({"birthday_bonus": 500, "birthday_window_days": 3, "bonus_lifetime_days": 30}),
    )
    .await;
    let born = customer(&app, org, "Kairat").await;
    let leap = customer(&app, org, "Leila").await;
    let none = customer(&app, org, "Marat").await;
    set_birth_date(pool, org, born, "1990-06-10").await;
    set_birth_date(pool, org, leap, "2000-02-29").await;

    // June 6 in Almaty: 4 days before, outside the window.
    assert_eq!(
        schedule::birthday_bonuses(pool, at(2027, 6, 6, 0), BATCH)
            .await
            .expect("step"),
        0
    );
    // 20:00 UTC on June 6 is June 7 in Almaty: inside.
    let inside = at(2027, 6, 6, 20);
    assert_eq!(
        schedule::birthday_bonuses(pool, inside, BATCH)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        schedule::birthday_bonuses(pool, inside, BATCH)
            .await
            .expect("rerun"),
        0
    );
    assert_eq!(
        schedule::birthday_bonuses(pool, at(2027, 6, 12, 0), BATCH)
            .await
            .expect("same year"),
        0
    );
    let credited = entries(pool, org, born, "birthday").await;
    assert_eq!(credited.len(), 1);
    assert_eq!(
        (
            credited[0].0.as_str(),
            credited[0].2,
            credited[0].3.as_str(),
            credited[0].5.as_deref()
        ),
        (
            "main",
            dec("500"),
            "Бонус ко дню рождения 2027",
            Some("2027")
        )
    );
    assert_eq!(wallets(pool, org, born).await.0, dec("500"));
    let expires: Option<DateTime<Utc>> = sqlx::query_scalar(
        "select expires_at from bonus_lots where org_id = $1 and customer_id = $2 and source = 'birthday'",
    )
    .bind(org)
    .bind(born)
    .fetch_one(pool)
    .await
    .expect("lot");
    assert_eq!(expires, Some(inside + chrono::TimeDelta::days(30)));
    assert_eq!(
        notes(pool, org, born, "birthday_bonus").await,
        vec![json!({"amount": "500"})]
    );

    // A year later, again, once.
    let next_year = at(2028, 6, 9, 6);
    assert_eq!(
        schedule::birthday_bonuses(pool, next_year, BATCH)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        schedule::birthday_bonuses(pool, next_year, BATCH)
            .await
            .expect("rerun"),
        0
    );
    assert_eq!(entries(pool, org, born, "birthday").await.len(), 2);
    assert_eq!(notes(pool, org, born, "birthday_bonus").await.len(), 2);

    // Born on Feb 29: Feb 28 in 2027, with no window to spare on its own day (window 3 spans it).
    assert_eq!(
        schedule::birthday_bonuses(pool, at(2027, 3, 2, 12), BATCH)
            .await
            .expect("step"),
        1
    );
    assert_eq!(
        entries(pool, org, leap, "birthday").await[0].5.as_deref(),
        Some("2027")
    );
    assert!(entries(pool, org, none, "birthday").await.is_empty());
    assert_lots_are_the_wallets(pool, org).await;
}

fn init_data(user_id: i64, first_name: &str) -> String {
    signed_init_data(&json!({"id": user_id, "first_name": first_name}), BOT_TOKEN)
}

#[tokio::test]
async fn the_welcome_bonus_is_credited_once_on_creation_or_on_two_concurrent_first_visits() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(&app, json!({"welcome_bonus": 150})).await;

    let init = init_data(777001, "Nurlan");
    let path = app.url(&format!("/app/v1/orgs/{org}/me"));
    let visit = || {
        send(
            app.http
                .get(&path)
                .header("Authorization", format!("tma {init}")),
        )
    };
    let (a, b) = tokio::join!(visit(), visit());
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let id: i64 = a.1["id"].as_str().expect("id").parse().expect("numeric");
    assert_eq!(b.1["id"], a.1["id"]);
    let (_, again) = visit().await;
    assert_eq!(again["bonuses"], 150);
    let welcomed = entries(pool, org, id, "welcome").await;
    assert_eq!(welcomed.len(), 1, "{welcomed:?}");
    assert_eq!(
        (welcomed[0].2, welcomed[0].3.as_str()),
        (dec("150"), "Приветственный бонус")
    );
    assert_eq!(
        notes(pool, org, id, "welcome_bonus").await,
        vec![json!({"amount": "150"})]
    );

    // An operator's creation, retried with the same key: once.
    let create = || {
        send(
            app.admin(
                reqwest::Method::POST,
                &format!("/admin/v1/orgs/{org}/customers"),
            )
            .header("Idempotency-Key", "create-olga")
            .json(&json!({"first_name": "Olga"})),
        )
    };
    let (status, created) = create().await;
    assert_eq!(status, 201, "{created}");
    let (_, retried) = create().await;
    assert_eq!(retried["id"], created["id"]);
    let olga: i64 = created["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("numeric");
    assert_eq!(wallets(pool, org, olga).await.0, dec("150"));
    assert_eq!(entries(pool, org, olga, "welcome").await.len(), 1);

    // Off by default: nothing.
    let plain = org_with(&app, json!({})).await;
    let nobody = customer(&app, plain, "Pavel").await;
    assert!(entries(pool, plain, nobody, "welcome").await.is_empty());
    assert_lots_are_the_wallets(pool, org).await;
}

/// Many customers, each with a lot to activate, one to burn, one to announce and a birthday.
async fn busy_org(app: &TestApp, customers: usize) -> (i64, Vec<i64>) {
    let pool = &app.db.pool;
    let org = org_with(
        app,
        json!({"birthday_bonus": 10, "birthday_window_days": 0, "expiry_warning_days": 7,
               "bonus_lifetime_days": 30, "accrual_delay_days": 1}),
    )
    .await;
    let t0 = at(2027, 1, 1, 0);
    let mut ids = Vec::new();
    for i in 0..customers {
        let id = customer(app, org, &format!("C{i}")).await;
        credit(
            pool,
            org,
            id,
            Wallet::Main,
            "10",
            true,
            at(2027, 1, 10, 0),
            None,
            Some("P"),
        )
        .await;
        credit(
            pool,
            org,
            id,
            Wallet::Main,
            "7",
            false,
            t0,
            Some(at(2027, 1, 14, 0)),
            None,
        )
        .await;
        credit(
            pool,
            org,
            id,
            Wallet::Referral,
            "3",
            false,
            t0,
            Some(at(2027, 1, 18, 0)),
            None,
        )
        .await;
        set_birth_date(pool, org, id, "1991-01-15").await;
        ids.push(id);
    }
    (org, ids)
}

#[tokio::test]
async fn two_workers_running_every_step_at_once_apply_each_row_once() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (org, ids) = busy_org(&app, 40).await;
    let now = at(2027, 1, 15, 0);
    // Small batches so the two interleave; separate pools so they hold separate connections.
    let other = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&app.db.url)
        .await
        .expect("second pool");
    for (name, step) in [("activate", 0), ("expire", 1), ("warn", 2), ("birthday", 3)] {
        let run = |p: PgPool| async move {
            match step {
                0 => schedule::activate_due(&p, now, 7).await,
                1 => schedule::expire_due(&p, now, 7).await,
                2 => schedule::warn_expiring(&p, now, 7).await,
                _ => schedule::birthday_bonuses(&p, now, 7).await,
            }
        };
        let (a, b) = tokio::join!(run(pool.clone()), run(other.clone()));
        let (a, b) = (a.expect(name), b.expect(name));
        // What one skipped (locked by the other) a rerun takes; the total is each row once.
        let rest = run(pool.clone()).await.expect(name);
        assert_eq!(a + b + rest, ids.len(), "{name}: {a} + {b} + {rest}");
        assert_eq!(run(pool.clone()).await.expect(name), 0, "{name} rerun");
    }
    for &id in &ids {
        assert_eq!(entries(pool, org, id, "activation").await.len(), 2);
        assert_eq!(entries(pool, org, id, "expiry").await.len(), 1);
        assert_eq!(entries(pool, org, id, "birthday").await.len(), 1);
        assert_eq!(
            notes(pool, org, id, "expiry_warning").await,
            vec![json!({"amount": "3", "date": "18.01.2027"})]
        );
        assert_eq!(
            wallets(pool, org, id).await,
            (dec("20"), dec("3"), dec("0"), dec("0"), dec("0"))
        );
    }
    assert_lots_are_the_wallets(pool, org).await;
}

#[tokio::test]
async fn a_crash_mid_batch_leaves_nothing_half_done_and_the_rerun_applies_it_once() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let (org, ids) = busy_org(&app, 6).await;
    let now = at(2027, 1, 15, 0);
    let victim = ids[3];
    // The fault: the lot moves of one customer's burn fail, after the batch's entries were
    // written and other lots updated in the same transaction.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "create function crash() returns trigger language plpgsql as $$
         begin
             if exists (select 1 from bonus_lots where id = new.lot_id and customer_id = {victim}) then
                 raise exception 'injected crash';
             end if;
             return new;
         end $$;
         create trigger crash before insert on lot_moves for each row execute function crash();"
    )))
    .execute(pool)
    .await
    .expect("fault installed");
    let failed = schedule::expire_due(pool, now, BATCH).await;
    assert!(failed.is_err(), "{failed:?}");
    let burned: i64 =
        sqlx::query_scalar("select count(*) from ledger_entries where source = 'expiry'")
            .fetch_one(pool)
            .await
            .expect("count");
    assert_eq!(burned, 0, "nothing of the failed batch stays");
    let moved: i64 = sqlx::query_scalar("select count(*) from lot_moves")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(moved, 0);
    for &id in &ids {
        assert_eq!(wallets(pool, org, id).await.0, dec("7"));
    }
    assert_lots_are_the_wallets(pool, org).await;

    sqlx::raw_sql("drop trigger crash on lot_moves; drop function crash();")
        .execute(pool)
        .await
        .expect("fault removed");
    assert_eq!(
        schedule::expire_due(pool, now, BATCH).await.expect("rerun"),
        ids.len()
    );
    assert_eq!(
        schedule::expire_due(pool, now, BATCH).await.expect("again"),
        0
    );
    for &id in &ids {
        assert_eq!(entries(pool, org, id, "expiry").await.len(), 1);
        assert_eq!(wallets(pool, org, id).await.0, dec("0"));
    }
    assert_lots_are_the_wallets(pool, org).await;

    // A transaction dropped mid-batch (a worker killed) rolls back the same way.
    let mut tx = pool.begin().await.expect("begin");
    sqlx::query("update bonus_lots set pending = false where org_id = $1 and pending")
        .bind(org)
        .execute(&mut *tx)
        .await
        .expect("half a batch");
    drop(tx);
    assert_eq!(
        schedule::activate_due(pool, now, BATCH)
            .await
            .expect("activation"),
        ids.len()
    );
    assert_lots_are_the_wallets(pool, org).await;
}

#[tokio::test]
async fn a_birth_date_is_set_once_corrected_only_by_an_operator_and_brings_the_birthday_bonus() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(
        &app,
        json!({"birthday_bonus": 300, "birthday_window_days": 1}),
    )
    .await;
    let id = customer(&app, org, "Saule").await;
    let path = format!("/admin/v1/orgs/{org}/customers/{id}/birth_date");
    let put = |body: Value| send(app.admin(reqwest::Method::PUT, &path).json(&body));

    for (bad, why) in [
        ("1990-02-30", "real date"),
        ("10.06.1990", "real date"),
        ("2999-01-01", "future"),
        ("1899-12-31", "1900"),
    ] {
        let (status, body) = put(json!({"birth_date": bad})).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert_eq!(body["error"]["field"], "birth_date", "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .expect("message")
                .contains(why),
            "{body}"
        );
    }
    let (status, body) = put(json!({"birth_date": "1991-07-20"})).await;
    assert_eq!((status, &body), (200, &json!({"birth_date": "1991-07-20"})));
    let (status, body) = put(json!({"birth_date": "1991-07-21"})).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "birth_date_already_set");
    let (status, body) = put(json!({"birth_date": "1991-07-02", "correct": true})).await;
    assert_eq!((status, &body), (200, &json!({"birth_date": "1991-07-02"})));
    let (status, _) = send(
        app.admin(
            reqwest::Method::PUT,
            &format!("/admin/v1/orgs/{org}/customers/999999/birth_date"),
        )
        .json(&json!({"birth_date": "1991-07-02"})),
    )
    .await;
    assert_eq!(status, 404);

    // The corrected date is the one the bonus follows.
    assert_eq!(
        schedule::birthday_bonuses(pool, at(2027, 7, 20, 6), BATCH)
            .await
            .expect("step"),
        0
    );
    assert_eq!(
        schedule::birthday_bonuses(pool, at(2027, 7, 3, 6), BATCH)
            .await
            .expect("step"),
        1
    );
    // A correction in the same year does not bring a second bonus.
    let (status, _) = put(json!({"birth_date": "1991-08-15", "correct": true})).await;
    assert_eq!(status, 200);
    assert_eq!(
        schedule::birthday_bonuses(pool, at(2027, 8, 15, 6), BATCH)
            .await
            .expect("step"),
        0
    );
    assert_eq!(entries(pool, org, id, "birthday").await.len(), 1);

    // The customer sets their own in the Mini App, once.
    let init = init_data(777002, "Timur");
    let mine = app.url(&format!("/app/v1/orgs/{org}/me/birth_date"));
    let own = |date: &str| {
        send(
            app.http
                .put(&mine)
                .header("Authorization", format!("tma {init}"))
                .json(&json!({"birth_date": date})),
        )
    };
    let (status, body) = own("2030-01-01").await;
    assert_eq!(
        (status, body["error"]["field"].clone()),
        (422, json!("birth_date"))
    );
    let (status, body) = own("2001-03-04").await;
    assert_eq!((status, &body), (200, &json!({"birth_date": "2001-03-04"})));
    let (status, body) = own("2001-03-05").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("birth_date_already_set"))
    );
    let stored: Option<chrono::NaiveDate> = sqlx::query_scalar(
        "select birth_date from customers where org_id = $1 and telegram_id = 777002",
    )
    .bind(org)
    .fetch_one(pool)
    .await
    .expect("customer");
    assert_eq!(stored, chrono::NaiveDate::from_ymd_opt(2001, 3, 4));
}

#[tokio::test]
async fn the_workers_binary_runs_the_steps_on_its_timer_and_counts_their_rows() {
    let app = TestApp::spawn().await;
    let pool = &app.db.pool;
    let org = org_with(&app, json!({"accrual_delay_days": 1})).await;
    let buyer = customer(&app, org, "Yerbol").await;
    let due = Utc::now() - chrono::TimeDelta::minutes(5);
    credit(
        pool,
        org,
        buyer,
        Wallet::Main,
        "12",
        true,
        due,
        None,
        Some("T-1"),
    )
    .await;

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let backends = &app.state.config.backends;
    let _workers = tokio::process::Command::new(e2e::binary("workers"))
        .env("DATABASE_URL", &app.db.url)
        .env("AMQP_URL", backends.amqp_url.join(","))
        .env("QUEUE_PREFIX", &backends.queue_prefix)
        .env("TOKEN_KEYS", e2e::TOKEN_KEYS)
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("SCHEDULE_INTERVAL_SECS", "1")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the workers start");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if wallets(pool, org, buyer).await.0 == dec("12") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never activated");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The step counts its rows once it returns, a moment after its transaction committed.
    let counted = "loyalty_scheduled_rows_total{step=\"activate_due\"} 1\n";
    loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .expect("metrics answer")
            .text()
            .await
            .expect("metrics text");
        if metrics.contains(counted) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(entries(pool, org, buyer, "activation").await.len(), 2);
    assert_lots_are_the_wallets(pool, org).await;
}
