//! Connecting to PostgreSQL and applying the migrations every service runs at start.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Connects, retrying with backoff for about a minute so a service can start before its database.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let connect = || {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
    };
    connect
        .retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(5))
                .with_max_times(15)
                .with_jitter(),
        )
        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "PostgreSQL not reachable yet; retrying"))
        .await
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while migrating, so several
/// services starting at once apply each migration exactly once.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}
