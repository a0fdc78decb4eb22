//! The queues between the services, in parts:
//! - [`topology`]: the queue names and how they are declared (idempotently, by every service at start);
//! - [`contract`]: the message types and the headers every publisher sets, built in one place;
//! - [`nodes`]: the broker's node or the nodes of its cluster, and connecting to one that answers;
//! - [`publish`]: the broker handle, publishing with publisher confirms and reconnecting by itself;
//! - [`consume`]: the one consumer loop and retry-or-dead decision both workers and notifier run;
//! - [`inspect`]: queue depths, dead letters listed and replayed, for operators.
//!
//! Topology, per stream (`receipts`, `notifications`):
//! - `<stream>`: durable quorum queue the consumers read (every queue has three members on a
//!   cluster of three nodes or more);
//! - `<stream>.retry.<n>` (n = 2..=MAX_ATTEMPTS): durable quorum delay queues without consumers; a
//!   message waits there for its own expiration (exponential backoff with jitter) and is
//!   dead-lettered back to `<stream>`;
//! - `<stream>.dead`: durable quorum queue of messages that failed MAX_ATTEMPTS times, each with
//!   its last error in the `x-last-error` header, waiting for an operator's replay.

pub mod consume;
pub mod contract;
pub mod inspect;
pub mod nodes;
pub mod publish;
pub mod topology;

pub use consume::{Consumer, Failure, Handled, Settings, Step, Verdict};
pub use contract::{
    NotificationMessage, ReceiptMessage, attempt_of, broker_death, header, header_table, headers,
};
pub use inspect::{DeadLetter, QueueDepth};
pub use nodes::Nodes;
pub use publish::{Broker, PublishError};
pub use topology::{
    DEAD_LETTER_DELIVERY_LIMIT, MAX_ATTEMPTS, QUORUM_GROUP_SIZE, REDELIVERY_LIMIT, Stream,
    Topology, declare_quorum, retry_delay,
};
