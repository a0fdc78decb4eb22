//! Receipts as operators read them: the listing of the `receipts` table.

use serde::Serialize;

use super::ReceiptStatus;

/// A receipt as recorded.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReceiptRecord {
    pub org_id: i64,
    pub event_id: String,
    pub receipt_id: Option<String>,
    pub event_type: String,
    pub receipt_type: Option<String>,
    pub status: ReceiptStatus,
    pub reason: Option<String>,
    /// A duplicate's: the event id under which the same receipt (`receipt_id`) took effect.
    pub duplicate_of: Option<String>,
    pub bill_id: Option<i64>,
    pub customer_id: Option<i64>,
    pub invoice_id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub total_amount: Option<rust_decimal::Decimal>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// When the sale happened (the receipt's `dateTime`, when plausible): what its entries are
    /// dated by, however late it was applied.
    pub sold_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When a worker applied it.
    pub processed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last change: the last attempt of a retrying or dead receipt.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Receipts of one organization (or all), with one of `statuses` (or any), latest change first.
pub async fn list<'c>(
    db: impl sqlx::PgExecutor<'c>,
    org: Option<i64>,
    statuses: Option<&[&str]>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<ReceiptRecord>> {
    sqlx::query_as(
        "select org_id, event_id, receipt_id, event_type, receipt_type, status, reason, duplicate_of, bill_id,
                customer_id, invoice_id, total_amount, attempts, last_error, received_at, sold_at, processed_at,
                updated_at
         from receipts where ($1::bigint is null or org_id = $1) and ($2::text[] is null or status = any($2))
         order by updated_at desc, event_id limit $3 offset $4",
    )
    .bind(org)
    .bind(statuses)
    .bind(limit)
    .bind(offset)
    .fetch_all(db)
    .await
}
