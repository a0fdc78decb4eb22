//! Receipts: the POS's `ReceiptCreated` event as a type (parsed at the edge, strictly where money is
//! concerned, leniently elsewhere), the message ingest publishes, and applying a receipt to the
//! ledger exactly once, in one transaction.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use sqlx::PgConnection;

use crate::customers;
use crate::error::{Error, Result, violated_constraint};
use crate::ledger::{self, EntryKind, NewEntry, Source, Wallet, describe};
use crate::money::{Amount, MoneyError, deserialize_decimal};
use crate::orgs;
use crate::rules::{self, BonusSettings};
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
    #[serde(deserialize_with = "deserialize_decimal")]
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

/// An amount that may be negative (refunds), with at most 2 decimals.
fn signed_money<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = deserialize_decimal(d)?;
    if value.normalize().scale() > 2 {
        return Err(serde::de::Error::custom(MoneyError::TooPrecise(2)));
    }
    Ok(value.normalize())
}

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

/// Applies one message in the caller's transaction. Everything it writes commits or rolls back
/// together with the receipt's row, which is what makes a redelivery a no-op.
pub async fn apply(conn: &mut PgConnection, message: &ReceiptMessage) -> Result<Outcome> {
    let head: EventHead = serde_json::from_value(message.event.clone())
        .map_err(|e| Error::invalid("event", e.to_string()))?;
    // The event id is claimed first: a second delivery of it waits here for the first to commit.
    let seen: Option<String> = sqlx::query_scalar(
        "select status from receipts where org_id = $1 and event_id = $2 for update",
    )
    .bind(message.org_id)
    .bind(&head.id)
    .fetch_optional(&mut *conn)
    .await?;
    if seen
        .as_deref()
        .is_some_and(|s| s != "retrying" && s != "dead")
    {
        return Ok(Outcome::Duplicate);
    }
    let row = ReceiptRow::new(message, &head);
    if head.event_type != RECEIPT_CREATED {
        row.save(conn, &Outcome::Ignored).await?;
        return Ok(Outcome::Ignored);
    }
    let event: ReceiptCreated = serde_json::from_value(message.event.clone())
        .map_err(|e| Error::invalid("event", e.to_string()))?;
    let receipt = &event.data;
    let row = row.receipt(receipt);
    let earlier: Option<String> = sqlx::query_scalar(
        "select event_id from receipts where org_id = $1 and receipt_id = $2
           and status in ('processed', 'unmatched', 'ignored')",
    )
    .bind(message.org_id)
    .bind(&receipt.id)
    .fetch_optional(&mut *conn)
    .await?;
    if earlier.is_some() {
        row.save(conn, &Outcome::Duplicate).await?;
        return Ok(Outcome::Duplicate);
    }
    let outcome = match receipt.kind.as_str() {
        "SELL" => sell(conn, message, &head.id, receipt).await?,
        "PAYBACK" => payback(conn, message, &head.id, receipt).await?,
        _ => Outcome::Ignored,
    };
    row.save(conn, &outcome).await?;
    Ok(outcome)
}

/// The receipt's row, filled as far as processing got.
struct ReceiptRow<'a> {
    message: &'a ReceiptMessage,
    event_id: &'a str,
    event_type: &'a str,
    receipt_id: Option<&'a str>,
    receipt_type: Option<&'a str>,
    total: Option<Decimal>,
    bill_id: Option<i64>,
}

impl<'a> ReceiptRow<'a> {
    fn new(message: &'a ReceiptMessage, head: &'a EventHead) -> Self {
        Self {
            message,
            event_id: &head.id,
            event_type: &head.event_type,
            receipt_id: None,
            receipt_type: None,
            total: None,
            bill_id: None,
        }
    }

    fn receipt(self, receipt: &'a Receipt) -> Self {
        Self {
            receipt_id: Some(&receipt.id),
            receipt_type: Some(&receipt.kind),
            total: Some(receipt.total_amount),
            bill_id: receipt
                .extras
                .bill_id
                .as_deref()
                .and_then(|b| b.parse().ok()),
            ..self
        }
    }

