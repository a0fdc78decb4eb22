//! What the shop's accountant reads: the liability (what the organization owes its customers at an
//! instant) and the activity (what moved, per day). Every figure is a sum of ledger entries (or,
//! for what will expire, of lots), read by organization and time (`ledger_entries_org_time`);
//! which entries make which figure is [`classify`], one pure function.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::ledger::{EntryKind, Source, Wallet};
use crate::money::serialize_decimal;
use crate::time::{OrgTimeZone, Stamp};

/// The longest activity report, in days (a year, leap day included).
pub const MAX_REPORT_DAYS: i64 = 366;
/// The horizons of "will expire within", in days after the report's instant.
pub const EXPIRY_HORIZONS: [i64; 3] = [7, 30, 90];

/// One wallet's line of the liability report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct WalletLiability {
    /// main, referral, or debt (what customers owe the shop).
    pub wallet: Wallet,
    /// The sum of the customers' balances of this wallet at the instant.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub balance: Decimal,
    /// Accruals not spendable yet at the instant (the wallet's pending wallet; 0 for debt).
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub pending: Decimal,
    /// What will expire within 7 days after the instant (see the README for a past instant).
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub expiring_7_days: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub expiring_30_days: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub expiring_90_days: Decimal,
}

/// What the organization owes its customers at an instant.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LiabilityReport {
    /// The instant, RFC 3339 with the organization's offset.
    pub at: String,
    pub time_zone: OrgTimeZone,
    /// main, referral and debt, in that order.
    pub wallets: Vec<WalletLiability>,
}

/// The figures of the activity report: each entry of the ledger counts in at most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Accrued,
    Spent,
    RefundGivenBack,
    RefundTakenBack,
    Expired,
    Referral,
    Promo,
    Welcome,
    Birthday,
    OperatorAccrued,
    OperatorDeducted,
    Activated,
    DebtAdded,
    DebtPaid,
    ImportedAccrued,
    ImportedDeducted,
}

impl Column {
    pub const ALL: [Column; 16] = [
        Column::Accrued,
        Column::Spent,
        Column::RefundGivenBack,
        Column::RefundTakenBack,
        Column::Expired,
        Column::Referral,
        Column::Promo,
        Column::Welcome,
        Column::Birthday,
        Column::OperatorAccrued,
        Column::OperatorDeducted,
        Column::Activated,
        Column::DebtAdded,
        Column::DebtPaid,
        Column::ImportedAccrued,
        Column::ImportedDeducted,
    ];

    /// The field of [`ActivityDay`] and the CSV column.
    pub fn as_str(self) -> &'static str {
        match self {
            Column::Accrued => "accrued",
            Column::Spent => "spent",
            Column::RefundGivenBack => "refund_given_back",
            Column::RefundTakenBack => "refund_taken_back",
            Column::Expired => "expired",
            Column::Referral => "referral",
            Column::Promo => "promo",
            Column::Welcome => "welcome",
            Column::Birthday => "birthday",
            Column::OperatorAccrued => "operator_accrued",
            Column::OperatorDeducted => "operator_deducted",
            Column::Activated => "activated",
            Column::DebtAdded => "debt_added",
            Column::DebtPaid => "debt_paid",
            Column::ImportedAccrued => "imported_accrued",
            Column::ImportedDeducted => "imported_deducted",
        }
    }
}

