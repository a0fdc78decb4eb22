//! `Idempotency-Key`: the first answer to a money-moving request is stored in the transaction that
//! made its effect, and a retry with the same key gets that answer back without a second effect.
//! A concurrent retry waits on the key's row until the first commits, then reads its answer.
//! A key is the client's name for one request in one place: it is scoped to the organization and
//! the route, so another organization (or another route) using the same key is another request.
//!
//! The same transaction writes the change's row of the audit trail (who, what, which customer,
//! what the request said): a change and its record commit together or not at all, and a retry
//! answered from the stored answer records nothing twice.

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use backon::BackoffBuilder;
use loyalty::access::{self, Actor};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::admin::access::{Caller, CustomerFrom, rule_of};
use crate::error::ApiError;
use crate::extract::{RawBody, parse_json};

const HEADER: &str = "idempotency-key";

/// `Retry-After` of a request whose transaction kept losing lock races: the racers are gone
/// within a second.
const RACE_RETRY_AFTER_SECS: u32 = 1;

/// A money-moving request: its JSON body (`value`) and, when it came with an `Idempotency-Key`,
/// the claim that gives every retry the first answer. A handler answers through
/// [`Idempotent::answer`], which runs its effect in the transaction that stores the answer.
pub struct Idempotent<T> {
    pub value: T,
    claim: Option<Claim>,
    /// Who sent it: the platform outside `/admin/v1`'s callers.
    actor: Actor,
    /// Its row of the audit trail, for a change through a route the access table names.
    audit: Option<Audit>,
}

/// The body of a request that has none (`DELETE`): `Idempotent<NoBody>` reads only the head.
pub struct NoBody;

/// The key a request came with, and the request as that key sees it.
pub struct Claim {
    key: IdempotencyKey,
    request: Fingerprint,
}

impl<T> Idempotent<T> {
    /// The client's key, if it sent one (an operator's movement records it as its reference).
    pub fn key(&self) -> Option<&str> {
        self.claim.as_ref().map(|c| c.key.as_str())
    }

    /// Who sent the request, as the ledger and the audit trail name them.
    pub fn actor(&self) -> Actor {
        self.actor
    }

    /// Runs `op` once for this request and answers `status` with its result (see [`transact`]).
    pub async fn answer<R: Serialize>(
        &self,
        db: &PgPool,
        status: StatusCode,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ApiError> + Clone,
    ) -> Result<Response, ApiError> {
        run(db, self.claim.as_ref(), self.audit.as_ref(), |_| status, op).await
    }

    /// As [`Idempotent::answer`], for an answer that holds a secret shown once (a new key or
    /// token): it is never stored, so the request's `Idempotency-Key` is not honoured and a
    /// retry makes another one. The change is audited all the same.
    pub async fn answer_unstored<R: Serialize>(
        &self,
        db: &PgPool,
        status: StatusCode,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ApiError> + Clone,
    ) -> Result<Response, ApiError> {
        run(db, None, self.audit.as_ref(), |_| status, op).await
    }

