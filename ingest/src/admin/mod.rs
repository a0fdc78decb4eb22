//! The operator API under `/admin/v1`: the platform's operators (`ADMIN_TOKEN`), and an
//! organization's own staff and API keys on its routes (see [`access`]).

pub mod access;
pub mod audit;
pub mod bills;
pub mod customers;
pub mod legacy;
pub mod ops;
pub mod orgs;
pub mod receipts;
pub mod reports;
pub mod staff;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::middleware;
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Query;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(orgs::router())
        .merge(customers::router())
        .merge(bills::router())
        .merge(receipts::router())
        .merge(ops::router())
        .merge(reports::router())
        .merge(staff::router())
        .merge(audit::router())
        .merge(legacy::router(state.config.import_body_limit))
        // Its own fallbacks, so they sit behind the credentials too: without them, every path is
        // a 401 and the routes cannot be probed.
        .fallback(crate::edge::not_found)
        .method_not_allowed_fallback(crate::edge::method_not_allowed)
        .layer(middleware::from_fn_with_state(state, access::authorize))
}

/// The page of a list endpoint, from its `?limit=&offset=` (documented by [`PageQuery`]), checked.
/// Take it after the route's own `Query`, so a malformed filter is reported before the page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub limit: i64,
    pub offset: i64,
}

/// The longest page a list endpoint serves.
pub const MAX_PAGE: i64 = 500;
/// The page length when `limit` is absent.
pub const DEFAULT_PAGE: i64 = 50;

/// `?limit=&offset=` of the list endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// Default 0.
    #[param(minimum = 0)]
    pub offset: Option<i64>,
}

impl<S: Send + Sync> FromRequestParts<S> for Page {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<PageQuery>::from_request_parts(parts, state).await?;
        let limit = query.limit.unwrap_or(DEFAULT_PAGE);
        let offset = query.offset.unwrap_or(0);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        if offset < 0 {
            return Err(ApiError::invalid("offset", "must not be negative"));
        }
        Ok(Page { limit, offset })
    }
}

/// One page of a list, and where the next one starts (null at the end).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next_offset: Option<i64>,
}

impl<T> Listing<T> {
    pub fn new(items: Vec<T>, page: Page) -> Self {
        let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == page.limit;
        Self {
            items,
            // Past the largest offset there is no next page.
            next_offset: full.then(|| page.offset.checked_add(page.limit)).flatten(),
        }
    }
}
