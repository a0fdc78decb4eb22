//! The scheduled steps: pending lots activated, expired lots burned, expiry warnings sent, birthday
//! bonuses credited. Each takes `now` (tests choose it; the workers binary passes the clock), works
//! in transactions of at most `batch` rows and returns how many it did.
//!
//! Each is idempotent under two workers, a crash mid-batch and reruns: a transaction finds its rows
//! without locks, locks their customers with `for update skip locked` (in the program's order:
//! customers, then their lots — `crate::locks`), re-checks under the lock that the rows are still
//! due, and applies them; a rolled-back transaction leaves nothing, and a row already applied is no
//! longer due. Warnings and birthday bonuses are once-only by their unique keys as well.
//!
//! Open bills hold bonuses: an expired lot burns only what its wallet has beyond what they hold.
//! What stays held is not lost: when the bill is cancelled it becomes free, and a later run burns
//! it (the lot is still expired with something left); when the bill is paid, the payment takes it.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sqlx::{PgConnection, PgPool};

use crate::error::{Error, Result};
use crate::ledger::{self, EntryKind, NewEntry, Source, Wallet, describe};
use crate::lots::{self, NewLot, due};
use crate::money::{Amount, MoneyError};
use crate::notifications::{self, Note, NotificationKind};
use crate::orgs::{self, Organization};
use crate::rules;
use crate::time::Stamp;

fn money(err: MoneyError) -> Error {
    Error::invalid("amount", err.to_string())
}

/// Runs a batch (an expression over `$conn`, a transaction) again and again, each in its own
/// transaction, until one does nothing; the total done.
macro_rules! until_done {
    ($pool:expr, |$conn:ident| $batch:expr) => {{
        let mut total = 0usize;
        loop {
            let mut tx = $pool.begin().await?;
            let done = {
                let $conn: &mut PgConnection = &mut tx;
                $batch.await?
            };
            tx.commit().await?;
            if done == 0 {
                break total;
            }
            total = total.saturating_add(done);
        }
    }};
}

/// Pending lots whose `activates_at` has come: each moves from the pending wallet to its bonus
/// wallet ("Активация бонусов по накладной #X"), dated when it became spendable. Returns the lots
/// activated.
pub async fn activate_due(pool: &PgPool, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    Ok(until_done!(pool, |conn| activate_batch(conn, now, batch)))
}

async fn activate_batch(conn: &mut PgConnection, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    let candidates = due::activation_candidates(conn, now, batch).await?;
    if candidates.is_empty() {
        return Ok(0);
    }
    let locked = crate::locks::free_customers(conn, &candidates).await?;
    let lots = due::lock_activations(conn, &locked, now).await?;
    if lots.is_empty() {
        return Ok(0);
    }
    let zones = orgs::by_id(conn, lots.iter().map(|l| l.org_id).collect()).await?;
    let texts: Vec<String> = lots
        .iter()
        .map(|l| match &l.invoice_id {
            Some(invoice) => describe::activation(invoice),
            None => describe::ACTIVATION.to_owned(),
        })
        .collect();
    let mut entries = Vec::with_capacity(lots.len() * 2);
    let refs: Vec<String> = lots.iter().map(|l| l.id.to_string()).collect();
    for ((lot, text), reference) in lots.iter().zip(&texts).zip(&refs) {
        // A lot a refund emptied before it activated moves nothing: it only stops being pending.
        if lot.remaining <= Decimal::ZERO {
            continue;
        }
        let amount = Amount::new(lot.remaining).map_err(money)?;
        let zone = zones
            .get(&lot.org_id)
            .ok_or(Error::NotFound("organization"))?
            .time_zone;
        let pending = lot.wallet.pending().ok_or_else(|| {
            Error::invalid("wallet", "a lot is of the main or the referral wallet")
        })?;
        let at = Stamp::in_zone(lot.activates_at, zone);
        for (wallet, kind) in [
            (pending, EntryKind::Deduction),
            (lot.wallet, EntryKind::Accrual),
        ] {
            entries.push(NewEntry {
                org_id: lot.org_id,
                customer_id: lot.customer_id,
                wallet,
                kind,
                amount,
                description: text,
                source: Source::Activation,
                source_ref: Some(reference),
                at,
            });
        }
    }
    ledger::post_many(conn, &entries).await?;
    let ids: Vec<i64> = lots.iter().map(|l| l.id).collect();
    due::mark_active(conn, &ids).await?;
    tracing::info!(lots = ids.len(), "pending lots activated");
    Ok(ids.len())
}

