//! Applying receipts in batches: one transaction and a handful of statements for many receipts,
//! with the guarantees of one at a time. A batch of one is the same code.
//!
//! The receipts' rows are claimed first, by inserting them as `processing`: a concurrent delivery
//! of the same event waits on its row and then finds it applied. The receipt ids (`data.id`) are
//! checked against those already applied, and made unique by an index when the statuses are
//! written, so the same receipt under two event ids takes effect once.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use sqlx::PgConnection;

use super::refund::payback;
use super::sale::{SaleInput, apply_sales};
use super::{EventHead, Outcome, Receipt, ReceiptKind, ReceiptMessage, race};
use crate::bills::{self, BillStatus};
use crate::error::{Error, Result, violated_constraint};
use crate::orgs::{self, Organization};

/// A message of the batch, as it was read when it was decoded.
struct Parsed<'a> {
    message: &'a ReceiptMessage,
    head: &'a EventHead,
    receipt: Option<&'a Receipt>,
}

impl Parsed<'_> {
    fn key(&self) -> (i64, String) {
        (self.message.org_id, self.head.id.clone())
    }
}

/// Applies `messages` in the caller's transaction and returns each one's outcome, in order. Any
/// error fails the whole batch (the caller rolls back and may apply the messages one by one).
pub async fn apply_batch(
    conn: &mut PgConnection,
    messages: &[ReceiptMessage],
) -> Result<Vec<Outcome>> {
    let parsed = parse(messages)?;
    let mut outcomes: Vec<Option<Outcome>> = vec![None; parsed.len()];

    // The second delivery of an event within the batch is a duplicate of the first.
    let mut seen = HashSet::new();
    for (p, outcome) in parsed.iter().zip(outcomes.iter_mut()) {
        if !seen.insert(p.key()) {
            *outcome = Some(Outcome::Duplicate);
        }
    }
    let claimed = claim(conn, &parsed, &outcomes).await?;
    for (p, outcome) in parsed.iter().zip(outcomes.iter_mut()) {
        if outcome.is_none() && !claimed.contains(&p.key()) {
            *outcome = Some(Outcome::Duplicate);
        }
    }
    let claimed_rows: Vec<usize> = (0..parsed.len())
        .filter(|i| outcomes[*i].is_none())
        .collect();

    // A receipt already applied (under another event id, or earlier in this batch) is a duplicate
    // of the event that applied it; the first of a batch always takes effect (processed,
    // unmatched or ignored).
    let mut taken_by = applied_receipts(conn, &parsed, &claimed_rows).await?;
    let mut duplicate_of: HashMap<usize, String> = HashMap::new();
    for &i in &claimed_rows {
        let p = &parsed[i];
        outcomes[i] = match &p.receipt {
            None => Some(Outcome::Ignored),
            Some(r) => match taken_by.entry((p.message.org_id, r.id.clone())) {
                Entry::Occupied(first) => {
                    duplicate_of.insert(i, first.get().clone());
                    Some(Outcome::Duplicate)
                }
                Entry::Vacant(slot) => {
                    slot.insert(p.head.id.clone());
                    (!matches!(r.kind, ReceiptKind::Sell | ReceiptKind::Payback))
                        .then_some(Outcome::Ignored)
                }
            },
        };
    }

    // Every customer and bill the sales and refunds will move, locked up front in the program's
    // order (`crate::locks`): customers, then bills.
    let named: Vec<(i64, i64)> = (0..parsed.len())
        .filter(|&i| outcomes[i].is_none())
        .filter_map(|i| Some((parsed[i].message.org_id, parsed[i].receipt?.bill_id().ok()?)))
        .collect();
    super::locking::lock_bills_and_customers(conn, named).await?;
    sell(conn, &parsed, &mut outcomes).await?;
    // Refunds one by one, after the sales: the refund of a sale in the same batch sees it.
    for i in 0..parsed.len() {
        if let (None, Some(r)) = (&outcomes[i], parsed[i].receipt) {
            let p = &parsed[i];
            let refunded_at = r.sold_at(p.message.received_at);
            outcomes[i] = Some(payback(conn, p.message.org_id, &p.head.id, r, refunded_at).await?);
        }
    }
    let outcomes: Vec<Outcome> = outcomes
        .into_iter()
        .map(|o| o.unwrap_or(Outcome::Duplicate))
        .collect();
    save(conn, &parsed, &claimed_rows, &outcomes, &duplicate_of).await?;
    Ok(outcomes)
}

