//! Customers: creation, search, the legacy view, promo codes and the operator's wallet movements.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use loyalty::customers::{
    self, Balances, BonusOp, CustomerSummary, DebtOp, NewCustomer, OperatorMove,
};
use loyalty::ledger::{EntryKind, Wallet, describe};
use loyalty::legacy::{self, LegacyCustomer};
use loyalty::money::Amount;
use loyalty::orgs;
use loyalty::standing::{self, Standing};
use serde::{Deserialize, Serialize};

use super::{After, AfterQuery, Listing, Page, PageQuery};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::idempotency::Idempotent;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/orgs/{org}/customers",
            post(create_customer).get(search_customers),
        )
        .route("/orgs/{org}/customers/{id}", get(get_customer))
        .route("/orgs/{org}/customers/{id}/promo", post(enter_promo))
        .route("/orgs/{org}/customers/{id}/bonuses", post(move_bonuses))
        .route("/orgs/{org}/customers/{id}/debts", post(move_debt))
        .route("/orgs/{org}/customers/{id}/merge", post(merge_customer))
        .route("/orgs/{org}/customers/{id}/birth_date", put(set_birth_date))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedCustomer {
    /// Numeric string, unique within the organization.
    pub id: String,
}

/// Creates a customer.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/customers", tag = "customers", request_body = NewCustomer,
    responses((status = 201, body = CreatedCustomer), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_customer(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<NewCustomer>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::CREATED, async |conn| {
            let id = customers::create(conn, org, &request.value).await?;
            Ok(CreatedCustomer { id: id.to_string() })
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct CustomerQuery {
    /// Part of a name, username, phone number or id; all customers when absent.
    pub q: Option<String>,
}

/// Searches customers by name, phone, username or id, oldest first; pages by `offset` or `after`
/// (`next_cursor`).
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/customers", tag = "customers", params(CustomerQuery, PageQuery, AfterQuery),
    responses((status = 200, body = Listing<CustomerSummary>)), security(("admin" = [])))]
pub async fn search_customers(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<CustomerQuery>,
    page: Page,
    after: After,
) -> Result<Json<Listing<CustomerSummary>>, ApiError> {
    let start = after.start(page, loyalty::db::parse_id_cursor)?;
    let mut conn = state.db.acquire().await?;
    orgs::get(&mut conn, org).await?;
    let found = customers::search(
        &mut conn,
        org,
        query.q.as_deref().unwrap_or(""),
        page.limit,
        &start,
    )
    .await?;
    Ok(Json(Listing::keyed(found, page, &after, |c| {
        loyalty::db::id_cursor(c.id)
    })))
}

/// The customer as operators see it: the legacy export's shape, and where they stand in the
/// program (`loyalty::standing`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CustomerView {
    #[serde(flatten)]
    pub customer: LegacyCustomer,
    #[serde(flatten)]
    pub standing: Standing,
}

