//! `workers`: consume receipts and apply them to the ledger, one PostgreSQL transaction per
//! batch, acknowledging only after commit. The worker is a step of the queue's consumer, which
//! retries a failure through the delay queues with exponential backoff and after `MAX_ATTEMPTS`
//! puts the message in the dead-letter queue with its error.
//! A batch is never hostage to one message: when it fails or panics, each of its receipts is
//! applied on its own, and only the one at fault goes its retry or dead-letter path.

pub mod schedule;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::FutureExt;
use lapin::BasicProperties;
use loyalty::queue::{self, Broker, Consumer, Failure, Settings, Step, Stream, Verdict};
use loyalty::receipts::{self, Outcome, ReceiptMessage};
use sqlx::PgPool;
use tracing::{Instrument, Span};

/// Batches applied at once, by default.
pub const DEFAULT_CONCURRENCY: u16 = 4;
/// Most receipts in one transaction, by default.
pub const DEFAULT_BATCH: u16 = 250;
/// How many times a transaction that lost a race (a concurrent delivery of the same receipt, a
/// deadlock, a serialization failure) runs again before the batch is retried through the queue.
const RACE_RUNS: usize = 3;

/// Configuration, from the environment (see `workers --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "workers",
    about = "Applies receipts from RabbitMQ to the loyalty ledger",
    after_help = loyalty_service::telemetry::LOG_HELP
)]
pub struct Config {
    #[command(flatten)]
    pub backends: loyalty_service::config::Backends,
    /// Batches applied at once, each in its own transaction.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// Where `GET /metrics` is served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: std::net::SocketAddr,
    /// Most receipts applied in one transaction (the consumer's prefetch is concurrency × batch).
    #[arg(long, env = "WORKER_BATCH", default_value_t = DEFAULT_BATCH)]
    pub batch: u16,
    /// Seconds between runs of the scheduled steps (activation of pending bonuses, expiry,
    /// expiry warnings, birthday bonuses); 0 turns them off in this worker.
    #[arg(long, env = "SCHEDULE_INTERVAL_SECS", default_value_t = 60)]
    pub schedule_interval_secs: u64,
    /// Most rows a scheduled step changes in one transaction.
    #[arg(long, env = "SCHEDULE_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub schedule_batch: i64,
    /// Milliseconds between folds of the status change log into the operations summary's counts
    /// (`loyalty::status_counts`); 0 turns them off in this worker. Any number of workers may
    /// fold: one folds at a time, the others skip.
    #[arg(long, env = "STATUS_FOLD_INTERVAL_MS", default_value_t = 1000)]
    pub status_fold_interval_ms: u64,
}

/// PostgreSQL connections a worker needs: two per batch in flight (its transaction, and a
/// failure's record beside it), and two spare.
pub fn pool_size(concurrency: u16) -> u32 {
    u32::from(concurrency) * 2 + 2
}

/// What became of one delivery.
pub type Handled = queue::Handled<Outcome>;

/// Picks the messages the apply step panics on (see `Worker::panicking_on`).
type Poison = Arc<dyn Fn(&ReceiptMessage) -> bool + Send + Sync>;

#[derive(Clone)]
pub struct Worker {
    db: PgPool,
    broker: Arc<Broker>,
    panic_on: Option<Poison>,
}

impl Worker {
    pub fn new(db: PgPool, broker: Arc<Broker>) -> Self {
        Self {
            db,
            broker,
            panic_on: None,
        }
    }

    /// Fault injection, for tests: the apply step panics inside its transaction, as a bug in the
    /// ledger code would, whenever it is given a message for which `poison` is true. The binary
    /// never sets it.
    pub fn panicking_on(
        mut self,
        poison: impl Fn(&ReceiptMessage) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.panic_on = Some(Arc::new(poison));
        self
    }

    /// The worker as a consumer of the receipts queue: `concurrency` batches of up to `batch`
    /// receipts at once.
    pub fn consumer(&self, concurrency: u16, batch: u16) -> Consumer<Worker> {
        Consumer::new(
            self.broker.clone(),
            self.clone(),
            Settings { concurrency, batch },
        )
    }

    /// Consumes until `shutdown` resolves; in-flight batches finish and are acknowledged before
    /// it returns.
    pub async fn run(
        &self,
        concurrency: u16,
        batch: u16,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        self.consumer(concurrency, batch).run(shutdown).await
    }

    /// Applies the messages; a panic is caught here and is a permanent failure of these messages
    /// (their transaction rolls back as it unwinds), never of the worker.
    async fn apply(&self, messages: &[ReceiptMessage]) -> Result<Vec<Outcome>, Verdict<Outcome>> {
        match AssertUnwindSafe(self.apply_once(messages))
            .catch_unwind()
            .await
        {
            Ok(applied) => applied,
            Err(panic) => {
                let text = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown".into());
                Err(Verdict::permanent(format!("panic: {text}")))
            }
        }
    }

