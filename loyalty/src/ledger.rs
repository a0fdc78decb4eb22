//! Posting to the append-only ledger. One entry moves one wallet; the database trigger updates the
//! cached balance in the same statement and refuses a negative wallet, so callers cannot drift.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::error::{ConflictCode, Error, Result, violated_constraint};
use crate::money::Amount;
use crate::time::Stamp;

/// The wallets of a customer (the `wallet` column, and the API's `wallet`): `referral_pending`
/// in snake case, as the column's CHECK constraint spells it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Wallet {
    /// Bonuses earned on purchases (`bonuses`, `history`).
    Main,
    /// Bonuses earned from friends' first purchases (`referral_bonuses`, `referral_bonus_history`).
    Referral,
    /// What the customer owes the shop (`debts`, `debt_history`).
    Debt,
    /// Purchase accruals not spendable yet (`pending_bonuses`): `accrual_delay_days`.
    Pending,
    /// Referral rewards not spendable yet (`pending_referral_bonuses`).
    ReferralPending,
}

impl Wallet {
    pub const ALL: [Wallet; 5] = [
        Wallet::Main,
        Wallet::Referral,
        Wallet::Debt,
        Wallet::Pending,
        Wallet::ReferralPending,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Wallet::Main => "main",
            Wallet::Referral => "referral",
            Wallet::Debt => "debt",
            Wallet::Pending => "pending",
            Wallet::ReferralPending => "referral_pending",
        }
    }

    /// The pending wallet an accrual into `self` waits in, for a bonus wallet.
    pub fn pending(self) -> Option<Wallet> {
        match self {
            Wallet::Main => Some(Wallet::Pending),
            Wallet::Referral => Some(Wallet::ReferralPending),
            _ => None,
        }
    }

    /// The legacy `transaction_type` of the wallet's entries.
    pub fn transaction_type(self) -> &'static str {
        match self {
            Wallet::Main => "bonus",
            Wallet::Referral => "referral",
            Wallet::Debt => "debt",
            Wallet::Pending => "pending",
            Wallet::ReferralPending => "referral_pending",
        }
    }
}

/// The legacy `type` of an entry: what it does to its wallet (the `kind` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum EntryKind {
    /// Adds to the wallet (bonuses earned, debt taken).
    Accrual,
    /// Takes bonuses out.
    Deduction,
    /// Pays a debt off.
    Payment,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Accrual => "accrual",
            EntryKind::Deduction => "deduction",
            EntryKind::Payment => "payment",
        }
    }

    pub const ALL: [EntryKind; 3] = [EntryKind::Accrual, EntryKind::Deduction, EntryKind::Payment];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The kind that takes money out of `wallet`.
    pub fn outgoing(wallet: Wallet) -> Self {
        if wallet == Wallet::Debt {
            EntryKind::Payment
        } else {
            EntryKind::Deduction
        }
    }
}

/// Who or what moved the money (the `source` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Source {
    Import,
    Operator,
    Promo,
    Receipt,
    Refund,
    /// A pending accrual becoming spendable.
    Activation,
    /// Bonuses that reached their expiry date.
    Expiry,
    Welcome,
    Birthday,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Import => "import",
            Source::Operator => "operator",
            Source::Promo => "promo",
            Source::Receipt => "receipt",
            Source::Refund => "refund",
            Source::Activation => "activation",
            Source::Expiry => "expiry",
            Source::Welcome => "welcome",
            Source::Birthday => "birthday",
        }
    }
}

/// The legacy descriptions, kept word for word.
pub mod describe {
    pub fn purchase_accrual(invoice: &str) -> String {
        format!("Бонус с накладной #{invoice}")
    }
    pub fn bill_payment(invoice: &str) -> String {
        format!("Оплата по накладной #{invoice}")
    }
    pub fn friend_reward(first_name: &str) -> String {
        format!("Бонус от друга {first_name}")
    }
    pub fn refund_payment(invoice: &str) -> String {
        format!("Возврат оплаты по накладной #{invoice}")
    }
    pub fn refund_reversal(invoice: &str) -> String {
        format!("Возврат по накладной #{invoice}")
    }
    pub const PROMO: &str = "Бонус за промокод";
    pub const OPERATOR_ACCRUAL: &str = "Начисление бонусов (админ)";
    pub const OPERATOR_DEDUCTION: &str = "Списание бонусов (админ)";
    pub const DEBT_ADDED: &str = "Добавление долга";
    pub const DEBT_PAID: &str = "Погашение долга";
    pub fn activation(invoice: &str) -> String {
        format!("Активация бонусов по накладной #{invoice}")
    }
    pub const ACTIVATION: &str = "Активация бонусов";
    pub const EXPIRY: &str = "Сгорание бонусов";
    pub const WELCOME: &str = "Приветственный бонус";
    pub fn birthday(year: i32) -> String {
        format!("Бонус ко дню рождения {year}")
    }
}

