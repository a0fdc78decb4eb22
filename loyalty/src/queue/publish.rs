//! The broker handle: one connection and confirm-mode channel for publishing, rebuilt by itself
//! after the broker (or its node of a cluster) goes away, and new connections for consumers.

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::{Mutex, RwLock};

use super::contract;
use super::nodes::Nodes;
use super::topology::Topology;

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
    link: RwLock<Option<(Connection, Channel)>>,
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
        // The hot path: a shared read of a live channel.
        if let Some(channel) = live(self.link.read().await.as_ref()) {
            return Ok(channel);
        }
        let mut link = self.link.write().await;
        // Another task may have reconnected while this one waited.
        if let Some(channel) = live(link.as_ref()) {
            return Ok(channel);
        }
        let conn = self.open("publisher").await?;
        self.topology.declare(&conn).await?;
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *link = Some((conn, channel.clone()));
        tracing::info!("connected to RabbitMQ");
        Ok(channel)
    }

    /// A new connection of its own (consumers keep theirs apart from the publisher's), with the
    /// topology declared.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        let conn = self.open("consumer").await?;
        self.topology.declare(&conn).await?;
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
            Ok(Confirmation::Nack(_) | Confirmation::NotRequested) => Err(PublishError::Nacked),
            Err(err) => {
                // Drop the link so the next publish reconnects.
                self.link.write().await.take();
                Err(err.into())
            }
        }
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
