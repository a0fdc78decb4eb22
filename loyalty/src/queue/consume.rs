//! The one consumer every service runs, and the one retry-or-dead decision. A service says what a
//! message is and what to do with a batch of them (a [`Step`]); the [`Consumer`] does the rest:
//! connect (and reconnect), prefetch, take what has arrived as a batch, open each message's log
//! span from its trace header, pass failures on to their retry queue or the dead letters, count
//! them, acknowledge, and on shutdown finish and acknowledge what it holds.
//!
//! Tests drive the same code step by step: [`Consumer::process_batch`] and
//! [`Consumer::run_until_empty`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Semaphore;
use tracing::{Instrument, Span};

use super::contract;
use super::inspect::take;
use super::publish::{Broker, PublishError};
use super::topology::{MAX_ATTEMPTS, Stream, retry_delay};

/// The longest wait between two attempts to reach the broker.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(10);

/// What a service does with the messages of its stream.
pub trait Step: Send + Sync + 'static {
    /// A message as the step reads it.
    type Message: Send + Sync;
    /// What became of a message the step handled (applied, sent, a duplicate…).
    type Done: std::fmt::Debug + Send + Sync;
    /// The stream it consumes.
    const STREAM: Stream;
    /// Names its consumers on the broker (`<name>-<pid>`).
    const NAME: &'static str;

    /// Reads a message's body; a message that cannot be read goes to the dead letters at once.
    fn decode(&self, body: &[u8]) -> Result<Self::Message, String>;

    /// Handles the messages, each of which has its log span in `spans`; returns one verdict per
    /// message, in order.
    fn process(
        &self,
        messages: &[Self::Message],
        spans: &[Span],
    ) -> impl Future<Output = Vec<Verdict<Self::Done>>> + Send;

    /// A failed message was passed on (to its retry queue, or to the dead letters when
    /// `failure.dead`): records it for operators. Runs in the message's span.
    fn failed(&self, message: &Self::Message, failure: &Failure)
    -> impl Future<Output = ()> + Send;

    /// A message that could not be read was passed to the dead letters: records it for
    /// operators. Runs in the message's span.
    fn unreadable(
        &self,
        _body: &[u8],
        _properties: &BasicProperties,
        _failure: &Failure,
    ) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// A step's verdict on one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<T> {
    Done(T),
    /// Not done: tried again later, unless `permanent` (no retry can help) or out of attempts.
    Failed {
        error: String,
        permanent: bool,
    },
}

impl<T> Verdict<T> {
    pub fn transient(error: impl Into<String>) -> Self {
        Verdict::Failed {
            error: error.into(),
            permanent: false,
        }
    }

    pub fn permanent(error: impl Into<String>) -> Self {
        Verdict::Failed {
            error: error.into(),
            permanent: true,
        }
    }
}

/// A failed attempt, as it was decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The attempt that failed (1 for the first delivery).
    pub attempt: u32,
    pub error: String,
    /// Whether the message went to the dead letters (else to its next attempt).
    pub dead: bool,
}

impl Failure {
    /// The one retry-or-dead decision: a message goes to the dead letters when no retry can help
    /// or it has had its `MAX_ATTEMPTS`.
    pub fn decide(attempt: u32, error: String, permanent: bool) -> Self {
        Failure {
            attempt,
            error,
            dead: permanent || attempt >= MAX_ATTEMPTS,
        }
    }
}

/// What became of one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled<T> {
    Done(T),
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

/// How much a consumer takes at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Batches processed at once.
    pub concurrency: u16,
    /// Most messages in one batch (the prefetch is concurrency × batch).
    pub batch: u16,
}

/// A step consuming its stream.
pub struct Consumer<S> {
    broker: Arc<Broker>,
    step: Arc<S>,
    settings: Settings,
}

impl<S> Clone for Consumer<S> {
    fn clone(&self) -> Self {
        Self {
            broker: self.broker.clone(),
            step: self.step.clone(),
            settings: self.settings,
        }
    }
}