/// One movement of one wallet, as written by this service.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub org_id: i64,
    pub customer_id: i64,
    pub wallet: Wallet,
    pub kind: EntryKind,
    pub amount: Amount,
    pub description: &'a str,
    pub source: Source,
    pub source_ref: Option<&'a str>,
    pub at: Stamp,
}

/// A posted entry, in the legacy history shape.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(
        serialize_with = "crate::money::serialize_decimal",
        deserialize_with = "crate::money::deserialize_decimal"
    )]
    #[schema(value_type = f64)]
    pub amount: Decimal,
    pub description: String,
    pub date: String,
    pub date_str: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction_type: Option<String>,
}

/// Appends `entry`; the wallet moves in the same statement. Taking out more than the wallet holds
/// (less what open bills have reserved) is a `Conflict`, and nothing is written.
pub async fn post(conn: &mut PgConnection, entry: &NewEntry<'_>) -> Result<()> {
    post_many(conn, std::slice::from_ref(entry)).await
}

/// As [`post`], for an entry made by hand: `actor` (`platform`, `staff:<id>`, `key:<id>`) is
/// kept with it, so the trail says who moved the wallet.
pub async fn post_by(conn: &mut PgConnection, entry: &NewEntry<'_>, actor: &str) -> Result<()> {
    insert(conn, std::slice::from_ref(entry), Some(actor)).await
}

/// Appends entries in one statement, in order (each moves its wallet through the trigger).
pub async fn post_many(conn: &mut PgConnection, entries: &[NewEntry<'_>]) -> Result<()> {
    insert(conn, entries, None).await
}

/// Appends entries, all made by `actor` (`None`: by the program itself).
async fn insert(
    conn: &mut PgConnection,
    entries: &[NewEntry<'_>],
    actor: Option<&str>,
) -> Result<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let column = |f: fn(&NewEntry<'_>) -> String| entries.iter().map(f).collect::<Vec<_>>();
    let result = sqlx::query(
        "insert into ledger_entries
             (org_id, customer_id, wallet, kind, amount, description, source, source_ref,
              transaction_type, occurred_at, utc_offset_seconds, actor)
         select o, c, w, k, a, d, s, r, t, at, off, $12::text
         from unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::numeric[], $6::text[],
                              $7::text[], $8::text[], $9::text[], $10::timestamptz[], $11::int[])
                with ordinality as e(o, c, w, k, a, d, s, r, t, at, off, n)
         order by n",
    )
    .bind(entries.iter().map(|e| e.org_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.customer_id).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.wallet).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.kind).collect::<Vec<_>>())
    .bind(entries.iter().map(|e| e.amount.get()).collect::<Vec<_>>())
    .bind(column(|e| e.description.to_owned()))
    .bind(entries.iter().map(|e| e.source).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.source_ref.map(str::to_owned))
            .collect::<Vec<_>>(),
    )
    .bind(column(|e| e.wallet.transaction_type().to_owned()))
    .bind(entries.iter().map(|e| e.at.utc()).collect::<Vec<_>>())
    .bind(
        entries
            .iter()
            .map(|e| e.at.offset_seconds())
            .collect::<Vec<_>>(),
    )
    .bind(actor)
    .execute(conn)
    .await;
    result.map(|_| ()).map_err(|err| match insufficient(&err) {
        Some(wallet) => Error::conflict(
            ConflictCode::InsufficientBalance,
            format!("the {wallet} holds less than the amount (after what open bills reserve)"),
        ),
        None => Error::Db(err),
    })
}