/// The customer in the legacy export's shape, with pending bonuses, the next expiry, the tier and
/// the share of a bill bonuses may pay.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/customers/{id}", tag = "customers",
    responses((status = 200, body = CustomerView), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn get_customer(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
) -> Result<Json<CustomerView>, ApiError> {
    let mut tx = state.db.begin().await?;
    let organization = orgs::get(&mut tx, org).await?;
    let customer = legacy::customer(&mut tx, org, organization.time_zone, id).await?;
    let standing = standing::standing(&mut tx, &organization, id).await?;
    Ok(Json(CustomerView { customer, standing }))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoRequest {
    /// A friend's code, `PROMO<id>`.
    pub code: String,
}

/// Enters a friend's promo code for the customer.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/customers/{id}/promo", tag = "customers",
    request_body = PromoRequest,
    responses((status = 200, body = Balances), (status = 404, body = ErrorBody),
              (status = 409, description = "already referred, or after the first purchase", body = ErrorBody),
              (status = 422, description = "own, unknown or looping code", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn enter_promo(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<PromoRequest>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let organization = orgs::get(conn, org).await?;
            Ok(customers::apply_promo(conn, &organization, id, &request.value.code).await?)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BonusRequest {
    pub op: BonusOp,
    pub amount: Amount,
    /// main (default) or referral.
    pub wallet: Option<Wallet>,
    /// Shown in the history; the legacy text by default.
    #[schema(max_length = 500)]
    pub description: Option<String>,
}

/// Accrues or deducts bonuses by hand.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/customers/{id}/bonuses", tag = "customers",
    request_body = BonusRequest,
    responses((status = 201, body = Balances), (status = 404, body = ErrorBody),
              (status = 409, description = "deducting more than is available", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn move_bonuses(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<BonusRequest>,
) -> Result<Response, ApiError> {
    let body = &request.value;
    let wallet = body.wallet.unwrap_or(Wallet::Main);
    if !matches!(wallet, Wallet::Main | Wallet::Referral) {
        return Err(ApiError::invalid(
            "wallet",
            "must be main or referral; debts have their own endpoint, pending bonuses only activate",
        ));
    }
    let (kind, default_text) = match body.op {
        BonusOp::Accrue => (EntryKind::Accrual, describe::OPERATOR_ACCRUAL),
        BonusOp::Deduct => (EntryKind::Deduction, describe::OPERATOR_DEDUCTION),
    };
    let description = body
        .description
        .as_deref()
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .unwrap_or(default_text);
    if description.chars().count() > 500 {
        return Err(ApiError::invalid(
            "description",
            "must be at most 500 characters",
        ));
    }
    let movement = OperatorMove {
        wallet,
        kind,
        amount: body.amount,
        description,
        reference: request.key(),
        actor: request.actor(),
    };
    operator_move(&state, &request, org, id, &movement).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DebtRequest {
    pub op: DebtOp,
    pub amount: Amount,
}

/// Adds a debt or records its payment.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/customers/{id}/debts", tag = "customers",
    request_body = DebtRequest,
    responses((status = 201, body = Balances), (status = 404, body = ErrorBody),
              (status = 409, description = "paying more than is owed", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn move_debt(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<DebtRequest>,
) -> Result<Response, ApiError> {
    let (kind, description) = match request.value.op {
        DebtOp::Add => (EntryKind::Accrual, describe::DEBT_ADDED),
        DebtOp::Pay => (EntryKind::Payment, describe::DEBT_PAID),
    };
    let movement = OperatorMove {
        wallet: Wallet::Debt,
        kind,
        amount: request.value.amount,
        description,
        reference: request.key(),
        actor: request.actor(),
    };
    operator_move(&state, &request, org, id, &movement).await
}

/// Applies an operator's movement of a wallet once for `request`: 201 with the balances.
async fn operator_move<T>(
    state: &AppState,
    request: &Idempotent<T>,
    org: i64,
    id: i64,
    movement: &OperatorMove<'_>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::CREATED, async |conn| {
            let organization = orgs::get(conn, org).await?;
            Ok(customers::operator_move(conn, &organization, id, movement).await?)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MergeRequest {
    /// The customer to merge into this one (say, the phone-only twin of a Mini App customer).
    #[serde(deserialize_with = "loyalty::bills::deserialize_id")]
    #[schema(schema_with = loyalty::bills::id_schema)]
    pub from: i64,
}

/// Merges another customer into this one, once: history, wallets, holds, invoices, bills and
/// referrals move; every ledger entry is kept as it was.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/customers/{id}/merge", tag = "customers",
    request_body = MergeRequest,
    responses((status = 200, body = customers::Merged), (status = 404, body = ErrorBody),
              (status = 409, description = "already merged", body = ErrorBody),
              (status = 422, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn merge_customer(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<MergeRequest>,
) -> Result<Response, ApiError> {
    let from = request.value.from;
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let merged = customers::merge(conn, org, id, from).await?;
            tracing::info!(
                org,
                into = id,
                from,
                entries = merged.entries_moved,
                "customers merged"
            );
            Ok(merged)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BirthDateRequest {
    /// `YYYY-MM-DD`: a real date, not in the future, not before 1900.
    #[schema(
        example = "1990-06-10",
        pattern = r"^(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
    )]
    pub birth_date: String,
    /// Replaces a birth date set before (a correction); without it, a set one is a 409.
    #[serde(default)]
    pub correct: bool,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BirthDate {
    /// `YYYY-MM-DD`.
    #[schema(value_type = String, example = "1990-06-10")]
    pub birth_date: chrono::NaiveDate,
}

/// Sets the customer's birth date, for the birthday bonus. It is set once (by an operator or by
/// the customer in the Mini App); an operator corrects it with `correct: true`. A correction
/// never brings a second birthday bonus in a year that had one.
#[utoipa::path(put, path = "/admin/v1/orgs/{org}/customers/{id}/birth_date", tag = "customers",
    request_body = BirthDateRequest,
    responses((status = 200, body = BirthDate), (status = 404, body = ErrorBody),
              (status = 409, description = "set already (`birth_date_already_set`) and not a correction", body = ErrorBody),
              (status = 422, description = "not a real past date since 1900", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn set_birth_date(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<BirthDateRequest>,
) -> Result<Response, ApiError> {
    let body = &request.value;
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            let organization = orgs::get(conn, org).await?;
            let birth_date =
                customers::set_birth_date(conn, &organization, id, &body.birth_date, body.correct)
                    .await?;
            Ok(BirthDate { birth_date })
        })
        .await
}
