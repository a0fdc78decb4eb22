//! Applying sales to customers, many in a few statements: capture the bill's hold (taken from the
//! lots that expire first), record the invoice, accrue (a new lot, pending while the program
//! delays accruals), reward the referrer on the first purchase, count what the buyer spent (their
//! tier), and queue the notifications.

use std::collections::{HashMap, HashSet};

use rust_decimal::Decimal;
use sqlx::PgConnection;

use super::{ReceiptItem, out_of_range};
use crate::error::{Error, Result};
use crate::ledger::{self, EntryKind, NewEntry, Source, Wallet, describe};
use crate::legacy::money_json;
use crate::lots;
use crate::money::Amount;
use crate::notifications::{self, Note, NotificationKind};
use crate::orgs::Organization;
use crate::rules::{self, BatchSale};
use crate::time::Stamp;

/// One sale to apply.
pub(super) struct SaleInput<'a> {
    pub org: &'a Organization,
    pub customer_id: i64,
    pub total: Decimal,
    pub items: &'a [ReceiptItem],
    /// The bonus payment the bill held: captured now.
    pub hold: Option<(Wallet, Decimal)>,
    pub receipt_id: &'a str,
    pub event_id: &'a str,
    /// When the sale happened (the receipt's own time): what its entries are dated by.
    pub sold_at: chrono::DateTime<chrono::Utc>,
}

#[derive(sqlx::FromRow)]
pub(super) struct Buyer {
    pub org_id: i64,
    pub id: i64,
    first_name: Option<String>,
    referred_by: Option<i64>,
    has_made_first_purchase: bool,
    spent_total: Decimal,
}