/// Appends a once-only entry (a welcome or birthday bonus: `source` and `source_ref` say which
/// once): `false`, and nothing written, when it was posted before, by this or any other worker.
pub async fn post_once(conn: &mut PgConnection, entry: &NewEntry<'_>) -> Result<bool> {
    if !matches!(entry.source, Source::Welcome | Source::Birthday) || entry.source_ref.is_none() {
        return Err(Error::invalid(
            "source",
            "only welcome and birthday bonuses, with a reference, are once-only",
        ));
    }
    let inserted = sqlx::query(
        "insert into ledger_entries
             (org_id, customer_id, wallet, kind, amount, description, source, source_ref,
              transaction_type, occurred_at, utc_offset_seconds)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         on conflict (org_id, customer_id, source, source_ref) where source in ('welcome', 'birthday')
         do nothing",
    )
    .bind(entry.org_id)
    .bind(entry.customer_id)
    .bind(entry.wallet)
    .bind(entry.kind)
    .bind(entry.amount.get())
    .bind(entry.description)
    .bind(entry.source)
    .bind(entry.source_ref)
    .bind(entry.wallet.transaction_type())
    .bind(entry.at.utc())
    .bind(entry.at.offset_seconds())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// Which wallet a failed statement would have overdrawn, if that is why it failed.
pub fn insufficient(err: &sqlx::Error) -> Option<&'static str> {
    match violated_constraint(err)? {
        "main_wallet_not_negative" | "main_wallet_holds_covered" => Some("main wallet"),
        "referral_wallet_not_negative" | "referral_wallet_holds_covered" => Some("referral wallet"),
        "debt_not_negative" => Some("debt"),
        "pending_wallet_not_negative" => Some("pending wallet"),
        "pending_referral_wallet_not_negative" => Some("pending referral wallet"),
        _ => None,
    }
}

/// What one receipt's entries did to one customer's wallets, read back typed: what a refund of
/// it reverses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiptMovements {
    /// Bonuses the receipt accrued to the main wallet (or to the pending wallet, when delayed).
    pub accrued: Decimal,
    /// The bonus payment it took, and from which wallet.
    pub paid: Option<(Wallet, Decimal)>,
}

