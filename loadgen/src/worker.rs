//! The consuming side: the real `workers::Worker` in-process, and what the receipts table says about
//! it (how fast receipts reach `processed`, and how long after ingest accepted them).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loyalty::queue::Broker;
use sqlx::PgPool;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::http::Throughput;

/// How often the receipts table is polled.
const POLL: Duration = Duration::from_millis(100);
/// How long the counts may stay unchanged before the run is given up.
const STALL: Duration = Duration::from_secs(60);

/// A worker consuming the run's receipts queue.
pub struct Running {
    pub started: Instant,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub fn start(db: PgPool, broker: Arc<Broker>, concurrency: u16, batch: u16) -> Self {
        // As the workers binary does: the status counts folded every second beside the work.
        let folding = tokio::spawn(loyalty::status_counts::compact_every(
            db.clone(),
            Duration::from_secs(1),
        ));
        let worker = workers::Worker::new(db, broker);
        let (stop, stopped) = oneshot::channel::<()>();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let consumed = worker
                .run(concurrency, batch, async {
                    let _ = stopped.await;
                })
                .await;
            folding.abort();
            consumed
        });
        Self {
            started,
            stop,
            task,
        }
    }

    /// Stops consuming and waits (up to `grace`) for in-flight receipts to be acknowledged.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        match tokio::time::timeout(grace, self.task).await {
            Ok(joined) => joined.context("the worker panicked")?,
            Err(_) => bail!("the worker did not stop within {grace:?}"),
        }
    }
}

#[derive(sqlx::FromRow)]
struct Counts {
    processed: i64,
    /// Final states other than `processed`: such a receipt will never be processed.
    other_final: i64,
    retrying: i64,
}

/// Waits until `expected` receipts whose event id is `like` the pattern are `processed`; the
/// throughput is counted from `since`. Fails if one ends otherwise or nothing moves for a minute.
pub async fn wait_processed(
    db: &PgPool,
    org: i64,
    like: &str,
    expected: usize,
    since: Instant,
) -> anyhow::Result<Throughput> {
    let expected_rows = i64::try_from(expected)?;
    let mut last = (-1, -1, -1);
    let mut moved = Instant::now();
    loop {
        let counts: Counts = sqlx::query_as(
            "select count(*) filter (where status = 'processed') as processed,
                    count(*) filter (where status in ('duplicate', 'unmatched', 'ignored', 'dead')) as other_final,
                    count(*) filter (where status = 'retrying') as retrying
             from receipts where org_id = $1 and event_id like $2",
        )
        .bind(org)
        .bind(like)
        .fetch_one(db)
        .await?;
        if counts.processed >= expected_rows {
            return Ok(Throughput {
                count: expected,
                elapsed: since.elapsed(),
            });
        }
        if counts.other_final > 0 {
            bail!(
                "{} receipts ({like}) ended other than processed: {}",
                counts.other_final,
                breakdown(db, org, like).await?
            );
        }
        let now = (counts.processed, counts.other_final, counts.retrying);
        if now != last {
            last = now;
            moved = Instant::now();
        } else if moved.elapsed() > STALL {
            bail!(
                "no progress for {STALL:?}: {} of {expected} receipts ({like}) processed; {}",
                counts.processed,
                breakdown(db, org, like).await?
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Receipts a second between the first and the last `processed_at` of the pattern: the steady
/// rate, without the worker's start (connecting, declaring queues) and the polling granularity.
pub async fn steady_rate(db: &PgPool, org: i64, like: &str) -> anyhow::Result<Option<f64>> {
    let (count, span): (i64, Option<f64>) = sqlx::query_as(
        "select count(*), extract(epoch from max(processed_at) - min(processed_at))::float8
         from receipts where org_id = $1 and event_id like $2 and status = 'processed'",
    )
    .bind(org)
    .bind(like)
    .fetch_one(db)
    .await?;
    Ok(span.filter(|s| *s > 0.0).map(|s| (count - 1) as f64 / s))
}

/// Receipts by status, with a sample error, for a failure message.
async fn breakdown(db: &PgPool, org: i64, like: &str) -> anyhow::Result<String> {
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "select status, count(*), max(coalesce(last_error, reason))
         from receipts where org_id = $1 and event_id like $2 group by status order by status",
    )
    .bind(org)
    .bind(like)
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|(status, n, why)| match why {
            Some(why) => format!("{status}: {n} (e.g. {why})"),
            None => format!("{status}: {n}"),
        })
        .collect::<Vec<_>>()
        .join(", "))
}

/// Percentiles of the time from ingest's acceptance (`received_at`) to the worker's commit.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Where the end time comes from: the commit itself when the server tracks commit timestamps,
    /// else `processed_at`, the clock at the worker's last statement before its commit.
    pub end: &'static str,
}

pub async fn commit_latency(db: &PgPool, org: i64, like: &str) -> anyhow::Result<Latency> {
    let tracked: String = sqlx::query_scalar("select current_setting('track_commit_timestamp')")
        .fetch_one(db)
        .await?;
    let (end, column) = if tracked == "on" {
        ("commit timestamp", "pg_xact_commit_timestamp(xmin)")
    } else {
        ("processed_at (just before commit)", "processed_at")
    };
    let (p50, p99, max): (Option<f64>, Option<f64>, Option<f64>) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "with l as (
             select extract(epoch from {column} - received_at)::float8 * 1000 as ms
             from receipts where org_id = $1 and event_id like $2 and status = 'processed')
         select percentile_cont(0.5) within group (order by ms),
                percentile_cont(0.99) within group (order by ms),
                max(ms)
         from l"
        )))
        .bind(org)
        .bind(like)
        .fetch_one(db)
        .await?;
    match (p50, p99, max) {
        (Some(p50_ms), Some(p99_ms), Some(max_ms)) => Ok(Latency {
            p50_ms,
            p99_ms,
            max_ms,
            end,
        }),
        _ => bail!("no processed receipts ({like}) to measure"),
    }
}