/// Applies the sales in order (two sales of one customer in a batch: only the first is a first
/// purchase). Returns each sale's new invoice id.
pub(super) async fn apply_sales(
    conn: &mut PgConnection,
    sales: &[SaleInput<'_>],
) -> Result<Vec<String>> {
    if sales.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(bad) = sales.iter().find(|s| s.total <= Decimal::ZERO) {
        return Err(Error::invalid(
            "data.totalAmount",
            format!("a sale must have a positive total, not {}", bad.total),
        ));
    }
    let buyer_keys: Vec<(i64, i64)> = sales.iter().map(|s| (s.org.id, s.customer_id)).collect();
    let locked = lock_buyers(conn, buyer_keys.clone()).await?;
    let buyer_set: HashSet<(i64, i64)> = buyer_keys.into_iter().collect();
    let by_key: HashMap<(i64, i64), &Buyer> = locked
        .iter()
        .filter(|b| buyer_set.contains(&(b.org_id, b.id)))
        .map(|b| ((b.org_id, b.id), b))
        .collect();

    let invoices = new_invoice_ids(conn, sales).await?;
    let stamps: Vec<Stamp> = sales
        .iter()
        .map(|s| Stamp::in_zone(s.sold_at, s.org.time_zone))
        .collect();
    let texts: Vec<[String; 3]> = sales
        .iter()
        .zip(&invoices)
        .map(|(s, invoice)| {
            let first_name = by_key
                .get(&(s.org.id, s.customer_id))
                .and_then(|b| b.first_name.as_deref())
                .unwrap_or_default();
            [
                describe::bill_payment(invoice),
                describe::purchase_accrual(invoice),
                describe::friend_reward(first_name),
            ]
        })
        .collect();

    let effects = rules::batch_sale_effects(
        &sales
            .iter()
            .map(|sale| {
                let key = (sale.org.id, sale.customer_id);
                let buyer = by_key.get(&key).ok_or(Error::NotFound("customer"))?;
                Ok(BatchSale {
                    buyer_key: key,
                    settings: &sale.org.bonus_program_settings,
                    sale: rules::Sale {
                        total: sale.total,
                        hold: sale.hold,
                    },
                    buyer: rules::Buyer {
                        has_made_first_purchase: buyer.has_made_first_purchase,
                        referred_by: buyer.referred_by,
                        spent_total: buyer.spent_total,
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?,
    )
    .map_err(out_of_range)?;

    let mut entries = Vec::new();
    let mut releases: Vec<(i64, i64, Wallet, Decimal)> = Vec::new();
    let mut notes = Vec::new();
    let mut spendings = Vec::new();
    let mut lots = Vec::new();
    // (org, customer, spent by this sale, first purchase): one row per sale, summed per customer.
    let mut bought: Vec<(i64, i64, Decimal, bool)> = Vec::with_capacity(sales.len());
    for (i, (sale, effects)) in sales.iter().zip(&effects).enumerate() {
        let settings = &sale.org.bonus_program_settings;
        // Accruals and referral rewards wait in a pending wallet when the program delays them.
        let timing = rules::credit_timing(settings, sale.sold_at, true).map_err(out_of_range)?;
        let lot = |customer_id, wallet, amount| lots::NewLot {
            org_id: sale.org.id,
            customer_id,
            wallet,
            amount,
            pending: timing.pending,
            activates_at: timing.activates_at,
            expires_at: timing.expires_at,
            source: Source::Receipt,
            source_ref: Some(sale.receipt_id),
            invoice_id: Some(invoices[i].as_str()),
        };
        let credited = |wallet: Wallet| {
            if timing.pending {
                wallet.pending().unwrap_or(wallet)
            } else {
                wallet
            }
        };
        let entry = |customer_id, wallet, kind, amount: Decimal, description| {
            Ok::<_, Error>(NewEntry {
                org_id: sale.org.id,
                customer_id,
                wallet,
                kind,
                amount: Amount::new(amount).map_err(out_of_range)?,
                description,
                source: Source::Receipt,
                source_ref: Some(sale.receipt_id),
                at: stamps[i],
            })
        };
        // A pending credit's message says when it becomes spendable (the shop's local date).
        let activates_on = timing.pending.then(|| {
            rules::schedule::warning_date(
                timing
                    .activates_at
                    .with_timezone(&sale.org.time_zone.0)
                    .date_naive(),
            )
        });
        let note = |customer_id, kind: NotificationKind, amount: Decimal| {
            let mut payload =
                serde_json::json!({ "amount": amount.to_string(), "invoice_id": invoices[i] });
            let kind = match (kind, &activates_on) {
                (NotificationKind::PurchaseAccrual, Some(date)) => {
                    payload["date"] = serde_json::json!(date);
                    NotificationKind::PendingAccrual
                }
                (NotificationKind::ReferralReward, Some(date)) => {
                    payload["date"] = serde_json::json!(date);
                    NotificationKind::PendingReferralReward
                }
                (kind, _) => kind,
            };
            Note {
                org_id: sale.org.id,
                customer_id,
                kind,
                payload,
                trace_id: sale.event_id,
            }
        };
        if let Some((wallet, paid)) = effects.payment {
            releases.push((sale.org.id, sale.customer_id, wallet, paid));
            spendings.push(lots::Spending {
                org_id: sale.org.id,
                customer_id: sale.customer_id,
                wallet,
                amount: paid,
                source: Source::Receipt,
                source_ref: Some(sale.receipt_id),
                first: None,
            });
            entries.push(entry(
                sale.customer_id,
                wallet,
                EntryKind::Deduction,
                paid,
                texts[i][0].as_str(),
            )?);
            notes.push(note(sale.customer_id, NotificationKind::BonusPayment, paid));
        }
        if let Some(accrual) = effects.accrual {
            lots.push(lot(sale.customer_id, Wallet::Main, accrual));
            entries.push(entry(
                sale.customer_id,
                credited(Wallet::Main),
                EntryKind::Accrual,
                accrual,
                texts[i][1].as_str(),
            )?);
            notes.push(note(
                sale.customer_id,
                NotificationKind::PurchaseAccrual,
                accrual,
            ));
        }
        bought.push((
            sale.org.id,
            sale.customer_id,
            sale.total,
            effects.first_purchase,
        ));
        if let Some(tier) = &effects.tier_reached {
            notes.push(Note {
                org_id: sale.org.id,
                customer_id: sale.customer_id,
                kind: NotificationKind::TierReached,
                payload: serde_json::json!({
                    "tier": tier.name,
                    "percentage": tier.percentage.get().normalize().to_string(),
                }),
                trace_id: sale.event_id,
            });
        }
        if let Some(reward) = effects.referral {
            lots.push(lot(reward.referrer, Wallet::Referral, reward.amount));
            entries.push(entry(
                reward.referrer,
                credited(Wallet::Referral),
                EntryKind::Accrual,
                reward.amount,
                texts[i][2].as_str(),
            )?);
            notes.push(note(
                reward.referrer,
                NotificationKind::ReferralReward,
                reward.amount,
            ));
        }
    }

    insert_invoices(conn, sales, &invoices, &stamps).await?;
    release_holds(conn, &releases).await?;
    ledger::post_many(conn, &entries).await?;
    // The payments take from the lots there were before the sales; the accruals open new ones.
    lots::spend_many(conn, &spendings).await?;
    lots::open(conn, &lots).await?;
    sqlx::query(
        "update customers c set has_made_first_purchase = c.has_made_first_purchase or b.first,
                                spent_total = c.spent_total + b.spent
         from (select org_id, id, sum(spent) as spent, bool_or(first) as first
               from unnest($1::bigint[], $2::bigint[], $3::numeric[], $4::bool[]) as u(org_id, id, spent, first)
               group by org_id, id) as b
         where c.org_id = b.org_id and c.id = b.id",
    )
    .bind(bought.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(bought.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(bought.iter().map(|k| k.2).collect::<Vec<_>>())
    .bind(bought.iter().map(|k| k.3).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    notifications::queue(conn, &notes).await?;
    Ok(invoices)
}

/// Locks the buyers and the referrers whose wallets their first purchase may move, together, in
/// the program's lock order (`crate::locks`); returns their rows.
pub(super) async fn lock_buyers(
    conn: &mut PgConnection,
    buyer_keys: Vec<(i64, i64)>,
) -> Result<Vec<Buyer>> {
    let referrers = |rows: &[Buyer]| -> Vec<(i64, i64)> {
        rows.iter()
            .filter(|b| !b.has_made_first_purchase)
            .filter_map(|b| b.referred_by.map(|r| (b.org_id, r)))
            .collect()
    };
    let unlocked = read_customers(conn, buyer_keys.clone(), false).await?;
    let mut keys = buyer_keys;
    keys.extend(referrers(&unlocked));
    let mut locked = read_customers(conn, keys.clone(), true).await?;
    // A promo code entered in between names a referrer not locked yet: lock it too (out of order,
    // so a deadlock is possible here; it is transient and the batch runs again).
    let late: Vec<(i64, i64)> = referrers(&locked)
        .into_iter()
        .filter(|k| !keys.contains(k))
        .collect();
    locked.extend(read_customers(conn, late, true).await?);
    Ok(locked)
}

/// Reads customers' rows, locking them (in one fixed order: organization, id) when `lock`.
///
/// The lock is `FOR NO KEY UPDATE`: it excludes every other change of these wallets as `FOR
/// UPDATE` does, but not the foreign-key check of `referred_by`. PostgreSQL runs that check (a
/// `FOR KEY SHARE` of the referrer) whenever a row already updated in this transaction is updated
/// again (a sale's ledger entry, then what the buyer spent); with `FOR UPDATE` it waited for the
/// batch that holds the referrer as a buyer, and two such batches deadlocked.
async fn read_customers(
    conn: &mut PgConnection,
    mut keys: Vec<(i64, i64)>,
    lock: bool,
) -> Result<Vec<Buyer>> {
    keys.sort_unstable();
    keys.dedup();
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Buyer> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select c.org_id, c.id, c.first_name, c.referred_by, c.has_made_first_purchase, c.spent_total
         from customers c join unnest($1::bigint[], $2::bigint[]) as k(org_id, id) on c.org_id = k.org_id and c.id = k.id
         order by c.org_id, c.id {}",
        if lock { "for no key update of c" } else { "" }
    )))
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    if rows.len() != keys.len() {
        return Err(Error::NotFound("customer"));
    }
    Ok(rows)
}

/// Invoice numbers like the old system's: 8 uppercase hex characters, unique per organization.
async fn new_invoice_ids(conn: &mut PgConnection, sales: &[SaleInput<'_>]) -> Result<Vec<String>> {
    let mut ids: Vec<String> = Vec::with_capacity(sales.len());
    let mut used = HashSet::new();
    for sale in sales {
        loop {
            let candidate = hex::encode_upper(rand::random::<[u8; 4]>());
            if used.insert((sale.org.id, candidate.clone())) {
                ids.push(candidate);
                break;
            }
        }
    }
    // Regenerate the rare ones an organization already has.
    loop {
        let taken: Vec<(i64, String)> = sqlx::query_as(
            "select i.org_id, i.invoice_id from invoices i
             join unnest($1::bigint[], $2::text[]) as k(org_id, invoice_id)
               on i.org_id = k.org_id and i.invoice_id = k.invoice_id",
        )
        .bind(sales.iter().map(|s| s.org.id).collect::<Vec<_>>())
        .bind(&ids)
        .fetch_all(&mut *conn)
        .await?;
        if taken.is_empty() {
            return Ok(ids);
        }
        let taken: HashSet<(i64, String)> = taken.into_iter().collect();
        for (sale, id) in sales.iter().zip(ids.iter_mut()) {
            while taken.contains(&(sale.org.id, id.clone()))
                || !used.insert((sale.org.id, id.clone()))
            {
                *id = hex::encode_upper(rand::random::<[u8; 4]>());
            }
        }
    }
}

async fn insert_invoices(
    conn: &mut PgConnection,
    sales: &[SaleInput<'_>],
    ids: &[String],
    stamps: &[Stamp],
) -> Result<()> {
    let items: Vec<serde_json::Value> = sales
        .iter()
        .map(|s| {
            serde_json::Value::Array(
                s.items
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "product_name": i.name,
                            "quantity": money_json(i.quantity),
                            "unit_price": money_json(i.price),
                            "item_total": money_json(i.sum_price),
                        })
                    })
                    .collect(),
            )
        })
        .collect();
    sqlx::query(
        "insert into invoices (org_id, invoice_id, customer_id, occurred_at, utc_offset_seconds, total_amount, items,
                               bonuses_deducted, bonus_source_used, receipt_id)
         select * from unnest($1::bigint[], $2::text[], $3::bigint[], $4::timestamptz[], $5::int[], $6::numeric[],
                              $7::jsonb[], $8::numeric[], $9::text[], $10::text[])",
    )
    .bind(sales.iter().map(|s| s.org.id).collect::<Vec<_>>())
    .bind(ids)
    .bind(sales.iter().map(|s| s.customer_id).collect::<Vec<_>>())
    .bind(stamps.iter().map(Stamp::utc).collect::<Vec<_>>())
    .bind(stamps.iter().map(Stamp::offset_seconds).collect::<Vec<_>>())
    .bind(sales.iter().map(|s| s.total).collect::<Vec<_>>())
    .bind(items)
    .bind(sales.iter().map(|s| s.hold.map_or(Decimal::ZERO, |(_, held)| held)).collect::<Vec<_>>())
    .bind(sales.iter().map(|s| s.hold.map(|(w, _)| w)).collect::<Vec<_>>())
    .bind(sales.iter().map(|s| s.receipt_id.to_owned()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// Releases what the bills held, before the payments are deducted from the wallets.
async fn release_holds(
    conn: &mut PgConnection,
    releases: &[(i64, i64, Wallet, Decimal)],
) -> Result<()> {
    for wallet in [Wallet::Main, Wallet::Referral] {
        let mine: Vec<_> = releases.iter().filter(|r| r.2 == wallet).collect();
        if mine.is_empty() {
            continue;
        }
        let column = crate::bills::held_column(wallet)?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "update customers c set {column} = c.{column} - r.amount
             from (select org_id, id, sum(amount) as amount
                   from unnest($1::bigint[], $2::bigint[], $3::numeric[]) as u(org_id, id, amount)
                   group by org_id, id) as r
             where c.org_id = r.org_id and c.id = r.id"
        )))
        .bind(mine.iter().map(|r| r.0).collect::<Vec<_>>())
        .bind(mine.iter().map(|r| r.1).collect::<Vec<_>>())
        .bind(mine.iter().map(|r| r.3).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
