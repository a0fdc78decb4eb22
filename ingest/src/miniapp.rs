//! The customers' Telegram Mini App API (`/app/v1`), as the old system served it: a customer
//! opens the shop's bot, sees their balances and history, and enters a friend's promo code. The
//! caller is the Telegram user the init data was signed for, and can only ever read themselves.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use loyalty::access::{self, Role};
use loyalty::customers;
use loyalty::init_data::TelegramUser;
use loyalty::ledger::{self, HistoryEntry};
use loyalty::legacy;
use loyalty::orgs::Organization;
use loyalty::standing;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Body, Query};
use crate::idempotency::transact;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/app/v1/orgs/{org}/me", get(me))
        .route("/app/v1/orgs/{org}/me/promo", post(promo))
        .route("/app/v1/orgs/{org}/me/history", get(history))
        .route("/app/v1/orgs/{org}/me/birth_date", put(birth_date))
        .route("/app/v1/orgs/{org}/me/code.svg", get(code_svg))
        .route("/app/v1/orgs/{org}/me/write-access", post(write_access))
}

/// The organization and the Telegram user of a Mini App request. Anything wrong with the
/// `Authorization: tma <initData>` header is the same 401, with no hint which part failed.
///
/// The rate limit comes first, before the two queries that find the bot token and before the
/// HMAC, so a flood is refused without touching the database. It is keyed by the organization
/// and the user id the init data *claims*: a legitimate client always claims its own, so it gets
/// its own bucket. The client address would be the proxy's for everyone behind it, so one
/// flooding client would starve every customer; a claimed id lets a forger throttle only the
/// one user whose id it knows and keeps claiming, never the others. Init data that claims no
/// user is refused before the limit, also without the database. Made-up ids each get a bucket of
/// their own (the limiter forgets refilled ones, see `forget_idle_miniapp_users`): a spray of
/// them is for the per-address limit of the proxy in front, which knows the client's address.
pub struct MiniAppUser {
    pub org: Organization,
    pub user: TelegramUser,
    /// The signed `startapp` parameter of the link that opened the app.
    pub start_param: Option<String>,
}

impl FromRequestParts<AppState> for MiniAppUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let init = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("tma"))
            .map(|(_, data)| data.trim().to_owned())
            .ok_or(ApiError::Unauthorized)?;
        // An organization that does not exist is the same 401 as a bad signature, so the ids
        // of the organizations cannot be enumerated.
        let axum::extract::Path(params) =
            axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|_| ApiError::Unauthorized)?;
        let org_id: i64 = params
            .get("org")
            .and_then(|o| o.parse().ok())
            .ok_or(ApiError::Unauthorized)?;
        let (org, valid) = crate::admin::access::telegram_user(state, org_id, &init).await?;
        Ok(MiniAppUser {
            org,
            user: valid.user,
            start_param: valid.start_param,
        })
    }
}

/// The caller as a customer in the legacy shape with the newest 50 movements and invoices
/// ([`legacy::profile`]; `history_next_before` goes on in `…/me/history`), created on the first
/// visit, with the shop's contacts and bonus settings for a "how it works" screen, where the
/// customer stands (pending bonuses, the next expiry, the tier, the share of a bill bonuses may
/// pay), the link that shares their promo code, whether the bot may write to them, and their role
/// if they are the shop's staff. The first visit through a friend's link (`start_param` = the
/// friend's code) applies the code with the promo rules and says how that went in `referral`;
/// later visits never retry it.
#[utoipa::path(get, path = "/app/v1/orgs/{org}/me", tag = "Mini App", params(("org" = i64, Path)),
    responses((status = 200, body = crate::openapi::MiniAppProfile)), security(("tma" = [])))]
