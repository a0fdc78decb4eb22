//! How many receipts and notifications reached each status in the last minute, hour and day, by
//! the time of their last change: the operations summary's counts, at any day's volume.
//!
//! The statements that change `receipts` or `outbox` append their net change per (organization,
//! status, second) to `status_changes` (a trigger per table, see the migration
//! `20261205000001_status_counts.sql`); [`compact`] folds that log into `status_counts`, by the
//! second for the last minute or two and by the minute before, and by the hour besides, for each
//! organization and for all of them together. [`count`] adds up, in one statement, the last hour's
//! seconds and minutes, the day's whole hours, the minutes of its first part-hour and what the log
//! still holds: some 250 rows per status, however many receipts the day saw.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// How many receipts (or notifications) reached a status in the last minute, hour and day. The
/// minute is exact to the second; the hour and the day are counted by whole minutes (a minute that
/// began before the window did is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StatusCount {
    pub status: String,
    pub last_minute: i64,
    pub last_hour: i64,
    pub last_day: i64,
}

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Receipts,
    Notifications,
}

impl Counted {
    /// Its name in `status_changes.kind` and `status_counts.kind`.
    pub fn kind(self) -> &'static str {
        match self {
            Counted::Receipts => "receipts",
            Counted::Notifications => "notifications",
        }
    }
}

/// The counting query, for one organization or for all of them (the rows with a null `org_id`),
/// as two static strings (no SQL is built at run time). `$1` the statuses, in the order answered;
/// `$2` the kind; `$3` the organization. The day is its whole hours (`h0` to `hc`, the current
/// hour's start) from the hour rows, and by the minute before `h0` and from `hc` on; the last
/// minute and hour by the second and the minute. The log's rows (span 0 here) count everywhere.
macro_rules! count_sql {
    ($counts:literal, $changes:literal) => {
        concat!(
            "with edges as (
                 select date_trunc('hour', now() - interval '1 day', 'UTC') + interval '1 hour' as h0,
                        date_trunc('hour', now(), 'UTC') as hc),
             counted as (
                 select status, span, at, n from status_counts, edges
                 where ", $counts, " and kind = $2 and span in (1, 60)
                       and at > now() - interval '1 day' and at < h0
                 union all
                 select status, span, at, n from status_counts, edges
                 where ", $counts, " and kind = $2 and span in (1, 60)
                       and at >= least(hc, now() - interval '1 hour')
                 union all
                 select status, span, at, n from status_counts, edges
                 where ", $counts, " and kind = $2 and span = 3600 and at >= h0 and at < hc
                 union all
                 select status, 0, at, n from status_changes
                 where ", $changes, " and kind = $2 and at > now() - interval '1 day')
             select s.status,
                    coalesce(sum(c.n) filter (where c.span < 3600 and c.at > now() - interval '1 minute'), 0)::bigint
                        as last_minute,
                    coalesce(sum(c.n) filter (where c.span < 3600 and c.at > now() - interval '1 hour'), 0)::bigint
                        as last_hour,
                    coalesce(sum(c.n) filter (where c.span in (0, 3600) or c.at < e.h0 or c.at >= e.hc), 0)::bigint
                        as last_day
             from edges e, unnest($1::text[]) with ordinality as s(status, position)
             left join counted c on c.status = s.status
             group by s.status, s.position order by s.position"
        )
    };
}

const COUNT_ONE: &str = count_sql!("org_id = $3", "org_id = $3");
const COUNT_ALL: &str = count_sql!("org_id is null and $3::bigint is null", "true");

/// The counts of `statuses`, in their order, for one organization or (`None`) all of them.
pub async fn count(
    db: &PgPool,
    counted: Counted,
    org: Option<i64>,
    statuses: &[&str],
) -> sqlx::Result<Vec<StatusCount>> {
    sqlx::query_as(if org.is_some() { COUNT_ONE } else { COUNT_ALL })
        .bind(statuses)
        .bind(counted.kind())
        .bind(org)
        .fetch_all(db)
        .await
}

/// The advisory lock a fold holds ("loyaltyF" in ASCII, 7813597337849461062): one fold at a time,
/// whatever runs it; `recount_status_counts()` (the migration) takes it too.
pub const FOLD_LOCK: i64 = 0x6c6f_7961_6c74_7946;

/// Folds the log into the counts, in one transaction: every change logged so far (a change that
/// commits meanwhile waits for the next fold), by the second since the start of the previous minute
/// and by the minute before it, and by the hour; then the seconds that have grown older than that
/// into their minute, and drops what is older than a day. Only one fold runs at a time (the others return at once,
/// having done nothing). Returns how many logged changes it folded.
pub async fn compact(db: &PgPool) -> sqlx::Result<u64> {
    fold(db, None).await
}

