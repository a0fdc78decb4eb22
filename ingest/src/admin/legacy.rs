//! Import and export of the old system's JSON export.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use loyalty::legacy::{self, ImportOutcome};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::{Body, BodyLimit, Path};
use crate::idempotency::{IdempotencyKey, transact};

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
/// this very export was imported before.
#[utoipa::path(post, path = "/admin/v1/import", tag = "legacy", request_body = Object,
    responses((status = 201, body = ImportOutcome), (status = 200, description = "already imported", body = ImportOutcome),
              (status = 413, body = crate::openapi::ErrorBody),
              (status = 422, description = "a balance that differs from its history, names the customer", body = crate::openapi::ErrorBody)),
    security(("admin" = [])))]
pub async fn import(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body<serde_json::Value>,
) -> Result<Response, ApiError> {
    let key = IdempotencyKey::from_headers(&headers)?;
    let created = AtomicBool::new(true);
    let mut response = transact(
        &state.db,
        key.as_ref(),
        &body.digest,
        StatusCode::CREATED,
        async |conn| {
            let outcome = legacy::import(conn, &body.value).await?;
            created.store(outcome.created, Ordering::Relaxed);
            tracing::info!(
                org = outcome.id,
                customers = outcome.customers,
                created = outcome.created,
                "legacy export imported"
            );
            Ok(outcome)
        },
    )
    .await?;
    if !created.load(Ordering::Relaxed) {
        *response.status_mut() = StatusCode::OK;
    }
    Ok(response)
}

/// The organization in the legacy export's format.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/export", tag = "legacy",
    responses((status = 200, description = "the legacy export", body = Object), (status = 404, body = crate::openapi::ErrorBody)),
    security(("admin" = [])))]
pub async fn export(
    State(state): State<AppState>,
    Path(org): Path<i64>,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin().await?;
    let document = legacy::export(&mut tx, org).await?;
    Ok(Json(document).into_response())
}