/// Spendable lots whose `expires_at` has come, with something left: the remainder leaves the
/// wallet ("Сгорание бонусов"), dated the instant it expired, and the lot records the move. Only
/// what open bills do not hold burns (see the module's comment). Returns the lots burned from.
pub async fn expire_due(pool: &PgPool, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    Ok(until_done!(pool, |conn| expire_batch(conn, now, batch)))
}

/// A customer's wallets as the burn reads them, under the customer's lock.
#[derive(sqlx::FromRow)]
struct Holdings {
    org_id: i64,
    id: i64,
    bonuses: Decimal,
    bonuses_held: Decimal,
    referral_bonuses: Decimal,
    referral_bonuses_held: Decimal,
}

async fn expire_batch(conn: &mut PgConnection, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    let candidates = due::expiry_candidates(conn, now, batch).await?;
    if candidates.is_empty() {
        return Ok(0);
    }
    let locked = crate::locks::free_customers(conn, &candidates).await?;
    let burned = burn_locked(conn, &locked, now, None).await?;
    if burned > 0 {
        tracing::info!(lots = burned, "expired lots burned");
    }
    Ok(burned)
}

/// Burns, in the caller's transaction, what is left of `customer`'s lots that had expired at `at`
/// (the caller holds the customer's lock), dated `at`. A refund that gives bonuses back to lots
/// that expired meanwhile burns them at once this way, at the refund's instant: they leave the
/// wallet after they came back, and never stay spendable. Returns the lots burned from.
pub async fn burn_expired_at(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    at: DateTime<Utc>,
) -> Result<usize> {
    burn_locked(conn, &[(org_id, customer_id)], at, Some(at)).await
}

