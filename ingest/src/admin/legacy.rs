//! Import and export of the old system's JSON export.

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use loyalty::legacy::{self, ImportOutcome};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{BodyLimit, Path};
use crate::idempotency::Idempotent;

pub fn router(import_limit: usize) -> Router<AppState> {
    Router::new()
        .route(
            "/import",
            post(import).layer(DefaultBodyLimit::max(import_limit)),
        )
        .route_layer(Extension(BodyLimit(import_limit)))
        .route("/orgs/{org}/export", get(export))
}

/// Imports a legacy export as a new organization: 201 the first time, 200 with the same id when
/// this very export was imported before. A retry under the same Idempotency-Key gets the status
/// its first answer had.
#[utoipa::path(post, path = "/admin/v1/import", tag = "legacy", request_body = Object,
    responses((status = 201, body = ImportOutcome), (status = 200, description = "already imported", body = ImportOutcome),
              (status = 413, body = ErrorBody),
              (status = 422, description = "a balance that differs from its history, names the customer", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn import(
    State(state): State<AppState>,
    request: Idempotent<serde_json::Value>,
) -> Result<Response, ApiError> {
    let status = |outcome: &ImportOutcome| {
        if outcome.created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        }
    };
    request
        .answer_with(&state.db, status, async |conn| {
            let outcome = legacy::import(conn, &request.value).await?;
            tracing::info!(
                org = outcome.id,
                customers = outcome.customers,
                created = outcome.created,
                "legacy export imported"
            );
            Ok(outcome)
        })
        .await
}

/// The organization in the legacy export's format.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/export", tag = "legacy",
    responses((status = 200, description = "the legacy export", body = Object), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Path(org): Path<i64>,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin().await?;
    let document = legacy::export(&mut tx, org).await?;
    Ok(Json(document).into_response())
}