    /// As [`Idempotent::answer`], the status decided by the result; a retry gets the status
    /// the first answer had.
    pub async fn answer_with<R: Serialize>(
        &self,
        db: &PgPool,
        status: impl Fn(&R) -> StatusCode,
        op: impl AsyncFnOnce(&mut PgConnection) -> Result<R, ApiError> + Clone,
    ) -> Result<Response, ApiError> {
        run(db, self.claim.as_ref(), self.audit.as_ref(), status, op).await
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Idempotent<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let key = IdempotencyKey::from_headers(&parts.headers);
        let params = RawPathParams::from_request_parts(&mut parts, state)
            .await
            .ok();
        let req = Request::from_parts(parts, body);
        let method = req.method().clone();
        let uri = req.uri().clone();
        let route = req.extensions().get::<MatchedPath>().cloned();
        let caller = req.extensions().get::<Caller>().copied();
        let RawBody(bytes) = RawBody::from_request(req, state).await?;
        let value = parse_json(&bytes)?;
        // The body is judged before the key.
        let claim = key?.map(|key| Claim {
            key,
            request: Fingerprint::new(&method, &uri, route.as_ref(), &bytes),
        });
        let audit = Audit::of(caller, &method, route.as_ref(), params.as_ref(), &bytes);
        Ok(Idempotent {
            value,
            claim,
            actor: caller.map_or(Actor::Platform, |c| c.actor),
            audit,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Idempotent<NoBody> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let route = parts.extensions.get::<MatchedPath>();
        let claim = IdempotencyKey::from_headers(&parts.headers)?.map(|key| Claim {
            key,
            request: Fingerprint::new(&parts.method, &parts.uri, route, b""),
        });
        let caller = parts.extensions.get::<Caller>().copied();
        let route = route.cloned();
        let params = RawPathParams::from_request_parts(parts, state).await.ok();
        let audit = Audit::of(caller, &parts.method, route.as_ref(), params.as_ref(), b"");
        Ok(Idempotent {
            value: NoBody,
            claim,
            actor: caller.map_or(Actor::Platform, |c| c.actor),
            audit,
        })
    }
}

/// Largest request body kept whole in the audit trail's detail; a larger one (an import) is
/// recorded by its size.
const AUDIT_BODY_LIMIT: usize = 4096;

/// One change's row of the audit trail, as far as the request tells it; the answer completes
/// it (the id of what was created) when the change is made.
pub struct Audit {
    actor: Actor,
    /// The organization in the path; 0 where the change makes the organization (its id is the
    /// answer's).
    org: i64,
    action: &'static str,
    customer: CustomerFrom,
    /// The customer named by the path or the body.
    customer_id: Option<i64>,
    detail: Value,
}

impl Audit {
    /// The audit row of a change by `caller` through the route `route`, if the access table
    /// names the route's changes (reads and routes outside `/admin/v1` have none).
    fn of(
        caller: Option<Caller>,
        method: &Method,
        route: Option<&MatchedPath>,
        params: Option<&RawPathParams>,
        body: &[u8],
    ) -> Option<Self> {
        let caller = caller?;
        let rule = rule_of(method, route?.as_str()).filter(|r| !r.action.is_empty())?;
        let mut path = Map::new();
        let mut org = 0;
        for (name, value) in params.into_iter().flat_map(RawPathParams::iter) {
            if name == "org" {
                org = value.parse().unwrap_or(0);
            } else {
                path.insert(name.to_owned(), Value::String(value.to_owned()));
            }
        }
        let request: Option<Value> = if body.len() <= AUDIT_BODY_LIMIT {
            serde_json::from_slice(body).ok()
        } else {
            None
        };
        let customer_id = match rule.customer {
            CustomerFrom::Path => path.get("id").and_then(id_of),
            CustomerFrom::Body(field) => {
                request.as_ref().and_then(|b| b.get(field)).and_then(id_of)
            }
            CustomerFrom::None | CustomerFrom::Answer => None,
        };
        let mut detail = Map::new();
        if !path.is_empty() {
            detail.insert("path".into(), Value::Object(path));
        }
        match request {
            Some(mut request) => {
                redact(&mut request);
                if request.as_object().is_none_or(|o| !o.is_empty()) {
                    detail.insert("request".into(), request);
                }
            }
            None if !body.is_empty() => {
                detail.insert("request_bytes".into(), Value::from(body.len()));
            }
            None => {}
        }
        Some(Audit {
            actor: caller.actor,
            org,
            action: rule.action,
            customer: rule.customer,
            customer_id,
            detail: Value::Object(detail),
        })
    }

    /// Writes the row, `answer` being what the change answers.
    async fn record(&self, conn: &mut PgConnection, answer: &Value) -> Result<(), ApiError> {
        let org = match self.org {
            0 => answer.get("id").and_then(id_of),
            org => Some(org),
        };
        let Some(org) = org else {
            return Ok(());
        };
        let customer = match self.customer {
            CustomerFrom::Answer => answer.get("id").and_then(id_of),
            _ => self.customer_id,
        };
        access::record(conn, org, self.actor, self.action, customer, &self.detail).await?;
        Ok(())
    }
}

/// An id written as a number or as a numeric string (the legacy API writes them as strings).
fn id_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Replaces the values of secret fields (a bot token, anything named token or secret) with
/// whether one was given: the audit trail says a token was set, never which.
fn redact(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            for (name, field) in fields.iter_mut() {
                if name.contains("token") || name.contains("secret") {
                    *field =
                        Value::String(if field.is_null() { "removed" } else { "set" }.to_owned());
                } else {
                    redact(field);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// The client's key for this request, if it sent one.
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = value
            .to_str()
            .ok()
            .map(str::trim)
            .filter(|k| (1..=200).contains(&k.len()));
        key.map(|k| Some(Self(k.to_owned()))).ok_or_else(|| {
            ApiError::invalid(
                "Idempotency-Key",
                "must be 1 to 200 visible ASCII characters",
            )
        })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A request as its idempotency key sees it: where it went, and a digest (method, path, body) that
/// tells a retry from a different request under the same key.
pub struct Fingerprint {
    /// The organization in the path; 0 for the routes outside any (creating one, the import).
    org: i64,
    /// Method and path template, e.g. `POST /admin/v1/orgs/{org}/customers`.
    route: String,
    sha256: Vec<u8>,
}

impl Fingerprint {
    pub fn new(method: &Method, uri: &Uri, route: Option<&MatchedPath>, body: &[u8]) -> Self {
        let path = uri.path();
        let template = route.map_or(path, MatchedPath::as_str);
        // From the end: inside a nested router the path has lost its prefix, the template has not.
        let org = template
            .rsplit('/')
            .zip(path.rsplit('/'))
            .find(|(name, _)| *name == "{org}")
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0);
        let mut hash = Sha256::new();
        hash.update(method.as_str().as_bytes());
        hash.update(b" ");
        hash.update(path.as_bytes());
        hash.update(b"\n");
        hash.update(body);
        Self {
            org,
            route: format!("{method} {template}"),
            sha256: hash.finalize().to_vec(),
        }
    }
}

/// Runs `op` in one transaction and answers its result as JSON, with the status `status` gives it;
/// with a claim, the key is claimed in the same transaction, so the effect and the stored answer
/// (status included) commit together. A transaction that loses a lock race (a deadlock PostgreSQL
/// broke, a serialization failure, a row moved under it: see `loyalty::locks`) is rolled back and
/// run again, a few times, with backoff; if it keeps losing, the answer is a 503 to retry, never a
/// 500.
pub async fn transact<T: Serialize>(
    db: &PgPool,
    claim: Option<&Claim>,
    status: impl Fn(&T) -> StatusCode,
    op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ApiError> + Clone,
) -> Result<Response, ApiError> {
    run(db, claim, None, status, op).await
}

/// As [`transact`], writing the change's row of the audit trail, when it has one, in the same
/// transaction.
async fn run<T: Serialize>(
    db: &PgPool,
    claim: Option<&Claim>,
    audit: Option<&Audit>,
    status: impl Fn(&T) -> StatusCode,
    op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ApiError> + Clone,
) -> Result<Response, ApiError> {
    let mut delays = loyalty::locks::transient_retry().build();
    loop {
        let mut tx = db.begin().await?;
        if let Some(claim) = claim {
            if let Some(saved) = stored_answer(&mut tx, claim).await? {
                return Ok(saved);
            }
        }
        // Each attempt runs its own copy of `op` (it captures only references).
        let done = match op.clone()(&mut tx).await {
            Ok(value) => finish(tx, claim, audit, status(&value), &value).await,
            Err(err) => Err(err),
        };
        match done {
            Err(err) if lost_a_race(&err) => {
                let Some(wait) = delays.next() else {
                    tracing::warn!(error = %err, "transaction kept losing lock races");
                    return Err(ApiError::Unavailable {
                        message: "the request kept colliding with concurrent ones; retry shortly"
                            .into(),
                        retry_after_secs: RACE_RETRY_AFTER_SECS,
                    });
                };
                tracing::warn!(error = %err, ?wait, "transaction lost a lock race; running it again");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Records the change in the audit trail and stores the answer under the key (when there are
/// those), and commits.
async fn finish<T: Serialize>(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    claim: Option<&Claim>,
    audit: Option<&Audit>,
    status: StatusCode,
    value: &T,
) -> Result<Response, ApiError> {
    let body = serde_json::to_value(value).map_err(anyhow::Error::from)?;
    if let Some(audit) = audit {
        audit.record(&mut tx, &body).await?;
    }
    if let Some(Claim { key, request }) = claim {
        sqlx::query(
            "update idempotency_keys set status = $4, body = $5 \
             where org_id = $1 and route = $2 and key = $3",
        )
        .bind(request.org)
        .bind(&request.route)
        .bind(key.as_str())
        .bind(i16::try_from(status.as_u16()).unwrap_or(200))
        .bind(&body)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok((status, Json(body)).into_response())
}

/// Whether the transaction failed only because a concurrent one won a race for its rows.
fn lost_a_race(err: &ApiError) -> bool {
    match err {
        ApiError::Conflict { code, .. } => *code == loyalty::error::RACE,
        ApiError::Internal(err) => err
            .downcast_ref::<sqlx::Error>()
            .is_some_and(loyalty::locks::is_transient),
        _ => false,
    }
}

/// Claims the key for this transaction, or returns the answer already stored under it.
async fn stored_answer(
    conn: &mut PgConnection,
    Claim { key, request }: &Claim,
) -> Result<Option<Response>, ApiError> {
    let claimed = sqlx::query(
        "insert into idempotency_keys (org_id, route, key, request_sha256) values ($1, $2, $3, $4) \
         on conflict (org_id, route, key) do nothing",
    )
    .bind(request.org)
    .bind(&request.route)
    .bind(key.as_str())
    .bind(&request.sha256)
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    let (stored_digest, status, body): (Vec<u8>, Option<i16>, Option<serde_json::Value>) =
        sqlx::query_as(
            "select request_sha256, status, body from idempotency_keys \
             where org_id = $1 and route = $2 and key = $3",
        )
        .bind(request.org)
        .bind(&request.route)
        .bind(key.as_str())
        .fetch_one(&mut *conn)
        .await?;
    if stored_digest != request.sha256 {
        return Err(ApiError::invalid(
            "Idempotency-Key",
            "this key was already used for a different request; use a new key for a new request",
        ));
    }
    let status = status
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .unwrap_or(StatusCode::OK);
    Ok(Some(
        (status, Json(body.unwrap_or_default())).into_response(),
    ))
}