/// Every message as it was read; one that can never apply fails the batch before anything is
/// written (the worker then applies the others one by one, and refuses that one).
fn parse(messages: &[ReceiptMessage]) -> Result<Vec<Parsed<'_>>> {
    messages
        .iter()
        .map(|message| {
            let (head, receipt) = message.read()?;
            Ok(Parsed {
                message,
                head,
                receipt,
            })
        })
        .collect()
}

/// Inserts the rows of the events not seen before (or seen only failing) as `processing`; returns
/// those this transaction now holds.
async fn claim(
    conn: &mut PgConnection,
    parsed: &[Parsed<'_>],
    outcomes: &[Option<Outcome>],
) -> Result<HashSet<(i64, String)>> {
    let rows: Vec<&Parsed> = parsed
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(p, _)| p)
        .collect();
    let claimed: Vec<(i64, String)> = sqlx::query_as(
        "insert into receipts (org_id, event_id, integration_id, event_type, status, payload, received_at)
         select o, e, i, t, 'processing', p, r
         from unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::jsonb[], $6::timestamptz[])
              as u(o, e, i, t, p, r)
         on conflict (org_id, event_id) do update
             set status = 'processing', attempts = receipts.attempts + 1, updated_at = now()
             where receipts.status in ('retrying', 'dead')
         returning org_id, event_id",
    )
    .bind(rows.iter().map(|p| p.message.org_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.head.id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.message.integration_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.head.event_type.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.message.event.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|p| p.message.received_at).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(claimed.into_iter().collect())
}

