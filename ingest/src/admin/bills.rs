//! Bills the cash registers load; creating one holds its bonus payment, cancelling releases it.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::{Json, Router};
use loyalty::bills::{self, Bill, NewBill};
use loyalty::orgs;
use serde::{Deserialize, Serialize};

use super::{Listing, Page, PageQuery};
use crate::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::{Path, Query};
use crate::idempotency::{Idempotent, NoBody};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/orgs/{org}/bills", post(create_bill).get(list_bills))
        .route("/orgs/{org}/bills/{id}", delete(cancel_bill).get(get_bill))
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedBill {
    pub id: i64,
    pub number: String,
}

/// Creates an open bill; a bonus payment is held against the wallet at once. A bill of the shop's
/// own accounting system keeps its id and date, so registers that hold that id find it.
#[utoipa::path(post, path = "/admin/v1/orgs/{org}/bills", tag = "bills", request_body = NewBill,
    responses((status = 201, body = CreatedBill), (status = 404, body = ErrorBody),
              (status = 409, description = "bonuses short once other open bills are counted (insufficient_balance), or the number (bill_number_taken) or the shop's id (bill_id_taken) taken", body = ErrorBody),
              (status = 422, description = "a value refused; a bonus payment above the bill's total or above the share bonuses may pay (`max_bonus_payment_percentage`) names `bonus_payment.amount`, with the maximum in the message", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn create_bill(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    request: Idempotent<NewBill>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::CREATED, async |conn| {
            orgs::get(conn, org).await?;
            let bill = bills::create(conn, org, &request.value).await?;
            tracing::info!(org, bill = bill.id, "bill created");
            Ok(CreatedBill {
                id: bill.id,
                number: bill.number,
            })
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct BillQuery {
    /// open, paid or cancelled; all when absent.
    pub status: Option<String>,
}

/// The organization's bills, newest first.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/bills", tag = "bills", params(BillQuery, PageQuery),
    responses((status = 200, body = Listing<Bill>)), security(("admin" = [])))]
pub async fn list_bills(
    State(state): State<AppState>,
    Path(org): Path<i64>,
    Query(query): Query<BillQuery>,
    page: Page,
) -> Result<Json<Listing<Bill>>, ApiError> {
    let mut conn = state.db.acquire().await?;
    let found = bills::list(
        &mut conn,
        org,
        query.status.as_deref(),
        page.limit,
        page.offset,
    )
    .await?;
    Ok(Json(Listing::new(found, page)))
}

/// One bill.
#[utoipa::path(get, path = "/admin/v1/orgs/{org}/bills/{id}", tag = "bills",
    responses((status = 200, body = Bill), (status = 404, body = ErrorBody)),
    security(("admin" = [])))]
pub async fn get_bill(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
) -> Result<Json<Bill>, ApiError> {
    let mut conn = state.db.acquire().await?;
    Ok(Json(bills::get(&mut conn, org, id).await?))
}

/// Cancels an open bill and releases its bonus hold.
#[utoipa::path(delete, path = "/admin/v1/orgs/{org}/bills/{id}", tag = "bills",
    responses((status = 200, body = Bill), (status = 404, body = ErrorBody),
              (status = 409, description = "the bill is paid or already cancelled", body = ErrorBody)),
    security(("admin" = [])))]
pub async fn cancel_bill(
    State(state): State<AppState>,
    Path((org, id)): Path<(i64, i64)>,
    request: Idempotent<NoBody>,
) -> Result<Response, ApiError> {
    request
        .answer(&state.db, StatusCode::OK, async |conn| {
            Ok(bills::cancel(conn, org, id).await?)
        })
        .await
}
