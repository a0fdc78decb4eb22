//! Lots (`bonus_lots`, `lot_moves`): what each credit left in a bonus wallet, pending until it
//! activates, spendable until it expires. The pure rules are in `rules::lots`; this module applies
//! them. Callers post the ledger entries (`ledger::post_many`) and move the lots here, in the
//! same transaction: the sum of a customer's lots equals the wallet.

pub mod due;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::error::{ConflictCode, Error, Result};
use crate::ledger::{Source, Wallet};
use crate::rules::{self, LotBalance};

/// A credit to a bonus wallet, as a lot.
#[derive(Debug, Clone)]
pub struct NewLot<'a> {
    pub org_id: i64,
    pub customer_id: i64,
    /// The wallet it is spendable from: main or referral.
    pub wallet: Wallet,
    pub amount: Decimal,
    /// In the pending wallet until `activates_at`.
    pub pending: bool,
    pub activates_at: DateTime<Utc>,
    /// `None`: never expires (`rules::lots::expires_at`).
    pub expires_at: Option<DateTime<Utc>>,
    pub source: Source,
    pub source_ref: Option<&'a str>,
    /// The invoice of a purchase's lot, for the activation entry's text.
    pub invoice_id: Option<&'a str>,
}

/// Records credits as lots, in one statement; returns their ids in order. The caller posts the
/// matching ledger entries in the same transaction.
pub async fn open(conn: &mut PgConnection, lots: &[NewLot<'_>]) -> Result<Vec<i64>> {
    if lots.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(bad) = lots
        .iter()
        .find(|l| !matches!(l.wallet, Wallet::Main | Wallet::Referral))
    {
        return Err(Error::invalid(
            "wallet",
            format!("lots are of bonus wallets, not of {}", bad.wallet.as_str()),
        ));
    }
    Ok(sqlx::query_scalar(
        "insert into bonus_lots (org_id, customer_id, wallet, amount, remaining, pending, activates_at,
                                 expires_at, source, source_ref, invoice_id)
         select o, c, w, a, a, p, act, exp, s, r, i
         from unnest($1::bigint[], $2::bigint[], $3::text[], $4::numeric[], $5::bool[], $6::timestamptz[],
                     $7::timestamptz[], $8::text[], $9::text[], $10::text[])
              with ordinality as l(o, c, w, a, p, act, exp, s, r, i, n)
         order by n
         returning id",
    )
    .bind(lots.iter().map(|l| l.org_id).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.customer_id).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.wallet).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.amount).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.pending).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.activates_at).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.expires_at).collect::<Vec<_>>())
    .bind(lots.iter().map(|l| l.source).collect::<Vec<_>>())
    .bind(
        lots.iter()
            .map(|l| l.source_ref.map(str::to_owned))
            .collect::<Vec<_>>(),
    )
    .bind(
        lots.iter()
            .map(|l| l.invoice_id.map(str::to_owned))
            .collect::<Vec<_>>(),
    )
    .fetch_all(conn)
    .await?)
}

/// One movement of one lot (`lot_moves`): negative takes from it, positive gives back to it.
#[derive(Debug, Clone)]
pub struct LotMove<'a> {
    pub lot_id: i64,
    pub org_id: i64,
    pub amount: Decimal,
    pub source: Source,
    pub source_ref: Option<&'a str>,
}

