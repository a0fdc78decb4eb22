//! Receipts: the POS's `ReceiptCreated` event as a type (parsed at the edge, strictly where money is
//! concerned, leniently elsewhere), the message ingest publishes, and applying a receipt to the
//! ledger exactly once, in one transaction.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgConnection;

mod batch;
mod locking;
mod sale;

pub use batch::apply_batch;
use sale::{SaleInput, apply_sales};

use crate::customers;
use crate::error::{Error, Result};
use crate::ledger::{self, EntryKind, NewEntry, Source, Wallet, describe};
use crate::money::{Amount, MoneyError, bounded, deserialize_decimal};
use crate::notifications::{self, Note};
use crate::orgs;
use crate::rules;
use crate::time::Stamp;

/// The event type that carries a receipt; other types are acknowledged and recorded as ignored.
pub const RECEIPT_CREATED: &str = "ReceiptCreated";

/// What every POS event has.
#[derive(Debug, Clone, Deserialize)]
pub struct EventHead {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    #[serde(rename = "type", deserialize_with = "non_empty")]
    pub event_type: String,
}

/// An event as it arrives, read in one pass: the envelope, with `data` left as raw JSON until the
/// event's type says what it is.
#[derive(Debug, Deserialize)]
pub struct IncomingEvent<'a> {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    #[serde(rename = "type", deserialize_with = "non_empty")]
    pub event_type: String,
    #[serde(borrow, default)]
    pub data: Option<&'a serde_json::value::RawValue>,
}

/// A `ReceiptCreated` event; unknown fields are kept in the raw payload, not here.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceiptCreated {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    pub data: Receipt,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Receipt {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    /// SELL, PAYBACK, BUY, BUYBACK, CORRECTION_…
    #[serde(rename = "type", deserialize_with = "non_empty")]
    pub kind: String,
    pub items: Vec<ReceiptItem>,
    /// Positive for a sale; a refund may come positive or negative.
    #[serde(rename = "totalAmount", deserialize_with = "signed_money")]
    pub total_amount: Decimal,
    #[serde(default)]
    pub extras: Extras,
    #[serde(rename = "dateTime", default)]
    pub date_time: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReceiptItem {
    #[serde(default)]
    pub name: String,
    #[serde(deserialize_with = "quantity")]
    pub quantity: Decimal,
    #[serde(deserialize_with = "signed_money")]
    pub price: Decimal,
    #[serde(rename = "sumPrice", deserialize_with = "signed_money")]
    pub sum_price: Decimal,
}

/// What the terminal app adds; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Extras {
    #[serde(rename = "billId", default, deserialize_with = "optional_id")]
    pub bill_id: Option<String>,
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() || s.len() > 200 {
        return Err(serde::de::Error::custom(
            "must be a non-empty string of at most 200 bytes",
        ));
    }
    Ok(s)
}

/// An amount that may be negative (refunds), with at most 2 decimals, within `MAX_AMOUNT` either way.
fn signed_money<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = quantity(d)?;
    if value.normalize().scale() > 2 {
        return Err(serde::de::Error::custom(MoneyError::TooPrecise(2)));
    }
    Ok(value.normalize())
}

/// A number within `MAX_AMOUNT` either way, with at most [`QUANTITY_PLACES`] decimals (a register
/// weighs in grams): nothing computed from it can overflow.
fn quantity<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = bounded(deserialize_decimal(d)?).map_err(serde::de::Error::custom)?;
    if value.normalize().scale() > QUANTITY_PLACES {
        return Err(serde::de::Error::custom(MoneyError::TooPrecise(
            QUANTITY_PLACES,
        )));
    }
    Ok(value)
}

/// Most decimals of a receipt line's quantity.
pub const QUANTITY_PLACES: u32 = 6;

/// A bill id sent as a string or a number; blank means none.
fn optional_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// The message ingest publishes for each event: the event exactly as the POS sent it, and who sent it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReceiptMessage {
    pub org_id: i64,
    pub integration_id: i64,
    /// When ingest acknowledged the event to the POS.
    pub received_at: DateTime<Utc>,
    pub event: serde_json::Value,
}

