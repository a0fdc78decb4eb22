//! The Telegram Mini App itself at `/app/{org}/`: the URL a shop gives @BotFather as its bot's
//! Mini App. One static page (HTML, CSS and JavaScript compiled into the binary, no build step)
//! that reads the organization from its own path and talks to `/app/v1` (the customer) and, for
//! the shop's staff, to `/admin/v1/orgs/{org}` with `Authorization: tma <initData>`.
//!
//! The page holds no data, so it is served to anyone, and for any numeric organization id: saying
//! here which organizations exist would undo the API's care not to tell (an unknown one is the same
//! 401 there). Telegram's own `telegram-web-app.js` is the one script from elsewhere the policy
//! allows: it is the bridge to the Telegram client (init data, theme, back button, QR scanner), and
//! loading it from telegram.org keeps it the version the clients expect. Every value the script
//! shows is written as text, never as markup.

use axum::Router;
use axum::response::{Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::dashboard::{Framing, static_asset};
use crate::extract::Path;

const INDEX: &str = include_str!("webapp/index.html");
const SCRIPT: &str = include_str!("webapp/app.js");
const STYLE: &str = include_str!("webapp/app.css");

/// Telegram Web (web.telegram.org) shows Mini Apps in an iframe, so unlike the dashboard the page
/// may be framed, by Telegram's web client and by nobody else; the mobile and desktop clients use
/// a web view, which `frame-ancestors` does not concern.
const CSP: &str = "default-src 'none'; script-src 'self' https://telegram.org; style-src 'self'; \
                   connect-src 'self'; img-src 'self' data: blob:; base-uri 'none'; \
                   form-action 'none'; frame-ancestors https://web.telegram.org";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/app/{org}", get(redirect))
        .route("/app/{org}/", get(page))
        .route(
            "/app/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/app/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
}

/// The page's scripts read the organization from the path up to its last `/`: without that slash
/// they would read nothing, so the bare URL is sent to the one with it.
async fn redirect(Path(org): Path<u64>) -> Redirect {
    Redirect::permanent(&format!("/app/{org}/"))
}

/// A non-numeric id is the 404 of any unknown path (via [`Path`]).
async fn page(Path(_org): Path<u64>) -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    static_asset(content_type, body, CSP, Framing::AsThePolicySays)
}
