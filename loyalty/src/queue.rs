//! The queue contract both sides use: queue names, message headers, the topology (declared
//! idempotently by every service at start), and a broker handle that publishes with publisher
//! confirms and reconnects by itself after the broker restarts.
//!
//! Topology, per stream (`receipts`, `notifications`):
//! - `<stream>`: durable quorum queue the consumers read;
//! - `<stream>.retry.<n>` (n = 1..MAX_ATTEMPTS-1): durable quorum delay queues without consumers; a
//!   message waits there for its own expiration (exponential backoff with jitter) and is
//!   dead-lettered back to `<stream>`;
//! - `<stream>.dead`: durable quorum queue of messages that failed MAX_ATTEMPTS times, each with
//!   its last error in the `x-last-error` header, waiting for an operator's replay.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::RwLock;

/// How many times a message is tried before it goes to the dead-letter queue.
pub const MAX_ATTEMPTS: u32 = 6;

/// Headers the services set on messages.
pub mod headers {
    /// 1 for the first delivery, incremented at each retry.
    pub const ATTEMPT: &str = "x-attempt";
    /// The error of the last failed attempt.
    pub const LAST_ERROR: &str = "x-last-error";
    /// The queue a dead message came from, for replay.
    pub const ORIGIN: &str = "x-origin-queue";
    /// The organization the message belongs to.
    pub const ORG: &str = "x-org-id";
}

/// The names of one deployment's queues; tests give each run its own prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

/// A stream of messages with its retry and dead-letter queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Receipts,
    Notifications,
}

impl Stream {
    pub const ALL: [Stream; 2] = [Stream::Receipts, Stream::Notifications];

    pub fn name(self) -> &'static str {
        match self {
            Stream::Receipts => "receipts",
            Stream::Notifications => "notifications",
        }
    }
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    pub fn main(&self, stream: Stream) -> String {
        format!("{}{}", self.prefix, stream.name())
    }

    /// The delay queue a message waits in before its `attempt`-th try (attempt ≥ 2).
    pub fn retry(&self, stream: Stream, attempt: u32) -> String {
        format!("{}{}.retry.{}", self.prefix, stream.name(), attempt)
    }

    pub fn dead(&self, stream: Stream) -> String {
        format!("{}{}.dead", self.prefix, stream.name())
    }

    /// Every queue of the topology, main queues first.
    pub fn queues(&self) -> Vec<String> {
        let mut all = Vec::new();
        for stream in Stream::ALL {
            all.push(self.main(stream));
            all.extend((2..=MAX_ATTEMPTS).map(|a| self.retry(stream, a)));
            all.push(self.dead(stream));
        }
        all
    }

    /// Declares every queue; safe to run from every service at every start.
    pub async fn declare(&self, channel: &Channel) -> lapin::Result<()> {
        for stream in Stream::ALL {
            // A message whose consumer dies on it again and again (a poison message) goes to the
            // dead letters after REDELIVERY_LIMIT deliveries instead of looping forever.
            declare_quorum(
                channel,
                &self.main(stream),
                Some(&self.dead(stream)),
                REDELIVERY_LIMIT,
            )
            .await?;
            for attempt in 2..=MAX_ATTEMPTS {
                declare_quorum(
                    channel,
                    &self.retry(stream, attempt),
                    Some(&self.main(stream)),
                    REDELIVERY_LIMIT,
                )
                .await?;
            }
            // Dead letters are listed (taken and given back) by operators: never a limit that
            // could drop one.
            declare_quorum(
                channel,
                &self.dead(stream),
                None,
                DEAD_LETTER_DELIVERY_LIMIT,
            )
            .await?;
        }
        Ok(())
    }
}

/// Deliveries of one message to consumers (first delivery and redeliveries after a consumer died
/// or its channel closed) before a work queue dead-letters it. Declared explicitly: RabbitMQ 3.x
/// has no limit by default, 4.x a default of 20 that *drops* the message where no dead-letter
/// route is set.
pub const REDELIVERY_LIMIT: i64 = 20;

