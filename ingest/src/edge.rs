//! What every request passes on its way in and out, whatever route it takes: URIs too long or
//! carrying a NUL are refused, a path or method nothing serves and a handler that panics all
//! answer in the API's JSON error shape, a body that stalls is cut off, and every request is traced.

use std::any::Any;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::error::ApiError;
use crate::extract;

/// The longest request target served (hyper's own limit, far higher, answers with no body).
pub const URI_LIMIT: usize = 8 * 1024;

/// Longest pause allowed between two pieces of a request body: a client that sends its head and
/// then trickles (or stops sending) the body would otherwise hold its connection for as long as it
/// likes. Its request is answered 400.
pub const BODY_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Gives `router` the fallbacks and layers of the service. Call it once every route is in.
pub fn layers<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(extract::BODY_LIMIT))
        .layer(RequestBodyTimeoutLayer::new(BODY_STALL_TIMEOUT))
        .layer(middleware::from_fn(check_uri))
        .layer(CatchPanicLayer::custom(
            panic_response as fn(Box<dyn Any + Send>) -> Response,
        ))
        .layer(TraceLayer::new_for_http())
}

/// A path nothing serves.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

/// A path that is served, with another method; axum adds the `Allow` header.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The last resort: a bug panicked in a handler. The client gets the JSON 500; the log gets the
/// panic's message (the request span names the route), never the request body.
fn panic_response(panic: Box<dyn Any + Send>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    ApiError::Internal(anyhow::anyhow!("handler panicked: {message}")).into_response()
}

/// Refuses a request target longer than [`URI_LIMIT`], and a NUL (`%00`) in the path or a query
/// parameter: PostgreSQL stores no NUL in text, and no id or search term holds one.
async fn check_uri(request: Request, next: Next) -> Result<Response, ApiError> {
    let uri = request.uri();
    let length = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if length > URI_LIMIT {
        return Err(ApiError::UriTooLong { limit: URI_LIMIT });
    }
    if uri.path().contains("%00") {
        return Err(ApiError::invalid("path", extract::NUL_MESSAGE));
    }
    if let Some(query) = uri.query().filter(|q| q.contains("%00")) {
        let field = query
            .split('&')
            .find(|pair| pair.contains("%00"))
            .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
            .map(|name| percent_encoding::percent_decode_str(name).decode_utf8_lossy())
            .filter(|name| !name.is_empty() && !name.contains('\0'))
            .map_or_else(|| "query".to_owned(), |name| name.into_owned());
        return Err(ApiError::invalid(field, extract::NUL_MESSAGE));
    }
    Ok(next.run(request).await)
}
