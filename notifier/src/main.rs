//! `notifier`: Telegram messages about accruals. This stage prepares its ground: it applies the
//! migrations and declares the notification queues; the outbox relay and the Bot API delivery are
//! the notifier issue's work (see README, "Status").

use clap::Parser;
use loyalty::queue::{Broker, Topology};

/// Configuration, from the environment (see `notifier --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "notifier", about = "Sends Telegram messages about accruals")]
struct Config {
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        hide_env_values = true,
        default_value = "postgres://postgres@127.0.0.1:5432/loyalty"
    )]
    database_url: String,
    /// RabbitMQ connection URL.
    #[arg(
        long,
        env = "AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Prefix of every queue name.
    #[arg(long, env = "QUEUE_PREFIX", default_value = "")]
    queue_prefix: String,
    /// Telegram Bot API base URL.
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    telegram_api_url: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    loyalty::telemetry::init("info,notifier=info,loyalty=info");
    let db = loyalty::db::connect(&config.database_url, 4).await?;
    loyalty::db::migrate(&db).await?;
    let broker = Broker::new(
        config.amqp_url.clone(),
        Topology::new(config.queue_prefix.clone()),
    );
    broker.channel().await?;
    tracing::info!(telegram_api = %config.telegram_api_url, "notifier ready; delivery is not built yet");
    loyalty::shutdown::signal().await;
    Ok(())
}
