//! Who may call `/admin/v1`, and what they may reach there. Three kinds of caller:
//!
//! - `Authorization: Bearer <ADMIN_TOKEN>`: the platform's operators, everywhere;
//! - `Authorization: Bearer lk_…`: an API key of one organization, with its role;
//! - `Authorization: tma <initData>`: a Telegram user on the staff of the organization in the
//!   path, the init data signed by that organization's bot (as the Mini App API checks it).
//!
//! An organization's caller reaches only its own `/orgs/{org}/…` routes that [`RULES`] grants its
//! role; a route missing from the table is the platform's alone (default deny), so a new route is
//! closed to shops until someone decides otherwise. Bad credentials are a 401; good ones in the
//! wrong place a 403. The resolved [`Caller`] goes into the request's extensions, where handlers
//! and the `Idempotent` extractor (which writes the audit trail) read it.

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::Response;
use loyalty::access::{self, Actor, KEY_PREFIX, Role};
use loyalty::init_data;
use loyalty::orgs::{self, Organization};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// `Retry-After` of a staff request over its user's rate: the bucket refills within a second.
const RETRY_AFTER_SECS: u32 = 1;

/// Who is calling, once their credentials are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// As the ledger and the audit trail name them.
    pub actor: Actor,
    pub scope: Scope,
}

/// Where a caller may act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everywhere (`ADMIN_TOKEN`).
    Platform,
    /// One organization, with a role there.
    Org { org: i64, role: Role },
}

impl Caller {
    pub const PLATFORM: Caller = Caller {
        actor: Actor::Platform,
        scope: Scope::Platform,
    };
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Every /admin/v1 route sits behind `authorize`, which puts it there; a handler that
        // asks for it anywhere else is a bug, not the client's fault.
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or_else(|| anyhow::anyhow!("no caller: the route is not behind `authorize`").into())
    }
}

/// Where an audited change finds the customer it concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CustomerFrom {
    /// It concerns none.
    None,
    /// The `{id}` of a `/customers/{id}/…` path.
    Path,
    /// A field of the request body holding the customer's id.
    Body(&'static str),
    /// The `id` of the answer (a customer just created).
    Answer,
}

/// One route: who besides the platform may call it, and how its changes are named in the audit
/// trail.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub method: &'static str,
    /// The route's template, as the OpenAPI document writes it.
    pub path: &'static str,
    /// The organization roles allowed; empty: the platform's only.
    pub roles: &'static [Role],
    /// The audit trail's name for a change through this route.
    pub action: &'static str,
    pub customer: CustomerFrom,
}

const ALL: &[Role] = &[Role::Owner, Role::Cashier, Role::Reader];
const DESK: &[Role] = &[Role::Owner, Role::Cashier];
const OWNER: &[Role] = &[Role::Owner];
const OWNER_READER: &[Role] = &[Role::Owner, Role::Reader];
const PLATFORM: &[Role] = &[];

const fn rule(
    method: &'static str,
    path: &'static str,
    roles: &'static [Role],
    action: &'static str,
    customer: CustomerFrom,
) -> Rule {
    Rule {
        method,
        path,
        roles,
        action,
        customer,
    }
}

