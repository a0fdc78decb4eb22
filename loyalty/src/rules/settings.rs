//! An organization's bonus program: the legacy export's three settings and the rules added since
//! (#12), each off by default so that an imported legacy organization behaves exactly as before.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::money::{Money, Percent};

/// What a purchase earns on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum AccrualBase {
    /// The whole total, whatever paid it (the old system's earlier rule).
    Total,
    /// The whole total, but nothing when bonuses paid part of the bill (its last rule).
    #[default]
    NothingWhenPaidWithBonuses,
    /// The part paid in money: total − bonuses (the norm in Russian retail).
    MoneyPaid,
}

/// A level of the program: from `min_spent` spent, purchases earn `percentage`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    #[schema(min_length = 1, max_length = 64, pattern = r"\S")]
    pub name: String,
    pub min_spent: Money,
    pub percentage: Percent,
}

/// The largest values the day settings take.
pub const MAX_ACCRUAL_DELAY_DAYS: u32 = 3650;
pub const MAX_BONUS_LIFETIME_DAYS: u32 = 36500;
pub const MAX_EXPIRY_WARNING_DAYS: u32 = 365;
pub const MAX_BIRTHDAY_WINDOW_DAYS: u32 = 60;
pub const MAX_TIERS: usize = 20;
const DEFAULT_EXPIRY_WARNING_DAYS: u32 = 7;

/// An organization's bonus program: the legacy export's `bonus_program_settings` and the newer
/// rules. The API shows every field; the legacy export writes only the three old ones and those
/// that differ from their default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BonusProgramSettings {
    /// % of a purchase accrued to the main wallet (below the first tier, or without tiers).
    pub invoice_bonus_percentage: Percent,
    /// Bonus for entering a friend's promo code.
    pub referral_promo_bonus: Money,
    /// % of a friend's first purchase paid to the referrer's referral wallet.
    pub referrer_first_purchase_percentage: Percent,
    /// The largest share of a bill payable with bonuses, 0–100 (default 100).
    #[serde(default = "hundred")]
    pub max_bonus_payment_percentage: Percent,
    /// What a purchase earns on (default: nothing when bonuses paid part of it).
    #[serde(default)]
    pub accrual_base: AccrualBase,
    /// Accruals and referral rewards become spendable this many days after the sale (default 0).
    #[serde(default)]
    #[schema(maximum = 3650)]
    pub accrual_delay_days: u32,
    /// Bonuses expire this many days after they became spendable (default: never).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 36500)]
    pub bonus_lifetime_days: Option<u32>,
    /// Customers are told this many days before their bonuses expire (default 7; 0: not told).
    #[serde(default = "default_warning_days")]
    #[schema(maximum = 365)]
    pub expiry_warning_days: u32,
    /// Levels by money spent, kept in ascending order of `min_spent` (default: none).
    #[serde(default)]
    #[schema(max_items = 20)]
    pub tiers: Vec<Tier>,
    /// Credited once, on the customer's first visit or creation (default 0: none).
    #[serde(default = "zero")]
    pub welcome_bonus: Money,
    /// Credited once a year around the customer's birthday (default 0: none).
    #[serde(default = "zero")]
    pub birthday_bonus: Money,
    /// The birthday bonus is credited from this many days before the birthday to as many after.
    #[serde(default)]
    #[schema(maximum = 60)]
    pub birthday_window_days: u32,
}

fn hundred() -> Percent {
    Percent::HUNDRED
}
fn zero() -> Money {
    Money::ZERO
}
fn default_warning_days() -> u32 {
    DEFAULT_EXPIRY_WARNING_DAYS
}

