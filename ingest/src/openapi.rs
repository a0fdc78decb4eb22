//! The OpenAPI document of the operator API, served at `/openapi.json`.

use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::AppState;
use crate::admin::{bills, customers, legacy, ops, orgs, receipts};

/// `{"error": {"code", "message", "field"?}}`
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: unauthorized, not_found, invalid, insufficient_balance…
    pub code: String,
    pub message: String,
    /// The field at fault, for 422.
    pub field: Option<String>,
}

struct AdminAuth;

impl Modify for AdminAuth {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("ADMIN_TOKEN"))
                    .build(),
            ),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Loyalty program", description = "Operator API (Bearer ADMIN_TOKEN). Money is a JSON number or string with at most 2 decimals; Idempotency-Key is honoured by every POST that moves money."),
    paths(
        orgs::create_org, orgs::get_org, orgs::update_org, orgs::create_integration,
        customers::create_customer, customers::search_customers, customers::get_customer,
        customers::enter_promo, customers::move_bonuses, customers::move_debt, customers::merge_customer,
        bills::create_bill, bills::list_bills, bills::get_bill, bills::cancel_bill,
        legacy::import, legacy::export,
        receipts::list_receipts, receipts::attach_receipt, receipts::list_notifications,
        ops::summary, ops::queues, ops::dead_letters, ops::replay, receipts::ops_receipts, receipts::ops_notifications,
    ),
    modifiers(&AdminAuth)
)]
pub struct ApiDoc;

pub fn router() -> Router<AppState> {
    Router::new().route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
}
