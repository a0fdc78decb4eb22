//! `ingest`: the HTTP entry point. It answers the cash registers' protocol, serves the operator API
//! and the health probes. Everything is built by [`app`], so tests run the real service in-process.

pub mod admin;
pub mod dashboard;
pub mod edge;
pub mod error;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod management;
pub mod miniapp;
pub mod openapi;
pub mod pos;
pub mod telegram;
pub mod webapp;

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::response::Redirect;
use axum::routing::get;
use loyalty::orgs::Integration;
use loyalty::queue::Broker;
use loyalty_service::server;
use sqlx::PgPool;

/// Configuration, from the environment (see `ingest --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "ingest",
    about = "POS protocol, operator API and health probes of the loyalty program",
    after_help = loyalty_service::telemetry::LOG_HELP
)]
pub struct Config {
    #[command(flatten)]
    pub backends: loyalty_service::config::Backends,
    #[command(flatten)]
    pub secrets: loyalty_service::config::Secrets,
    /// Bearer token of the operator API (`/admin/v1`). Required.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// Listen address.
    #[arg(long, env = "INGEST_ADDR", default_value = "0.0.0.0:8080")]
    pub addr: SocketAddr,
    /// Where `GET /metrics` is served, apart from the API (as the workers' and the notifier's).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9102")]
    pub metrics_addr: SocketAddr,
    #[command(flatten)]
    pub http: server::HttpLimits,
    /// Most API requests served at once; one more is answered 503 with `Retry-After: 1` at once,
    /// never queued, so a flood costs a bounded amount of memory (each request in flight holds its
    /// body, up to 1 MiB, and its futures). The health probes are not counted. 0: no limit.
    #[arg(long, env = "INGEST_MAX_IN_FLIGHT", default_value_t = 256)]
    pub max_in_flight: u32,
    /// Telegram Bot API base URL: the shops' bots answer and are set up through it.
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api_url: String,
    /// This service's public HTTPS address (e.g. `https://bonus.example.kz`): the Mini App is
    /// `<PUBLIC_URL>/app/<org>/`, and the shops' bots get their webhook and menu button there
    /// when their token is set. Unset: bots are left as their owners configured them.
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<reqwest::Url>,
    /// How long Mini App init data stays valid after its auth_date, in seconds.
    #[arg(long, env = "MINIAPP_MAX_AGE", default_value_t = 86_400)]
    pub miniapp_max_age: u64,
    /// RabbitMQ management API (e.g. `http://guest:guest@rabbitmq:15672`), read for the queues'
    /// unacknowledged counts and rates when given; AMQP alone reports depths and consumers.
    #[arg(long, env = "RABBITMQ_MANAGEMENT_URL", hide_env_values = true)]
    pub rabbitmq_management_url: Option<String>,
    /// Largest legacy export `POST /admin/v1/import` accepts, in bytes.
    #[arg(long, env = "IMPORT_BODY_LIMIT", default_value_t = 64 * 1024 * 1024)]
    pub import_body_limit: usize,
    /// PostgreSQL connections ingest keeps open at most. Keep the sum over every service under the
    /// server's `max_connections`.
    #[arg(long, env = "INGEST_DB_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub db_pool_size: u32,
    /// Mini App requests a second one Telegram user of one organization may make, sustained.
    #[arg(long, env = "MINIAPP_RATE", default_value = "5")]
    pub miniapp_rate: NonZeroU32,
    /// Mini App requests one Telegram user of one organization may make in a burst.
    #[arg(long, env = "MINIAPP_BURST", default_value = "20")]
    pub miniapp_burst: NonZeroU32,
}

/// What every handler shares: one pointer, so handing it to a request costs one atomic increment.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub db: PgPool,
    pub broker: Arc<Broker>,
    /// POS token digests → integrations, for [`POS_TOKEN_TTL`].
    pub pos_tokens: moka::future::Cache<Vec<u8>, Integration>,
    /// Mini App requests per (organization, Telegram user): `MINIAPP_RATE` a second, bursts of
    /// `MINIAPP_BURST` (see `miniapp::MiniAppUser` for why the key is the claimed user).
    pub miniapp_limits: governor::DefaultKeyedRateLimiter<(i64, i64)>,
    /// Calls the Bot API (the bot's answers and its set-up).
    pub http: reqwest::Client,
    /// RabbitMQ's management API, when configured.
    pub management: Option<management::Management>,
    /// When `/metrics` last read the queues' depths from RabbitMQ.
    pub depths_read: health::DepthsRead,
    pub config: Arc<Config>,
}