impl Default for BonusProgramSettings {
    fn default() -> Self {
        Self {
            invoice_bonus_percentage: Percent::ZERO,
            referral_promo_bonus: Money::ZERO,
            referrer_first_purchase_percentage: Percent::ZERO,
            max_bonus_payment_percentage: Percent::HUNDRED,
            accrual_base: AccrualBase::default(),
            accrual_delay_days: 0,
            bonus_lifetime_days: None,
            expiry_warning_days: DEFAULT_EXPIRY_WARNING_DAYS,
            tiers: Vec::new(),
            welcome_bonus: Money::ZERO,
            birthday_bonus: Money::ZERO,
            birthday_window_days: 0,
        }
    }
}

/// The fields the old system had: always written to the legacy export.
pub const LEGACY_FIELDS: [&str; 3] = [
    "invoice_bonus_percentage",
    "referral_promo_bonus",
    "referrer_first_purchase_percentage",
];

impl BonusProgramSettings {
    /// Refuses values the types allow but the rules do not, naming the field.
    pub fn validate(&self) -> Result<()> {
        let field = |name: &str| format!("bonus_program_settings.{name}");
        if self.accrual_delay_days > MAX_ACCRUAL_DELAY_DAYS {
            return Err(Error::invalid(
                field("accrual_delay_days"),
                format!("must be 0 to {MAX_ACCRUAL_DELAY_DAYS} days"),
            ));
        }
        if let Some(days) = self.bonus_lifetime_days {
            if !(1..=MAX_BONUS_LIFETIME_DAYS).contains(&days) {
                return Err(Error::invalid(
                    field("bonus_lifetime_days"),
                    format!("must be 1 to {MAX_BONUS_LIFETIME_DAYS} days, or null for never"),
                ));
            }
        }
        if self.expiry_warning_days > MAX_EXPIRY_WARNING_DAYS {
            return Err(Error::invalid(
                field("expiry_warning_days"),
                format!("must be 0 to {MAX_EXPIRY_WARNING_DAYS} days"),
            ));
        }
        if self.birthday_window_days > MAX_BIRTHDAY_WINDOW_DAYS {
            return Err(Error::invalid(
                field("birthday_window_days"),
                format!("must be 0 to {MAX_BIRTHDAY_WINDOW_DAYS} days"),
            ));
        }
        if self.tiers.len() > MAX_TIERS {
            return Err(Error::invalid(
                field("tiers"),
                format!("at most {MAX_TIERS} tiers"),
            ));
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            if tier.name.trim().is_empty() || tier.name.chars().count() > 64 {
                return Err(Error::invalid(
                    field(&format!("tiers[{i}].name")),
                    "must be 1 to 64 characters, not only spaces",
                ));
            }
        }
        Ok(())
    }

    /// The settings as the legacy export writes them: the three old fields, then only those of
    /// the newer rules that differ from their default.
    pub fn legacy_json(&self) -> serde_json::Result<serde_json::Value> {
        let mut all = serde_json::to_value(self)?;
        let defaults = serde_json::to_value(Self::default())?;
        if let (Some(map), Some(defaults)) = (all.as_object_mut(), defaults.as_object()) {
            map.retain(|key, value| {
                LEGACY_FIELDS.contains(&key.as_str()) || defaults.get(key) != Some(value)
            });
        }
        Ok(all)
    }
}

/// What a change of the settings may set: each field present replaces the stored one, the rest
/// stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SettingsChanges {
    pub invoice_bonus_percentage: Option<Percent>,
    pub referral_promo_bonus: Option<Money>,
    pub referrer_first_purchase_percentage: Option<Percent>,
    pub max_bonus_payment_percentage: Option<Percent>,
    pub accrual_base: Option<AccrualBase>,
    /// Earlier name of `accrual_base`: true is `total`, false `nothing_when_paid_with_bonuses`;
    /// ignored when `accrual_base` is given too.
    #[schema(deprecated)]
    pub accrue_when_paying_with_bonuses: Option<bool>,
    #[serde(default, deserialize_with = "days")]
    #[schema(maximum = 3650)]
    pub accrual_delay_days: Option<u32>,
    /// `null` (or absent from a full document) means never; a number of days sets it.
    #[serde(default, deserialize_with = "present_days")]
    #[schema(value_type = Option<u32>, minimum = 1, maximum = 36500)]
    pub bonus_lifetime_days: Option<Option<u32>>,
    #[serde(default, deserialize_with = "days")]
    #[schema(maximum = 365)]
    pub expiry_warning_days: Option<u32>,
    #[schema(max_items = 20)]
    pub tiers: Option<Vec<Tier>>,
    pub welcome_bonus: Option<Money>,
    pub birthday_bonus: Option<Money>,
    #[serde(default, deserialize_with = "days")]
    #[schema(maximum = 60)]
    pub birthday_window_days: Option<u32>,
}