/// The figure an entry counts in. Debt entries count as debt whatever moved them; the other
/// figures are of the bonus wallets (pending ones included: a delayed accrual is accrued the day
/// of the sale, and activated the day it becomes spendable). An activation's debit of the pending
/// wallet is the other half of its credit, and counts nowhere.
pub fn classify(source: Source, wallet: Wallet, kind: EntryKind) -> Option<Column> {
    if wallet == Wallet::Debt {
        return Some(match kind {
            EntryKind::Accrual => Column::DebtAdded,
            EntryKind::Deduction | EntryKind::Payment => Column::DebtPaid,
        });
    }
    let credit = kind == EntryKind::Accrual;
    let referral = matches!(wallet, Wallet::Referral | Wallet::ReferralPending);
    Some(match (source, credit) {
        (Source::Receipt, true) if referral => Column::Referral,
        (Source::Receipt, true) => Column::Accrued,
        (Source::Receipt, false) => Column::Spent,
        (Source::Refund, true) => Column::RefundGivenBack,
        (Source::Refund, false) => Column::RefundTakenBack,
        (Source::Expiry, false) => Column::Expired,
        (Source::Promo, true) => Column::Promo,
        (Source::Welcome, true) => Column::Welcome,
        (Source::Birthday, true) => Column::Birthday,
        (Source::Operator, true) => Column::OperatorAccrued,
        (Source::Operator, false) => Column::OperatorDeducted,
        (Source::Activation, true) => Column::Activated,
        (Source::Import, true) => Column::ImportedAccrued,
        (Source::Import, false) => Column::ImportedDeducted,
        (Source::Activation | Source::Promo | Source::Welcome | Source::Birthday, false)
        | (Source::Expiry, true) => return None,
    })
}

/// One day of the activity report (the organization's local day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ActivityDay {
    /// The local date, `2026-03-21`.
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    /// Purchase accruals, pending ones included.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub accrued: Decimal,
    /// Bonus payments of bills.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub spent: Decimal,
    /// Bonus payments a refund gave back.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub refund_given_back: Decimal,
    /// Accruals a refund took back (from the main or the pending wallet).
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub refund_taken_back: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub expired: Decimal,
    /// Referrers' rewards for friends' first purchases.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub referral: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub promo: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub welcome: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub birthday: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub operator_accrued: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub operator_deducted: Decimal,
    /// Pending accruals that became spendable.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub activated: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub debt_added: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub debt_paid: Decimal,
    /// Movements of a legacy import's history.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub imported_accrued: Decimal,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub imported_deducted: Decimal,
}

impl ActivityDay {
    pub fn empty(date: NaiveDate) -> Self {
        Self {
            date,
            accrued: Decimal::ZERO,
            spent: Decimal::ZERO,
            refund_given_back: Decimal::ZERO,
            refund_taken_back: Decimal::ZERO,
            expired: Decimal::ZERO,
            referral: Decimal::ZERO,
            promo: Decimal::ZERO,
            welcome: Decimal::ZERO,
            birthday: Decimal::ZERO,
            operator_accrued: Decimal::ZERO,
            operator_deducted: Decimal::ZERO,
            activated: Decimal::ZERO,
            debt_added: Decimal::ZERO,
            debt_paid: Decimal::ZERO,
            imported_accrued: Decimal::ZERO,
            imported_deducted: Decimal::ZERO,
        }
    }

    fn figure(&mut self, column: Column) -> &mut Decimal {
        match column {
            Column::Accrued => &mut self.accrued,
            Column::Spent => &mut self.spent,
            Column::RefundGivenBack => &mut self.refund_given_back,
            Column::RefundTakenBack => &mut self.refund_taken_back,
            Column::Expired => &mut self.expired,
            Column::Referral => &mut self.referral,
            Column::Promo => &mut self.promo,
            Column::Welcome => &mut self.welcome,
            Column::Birthday => &mut self.birthday,
            Column::OperatorAccrued => &mut self.operator_accrued,
            Column::OperatorDeducted => &mut self.operator_deducted,
            Column::Activated => &mut self.activated,
            Column::DebtAdded => &mut self.debt_added,
            Column::DebtPaid => &mut self.debt_paid,
            Column::ImportedAccrued => &mut self.imported_accrued,
            Column::ImportedDeducted => &mut self.imported_deducted,
        }
    }

    /// Adds `amount` to the figure `column`.
    pub fn add(&mut self, column: Column, amount: Decimal) -> Result<()> {
        let figure = self.figure(column);
        *figure = figure
            .checked_add(amount)
            .ok_or_else(|| Error::invalid("amount", "the day's sum is out of range"))?;
        Ok(())
    }

    /// The figures in [`Column::ALL`] order, for the CSV.
    pub fn figures(&self) -> [Decimal; 16] {
        let mut copy = self.clone();
        Column::ALL.map(|c| *copy.figure(c))
    }
}