    async fn save(&self, conn: &mut PgConnection, outcome: &Outcome) -> Result<()> {
        let (customer_id, invoice_id, reason) = match outcome {
            Outcome::Processed {
                customer_id,
                invoice_id,
            } => (Some(*customer_id), Some(invoice_id.as_str()), None),
            Outcome::Unmatched { reason } => (None, None, Some(reason.as_str())),
            _ => (None, None, None),
        };
        let saved = sqlx::query(
            "insert into receipts (org_id, event_id, receipt_id, integration_id, event_type, receipt_type, status,
                                   reason, bill_id, customer_id, invoice_id, total_amount, payload, received_at,
                                   processed_at)
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now())
             on conflict (org_id, event_id) do update set
                 status = excluded.status, reason = excluded.reason, bill_id = excluded.bill_id,
                 customer_id = excluded.customer_id, invoice_id = excluded.invoice_id,
                 receipt_id = excluded.receipt_id, receipt_type = excluded.receipt_type,
                 total_amount = excluded.total_amount, processed_at = now(), updated_at = now(),
                 attempts = receipts.attempts + 1
             where receipts.status in ('retrying', 'dead')",
        )
        .bind(self.message.org_id)
        .bind(self.event_id)
        .bind(self.receipt_id)
        .bind(self.message.integration_id)
        .bind(self.event_type)
        .bind(self.receipt_type)
        .bind(outcome.status())
        .bind(reason)
        .bind(self.bill_id)
        .bind(customer_id)
        .bind(invoice_id)
        .bind(self.total)
        .bind(&self.message.event)
        .bind(self.message.received_at)
        .execute(conn)
        .await
        .map_err(|e| match violated_constraint(&e) {
            // Another event carrying the same receipt committed first: retried, it is a duplicate.
            Some("receipts_take_effect_once") => race(),
            _ => e.into(),
        })?;
        // Another delivery of this very event committed while this one ran (a redelivery after a
        // lost ack): this transaction rolls back, and run again it finds a duplicate.
        if saved.rows_affected() == 0 {
            return Err(race());
        }
        Ok(())
    }
}

fn race() -> Error {
    Error::conflict("receipt_race", "the same receipt was applied concurrently")
}

/// Records a failed attempt (in its own transaction: the attempt's own rolled back).
pub async fn record_failure(
    conn: &mut PgConnection,
    message: &ReceiptMessage,
    attempt: u32,
    error: &str,
    dead: bool,
) -> Result<()> {
    let head: Option<EventHead> = serde_json::from_value(message.event.clone()).ok();
    let event_id = head.as_ref().map_or("", |h| h.id.as_str());
    let event_type = head.as_ref().map_or("", |h| h.event_type.as_str());
    sqlx::query(
        "insert into receipts (org_id, event_id, integration_id, event_type, status, attempts, last_error, payload, received_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (org_id, event_id) do update set
             status = excluded.status, attempts = excluded.attempts, last_error = excluded.last_error, updated_at = now()
         where receipts.status in ('retrying', 'dead')",
    )
    .bind(message.org_id)
    .bind(event_id)
    .bind(message.integration_id)
    .bind(event_type)
    .bind(if dead { "dead" } else { "retrying" })
    .bind(i32::try_from(attempt).unwrap_or(i32::MAX))
    .bind(error)
    .bind(&message.event)
    .bind(message.received_at)
    .execute(conn)
    .await?;
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

/// A sale: capture the bill's hold, record the invoice, accrue, reward the referrer on the first
/// purchase, close the bill, and queue the notifications.
async fn sell(
    conn: &mut PgConnection,
    message: &ReceiptMessage,
    event_id: &str,
    receipt: &Receipt,
) -> Result<Outcome> {
    let bill = match named_bill(conn, message.org_id, receipt).await? {
        Ok(bill) => bill,
        Err(reason) => return Ok(Outcome::Unmatched { reason }),
    };
    if bill.status != "open" {
        return Ok(Outcome::Unmatched {
            reason: format!("bill {} is {}", bill.id, bill.status),
        });
    }
    let org = orgs::get(conn, message.org_id).await?;
    let applied = apply_sale(
        conn,
        &org,
        Sale {
            customer_id: bill.customer_id,
            total: receipt.total_amount,
            items: receipt.items.as_slice(),
            hold: bill
                .bonus_wallet
                .as_deref()
                .and_then(Wallet::parse)
                .map(|w| (w, bill.bonus_payment)),
            receipt_id: &receipt.id,
            event_id,
        },
    )
    .await?;
    sqlx::query("update bills set status = 'paid', closed_at = now(), paid_by_receipt = $3 where org_id = $1 and id = $2")
        .bind(message.org_id)
        .bind(bill.id)
        .bind(&receipt.id)
        .execute(&mut *conn)
        .await?;
    Ok(Outcome::Processed {
        customer_id: bill.customer_id,
        invoice_id: applied,
    })
}

struct Sale<'a> {
    customer_id: i64,
    total: Decimal,
    items: &'a [ReceiptItem],
    /// The bonus payment held by the bill: captured now.
    hold: Option<(Wallet, Decimal)>,
    receipt_id: &'a str,
    event_id: &'a str,
}

