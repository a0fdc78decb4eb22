//! What operators read and do on the queues: depths, dead letters listed without removing them,
//! and dead letters replayed. Reads go through a connection of their own, kept between calls.

use std::time::Duration;

use lapin::Channel;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

use super::contract::{self, headers};
use super::publish::{Broker, PublishError};
use super::topology::Stream;

/// How long a depth read waits for a listing of the dead letters to finish (it would read them
/// as gone); a long replay of a whole queue does not hold the depths back for longer.
const DEPTHS_WAIT_FOR_LISTING: Duration = Duration::from_millis(500);

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

impl Broker {
    /// Every queue of the topology with its depth and consumers.
    pub async fn depths(&self) -> lapin::Result<Vec<QueueDepth>> {
        // Counted so the load `/metrics` puts on the broker shows (its reads are cached).
        metrics::counter!("loyalty_queue_depth_reads_total").increment(1);
        let _not_while_listing =
            tokio::time::timeout(DEPTHS_WAIT_FOR_LISTING, self.dead_letters.lock())
                .await
                .ok();
        self.inspect(async |channel| self.depths_on(channel).await)
            .await
    }

    async fn depths_on(&self, channel: &Channel) -> lapin::Result<Vec<QueueDepth>> {
        let mut out = Vec::new();
        for stream in Stream::ALL {
            for (name, role) in self.topology().stream_queues(stream) {
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
        let queue = self.topology().dead(stream);
        let mut out = Vec::new();
        let mut last_tag = None;
        while out.len() < limit {
            let Some(message) = take(channel, &queue).await? else {
                break;
            };
            last_tag = Some(message.delivery.delivery_tag);
            let properties = &message.delivery.properties;
            out.push(DeadLetter {
                id: contract::message_id_of(properties),
                attempts: contract::attempt_of(properties),
                last_error: contract::header(properties, headers::LAST_ERROR)
                    .or_else(|| contract::broker_death(properties)),
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
        let queue = self.topology().dead(stream);
        let mut replayed = Vec::new();
        // Messages not chosen stay unacknowledged until they are given back, in order, at the end.
        let mut last_kept = None;
        while let Some(message) = take(channel, &queue).await? {
            let delivery = message.delivery;
            let id = contract::message_id_of(&delivery.properties).unwrap_or_default();
            if ids.is_some_and(|ids| !ids.contains(&id)) {
                last_kept = Some(delivery.delivery_tag);
                continue;
            }
            self.publish(
                &self.topology().main(stream),
                &delivery.data,
                contract::replayed(&delivery.properties),
            )
            .await?;
            delivery.ack(BasicAckOptions::default()).await?;
            replayed.push(id);
        }
        give_back(channel, last_kept).await?;
        Ok(replayed)
    }

    /// Runs `work` on a fresh inspection channel, then closes the channel whatever happened
    /// (closing also returns whatever an error left unacknowledged).
    async fn inspect<T, E: From<lapin::Error>>(
        &self,
        work: impl AsyncFnOnce(&Channel) -> Result<T, E>,
    ) -> Result<T, E> {
        let channel = self.inspection_channel().await?;
        let done = work(&channel).await;
        if let Err(err) = channel.close(200, "done".into()).await {
            // The broker closes it with its connection; what it held goes back then.
            tracing::debug!(error = %err, "closing an inspection channel failed");
        }
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
}

/// The next message of `queue`, taken unacknowledged (the channel holds it until it is acked or
/// given back).
pub(super) async fn take(
    channel: &Channel,
    queue: &str,
) -> lapin::Result<Option<lapin::message::BasicGetMessage>> {
    channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
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
                    BasicNackOptions {
                        multiple: true,
                        requeue: true,
                    },
                )
                .await
        }
        None => Ok(()),
    }
}
