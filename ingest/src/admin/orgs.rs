//! Organizations and their POS integrations.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use loyalty::orgs::{self, NewIntegration, OrgChanges, Organization};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::Path;
use crate::idempotency::Idempotent;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs", post(create_org))
        .route("/orgs/{org}", get(get_org).patch(update_org))
        .route("/orgs/{org}/integrations", post(create_integration))
        .route(
            "/orgs/{org}/imported-bonuses/expiry",
            put(set_imported_expiry),
        )
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportedExpiryRequest {
    /// The local day (`YYYY-MM-DD`, after today) at whose start the imported balances expire;
    /// `null`: they never expire (as imported).
    #[schema(
        pattern = r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$",
        example = "2027-03-01"
    )]
    pub expires_on: Option<String>,
}

/// Gives the organization's imported balances (lots that never expire: the legacy import's, and
/// the balances there were before lots were kept) an expiry: they burn at the start of
/// `expires_on` in the organization's time zone, what is left of them, and customers are told
/// `expiry_warning_days` before. Setting it again moves the date; `null` takes it away.
#[utoipa::path(put, path = "/admin/v1/orgs/{org}/imported-bonuses/expiry", tag = "organizations",
    request_body = ImportedExpiryRequest,
    responses((status = 200, body = loyalty::lots::ImportedExpiry), (status = 404, body = ErrorBody),
              (status = 422, description = "not a day after today", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn set_imported_expiry(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<ImportedExpiryRequest>,
) -> Result<Response, ApiError> {
    let expires_on = request.value.expires_on.as_deref();
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let organization = orgs::get(conn, org).await?;
            let expires_at = match expires_on {
                None => None,
                Some(text) => Some(
                    loyalty::rules::lots::start_of_local_day(
                        text,
                        organization.time_zone.0,
                        chrono::Utc::now(),
                    )
                    .map_err(|message| ApiError::invalid("expires_on", message))?,
                ),
            };
            Ok(loyalty::lots::set_imported_expiry(conn, org, expires_at).await?)
        })
        .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedOrg {
    pub id: i64,
}

/// Creates an organization (a tenant).
#[utoipa::path(post, path = "/admin/v1/orgs", tag = "organizations", request_body = crate::openapi::NewOrg,
    responses((status = 201, body = CreatedOrg),
              (status = 409, description = "a bot token given while the server has no TOKEN_KEYS", body = ErrorBody),
              (status = 422, description = "invalid, or a bot token Telegram refused", body = ErrorBody),
              (status = 503, description = "Telegram unreachable to set the bot up; nothing stored", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_org(
    State(state): State<AppState>,
    request: Idempotent<OrgChanges>,
) -> Result<Response, ApiError> {
    let keys = &state.config.secrets.token_keys;
    let state = &state;
    request
        .answer(&state.db, StatusCode::CREATED, async |conn| {
            let id = orgs::create(conn, keys, &request.value).await?;
            set_bot_up(state, conn, id, &request.value).await?;
            Ok(CreatedOrg { id })
        })
        .await
}

/// When the change stores a bot token: sets the bot up with Telegram (webhook and menu button,
/// when `PUBLIC_URL` is configured) and keeps its username, inside the transaction that stores
/// the token, so a token Telegram refuses or cannot check is not stored (see
/// `telegram::register_bot`).
async fn set_bot_up(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    org: i64,
    changes: &OrgChanges,
) -> Result<(), ApiError> {
    let Some(token) = changes
        .telegram_bot_token
        .as_deref()
        .filter(|t| !t.is_empty())
    else {
        return Ok(());
    };
    if let Some(username) = crate::telegram::register_bot(state, org, token).await? {
        orgs::set_bot_username(conn, org, &username).await?;
    }
    Ok(())
}

/// When the change replaces or removes a stored bot token: the old token and the new one (`""`
/// when removed), read before the change, so the old bot's webhook can be removed after it.
async fn replaced_bot_token(
    conn: &mut sqlx::PgConnection,
    keys: &loyalty::crypto::TokenKeys,
    org: i64,
    changes: &OrgChanges,
) -> Result<Option<(String, String)>, ApiError> {
    let Some(new) = &changes.telegram_bot_token else {
        return Ok(None);
    };
    let old = orgs::bot_token(conn, keys, org).await?;
    Ok(old.filter(|old| old != new).map(|old| (old, new.clone())))
}

/// An organization; the bot token is never returned, only whether it is set.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}", tag = "organizations",
    responses((status = 200, body = Organization), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn get_org(
    State(state): State<AppState>,
    Path(org): Path<i64>,
) -> Result<Json<Organization>, ApiError> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(orgs::get(&mut conn, org).await?))
}

/// Changes the fields present in the body.
#[utoipa::path(patch, path = "/admin/v1/orgs/{org}", tag = "organizations", request_body = OrgChanges,
    responses((status = 200, body = Organization), (status = 404, body = ErrorBody),
              (status = 409, description = "a bot token given while the server has no TOKEN_KEYS", body = ErrorBody),
              (status = 422, description = "invalid, or a bot token Telegram refused", body = ErrorBody),
              (status = 503, description = "Telegram unreachable to set the bot up or to remove the old bot's webhook; nothing stored", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn update_org(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<OrgChanges>,
) -> Result<Response, ApiError> {
    let keys = &state.config.secrets.token_keys;
    let state = &state;
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let replaced = replaced_bot_token(conn, keys, org, &request.value).await?;
            orgs::update(conn, keys, org, &request.value).await?;
            set_bot_up(state, conn, org, &request.value).await?;
            if let Some((old, new)) = &replaced {
                crate::telegram::release_bot(state, org, old, new).await?;
            }
            Ok(orgs::get(conn, org).await?)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewIntegrationRequest {
    /// The name `GET /api/v2/hello` answers with (the shop's system name).
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub system: String,
}

/// Creates a POS integration; its token is in this answer only.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/integrations", tag = "organizations",
    request_body = NewIntegrationRequest,
    responses((status = 201, body = NewIntegration), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_integration(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<NewIntegrationRequest>,
) -> Result<Response, ApiError> {
    let system = &request.value.system;
    // The answer holds the POS token, which is never stored in clear.
    request
        .answer_unstored(&state.db, StatusCode::CREATED, async |conn| {
            let created = orgs::create_integration(conn, org, system).await?;
            tracing::info!(org, integration = created.id, "POS integration created");
            Ok(created)
        })
        .await
}
