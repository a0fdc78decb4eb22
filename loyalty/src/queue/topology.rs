//! The queues of one deployment and how they are declared: per stream a main queue, one delay
//! queue per retry step and a dead-letter queue, all durable quorum queues (replicated on three
//! nodes of a cluster), declared idempotently by every service at start.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::options::QueueDeclareOptions;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ErrorKind};

/// How many times a message is tried before it goes to the dead-letter queue.
pub const MAX_ATTEMPTS: u32 = 6;

/// Deliveries of one message to consumers (first delivery and redeliveries after a consumer died
/// or its channel closed) before a work queue dead-letters it. Declared explicitly: RabbitMQ 3.x
/// has no limit by default, 4.x a default of 20 that *drops* the message where no dead-letter
/// route is set.
pub const REDELIVERY_LIMIT: i64 = 20;

/// The dead-letter queues' limit: as good as none (every listing takes a message and gives it
/// back, which 4.0–4.2 count as a delivery), and explicit so 4.x's default of 20 never applies.
/// (-1, 4.x's "no limit", makes 3.x drop a message at its first return.)
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = 1_000_000_000;

/// The members of each queue this code creates: a quorum of three survives the loss of any one
/// node. On a broker of fewer nodes, RabbitMQ places a member on each node it has.
pub const QUORUM_GROUP_SIZE: i64 = 3;

/// The first retry waits this long; each later one twice the one before, up to `LONGEST_RETRY_DELAY`.
const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const LONGEST_RETRY_DELAY: Duration = Duration::from_secs(300);

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

    pub fn parse(name: &str) -> Option<Self> {
        Stream::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The names of one deployment's queues; tests give each run its own prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix every queue name of this deployment starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
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

    /// A stream's queues with their role (main, retry or dead), main queue first.
    pub fn stream_queues(&self, stream: Stream) -> Vec<(String, &'static str)> {
        let mut queues = vec![(self.main(stream), "main")];
        queues.extend((2..=MAX_ATTEMPTS).map(|a| (self.retry(stream, a), "retry")));
        queues.push((self.dead(stream), "dead"));
        queues
    }

    /// Every queue of the topology, main queues first.
    pub fn queues(&self) -> Vec<String> {
        Stream::ALL
            .into_iter()
            .flat_map(|stream| self.stream_queues(stream))
            .map(|(name, _)| name)
            .collect()
    }

    /// Every queue with where its dead letters go and its delivery limit, in declaration order.
    fn declarations(&self) -> Vec<(String, Option<String>, i64)> {
        let mut out = Vec::new();
        for stream in Stream::ALL {
            // A message whose consumer dies on it again and again (a poison message) goes to the
            // dead letters after REDELIVERY_LIMIT deliveries instead of looping forever.
            out.push((self.main(stream), Some(self.dead(stream)), REDELIVERY_LIMIT));
            for attempt in 2..=MAX_ATTEMPTS {
                out.push((
                    self.retry(stream, attempt),
                    Some(self.main(stream)),
                    REDELIVERY_LIMIT,
                ));
            }
            // Dead letters are listed (taken and given back) by operators: never a limit that
            // could drop one.
            out.push((self.dead(stream), None, DEAD_LETTER_DELIVERY_LIMIT));
        }
        out
    }

    /// Declares every queue that does not exist yet; safe to run from every service at every
    /// start, on a single broker as on a cluster.
    ///
    /// A queue that exists with other arguments is left as it is: redeclaring it with other
    /// arguments than it was created with (RabbitMQ 3.10 compares `x-quorum-initial-group-size`,
    /// the delivery limit and the dead-letter route, and an absent argument differs from a present
    /// one) fails with PRECONDITION_FAILED, and the queues of a deployment that predates an
    /// argument must keep working. The declaration is tried as it is (a new queue, or one made
    /// with these arguments, is declared silently); only a refused one costs its channel.
    pub async fn declare(&self, conn: &Connection) -> lapin::Result<()> {
        let mut channel = conn.create_channel().await?;
        for (name, dead_letter_to, limit) in self.declarations() {
            match declare_quorum(&channel, &name, dead_letter_to.as_deref(), limit).await {
                Ok(()) => {}
                Err(err) if is_precondition_failed(&err) => {
                    tracing::info!(queue = %name, "queue kept as it was created (other arguments)");
                    // The refusal closed the channel.
                    channel = conn.create_channel().await?;
                }
                Err(err) => return Err(err),
            }
        }
        if let Err(err) = channel.close(200, "declared".into()).await {
            // The channel goes with its connection anyway.
            tracing::debug!(error = %err, "closing the declaring channel failed");
        }
        Ok(())
    }
}

/// Whether the broker refused a declaration because the queue exists with other arguments.
fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(err.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

/// Declares a durable quorum queue of [`QUORUM_GROUP_SIZE`] members with its delivery limit and,
/// if given, where its expired or over-delivered messages go (through the default exchange).
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
        "x-quorum-initial-group-size".into(),
        AMQPValue::LongLongInt(QUORUM_GROUP_SIZE),
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
        .with_min_delay(FIRST_RETRY_DELAY)
        .with_factor(2.0)
        .with_max_delay(LONGEST_RETRY_DELAY)
        .with_max_times(MAX_ATTEMPTS as usize)
        .with_jitter()
        .build();
    delays
        .nth(attempt.saturating_sub(2) as usize)
        .unwrap_or(LONGEST_RETRY_DELAY)
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
        assert_eq!(t.queues()[0], "t1.receipts");
        assert_eq!(t.queues()[6], "t1.receipts.dead");
    }
}
