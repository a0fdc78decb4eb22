//! The operations summary's counts by status (`loyalty::status_counts`): kept by triggers and
//! folded by the workers, they must say what a count of the rows themselves says, through inserts,
//! status changes, deletes, rollbacks, folds at any moment and writers racing a fold.

use chrono::{DateTime, TimeDelta, Utc};
use e2e::TestDb;
use loyalty::status_counts::{self, Counted, StatusCount};
use rand::{Rng, SeedableRng, rngs::StdRng};
use sqlx::PgPool;

const RECEIPT_STATUSES: [&str; 6] = [
    "processed",
    "duplicate",
    "unmatched",
    "ignored",
    "retrying",
    "dead",
];
const NOTIFICATION_STATUSES: [&str; 4] = ["pending", "sending", "sent", "dead"];

/// Ages of a change, in seconds, that no window's edge comes near while the test runs (the hour
/// and the day are counted by whole minutes, so a change within a minute of their start may fall
/// out; a row does not age past the minute's edge in the test's time). 23 h 45 min falls in the
/// day's first part-hour, counted by the minute, or in its first whole hour, by the time of day.
const AGES: [i64; 9] = [
    0,
    12,
    5 * 60,
    40 * 60,
    3 * 3600,
    20 * 3600,
    23 * 3600 + 45 * 60,
    26 * 3600,
    40 * 86_400,
];

/// What the summary used to count, straight from the rows: the oracle.
async fn counted_from_rows(
    db: &PgPool,
    table: &str,
    org: Option<i64>,
    statuses: &[&str],
) -> Vec<StatusCount> {
    // The table is one of two constants.
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select s.status,
                count(t.updated_at) filter (where t.updated_at > now() - interval '1 minute') as last_minute,
                count(t.updated_at) filter (where t.updated_at > now() - interval '1 hour') as last_hour,
                count(t.updated_at) as last_day
         from unnest($1::text[]) with ordinality as s(status, position)
         left join {table} t on t.status = s.status and t.updated_at > now() - interval '1 day'
              and ($2::bigint is null or t.org_id = $2)
         group by s.status, s.position order by s.position"
    )))
    .bind(statuses)
    .bind(org)
    .fetch_all(db)
    .await
    .expect("count the rows")
}

/// The kept counts equal the rows' own, for each organization and for all of them.
async fn assert_counts_agree(db: &PgPool, orgs: &[i64], when: &str) {
    for org in orgs.iter().copied().map(Some).chain([None]) {
        for (counted, table, statuses) in [
            (Counted::Receipts, "receipts", &RECEIPT_STATUSES[..]),
            (Counted::Notifications, "outbox", &NOTIFICATION_STATUSES[..]),
        ] {
            let kept = status_counts::count(db, counted, org, statuses)
                .await
                .expect("kept counts");
            let oracle = counted_from_rows(db, table, org, statuses).await;
            assert_eq!(kept, oracle, "{table}, organization {org:?}, {when}");
        }
    }
}

async fn orgs(db: &PgPool, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(
            sqlx::query_scalar("insert into organizations (name) values ($1) returning id")
                .bind(format!("Shop {i}"))
                .fetch_one(db)
                .await
                .expect("organization"),
        );
    }
    ids
}

fn ago(now: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
    now - TimeDelta::seconds(seconds)
}