    /// One transaction for the messages; a race with a concurrent delivery of the same receipt is
    /// settled by running again, when the other has committed and this one is a plain duplicate,
    /// and so is a deadlock or serialization failure (SQLSTATE 40P01, 40001).
    async fn apply_once(
        &self,
        messages: &[ReceiptMessage],
    ) -> Result<Vec<Outcome>, Verdict<Outcome>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for _ in 0..RACE_RUNS {
            let mut tx = self
                .db
                .begin()
                .await
                .map_err(|e| Verdict::transient(format!("database: {e}")))?;
            if let Some(poison) = &self.panic_on {
                if let Some(m) = messages.iter().find(|m| poison(m)) {
                    panic!("injected fault applying {}", m.event_id());
                }
            }
            match receipts::apply_batch(&mut tx, messages).await {
                Ok(outcomes) => {
                    tx.commit()
                        .await
                        .map_err(|e| Verdict::transient(format!("database commit: {e}")))?;
                    return Ok(outcomes);
                }
                // A lost race (a concurrent delivery, a deadlock broken by PostgreSQL): run again.
                Err(err) if err.is_transient() => continue,
                // PostgreSQL refused a value of the receipt itself (data exception): no retry helps.
                Err(loyalty::Error::Db(sqlx::Error::Database(e)))
                    if e.code().is_some_and(|c| c.starts_with("22")) =>
                {
                    return Err(Verdict::permanent(format!("database refused it: {e}")));
                }
                Err(loyalty::Error::Db(e)) => {
                    return Err(Verdict::transient(format!("database: {e}")));
                }
                Err(other) => return Err(Verdict::permanent(other.to_string())),
            }
        }
        Err(Verdict::transient(
            "the same receipt kept racing with another delivery",
        ))
    }
}

impl Step for Worker {
    type Message = ReceiptMessage;
    type Done = Outcome;
    const STREAM: Stream = Stream::Receipts;
    const NAME: &'static str = "workers";

    fn decode(&self, body: &[u8]) -> Result<ReceiptMessage, String> {
        serde_json::from_slice::<ReceiptMessage>(body)
            .map_err(|err| format!("not a receipt message: {err}"))
    }

    /// One transaction applies them all; if it fails, each is applied on its own, so one bad
    /// receipt costs its batch only a retry.
    async fn process(&self, messages: &[ReceiptMessage], spans: &[Span]) -> Vec<Verdict<Outcome>> {
        match self.apply(messages).await {
            Ok(outcomes) => messages
                .iter()
                .zip(spans)
                .zip(outcomes)
                .map(|((message, span), outcome)| applied(message, span, outcome))
                .collect(),
            Err(failure) if messages.len() == 1 => vec![failure],
            Err(_) => {
                let mut verdicts = Vec::with_capacity(messages.len());
                for (message, span) in messages.iter().zip(spans) {
                    let alone = self
                        .apply(std::slice::from_ref(message))
                        .instrument(span.clone())
                        .await;
                    verdicts.push(match alone {
                        Ok(mut outcome) if !outcome.is_empty() => {
                            applied(message, span, outcome.remove(0))
                        }
                        Ok(_) => Verdict::transient("the receipt gave no outcome"),
                        Err(failure) => failure,
                    });
                }
                verdicts
            }
        }
    }

    /// Operators see the attempt; if the database is what failed, the queues still hold the truth.
    async fn failed(&self, message: &ReceiptMessage, failure: &Failure) {
        let recorded = match self.db.acquire().await {
            Ok(mut conn) => receipts::record_failure(
                &mut conn,
                message,
                failure.attempt,
                &failure.error,
                failure.dead,
            )
            .await
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = recorded {
            tracing::error!(error = %why, "failed receipt not recorded");
        }
    }

    /// A message that is not a receipt message at all gets a row built from its headers, so
    /// operators see it beside the others.
    async fn unreadable(&self, body: &[u8], properties: &BasicProperties, failure: &Failure) {
        let org = queue::contract::org_of(properties);
        let message_id = queue::contract::message_id_of(properties);
        let recorded = match (org, self.db.acquire().await) {
            (Some(org), Ok(mut conn)) => receipts::record_unreadable(
                &mut conn,
                org,
                message_id.as_deref(),
                body,
                failure.attempt,
                &failure.error,
            )
            .await
            .map_err(|e| e.to_string()),
            (None, _) => Err("the message names no organization".into()),
            (_, Err(e)) => Err(e.to_string()),
        };
        if let Err(why) = recorded {
            tracing::error!(error = %why, "dead receipt message not recorded");
        }
    }
}

/// A receipt applied: its one info line, its counters.
fn applied(message: &ReceiptMessage, span: &Span, outcome: Outcome) -> Verdict<Outcome> {
    span.in_scope(|| tracing::info!(status = outcome.status(), "receipt applied"));
    metrics::counter!("loyalty_receipts_total", "status" => outcome.status()).increment(1);
    let waited = chrono::Utc::now().signed_duration_since(message.received_at);
    metrics::histogram!("loyalty_receipt_end_to_end_seconds").record(waited.as_seconds_f64());
    Verdict::Done(outcome)
}

/// Connects, migrates, declares the topology and consumes until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // One more connection for the scheduled steps, one for the status fold.
    let db = config
        .backends
        .database(pool_size(config.concurrency) + 2)
        .await?;
    let broker = Arc::new(config.backends.broker());
    tokio::spawn(loyalty_service::telemetry::serve_metrics(
        config.metrics_addr,
    ));
    let scheduled = (config.schedule_interval_secs > 0).then(|| {
        tokio::spawn(schedule::every(
            db.clone(),
            std::time::Duration::from_secs(config.schedule_interval_secs),
            config.schedule_batch,
        ))
    });
    let folding = (config.status_fold_interval_ms > 0).then(|| {
        tokio::spawn(loyalty::status_counts::compact_every(
            db.clone(),
            std::time::Duration::from_millis(config.status_fold_interval_ms),
        ))
    });
    let consumed = Worker::new(db, broker)
        .run(
            config.concurrency,
            config.batch,
            loyalty_service::shutdown::signal(),
        )
        .await;
    for task in [scheduled, folding].into_iter().flatten() {
        task.abort();
    }
    consumed
}
