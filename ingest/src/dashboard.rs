//! The operators' dashboard at `/admin`: one static page (HTML, CSS and JavaScript compiled into
//! the binary; nothing fetched from elsewhere) that reads `/admin/v1/ops/*` with the admin token the
//! operator enters once and the browser keeps for the session (sessionStorage).
//!
//! The page itself holds no data, so it is served without the token; every number on it comes from
//! the token-protected API. The Content-Security-Policy allows only this origin's script, style and
//! API, and the script writes every value as text, never as markup.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::AppState;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/admin",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/admin/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/admin/dashboard.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/admin/dashboard.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// Whether a page may be shown inside another site's frame.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Framing {
    /// Never (`X-Frame-Options: DENY`, for browsers older than `frame-ancestors`).
    Deny,
    /// As the policy's `frame-ancestors` says, and nothing more.
    AsThePolicySays,
}

/// One of the service's static pages or their scripts and styles, compiled in: the headers the
/// dashboard and the Mini App share, with each one's own policy and framing.
pub(crate) fn static_asset(
    content_type: &'static str,
    body: &'static str,
    csp: &'static str,
    framing: Framing,
) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, content_type),
            // Revalidated on every load, so a new deployment's page is seen at once.
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, csp),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response();
    if let Framing::Deny = framing {
        response
            .headers_mut()
            .insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    static_asset(content_type, body, CSP, Framing::Deny)
}
