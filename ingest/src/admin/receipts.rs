//! Receipts as the workers recorded them, and attaching an unmatched one to a customer.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use loyalty::bills::deserialize_id;
use loyalty::db::PageStart;
use loyalty::receipts::{self, Attached, ReceiptKey, ReceiptStatus};
use serde::Deserialize;

use super::{After, AfterQuery, Listing, Page, PageQuery};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::idempotency::Idempotent;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/receipts", get(list_receipts))
        .route("/orgs/{org}/notifications", get(list_notifications))
        .route("/ops/receipts", get(ops_receipts))
        .route("/ops/notifications", get(ops_notifications))
        .route(
            "/orgs/{org}/receipts/{receipt}/attach",
            post(attach_receipt),
        )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachRequest {
    #[serde(deserialize_with = "deserialize_id")]
    #[schema(schema_with = loyalty::bills::id_schema)]
    pub customer_id: i64,
}

/// Applies an unmatched sale to a customer, once.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/receipts/{receipt}/attach", tag = "receipts",
    request_body = AttachRequest,
    responses((status = 200, body = Attached), (status = 404, body = ErrorBody),
              (status = 409, description = "the receipt is not unmatched (already applied)", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn attach_receipt(
    State(state): State<AppState>,
    Path((org, receipt)): Path<(i64, String)>,
    request: Idempotent<AttachRequest>,
) -> Result<Response, ApiError> {
    let customer = request.value.customer_id;
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let attached = receipts::attach(conn, org, &receipt, customer).await?;
            tracing::info!(org, receipt = %receipt, customer, "unmatched receipt attached");
            Ok(attached)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReceiptQuery {
    /// processing, processed, duplicate, unmatched, ignored, retrying or dead; all when absent.
    pub status: Option<String>,
}

pub use loyalty::receipts::ReceiptRecord;

/// The organization's receipts, latest change first; pages by `offset` or `after` (`next_cursor`).
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/receipts", tag = "receipts", params(ReceiptQuery, PageQuery, AfterQuery),
    responses((status = 200, body = Listing<ReceiptRecord>)), security(("admin" = [])))]
pub async fn list_receipts(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<ReceiptQuery>,
    page: Page,
    after: After,
) -> Result<Json<Listing<ReceiptRecord>>, ApiError> {
    receipts_of(&state, Some(org), query.status, page, after).await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OpsQuery {
    /// Only this organization's; all when absent.
    pub org: Option<i64>,
    pub status: Option<String>,
}

/// Receipts of every organization (or one), latest first: what operators watch.
#[utoipa::path(get, path = "/admin/v1/ops/receipts", tag = "operations", params(OpsQuery, PageQuery, AfterQuery),
    responses((status = 200, body = Listing<ReceiptRecord>)), security(("admin" = [])))]
pub async fn ops_receipts(
    State(state): State<AppState>,
    Query(q): Query<OpsQuery>,
    page: Page,
    after: After,
) -> Result<Json<Listing<ReceiptRecord>>, ApiError> {
    receipts_of(&state, q.org, q.status, page, after).await
}

/// Notifications of every organization (or one), latest first.
#[utoipa::path(get, path = "/admin/v1/ops/notifications", tag = "operations", params(OpsQuery, PageQuery, AfterQuery),
    responses((status = 200, body = Listing<NotificationRecord>)), security(("admin" = [])))]
pub async fn ops_notifications(
    State(state): State<AppState>,
    Query(q): Query<OpsQuery>,
    page: Page,
    after: After,
) -> Result<Json<Listing<NotificationRecord>>, ApiError> {
    notifications_of(&state, q.org, q.status, page, after).await
}

async fn receipts_of(
    state: &AppState,
    org: Option<i64>,
    status: Option<String>,
    page: Page,
    after: After,
) -> Result<Json<Listing<ReceiptRecord>>, ApiError> {
    check_status(status.as_deref(), &RECEIPT_STATUSES)?;
    let start = after.start(page, ReceiptKey::parse)?;
    let statuses: Option<Vec<&str>> = status.as_deref().map(|s| vec![s]);
    let rows = receipt_rows(&state.db, org, statuses.as_deref(), page.limit, &start).await?;
    Ok(Json(Listing::keyed(rows, page, &after, |r| {
        ReceiptKey::of(r).cursor()
    })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct NotificationQuery {
    /// pending, sending, sent, skipped, unreachable, retrying, dead or uncertain; all when absent.
    pub status: Option<String>,
}

pub use loyalty::notifications::NotificationRecord;

/// The organization's notifications, latest first; pages by `offset` or `after` (`next_cursor`).
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/notifications", tag = "receipts", params(NotificationQuery, PageQuery, AfterQuery),
    responses((status = 200, body = Listing<NotificationRecord>)), security(("admin" = [])))]
pub async fn list_notifications(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<NotificationQuery>,
    page: Page,
    after: After,
) -> Result<Json<Listing<NotificationRecord>>, ApiError> {
    notifications_of(&state, Some(org), query.status, page, after).await
}

async fn notifications_of(
    state: &AppState,
    org: Option<i64>,
    status: Option<String>,
    page: Page,
    after: After,
) -> Result<Json<Listing<NotificationRecord>>, ApiError> {
    check_status(status.as_deref(), &NOTIFICATION_STATUSES)?;
    let start = after.start(page, loyalty::db::parse_id_cursor)?;
    let statuses: Option<Vec<&str>> = status.as_deref().map(|s| vec![s]);
    let rows = notification_rows(&state.db, org, statuses.as_deref(), page.limit, &start).await?;
    Ok(Json(Listing::keyed(rows, page, &after, |n| {
        loyalty::db::id_cursor(n.id)
    })))
}

/// Every status a receipt's record can have, in the order the dashboard shows them.
pub const RECEIPT_STATUSES: [&str; 7] = ReceiptStatus::NAMES;

/// Every status a notification can have, in the order the dashboard shows them.
pub const NOTIFICATION_STATUSES: [&str; 8] = loyalty::notifications::STATUSES;

/// Receipts of one organization (or all), with one of `statuses` (or any), latest change first.
pub async fn receipt_rows(
    db: &sqlx::PgPool,
    org: Option<i64>,
    statuses: Option<&[&str]>,
    limit: i64,
    start: &PageStart<ReceiptKey>,
) -> sqlx::Result<Vec<ReceiptRecord>> {
    loyalty::receipts::list(db, org, statuses, limit, start).await
}

/// Notifications of one organization (or all), with one of `statuses` (or any), latest first.
pub async fn notification_rows(
    db: &sqlx::PgPool,
    org: Option<i64>,
    statuses: Option<&[&str]>,
    limit: i64,
    start: &PageStart<i64>,
) -> sqlx::Result<Vec<NotificationRecord>> {
    loyalty::notifications::list(db, org, statuses, limit, start).await
}

/// A `?status=` filter must name one of the statuses the list has.
fn check_status(status: Option<&str>, allowed: &[&str]) -> Result<(), ApiError> {
    match status {
        Some(status) if !allowed.contains(&status) => Err(ApiError::invalid(
            "status",
            format!("must be one of {}", allowed.join(", ")),
        )),
        _ => Ok(()),
    }
}