/// Tiers in ascending order of `min_spent` (as given among equals: the later one of two at the
/// same amount is the one reached).
fn ascending(mut tiers: Vec<Tier>) -> Vec<Tier> {
    tiers.sort_by_key(|t| t.min_spent);
    tiers
}

/// A number of days: a JSON integer, or a number whose decimals are zeros (`18.0` is 18, as JSON
/// Schema's `integer` reads it); `null` is `None`.
fn days<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<u32>, D::Error> {
    use rust_decimal::prelude::ToPrimitive;
    use serde::de::Error as _;
    let Some(number) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    rust_decimal::Decimal::from_str_exact(&number.to_string())
        .ok()
        .filter(|n| n.fract().is_zero())
        .and_then(|n| n.to_u32())
        .map(Some)
        .ok_or_else(|| D::Error::custom(format!("{number} is not a whole number of days")))
}

/// [`days`] where a present `null` means "never": `Some(None)`.
fn present_days<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<u32>>, D::Error> {
    days(d).map(Some)
}

impl From<BonusProgramSettings> for SettingsChanges {
    fn from(s: BonusProgramSettings) -> Self {
        Self {
            invoice_bonus_percentage: Some(s.invoice_bonus_percentage),
            referral_promo_bonus: Some(s.referral_promo_bonus),
            referrer_first_purchase_percentage: Some(s.referrer_first_purchase_percentage),
            max_bonus_payment_percentage: Some(s.max_bonus_payment_percentage),
            accrual_base: Some(s.accrual_base),
            accrue_when_paying_with_bonuses: None,
            accrual_delay_days: Some(s.accrual_delay_days),
            bonus_lifetime_days: Some(s.bonus_lifetime_days),
            expiry_warning_days: Some(s.expiry_warning_days),
            tiers: Some(s.tiers),
            welcome_bonus: Some(s.welcome_bonus),
            birthday_bonus: Some(s.birthday_bonus),
            birthday_window_days: Some(s.birthday_window_days),
        }
    }
}

