//! The one lock order of the whole program. Every transaction that locks rows takes them in this
//! order, so two transactions never wait for each other in a cycle (a deadlock):
//!
//! 1. the rows that belong to the request alone: its `Idempotency-Key` row, a worker's claims on
//!    its events' `receipts` rows, the unmatched receipt an operator attaches;
//! 2. organizations (only `PATCH` and the bot-token re-encryption write them, and they lock
//!    nothing else);
//! 3. customers, ascending by (organization, id), every customer whose row the transaction will
//!    change, in one statement: the buyer and, before the first purchase, the referrer; both sides
//!    of a promo code; both sides of a merge and the customers the merged one referred. The receipt
//!    path locks them `FOR NO KEY UPDATE`: it still excludes every other writer of those rows, but
//!    a second update of a buyer in the batch (what they spent) re-checks the `referred_by` foreign
//!    key, and under `FOR UPDATE` that check waited on other batches' referrers and deadlocked.
//!    The scheduled steps take customers `FOR UPDATE SKIP LOCKED` (a busy customer waits for the
//!    next run);
//! 4. bills, ascending by id. A transaction that starts from a bill (cancelling it, a sale or a
//!    refund naming it) reads it unlocked, locks its customer, then locks the bill and checks its
//!    customer is still the one locked (a merge may have moved it; then it runs again);
//! 5. a customer's lots (`bonus_lots`), after the customer (and the bills): spending, giving back, activating
//!    and burning lock them `FOR UPDATE` under the customer's lock;
//! 6. rows only inserted, or only touched through their owner's lock: ledger entries, lot moves,
//!    invoices, refunds, expiry warnings, the outbox, the status change log (`status_changes`,
//!    appended to by triggers; only the fold, under its own advisory lock, deletes from it and
//!    writes `status_counts`).
//!
//! A lock taken out of its place is left only where the rows cannot be known in advance (a promo
//! code entered between reading a buyer and locking it names a referrer not yet locked). The
//! deadlock PostgreSQL then detects (SQLSTATE 40P01), like a serialization failure (40001), is
//! transient: the operator API runs the whole transaction again ([`transient_retry`]), the workers
//! run the batch again.

use std::time::Duration;

use backon::ExponentialBuilder;
use sqlx::PgConnection;

use crate::error::Result;

/// Locks the customers (organization, id), in the order above; returns those that exist.
pub async fn customers(conn: &mut PgConnection, keys: &[(i64, i64)]) -> Result<Vec<(i64, i64)>> {
    lock_customers(conn, keys, "for update of c").await
}

/// Locks those of the customers (organization, id) no other transaction holds, in the order
/// above, and returns them: a scheduled step leaves a busy customer to its next run.
pub async fn free_customers(
    conn: &mut PgConnection,
    keys: &[(i64, i64)],
) -> Result<Vec<(i64, i64)>> {
    lock_customers(conn, keys, "for update of c skip locked").await
}

async fn lock_customers(
    conn: &mut PgConnection,
    keys: &[(i64, i64)],
    lock: &'static str,
) -> Result<Vec<(i64, i64)>> {
    let mut keys = keys.to_vec();
    keys.sort_unstable();
    keys.dedup();
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select c.org_id, c.id
         from customers c join unnest($1::bigint[], $2::bigint[]) as k(org_id, id)
           on c.org_id = k.org_id and c.id = k.id
         order by c.org_id, c.id
         {lock}"
    )))
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?)
}

/// Whether a failed statement lost a race PostgreSQL broke by aborting it: a deadlock (40P01) or a
/// serialization failure (40001). Running the whole transaction again is the cure.
pub fn is_transient(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

/// How often and how soon a transaction that lost such a race runs again: 5 more times, from
/// 20 ms doubling to at most 500 ms, with jitter so the racers do not meet again.
pub fn transient_retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_millis(500))
        .with_max_times(5)
        .with_jitter()
}
