//! A refund (`PAYBACK`) of an earlier sale, possibly partial: [`rules::refund_effects`] decides
//! what goes back and what is taken back; this applies it and records it.

use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{Outcome, Receipt, out_of_range};
use crate::bills::{self, BillStatus};
use crate::customers;
use crate::error::{Error, Result};
use crate::ledger::{self, EntryKind, NewEntry, Source, Wallet, describe};
use crate::lots;
use crate::money::Amount;
use crate::notifications::{self, Note, NotificationKind};
use crate::orgs;
use crate::rules::{self, RefundedBefore};
use crate::time::Stamp;

/// Applies the refund `receipt` (of event `event_id`) of organization `org_id`, dated
/// `refunded_at` (the receipt's own time). If the customer has already spent the accrual, the
/// wallet stops at zero and the shortfall is recorded for operators.
pub(super) async fn payback(
    conn: &mut PgConnection,
    org_id: i64,
    event_id: &str,
    receipt: &Receipt,
    refunded_at: chrono::DateTime<chrono::Utc>,
) -> Result<Outcome> {
    let named = bills::lock_named(conn, &[(org_id, receipt.extras.bill_id.as_deref())]).await?;
    let bill = match named.into_iter().next() {
        Some(Ok(bill)) => bill,
        Some(Err(reason)) => return Ok(Outcome::Unmatched { reason }),
        None => return Err(Error::NotFound("bill")),
    };
    let Some(sale_receipt) = bill
        .paid_by_receipt
        .as_deref()
        .filter(|_| bill.status == BillStatus::Paid)
    else {
        return Ok(Outcome::Unmatched {
            reason: format!(
                "bill {} is {}; there is no sale to refund",
                bill.id, bill.status
            ),
        });
    };
    let Some(refunded) = rules::refund_amount(receipt.total_amount) else {
        return Err(Error::invalid(
            "data.totalAmount",
            "a refund must have a non-zero total",
        ));
    };
    let (customer_id, invoice_id, sale_total): (i64, String, Decimal) = sqlx::query_as(
        "select customer_id, invoice_id, total_amount from receipts
         where org_id = $1 and receipt_id = $2 and status = 'processed'",
    )
    .bind(org_id)
    .bind(sale_receipt)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| Error::invalid("data.extras.billId", "the bill's sale is not recorded"))?;
    let org = orgs::get(conn, org_id).await?;
    let available = customers::lock(conn, org.id, customer_id)
        .await?
        .bonuses_available;
    let (refunded_before, accrual_reversed, payment_returned): (Decimal, Decimal, Decimal) = sqlx::query_as(
        "select coalesce(sum(refunded_amount), 0), coalesce(sum(accrual_due), 0), coalesce(sum(payment_returned), 0)
         from refunds where org_id = $1 and sale_receipt_id = $2",
    )
    .bind(org.id)
    .bind(sale_receipt)
    .fetch_one(&mut *conn)
    .await?;
    let before = RefundedBefore {
        refunded: refunded_before,
        accrual_reversed,
        payment_returned,
    };
    let sale_moved = ledger::receipt_movements(conn, org.id, customer_id, sale_receipt).await?;
    let accrual_lot = lots::sale_accrual_lot(conn, org.id, customer_id, sale_receipt).await?;
    let pending_lot = accrual_lot.filter(|l| l.pending);
    let effects = rules::refund_effects(
        sale_total,
        &sale_moved,
        &before,
        refunded,
        pending_lot.map_or(available, |l| l.remaining),
        pending_lot.is_some(),
    )
    .map_err(out_of_range)?;

    let at = Stamp::in_zone(refunded_at, org.time_zone);
    let payment_text = describe::refund_payment(&invoice_id);
    let reversal_text = describe::refund_reversal(&invoice_id);
    let entry = |wallet, kind, amount: Decimal, description| {
        Ok::<_, Error>(NewEntry {
            org_id: org.id,
            customer_id,
            wallet,
            kind,
            amount: Amount::new(amount).map_err(out_of_range)?,
            description,
            source: Source::Refund,
            source_ref: Some(receipt.id.as_str()),
            at,
        })
    };
    // The payment goes back first: what it returns to the main wallet is there to be taken back.
    let mut entries = Vec::new();
    if let Some((wallet, back)) = effects.given_back {
        entries.push(entry(
            wallet,
            EntryKind::Accrual,
            back,
            payment_text.as_str(),
        )?);
    }
    if let Some(taken) = effects.taken_back {
        entries.push(entry(
            effects.taken_from,
            EntryKind::Deduction,
            taken,
            reversal_text.as_str(),
        )?);
    }
    ledger::post_many(conn, &entries).await?;
    move_lots(
        conn,
        org.id,
        customer_id,
        sale_receipt,
        &receipt.id,
        &effects,
        accrual_lot,
        refunded_at,
        &org.bonus_program_settings,
    )
    .await?;
    // What came back to lots that had expired by the refund burns now, dated by the refund.
    if effects.given_back.is_some() {
        crate::schedule::burn_expired_at(conn, org.id, customer_id, refunded_at).await?;
    }
    sqlx::query(
        "update customers set spent_total = greatest(spent_total - $3, 0) where org_id = $1 and id = $2",
    )
    .bind(org.id)
    .bind(customer_id)
    .bind(effects.spent_lowered)
    .execute(&mut *conn)
    .await?;
    if effects.shortfall > Decimal::ZERO {
        tracing::warn!(org = org.id, customer = customer_id, receipt = %receipt.id, shortfall = %effects.shortfall, "refund shortfall: bonuses already spent");
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
    .bind(refunded)
    .bind(effects.accrual_due)
    .bind(effects.accrual_taken())
    .bind(effects.payment_returned())
    .execute(&mut *conn)
    .await?;
    let payload = serde_json::json!({
        "invoice_id": invoice_id,
        "refunded": refunded.to_string(),
        "returned": effects.payment_returned().to_string(),
        "taken": effects.accrual_taken().to_string(),
    });
    let note = Note {
        org_id: org.id,
        customer_id,
        kind: NotificationKind::Refund,
        payload,
        trace_id: event_id,
    };
    notifications::queue(conn, std::slice::from_ref(&note)).await?;
    Ok(Outcome::Processed {
        customer_id,
        invoice_id,
    })
}