impl<S: Step> Consumer<S> {
    pub fn new(broker: Arc<Broker>, step: S, settings: Settings) -> Self {
        Self {
            broker,
            step: Arc::new(step),
            settings: Settings {
                concurrency: settings.concurrency.max(1),
                batch: settings.batch.max(1),
            },
        }
    }

    pub fn step(&self) -> &S {
        &self.step
    }

    /// Handles one message; see [`Consumer::process_batch`].
    pub async fn process_one(
        &self,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<Handled<S::Done>, PublishError> {
        let mut handled = self.process_batch(&[(body, properties)]).await;
        handled.pop().unwrap_or(Err(PublishError::Nacked))
    }

    /// Handles messages together, each in its own log span: decodes them, lets the step process
    /// those it could read, and passes every failure on. Results are in order; an error means the
    /// message could not be passed on and must not be acknowledged (the broker delivers it again).
    pub async fn process_batch(
        &self,
        batch: &[(&[u8], &BasicProperties)],
    ) -> Vec<Result<Handled<S::Done>, PublishError>> {
        let mut results: Vec<Option<Result<Handled<S::Done>, PublishError>>> =
            batch.iter().map(|_| None).collect();
        let (mut messages, mut spans, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (body, properties)) in batch.iter().enumerate() {
            let span = span_of(S::STREAM, properties);
            match self.step.decode(body) {
                Ok(message) => {
                    messages.push(message);
                    spans.push(span);
                    positions.push(i);
                }
                Err(error) => {
                    let dead = self.unreadable(body, properties, error);
                    results[i] = Some(dead.instrument(span).await);
                }
            }
        }
        let verdicts = self.step.process(&messages, &spans).await;
        for (((message, span), &i), verdict) in
            messages.iter().zip(&spans).zip(&positions).zip(verdicts)
        {
            let (body, properties) = batch[i];
            results[i] = Some(match verdict {
                Verdict::Done(done) => Ok(Handled::Done(done)),
                Verdict::Failed { error, permanent } => {
                    let failure =
                        Failure::decide(contract::attempt_of(properties), error, permanent);
                    self.fail(message, body, properties, failure)
                        .instrument(span.clone())
                        .await
                }
            });
        }
        // A message the step gave no verdict for stays unacknowledged: the broker delivers it again.
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(PublishError::Nacked)))
            .collect()
    }

    /// A message that cannot be read can never be processed: dead at once.
    async fn unreadable(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        error: String,
    ) -> Result<Handled<S::Done>, PublishError> {
        let failure = Failure::decide(contract::attempt_of(properties), error, true);
        tracing::error!(attempt = failure.attempt, error = %failure.error, "unreadable {} message is dead", item(S::STREAM));
        self.broker
            .pass_on(
                S::STREAM,
                body,
                properties,
                failure.attempt,
                &failure.error,
                true,
            )
            .await?;
        count_failure(S::STREAM, true, false);
        self.step.unreadable(body, properties, &failure).await;
        Ok(Handled::Dead {
            error: failure.error,
        })
    }

    /// Passes a failed message on to its next attempt, or to the dead letters.
    async fn fail(
        &self,
        message: &S::Message,
        body: &[u8],
        properties: &BasicProperties,
        failure: Failure,
    ) -> Result<Handled<S::Done>, PublishError> {
        let Failure {
            attempt,
            ref error,
            dead,
        } = failure;
        if dead {
            tracing::error!(attempt, error = %error, "{} is dead", item(S::STREAM));
        } else {
            tracing::warn!(attempt, error = %error, "{} failed; retrying", item(S::STREAM));
        }
        self.broker
            .pass_on(S::STREAM, body, properties, attempt, error, dead)
            .await?;
        count_failure(S::STREAM, dead, true);
        self.step.failed(message, &failure).await;
        Ok(if dead {
            Handled::Dead {
                error: failure.error,
            }
        } else {
            Handled::Retrying {
                attempt: attempt + 1,
                error: failure.error,
            }
        })
    }

    /// Handles deliveries and acknowledges those that were handled or passed on.
    async fn settle(
        &self,
        deliveries: Vec<Delivery>,
    ) -> Vec<Result<Handled<S::Done>, PublishError>> {
        let batch: Vec<(&[u8], &BasicProperties)> = deliveries
            .iter()
            .map(|d| (d.data.as_slice(), &d.properties))
            .collect();
        let results = self.process_batch(&batch).await;
        for (delivery, result) in deliveries.iter().zip(&results) {
            match result {
                Ok(_) => {
                    if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
                        // Not acked: the broker redelivers it, and the redelivery is a duplicate.
                        tracing::warn!(stream = S::STREAM.name(), error = %err, "ack failed; the redelivery will be a duplicate");
                    }
                }
                // Not passed on: left unacked, the broker delivers it again.
                Err(err) => {
                    tracing::warn!(stream = S::STREAM.name(), error = %err, "could not pass a failed message on; it will be redelivered")
                }
            }
        }
        results
    }

    /// Takes what the queue holds now, batch by batch, through the same code as [`Consumer::run`],
    /// until it is empty; returns what became of each message. For tests, which thus step a
    /// consumer instead of polling for its effects.
    pub async fn run_until_empty(&self) -> Result<Vec<Handled<S::Done>>, PublishError> {
        let conn = self.broker.connect().await?;
        let taken = self.take_all(&conn).await;
        close(&conn, "empty").await;
        taken
    }

    async fn take_all(&self, conn: &Connection) -> Result<Vec<Handled<S::Done>>, PublishError> {
        let channel = conn.create_channel().await?;
        let queue = self.broker.topology().main(S::STREAM);
        let mut handled = Vec::new();
        loop {
            let mut deliveries = Vec::new();
            while deliveries.len() < usize::from(self.settings.batch) {
                match take(&channel, &queue).await? {
                    Some(message) => deliveries.push(message.delivery),
                    None => break,
                }
            }
            if deliveries.is_empty() {
                return Ok(handled);
            }
            for result in self.settle(deliveries).await {
                handled.push(result?);
            }
        }
    }

    /// Consumes until `shutdown` resolves, reconnecting after the broker goes away. Up to
    /// `concurrency` batches of up to `batch` messages are processed at once; in-flight batches
    /// finish and are acknowledged before it returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let Settings { concurrency, batch } = self.settings;
        let permits = Arc::new(Semaphore::new(usize::from(concurrency)));
        loop {
            let connect = || self.broker.connect();
            let reconnect = ExponentialBuilder::default()
                .with_max_delay(RECONNECT_MAX_DELAY)
                .without_max_times()
                .with_jitter();
            let conn = tokio::select! {
                conn = connect.retry(reconnect)
                    .notify(|err, wait| tracing::warn!(error = %err, ?wait, "RabbitMQ not reachable; retrying")) => conn?,
                () = &mut shutdown => return Ok(()),
            };
            let channel = conn.create_channel().await?;
            channel
                .basic_qos(
                    concurrency.saturating_mul(batch),
                    BasicQosOptions::default(),
                )
                .await?;
            let tag = ShortString::from(format!("{}-{}", S::NAME, std::process::id()));
            let mut consumer = channel
                .basic_consume(
                    self.broker.topology().main(S::STREAM).as_str().into(),
                    tag.clone(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            tracing::info!(stream = S::STREAM.name(), concurrency, batch, "consuming");
            loop {
                let next = tokio::select! {
                    next = consumer.next() => next,
                    () = &mut shutdown => {
                        self.stop(&conn, &channel, tag, &permits).await;
                        return Ok(());
                    }
                };
                let first = match next {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(err)) => {
                        tracing::warn!(stream = S::STREAM.name(), error = %err, "consumer lost its connection; reconnecting");
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
                let this = self.clone();
                tokio::spawn(async move {
                    this.settle(deliveries).await;
                    drop(permit);
                });
            }
        }
    }

    /// Stops consuming, waits for the batches in flight to be processed and acknowledged, and
    /// closes the connection.
    async fn stop(
        &self,
        conn: &Connection,
        channel: &Channel,
        tag: ShortString,
        permits: &Semaphore,
    ) {
        if let Err(err) = channel
            .basic_cancel(tag, BasicCancelOptions::default())
            .await
        {
            // Closing the connection below ends the consumer too.
            tracing::warn!(stream = S::STREAM.name(), error = %err, "cancelling the consumer failed");
        }
        let all = u32::from(self.settings.concurrency);
        if let Err(err) = permits.acquire_many(all).await {
            tracing::warn!(stream = S::STREAM.name(), error = %err, "could not wait for the batches in flight");
        }
        close(conn, "shutdown").await;
    }
}

async fn close(conn: &Connection, why: &str) {
    if let Err(err) = conn.close(200, why.into()).await {
        // What the connection held unacknowledged goes back to its queue when the broker notices.
        tracing::warn!(error = %err, "closing a consumer connection failed");
    }
}

/// The log span of one message: its stream, organization and trace (the receipt's event id).
/// At the error level, so that a filter that keeps only warnings and errors (`RUST_LOG=warn`)
/// still writes the ids on them; a span writes no line of its own.
fn span_of(stream: Stream, properties: &BasicProperties) -> Span {
    let trace = contract::trace_of(properties).unwrap_or_default();
    let org = contract::org_of(properties);
    tracing::error_span!("message", stream = stream.name(), org, event = %trace)
}

/// What one message of a stream is called in the logs.
fn item(stream: Stream) -> &'static str {
    match stream {
        Stream::Receipts => "receipt",
        Stream::Notifications => "notification",
    }
}