/// Applies a sale to a customer; returns the new invoice's id.
async fn apply_sale(
    conn: &mut PgConnection,
    org: &orgs::Organization,
    sale: Sale<'_>,
) -> Result<String> {
    if sale.total <= Decimal::ZERO {
        return Err(Error::invalid(
            "data.totalAmount",
            "a sale must have a positive total",
        ));
    }
    customers::lock(conn, org.id, sale.customer_id).await?;
    let (first_name, referred_by, first_purchase_made): (Option<String>, Option<i64>, bool) = sqlx::query_as(
        "select first_name, referred_by, has_made_first_purchase from customers where org_id = $1 and id = $2",
    )
    .bind(org.id)
    .bind(sale.customer_id)
    .fetch_one(&mut *conn)
    .await?;
    let settings: BonusSettings = org.bonus_program_settings.into();
    let at = Stamp::now_in(org.time_zone);
    let invoice_id = new_invoice_id(conn, org.id).await?;
    let payment_text = describe::bill_payment(&invoice_id);
    let accrual_text = describe::purchase_accrual(&invoice_id);
    let reward_text = describe::friend_reward(first_name.as_deref().unwrap_or_default());
    let entry = |customer_id, wallet, kind, amount, description| NewEntry {
        org_id: org.id,
        customer_id,
        wallet,
        kind,
        amount,
        description,
        source: Source::Receipt,
        source_ref: Some(sale.receipt_id),
        at,
    };
    let mut notes = Vec::new();

    let mut paid_with_bonuses = Decimal::ZERO;
    if let Some((wallet, held)) = sale.hold.filter(|(_, held)| *held > Decimal::ZERO) {
        crate::bills::release(conn, org.id, sale.customer_id, wallet, held).await?;
        if let Ok(amount) = Amount::new(held) {
            ledger::post(
                conn,
                &entry(
                    sale.customer_id,
                    wallet,
                    EntryKind::Deduction,
                    amount,
                    &payment_text,
                ),
            )
            .await?;
            notes.push((sale.customer_id, "bonus_payment", held));
        }
        paid_with_bonuses = held;
    }
    let accrual = rules::purchase_accrual(&settings, sale.total, paid_with_bonuses);
    if let Ok(amount) = Amount::new(accrual) {
        ledger::post(
            conn,
            &entry(
                sale.customer_id,
                Wallet::Main,
                EntryKind::Accrual,
                amount,
                &accrual_text,
            ),
        )
        .await?;
        notes.push((sale.customer_id, "purchase_accrual", accrual));
    }
    if !first_purchase_made {
        sqlx::query(
            "update customers set has_made_first_purchase = true where org_id = $1 and id = $2",
        )
        .bind(org.id)
        .bind(sale.customer_id)
        .execute(&mut *conn)
        .await?;
        if let Some(referrer) = referred_by {
            let reward = rules::referral_reward(&settings, sale.total, true);
            if let Ok(amount) = Amount::new(reward) {
                customers::lock(conn, org.id, referrer).await?;
                ledger::post(
                    conn,
                    &entry(
                        referrer,
                        Wallet::Referral,
                        EntryKind::Accrual,
                        amount,
                        &reward_text,
                    ),
                )
                .await?;
                notes.push((referrer, "referral_reward", reward));
            }
        }
    }
    let items: Vec<serde_json::Value> = sale
        .items
        .iter()
        .map(|i| {
            serde_json::json!({
                "product_name": i.name,
                "quantity": crate::legacy::money_json(i.quantity),
                "unit_price": crate::legacy::money_json(i.price),
                "item_total": crate::legacy::money_json(i.sum_price),
            })
        })
        .collect();
    sqlx::query(
        "insert into invoices (org_id, invoice_id, customer_id, occurred_at, utc_offset_seconds, total_amount, items,
                               bonuses_deducted, bonus_source_used, receipt_id)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(org.id)
    .bind(&invoice_id)
    .bind(sale.customer_id)
    .bind(at.utc())
    .bind(at.offset_seconds())
    .bind(sale.total)
    .bind(serde_json::Value::Array(items))
    .bind(paid_with_bonuses)
    .bind(sale.hold.filter(|(_, held)| *held > Decimal::ZERO).map(|(w, _)| w.as_str()))
    .bind(sale.receipt_id)
    .execute(&mut *conn)
    .await?;
    for (customer_id, kind, amount) in notes {
        let payload = serde_json::json!({ "amount": amount.to_string(), "invoice_id": invoice_id });
        queue_notification(conn, org.id, customer_id, kind, payload, sale.event_id).await?;
    }
    Ok(invoice_id)
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
    let accrued: Decimal = sale_entries
        .iter()
        .filter(|(w, k, _)| w == "main" && k == "accrual")
        .map(|(_, _, a)| *a)
        .sum();
    let paid = sale_entries
        .iter()
        .find(|(_, k, _)| k == "deduction")
        .and_then(|(w, _, a)| Some((Wallet::parse(w)?, *a)));

    let refunded_total = refunded_before + refunded_now;
    let at = Stamp::now_in(org.time_zone);
    let reference = receipt.id.as_str();
    let mut payment_returned = Decimal::ZERO;
    if let Some((wallet, amount)) = paid {
        payment_returned =
            rules::refund_share(amount, sale_total, refunded_total, payment_returned_before);
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
        rules::refund_share(accrued, sale_total, refunded_total, accrual_reversed_before);
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
    queue_notification(
        conn,
        org.id,
        customer_id,
        "refund",
        serde_json::json!({
            "invoice_id": invoice_id,
            "refunded": refunded_now.to_string(),
            "returned": payment_returned.to_string(),
            "taken": accrual_taken.to_string(),
        }),
        event_id,
    )
    .await?;
    Ok(Outcome::Processed {
        customer_id,
        invoice_id,
    })
}

/// Writes a notification to send, in the caller's transaction.
async fn queue_notification(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    kind: &str,
    payload: serde_json::Value,
    trace_id: &str,
) -> Result<()> {
    sqlx::query("insert into outbox (org_id, customer_id, kind, payload, trace_id) values ($1, $2, $3, $4, $5)")
        .bind(org_id)
        .bind(customer_id)
        .bind(kind)
        .bind(payload)
        .bind(trace_id)
        .execute(conn)
        .await?;
    Ok(())
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
    let event: ReceiptCreated =
        serde_json::from_value(payload).map_err(|e| Error::invalid("receipt", e.to_string()))?;
    let org = orgs::get(conn, org_id).await?;
    customers::lock(conn, org_id, customer_id)
        .await
        .map_err(|e| match e {
            Error::NotFound(_) => Error::invalid(
                "customer_id",
                "no customer of this organization has this id",
            ),
            other => other,
        })?;
    let invoice_id = apply_sale(
        conn,
        &org,
        Sale {
            customer_id,
            total: event.data.total_amount,
            items: &event.data.items,
            hold: None,
            receipt_id,
            event_id: &event_id,
        },
    )
    .await?;
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

/// A new invoice number: 8 uppercase hex characters like the old system's, unique per organization.
async fn new_invoice_id(conn: &mut PgConnection, org_id: i64) -> Result<String> {
    loop {
        let candidate = hex::encode_upper(rand::random::<[u8; 4]>());
        let taken: Option<i64> = sqlx::query_scalar(
            "select 1::bigint from invoices where org_id = $1 and invoice_id = $2",
        )
        .bind(org_id)
        .bind(&candidate)
        .fetch_optional(&mut *conn)
        .await?;
        if taken.is_none() {
            return Ok(candidate);
        }
    }
}