/// Moves the lots as the refund's entries moved the wallets. The payment's share goes back to the
/// lots the sale's payment took from, the last taken first (what earlier refunds gave back is not
/// given twice; what comes back to a lot that has expired by then burns right after, see
/// `schedule::burn_expired_at`); what no lot can take back (a sale paid before lots were kept)
/// opens a new lot.
/// The accrual's share is cancelled from the sale's pending lot, or taken from the sale's own lot
/// first and then from the others, soonest expiry first.
#[allow(clippy::too_many_arguments)]
async fn move_lots(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    sale_receipt: &str,
    refund_receipt: &str,
    effects: &rules::RefundEffects,
    accrual_lot: Option<lots::SaleLot>,
    refunded_at: chrono::DateTime<chrono::Utc>,
    settings: &rules::BonusProgramSettings,
) -> Result<()> {
    if let Some((wallet, back)) = effects.given_back {
        let taken = lots::taken_by_sale(conn, org_id, sale_receipt, wallet).await?;
        let (to_lots, rest) = rules::lots::give_back(&taken, back).map_err(out_of_range)?;
        lots::give_back(conn, org_id, &to_lots, Source::Refund, Some(refund_receipt)).await?;
        if rest > Decimal::ZERO {
            let timing =
                rules::credit_timing(settings, refunded_at, false).map_err(out_of_range)?;
            lots::open(
                conn,
                &[lots::NewLot {
                    org_id,
                    customer_id,
                    wallet,
                    amount: rest,
                    pending: false,
                    activates_at: timing.activates_at,
                    expires_at: timing.expires_at,
                    source: Source::Refund,
                    source_ref: Some(refund_receipt),
                    invoice_id: None,
                }],
            )
            .await?;
        }
    }
    let Some(taken) = effects.taken_back else {
        return Ok(());
    };
    match accrual_lot {
        Some(lot) if effects.taken_from == Wallet::Pending => {
            lots::apply_moves(
                conn,
                &[lots::LotMove {
                    lot_id: lot.id,
                    org_id,
                    amount: -taken,
                    source: Source::Refund,
                    source_ref: Some(refund_receipt),
                }],
            )
            .await
        }
        _ => {
            let spending = lots::Spending {
                org_id,
                customer_id,
                wallet: Wallet::Main,
                amount: taken,
                source: Source::Refund,
                source_ref: Some(refund_receipt),
                first: accrual_lot.map(|l| l.id),
            };
            lots::spend_many(conn, std::slice::from_ref(&spending))
                .await
                .map(drop)
        }
    }
}