/// Burns the expired lots (at `now`) of the `locked` customers, each dated `dated` or, without
/// it, the instant it expired; only what open bills do not hold.
async fn burn_locked(
    conn: &mut PgConnection,
    locked: &[(i64, i64)],
    now: DateTime<Utc>,
    dated: Option<DateTime<Utc>>,
) -> Result<usize> {
    let lots = due::lock_expiries(conn, locked, now).await?;
    if lots.is_empty() {
        return Ok(0);
    }
    let holdings: Vec<Holdings> = sqlx::query_as(
        "select c.org_id, c.id, c.bonuses, c.bonuses_held, c.referral_bonuses, c.referral_bonuses_held
         from customers c join unnest($1::bigint[], $2::bigint[]) as k(org_id, id)
           on c.org_id = k.org_id and c.id = k.id",
    )
    .bind(locked.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(locked.iter().map(|c| c.1).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let holdings: HashMap<(i64, i64), Holdings> = holdings
        .into_iter()
        .map(|h| ((h.org_id, h.id), h))
        .collect();
    // The lots come grouped by customer and wallet, in burning order.
    let mut burned: Vec<(&due::DueLot, Decimal)> = Vec::with_capacity(lots.len());
    for group in lots
        .chunk_by(|a, b| (a.org_id, a.customer_id, a.wallet) == (b.org_id, b.customer_id, b.wallet))
    {
        let Some(first) = group.first() else { continue };
        let Some(h) = holdings.get(&(first.org_id, first.customer_id)) else {
            continue;
        };
        let (balance, held) = match first.wallet {
            Wallet::Referral => (h.referral_bonuses, h.referral_bonuses_held),
            _ => (h.bonuses, h.bonuses_held),
        };
        let remaining: Vec<Decimal> = group.iter().map(|l| l.remaining).collect();
        let amounts = rules::schedule::burn(&remaining, balance, held).map_err(money)?;
        burned.extend(
            group
                .iter()
                .zip(amounts)
                .filter(|(_, a)| *a > Decimal::ZERO),
        );
    }
    if burned.is_empty() {
        return Ok(0);
    }
    let zones = orgs::by_id(conn, burned.iter().map(|b| b.0.org_id).collect()).await?;
    let refs: Vec<String> = burned.iter().map(|b| b.0.id.to_string()).collect();
    let mut entries = Vec::with_capacity(burned.len());
    for ((lot, amount), reference) in burned.iter().zip(&refs) {
        let zone = zones
            .get(&lot.org_id)
            .ok_or(Error::NotFound("organization"))?
            .time_zone;
        entries.push(NewEntry {
            org_id: lot.org_id,
            customer_id: lot.customer_id,
            wallet: lot.wallet,
            kind: EntryKind::Deduction,
            amount: Amount::new(*amount).map_err(money)?,
            description: describe::EXPIRY,
            source: Source::Expiry,
            source_ref: Some(reference),
            at: Stamp::in_zone(dated.or(lot.expires_at).unwrap_or(now), zone),
        });
    }
    ledger::post_many(conn, &entries).await?;
    let taken: Vec<(i64, Decimal)> = burned.iter().map(|(l, a)| (l.id, *a)).collect();
    due::take(conn, Source::Expiry, &taken).await?;
    Ok(taken.len())
}

/// A warning just recorded.
#[derive(sqlx::FromRow)]
struct Warned {
    customer_id: i64,
    expires_on: NaiveDate,
    amount: Decimal,
}

/// Customers whose spendable bonuses expire within their organization's `expiry_warning_days`:
/// one message per customer and expiry date (the organization's local date), with the sum that
/// expires that day. The `expiry_warnings` row, inserted in the message's transaction, makes it
/// once-only. Returns the warnings queued.
pub async fn warn_expiring(pool: &PgPool, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    let orgs: Vec<(i64, i32, String)> = sqlx::query_as(
        "select id, expiry_warning_days, time_zone from organizations where expiry_warning_days > 0",
    )
    .fetch_all(pool)
    .await?;
    let mut total = 0usize;
    for (org_id, days, zone) in orgs {
        let days = u32::try_from(days).unwrap_or(0);
        let Some(horizon) = rules::schedule::warning_horizon(now, days).map_err(money)? else {
            continue;
        };
        let zone = zone.as_str();
        total = total.saturating_add(until_done!(pool, |conn| warn_batch(
            conn, org_id, zone, now, horizon, batch
        )));
    }
    Ok(total)
}

async fn warn_batch(
    conn: &mut PgConnection,
    org_id: i64,
    zone: &str,
    now: DateTime<Utc>,
    horizon: DateTime<Utc>,
    batch: i64,
) -> Result<usize> {
    let warned: Vec<Warned> = sqlx::query_as(
        "with due as (
             select l.customer_id, (l.expires_at at time zone $2)::date as expires_on,
                    sum(l.remaining) as amount
             from bonus_lots l
             where l.org_id = $1 and l.remaining > 0 and not l.pending
               and l.expires_at > $3 and l.expires_at <= $4
             group by 1, 2),
         fresh as (
             select * from due d
             where not exists (select 1 from expiry_warnings w
                               where w.org_id = $1 and w.customer_id = d.customer_id
                                 and w.expires_on = d.expires_on)
             order by customer_id, expires_on limit $5)
         insert into expiry_warnings (org_id, customer_id, expires_on, amount)
         select $1, customer_id, expires_on, amount from fresh
         on conflict do nothing
         returning customer_id, expires_on, amount",
    )
    .bind(org_id)
    .bind(zone)
    .bind(now)
    .bind(horizon)
    .bind(batch)
    .fetch_all(&mut *conn)
    .await?;
    let traces: Vec<String> = warned
        .iter()
        .map(|w| format!("expiry-{}-{}", w.customer_id, w.expires_on))
        .collect();
    let notes: Vec<Note<'_>> = warned
        .iter()
        .zip(&traces)
        .map(|(w, trace)| Note {
            org_id,
            customer_id: w.customer_id,
            kind: NotificationKind::ExpiryWarning,
            payload: serde_json::json!({
                "amount": w.amount.normalize().to_string(),
                "date": rules::schedule::warning_date(w.expires_on),
            }),
            trace_id: trace,
        })
        .collect();
    notifications::queue(conn, &notes).await?;
    if !notes.is_empty() {
        tracing::info!(
            org = org_id,
            warnings = notes.len(),
            "expiry warnings queued"
        );
    }
    Ok(notes.len())
}

/// Customers with a birth date whose birthday's window (the organization's
/// `birthday_window_days` either side of it) holds `now`'s local date, in organizations with a
/// `birthday_bonus`: the bonus, once per customer and birthday year (the ledger's unique key),
/// a lot, and a message. Returns the bonuses credited.
pub async fn birthday_bonuses(pool: &PgPool, now: DateTime<Utc>, batch: i64) -> Result<usize> {
    let ids: Vec<i64> =
        sqlx::query_scalar("select id from organizations where birthday_bonus > 0 order by id")
            .fetch_all(pool)
            .await?;
    let mut total = 0usize;
    for org_id in ids {
        let org = orgs::get(&mut *pool.acquire().await?, org_id).await?;
        let org = &org;
        total = total.saturating_add(until_done!(pool, |conn| birthday_batch(
            conn, org, now, batch
        )));
    }
    Ok(total)
}

async fn birthday_batch(
    conn: &mut PgConnection,
    org: &Organization,
    now: DateTime<Utc>,
    batch: i64,
) -> Result<usize> {
    let settings = &org.bonus_program_settings;
    let bonus = settings.birthday_bonus.get();
    if bonus <= Decimal::ZERO {
        return Ok(0);
    }
    let at = Stamp::in_zone(now, org.time_zone);
    let due = rules::schedule::birth_days_due(at.0.date_naive(), settings.birthday_window_days);
    let candidates: Vec<(i64, i32)> = sqlx::query_as(
        "select c.id, d.year from customers c
         join unnest($2::int[], $3::int[], $4::int[]) as d(month, day, year)
           on extract(month from c.birth_date) = d.month and extract(day from c.birth_date) = d.day
         where c.org_id = $1 and c.birth_date is not null and c.merged_into is null
           and extract(year from c.birth_date) < d.year
           and not exists (select 1 from ledger_entries e
                           where e.org_id = $1 and e.customer_id = c.id and e.source = 'birthday'
                             and e.source_ref = d.year::text)
         order by c.id limit $5",
    )
    .bind(org.id)
    .bind(
        due.iter()
            .map(|d| i32::try_from(d.0).unwrap_or(0))
            .collect::<Vec<_>>(),
    )
    .bind(
        due.iter()
            .map(|d| i32::try_from(d.1).unwrap_or(0))
            .collect::<Vec<_>>(),
    )
    .bind(due.iter().map(|d| d.2).collect::<Vec<_>>())
    .bind(batch)
    .fetch_all(&mut *conn)
    .await?;
    if candidates.is_empty() {
        return Ok(0);
    }
    let keys: Vec<(i64, i64)> = candidates.iter().map(|c| (org.id, c.0)).collect();
    let locked = crate::locks::free_customers(conn, &keys).await?;
    let amount = Amount::new(bonus).map_err(money)?;
    let expires_at = rules::lots::expires_at(now, settings.bonus_lifetime_days).map_err(money)?;
    let mut done = 0usize;
    for (customer_id, year) in candidates {
        if !locked.contains(&(org.id, customer_id)) {
            continue;
        }
        let reference = year.to_string();
        let text = describe::birthday(year);
        let credited = credit_once(
            conn,
            &Once {
                org,
                customer_id,
                amount,
                source: Source::Birthday,
                reference: &reference,
                description: &text,
                at,
                expires_at,
                kind: NotificationKind::BirthdayBonus,
            },
        )
        .await?;
        if credited {
            done += 1;
        }
    }
    if done > 0 {
        tracing::info!(org = org.id, bonuses = done, "birthday bonuses credited");
    }
    Ok(done)
}

/// A once-only bonus to credit.
pub struct Once<'a> {
    pub org: &'a Organization,
    pub customer_id: i64,
    pub amount: Amount,
    pub source: Source,
    pub reference: &'a str,
    pub description: &'a str,
    pub at: Stamp,
    pub expires_at: Option<DateTime<Utc>>,
    pub kind: NotificationKind,
}

