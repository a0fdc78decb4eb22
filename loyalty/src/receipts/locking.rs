//! The rows a batch of receipts will move, locked before anything else in the program's order
//! (`crate::locks`): the customers of the bills the sales and refunds name (with the referrers a
//! first purchase rewards), then the bills themselves.

use std::collections::HashSet;

use sqlx::PgConnection;

use super::race;
use super::sale::lock_buyers;
use crate::error::Result;

/// Locks the bills (organization, bill id) and their customers, customers first. A bill whose
/// customer changed between reading and locking it (a merge moved it) fails the batch as a race,
/// so it runs again.
pub(super) async fn lock_bills_and_customers(
    conn: &mut PgConnection,
    mut bills: Vec<(i64, i64)>,
) -> Result<()> {
    bills.sort_unstable();
    bills.dedup();
    if bills.is_empty() {
        return Ok(());
    }
    let owners = |lock: &'static str| {
        sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(format!(
            "select b.org_id, b.customer_id
             from bills b join unnest($1::bigint[], $2::bigint[]) as k(org_id, id)
               on b.org_id = k.org_id and b.id = k.id
             order by b.id {lock}"
        )))
        .bind(bills.iter().map(|b| b.0).collect::<Vec<_>>())
        .bind(bills.iter().map(|b| b.1).collect::<Vec<_>>())
    };
    let customers = owners("").fetch_all(&mut *conn).await?;
    let locked: HashSet<(i64, i64)> = lock_buyers(conn, customers)
        .await?
        .iter()
        .map(|b| (b.org_id, b.id))
        .collect();
    let customers = owners("for update of b").fetch_all(&mut *conn).await?;
    if customers.iter().any(|c| !locked.contains(c)) {
        return Err(race());
    }
    Ok(())
}
