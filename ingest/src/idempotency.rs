//! `Idempotency-Key`: the first answer to a money-moving request is stored in the transaction that
//! made its effect, and a retry with the same key gets that answer back without a second effect.
//! A concurrent retry waits on the key's row until the first commits, then reads its answer.

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use backon::BackoffBuilder;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::error::ApiError;

const HEADER: &str = "idempotency-key";

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

/// Runs `op` in one transaction and answers `status` with its result as JSON; with a key, the key is
/// claimed in the same transaction, so the effect and the stored answer commit together. A
/// transaction that loses a lock race (a deadlock PostgreSQL broke, a serialization failure, a row
/// moved under it: see `loyalty::locks`) is rolled back and run again, a few times, with backoff;
/// if it keeps losing, the answer is a 503 to retry, never a 500.
pub async fn transact<T: Serialize>(
    db: &PgPool,
    key: Option<&IdempotencyKey>,
    digest: &[u8],
    status: StatusCode,
    op: impl AsyncFnOnce(&mut PgConnection) -> Result<T, ApiError> + Clone,
) -> Result<Response, ApiError> {
    let mut delays = loyalty::locks::transient_retry().build();
    loop {
        let mut tx = db.begin().await?;
        if let Some(key) = key {
            if let Some(saved) = claim(&mut tx, key, digest).await? {
                return Ok(saved);
            }
        }
        // Each attempt runs its own copy of `op` (it captures only references).
        let done = match op.clone()(&mut tx).await {
            Ok(value) => finish(tx, key, status, &value).await,
            Err(err) => Err(err),
        };
        match done {
            Err(err) if lost_a_race(&err) => {
                let Some(wait) = delays.next() else {
                    tracing::warn!(error = %err, "transaction kept losing lock races");
                    return Err(ApiError::Unavailable {
                        message: "the request kept colliding with concurrent ones; retry shortly"
                            .into(),
                        retry_after_secs: 1,
                    });
                };
                tracing::warn!(error = %err, ?wait, "transaction lost a lock race; running it again");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Stores the answer under the key (when there is one) and commits.
async fn finish<T: Serialize>(
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    key: Option<&IdempotencyKey>,
    status: StatusCode,
    value: &T,
) -> Result<Response, ApiError> {
    let body = serde_json::to_value(value).map_err(anyhow::Error::from)?;
    if let Some(key) = key {
        sqlx::query("update idempotency_keys set status = $2, body = $3 where key = $1")
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
async fn claim(
    conn: &mut PgConnection,
    key: &IdempotencyKey,
    digest: &[u8],
) -> Result<Option<Response>, ApiError> {
    let claimed = sqlx::query(
        "insert into idempotency_keys (key, request_sha256) values ($1, $2) on conflict (key) do nothing",
    )
    .bind(key.as_str())
    .bind(digest)
    .execute(&mut *conn)
    .await?;
    if claimed.rows_affected() == 1 {
        return Ok(None);
    }
    let (stored_digest, status, body): (Vec<u8>, Option<i16>, Option<serde_json::Value>) =
        sqlx::query_as("select request_sha256, status, body from idempotency_keys where key = $1")
            .bind(key.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if stored_digest != digest {
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