/// What moved, per local day of the organization, `from` to `to` inclusive.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ActivityReport {
    #[schema(value_type = String, format = Date)]
    pub from: NaiveDate,
    #[schema(value_type = String, format = Date)]
    pub to: NaiveDate,
    /// Always `day`.
    pub by: String,
    pub time_zone: OrgTimeZone,
    /// Every day of the range, oldest first, empty days included.
    pub days: Vec<ActivityDay>,
}

/// A period the activity report covers: local dates, at most [`MAX_REPORT_DAYS`] days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Period {
    /// Refuses a period that ends before it starts or is longer than [`MAX_REPORT_DAYS`].
    pub fn new(from: NaiveDate, to: NaiveDate) -> Result<Self> {
        if to < from {
            return Err(Error::invalid("to", "must not be before from"));
        }
        if (to - from).num_days() >= MAX_REPORT_DAYS {
            return Err(Error::invalid(
                "to",
                format!("a report covers at most {MAX_REPORT_DAYS} days"),
            ));
        }
        Ok(Self { from, to })
    }

    pub fn days(&self) -> impl Iterator<Item = NaiveDate> + use<> {
        let to = self.to;
        self.from.iter_days().take_while(move |d| *d <= to)
    }
}

/// A database that cannot read the organization's zone: the zone's fault, not ours.
fn zone_error(zone: OrgTimeZone) -> impl Fn(sqlx::Error) -> Error {
    move |err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("22023") => Error::invalid(
            "time_zone",
            format!("the database does not know the time zone {zone}"),
        ),
        _ => Error::Db(err),
    }
}

/// A stored wallet name (read as text: `referral_pending` is two words).
fn wallet_named(name: &str) -> Result<Wallet> {
    [
        Wallet::Main,
        Wallet::Referral,
        Wallet::Debt,
        Wallet::Pending,
        Wallet::ReferralPending,
    ]
    .into_iter()
    .find(|w| w.as_str() == name)
    .ok_or_else(|| Error::invalid("wallet", format!("stored wallet {name:?} is unknown")))
}

fn sum_error() -> Error {
    Error::invalid("amount", "the sum is out of range")
}