async fn me(State(state): State<AppState>, caller: MiniAppUser) -> Result<Json<Value>, ApiError> {
    let org = &caller.org;
    let mut tx = state.db.begin().await?;
    let (id, first_visit) = customers::visit(&mut tx, org, &caller.user).await?;
    if caller.user.allows_write_to_pm == Some(true) {
        access::allow_messages(&mut tx, org.id, caller.user.id).await?;
    }
    tx.commit().await?;
    if first_visit {
        tracing::info!(org = org.id, customer = id, "first Mini App visit");
    }
    // After the visit's commit, as `promo` does, so the promo takes the locks in the program's order.
    let referral = match caller.start_param.as_deref().filter(|p| is_promo_code(p)) {
        Some(code) if first_visit => Some(try_referral(&state, org, id, code).await?),
        _ => None,
    };
    let mut tx = state.db.begin().await?;
    let profile =
        legacy::profile(&mut tx, org.id, org.time_zone, id, legacy::PROFILE_NEWEST).await?;
    let customer = profile.customer;
    let standing = standing::standing(&mut tx, org, id).await?;
    let can_message = customers::can_message(&mut tx, org.id, id).await?;
    let staff_role = access::staff_role(&mut tx, org.id, caller.user.id).await?;
    tx.commit().await?;
    let share_link = access::share_link(
        org.telegram_bot_username.as_deref(),
        org.miniapp_short_name.as_deref(),
        &customer.referral_code,
    );
    let mut body = serde_json::to_value(&customer).map_err(anyhow::Error::from)?;
    body["organization"] = json!({
        "name": org.details.name,
        "phone_numbers": org.details.phone_numbers,
        "address": org.details.address,
        "whatsapp_link": org.details.whatsapp_link,
        "telegram_link": org.details.telegram_link,
        "currency_symbol": org.currency_symbol,
    });
    body["bonus_program_settings"] =
        serde_json::to_value(&org.bonus_program_settings).map_err(anyhow::Error::from)?;
    body["history_next_before"] = json!(profile.history_next_before);
    body["share_link"] = json!(share_link);
    body["can_message"] = json!(can_message);
    // Staff are owners or cashiers; a reader is a key's role, never a person's.
    body["staff_role"] = json!(staff_role.filter(|r| *r != Role::Reader).map(Role::as_str));
    if let Some(referral) = referral {
        body["referral"] = serde_json::to_value(&referral).map_err(anyhow::Error::from)?;
    }
    // Where the customer stands: pending bonuses, the next expiry, the tier, the bill share.
    if let (Some(body), Value::Object(fields)) = (
        body.as_object_mut(),
        serde_json::to_value(&standing).map_err(anyhow::Error::from)?,
    ) {
        body.extend(fields);
    }
    Ok(Json(body))
}

/// Whether a link's parameter means to be a promo code (`PROMO…`, any case); anything else a
/// link may carry is not a referral and is left alone.
pub(crate) fn is_promo_code(param: &str) -> bool {
    param
        .trim()
        .get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("PROMO"))
}

/// How applying a friend's code from a link went: refused codes are an answer, not an error.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Referral {
    /// The code as the link carried it.
    pub code: String,
    pub applied: bool,
    /// Why it was not applied, for people.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why it was not applied, for programs: the error code `POST …/me/promo` would answer with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Applies `code` for customer `id` with the promo rules (the same as `POST …/me/promo`). A code
/// the rules refuse comes back as `applied: false` with the reason; only the database failing
/// is an error.
pub(crate) async fn try_referral(
    state: &AppState,
    org: &Organization,
    id: i64,
    code: &str,
) -> Result<Referral, ApiError> {
    let applied = transact(
        &state.db,
        None,
        |_| StatusCode::OK,
        async |conn| Ok(customers::apply_promo(conn, org, id, code).await?),
    )
    .await;
    let refused = |error: &str, reason: String| Referral {
        code: code.to_owned(),
        applied: false,
        reason: Some(reason),
        error: Some(error.to_owned()),
    };
    let referral = match applied {
        Ok(_) => Referral {
            code: code.to_owned(),
            applied: true,
            reason: None,
            error: None,
        },
        Err(ApiError::Conflict { code, message }) => refused(code, message),
        Err(ApiError::Invalid { message, .. }) => refused("invalid", message),
        Err(ApiError::NotFound(_)) => refused(
            "invalid",
            "no customer of this organization has this promo code".to_owned(),
        ),
        Err(other) => return Err(other),
    };
    tracing::info!(org = org.id, customer = id, applied = referral.applied, error = ?referral.error, "referral by link");
    Ok(referral)
}

/// The caller's own id as a QR code, for the cashier to scan: the digits alone, which the
/// register's and the staff view's search take as they are. Private: it identifies the customer.
#[utoipa::path(get, path = "/app/v1/orgs/{org}/me/code.svg", tag = "Mini App", params(("org" = i64, Path)),
    responses((status = 200, content_type = "image/svg+xml", body = String,
               description = "a QR code of the customer's id")),
    security(("tma" = [])))]
async fn code_svg(
    State(state): State<AppState>,
    caller: MiniAppUser,
) -> Result<Response, ApiError> {
    let mut tx = state.db.begin().await?;
    let (id, _) = customers::visit(&mut tx, &caller.org, &caller.user).await?;
    tx.commit().await?;
    let code = qrcode::QrCode::with_error_correction_level(id.to_string(), qrcode::EcLevel::M)
        .map_err(|err| anyhow::anyhow!("QR code of a customer id: {err}"))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .module_dimensions(1, 1)
        .quiet_zone(true)
        .build();
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        svg,
    )
        .into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MiniAppWriteAccessRequest)]
struct WriteAccessRequest {
    /// What `requestWriteAccess` answered.
    granted: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = MiniAppWriteAccess)]
struct WriteAccess {
    /// Whether the bot may now write to the customer.
    can_message: bool,
}

/// The customer let the bot write to them (`WebApp.requestWriteAccess`): accrual messages reach
/// them again, a mark of unreachable is cleared. `granted: false` changes nothing.
#[utoipa::path(post, path = "/app/v1/orgs/{org}/me/write-access", tag = "Mini App", params(("org" = i64, Path)),
    request_body = WriteAccessRequest,
    responses((status = 200, body = WriteAccess)), security(("tma" = [])))]