/// Every `/admin/v1` route, and who may call it. Cashiers run the desk (customers, their bonuses
/// and debts, bills); owners everything of their organization; readers (keys only) every read of
/// it. The platform's own routes (new organizations, the import, operations) are listed with no
/// role, so the table is the one list of routes a test checks against the OpenAPI document.
pub const RULES: &[Rule] = &[
    rule(
        "POST",
        "/admin/v1/orgs",
        PLATFORM,
        "org.create",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/import",
        PLATFORM,
        "org.import",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/ops/summary",
        PLATFORM,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/ops/queues",
        PLATFORM,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/ops/dead-letters",
        PLATFORM,
        "",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/ops/dead-letters/replay",
        PLATFORM,
        "ops.replay",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/ops/receipts",
        PLATFORM,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/ops/notifications",
        PLATFORM,
        "",
        CustomerFrom::None,
    ),
    rule("GET", "/admin/v1/orgs/{org}", ALL, "", CustomerFrom::None),
    rule(
        "PATCH",
        "/admin/v1/orgs/{org}",
        OWNER,
        "org.update",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/integrations",
        OWNER,
        "integration.create",
        CustomerFrom::None,
    ),
    rule(
        "PUT",
        "/admin/v1/orgs/{org}/imported-bonuses/expiry",
        OWNER,
        "imported_bonuses.expiry",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/customers",
        ALL,
        "",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/customers",
        DESK,
        "customer.create",
        CustomerFrom::Answer,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/customers/{id}",
        ALL,
        "",
        CustomerFrom::Path,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/customers/{id}/promo",
        DESK,
        "customer.promo",
        CustomerFrom::Path,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/customers/{id}/bonuses",
        DESK,
        "customer.bonuses",
        CustomerFrom::Path,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/customers/{id}/debts",
        DESK,
        "customer.debts",
        CustomerFrom::Path,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/customers/{id}/merge",
        OWNER,
        "customer.merge",
        CustomerFrom::Path,
    ),
    rule(
        "PUT",
        "/admin/v1/orgs/{org}/customers/{id}/birth_date",
        DESK,
        "customer.birth_date",
        CustomerFrom::Path,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/bills",
        ALL,
        "",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/bills",
        DESK,
        "bill.create",
        CustomerFrom::Body("customer_id"),
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/bills/{id}",
        ALL,
        "",
        CustomerFrom::None,
    ),
    rule(
        "DELETE",
        "/admin/v1/orgs/{org}/bills/{id}",
        DESK,
        "bill.cancel",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/receipts",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/receipts/{receipt}/attach",
        OWNER,
        "receipt.attach",
        CustomerFrom::Body("customer_id"),
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/notifications",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/reports/liability",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/reports/activity",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/export",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/staff",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/staff",
        OWNER,
        "staff.add",
        CustomerFrom::None,
    ),
    rule(
        "PATCH",
        "/admin/v1/orgs/{org}/staff/{telegram_id}",
        OWNER,
        "staff.role",
        CustomerFrom::None,
    ),
    rule(
        "DELETE",
        "/admin/v1/orgs/{org}/staff/{telegram_id}",
        OWNER,
        "staff.remove",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/api-keys",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
    rule(
        "POST",
        "/admin/v1/orgs/{org}/api-keys",
        OWNER,
        "api_key.create",
        CustomerFrom::None,
    ),
    rule(
        "DELETE",
        "/admin/v1/orgs/{org}/api-keys/{id}",
        OWNER,
        "api_key.revoke",
        CustomerFrom::None,
    ),
    rule(
        "GET",
        "/admin/v1/orgs/{org}/audit",
        OWNER_READER,
        "",
        CustomerFrom::None,
    ),
];

/// The rule of `method` on the route template `path`, if the table has one.
pub fn rule_of(method: &Method, path: &str) -> Option<&'static Rule> {
    RULES
        .iter()
        .find(|r| r.path == path && r.method == method.as_str())
}