impl ReceiptMessage {
    /// The message's JSON, built around the event's bytes as the POS sent them (already checked
    /// to be JSON), so the hot path does not parse and serialize the event once more.
    pub fn encode_raw(
        org_id: i64,
        integration_id: i64,
        received_at: DateTime<Utc>,
        event: &[u8],
    ) -> Vec<u8> {
        let head = format!(
            r#"{{"org_id":{org_id},"integration_id":{integration_id},"received_at":"{}","event":"#,
            received_at.to_rfc3339()
        );
        let mut out = Vec::with_capacity(head.len() + event.len() + 1);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(event);
        out.push(b'}');
        out
    }
}

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed {
        customer_id: i64,
        invoice_id: String,
    },
    /// The event, or the receipt under another event id, was applied before.
    Duplicate,
    /// No bill to apply it to; kept for operators.
    Unmatched { reason: String },
    /// Not a receipt that moves bonuses (another event type, BUY, corrections…).
    Ignored,
}

impl Outcome {
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Processed { .. } => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::Unmatched { .. } => "unmatched",
            Outcome::Ignored => "ignored",
        }
    }
}

fn race() -> Error {
    Error::conflict(
        crate::error::RACE,
        "the same receipt was applied concurrently",
    )
}

/// Reads a stored or queued event as `T`; a refusal names the field (`data.totalAmount`).
pub(crate) fn read_event<T: serde::de::DeserializeOwned>(event: &serde_json::Value) -> Result<T> {
    serde_path_to_error::deserialize(event.clone()).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "event".to_owned()
        } else {
            path
        };
        Error::invalid(field, e.into_inner().to_string())
    })
}

/// Whether any text of `value`, key or string, holds a NUL, which PostgreSQL refuses in text and
/// jsonb: such a receipt can never be stored, so it is refused instead of retried.
pub(crate) fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
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