/// Inserts, re-statuses, moves in time and deletes receipts and notifications at random, in
/// statements of one row and of many, some in transactions rolled back.
async fn churn(db: &PgPool, orgs: &[i64], rng: &mut StdRng, round: usize, steps: usize) {
    for step in 0..steps {
        let now = Utc::now();
        let org = orgs[rng.random_range(0..orgs.len())];
        let age = AGES[rng.random_range(0..AGES.len())];
        let mut tx = db.begin().await.expect("begin");
        match rng.random_range(0..7) {
            // A batch of receipts, as a worker inserts them.
            0 | 1 => {
                let n = rng.random_range(1..40);
                let status = RECEIPT_STATUSES[rng.random_range(0..RECEIPT_STATUSES.len())];
                sqlx::query(
                    "insert into receipts (org_id, event_id, event_type, status, payload, received_at, updated_at)
                     select $1, 'ev-' || $2 || '-' || $3 || '-' || i, 'ReceiptCreated', $4, '{}', $5, $5
                     from generate_series(1, $6) as i",
                )
                .bind(org)
                .bind(round as i64)
                .bind(step as i64)
                .bind(status)
                .bind(ago(now, age))
                .bind(n)
                .execute(&mut *tx)
                .await
                .expect("insert receipts");
            }
            // Some receipts change status (or only their time, or nothing at all).
            2 | 3 => {
                let status = RECEIPT_STATUSES[rng.random_range(0..RECEIPT_STATUSES.len())];
                let moved = rng.random_bool(0.8);
                sqlx::query(
                    "update receipts set status = $2,
                            updated_at = case when $3 then $4 else updated_at end
                     where event_id in (select event_id from receipts where org_id = $1
                                        order by random() limit $5) and org_id = $1",
                )
                .bind(org)
                .bind(status)
                .bind(moved)
                .bind(ago(now, age))
                .bind(rng.random_range(1..25i64))
                .execute(&mut *tx)
                .await
                .expect("update receipts");
            }
            // Notifications written, then relayed one by one.
            4 => {
                sqlx::query(
                    "insert into outbox (org_id, customer_id, kind, payload, status, updated_at)
                     select $1, i, 'purchase_accrual', '{}', 'pending', $2 from generate_series(1, $3) as i",
                )
                .bind(org)
                .bind(ago(now, age))
                .bind(rng.random_range(1..20i64))
                .execute(&mut *tx)
                .await
                .expect("insert notifications");
            }
            5 => {
                let ids: Vec<i64> = sqlx::query_scalar(
                    "select id from outbox where org_id = $1 order by random() limit 10",
                )
                .bind(org)
                .fetch_all(&mut *tx)
                .await
                .expect("notifications");
                for id in ids {
                    let status =
                        NOTIFICATION_STATUSES[rng.random_range(0..NOTIFICATION_STATUSES.len())];
                    sqlx::query("update outbox set status = $2, updated_at = $3 where id = $1")
                        .bind(id)
                        .bind(status)
                        .bind(ago(now, AGES[rng.random_range(0..3)]))
                        .execute(&mut *tx)
                        .await
                        .expect("update a notification");
                }
            }
            // Rows deleted (a purge, an organization's data removed).
            _ => {
                sqlx::query(
                    "delete from receipts where event_id in
                         (select event_id from receipts where org_id = $1 order by random() limit 5)
                     and org_id = $1",
                )
                .bind(org)
                .execute(&mut *tx)
                .await
                .expect("delete receipts");
                sqlx::query(
                    "delete from outbox where id in
                         (select id from outbox where org_id = $1 order by random() limit 3)",
                )
                .bind(org)
                .execute(&mut *tx)
                .await
                .expect("delete notifications");
            }
        }
        if rng.random_bool(0.15) {
            tx.rollback().await.expect("rollback");
        } else {
            tx.commit().await.expect("commit");
        }
    }
}

#[tokio::test]
async fn the_kept_counts_equal_the_rows_through_every_change_and_fold() {
    let db = TestDb::new().await;
    let orgs = orgs(&db.pool, 3).await;
    let mut rng = StdRng::seed_from_u64(15);
    assert_counts_agree(&db.pool, &orgs, "empty").await;
    for round in 0..6 {
        churn(&db.pool, &orgs, &mut rng, round, 40).await;
        assert_counts_agree(&db.pool, &orgs, &format!("round {round}, before the fold")).await;
        let folded = status_counts::compact(&db.pool).await.expect("fold");
        assert!(folded > 0, "round {round} logged changes to fold");
        assert_counts_agree(&db.pool, &orgs, &format!("round {round}, after the fold")).await;
    }
    // Folded away: the log is empty, and what is left is by the second only for the last minutes.
    assert_eq!(status_counts::compact(&db.pool).await.expect("fold"), 0);
    let (logged, old_seconds): (i64, i64) = sqlx::query_as(
        "select (select count(*) from status_changes),
                (select count(*) from status_counts
                 where span = 1 and at < date_trunc('minute', now() - interval '1 minute'))",
    )
    .fetch_one(&db.pool)
    .await
    .expect("tables");
    assert_eq!((logged, old_seconds), (0, 0));
    // Nothing older than a day is kept, and nothing cancelled out is written.
    let (stale, zero): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where at < now() - interval '25 hours'), count(*) filter (where n = 0)
         from status_counts",
    )
    .fetch_one(&db.pool)
    .await
    .expect("counts");
    assert_eq!(stale, 0);
    assert!(zero < 50, "{zero} rows counting nothing");
    // Counted again from the rows, the same figures.
    churn(&db.pool, &orgs, &mut rng, 6, 20).await;
    status_counts::recount(&db.pool).await.expect("recount");
    assert_counts_agree(&db.pool, &orgs, "recounted").await;
    let logged: i64 = sqlx::query_scalar("select count(*) from status_changes")
        .fetch_one(&db.pool)
        .await
        .expect("log");
    assert_eq!(logged, 0, "the recount leaves nothing to fold");
}

