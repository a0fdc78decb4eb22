//! Liveness (`/healthz`: the process answers) and readiness (`/readyz`: PostgreSQL and RabbitMQ
//! are reachable, so a load balancer sends traffic only where it can be served).

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
        .route("/metrics", get(metrics))
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

/// Prometheus text format: this process's counters and histograms, and the queues' depths read
/// from RabbitMQ at scrape time.
async fn metrics(State(state): State<AppState>) -> String {
    if let Ok(Ok(depths)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), state.broker.depths()).await
    {
        for q in depths {
            metrics::gauge!("loyalty_queue_messages", "queue" => q.name.clone(), "role" => q.role)
                .set(f64::from(q.messages_ready));
            metrics::gauge!("loyalty_queue_consumers", "queue" => q.name, "role" => q.role)
                .set(f64::from(q.consumers));
        }
    }
    loyalty::telemetry::metrics().render()
}