/// Checks the caller's credentials and whether they may use this route, and hands the
/// [`Caller`] to the handler through the request's extensions.
pub async fn authorize(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = request.into_parts();
    let path_org = org_in_path(&mut parts, &state).await;
    let caller = resolve(&state, &parts.headers, path_org).await?;
    if let Scope::Org { org, role } = caller.scope {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let allowed = path_org == Some(org)
            && route
                .and_then(|route| rule_of(&parts.method, route))
                .is_some_and(|rule| rule.roles.contains(&role));
        if !allowed {
            tracing::info!(
                actor = %caller.actor,
                org,
                path_org,
                method = %parts.method,
                route,
                "refused: outside the caller's organization or role"
            );
            return Err(ApiError::Forbidden);
        }
    }
    parts.extensions.insert(caller);
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The `{org}` of the matched route, if it has one and it is a number.
async fn org_in_path(parts: &mut Parts, state: &AppState) -> Option<i64> {
    let axum::extract::Path(params) =
        axum::extract::Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .ok()?;
    params.get("org")?.parse().ok()
}

/// Who the credentials name; a 401 when they name no one.
async fn resolve(
    state: &AppState,
    headers: &HeaderMap,
    path_org: Option<i64>,
) -> Result<Caller, ApiError> {
    let (scheme, credential) = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .map(|(scheme, credential)| (scheme, credential.trim()))
        .filter(|(_, credential)| !credential.is_empty())
        .ok_or(ApiError::Unauthorized)?;
    if scheme.eq_ignore_ascii_case("bearer") {
        let platform = state.config.admin_token.as_bytes();
        if !platform.is_empty() && bool::from(credential.as_bytes().ct_eq(platform)) {
            return Ok(Caller::PLATFORM);
        }
        if !credential.starts_with(KEY_PREFIX) {
            return Err(ApiError::Unauthorized);
        }
        let mut conn = state.db.acquire().await?;
        let key = access::verify_key(&mut conn, credential)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        return Ok(Caller {
            actor: Actor::Key(key.id),
            scope: Scope::Org {
                org: key.org_id,
                role: key.role,
            },
        });
    }
    if scheme.eq_ignore_ascii_case("tma") {
        // Init data is checked with the bot of the organization in the path; outside one, it
        // cannot be checked at all.
        let org = path_org.ok_or(ApiError::Unauthorized)?;
        let (_, init_data::Validated { user, .. }) = telegram_user(state, org, credential).await?;
        let mut conn = state.db.acquire().await?;
        let role = access::staff_role(&mut conn, org, user.id)
            .await?
            .ok_or_else(|| {
                tracing::info!(
                    org,
                    telegram_id = user.id,
                    "refused: not the organization's staff"
                );
                ApiError::Forbidden
            })?;
        return Ok(Caller {
            actor: Actor::Staff(user.id),
            scope: Scope::Org { org, role },
        });
    }
    Err(ApiError::Unauthorized)
}

/// The organization `org` and the Telegram user its bot signed `init` for, as the Mini App API
/// and the staff's calls check them. Anything wrong is the same 401, with no hint which part
/// failed; an organization that does not exist too, so ids cannot be enumerated.
///
/// The rate limit (per organization and the user id the init data *claims*, `MINIAPP_RATE` /
/// `MINIAPP_BURST`) comes first, before the queries and the HMAC, so a flood is refused without
/// the database (see `miniapp::MiniAppUser` for why the claimed id is the key).
pub async fn telegram_user(
    state: &AppState,
    org: i64,
    init: &str,
) -> Result<(Organization, init_data::Validated), ApiError> {
    let claimed = init_data::claimed_user_id(init).ok_or(ApiError::Unauthorized)?;
    if state.miniapp_limits.check_key(&(org, claimed)).is_err() {
        return Err(ApiError::TooManyRequests {
            retry_after_secs: RETRY_AFTER_SECS,
        });
    }
    let unknown_is_unauthorized = |err: loyalty::Error| match err {
        loyalty::Error::NotFound(_) => ApiError::Unauthorized,
        other => other.into(),
    };
    let mut conn = state.db.acquire().await?;
    let organization = orgs::get(&mut conn, org)
        .await
        .map_err(unknown_is_unauthorized)?;
    let token = orgs::bot_token(&mut conn, &state.config.secrets.token_keys, org)
        .await
        .map_err(unknown_is_unauthorized)?
        .ok_or(ApiError::Unauthorized)?;
    let max_age = Duration::from_secs(state.config.miniapp_max_age);
    let valid = init_data::validate_all(init, &token, chrono::Utc::now(), max_age)
        .map_err(|_| ApiError::Unauthorized)?;
    Ok((organization, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for rule in RULES {
            assert!(
                seen.insert((rule.method, rule.path)),
                "{} {} is listed twice",
                rule.method,
                rule.path
            );
            let changes = rule.method != "GET";
            assert_eq!(
                changes,
                !rule.action.is_empty(),
                "{} {}: a change is named in the audit trail, a read is not",
                rule.method,
                rule.path
            );
        }
    }

    #[test]
    fn readers_only_read_and_platform_routes_are_outside_organizations() {
        for rule in RULES {
            if rule.roles.contains(&Role::Reader) {
                assert_eq!(rule.method, "GET", "{}", rule.path);
            }
            if rule.roles.is_empty() {
                assert!(
                    !rule.path.contains("{org}"),
                    "{} {}",
                    rule.method,
                    rule.path
                );
            }
        }
    }
}
