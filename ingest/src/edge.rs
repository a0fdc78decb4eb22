//! What every request passes on its way in and out, whatever route it takes: URIs too long or
//! carrying a NUL are refused, a path or method nothing serves and a handler that panics all
//! answer in the API's JSON error shape, a body that stalls is cut off, and every request is traced.
//!
//! Tracing: each request has an id, the client's `x-request-id` when it is a sane one, a fresh
//! UUID otherwise, echoed in the answer's `x-request-id`. Every log line of the request carries
//! its span `request{id, method, route, status, latency_ms}` (a POS receipt's adds `event`, its
//! event id); the span's own lines (started, answered) are at debug, so the receipts' hot path
//! costs no info line here.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, Response as HttpResponse};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing::field::Empty;

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
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span as fn(&Request) -> Span)
                .on_response(answered as fn(&HttpResponse<Body>, Duration, &Span)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(middleware::map_request(drop_unusable_request_id))
}

/// `Retry-After` of a request shed over the in-flight limit: requests in flight are answered
/// within milliseconds, so a second frees most of the slots.
pub const SHED_RETRY_AFTER_SECS: u32 = 1;

/// Answers 503 with `Retry-After` to a request of `router` arriving while `limit` are in flight
/// (0: no limit). Nothing waits for a slot: a queue of waiting requests would hold their bodies and
/// grow with the flood, which is what the limit bounds.
pub fn limit_in_flight<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    limit: u32,
) -> Router<S> {
    if limit == 0 {
        return router;
    }
    let slots = Arc::new(Semaphore::new(limit as usize));
    router.layer(middleware::from_fn(move |request: Request, next: Next| {
        let slot = slots.clone().try_acquire_owned();
        async move {
            let Ok(_slot) = slot else {
                metrics::counter!("loyalty_http_requests_shed_total").increment(1);
                return ApiError::Unavailable {
                    message: "ingest is serving as many requests as it may; send again shortly"
                        .into(),
                    retry_after_secs: SHED_RETRY_AFTER_SECS,
                }
                .into_response();
            };
            next.run(request).await
        }
    }))
}

/// The header carrying a request's id, both ways.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id taken from a client.
pub const REQUEST_ID_LIMIT: usize = 128;

/// Whether a client's request id can name the request in our logs: 1 to [`REQUEST_ID_LIMIT`]
/// letters, digits and `-_.:/+=@` (a UUID, a trace id, a proxy's counter…).
fn usable_request_id(id: &[u8]) -> bool {
    (1..=REQUEST_ID_LIMIT).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Removes a client's `x-request-id` that is not [usable](usable_request_id), so a fresh one is
/// made in its place.
async fn drop_unusable_request_id(mut request: Request) -> Request {
    let headers = request.headers_mut();
    let usable = {
        let mut given = headers.get_all(&REQUEST_ID).iter();
        match (given.next(), given.next()) {
            (Some(id), None) => usable_request_id(id.as_bytes()),
            (None, _) => true,
            // Two ids name no request.
            (Some(_), Some(_)) => false,
        }
    };
    if !usable {
        headers.remove(&REQUEST_ID);
    }
    request
}

/// The span every log line of a request carries.
fn request_span(request: &Request) -> Span {
    let id = request
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    tracing::info_span!(
        "request",
        id,
        method = %request.method(),
        route,
        status = Empty,
        latency_ms = Empty,
        event = Empty,
    )
}

/// Records the answer on the request's span; the line itself is at debug.
fn answered(response: &HttpResponse<Body>, latency: Duration, span: &Span) {
    span.record("status", response.status().as_u16());
    span.record(
        "latency_ms",
        u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
    );
    tracing::debug!("answered");
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