/// Credits a welcome or birthday bonus to the main wallet unless it was credited before: the
/// entry (once, by the ledger's unique key), its lot, its message. `false` when it existed.
pub async fn credit_once(conn: &mut PgConnection, once: &Once<'_>) -> Result<bool> {
    let posted = ledger::post_once(
        conn,
        &NewEntry {
            org_id: once.org.id,
            customer_id: once.customer_id,
            wallet: Wallet::Main,
            kind: EntryKind::Accrual,
            amount: once.amount,
            description: once.description,
            source: once.source,
            source_ref: Some(once.reference),
            at: once.at,
        },
    )
    .await?;
    if !posted {
        return Ok(false);
    }
    lots::open(
        conn,
        &[NewLot {
            org_id: once.org.id,
            customer_id: once.customer_id,
            wallet: Wallet::Main,
            amount: once.amount.get(),
            pending: false,
            activates_at: once.at.utc(),
            expires_at: once.expires_at,
            source: once.source,
            source_ref: Some(once.reference),
            invoice_id: None,
        }],
    )
    .await?;
    let trace = format!(
        "{}-{}-{}",
        once.source.as_str(),
        once.customer_id,
        once.reference
    );
    notifications::queue(
        conn,
        &[Note {
            org_id: once.org.id,
            customer_id: once.customer_id,
            kind: once.kind,
            payload: serde_json::json!({ "amount": once.amount.get().normalize().to_string() }),
            trace_id: &trace,
        }],
    )
    .await?;
    Ok(true)
}