/// Moves lots' `remaining` by the signed amounts and records each move, in two statements (one
/// update of every lot moved, one insert of the moves). The lots must be locked, through their
/// customer's lock (`crate::locks`): customers, then lots.
pub async fn apply_moves(conn: &mut PgConnection, moves: &[LotMove<'_>]) -> Result<()> {
    let moves: Vec<&LotMove> = moves.iter().filter(|m| !m.amount.is_zero()).collect();
    if moves.is_empty() {
        return Ok(());
    }
    let mut by_lot: Vec<(i64, Decimal)> = Vec::new();
    for m in &moves {
        match by_lot.iter_mut().find(|(id, _)| *id == m.lot_id) {
            Some((_, sum)) => *sum = sum.checked_add(m.amount).ok_or_else(overflow)?,
            None => by_lot.push((m.lot_id, m.amount)),
        }
    }
    let updated = sqlx::query(
        "update bonus_lots l set remaining = l.remaining + u.amount
         from unnest($1::bigint[], $2::numeric[]) as u(id, amount)
         where l.id = u.id",
    )
    .bind(by_lot.iter().map(|m| m.0).collect::<Vec<_>>())
    .bind(by_lot.iter().map(|m| m.1).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() != by_lot.len() as u64 {
        return Err(Error::NotFound("bonus lot"));
    }
    sqlx::query(
        "insert into lot_moves (lot_id, org_id, source, source_ref, amount)
         select * from unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::numeric[])",
    )
    .bind(moves.iter().map(|m| m.lot_id).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.org_id).collect::<Vec<_>>())
    .bind(moves.iter().map(|m| m.source).collect::<Vec<_>>())
    .bind(
        moves
            .iter()
            .map(|m| m.source_ref.map(str::to_owned))
            .collect::<Vec<_>>(),
    )
    .bind(moves.iter().map(|m| m.amount).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

fn overflow() -> Error {
    Error::invalid("amount", crate::money::MoneyError::Overflow.to_string())
}

/// A debit of a bonus wallet, to take from its spendable lots.
#[derive(Debug, Clone)]
pub struct Spending<'a> {
    pub org_id: i64,
    pub customer_id: i64,
    /// Main or referral.
    pub wallet: Wallet,
    pub amount: Decimal,
    pub source: Source,
    pub source_ref: Option<&'a str>,
    /// A lot to take from before the others (a refund takes its sale's accrual back from the
    /// sale's own lot first); `None`: soonest expiry first (`rules::lots::spend`).
    pub first: Option<i64>,
}

/// Takes `amount` from the customer's spendable lots of `wallet`, soonest expiry first, and
/// records what it took from each (negative `lot_moves`). The customer's row must be locked
/// already; this locks the lots (customers, then lots). Returns (lot id, amount taken).
pub async fn spend(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    wallet: Wallet,
    amount: Decimal,
    source: Source,
    source_ref: Option<&str>,
) -> Result<Vec<(i64, Decimal)>> {
    let spending = Spending {
        org_id,
        customer_id,
        wallet,
        amount,
        source,
        source_ref,
        first: None,
    };
    Ok(spend_many(conn, std::slice::from_ref(&spending))
        .await?
        .into_iter()
        .next()
        .unwrap_or_default())
}

/// A spendable lot, as spending reads it.
#[derive(sqlx::FromRow)]
struct HeldLot {
    id: i64,
    org_id: i64,
    customer_id: i64,
    wallet: Wallet,
    remaining: Decimal,
    expires_at: Option<DateTime<Utc>>,
}

/// [`spend`] for many debits at once, in order (two of one wallet: the second takes what the
/// first left), in three statements: lock the lots, update them, record the moves. The lots must
/// cover each debit, as they do whenever the ledger accepted it (their sum is the wallet); a
/// debit they cannot cover fails, rather than leave the lots apart from the wallet.
pub async fn spend_many(
    conn: &mut PgConnection,
    spendings: &[Spending<'_>],
) -> Result<Vec<Vec<(i64, Decimal)>>> {
    let spendings: Vec<&Spending> = spendings
        .iter()
        .filter(|s| s.amount > Decimal::ZERO)
        .collect();
    if spendings.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(bad) = spendings
        .iter()
        .find(|s| !matches!(s.wallet, Wallet::Main | Wallet::Referral))
    {
        return Err(Error::invalid(
            "wallet",
            format!("lots are of bonus wallets, not of {}", bad.wallet.as_str()),
        ));
    }
    let mut keys: Vec<(i64, i64, Wallet)> = spendings
        .iter()
        .map(|s| (s.org_id, s.customer_id, s.wallet))
        .collect();
    keys.sort_unstable_by_key(|k| (k.0, k.1, k.2.as_str()));
    keys.dedup();
    let rows: Vec<HeldLot> = sqlx::query_as(
        "select l.id, l.org_id, l.customer_id, l.wallet, l.remaining, l.expires_at
         from bonus_lots l
         join unnest($1::bigint[], $2::bigint[], $3::text[]) as k(org_id, customer_id, wallet)
           on l.org_id = k.org_id and l.customer_id = k.customer_id and l.wallet = k.wallet
         where l.remaining > 0 and not l.pending
         order by l.id
         for update of l",
    )
    .bind(keys.iter().map(|k| k.0).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut lots: HashMap<(i64, i64, Wallet), Vec<LotBalance>> = HashMap::new();
    for lot in rows {
        lots.entry((lot.org_id, lot.customer_id, lot.wallet))
            .or_default()
            .push(LotBalance {
                id: lot.id,
                remaining: lot.remaining,
                expires_at: lot.expires_at,
            });
    }
    let mut moves = Vec::new();
    let mut taken_all = Vec::with_capacity(spendings.len());
    for s in &spendings {
        let held = lots.entry((s.org_id, s.customer_id, s.wallet)).or_default();
        let (taken, short) = rules::take_back_from_lots(s.first, held, s.amount)
            .map_err(|e| Error::invalid("amount", e.to_string()))?;
        if short > Decimal::ZERO {
            tracing::error!(org = s.org_id, customer = s.customer_id, wallet = s.wallet.as_str(), %short, "the lots hold less than the wallet");
            return Err(Error::conflict(
                ConflictCode::InsufficientBalance,
                format!(
                    "the {} wallet's lots hold {short} less than the amount",
                    s.wallet.as_str()
                ),
            ));
        }
        for &(lot_id, take) in &taken {
            if let Some(lot) = held.iter_mut().find(|l| l.id == lot_id) {
                lot.remaining = lot.remaining.checked_sub(take).ok_or_else(overflow)?;
            }
            moves.push(LotMove {
                lot_id,
                org_id: s.org_id,
                amount: -take,
                source: s.source,
                source_ref: s.source_ref,
            });
        }
        taken_all.push(taken);
    }
    apply_moves(conn, &moves).await?;
    Ok(taken_all)
}

/// Gives back to lots what a spending took from them (a refund's share of its sale's bonus
/// payment): each lot's `remaining` grows by what it gets, recorded as a positive move. A lot
/// that has expired meanwhile simply holds it again, and the expiry step burns it again.
pub async fn give_back(
    conn: &mut PgConnection,
    org_id: i64,
    back: &[(i64, Decimal)],
    source: Source,
    source_ref: Option<&str>,
) -> Result<()> {
    let moves: Vec<LotMove> = back
        .iter()
        .map(|&(lot_id, amount)| LotMove {
            lot_id,
            org_id,
            amount,
            source,
            source_ref,
        })
        .collect();
    apply_moves(conn, &moves).await
}

/// What a sale's bonus payment took from each lot (in the order spending takes: soonest expiry
/// first), less what earlier refunds of the sale gave back: what a refund may give back to.
pub async fn taken_by_sale(
    conn: &mut PgConnection,
    org_id: i64,
    sale_receipt_id: &str,
    wallet: Wallet,
) -> Result<Vec<(i64, Decimal)>> {
    let rows: Vec<(i64, Decimal)> = sqlx::query_as(
        "select m.lot_id, -sum(m.amount)
         from lot_moves m join bonus_lots l on l.id = m.lot_id
         where m.org_id = $1 and l.wallet = $3
           and ((m.source = 'receipt' and m.source_ref = $2 and m.amount < 0)
                or (m.source = 'refund' and m.amount > 0
                    and m.source_ref in (select receipt_id from refunds where org_id = $1 and sale_receipt_id = $2)))
         group by m.lot_id, l.expires_at
         having sum(m.amount) < 0
         order by l.expires_at is null, l.expires_at, m.lot_id",
    )
    .bind(org_id)
    .bind(sale_receipt_id)
    .bind(wallet)
    .fetch_all(conn)
    .await?;
    Ok(rows)
}

/// The lot a sale's purchase accrual opened for `customer_id` (what it still holds, and whether
/// it is still pending), if the accrual made one.
pub async fn sale_accrual_lot(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    sale_receipt_id: &str,
) -> Result<Option<SaleLot>> {
    Ok(sqlx::query_as(
        "select id, remaining, pending from bonus_lots
         where org_id = $1 and customer_id = $2 and wallet = 'main' and source = 'receipt' and source_ref = $3
         order by id limit 1
         for update",
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(sale_receipt_id)
    .fetch_optional(conn)
    .await?)
}

/// A sale's accrual lot, as a refund reads it.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct SaleLot {
    pub id: i64,
    pub remaining: Decimal,
    pub pending: bool,
}

/// What setting the imported balances' expiry changed: the lots and what they hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct ImportedExpiry {
    /// Lots of imported balances (and of the balances there were before lots were kept) changed.
    pub lots: i64,
    /// What they hold, together.
    #[serde(serialize_with = "crate::money::serialize_decimal")]
    #[schema(value_type = f64)]
    pub amount: Decimal,
}

/// Gives every spendable lot of an imported balance of `org_id` (the import's and the opening
/// lots, which never expire on their own) the expiry `expires_at`, or none again with `None`.
/// Their customers are locked first, in the program's order (then their lots).
pub async fn set_imported_expiry(
    conn: &mut PgConnection,
    org_id: i64,
    expires_at: Option<DateTime<Utc>>,
) -> Result<ImportedExpiry> {
    let owners: Vec<(i64, i64)> = sqlx::query_as(
        "select distinct org_id, customer_id from bonus_lots
         where org_id = $1 and source in ('import', 'opening') and not pending and remaining > 0",
    )
    .bind(org_id)
    .fetch_all(&mut *conn)
    .await?;
    crate::locks::customers(conn, &owners).await?;
    let (lots, amount): (i64, Option<Decimal>) = sqlx::query_as(
        "with changed as (
             update bonus_lots set expires_at = $2
             where org_id = $1 and source in ('import', 'opening') and not pending and remaining > 0
             returning remaining)
         select count(*), sum(remaining) from changed",
    )
    .bind(org_id)
    .bind(expires_at)
    .fetch_one(conn)
    .await?;
    Ok(ImportedExpiry {
        lots,
        amount: crate::money::exact(amount.unwrap_or_default()),
    })
}
