//! The settings several binaries share: where PostgreSQL and RabbitMQ are, the queue names'
//! prefix, and the keys of the bot tokens. Each binary flattens these into its own `Config`
//! (`ingest::Config`, `workers::Config`, `notifier::Config`) beside the settings only it reads.

use loyalty::queue::{Broker, Nodes, Topology};

#[derive(Debug, Clone, clap::Args)]
pub struct Backends {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/loyalty"
    )]
    pub database_url: String,
    /// RabbitMQ connection URL; for a cluster, one per node, comma-separated or one
    /// `--amqp-url` each. Every connection goes to a node that answers, and to another one when
    /// its node goes away.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        value_delimiter = ',',
        value_parser = loyalty::queue::nodes::check_urls,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: Vec<String>,
    /// Prefix of every queue name (several deployments, or test runs, on one broker).
    #[arg(long, env = "QUEUE_PREFIX", default_value = "")]
    pub queue_prefix: String,
}

impl Backends {
    /// Connects to PostgreSQL (retrying while it starts) and applies pending migrations.
    pub async fn database(&self, max_connections: u32) -> anyhow::Result<sqlx::PgPool> {
        let db = loyalty::db::connect(&self.database_url, max_connections).await?;
        loyalty::db::migrate(&db).await?;
        Ok(db)
    }

    /// A broker handle on this deployment's queues (it connects on first use).
    pub fn broker(&self) -> Broker {
        Broker::with_nodes(
            Nodes::new(&self.amqp_url),
            Topology::new(self.queue_prefix.clone()),
        )
    }
}

/// The keys that seal the organizations' bot tokens at rest (ingest and notifier; see `crypto`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Secrets {
    /// `id:base64key[,id:base64key…]` with 32-byte keys (`openssl rand -base64 32`): the first
    /// seals bot tokens, every one listed opens them. Required once any organization has a token.
    #[arg(long, env = "TOKEN_KEYS", hide_env_values = true, default_value = "")]
    pub token_keys: loyalty::crypto::TokenKeys,
}
