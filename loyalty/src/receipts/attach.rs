//! An operator applying an unmatched sale to a customer, once: a second attach finds it processed.

use serde::Serialize;
use sqlx::PgConnection;

use super::ReceiptStatus;
use super::event::{ReceiptCreated, ReceiptKind, read_event};
use super::sale::{self, SaleInput, apply_sales};
use crate::error::{ConflictCode, Error, Result};
use crate::orgs;

/// What attaching an unmatched receipt did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attached {
    pub receipt_id: String,
    pub customer_id: String,
    pub invoice_id: String,
    pub status: ReceiptStatus,
}

/// A stored receipt as attaching reads it: event id, status, kind, payload and sale time.
type StoredReceipt = (
    String,
    ReceiptStatus,
    Option<ReceiptKind>,
    serde_json::Value,
    chrono::DateTime<chrono::Utc>,
);

/// Applies the unmatched sale `receipt_id` to `customer_id`.
pub async fn attach(
    conn: &mut PgConnection,
    org_id: i64,
    receipt_id: &str,
    customer_id: i64,
) -> Result<Attached> {
    let row: Option<StoredReceipt> = sqlx::query_as(
        "select event_id, status, receipt_type, payload, coalesce(sold_at, received_at) from receipts
         where org_id = $1 and receipt_id = $2 and status in ('unmatched', 'processed', 'ignored')
         for update",
    )
    .bind(org_id)
    .bind(receipt_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (event_id, status, kind, payload, sold_at) = row.ok_or(Error::NotFound("receipt"))?;
    if status != ReceiptStatus::Unmatched {
        return Err(Error::conflict(
            ConflictCode::NotUnmatched,
            format!("the receipt is {status}; only unmatched receipts can be attached"),
        ));
    }
    if kind != Some(ReceiptKind::Sell) {
        return Err(Error::invalid(
            "receipt",
            "only sales (SELL) can be attached to a customer",
        ));
    }
    let event: ReceiptCreated = read_event(&payload)?;
    let org = orgs::get(conn, org_id).await?;
    // The customer and their referrer, in the program's lock order, before `apply_sales` needs them.
    sale::lock_buyers(conn, vec![(org_id, customer_id)])
        .await
        .map_err(crate::customers::unknown_in_request)?;
    let sale = SaleInput {
        org: &org,
        customer_id,
        total: event.data.total_amount,
        items: &event.data.items,
        hold: None,
        receipt_id,
        event_id: &event_id,
        sold_at,
    };
    let invoice_id = apply_sales(conn, std::slice::from_ref(&sale))
        .await?
        .into_iter()
        .next()
        .ok_or(Error::NotFound("invoice"))?;
    sqlx::query(
        "update receipts set status = $5, customer_id = $3, invoice_id = $4, reason = 'attached by an operator',
                             processed_at = now(), updated_at = now()
         where org_id = $1 and event_id = $2",
    )
    .bind(org_id)
    .bind(&event_id)
    .bind(customer_id)
    .bind(&invoice_id)
    .bind(ReceiptStatus::Processed)
    .execute(&mut *conn)
    .await?;
    Ok(Attached {
        receipt_id: receipt_id.to_owned(),
        customer_id: customer_id.to_string(),
        invoice_id,
        status: ReceiptStatus::Processed,
    })
}