/// What is known of a failed receipt, for its row.
struct FailedRow {
    org_id: i64,
    event_id: String,
    integration_id: Option<i64>,
    event_type: String,
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
    let head: Option<EventHead> = serde_json::from_value(message.event.clone()).ok();
    // The receipt's own id, so operators can tell which sale failed (a failed row takes no effect,
    // so it never collides with the receipt's applied row).
    let receipt_id = message.event.pointer("/data/id").and_then(|id| match id {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    let row = FailedRow {
        org_id: message.org_id,
        event_id: head.as_ref().map_or_else(String::new, |h| h.id.clone()),
        integration_id: Some(message.integration_id),
        event_type: head.map_or_else(String::new, |h| h.event_type),
        receipt_id,
        payload: message.event.clone(),
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
        event_id,
        integration_id: None,
        event_type: String::new(),
        receipt_id: None,
        payload: serde_json::Value::String(String::from_utf8_lossy(body).into_owned()),
        received_at: Utc::now(),
    };
    insert_failure(conn, row, attempt, error, true).await
}

async fn insert_failure(
    conn: &mut PgConnection,
    row: FailedRow,
    attempt: u32,
    error: &str,
    dead: bool,
) -> Result<()> {
    let payload = storable_json(&row.payload);
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
        .bind(storable(&row.event_id))
        .bind(row.integration_id)
        .bind(storable(&row.event_type))
        .bind(if dead { "dead" } else { "retrying" })
        .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
        .bind(storable(error))
        .bind(payload)
        .bind(row.received_at)
        .bind(row.receipt_id.as_deref().map(storable))
    };
    if insert(payload.clone()).execute(&mut *conn).await.is_err() {
        insert(serde_json::Value::String(payload.to_string()))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct OpenBill {
    id: i64,
    customer_id: i64,
    status: String,
    bonus_payment: Decimal,
    bonus_wallet: Option<String>,
    paid_by_receipt: Option<String>,
}

/// The bill a receipt names, when it is one of this organization's.
async fn named_bill(
    conn: &mut PgConnection,
    org_id: i64,
    receipt: &Receipt,
) -> Result<Result<OpenBill, String>> {
    let Some(bill_ref) = receipt.extras.bill_id.as_deref() else {
        return Ok(Err("the receipt names no bill (extras.billId)".into()));
    };
    let Ok(bill_id) = bill_ref.parse::<i64>() else {
        return Ok(Err(format!("bill {bill_ref:?} is not one of ours")));
    };
    let bill: Option<OpenBill> = sqlx::query_as(
        "select id, customer_id, status, bonus_payment, bonus_wallet, paid_by_receipt
         from bills where org_id = $1 and id = $2 for update",
    )
    .bind(org_id)
    .bind(bill_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(bill.ok_or_else(|| format!("no bill {bill_id} in this organization")))
}

/// A refund of an earlier sale, possibly partial: gives back the bonuses paid and takes back the
/// accrual, both in proportion to the amount refunded. If the customer has already spent the
/// accrual, the wallet stops at zero and the shortfall is recorded for operators.
async fn payback(
    conn: &mut PgConnection,
    message: &ReceiptMessage,
    event_id: &str,
    receipt: &Receipt,
) -> Result<Outcome> {
    let bill = match named_bill(conn, message.org_id, receipt).await? {
        Ok(bill) => bill,
        Err(reason) => return Ok(Outcome::Unmatched { reason }),
    };
    let Some(sale_receipt) = bill
        .paid_by_receipt
        .as_deref()
        .filter(|_| bill.status == "paid")
    else {
        return Ok(Outcome::Unmatched {
            reason: format!(
                "bill {} is {}; there is no sale to refund",
                bill.id, bill.status
            ),
        });
    };
    let refunded_now = receipt.total_amount.abs();
    if refunded_now.is_zero() {
        return Err(Error::invalid(
            "data.totalAmount",
            "a refund must have a non-zero total",
        ));
    }
    let (customer_id, invoice_id, sale_total): (i64, String, Decimal) = sqlx::query_as(
        "select customer_id, invoice_id, total_amount from receipts
         where org_id = $1 and receipt_id = $2 and status = 'processed'",
    )
    .bind(message.org_id)
    .bind(sale_receipt)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::invalid("data.extras.billId", "the bill's sale is not recorded"))?;
    let org = orgs::get(conn, message.org_id).await?;
    customers::lock(conn, org.id, customer_id).await?;
    let (refunded_before, accrual_reversed_before, payment_returned_before): (Decimal, Decimal, Decimal) = sqlx::query_as(
        "select coalesce(sum(refunded_amount), 0), coalesce(sum(accrual_due), 0), coalesce(sum(payment_returned), 0)
         from refunds where org_id = $1 and sale_receipt_id = $2",
    )
    .bind(org.id)
    .bind(sale_receipt)
    .fetch_one(&mut *conn)
    .await?;
    // What the sale did to this customer's wallets, read from its own entries.
    let sale_entries: Vec<(String, String, Decimal)> = sqlx::query_as(
        "select wallet, kind, amount from ledger_entries
         where org_id = $1 and customer_id = $2 and source = 'receipt' and source_ref = $3",
    )
    .bind(org.id)
    .bind(customer_id)
    .bind(sale_receipt)
    .fetch_all(&mut *conn)
    .await?;
    let overflow = || Error::invalid("data.totalAmount", MoneyError::Overflow.to_string());
    let accrued = sale_entries
        .iter()
        .filter(|(w, k, _)| w == "main" && k == "accrual")
        .try_fold(Decimal::ZERO, |sum, (_, _, a)| sum.checked_add(*a))
        .ok_or_else(overflow)?;
    let paid = sale_entries
        .iter()
        .find(|(_, k, _)| k == "deduction")
        .and_then(|(w, _, a)| Some((Wallet::parse(w)?, *a)));

    let refunded_total = refunded_before
        .checked_add(refunded_now)
        .ok_or_else(overflow)?;
    let at = Stamp::now_in(org.time_zone);
    let reference = receipt.id.as_str();
    let mut payment_returned = Decimal::ZERO;
    if let Some((wallet, amount)) = paid {
        payment_returned =
            rules::refund_share(amount, sale_total, refunded_total, payment_returned_before)
                .map_err(|_| overflow())?;
        if let Ok(back) = Amount::new(payment_returned) {
            let text = describe::refund_payment(&invoice_id);
            ledger::post(
                conn,
                &NewEntry {
                    org_id: org.id,
                    customer_id,
                    wallet,
                    kind: EntryKind::Accrual,
                    amount: back,
                    description: &text,
                    source: Source::Refund,
                    source_ref: Some(reference),
                    at,
                },
            )
            .await?;
        }
    }
    let accrual_due =
        rules::refund_share(accrued, sale_total, refunded_total, accrual_reversed_before)
            .map_err(|_| overflow())?;
    let available = customers::lock(conn, org.id, customer_id)
        .await?
        .bonuses_available;
    let accrual_taken = accrual_due.min(available.max(Decimal::ZERO));
    if let Ok(taken) = Amount::new(accrual_taken) {
        let text = describe::refund_reversal(&invoice_id);
        ledger::post(
            conn,
            &NewEntry {
                org_id: org.id,
                customer_id,
                wallet: Wallet::Main,
                kind: EntryKind::Deduction,
                amount: taken,
                description: &text,
                source: Source::Refund,
                source_ref: Some(reference),
                at,
            },
        )
        .await?;
    }
    if accrual_taken < accrual_due {
        tracing::warn!(org = org.id, customer = customer_id, receipt = %receipt.id, shortfall = %(accrual_due - accrual_taken), "refund shortfall: bonuses already spent");
    }
    sqlx::query(
        "insert into refunds (org_id, receipt_id, sale_receipt_id, customer_id, invoice_id, refunded_amount, accrual_due,
                              accrual_taken, payment_returned)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(org.id)
    .bind(&receipt.id)
    .bind(sale_receipt)
    .bind(customer_id)
    .bind(&invoice_id)
    .bind(refunded_now)
    .bind(accrual_due)
    .bind(accrual_taken)
    .bind(payment_returned)
    .execute(&mut *conn)
    .await?;
    let payload = serde_json::json!({
        "invoice_id": invoice_id,
        "refunded": refunded_now.to_string(),
        "returned": payment_returned.to_string(),
        "taken": accrual_taken.to_string(),
    });
    let note = Note {
        org_id: org.id,
        customer_id,
        kind: notifications::NotificationKind::Refund,
        payload,
        trace_id: event_id,
    };
    notifications::queue(conn, std::slice::from_ref(&note)).await?;
    Ok(Outcome::Processed {
        customer_id,
        invoice_id,
    })
}

/// What attaching an unmatched receipt did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Attached {
    pub receipt_id: String,
    pub customer_id: String,
    pub invoice_id: String,
    pub status: String,
}

/// Applies an unmatched sale to a customer, once: a second attach finds it processed.
pub async fn attach(
    conn: &mut PgConnection,
    org_id: i64,
    receipt_id: &str,
    customer_id: i64,
) -> Result<Attached> {
    let row: Option<(String, String, Option<String>, serde_json::Value)> = sqlx::query_as(
        "select event_id, status, receipt_type, payload from receipts
         where org_id = $1 and receipt_id = $2 and status in ('unmatched', 'processed', 'ignored')
         for update",
    )
    .bind(org_id)
    .bind(receipt_id)
    .fetch_optional(&mut *conn)
    .await?;
    let (event_id, status, kind, payload) = row.ok_or(Error::NotFound("receipt"))?;
    if status != "unmatched" {
        return Err(Error::conflict(
            "not_unmatched",
            format!("the receipt is {status}; only unmatched receipts can be attached"),
        ));
    }
    if kind.as_deref() != Some("SELL") {
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
        .map_err(|e| match e {
            Error::NotFound(_) => Error::invalid(
                "customer_id",
                "no customer of this organization has this id",
            ),
            other => other,
        })?;
    let sale = SaleInput {
        org: &org,
        customer_id,
        total: event.data.total_amount,
        items: &event.data.items,
        hold: None,
        receipt_id,
        event_id: &event_id,
    };
    let invoice_id = apply_sales(conn, std::slice::from_ref(&sale))
        .await?
        .remove(0);
    sqlx::query(
        "update receipts set status = 'processed', customer_id = $3, invoice_id = $4, reason = 'attached by an operator',
                             processed_at = now(), updated_at = now()
         where org_id = $1 and event_id = $2",
    )
    .bind(org_id)
    .bind(&event_id)
    .bind(customer_id)
    .bind(&invoice_id)
    .execute(&mut *conn)
    .await?;
    Ok(Attached {
        receipt_id: receipt_id.to_owned(),
        customer_id: customer_id.to_string(),
        invoice_id,
        status: "processed".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_built_around_the_raw_event_decodes_to_the_same_event() {
        let event = br#"{"id": "e1", "type": "ReceiptCreated", "data": {"totalAmount": 15.9}}"#;
        let at = DateTime::parse_from_rfc3339("2026-03-11T12:01:32.123456Z")
            .expect("date")
            .to_utc();
        let message: ReceiptMessage =
            serde_json::from_slice(&ReceiptMessage::encode_raw(7, 9, at, event)).expect("decodes");
        assert_eq!(
            (message.org_id, message.integration_id, message.received_at),
            (7, 9, at)
        );
        assert_eq!(
            message.event,
            serde_json::from_slice::<serde_json::Value>(event).expect("json")
        );
    }
}
