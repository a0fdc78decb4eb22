//! The operator API under `/admin/v1`, behind `Authorization: Bearer $ADMIN_TOKEN`.

pub mod bills;
pub mod customers;
pub mod legacy;
pub mod ops;
pub mod orgs;
pub mod receipts;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::extract::bearer;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(orgs::router())
        .merge(customers::router())
        .merge(bills::router())
        .merge(receipts::router())
        .merge(ops::router())
        .merge(legacy::router(state.config.import_body_limit))
        // Its own fallbacks, so they sit behind the token too: without it, every path is a 401
        // and the routes cannot be probed.
        .fallback(crate::edge::not_found)
        .method_not_allowed_fallback(crate::edge::method_not_allowed)
        .layer(middleware::from_fn_with_state(state, require_admin))
}

async fn require_admin(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let expected = state.config.admin_token.as_bytes();
    let given = bearer(request.headers())
        .map(str::as_bytes)
        .unwrap_or_default();
    if expected.is_empty() || !bool::from(given.ct_eq(expected)) {
        return Err(ApiError::Unauthorized);
    }
    Ok(next.run(request).await)
}

/// `?limit=&offset=` of the list endpoints.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::IntoParams)]
pub struct Page {
    /// 1 to 500, default 50.
    pub limit: Option<i64>,
    /// Default 0.
    pub offset: Option<i64>,
}

impl Page {
    pub fn bounds(self) -> Result<(i64, i64), ApiError> {
        let limit = self.limit.unwrap_or(50);
        let offset = self.offset.unwrap_or(0);
        if !(1..=500).contains(&limit) {
            return Err(ApiError::invalid("limit", "must be between 1 and 500"));
        }
        if offset < 0 {
            return Err(ApiError::invalid("offset", "must not be negative"));
        }
        Ok((limit, offset))
    }
}

/// One page of a list, and where the next one starts (null at the end).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Listing<T> {
    pub items: Vec<T>,
    pub next_offset: Option<i64>,
}

impl<T> Listing<T> {
    pub fn new(items: Vec<T>, limit: i64, offset: i64) -> Self {
        let full = i64::try_from(items.len()).unwrap_or(i64::MAX) == limit;
        Self {
            items,
            // Past the largest offset there is no next page.
            next_offset: full.then(|| offset.checked_add(limit)).flatten(),
        }
    }
}
