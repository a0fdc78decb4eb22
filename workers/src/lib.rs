//! `workers`: consume receipts and apply them to the ledger, one PostgreSQL transaction per
//! receipt, acknowledging only after commit. A failure is retried through the delay queues with
//! exponential backoff; after `MAX_ATTEMPTS` the message goes to the dead-letter queue with its error.
//! A batch is never hostage to one message: when it fails or panics, each of its receipts is
//! applied on its own, and only the one at fault goes its retry or dead-letter path.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, message::Delivery};
use loyalty::queue::{self, Broker, MAX_ATTEMPTS, PublishError, Stream, headers};
use loyalty::receipts::{self, Outcome, ReceiptMessage};
use sqlx::PgPool;
use tokio::sync::Semaphore;

/// Configuration, from the environment (see `workers --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "workers",
    about = "Applies receipts from RabbitMQ to the loyalty ledger"
)]
pub struct Config {
    #[command(flatten)]
    pub backends: loyalty_service::config::Backends,
    /// Batches applied at once, each in its own transaction.
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 4)]
    pub concurrency: u16,
    /// Where `GET /metrics` is served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9100")]
    pub metrics_addr: std::net::SocketAddr,
    /// Most receipts applied in one transaction (the consumer's prefetch is concurrency × batch).
    #[arg(long, env = "WORKER_BATCH", default_value_t = 250)]
    pub batch: u16,
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Applied(Outcome),
    /// Failed; scheduled for another attempt.
    Retrying {
        attempt: u32,
        error: String,
    },
    /// Failed for the last time, or can never succeed; in the dead-letter queue.
    Dead {
        error: String,
    },
}

