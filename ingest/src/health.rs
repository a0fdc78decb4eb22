//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: PostgreSQL and RabbitMQ
//! are reachable, so a load balancer sends traffic only where it can be served), and the metrics,
//! served on their own address (`METRICS_ADDR`), not the API's.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

/// `GET /metrics`, for the metrics listener.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// The process answers.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// PostgreSQL and RabbitMQ are reachable.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = crate::openapi::Readiness), (status = 503, description = "a backend is unreachable", body = crate::openapi::Readiness)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let (postgres, rabbitmq) = tokio::join!(
        sqlx::query("select 1").execute(&state.db),
        state.broker.is_reachable()
    );
    let postgres = postgres.is_ok();
    let ready = postgres && rabbitmq;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({ "status": if ready { "ready" } else { "unavailable" }, "postgres": postgres, "rabbitmq": rabbitmq }),
        ),
    )
}

/// How long scrapes reuse the queues' depths: each read is a passive declare per queue on the
/// broker, and scrapes in a burst (≈500 a second once saturated RabbitMQ) must not each make one.
const DEPTHS_FRESH_FOR: Duration = Duration::from_secs(5);

/// How long a scrape waits for RabbitMQ's depths before answering with the gauges it has.
const DEPTHS_TIMEOUT: Duration = Duration::from_secs(2);

/// When the depths were last read. The gauges hold the figures; a scrape that finds them stale
/// reads under this lock, so concurrent scrapes wait for that one read instead of making their own.
#[derive(Default)]
pub struct DepthsRead(tokio::sync::Mutex<Option<Instant>>);

/// Prometheus text format: this process's counters and histograms, and the queues' depths read
/// from RabbitMQ at most every [`DEPTHS_FRESH_FOR`].
async fn metrics(State(state): State<AppState>) -> String {
    let mut last = state.depths_read.0.lock().await;
    if last.is_none_or(|at| at.elapsed() >= DEPTHS_FRESH_FOR) {
        // A failed read counts too: an unreachable broker is not asked again on every scrape.
        *last = Some(Instant::now());
        if let Ok(Ok(depths)) = tokio::time::timeout(DEPTHS_TIMEOUT, state.broker.depths()).await {
            for q in depths {
                metrics::gauge!("loyalty_queue_messages", "queue" => q.name.clone(), "role" => q.role)
                    .set(f64::from(q.messages_ready));
                metrics::gauge!("loyalty_queue_consumers", "queue" => q.name, "role" => q.role)
                    .set(f64::from(q.consumers));
            }
        }
    }
    drop(last);
    loyalty_service::telemetry::metrics().render()
}
