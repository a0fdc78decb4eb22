//! The broker handle: one connection and confirm-mode channel for publishing, rebuilt by itself
//! after the broker (or its node of a cluster) goes away, and new connections for consumers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Mutex, RwLock};

use super::contract;
use super::nodes::Nodes;
use super::topology::Topology;

/// How long declaring the topology on a new connection may take.
const DECLARE_TIMEOUT: Duration = Duration::from_secs(10);

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
    nodes: Nodes,
    topology: Topology,
    link: RwLock<Option<Link>>,
    /// Numbers the links, so that a publish that failed on one drops that one only, never the
    /// link another task has built since.
    links_made: AtomicU64,
    /// Listing and replaying dead letters take them off their queue for a moment; one at a time,
    /// so that two operators' views (or a view and a replay) never hide letters from each other.
    pub(super) dead_letters: Mutex<()>,
    /// The connection operator views read the queues through (depths, dead letters), kept between
    /// calls so a dashboard refreshing every few seconds does not open a connection each time.
    pub(super) inspection: RwLock<Option<Connection>>,
}

impl Broker {
    /// A handle that connects on first use (and again after every loss of the connection);
    /// `url` names one node, or several of a cluster comma-separated.
    pub fn new(url: impl AsRef<str>, topology: Topology) -> Self {
        Self::with_nodes(Nodes::new([url]), topology)
    }

    /// A handle on the nodes of a cluster (or a single node): every connection goes to one that
    /// answers.
    pub fn with_nodes(nodes: Nodes, topology: Topology) -> Self {
        Self {
            nodes,
            topology,
            link: RwLock::new(None),
            links_made: AtomicU64::new(0),
            dead_letters: Mutex::new(()),
            inspection: RwLock::new(None),
        }
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The broker's nodes.
    pub fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// The virtual host the AMQP URL names ("/" when it names none).
    pub fn vhost(&self) -> String {
        self.nodes.vhost()
    }

    /// Names connections after the deployment's queue prefix, so operators (and tests) can tell them apart.
    fn connection_name(&self, role: &str) -> LongString {
        LongString::from(format!("loyalty {role} {}", self.topology.prefix()).trim_end())
    }

    /// The publishing channel, reconnecting and redeclaring the topology when needed.
    pub async fn channel(&self) -> lapin::Result<Channel> {
        Ok(self.link().await?.0)
    }

    /// The publishing channel and its link's number.
    async fn link(&self) -> lapin::Result<(Channel, u64)> {
        // The hot path: a shared read of a live channel.
        if let Some(live) = live(self.link.read().await.as_ref()) {
            return Ok(live);
        }
        let mut link = self.link.write().await;
        // Another task may have reconnected while this one waited.
        if let Some(live) = live(link.as_ref()) {
            return Ok(live);
        }
        let conn = self.open("publisher").await?;
        declare_in_time(&self.topology, &conn).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let number = self.links_made.fetch_add(1, Ordering::Relaxed);
        *link = Some(Link {
            conn,
            channel: channel.clone(),
            number,
        });
        tracing::info!("connected to RabbitMQ");
        Ok((channel, number))
    }

    /// Forgets link `number` (if it is still the current one) and closes its connection: the next
    /// publish connects anew.
    async fn drop_link(&self, number: u64) {
        let dropped = {
            let mut link = self.link.write().await;
            match link.as_ref() {
                Some(current) if current.number == number => link.take(),
                _ => None,
            }
        };
        if let Some(old) = dropped {
            // In the background and bounded: a node cut off by the network never answers.
            tokio::spawn(async move {
                let closed =
                    tokio::time::timeout(DECLARE_TIMEOUT, old.conn.close(200, "replaced".into()))
                        .await;
                if !matches!(closed, Ok(Ok(()))) {
                    // Mostly a connection its node already took down.
                    tracing::debug!(?closed, "closing a replaced publisher connection failed");
                }
            });
        }
    }

    /// A new connection of its own (consumers keep theirs apart from the publisher's), with the
    /// topology declared.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        let conn = self.open("consumer").await?;
        declare_in_time(&self.topology, &conn).await?;
        Ok(conn)
    }

    /// A new connection to a node that answers, declaring nothing (for tools and clean-ups that
    /// must not create queues).
    pub async fn open(&self, role: &str) -> lapin::Result<Connection> {
        self.nodes
            .connect(
                ConnectionProperties::default().with_connection_name(self.connection_name(role)),
            )
            .await
    }

    /// Publishes a message to `queue` (persistent, JSON, whatever `properties` say) and returns
    /// once the broker has confirmed it.
    pub async fn publish(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let (channel, number) = self.link().await?;
        let sent = channel
            .basic_publish(
                "".into(),
                ShortString::from(queue),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                contract::durable_json(properties),
            )
            .await;
        let confirmation = match sent {
            Ok(pending) => pending.await,
            Err(err) => Err(err),
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_))) => Err(PublishError::Unroutable),
            // After its node went away, a channel may answer nacks (or no confirms at all) until
            // it is replaced: a refusal costs a new link, so the next publish starts afresh.
            Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => {
                self.drop_link(number).await;
                Err(PublishError::Nacked)
            }
            Err(err) => {
                // Drop the link so the next publish reconnects.
                self.drop_link(number).await;
                Err(err.into())
            }
        }
    }

    /// Whether the broker answers now.
    pub async fn is_reachable(&self) -> bool {
        self.channel().await.is_ok()
    }
}

/// Declares the topology on a new connection, giving up after [`DECLARE_TIMEOUT`]: a node that
/// accepted the connection but cannot answer (its cluster electing leaders, say) must not hold
/// the publisher's reconnection, and every publish waiting for it, for ever.
async fn declare_in_time(topology: &Topology, conn: &Connection) -> lapin::Result<()> {
    match tokio::time::timeout(DECLARE_TIMEOUT, topology.declare(conn)).await {
        Ok(declared) => declared,
        Err(_) => {
            tracing::warn!("declaring the queues timed out; trying again on a new connection");
            if let Err(err) = conn.close(200, "declare timed out".into()).await {
                tracing::debug!(error = %err, "closing the connection failed");
            }
            Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "declaring the queues timed out",
            )))
        }
    }
}

/// A connection and its confirm-mode publishing channel.
struct Link {
    conn: Connection,
    channel: Channel,
    number: u64,
}

fn live(link: Option<&Link>) -> Option<(Channel, u64)> {
    let link = link?;
    (link.conn.status().connected()
        && link.channel.status().connected()
        && link.channel.status().confirm())
    .then(|| (link.channel.clone(), link.number))
}
