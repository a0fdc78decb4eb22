//! Where a customer stands in the program, for the customer's view (operator API and Mini App):
//! bonuses still pending and when they activate, the next expiry, the tier and what remains to the
//! next one, and the share of a bill bonuses may pay. Read only; the rules are `rules::tiers`.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgConnection;

use crate::error::{Error, Result};
use crate::ledger::Wallet;
use crate::money::{Percent, serialize_decimal};
use crate::orgs::Organization;
use crate::rules::tiers;
use crate::time::{OrgTimeZone, Stamp};

/// The most pending lots listed (the total counts them all).
pub const MAX_PENDING_LISTED: i64 = 100;

/// Bonuses not spendable yet.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PendingBonuses {
    /// The pending wallets (main and referral) together.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub total: Decimal,
    /// What activates when, soonest first (at most 100).
    pub lots: Vec<PendingLot>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PendingLot {
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub amount: Decimal,
    /// The wallet it becomes spendable in: main or referral.
    pub wallet: Wallet,
    /// RFC 3339 with the organization's offset.
    pub activates_at: String,
}

/// The soonest expiry: what burns on that local day.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NextExpiry {
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub amount: Decimal,
    /// The organization's local date, `2026-03-21`.
    #[schema(value_type = String, format = Date)]
    pub date: NaiveDate,
    /// The first of them to expire, RFC 3339 with the organization's offset.
    pub at: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TierView {
    pub name: String,
    pub percentage: Percent,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NextTierView {
    pub name: String,
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub min_spent: Decimal,
    /// What remains to be spent to reach it.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub rest: Decimal,
}

/// The fields the customer's view adds to the legacy shape.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Standing {
    pub pending_bonuses: PendingBonuses,
    /// Null when nothing is due to expire.
    pub next_expiry: Option<NextExpiry>,
    /// Null below the first tier, or without tiers.
    pub tier: Option<TierView>,
    /// Null at the top tier, or without tiers.
    pub next_tier: Option<NextTierView>,
    /// The money spent (sales less refunds) that tiers are reached by.
    #[serde(serialize_with = "serialize_decimal")]
    #[schema(value_type = f64)]
    pub spent_total: Decimal,
    /// The largest share of a bill payable with bonuses.
    pub max_bonus_payment_percentage: Percent,
    /// `2001-02-03`, or null when not set.
    #[schema(value_type = Option<String>, format = Date)]
    pub birth_date: Option<NaiveDate>,
}

/// The first instant of the local day after `date` in `zone` (the clocks may skip midnight).
fn next_midnight(zone: OrgTimeZone, date: NaiveDate) -> Option<DateTime<Utc>> {
    use chrono::TimeZone;
    let next = date.succ_opt()?;
    (0..=3).find_map(|hour| {
        let local = next.and_hms_opt(hour, 0, 0)?;
        zone.0
            .from_local_datetime(&local)
            .earliest()
            .map(|at| at.with_timezone(&Utc))
    })
}

/// Where customer `id` of `org` stands.
pub async fn standing(conn: &mut PgConnection, org: &Organization, id: i64) -> Result<Standing> {
    let zone = org.time_zone;
    let settings = &org.bonus_program_settings;
    let (pending, pending_referral, spent_total, birth_date): (
        Decimal,
        Decimal,
        Decimal,
        Option<NaiveDate>,
    ) = sqlx::query_as(
        "select pending_bonuses, pending_referral_bonuses, spent_total, birth_date
         from customers where org_id = $1 and id = $2",
    )
    .bind(org.id)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or(Error::NotFound("customer"))?;
    let lots: Vec<(Decimal, Wallet, DateTime<Utc>)> = sqlx::query_as(
        "select remaining, wallet, activates_at from bonus_lots
         where org_id = $1 and customer_id = $2 and pending and remaining > 0
         order by activates_at, id limit $3",
    )
    .bind(org.id)
    .bind(id)
    .bind(MAX_PENDING_LISTED)
    .fetch_all(&mut *conn)
    .await?;
    let first: Option<DateTime<Utc>> = sqlx::query_scalar(
        "select min(expires_at) from bonus_lots
         where org_id = $1 and customer_id = $2 and not pending and remaining > 0",
    )
    .bind(org.id)
    .bind(id)
    .fetch_one(&mut *conn)
    .await?;
    let next_expiry = match first {
        None => None,
        Some(first) => {
            let at = Stamp::in_zone(first, zone);
            let date = at.0.date_naive();
            let end = next_midnight(zone, date);
            let amount: Decimal = sqlx::query_scalar(
                "select coalesce(sum(remaining), 0) from bonus_lots
                 where org_id = $1 and customer_id = $2 and not pending and remaining > 0
                   and expires_at >= $3 and ($4::timestamptz is null or expires_at < $4)",
            )
            .bind(org.id)
            .bind(id)
            .bind(first)
            .bind(end)
            .fetch_one(&mut *conn)
            .await?;
            Some(NextExpiry {
                amount: amount.normalize(),
                date,
                at: at.rfc3339(),
            })
        }
    };
    let out_of_range = |e: crate::money::MoneyError| Error::invalid("spent_total", e.to_string());
    let tier = tiers::tier_reached(settings, spent_total).map(|(_, t)| TierView {
        name: t.name.clone(),
        percentage: t.percentage,
    });
    let next_tier = tiers::next_tier(settings, spent_total)
        .map_err(out_of_range)?
        .map(|(t, rest)| NextTierView {
            name: t.name.clone(),
            min_spent: t.min_spent.get(),
            rest: rest.normalize(),
        });
    Ok(Standing {
        pending_bonuses: PendingBonuses {
            total: pending
                .checked_add(pending_referral)
                .ok_or_else(|| out_of_range(crate::money::MoneyError::Overflow))?
                .normalize(),
            lots: lots
                .into_iter()
                .map(|(amount, wallet, at)| PendingLot {
                    amount: amount.normalize(),
                    wallet,
                    activates_at: Stamp::in_zone(at, zone).rfc3339(),
                })
                .collect(),
        },
        next_expiry,
        tier,
        next_tier,
        spent_total: spent_total.normalize(),
        max_bonus_payment_percentage: settings.max_bonus_payment_percentage,
        birth_date,
    })
}