/// How long a POS token, once looked up, is trusted without the database: receipts keep flowing
/// through a short database outage, and a revoked token stops working within this time.
pub const POS_TOKEN_TTL: Duration = Duration::from_secs(60);

/// Most POS tokens cached at once (one per cash register integration).
pub const POS_TOKENS_CACHED: u64 = 10_000;

impl AppState {
    /// The state of one ingest; fails only when the management API's client cannot be built.
    pub fn new(db: PgPool, config: Config) -> anyhow::Result<Self> {
        loyalty_service::telemetry::metrics();
        let broker = config.backends.broker();
        let pos_tokens = moka::future::Cache::builder()
            .max_capacity(POS_TOKENS_CACHED)
            .time_to_live(POS_TOKEN_TTL)
            .build();
        let quota =
            governor::Quota::per_second(config.miniapp_rate).allow_burst(config.miniapp_burst);
        let management = config
            .rabbitmq_management_url
            .as_deref()
            .filter(|url| !url.is_empty())
            .map(|url| management::Management::new(url, broker.vhost()))
            .transpose()?;
        Ok(Self(Arc::new(Shared {
            db,
            management,
            broker: Arc::new(broker),
            pos_tokens,
            depths_read: health::DepthsRead::default(),
            miniapp_limits: governor::RateLimiter::keyed(quota),
            http: reqwest::Client::new(),
            config: Arc::new(config),
        })))
    }
}

/// The whole HTTP service.
pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        // A browser pointed at the service finds the dashboard.
        .route("/", get(|| async { Redirect::to("/admin") }))
        .merge(openapi::router())
        .merge(pos::router())
        .merge(miniapp::router())
        .merge(telegram::router())
        .merge(dashboard::router())
        .merge(webapp::router())
        .nest("/admin/v1", admin::router(state.clone()));
    // The probes stay outside the limit: a busy ingest is alive, and says so.
    let routes = edge::limit_in_flight(routes, state.config.max_in_flight).merge(health::router());
    edge::layers(routes).with_state(state)
}

/// Connects, migrates and serves the API and the metrics until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let db = config.backends.database(config.db_pool_size).await?;
    // Refuses to start unable to read the bot tokens; seals those in clear or under an older key.
    let resealed = loyalty::orgs::prepare_bot_tokens(&db, &config.secrets.token_keys, true).await?;
    if resealed > 0 {
        tracing::info!(resealed, key = ?config.secrets.token_keys.current(), "bot tokens sealed under the current key");
    }
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("listening on {}", config.addr))?;
    let metrics_listener = tokio::net::TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("listening on {}", config.metrics_addr))?;
    tracing::info!(addr = %config.addr, metrics = %config.metrics_addr, "ingest listening");
    let state = AppState::new(db, config)?;
    // Declare the topology now if the broker is there; receipts reconnect by themselves otherwise.
    if let Err(err) = state.broker.channel().await {
        tracing::warn!(error = %err, "RabbitMQ not reachable at start; receipts answer 503 until it is");
    }
    tokio::spawn(forget_idle_miniapp_users(state.clone()));
    let limits = state.config.http.clone();
    let metrics = health::metrics_router(state.clone());
    let metrics_limits = limits.clone();
    let metrics = tokio::spawn(async move {
        server::serve(
            metrics_listener,
            metrics,
            &metrics_limits,
            loyalty_service::shutdown::signal(),
        )
        .await;
    });
    server::serve(
        listener,
        app(state),
        &limits,
        loyalty_service::shutdown::signal(),
    )
    .await;
    metrics.abort();
    Ok(())
}

/// How often the Mini App limiter forgets the users whose bucket is full again.
const MINIAPP_LIMITS_SWEEP: Duration = Duration::from_secs(10);

/// The Mini App limiter is keyed by the user id a request *claims*, before it is verified, so a
/// flood of made-up ids would grow it without bound: every [`MINIAPP_LIMITS_SWEEP`] it drops
/// the keys whose bucket has refilled (they would start afresh anyway).
async fn forget_idle_miniapp_users(state: AppState) {
    let mut sweep = tokio::time::interval(MINIAPP_LIMITS_SWEEP);
    loop {
        sweep.tick().await;
        state.miniapp_limits.retain_recent();
        state.miniapp_limits.shrink_to_fit();
    }
}