/// [`compact`] as if the database's clock read `now` (the tests' way to let seconds age).
pub async fn compact_as_of(db: &PgPool, now: DateTime<Utc>) -> sqlx::Result<u64> {
    fold(db, Some(now)).await
}

async fn fold(db: &PgPool, now: Option<DateTime<Utc>>) -> sqlx::Result<u64> {
    let mut tx = db.begin().await?;
    let ours: bool = sqlx::query_scalar("select pg_try_advisory_xact_lock($1)")
        .bind(FOLD_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        return Ok(0);
    }
    // The fold's one clock (the database's unless told otherwise), and the one line between
    // seconds and minutes: the start of the previous minute.
    let (now, seconds_from): (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "select coalesce($1, now()), date_trunc('minute', coalesce($1, now()) - interval '1 minute')",
    )
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    let folded: i64 = sqlx::query_scalar(
        "with logged as (delete from status_changes returning org_id, kind, status, at, n),
              bucketed as (
                  select org_id, kind, status, n,
                         case when at >= $1 then at else date_trunc('minute', at) end as at,
                         case when at >= $1 then 1 else 60 end as span
                  from logged),
              summed as (
                  select org_id, kind, span, at, status, sum(n)::bigint as n
                  from bucketed
                  group by grouping sets ((org_id, kind, span, at, status), (kind, span, at, status))
                  having sum(n) <> 0
                  union all
                  select org_id, kind, 3600, date_trunc('hour', at, 'UTC'), status, sum(n)::bigint
                  from bucketed
                  group by grouping sets ((org_id, kind, date_trunc('hour', at, 'UTC'), status),
                                          (kind, date_trunc('hour', at, 'UTC'), status))
                  having sum(n) <> 0),
              written as (
                  insert into status_counts as c (org_id, kind, span, at, status, n)
                  select * from summed
                  on conflict on constraint status_counts_key do update set n = c.n + excluded.n)
         select count(*) from logged",
    )
    .bind(seconds_from)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "with aged as (
             delete from status_counts
             where span = 1 and at < $1
             returning org_id, kind, date_trunc('minute', at) as at, status, n)
         insert into status_counts as c (org_id, kind, at, span, status, n)
         select org_id, kind, at, 60, status, sum(n) from aged
         group by org_id, kind, at, status
         on conflict on constraint status_counts_key do update set n = c.n + excluded.n",
    )
    .bind(seconds_from)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from status_counts where at < $1 - interval '25 hours'")
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(u64::try_from(folded).unwrap_or_default())
}

/// Counts the day again from the rows themselves (`recount_status_counts()`, see the migration,
/// logs the day's rows anew) and folds the result: after a bulk load that skipped the triggers, or
/// when the counts are in doubt. Writers and the fold wait for it.
pub async fn recount(db: &PgPool) -> sqlx::Result<()> {
    sqlx::query("select recount_status_counts()")
        .execute(db)
        .await?;
    compact(db).await.map(drop)
}

/// How often the folding worker vacuums the log itself.
const VACUUM_EVERY: Duration = Duration::from_secs(10);

/// Vacuums the log. Every fold empties it, leaving its rows dead, and the summary reads it whole;
/// autovacuum wakes at most once a minute (`autovacuum_naptime`), time enough for a busy minute's
/// dead rows to slow each summary down. A vacuum of a table this small takes milliseconds. A
/// failure is only logged: the next one (or autovacuum) does it.
async fn vacuum_log(db: &PgPool) {
    if let Err(err) = sqlx::raw_sql("vacuum status_changes").execute(db).await {
        tracing::warn!(error = %err, "vacuuming the status change log failed");
    }
}

/// Folds every `interval` until the task is dropped; a fold that fails is logged and the next one
/// takes its rows (they are only deleted when the fold commits). Records each fold's duration in
/// `loyalty_status_fold_seconds` and its rows in `loyalty_status_changes_folded_total`.
pub async fn compact_every(db: PgPool, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut since_vacuum = Duration::ZERO;
    loop {
        ticks.tick().await;
        let began = std::time::Instant::now();
        match compact(&db).await {
            Ok(folded) => {
                metrics::histogram!("loyalty_status_fold_seconds")
                    .record(began.elapsed().as_secs_f64());
                metrics::counter!("loyalty_status_changes_folded_total").increment(folded);
                since_vacuum += interval;
                if folded > 0 && since_vacuum >= VACUUM_EVERY {
                    since_vacuum = Duration::ZERO;
                    vacuum_log(&db).await;
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "folding the status counts failed; the next fold retries")
            }
        }
    }
}