async fn write_access(
    State(state): State<AppState>,
    caller: MiniAppUser,
    body: Body<WriteAccessRequest>,
) -> Result<Json<WriteAccess>, ApiError> {
    let mut tx = state.db.begin().await?;
    let (id, _) = customers::visit(&mut tx, &caller.org, &caller.user).await?;
    if body.value.granted {
        access::allow_messages(&mut tx, caller.org.id, caller.user.id).await?;
        tracing::info!(org = caller.org.id, customer = id, "write access granted");
    }
    let can_message = customers::can_message(&mut tx, caller.org.id, id).await?;
    tx.commit().await?;
    Ok(Json(WriteAccess { can_message }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MiniAppPromoRequest)]
struct PromoRequest {
    /// A friend's code, `PROMO<id>`.
    code: String,
}

/// A friend's promo code, with the same rules as the operator endpoint.
#[utoipa::path(post, path = "/app/v1/orgs/{org}/me/promo", tag = "Mini App", params(("org" = i64, Path)),
    request_body = PromoRequest,
    responses((status = 200, body = customers::Balances),
              (status = 409, description = "already referred, or after the first purchase", body = ErrorBody),
              (status = 422, description = "own, unknown or looping code", body = ErrorBody)),
    security(("tma" = [])))]
async fn promo(
    State(state): State<AppState>,
    caller: MiniAppUser,
    body: Body<PromoRequest>,
) -> Result<Response, ApiError> {
    // The visit commits first, so the promo's transaction takes both customers' locks in the
    // program's order (`loyalty::locks`) rather than the caller's before the friend's.
    let mut tx = state.db.begin().await?;
    let (id, _) = customers::visit(&mut tx, &caller.org, &caller.user).await?;
    tx.commit().await?;
    transact(
        &state.db,
        None,
        |_| StatusCode::OK,
        async |conn| Ok(customers::apply_promo(conn, &caller.org, id, &body.value.code).await?),
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// The `next_before` of the previous page.
    #[param(pattern = "^([+-]?[0-9]{1,16}_[+-]?[0-9]{1,18})?$")]
    before: Option<String>,
    /// 1 to 100, default 20.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
struct HistoryPage {
    items: Vec<HistoryEntry>,
    /// Pass as `before` for the next page; null at the end.
    next_before: Option<String>,
}

/// The combined history, newest first, a page at a time.
#[utoipa::path(get, path = "/app/v1/orgs/{org}/me/history", tag = "Mini App",
    params(("org" = i64, Path), HistoryQuery),
    responses((status = 200, body = HistoryPage)), security(("tma" = [])))]
async fn history(
    State(state): State<AppState>,
    caller: MiniAppUser,
    Query(query): Query<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 100"));
    }
    let before = match query.before.as_deref() {
        None | Some("") => None,
        Some(text) => Some(ledger::parse_history_cursor(text).ok_or_else(|| {
            ApiError::invalid("before", "must be a next_before of an earlier page")
        })?),
    };
    let mut tx = state.db.begin().await?;
    let (id, _) = customers::visit(&mut tx, &caller.org, &caller.user).await?;
    let rows = ledger::history_page(&mut tx, caller.org.id, id, before, limit).await?;
    tx.commit().await?;
    let next_before = (i64::try_from(rows.len()).unwrap_or(i64::MAX) == limit)
        .then(|| rows.last().map(ledger::history_cursor))
        .flatten();
    Ok(Json(HistoryPage {
        items: rows.iter().map(|r| r.to_history()).collect(),
        next_before,
    }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = MiniAppBirthDateRequest)]
struct BirthDateRequest {
    /// `YYYY-MM-DD`: a real date, not in the future, not before 1900.
    #[schema(
        example = "1990-06-10",
        pattern = r"^(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
    )]
    birth_date: String,
}

/// The customer's own birth date, for the birthday bonus: set once; the second time is a 409
/// (`birth_date_already_set`), and only the shop's operator can correct it.
#[utoipa::path(put, path = "/app/v1/orgs/{org}/me/birth_date", tag = "Mini App", params(("org" = i64, Path)),
    request_body = BirthDateRequest,
    responses((status = 200, body = crate::admin::customers::BirthDate),
              (status = 409, description = "set already", body = ErrorBody),
              (status = 422, description = "not a real past date since 1900", body = ErrorBody)),
    security(("tma" = [])))]
async fn birth_date(
    State(state): State<AppState>,
    caller: MiniAppUser,
    body: Body<BirthDateRequest>,
) -> Result<Json<crate::admin::customers::BirthDate>, ApiError> {
    let mut tx = state.db.begin().await?;
    let (id, _) = customers::visit(&mut tx, &caller.org, &caller.user).await?;
    let birth_date =
        customers::set_birth_date(&mut tx, &caller.org, id, &body.value.birth_date, false).await?;
    tx.commit().await?;
    Ok(Json(crate::admin::customers::BirthDate { birth_date }))
}