impl SettingsChanges {
    /// `current` with these changes applied, validated.
    pub fn apply_to(&self, current: &BonusProgramSettings) -> Result<BonusProgramSettings> {
        let base = match (self.accrual_base, self.accrue_when_paying_with_bonuses) {
            (Some(base), None) => Some(base),
            (None, Some(old)) => Some(if old {
                AccrualBase::Total
            } else {
                AccrualBase::NothingWhenPaidWithBonuses
            }),
            (None, None) => None,
            // The newer name wins over the earlier one.
            (Some(base), Some(_)) => Some(base),
        };
        let next = BonusProgramSettings {
            invoice_bonus_percentage: self
                .invoice_bonus_percentage
                .unwrap_or(current.invoice_bonus_percentage),
            referral_promo_bonus: self
                .referral_promo_bonus
                .unwrap_or(current.referral_promo_bonus),
            referrer_first_purchase_percentage: self
                .referrer_first_purchase_percentage
                .unwrap_or(current.referrer_first_purchase_percentage),
            max_bonus_payment_percentage: self
                .max_bonus_payment_percentage
                .unwrap_or(current.max_bonus_payment_percentage),
            accrual_base: base.unwrap_or(current.accrual_base),
            accrual_delay_days: self
                .accrual_delay_days
                .unwrap_or(current.accrual_delay_days),
            bonus_lifetime_days: self
                .bonus_lifetime_days
                .unwrap_or(current.bonus_lifetime_days),
            expiry_warning_days: self
                .expiry_warning_days
                .unwrap_or(current.expiry_warning_days),
            tiers: match &self.tiers {
                Some(tiers) => ascending(tiers.clone()),
                None => current.tiers.clone(),
            },
            welcome_bonus: self.welcome_bonus.unwrap_or(current.welcome_bonus),
            birthday_bonus: self.birthday_bonus.unwrap_or(current.birthday_bonus),
            birthday_window_days: self
                .birthday_window_days
                .unwrap_or(current.birthday_window_days),
        };
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_legacy_document_reads_as_the_old_behaviour() {
        let s: BonusProgramSettings = serde_json::from_str(
            r#"{"invoice_bonus_percentage": 2, "referral_promo_bonus": 50, "referrer_first_purchase_percentage": 5}"#,
        )
        .expect("legacy settings");
        assert_eq!(s.accrual_base, AccrualBase::NothingWhenPaidWithBonuses);
        assert_eq!(s.max_bonus_payment_percentage, Percent::HUNDRED);
        assert_eq!((s.accrual_delay_days, s.bonus_lifetime_days), (0, None));
        assert!(s.tiers.is_empty());
        assert_eq!(
            s.legacy_json().expect("json"),
            serde_json::json!({"invoice_bonus_percentage": 2, "referral_promo_bonus": 50, "referrer_first_purchase_percentage": 5})
        );
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name_and_names_what_it_refuses() {
        let current = BonusProgramSettings {
            accrual_delay_days: 14,
            ..BonusProgramSettings::default()
        };
        let change: SettingsChanges =
            serde_json::from_str(r#"{"bonus_lifetime_days": 365}"#).expect("change");
        let next = change.apply_to(&current).expect("valid");
        assert_eq!(
            (next.accrual_delay_days, next.bonus_lifetime_days),
            (14, Some(365))
        );
        let never: SettingsChanges =
            serde_json::from_str(r#"{"bonus_lifetime_days": null}"#).expect("change");
        assert_eq!(
            never.apply_to(&next).expect("valid").bonus_lifetime_days,
            None
        );

        let unordered: SettingsChanges = serde_json::from_str(
            r#"{"tiers": [{"name": "Gold", "min_spent": 100000, "percentage": 5}, {"name": "Silver", "min_spent": 50000, "percentage": 3}]}"#,
        )
        .expect("shape");
        let names: Vec<String> = unordered
            .apply_to(&current)
            .expect("kept in order")
            .tiers
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["Silver", "Gold"]);
        let blank: SettingsChanges = serde_json::from_str(
            r#"{"tiers": [{"name": "Gold", "min_spent": 1, "percentage": 5}, {"name": "  ", "min_spent": 5, "percentage": 3}]}"#,
        )
        .expect("shape");
        let err = blank.apply_to(&current).expect_err("a blank name");
        assert!(err.to_string().contains("tiers[1].name"), "{err}");
        let whole: SettingsChanges =
            serde_json::from_str(r#"{"accrual_delay_days": 14.0, "bonus_lifetime_days": 18.00}"#)
                .expect("whole numbers written with a point");
        assert_eq!(
            (whole.accrual_delay_days, whole.bonus_lifetime_days),
            (Some(14), Some(Some(18)))
        );
        for wrong in [
            r#"{"accrual_delay_days": 1.5}"#,
            r#"{"accrual_delay_days": -1}"#,
            r#"{"expiry_warning_days": "7"}"#,
        ] {
            assert!(
                serde_json::from_str::<SettingsChanges>(wrong).is_err(),
                "{wrong}"
            );
        }
        let old: SettingsChanges =
            serde_json::from_str(r#"{"accrue_when_paying_with_bonuses": true}"#).expect("old");
        assert_eq!(
            old.apply_to(&current).expect("valid").accrual_base,
            AccrualBase::Total
        );
    }
}