/// Why a failure is or is not worth retrying.
enum Failure {
    Transient(String),
    Permanent(String),
}

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

    /// Handles one message: applies it, or passes it on to a retry or dead-letter queue.
    /// Returns an error only when the message could not be passed on; it must then not be acked.
    pub async fn process(
        &self,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<Handled, PublishError> {
        let mut handled = self.process_batch(&[(body, properties)]).await;
        handled.pop().unwrap_or(Err(PublishError::Nacked))
    }

    /// Handles messages together: one transaction applies them all; if it fails, each is applied
    /// on its own, so one bad receipt costs its batch only a retry. Results are in order.
    pub async fn process_batch(
        &self,
        batch: &[(&[u8], &BasicProperties)],
    ) -> Vec<Result<Handled, PublishError>> {
        let mut results: Vec<Option<Result<Handled, PublishError>>> =
            Vec::with_capacity(batch.len());
        let mut decoded = Vec::new();
        let mut positions = Vec::new();
        for (i, (body, properties)) in batch.iter().enumerate() {
            match serde_json::from_slice::<ReceiptMessage>(body) {
                Ok(message) => {
                    decoded.push(message);
                    positions.push(i);
                    results.push(None);
                }
                Err(err) => {
                    let error = format!("not a receipt message: {err}");
                    results.push(Some(self.unreadable(body, properties, error).await));
                }
            }
        }
        match self.apply(&decoded).await {
            Ok(outcomes) => {
                for ((message, outcome), i) in decoded.iter().zip(outcomes).zip(&positions) {
                    tracing::info!(org = message.org_id, event = %event_id(message), status = outcome.status(), "receipt applied");
                    metrics::counter!("loyalty_receipts_total", "status" => outcome.status())
                        .increment(1);
                    let waited = chrono::Utc::now().signed_duration_since(message.received_at);
                    metrics::histogram!("loyalty_receipt_end_to_end_seconds")
                        .record(waited.as_seconds_f64());
                    results[*i] = Some(Ok(Handled::Applied(outcome)));
                }
            }
            Err(failure) if decoded.len() == 1 => {
                let (body, properties) = batch[positions[0]];
                results[positions[0]] =
                    Some(self.fail(&decoded[0], body, properties, failure).await);
            }
            Err(_) => {
                for (message, &i) in decoded.iter().zip(&positions) {
                    let (body, properties) = batch[i];
                    results[i] = Some(match self.apply(std::slice::from_ref(message)).await {
                        Ok(mut outcome) => Ok(Handled::Applied(outcome.remove(0))),
                        Err(failure) => self.fail(message, body, properties, failure).await,
                    });
                }
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PublishError::Nacked)))
            .collect()
    }

    /// A message that is not a receipt message at all can never apply: dead at once, with a row
    /// built from its headers so operators see it beside the others.
    async fn unreadable(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        error: String,
    ) -> Result<Handled, PublishError> {
        let attempt = queue::attempt_of(properties);
        let org = queue::header(properties, headers::ORG).and_then(|o| o.parse::<i64>().ok());
        let message_id = properties.message_id().as_ref().map(|id| id.as_str());
        tracing::error!(org, event = message_id.unwrap_or(""), attempt, error = %error, "unreadable receipt message is dead");
        self.pass_on(body, properties, attempt, &error, true)
            .await?;
        metrics::counter!("loyalty_receipts_dead_total").increment(1);
        let recorded = match (org, self.db.acquire().await) {
            (Some(org), Ok(mut conn)) => {
                receipts::record_unreadable(&mut conn, org, message_id, body, attempt, &error)
                    .await
                    .map_err(|e| e.to_string())
            }
            (None, _) => Err("the message names no organization".into()),
            (_, Err(e)) => Err(e.to_string()),
        };
        if let Err(why) = recorded {
            tracing::error!(org, event = message_id.unwrap_or(""), error = %why, "dead receipt message not recorded");
        }
        Ok(Handled::Dead { error })
    }

    /// Passes a failed receipt on to its next attempt, or to the dead letters.
    async fn fail(
        &self,
        message: &ReceiptMessage,
        body: &[u8],
        properties: &BasicProperties,
        failure: Failure,
    ) -> Result<Handled, PublishError> {
        let attempt = queue::attempt_of(properties);
        let (error, dead) = match failure {
            Failure::Permanent(e) => (e, true),
            Failure::Transient(e) => (e, attempt >= MAX_ATTEMPTS),
        };
        if dead {
            tracing::error!(org = message.org_id, event = %event_id(message), attempt, error = %error, "receipt is dead");
        } else {
            tracing::warn!(org = message.org_id, event = %event_id(message), attempt, error = %error, "receipt failed; retrying");
        }
        self.pass_on(body, properties, attempt, &error, dead)
            .await?;
        metrics::counter!("loyalty_receipts_failed_total").increment(1);
        metrics::counter!(if dead {
            "loyalty_receipts_dead_total"
        } else {
            "loyalty_receipt_retries_total"
        })
        .increment(1);
        // Operators see the attempt; if the database is what failed, the queues still hold the truth.
        let recorded = match self.db.acquire().await {
            Ok(mut conn) => receipts::record_failure(&mut conn, message, attempt, &error, dead)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(why) = recorded {
            tracing::error!(org = message.org_id, event = %event_id(message), error = %why, "failed receipt not recorded");
        }
        Ok(if dead {
            Handled::Dead { error }
        } else {
            Handled::Retrying {
                attempt: attempt + 1,
                error,
            }
        })
    }

    /// Applies the messages; a panic is caught here and is a permanent failure of these messages
    /// (their transaction rolls back as it unwinds), never of the worker.
    async fn apply(&self, messages: &[ReceiptMessage]) -> Result<Vec<Outcome>, Failure> {
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
                Err(Failure::Permanent(format!("panic: {text}")))
            }
        }
    }

    /// One transaction for the messages; a race with a concurrent delivery of the same receipt is
    /// settled by running again, when the other has committed and this one is a plain duplicate,
    /// and so is a deadlock or serialization failure (SQLSTATE 40P01, 40001).
    async fn apply_once(&self, messages: &[ReceiptMessage]) -> Result<Vec<Outcome>, Failure> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        for _ in 0..3 {
            let mut tx = self
                .db
                .begin()
                .await
                .map_err(|e| Failure::Transient(format!("database: {e}")))?;
            if let Some(poison) = &self.panic_on {
                if let Some(m) = messages.iter().find(|m| poison(m)) {
                    panic!("injected fault applying {}", event_id(m));
                }
            }
            match receipts::apply_batch(&mut tx, messages).await {
                Ok(outcomes) => {
                    tx.commit()
                        .await
                        .map_err(|e| Failure::Transient(format!("database commit: {e}")))?;
                    return Ok(outcomes);
                }
                // A lost race (a concurrent delivery, a deadlock broken by PostgreSQL): run again.
                Err(err) if err.is_transient() => continue,
                // PostgreSQL refused a value of the receipt itself (data exception): no retry helps.
                Err(loyalty::Error::Db(sqlx::Error::Database(e)))
                    if e.code().is_some_and(|c| c.starts_with("22")) =>
                {
                    return Err(Failure::Permanent(format!("database refused it: {e}")));
                }
                Err(loyalty::Error::Db(e)) => {
                    return Err(Failure::Transient(format!("database: {e}")));
                }
                Err(other) => return Err(Failure::Permanent(other.to_string())),
            }
        }
        Err(Failure::Transient(
            "the same receipt kept racing with another delivery".into(),
        ))
    }

    async fn pass_on(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        error: &str,
        dead: bool,
    ) -> Result<(), PublishError> {
        self.broker
            .pass_on(Stream::Receipts, body, properties, attempt, error, dead)
            .await
    }

    /// Consumes until `shutdown` resolves, reconnecting after the broker goes away. Up to
    /// `concurrency` batches of up to `batch` receipts are applied at once; in-flight batches finish
    /// and are acknowledged before it returns.
    pub async fn run(
        &self,
        concurrency: u16,
        batch: u16,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let (concurrency, batch) = (concurrency.max(1), batch.max(1));
        let permits = Arc::new(Semaphore::new(usize::from(concurrency)));
        loop {
            let connect = || self.broker.connect();
            let conn = tokio::select! {
                conn = connect.retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(10)).without_max_times().with_jitter())
                    .notify(|err, wait| tracing::warn!(error = %err, ?wait, "RabbitMQ not reachable; retrying")) => conn?,
                () = &mut shutdown => break,
            };
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(
                    concurrency.saturating_mul(batch),
                    BasicQosOptions::default(),
                )
                .await?;
            let tag = ShortString::from(format!("workers-{}", std::process::id()));
            let mut consumer = channel
                .basic_consume(
                    self.broker
                        .topology()
                        .main(Stream::Receipts)
                        .as_str()
                        .into(),
                    tag.clone(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tracing::info!(concurrency, batch, "consuming receipts");
            loop {
                let next = tokio::select! {
                    next = consumer.next() => next,
                    () = &mut shutdown => {
                        let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                        // Wait for in-flight batches to commit and be acked.
                        let _ = permits.acquire_many(u32::from(concurrency)).await;
                        let _ = conn.close(200, "shutdown".into()).await;
                        return Ok(());
                    }
                };
                let first = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "consumer lost its connection; reconnecting");
                        break;
                    }
                    None => break,
                };
                // Whatever else has already arrived joins the batch; nothing waits for more.
                let mut deliveries = vec![first];
                while deliveries.len() < usize::from(batch) {
                    match consumer.next().now_or_never() {
                        Some(Some(Ok(delivery))) => deliveries.push(delivery),
                        _ => break,
                    }
                }
                let permit = permits.clone().acquire_owned().await?;
                let worker = self.clone();
                tokio::spawn(async move {
                    worker.handle(deliveries).await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    async fn handle(&self, deliveries: Vec<Delivery>) {
        let batch: Vec<(&[u8], &BasicProperties)> = deliveries
            .iter()
            .map(|d| (d.data.as_slice(), &d.properties))
            .collect();
        let results = self.process_batch(&batch).await;
        for (delivery, result) in deliveries.iter().zip(results) {
            match result {
                Ok(_) => {
                    if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
                        // Not acked: the broker redelivers it, and the redelivery is a duplicate.
                        tracing::warn!(error = %err, "ack failed");
                    }
                }
                // Not passed on: left unacked, the broker delivers it again.
                Err(err) => {
                    tracing::warn!(error = %err, "could not pass a failed receipt on; it will be redelivered")
                }
            }
        }
    }
}

fn event_id(message: &ReceiptMessage) -> &str {
    message
        .event
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or("")
}

/// Connects, migrates, declares the topology and consumes until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let db = config
        .backends
        .database(u32::from(config.concurrency) * 2 + 2)
        .await?;
    let broker = Arc::new(config.backends.broker());
    tokio::spawn(loyalty_service::telemetry::serve_metrics(
        config.metrics_addr,
    ));
    Worker::new(db, broker)
        .run(
            config.concurrency,
            config.batch,
            loyalty_service::shutdown::signal(),
        )
        .await
}