/// Counts a failed message under its stream's metric names (those the dashboard and alerts read).
/// An unreadable notification is not counted as an outcome (it never named one).
fn count_failure(stream: Stream, dead: bool, readable: bool) {
    match stream {
        Stream::Receipts => {
            if readable {
                metrics::counter!("loyalty_receipts_failed_total").increment(1);
            }
            metrics::counter!(if dead {
                "loyalty_receipts_dead_total"
            } else {
                "loyalty_receipt_retries_total"
            })
            .increment(1);
        }
        Stream::Notifications if readable => {
            let outcome = if dead { "dead" } else { "retrying" };
            metrics::counter!("loyalty_notifications_total", "outcome" => outcome).increment(1);
        }
        Stream::Notifications => {}
    }
}

impl Broker {
    /// Passes a failed message on: to the delay queue of its next attempt (it comes back after
    /// its backoff), or to the dead letters, with its last error and attempt count in headers.
    pub async fn pass_on(
        &self,
        stream: Stream,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        error: &str,
        dead: bool,
    ) -> Result<(), PublishError> {
        let origin = self.topology().main(stream);
        let (queue, properties) = if dead {
            let dead_queue = self.topology().dead(stream);
            (
                dead_queue,
                contract::passed_on(properties, attempt, error, &origin, None),
            )
        } else {
            let next = attempt + 1;
            let delay = Some(retry_delay(next));
            let retry = self.topology().retry(stream, next);
            (
                retry,
                contract::passed_on(properties, next, error, &origin, delay),
            )
        };
        self.publish(&queue, body, properties).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_retried_until_its_last_attempt_unless_permanent() {
        for attempt in 1..MAX_ATTEMPTS {
            assert!(!Failure::decide(attempt, "down".into(), false).dead);
            assert!(Failure::decide(attempt, "bad".into(), true).dead);
        }
        assert!(Failure::decide(MAX_ATTEMPTS, "down".into(), false).dead);
    }
}