/// The dead-letter queues' limit: as good as none (every listing takes a message and gives it
/// back, which 4.0–4.2 count as a delivery), and explicit so 4.x's default of 20 never applies.
/// (-1, 4.x's "no limit", makes 3.x drop a message at its first return.)
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// Declares a durable quorum queue with its delivery limit and, if given, where its expired or
/// over-delivered messages go (through the default exchange).
pub async fn declare_quorum(
    channel: &Channel,
    name: &str,
    dead_letter_to: Option<&str>,
    delivery_limit: i64,
) -> lapin::Result<()> {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(delivery_limit),
    );
    if let Some(target) = dead_letter_to {
        // Through the default exchange, straight to `target`.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(target)),
        );
    }
    channel
        .queue_declare(
            ShortString::from(name),
            QueueDeclareOptions::durable(),
            args,
        )
        .await?;
    Ok(())
}

/// How long a message waits before its `attempt`-th try: exponential from 1 s, doubling, at
/// most 5 minutes, with jitter so that a burst of failures does not come back as a burst.
pub fn retry_delay(attempt: u32) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(300))
        .with_max_times(MAX_ATTEMPTS as usize)
        .with_jitter()
        .build();
    delays
        .nth(attempt.saturating_sub(2) as usize)
        .unwrap_or(Duration::from_secs(300))
}

/// The attempt number a delivery carries (1 when absent).
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    header(properties, headers::ATTEMPT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// A header's value as text.
pub fn header(properties: &BasicProperties, key: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(key)?;
    Some(match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        other => format!("{other:?}"),
    })
}

/// Why RabbitMQ itself dead-lettered a message (its `x-death` header: the latest reason and the
/// queue it left), for a message no service gave an error to (parked by the delivery limit).
pub fn broker_death(properties: &BasicProperties) -> Option<String> {
    let deaths = properties.headers().as_ref()?.inner().get("x-death")?;
    let AMQPValue::FieldArray(deaths) = deaths else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |key: &str| match latest.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let reason = text("reason")?;
    Some(match text("queue") {
        Some(queue) => format!("dead-lettered by RabbitMQ from {queue}: {reason}"),
        None => format!("dead-lettered by RabbitMQ: {reason}"),
    })
}

/// Why a publish did not happen; the message must then be considered not sent.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker unreachable: {0}")]
    Unreachable(#[from] lapin::Error),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("no queue took the message")]
    Unroutable,
}

/// A connection and a confirm-mode channel, rebuilt when the broker goes away.
pub struct Broker {
    url: String,
    topology: Topology,
    link: RwLock<Option<(Connection, Channel)>>,
    /// Listing and replaying dead letters take them off their queue for a moment; one at a time,
    /// so that two operators' views (or a view and a replay) never hide letters from each other.
    dead_letters: tokio::sync::Mutex<()>,
    /// The connection operator views read the queues through (depths, dead letters), kept between
    /// calls so a dashboard refreshing every few seconds does not open a connection each time.
    inspection: RwLock<Option<Connection>>,
}

