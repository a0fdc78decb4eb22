//! Connecting to PostgreSQL and applying the migrations every service runs at start.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// Why a service could not connect at start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The server answers but has no such database: waiting would not help.
    #[error(
        "PostgreSQL has no database \"{0}\": create it (`createdb {0}`) or point DATABASE_URL at one that exists"
    )]
    MissingDatabase(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Connects, retrying with backoff for about a minute so a service can start before its database.
/// A database the server does not have (SQLSTATE 3D000) is an error at once, naming it.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, ConnectError> {
    let connect = || {
        PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
    };
    connect
        .retry(start_up_retry())
        .when(|err| !is_missing_database(err))
        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "PostgreSQL not reachable yet; retrying"))
        .await
        .map_err(|err| {
            if is_missing_database(&err) {
                ConnectError::MissingDatabase(database_name(url))
            } else {
                ConnectError::Db(err)
            }
        })
}

/// SQLSTATE 3D000, invalid_catalog_name: the server has no database of that name.
fn is_missing_database(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.code())
        .is_some_and(|code| code == "3D000")
}

/// The database a URL names (without its credentials), as PostgreSQL reads it.
fn database_name(url: &str) -> String {
    url.parse::<PgConnectOptions>()
        .ok()
        .map(|options| {
            // No database in the URL: PostgreSQL takes the user's name.
            options
                .get_database()
                .unwrap_or(options.get_username())
                .to_owned()
        })
        .unwrap_or_else(|| "named in DATABASE_URL".to_owned())
}

/// How a service waits at start for a database that is not there yet or drops its connection:
/// about a minute, with backoff.
pub fn start_up_retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(15)
        .with_jitter()
}

/// Applies pending migrations. sqlx holds a PostgreSQL advisory lock while migrating, so several
/// services starting at once apply each migration exactly once.
/// A connection the database drops meanwhile (a restart) is waited for like the first one.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    // On a connection of its own that is sent warnings only: sqlx logs every PostgreSQL notice at
    // info, and the migrator's `create table if not exists` raises one on every start.
    let options = pool
        .connect_options()
        .as_ref()
        .clone()
        .options([("client_min_messages", "warning")]);
    let run = || migrate_on(options.clone());
    run.retry(start_up_retry())
        .when(|err| matches!(err, sqlx::migrate::MigrateError::Execute(_)))
        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "migrating failed; retrying"))
        .await
}

/// One run of the migrations, on a pool of one connection opened with `options`.
async fn migrate_on(options: PgConnectOptions) -> Result<(), sqlx::migrate::MigrateError> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await?;
    let ran = sqlx::migrate!("../migrations").run(&pool).await;
    pool.close().await;
    ran
}

/// Where a page of a long list starts. `Offset` skips rows, so a row that arrives or moves while
/// a client pages shifts every later page (a row is seen twice or missed), and the database still
/// walks the skipped rows; `After` starts after a row's key (keyset paging), stable under inserts
/// and as fast deep in the list as at its head. Offsets stay for the clients that use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStart<K> {
    Offset(i64),
    After(K),
}

/// A list's position as the opaque text the API hands out (`next_cursor`) and takes back
/// (`after`): URL-safe base64 of the key's own text, so clients neither parse nor build it.
pub fn encode_cursor(key: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
}

/// The key's text of a cursor made by [`encode_cursor`]; `None` for anything else.
pub fn decode_cursor(cursor: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// An id-ordered list's cursor (customers, notifications).
pub fn id_cursor(id: i64) -> String {
    encode_cursor(&id.to_string())
}

/// The id of an [`id_cursor`].
pub fn parse_id_cursor(cursor: &str) -> Option<i64> {
    decode_cursor(cursor)?.parse().ok()
}

#[cfg(test)]
mod cursor_tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_they_did_not_make() {
        assert_eq!(parse_id_cursor(&id_cursor(1_000_042)), Some(1_000_042));
        assert_eq!(
            decode_cursor(&encode_cursor("1735689600000000:7:ev/1:a")),
            Some("1735689600000000:7:ev/1:a".to_owned())
        );
        assert_eq!(parse_id_cursor("not base64!"), None);
        assert_eq!(parse_id_cursor(&encode_cursor("12x")), None);
    }
}
