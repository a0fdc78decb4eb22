//! Recording receipts that failed, so operators see them beside the applied ones: a failed attempt
//! (`retrying`, or `dead` after the last one) and a message that is no receipt message at all.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{ReceiptMessage, ReceiptStatus};
use crate::error::Result;

/// What is known of a failed receipt, for its row.
struct FailedRow<'a> {
    org_id: i64,
    event_id: &'a str,
    integration_id: Option<i64>,
    event_type: &'a str,
    receipt_id: Option<String>,
    payload: serde_json::Value,
    received_at: DateTime<Utc>,
}

/// Records a failed attempt (in its own transaction: the attempt's own rolled back). Whatever the
/// message holds, the row is written: NULs are replaced, and a payload PostgreSQL refuses (a number
/// beyond its range) is kept as text.
pub async fn record_failure(
    conn: &mut PgConnection,
    message: &ReceiptMessage,
    attempt: u32,
    error: &str,
    dead: bool,
) -> Result<()> {
    let head = message.head();
    // The receipt's own id, so operators can tell which sale failed (a failed row takes no effect,
    // so it never collides with the receipt's applied row). Taken as it stands in the event: the
    // receipt may be what failed to read.
    let receipt_id = message.event.pointer("/data/id").and_then(|id| match id {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let row = FailedRow {
        org_id: message.org_id,
        event_id: head.map_or("", |h| h.id.as_str()),
        integration_id: Some(message.integration_id),
        event_type: head.map_or("", |h| h.event_type.as_str()),
        receipt_id,
        payload: storable_json(&message.event),
        received_at: message.received_at,
    };
    insert_failure(conn, row, attempt, error, dead).await
}

/// Records a message that is not a readable receipt message at all (not JSON, nested too deep), as
/// dead: its organization from the `org` header, its event id from the AMQP message id (or the
/// body's digest), its body as a JSON string.
pub async fn record_unreadable(
    conn: &mut PgConnection,
    org_id: i64,
    message_id: Option<&str>,
    body: &[u8],
    attempt: u32,
    error: &str,
) -> Result<()> {
    use sha2::{Digest, Sha256};
    let event_id = match message_id.filter(|id| !id.trim().is_empty()) {
        Some(id) => id.to_owned(),
        None => format!("unreadable-{}", hex::encode(&Sha256::digest(body)[..8])),
    };
    let row = FailedRow {
        org_id,
        event_id: &event_id,
        integration_id: None,
        event_type: "",
        receipt_id: None,
        payload: serde_json::Value::String(storable(&String::from_utf8_lossy(body))),
        received_at: Utc::now(),
    };
    insert_failure(conn, row, attempt, error, true).await
}

async fn insert_failure(
    conn: &mut PgConnection,
    row: FailedRow<'_>,
    attempt: u32,
    error: &str,
    dead: bool,
) -> Result<()> {
    let status = if dead {
        ReceiptStatus::Dead
    } else {
        ReceiptStatus::Retrying
    };
    let insert = |payload: serde_json::Value| {
        sqlx::query(
            "insert into receipts (org_id, event_id, integration_id, event_type, status, attempts, last_error, payload,
                                   received_at, receipt_id)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             on conflict (org_id, event_id) do update set
                 status = excluded.status, attempts = excluded.attempts, last_error = excluded.last_error, updated_at = now()
             where receipts.status in ('retrying', 'dead')",
        )
        .bind(row.org_id)
        .bind(storable(row.event_id))
        .bind(row.integration_id)
        .bind(storable(row.event_type))
        .bind(status)
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(storable(error))
        .bind(payload)
        .bind(row.received_at)
        .bind(row.receipt_id.as_deref().map(storable))
    };
    if let Err(refused) = insert(row.payload.clone()).execute(&mut *conn).await {
        tracing::warn!(org = row.org_id, event = %storable(row.event_id), error = %refused, "failed receipt's payload refused as JSON; kept as text");
        insert(serde_json::Value::String(row.payload.to_string()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `text` as PostgreSQL takes it: each NUL becomes U+FFFD.
fn storable(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

fn storable_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(storable(s)),
        Value::Array(items) => Value::Array(items.iter().map(storable_json).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (storable(k), storable_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
