//! Operations: the queues' depths, the dead letters, and replaying them.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use std::time::Duration;

use loyalty::db::PageStart;
use loyalty::queue::{DeadLetter, QueueDepth, Stream};
use loyalty::status_counts::{self, Counted, StatusCount};
use serde::{Deserialize, Serialize};

use super::receipts::{
    NOTIFICATION_STATUSES, NotificationRecord, RECEIPT_STATUSES, ReceiptRecord, notification_rows,
    receipt_rows,
};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Query};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/ops/summary", get(summary))
        .route("/ops/queues", get(queues))
        .route("/ops/dead-letters", get(dead_letters))
        .route("/ops/dead-letters/replay", post(replay))
}

fn broker_down(err: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %err, "RabbitMQ not reachable for an operator request");
    ApiError::unavailable("RabbitMQ is not reachable")
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
    responses((status = 200, body = Queues), (status = 503, body = ErrorBody)), security(("admin" = [])))]
pub async fn queues(State(state): State<AppState>) -> Result<Json<Queues>, ApiError> {
    let (items, _) = queue_depths(&state).await.map_err(broker_down)?;
    Ok(Json(Queues { items }))
}

/// The queues' depths from AMQP, with the management plugin's figures when it answers (the flag).
async fn queue_depths(state: &AppState) -> lapin::Result<(Vec<QueueDepth>, bool)> {
    let mut depths = state.broker.depths().await?;
    let management = match &state.management {
        Some(management) => management.enrich(&mut depths).await,
        None => false,
    };
    Ok((depths, management))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SummaryQuery {
    /// Only this organization's receipts and notifications; all when absent.
    pub org: Option<i64>,
}

/// The latest failures, newest first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Failures {
    /// Receipts retrying or dead.
    pub receipts: Vec<ReceiptRecord>,
    /// Notifications retrying, dead or uncertain (never resent by themselves).
    pub notifications: Vec<NotificationRecord>,
}

/// Everything the dashboard shows, in one request.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub generated_at: chrono::DateTime<chrono::Utc>,
    /// Every queue of the topology; null while RabbitMQ is unreachable.
    pub queues: Option<Vec<QueueDepth>>,
    /// Why `queues` is null.
    pub queues_error: Option<String>,
    /// Whether the unacknowledged counts and rates came from the management plugin.
    pub management: bool,
    pub receipts: Vec<StatusCount>,
    pub notifications: Vec<StatusCount>,
    pub failures: Failures,
}

/// How many of the latest failures the summary lists.
const FAILURES_SHOWN: i64 = 10;

/// How long the summary waits for RabbitMQ before answering without the queues.
const QUEUES_TIMEOUT: Duration = Duration::from_secs(3);

/// The queues, the receipts and notifications by status, and the latest failures: the dashboard's
/// one request. The database parts are answered while RabbitMQ is down (its part says so).
#[utoipa::path(get, path = "/admin/v1/ops/summary", tag = "operations", params(SummaryQuery),
    responses((status = 200, body = Summary)), security(("admin" = [])))]
pub async fn summary(
    State(state): State<AppState>,
    Query(query): Query<SummaryQuery>,
) -> Result<Json<Summary>, ApiError> {
    let org = query.org;
    let (queues, receipts, notifications, failed_receipts, failed_notifications) = tokio::join!(
        tokio::time::timeout(QUEUES_TIMEOUT, queue_depths(&state)),
        status_counts::count(&state.db, Counted::Receipts, org, &RECEIPT_STATUSES),
        status_counts::count(
            &state.db,
            Counted::Notifications,
            org,
            &NOTIFICATION_STATUSES
        ),
        receipt_rows(
            &state.db,
            org,
            Some(&["retrying", "dead"]),
            FAILURES_SHOWN,
            &PageStart::Offset(0)
        ),
        notification_rows(
            &state.db,
            org,
            Some(&["retrying", "dead", "uncertain"]),
            FAILURES_SHOWN,
            &PageStart::Offset(0)
        ),
    );
    let (queues, management, queues_error) = match queues {
        Ok(Ok((depths, management))) => (Some(depths), management, None),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "RabbitMQ not reachable for the operations summary");
            (None, false, Some("RabbitMQ is not reachable".to_owned()))
        }
        Err(_) => (
            None,
            false,
            Some(format!(
                "RabbitMQ did not answer in {} s",
                QUEUES_TIMEOUT.as_secs()
            )),
        ),
    };
    Ok(Json(Summary {
        generated_at: chrono::Utc::now(),
        queues,
        queues_error,
        management,
        receipts: receipts?,
        notifications: notifications?,
        failures: Failures {
            receipts: failed_receipts?,
            notifications: failed_notifications?,
        },
    }))
}

/// How many dead letters a listing shows when `limit` is absent, and at most.
const DEAD_LETTERS_SHOWN: usize = 100;
const MAX_DEAD_LETTERS: usize = 500;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DeadLetterQuery {
    /// receipts or notifications.
    pub queue: String,
    /// At most this many (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetters {
    pub items: Vec<DeadLetter>,
}

/// The messages in a stream's dead-letter queue, oldest first, with their last error.
#[utoipa::path(get, path = "/admin/v1/ops/dead-letters", tag = "operations", params(DeadLetterQuery),
    responses((status = 200, body = DeadLetters), (status = 503, body = ErrorBody)), security(("admin" = [])))]
pub async fn dead_letters(
    State(state): State<AppState>,
    Query(query): Query<DeadLetterQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    let limit = query.limit.unwrap_or(DEAD_LETTERS_SHOWN);
    if !(1..=MAX_DEAD_LETTERS).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_DEAD_LETTERS}"),
        ));
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
    responses((status = 200, body = Replayed), (status = 422, body = ErrorBody),
              (status = 503, body = ErrorBody)), security(("admin" = [])))]
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
