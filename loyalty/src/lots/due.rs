//! The scheduled steps' side of the lots: activations and expiries that are due at an instant.
//! Each step finds candidates without locks, locks their customers (`crate::schedule`), then
//! locks the customers' due lots here and re-checks that they are still due: whatever another
//! worker did in between is seen, never applied twice.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::error::Result;
use crate::ledger::{Source, Wallet};

/// A lot the step is about to move, locked.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueLot {
    pub id: i64,
    pub org_id: i64,
    pub customer_id: i64,
    pub wallet: Wallet,
    pub remaining: Decimal,
    pub activates_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub invoice_id: Option<String>,
}

/// Customers (organization, id) with a pending lot due at `now`, the longest waiting first, at
/// most `limit` lots' worth. Not locked.
pub async fn activation_candidates(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as(
        "select distinct org_id, customer_id from
             (select org_id, customer_id from bonus_lots
              where pending and activates_at <= $1 order by activates_at limit $2) due",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Customers with a spendable lot expired at `now` that has something left and a wallet not
/// wholly held by open bills (a lot only they keep from burning waits for them to close), the
/// soonest expired first, at most `limit` lots' worth. Not locked.
pub async fn expiry_candidates(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as(
        "select distinct org_id, customer_id from
             (select l.org_id, l.customer_id from bonus_lots l
              join customers c on c.org_id = l.org_id and c.id = l.customer_id
              where l.remaining > 0 and not l.pending and l.expires_at <= $1
                and case l.wallet when 'main' then c.bonuses > c.bonuses_held
                                  else c.referral_bonuses > c.referral_bonuses_held end
              order by l.expires_at limit $2) due",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

const DUE_LOT: &str = "select l.id, l.org_id, l.customer_id, l.wallet, l.remaining, l.activates_at,
                              l.expires_at, l.invoice_id
                       from bonus_lots l join unnest($1::bigint[], $2::bigint[]) as k(org_id, id)
                         on l.org_id = k.org_id and l.customer_id = k.id";

/// The pending lots due at `now` of the customers the caller has locked, locked in turn (by id).
pub async fn lock_activations(
    conn: &mut PgConnection,
    customers: &[(i64, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<DueLot>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DUE_LOT} where l.pending and l.activates_at <= $3 order by l.id for update of l"
    )))
    .bind(customers.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(customers.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(conn)
    .await?)
}

/// The spendable lots expired at `now` with something left, of the customers the caller has
/// locked, locked in turn; in burning order: by customer and wallet, soonest expired first.
pub async fn lock_expiries(
    conn: &mut PgConnection,
    customers: &[(i64, i64)],
    now: DateTime<Utc>,
) -> Result<Vec<DueLot>> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{DUE_LOT} where not l.pending and l.remaining > 0 and l.expires_at <= $3
         order by l.org_id, l.customer_id, l.wallet, l.expires_at, l.id for update of l"
    )))
    .bind(customers.iter().map(|c| c.0).collect::<Vec<_>>())
    .bind(customers.iter().map(|c| c.1).collect::<Vec<_>>())
    .bind(now)
    .fetch_all(conn)
    .await?)
}

/// The lots become spendable.
pub async fn mark_active(conn: &mut PgConnection, ids: &[i64]) -> Result<()> {
    sqlx::query("update bonus_lots set pending = false where id = any($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes `(lot, amount)` off the lots' remainders, each with its `lot_moves` row (negative:
/// taken) under `source`, the lot's own id as the reference.
pub async fn take(conn: &mut PgConnection, source: Source, taken: &[(i64, Decimal)]) -> Result<()> {
    if taken.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = taken.iter().map(|t| t.0).collect();
    let amounts: Vec<Decimal> = taken.iter().map(|t| t.1).collect();
    sqlx::query(
        "with moved as (
             update bonus_lots l set remaining = l.remaining - t.amount
             from unnest($1::bigint[], $2::numeric[]) as t(id, amount)
             where l.id = t.id
             returning l.id, l.org_id, t.amount)
         insert into lot_moves (lot_id, org_id, source, source_ref, amount)
         select id, org_id, $3, id::text, -amount from moved",
    )
    .bind(ids)
    .bind(amounts)
    .bind(source)
    .execute(conn)
    .await?;
    Ok(())
}
