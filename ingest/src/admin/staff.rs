//! The organization's staff (Telegram users who run it from the Mini App, with a role) and its
//! API keys (for the shop's own systems): added, changed and removed by its owners.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, patch};
use axum::{Json, Router};
use loyalty::access::{self, ApiKey, NewApiKey, Role, StaffMember};
use loyalty::orgs;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Path;
use crate::idempotency::{Idempotent, NoBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/staff", get(list_staff).post(add_staff))
        .route(
            "/orgs/{org}/staff/{telegram_id}",
            patch(change_staff).delete(remove_staff),
        )
        .route("/orgs/{org}/api-keys", get(list_keys).post(create_key))
        .route("/orgs/{org}/api-keys/{id}", delete(revoke_key))
}

/// The organization's staff, owners first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StaffList {
    pub items: Vec<StaffMember>,
}

/// The organization's staff, owners first.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/staff", tag = "access",
    responses((status = 200, body = StaffList), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner (or reader key)", body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn list_staff(
    State(state): State<AppState>,
    Path(org): Path<i64>,
) -> Result<Json<StaffList>, ApiError> {
    let mut conn = state.db.acquire().await?;
    orgs::get(&mut conn, org).await?;
    Ok(Json(StaffList {
        items: access::list_staff(&mut conn, org).await?,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStaff {
    /// The Telegram user's id (their Mini App's init data carries it).
    pub telegram_id: i64,
    /// owner or cashier.
    pub role: Role,
    /// How the shop calls them, at most 200 characters.
    #[schema(max_length = 200)]
    pub name: Option<String>,
}

/// Makes a Telegram user the organization's staff with a role: from their next request, the
/// Mini App shows them the staff view and they call these routes with their init data.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/staff", tag = "access", request_body = NewStaff,
    responses((status = 201, body = StaffMember), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner", body = ErrorBody),
              (status = 409, description = "staff already (`staff_exists`)", body = ErrorBody),
              (status = 422, description = "a reader (keys only), or not a Telegram id", body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn add_staff(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<NewStaff>,
) -> Result<Response, ApiError> {
    let body = &request.value;
    let actor = request.actor();
    request
        .answer(&state.db, StatusCode::CREATED, async |conn| {
            orgs::get(conn, org).await?;
            let name = body.name.as_deref().unwrap_or("");
            let added =
                access::add_staff(conn, org, body.telegram_id, body.role, name, actor).await?;
            tracing::info!(org, telegram_id = added.telegram_id, role = added.role.as_str(), %actor, "staff added");
            Ok(added)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StaffChange {
    /// owner or cashier.
    pub role: Role,
}

/// Changes a staff member's role. The last owner cannot be demoted (409 `last_owner`).
#[utoipa::path(patch, path = "/admin/v1/orgs/{org}/staff/{telegram_id}", tag = "access",
    request_body = StaffChange,
    responses((status = 200, body = StaffMember), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner", body = ErrorBody),
              (status = 409, description = "the last owner (`last_owner`)", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn change_staff(
    State(state): State<AppState>,
    Path((org, telegram_id)): Path<(i64, i64)>,
    request: Idempotent<StaffChange>,
) -> Result<Response, ApiError> {
    let role = request.value.role;
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let changed = access::set_staff_role(conn, org, telegram_id, role).await?;
            tracing::info!(org, telegram_id, role = role.as_str(), "staff role changed");
            Ok(changed)
        })
        .await
}

/// Removes a staff member; the last owner cannot be removed (409 `last_owner`). Answers with
/// who was removed.
#[utoipa::path(delete, path = "/admin/v1/orgs/{org}/staff/{telegram_id}", tag = "access",
    responses((status = 200, body = StaffMember), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner", body = ErrorBody),
              (status = 409, description = "the last owner (`last_owner`)", body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn remove_staff(
    State(state): State<AppState>,
    Path((org, telegram_id)): Path<(i64, i64)>,
    request: Idempotent<NoBody>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let removed = access::remove_staff(conn, org, telegram_id).await?;
            tracing::info!(org, telegram_id, "staff removed");
            Ok(removed)
        })
        .await
}

/// The organization's API keys, newest first, revoked ones included; never their secrets.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyList {
    pub items: Vec<ApiKey>,
}

/// The organization's API keys, newest first, revoked ones included; never their secrets.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/api-keys", tag = "access",
    responses((status = 200, body = KeyList), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner (or reader key)", body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn list_keys(
    State(state): State<AppState>,
    Path(org): Path<i64>,
) -> Result<Json<KeyList>, ApiError> {
    let mut conn = state.db.acquire().await?;
    orgs::get(&mut conn, org).await?;
    Ok(Json(KeyList {
        items: access::list_keys(&mut conn, org).await?,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// What the key is for ("accounting", "BI export"), 1 to 200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// owner, cashier or reader.
    pub role: Role,
}

/// Creates an API key; its secret is in this answer only (it is kept as a digest). An
/// `Idempotency-Key` is not honoured here, since the answer is never stored: a retry makes
/// another key, and the unused one is revoked.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/api-keys", tag = "access", request_body = NewKey,
    responses((status = 201, body = NewApiKey), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn create_key(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<NewKey>,
) -> Result<Response, ApiError> {
    let body = &request.value;
    let actor = request.actor();
    request
        .answer_unstored(&state.db, StatusCode::CREATED, async |conn| {
            orgs::get(conn, org).await?;
            let created = access::create_key(conn, org, &body.name, body.role, actor).await?;
            tracing::info!(org, key = created.id, role = created.role.as_str(), %actor, "API key created");
            Ok(created)
        })
        .await
}

/// Revokes an API key: the next request with it is a 401. Answers with the key as it is now.
#[utoipa::path(delete, path = "/admin/v1/orgs/{org}/api-keys/{id}", tag = "access",
    responses((status = 200, body = ApiKey), (status = 404, body = ErrorBody),
              (status = 403, description = "not this organization's owner", body = ErrorBody)),
    security(("admin" = []), ("api_key" = []), ("tma" = [])))]
pub async fn revoke_key(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<NoBody>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let revoked = access::revoke_key(conn, org, id).await?;
            tracing::info!(org, key = id, "API key revoked");
            Ok(revoked)
        })
        .await
}