impl Broker {
    /// A handle that connects on first use (and again after every loss of the connection).
    pub fn new(url: impl Into<String>, topology: Topology) -> Self {
        Self {
            url: url.into(),
            topology,
            link: RwLock::new(None),
            dead_letters: tokio::sync::Mutex::new(()),
            inspection: RwLock::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The virtual host the AMQP URL names ("/" when it names none).
    pub fn vhost(&self) -> String {
        self.url
            .parse::<lapin::uri::AMQPUri>()
            .map(|uri| uri.vhost)
            .unwrap_or_else(|_| "/".to_owned())
    }

    /// Names connections after the deployment's queue prefix, so operators (and tests) can tell them apart.
    fn connection_name(&self, role: &str) -> LongString {
        LongString::from(format!("loyalty {role} {}", self.topology.prefix).trim_end())
    }

    /// The publishing channel, reconnecting and redeclaring the topology when needed.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        // The hot path: a shared read of a live channel.
        if let Some(channel) = live(self.link.read().await.as_ref()) {
            return Ok(channel);
        }
        let mut link = self.link.write().await;
        // Another task may have reconnected while this one waited.
        if let Some(channel) = live(link.as_ref()) {
            return Ok(channel);
        }
        let conn = Connection::connect(
            &self.url,
            ConnectionProperties::default().with_connection_name(self.connection_name("publisher")),
        )
        .await?;
        let channel = conn.create_channel().await?;
        self.topology.declare(&channel).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *link = Some((conn, channel.clone()));
        tracing::info!("connected to RabbitMQ");
        Ok(channel)
    }

    /// Runs `work` on a fresh inspection channel, then closes the channel whatever happened
    /// (closing also returns whatever an error left unacknowledged).
    async fn inspect<T, E: From<lapin::Error>>(
        &self,
        work: impl AsyncFnOnce(&Channel) -> Result<T, E>,
    ) -> Result<T, E> {
        let channel = self.inspection_channel().await?;
        let done = work(&channel).await;
        let _ = channel.close(200, "done".into()).await;
        done
    }

    /// A fresh channel on the inspection connection (reconnecting when it was lost). A channel of
    /// its own per call: a passive declare of a missing queue closes the channel it ran on.
    async fn inspection_channel(&self) -> lapin::Result<Channel> {
        if let Some(conn) = self.inspection.read().await.as_ref() {
            if conn.status().connected() {
                return conn.create_channel().await;
            }
        }
        let mut slot = self.inspection.write().await;
        if let Some(conn) = slot.as_ref() {
            if conn.status().connected() {
                return conn.create_channel().await;
            }
        }
        let conn = self.connect().await?;
        let channel = conn.create_channel().await?;
        *slot = Some(conn);
        Ok(channel)
    }

    /// A new connection of its own (consumers keep theirs apart from the publisher's).
    pub async fn connect(&self) -> lapin::Result<Connection> {
        let conn = Connection::connect(
            &self.url,
            ConnectionProperties::default().with_connection_name(self.connection_name("consumer")),
        )
        .await?;
        let channel = conn.create_channel().await?;
        self.topology.declare(&channel).await?;
        Ok(conn)
    }

    /// Publishes a persistent message to `queue` and returns once the broker has confirmed it.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let properties = properties
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        let channel = self.channel().await?;
        let sent = channel
            .basic_publish(
                "".into(),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await;
        let confirmation = match sent {
            Ok(pending) => pending.await,
            Err(err) => Err(err),
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable),
            Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => Err(PublishError::Nacked),
            Err(err) => {
                // Drop the link so the next publish reconnects.
                self.link.write().await.take();
                Err(err.into())
            }
        }
    }

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
        let (queue, next_attempt) = if dead {
            (self.topology.dead(stream), attempt)
        } else {
            (self.topology.retry(stream, attempt + 1), attempt + 1)
        };
        let mut table = properties.headers().clone().unwrap_or_default();
        let error: String = error.chars().take(1000).collect();
        for (key, value) in [
            (headers::ATTEMPT, next_attempt.to_string()),
            (headers::LAST_ERROR, error),
            (headers::ORIGIN, self.topology.main(stream)),
        ] {
            table.insert(
                ShortString::from(key),
                AMQPValue::LongString(value.as_str().into()),
            );
        }
        let mut props = BasicProperties::default().with_headers(table);
        if let Some(id) = properties.message_id() {
            props = props.with_message_id(id.clone());
        }
        if !dead {
            let delay = retry_delay(next_attempt);
            props = props.with_expiration(ShortString::from(delay.as_millis().to_string()));
        }
        self.publish(&queue, body, props).await
    }

    /// Whether the broker answers now.
    pub async fn is_reachable(&self) -> bool {
        self.channel().await.is_ok()
    }
}