#[tokio::test]
async fn seconds_that_age_are_folded_into_their_minute_and_still_count_for_the_hour_and_day() {
    let db = TestDb::new().await;
    let orgs = orgs(&db.pool, 2).await;
    sqlx::query(
        "insert into receipts (org_id, event_id, event_type, status, payload, received_at)
         select o, 'ev-' || i, 'ReceiptCreated', 'processed', '{}', now()
         from unnest($1::bigint[]) as o, generate_series(1, 3) as i",
    )
    .bind(&orgs)
    .execute(&db.pool)
    .await
    .expect("receipts");
    status_counts::compact(&db.pool).await.expect("fold");
    let spans = |hours: bool| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_as::<_, (Option<i64>, i32, i64)>(
                "select org_id, span, n from status_counts
                 where kind = 'receipts' and (span = 3600) = $1 order by org_id nulls last",
            )
            .bind(hours)
            .fetch_all(&pool)
            .await
            .expect("counts")
        }
    };
    assert_eq!(
        spans(false).await,
        vec![(Some(orgs[0]), 1, 3), (Some(orgs[1]), 1, 3), (None, 1, 6)],
        "by the second while recent, each organization and all of them"
    );
    let by_hour = vec![
        (Some(orgs[0]), 3600, 3),
        (Some(orgs[1]), 3600, 3),
        (None, 3600, 6),
    ];
    assert_eq!(spans(true).await, by_hour, "and by the hour besides");
    // Three minutes later (as far as the fold knows): the seconds are one minute each.
    let later = Utc::now() + TimeDelta::minutes(3);
    status_counts::compact_as_of(&db.pool, later)
        .await
        .expect("fold");
    assert_eq!(
        spans(false).await,
        vec![
            (Some(orgs[0]), 60, 3),
            (Some(orgs[1]), 60, 3),
            (None, 60, 6)
        ]
    );
    assert_eq!(spans(true).await, by_hour, "the hours as they were");
    for org in [Some(orgs[0]), None] {
        let counts = status_counts::count(&db.pool, Counted::Receipts, org, &["processed"])
            .await
            .expect("counts");
        let expected = if org.is_some() { 3 } else { 6 };
        assert_eq!(
            (counts[0].last_hour, counts[0].last_day),
            (expected, expected)
        );
    }
    // A change to those rows now takes them out of that minute, through the log.
    sqlx::query("update receipts set status = 'dead' where org_id = $1 and event_id = 'ev-1'")
        .bind(orgs[0])
        .execute(&db.pool)
        .await
        .expect("update");
    status_counts::compact_as_of(&db.pool, later)
        .await
        .expect("fold");
    let counts = status_counts::count(&db.pool, Counted::Receipts, None, &["processed", "dead"])
        .await
        .expect("counts");
    assert_eq!(
        counts
            .iter()
            .map(|c| (c.status.as_str(), c.last_day))
            .collect::<Vec<_>>(),
        vec![("processed", 5), ("dead", 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writers_racing_folds_are_each_counted_once() {
    let db = TestDb::new().await;
    // A writer per organization: the race is with the folds, not between writers.
    let orgs = orgs(&db.pool, 4).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Two folds at once: one folds, the other steps aside (and sometimes both find work).
    let folds: Vec<_> = (0..2)
        .map(|_| {
            let (pool, stop) = (db.pool.clone(), stop.clone());
            tokio::spawn(async move {
                let mut folded = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    folded += status_counts::compact(&pool).await.expect("fold");
                }
                folded
            })
        })
        .collect();
    let writers: Vec<_> = (0..4u64)
        .map(|seed| {
            let (pool, org) = (db.pool.clone(), orgs[seed as usize]);
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(seed);
                churn(&pool, &[org], &mut rng, seed as usize, 60).await;
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut folded = 0;
    for fold in folds {
        folded += fold.await.expect("fold");
    }
    assert!(folded > 0, "the folds ran while the writers wrote");
    assert_counts_agree(&db.pool, &orgs, "after the race").await;
    status_counts::compact(&db.pool).await.expect("fold");
    assert_counts_agree(&db.pool, &orgs, "after the last fold").await;
}

#[test]
fn the_recount_takes_the_lock_the_fold_takes() {
    let migration = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../migrations/20261205000001_status_counts.sql"
    ));
    assert!(
        migration.contains(&format!(
            "pg_advisory_xact_lock({})",
            status_counts::FOLD_LOCK
        )),
        "recount_status_counts() must take loyalty::status_counts::FOLD_LOCK"
    );
}