/// What the organization owed its customers at `at`: balances and pending bonuses as the sum of
/// the entries dated at or before `at` (the wallets now, less the entries after `at`), what will
/// expire after it from the lots.
pub async fn liability(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    at: DateTime<Utc>,
) -> Result<LiabilityReport> {
    // The wallets now less what entries dated after `at` moved: the entries read are those after
    // `at`, none for a report of now. The wallets' sum is kept per organization as they change
    // (`org_wallet_totals`, 16 shards; `migrations/20261204000001_org_wallet_totals.sql`), so it
    // is read from at most 16 rows instead of summed over every customer.
    let now: (Decimal, Decimal, Decimal, Decimal, Decimal) = sqlx::query_as(
        "select coalesce(sum(bonuses), 0), coalesce(sum(referral_bonuses), 0), coalesce(sum(debts), 0),
                coalesce(sum(pending_bonuses), 0), coalesce(sum(pending_referral_bonuses), 0)
         from org_wallet_totals where org_id = $1",
    )
    .bind(org_id)
    .fetch_one(&mut *conn)
    .await?;
    let later: Vec<(String, Decimal)> = sqlx::query_as(
        "select wallet, coalesce(sum(case when kind = 'accrual' then amount else -amount end), 0)
         from ledger_entries where org_id = $1 and occurred_at > $2
         group by wallet",
    )
    .bind(org_id)
    .bind(at)
    .fetch_all(&mut *conn)
    .await?;
    let mut balances = [
        (Wallet::Main, now.0),
        (Wallet::Referral, now.1),
        (Wallet::Debt, now.2),
        (Wallet::Pending, now.3),
        (Wallet::ReferralPending, now.4),
    ];
    for (wallet, moved) in later {
        let wallet = wallet_named(&wallet)?;
        for (w, balance) in balances.iter_mut() {
            if *w == wallet {
                *balance = balance.checked_sub(moved).ok_or_else(sum_error)?;
            }
        }
    }
    let longest = EXPIRY_HORIZONS[EXPIRY_HORIZONS.len() - 1];
    let horizon = |days: i64| at.checked_add_signed(Duration::days(days));
    let until = [horizon(7), horizon(30), horizon(longest)];
    let [Some(d7), Some(d30), Some(d90)] = until else {
        return Err(Error::invalid("at", "is too far in the future"));
    };
    // Still to expire: what today's lots (created by then) hold and expire by each horizon,
    // overdue ones not yet taken out included.
    let remaining: Vec<(String, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "select wallet,
                coalesce(sum(remaining) filter (where expires_at <= $3), 0),
                coalesce(sum(remaining) filter (where expires_at <= $4), 0),
                coalesce(sum(remaining), 0)
         from bonus_lots
         where org_id = $1 and remaining > 0 and expires_at <= $5 and created_at <= $2
         group by wallet",
    )
    .bind(org_id)
    .bind(at)
    .bind(d7)
    .bind(d30)
    .bind(d90)
    .fetch_all(&mut *conn)
    .await?;
    // Already expired after `at` (for an instant in the past): the expiry entries.
    let expired: Vec<(String, Decimal, Decimal, Decimal)> = sqlx::query_as(
        "select wallet,
                coalesce(sum(amount) filter (where occurred_at <= $3), 0),
                coalesce(sum(amount) filter (where occurred_at <= $4), 0),
                coalesce(sum(amount), 0)
         from ledger_entries
         where org_id = $1 and occurred_at > $2 and occurred_at <= $5 and source = 'expiry'
           and kind = 'deduction'
         group by wallet",
    )
    .bind(org_id)
    .bind(at)
    .bind(d7)
    .bind(d30)
    .bind(d90)
    .fetch_all(&mut *conn)
    .await?;
    let balance_of = |wallet: Wallet| {
        balances
            .iter()
            .find(|(w, _)| *w == wallet)
            .map_or(Decimal::ZERO, |(_, b)| *b)
    };
    let mut wallets = Vec::new();
    for wallet in [Wallet::Main, Wallet::Referral, Wallet::Debt] {
        let mut expiring = [Decimal::ZERO; 3];
        for (w, a, b, c) in remaining.iter().chain(&expired) {
            // A lot's wallet is main or referral; an expiry entry may debit a pending one.
            let w = wallet_named(w)?;
            let of = w == wallet || w.pending() == Some(wallet);
            if of && wallet != Wallet::Debt {
                for (sum, add) in expiring.iter_mut().zip([a, b, c]) {
                    *sum = sum.checked_add(*add).ok_or_else(sum_error)?;
                }
            }
        }
        wallets.push(WalletLiability {
            wallet,
            balance: balance_of(wallet).normalize(),
            pending: wallet
                .pending()
                .map_or(Decimal::ZERO, balance_of)
                .normalize(),
            expiring_7_days: expiring[0].normalize(),
            expiring_30_days: expiring[1].normalize(),
            expiring_90_days: expiring[2].normalize(),
        });
    }
    Ok(LiabilityReport {
        at: Stamp::in_zone(at, zone).rfc3339(),
        time_zone: zone,
        wallets,
    })
}

/// What moved in `period`, per local day of `zone`.
pub async fn activity(
    conn: &mut PgConnection,
    org_id: i64,
    zone: OrgTimeZone,
    period: Period,
) -> Result<ActivityReport> {
    let zone_name = zone.to_string();
    let rows: Vec<(NaiveDate, Source, String, EntryKind, Decimal)> = sqlx::query_as(
        "select (occurred_at at time zone $2)::date as day, source, wallet, kind, sum(amount)
         from ledger_entries
         where org_id = $1
           and occurred_at >= ($3::date)::timestamp at time zone $2
           and occurred_at < ($4::date + 1)::timestamp at time zone $2
         group by 1, 2, 3, 4",
    )
    .bind(org_id)
    .bind(&zone_name)
    .bind(period.from)
    .bind(period.to)
    .fetch_all(&mut *conn)
    .await
    .map_err(zone_error(zone))?;
    let mut days: Vec<ActivityDay> = period.days().map(ActivityDay::empty).collect();
    for (day, source, wallet, kind, amount) in rows {
        let Some(column) = classify(source, wallet_named(&wallet)?, kind) else {
            continue;
        };
        if let Some(found) = days.iter_mut().find(|d| d.date == day) {
            found.add(column, amount)?;
        }
    }
    for day in &mut days {
        for column in Column::ALL {
            let figure = day.figure(column);
            *figure = figure.normalize();
        }
    }
    Ok(ActivityReport {
        from: period.from,
        to: period.to,
        by: "day".to_owned(),
        time_zone: zone,
        days,
    })
}

