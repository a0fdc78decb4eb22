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
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

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