fn live(link: Option<&(Connection, Channel)>) -> Option<Channel> {
    let (conn, channel) = link?;
    (conn.status().connected() && channel.status().connected()).then(|| channel.clone())
}

/// A queue's depth as the broker reports it over AMQP (no management plugin needed); the
/// unacknowledged count and the rates come from the management plugin when it is configured.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct QueueDepth {
    pub name: String,
    /// receipts or notifications.
    pub stream: &'static str,
    /// main, retry or dead.
    pub role: &'static str,
    pub messages_ready: u32,
    pub consumers: u32,
    /// Delivered to a consumer and not yet acknowledged (management plugin only).
    pub messages_unacknowledged: Option<u64>,
    /// Messages published into the queue per second, recent average (management plugin only).
    pub publish_rate: Option<f64>,
    /// Messages acknowledged (done) per second, recent average (management plugin only).
    pub ack_rate: Option<f64>,
}

/// A message waiting in a dead-letter queue.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    /// The message id (the POS event id, or `outbox-<id>`).
    pub id: Option<String>,
    pub attempts: u32,
    pub last_error: Option<String>,
    #[schema(value_type = Object)]
    pub body: serde_json::Value,
}

impl Stream {
    pub fn parse(name: &str) -> Option<Self> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl Broker {
    /// Every queue of the topology with its depth and consumers.
    pub async fn depths(&self) -> lapin::Result<Vec<QueueDepth>> {
        // Counted so the load `/metrics` puts on the broker shows (its reads are cached).
        metrics::counter!("loyalty_queue_depth_reads_total").increment(1);
        // Not while a listing holds the dead letters (they would read as gone); but a long
        // replay of a whole queue does not hold the depths back for more than half a second.
        let _not_while_listing =
            tokio::time::timeout(Duration::from_millis(500), self.dead_letters.lock())
                .await
                .ok();
        self.inspect(async |channel| self.depths_on(channel).await)
            .await
    }

    async fn depths_on(&self, channel: &Channel) -> lapin::Result<Vec<QueueDepth>> {
        let mut out = Vec::new();
        for stream in Stream::ALL {
            let mut names = vec![(self.topology.main(stream), "main")];
            names.extend((2..=MAX_ATTEMPTS).map(|a| (self.topology.retry(stream, a), "retry")));
            names.push((self.topology.dead(stream), "dead"));
            for (name, role) in names {
                let q = channel
                    .queue_declare(
                        ShortString::from(name.as_str()),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                out.push(QueueDepth {
                    name,
                    stream: stream.name(),
                    role,
                    messages_ready: q.message_count(),
                    consumers: q.consumer_count(),
                    messages_unacknowledged: None,
                    publish_rate: None,
                    ack_rate: None,
                });
            }
        }
        Ok(out)
    }

    /// Reads up to `limit` dead letters without removing them (they are taken unacknowledged and
    /// given back before the call returns).
    pub async fn dead_letters(
        &self,
        stream: Stream,
        limit: usize,
    ) -> lapin::Result<Vec<DeadLetter>> {
        let _one_at_a_time = self.dead_letters.lock().await;
        self.inspect(async |channel| self.dead_letters_on(channel, stream, limit).await)
            .await
    }

    async fn dead_letters_on(
        &self,
        channel: &Channel,
        stream: Stream,
        limit: usize,
    ) -> lapin::Result<Vec<DeadLetter>> {
        let queue = self.topology.dead(stream);
        let mut out = Vec::new();
        let mut last_tag = None;
        while out.len() < limit {
            let Some(message) = take(channel, &queue).await? else {
                break;
            };
            last_tag = Some(message.delivery.delivery_tag);
            let properties = &message.delivery.properties;
            out.push(DeadLetter {
                id: properties.message_id().as_ref().map(|id| id.to_string()),
                attempts: attempt_of(properties),
                last_error: header(properties, headers::LAST_ERROR)
                    .or_else(|| broker_death(properties)),
                body: serde_json::from_slice(&message.delivery.data).unwrap_or_else(|_| {
                    serde_json::Value::String(
                        String::from_utf8_lossy(&message.delivery.data).into_owned(),
                    )
                }),
            });
        }
        give_back(channel, last_tag).await?;
        Ok(out)
    }

    /// Moves dead letters back to their stream's main queue for a fresh set of attempts: all of
    /// them, or those whose message id is in `ids`. Each is published (confirmed) before its dead
    /// copy is acknowledged, so a failure part-way loses nothing. Returns the ids replayed.
    pub async fn replay(
        &self,
        stream: Stream,
        ids: Option<&[String]>,
    ) -> Result<Vec<String>, PublishError> {
        let _one_at_a_time = self.dead_letters.lock().await;
        self.inspect(async |channel| self.replay_on(channel, stream, ids).await)
            .await
    }

    async fn replay_on(
        &self,
        channel: &Channel,
        stream: Stream,
        ids: Option<&[String]>,
    ) -> Result<Vec<String>, PublishError> {
        let queue = self.topology.dead(stream);
        let mut replayed = Vec::new();
        // Messages not chosen stay unacknowledged until they are given back, in order, at the end.
        let mut last_kept = None;
        loop {
            let Some(message) = take(channel, &queue).await? else {
                break;
            };
            let delivery = message.delivery;
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default();
            if ids.is_some_and(|ids| !ids.contains(&id)) {
                last_kept = Some(delivery.delivery_tag);
                continue;
            }
            let mut table = delivery.properties.headers().clone().unwrap_or_default();
            table.insert(
                ShortString::from(headers::ATTEMPT),
                AMQPValue::LongString("1".into()),
            );
            let mut properties = BasicProperties::default().with_headers(table);
            if let Some(message_id) = delivery.properties.message_id() {
                properties = properties.with_message_id(message_id.clone());
            }
            self.publish(&self.topology.main(stream), &delivery.data, properties)
                .await?;
            delivery
                .ack(lapin::options::BasicAckOptions::default())
                .await?;
            replayed.push(id);
        }
        give_back(channel, last_kept).await?;
        Ok(replayed)
    }
}

/// The next message of `queue`, taken unacknowledged (the channel holds it until it is acked or
/// given back).
async fn take(
    channel: &Channel,
    queue: &str,
) -> lapin::Result<Option<lapin::message::BasicGetMessage>> {
    channel
        .basic_get(
            ShortString::from(queue),
            lapin::options::BasicGetOptions { no_ack: false },
        )
        .await
}

/// Returns every message this channel still holds, up to `last_tag`, to the head of its queue
/// before the channel closes (closing would too, but later: a view right after might miss them).
async fn give_back(channel: &Channel, last_tag: Option<u64>) -> lapin::Result<()> {
    match last_tag {
        Some(tag) => {
            channel
                .basic_nack(
                    tag,
                    lapin::options::BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
        }
        None => Ok(()),
    }
}

/// Message headers as a table.
pub fn header_table(pairs: &[(&str, String)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        table.insert(
            ShortString::from(*key),
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_exponentially_with_jitter_and_a_ceiling() {
        for attempt in 2..=MAX_ATTEMPTS {
            let base = Duration::from_secs(1 << (attempt - 2)).min(Duration::from_secs(300));
            let delay = retry_delay(attempt);
            assert!(
                delay >= base && delay <= base * 2 + Duration::from_millis(1),
                "attempt {attempt}: {delay:?}"
            );
        }
    }

    #[test]
    fn each_stream_has_retry_and_dead_letter_queues() {
        let t = Topology::new("t1.");
        assert_eq!(t.main(Stream::Receipts), "t1.receipts");
        assert_eq!(t.retry(Stream::Receipts, 2), "t1.receipts.retry.2");
        assert_eq!(t.dead(Stream::Notifications), "t1.notifications.dead");
        assert_eq!(t.queues().len(), 2 * (1 + (MAX_ATTEMPTS as usize - 1) + 1));
    }
}