/// The liability report as CSV: a header, one row per wallet, `.` decimals, `,` between fields.
pub fn liability_csv(report: &LiabilityReport) -> String {
    let mut out = String::from(
        "at,wallet,balance,pending,expiring_7_days,expiring_30_days,expiring_90_days\r\n",
    );
    for w in &report.wallets {
        out.push_str(&format!(
            "{},{},{},{},{},{},{}\r\n",
            report.at,
            w.wallet.as_str(),
            w.balance,
            w.pending,
            w.expiring_7_days,
            w.expiring_30_days,
            w.expiring_90_days
        ));
    }
    out
}

/// The activity report as CSV: a header, one row per day.
pub fn activity_csv(report: &ActivityReport) -> String {
    let mut out = String::from("date");
    for column in Column::ALL {
        out.push(',');
        out.push_str(column.as_str());
    }
    out.push_str("\r\n");
    for day in &report.days {
        out.push_str(&day.date.to_string());
        for figure in day.figures() {
            out.push(',');
            out.push_str(&figure.to_string());
        }
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    #[test]
    fn a_period_is_one_to_366_days_in_order() {
        assert!(Period::new(date("2026-01-01"), date("2026-01-01")).is_ok());
        assert!(Period::new(date("2024-01-01"), date("2024-12-31")).is_ok());
        assert!(Period::new(date("2026-01-02"), date("2026-01-01")).is_err());
        assert!(Period::new(date("2024-01-01"), date("2025-01-01")).is_err());
        let days: Vec<_> = Period::new(date("2026-02-27"), date("2026-03-02"))
            .expect("period")
            .days()
            .collect();
        assert_eq!(days.len(), 4);
    }

    #[test]
    fn each_movement_counts_in_one_figure_and_an_activation_once() {
        use EntryKind::*;
        use Source::*;
        assert_eq!(
            classify(Receipt, Wallet::Pending, Accrual),
            Some(Column::Accrued)
        );
        assert_eq!(
            classify(Receipt, Wallet::Main, Accrual),
            Some(Column::Accrued)
        );
        assert_eq!(
            classify(Receipt, Wallet::ReferralPending, Accrual),
            Some(Column::Referral)
        );
        assert_eq!(
            classify(Receipt, Wallet::Referral, Deduction),
            Some(Column::Spent)
        );
        assert_eq!(
            classify(Refund, Wallet::Pending, Deduction),
            Some(Column::RefundTakenBack)
        );
        assert_eq!(
            classify(Activation, Wallet::Main, Accrual),
            Some(Column::Activated)
        );
        assert_eq!(classify(Activation, Wallet::Pending, Deduction), None);
        assert_eq!(
            classify(Operator, Wallet::Debt, Payment),
            Some(Column::DebtPaid)
        );
        assert_eq!(
            classify(Import, Wallet::Debt, Accrual),
            Some(Column::DebtAdded)
        );
        assert_eq!(
            classify(Expiry, Wallet::Referral, Deduction),
            Some(Column::Expired)
        );
    }

    #[test]
    fn the_csv_has_a_header_and_one_row_per_day_with_point_decimals() {
        let mut day = ActivityDay::empty(date("2026-03-21"));
        day.add(Column::Spent, Decimal::new(12050, 2)).expect("sum");
        let report = ActivityReport {
            from: day.date,
            to: day.date,
            by: "day".into(),
            time_zone: OrgTimeZone::default(),
            days: vec![day],
        };
        let csv = activity_csv(&report);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("date,accrued,spent,"));
        assert!(lines[1].starts_with("2026-03-21,0,120.50,"));
    }
}
