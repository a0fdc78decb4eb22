//! Operations: the queues' depths, the dead letters, and replaying them.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use loyalty::queue::{DeadLetter, QueueDepth, Stream};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, Query};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ops/queues", get(queues))
        .route("/ops/dead-letters", get(dead_letters))
        .route("/ops/dead-letters/replay", post(replay))
}

fn broker_down(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "RabbitMQ not reachable for an operator request");
    ApiError::Unavailable {
        message: "RabbitMQ is not reachable".into(),
        retry_after_secs: 5,
    }
}

fn stream(name: &str) -> Result<Stream, ApiError> {
    Stream::parse(name)
        .ok_or_else(|| ApiError::invalid("queue", "must be receipts or notifications"))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Queues {
    pub items: Vec<QueueDepth>,
}

/// Every queue of the topology: messages ready and consumers (read from RabbitMQ itself).
#[utoipa::path(get, path = "/admin/v1/ops/queues", tag = "operations",
    responses((status = 200, body = Queues), (status = 503, body = crate::openapi::ErrorBody)), security(("admin" = [])))]
pub async fn queues(State(state): State<AppState>) -> Result<Json<Queues>, ApiError> {
    Ok(Json(Queues {
        items: state.broker.depths().await.map_err(broker_down)?,
    }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeadLetterQuery {
    /// receipts or notifications.
    pub queue: String,
    /// At most this many (1–500, default 100).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    pub items: Vec<DeadLetter>,
}

/// The messages in a stream's dead-letter queue, oldest first, with their last error.
#[utoipa::path(get, path = "/admin/v1/ops/dead-letters", tag = "operations", params(DeadLetterQuery),
    responses((status = 200, body = DeadLetters), (status = 503, body = crate::openapi::ErrorBody)), security(("admin" = [])))]
pub async fn dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let items = state
        .broker
        .dead_letters(stream(&query.queue)?, limit)
        .await
        .map_err(broker_down)?;
    Ok(Json(DeadLetters { items }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// receipts or notifications.
    pub queue: String,
    /// The message ids to replay; all when absent.
    pub ids: Option<Vec<String>>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    pub replayed: Vec<String>,
}

/// Moves dead letters (all, or the named ones) back to their queue for a fresh set of attempts.
/// A replayed receipt is still applied at most once.
#[utoipa::path(post, path = "/admin/v1/ops/dead-letters/replay", tag = "operations", request_body = ReplayRequest,
    responses((status = 200, body = Replayed), (status = 422, body = crate::openapi::ErrorBody),
              (status = 503, body = crate::openapi::ErrorBody)), security(("admin" = [])))]
pub async fn replay(
    State(state): State<AppState>,
    body: Body<ReplayRequest>,
) -> Result<Json<Replayed>, ApiError> {
    let stream = stream(&body.value.queue)?;
    let replayed = state
        .broker
        .replay(stream, body.value.ids.as_deref())
        .await
        .map_err(broker_down)?;
    tracing::info!(queue = %body.value.queue, count = replayed.len(), "dead letters replayed");
    Ok(Json(Replayed { replayed }))
}