/// The receipts among `rows` that took effect before, each with the event id that applied it.
async fn applied_receipts(
    conn: &mut PgConnection,
    parsed: &[Parsed<'_>],
    rows: &[usize],
) -> Result<HashMap<(i64, String), String>> {
    let keys: Vec<(i64, String)> = rows
        .iter()
        .filter_map(|&i| {
            parsed[i]
                .receipt
                .map(|r| (parsed[i].message.org_id, r.id.clone()))
        })
        .collect();
    let found: Vec<(i64, String, String)> = sqlx::query_as(
        "select r.org_id, r.receipt_id, r.event_id from receipts r
         join unnest($1::bigint[], $2::text[]) as k(org_id, receipt_id)
           on r.org_id = k.org_id and r.receipt_id = k.receipt_id
         where r.status in ('processed', 'unmatched', 'ignored')",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.clone()).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    Ok(found
        .into_iter()
        .map(|(org, receipt, event)| ((org, receipt), event))
        .collect())
}

/// Applies the batch's sales: each pays its open bill; the rest are unmatched.
async fn sell(
    conn: &mut PgConnection,
    parsed: &[Parsed<'_>],
    outcomes: &mut [Option<Outcome>],
) -> Result<()> {
    let sales: Vec<usize> = (0..parsed.len())
        .filter(|&i| {
            outcomes[i].is_none()
                && parsed[i]
                    .receipt
                    .is_some_and(|r| r.kind == ReceiptKind::Sell)
        })
        .collect();
    if sales.is_empty() {
        return Ok(());
    }
    let named: Vec<(i64, Option<&str>)> = sales
        .iter()
        .map(|&i| {
            let bill_ref = parsed[i].receipt.and_then(|r| r.extras.bill_id.as_deref());
            (parsed[i].message.org_id, bill_ref)
        })
        .collect();
    let bills = bills::lock_named(conn, &named).await?;

    let orgs: HashMap<i64, Organization> = orgs::by_id(
        conn,
        sales.iter().map(|&i| parsed[i].message.org_id).collect(),
    )
    .await?;
    let mut paying: HashSet<(i64, i64)> = HashSet::new();
    let mut inputs = Vec::new();
    let mut applied_to: Vec<(usize, i64, i64)> = Vec::new();
    for (&i, bill) in sales.iter().zip(&bills) {
        let p = &parsed[i];
        let r = p.receipt.ok_or(Error::NotFound("receipt"))?;
        let bill = match bill {
            Ok(b) if b.status == BillStatus::Open && paying.insert((b.org_id, b.id)) => b,
            Ok(b) => {
                // A second sale of the same bill in this batch finds it paid by the first.
                let status = if b.status == BillStatus::Open {
                    BillStatus::Paid
                } else {
                    b.status
                };
                outcomes[i] = Some(Outcome::Unmatched {
                    reason: format!("bill {} is {status}", b.id),
                });
                continue;
            }
            Err(reason) => {
                outcomes[i] = Some(Outcome::Unmatched {
                    reason: reason.clone(),
                });
                continue;
            }
        };
        let org = orgs
            .get(&p.message.org_id)
            .ok_or(Error::NotFound("organization"))?;
        inputs.push(SaleInput {
            org,
            customer_id: bill.customer_id,
            total: r.total_amount,
            items: &r.items,
            hold: bill.bonus_wallet.map(|w| (w, bill.bonus_payment)),
            receipt_id: &r.id,
            event_id: &p.head.id,
            sold_at: r.sold_at(p.message.received_at),
        });
        applied_to.push((i, bill.id, bill.customer_id));
    }
    let invoices = apply_sales(conn, &inputs).await?;
    sqlx::query(
        "update bills b set status = 'paid', closed_at = now(), paid_by_receipt = u.receipt
         from unnest($1::bigint[], $2::text[], $3::bigint[]) as u(id, receipt, org_id)
         where b.org_id = u.org_id and b.id = u.id",
    )
    .bind(applied_to.iter().map(|a| a.1).collect::<Vec<_>>())
    .bind(
        inputs
            .iter()
            .map(|s| s.receipt_id.to_owned())
            .collect::<Vec<_>>(),
    )
    .bind(inputs.iter().map(|s| s.org.id).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    for ((i, _, customer_id), invoice_id) in applied_to.into_iter().zip(invoices) {
        outcomes[i] = Some(Outcome::Processed {
            customer_id,
            invoice_id,
        });
    }
    Ok(())
}

/// Writes every claimed receipt's final status (a duplicate's with the event it duplicated).
///
/// The rows are found by their key alone. They are the ones `claim` inserted or set to
/// `processing` in this transaction, locked until it commits, so a filter on `status =
/// 'processing'` would add nothing, and it led the planner (which guesses 10 rows for `unnest`) to
/// the status index: there, `processing` is the first version of every receipt, dead once applied,
/// and a scan walks all of them until vacuum clears them (62 ms median and 322 ms at worst for a
/// batch of 250, 30 000 receipts into a run, against a few ms by the primary key; every other
/// batch waited on this one's customer locks meanwhile).
async fn save(
    conn: &mut PgConnection,
    parsed: &[Parsed<'_>],
    rows: &[usize],
    outcomes: &[Outcome],
    duplicate_of: &HashMap<usize, String>,
) -> Result<()> {
    let field = |i: usize, f: fn(&Receipt) -> String| parsed[i].receipt.map(f);
    let customer = |o: &Outcome| {
        if let Outcome::Processed { customer_id, .. } = o {
            Some(*customer_id)
        } else {
            None
        }
    };
    let invoice = |o: &Outcome| {
        if let Outcome::Processed { invoice_id, .. } = o {
            Some(invoice_id.clone())
        } else {
            None
        }
    };
    let reason = |o: &Outcome| {
        if let Outcome::Unmatched { reason } = o {
            Some(reason.clone())
        } else {
            None
        }
    };
    let saved = sqlx::query(
        "update receipts r set status = u.status, reason = u.reason, receipt_id = u.receipt_id,
                receipt_type = u.receipt_type, bill_id = u.bill_id, customer_id = u.customer_id,
                invoice_id = u.invoice_id, total_amount = u.total, last_error = null,
                duplicate_of = u.duplicate_of, sold_at = u.sold_at, processed_at = clock_timestamp(),
                updated_at = now()
         from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                     $8::bigint[], $9::text[], $10::numeric[], $11::text[], $12::timestamptz[])
              as u(org_id, event_id, status, reason, receipt_id, receipt_type, bill_id, customer_id, invoice_id, total,
                   duplicate_of, sold_at)
         where r.org_id = u.org_id and r.event_id = u.event_id",
    )
    .bind(rows.iter().map(|&i| parsed[i].message.org_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| parsed[i].head.id.clone()).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| outcomes[i].receipt_status()).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| reason(&outcomes[i])).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| field(i, |r| r.id.clone())).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| parsed[i].receipt.map(|r| r.kind.clone())).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| parsed[i].receipt.and_then(|r| r.bill_id().ok())).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| customer(&outcomes[i])).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| invoice(&outcomes[i])).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| parsed[i].receipt.map(|r| r.total_amount)).collect::<Vec<_>>())
    .bind(rows.iter().map(|&i| duplicate_of.get(&i).cloned()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|&i| parsed[i].receipt.map(|r| r.sold_at(parsed[i].message.received_at)))
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await
    .map_err(|e| match violated_constraint(&e) {
        // Another event carrying the same receipt committed first: run again, it is a duplicate.
        Some("receipts_take_effect_once") => race(),
        _ => e.into(),
    })?;
    if saved.rows_affected() != rows.len() as u64 {
        return Err(race());
    }
    Ok(())
}
