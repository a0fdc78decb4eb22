//! Lots (`bonus_lots`, `lot_moves`): what each credit left in a bonus wallet, pending until it
//! activates, spendable until it expires. The pure rules are in `rules::lots`; this module applies
//! them. Callers post the ledger entries (`ledger::post_many`) and move the lots here, in the
//! same transaction: the sum of a customer's lots equals the wallet.

pub mod due;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::ledger::{Source, Wallet};

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
