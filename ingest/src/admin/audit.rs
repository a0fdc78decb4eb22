//! The organization's audit trail: every change its staff, its keys and the platform made.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use loyalty::access::{self, AuditEntry};
use loyalty::orgs;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};

pub fn router() -> Router<AppState> {
    Router::new().route("/orgs/{org}/audit", get(trail))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// The `next_before` of the previous page.
    #[param(minimum = 1)]
    pub before: Option<i64>,
    /// 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Only this caller's changes: `platform`, `staff:<telegram id>` or `key:<id>`.
    pub actor: Option<String>,
}

/// One page of the audit trail, and where the next one starts.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Pass as `before` for the next page; null at the end.
    pub next_before: Option<i64>,
}

/// The audit trail, newest first, a page at a time: who (`actor`) did what (`action`), to which
/// customer, with what the request said.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/audit", tag = "access", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner (or reader key)", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn trail(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    let limit = query.limit.unwrap_or(super::DEFAULT_PAGE);
    if !(1..=super::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {}", super::MAX_PAGE),
        ));
    }
    if query.before.is_some_and(|b| b < 1) {
        return Err(ApiError::invalid(
            "before",
            "must be a next_before of an earlier page",
        ));
    }
    let mut conn = state.db.acquire().await?;
    orgs::get(&mut conn, org).await?;
    let items = access::audit_page(
        &mut conn,
        org,
        query.before,
        query.actor.as_deref().filter(|a| !a.is_empty()),
        limit,
    )
    .await?;
    let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == limit;
    let next_before = full.then(|| items.last().map(|e| e.id)).flatten();
    Ok(Json(AuditPage { items, next_before }))
}