/// The movements `source_ref` (a receipt id) made, as a sale, in `customer_id`'s wallets.
pub async fn receipt_movements(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    receipt_id: &str,
) -> Result<ReceiptMovements> {
    let rows: Vec<(Wallet, EntryKind, Decimal)> = sqlx::query_as(
        "select wallet, kind, amount from ledger_entries
         where org_id = $1 and customer_id = $2 and source = $3 and source_ref = $4
         order by seq",
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(Source::Receipt)
    .bind(receipt_id)
    .fetch_all(conn)
    .await?;
    let mut movements = ReceiptMovements::default();
    for (wallet, kind, amount) in rows {
        match (wallet, kind) {
            // A delayed accrual was made into the pending wallet: it is the same accrual.
            (Wallet::Main | Wallet::Pending, EntryKind::Accrual) => {
                movements.accrued = movements.accrued.checked_add(amount).ok_or_else(|| {
                    Error::invalid("amount", crate::money::MoneyError::Overflow.to_string())
                })?;
            }
            (_, EntryKind::Deduction) if movements.paid.is_none() => {
                movements.paid = Some((wallet, amount));
            }
            _ => {}
        }
    }
    Ok(movements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wallet_is_written_as_the_column_check_spells_it() {
        let migration = include_str!("../../migrations/20261201000001_rules_wave.sql");
        for wallet in Wallet::ALL {
            let json = serde_json::to_value(wallet).expect("json");
            assert_eq!(json, serde_json::json!(wallet.as_str()));
            assert!(
                migration.contains(&format!("'{}'", wallet.as_str())),
                "{wallet:?}"
            );
        }
    }
}

/// A stored entry as read back for the legacy shape.
#[derive(Debug, sqlx::FromRow)]
pub struct EntryRow {
    pub seq: i64,
    pub customer_id: i64,
    pub wallet: Wallet,
    pub kind: EntryKind,
    pub amount: Decimal,
    pub description: String,
    pub transaction_type: Option<String>,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub utc_offset_seconds: i32,
    /// Index in the imported wallet history; None for entries written here.
    pub legacy_position: Option<i32>,
}

impl EntryRow {
    pub fn to_history(&self) -> HistoryEntry {
        let at = Stamp::from_parts(self.occurred_at, self.utc_offset_seconds);
        HistoryEntry {
            kind: self.kind.as_str().to_owned(),
            amount: self.amount,
            description: self.description.clone(),
            date: at.rfc3339(),
            date_str: at.local_str(),
            transaction_type: self.transaction_type.clone(),
        }
    }
}

/// Every entry of the given customers (all of the organization's when `customer` is None), each
/// wallet in the order it was written (imported entries in their original order).
pub async fn entries(
    conn: &mut PgConnection,
    org_id: i64,
    customer: Option<i64>,
) -> Result<Vec<EntryRow>> {
    Ok(sqlx::query_as(
        "select seq, customer_id, wallet, kind, amount, description, transaction_type, occurred_at,
                utc_offset_seconds, legacy_position
         from ledger_entries
         where org_id = $1 and ($2::bigint is null or customer_id = $2)
         order by customer_id, legacy_position nulls last, seq",
    )
    .bind(org_id)
    .bind(customer)
    .fetch_all(conn)
    .await?)
}

/// The legacy `combined_history`: all wallets, newest first by the real instant; entries of one
/// instant keep the order they were written in (a bill's payment before its accrual, as before).
pub fn combined(rows: &[&EntryRow]) -> Vec<HistoryEntry> {
    let mut sorted: Vec<&&EntryRow> = rows.iter().collect();
    sorted.sort_by(|a, b| b.occurred_at.cmp(&a.occurred_at).then(a.seq.cmp(&b.seq)));
    sorted.into_iter().map(|r| r.to_history()).collect()
}

/// Where a page of history ends: the last entry's instant and sequence number, as text
/// (`<microseconds since the epoch>_<seq>`) for a `before=` parameter.
pub fn history_cursor(row: &EntryRow) -> String {
    format!("{}_{}", row.occurred_at.timestamp_micros(), row.seq)
}

/// Parses a cursor made by `history_cursor`.
pub fn parse_history_cursor(text: &str) -> Option<(chrono::DateTime<chrono::Utc>, i64)> {
    let (micros, seq) = text.split_once('_')?;
    Some((
        chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
        seq.parse().ok()?,
    ))
}

/// One page of a customer's combined history, in the order of `combined` (newest first by the
/// real instant), starting after `before`.
pub async fn history_page(
    conn: &mut PgConnection,
    org_id: i64,
    customer_id: i64,
    before: Option<(chrono::DateTime<chrono::Utc>, i64)>,
    limit: i64,
) -> Result<Vec<EntryRow>> {
    Ok(sqlx::query_as(
        "select seq, customer_id, wallet, kind, amount, description, transaction_type, occurred_at,
                utc_offset_seconds, legacy_position
         from ledger_entries
         where org_id = $1 and customer_id = $2
           and ($3::timestamptz is null or occurred_at < $3 or (occurred_at = $3 and seq > $4))
         order by occurred_at desc, seq
         limit $5",
    )
    .bind(org_id)
    .bind(customer_id)
    .bind(before.map(|b| b.0))
    .bind(before.map_or(0, |b| b.1))
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// One entry of a legacy export's history, as the old system wrote it: its own transaction type,
/// and its place in its list (the export writes the lists back in that order).
#[derive(Debug, Clone)]
pub struct ImportedEntry<'a> {
    pub org_id: i64,
    pub customer_id: i64,
    pub wallet: Wallet,
    pub kind: EntryKind,
    pub amount: Decimal,
    pub description: &'a str,
    pub transaction_type: Option<&'a str>,
    pub at: Stamp,
    pub legacy_position: i32,
}

/// Appends an imported entry; the wallet moves in the same statement. The error is the database's,
/// so the import can name the entry that would take its wallet below zero ([`insufficient`]).
pub async fn post_imported(
    conn: &mut PgConnection,
    entry: &ImportedEntry<'_>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into ledger_entries
             (org_id, customer_id, wallet, kind, amount, description, source, transaction_type,
              occurred_at, utc_offset_seconds, legacy_position)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(entry.org_id)
    .bind(entry.customer_id)
    .bind(entry.wallet.as_str())
    .bind(entry.kind.as_str())
    .bind(entry.amount)
    .bind(entry.description)
    .bind(Source::Import.as_str())
    .bind(entry.transaction_type)
    .bind(entry.at.utc())
    .bind(entry.at.offset_seconds())
    .bind(entry.legacy_position)
    .execute(conn)
    .await
    .map(|_| ())
}
