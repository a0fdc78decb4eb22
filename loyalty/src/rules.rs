//! The bonus rules, as pure functions over `Decimal`: what a purchase earns, what a referrer gets,
//! what a refund takes back. Storage applies what these return; nothing else decides amounts.

use rust_decimal::Decimal;

use crate::money::{Money, MoneyError, Percent, round_money};

/// An organization's bonus program, as in the legacy export's `bonus_program_settings`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BonusSettings {
    pub invoice_bonus_percentage: Percent,
    pub referral_promo_bonus: Money,
    pub referrer_first_purchase_percentage: Percent,
    /// false: a bill paid partly with bonuses earns nothing (the old system's last rule);
    /// true: it earns on its full amount (its earlier rule).
    pub accrue_when_paying_with_bonuses: bool,
}

/// Bonuses a purchase of `total` earns when `paid_with_bonuses` of it was paid from a wallet.
/// Every rule is checked arithmetic: an amount beyond range is an error, never a panic.
pub fn purchase_accrual(
    settings: &BonusSettings,
    total: Decimal,
    paid_with_bonuses: Decimal,
) -> Result<Decimal, MoneyError> {
    if paid_with_bonuses > Decimal::ZERO && !settings.accrue_when_paying_with_bonuses {
        return Ok(Decimal::ZERO);
    }
    settings.invoice_bonus_percentage.of(total)
}

/// What the referrer earns from a friend's purchase: only the first one counts.
pub fn referral_reward(
    settings: &BonusSettings,
    total: Decimal,
    first_purchase: bool,
) -> Result<Decimal, MoneyError> {
    if !first_purchase {
        return Ok(Decimal::ZERO);
    }
    settings.referrer_first_purchase_percentage.of(total)
}

/// The part of `original` (an accrual, or bonuses spent) that a refund gives back, when the sale of
/// `sale_total` has now been refunded `refunded_total` in all (this refund included) and
/// `already_reversed` was given back by earlier refunds. Computing from the cumulative share keeps
/// several partial refunds from drifting by a cent, and never reverses more than the original.
pub fn refund_share(
    original: Decimal,
    sale_total: Decimal,
    refunded_total: Decimal,
    already_reversed: Decimal,
) -> Result<Decimal, MoneyError> {
    if sale_total <= Decimal::ZERO || original <= Decimal::ZERO {
        return Ok(Decimal::ZERO);
    }
    let share = refunded_total
        .min(sale_total)
        .checked_div(sale_total)
        .ok_or(MoneyError::Overflow)?;
    let due = round_money(original.checked_mul(share).ok_or(MoneyError::Overflow)?).min(original);
    let left = due
        .checked_sub(already_reversed)
        .ok_or(MoneyError::Overflow)?;
    Ok(left.max(Decimal::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal literal")
    }

    fn legacy(accrue_when_paying: bool) -> BonusSettings {
        BonusSettings {
            invoice_bonus_percentage: Percent::from_str("2").expect("valid"),
            referral_promo_bonus: Money::from_str("50").expect("valid"),
            referrer_first_purchase_percentage: Percent::from_str("5").expect("valid"),
            accrue_when_paying_with_bonuses: accrue_when_paying,
        }
    }

    #[test]
    fn a_purchase_earns_its_percentage() {
        let settings = legacy(false);
        assert_eq!(
            purchase_accrual(&settings, d("11118"), Decimal::ZERO),
            Ok(d("222.36"))
        );
        assert_eq!(
            purchase_accrual(&settings, d("80"), Decimal::ZERO),
            Ok(d("1.6"))
        );
    }

    #[test]
    fn paying_with_bonuses_earns_nothing_under_the_last_legacy_rule() {
        assert_eq!(
            purchase_accrual(&legacy(false), d("10000"), d("400")),
            Ok(Decimal::ZERO)
        );
    }

    #[test]
    fn paying_with_bonuses_earns_on_the_full_amount_under_the_earlier_rule() {
        // Invoice 9B6E3C60: 10000 with 200 paid by bonuses earned 200.
        assert_eq!(
            purchase_accrual(&legacy(true), d("10000"), d("200")),
            Ok(d("200"))
        );
    }

    #[test]
    fn only_the_first_purchase_rewards_the_referrer() {
        assert_eq!(
            referral_reward(&legacy(false), d("1000"), true),
            Ok(d("50"))
        );
        assert_eq!(
            referral_reward(&legacy(false), d("1000"), false),
            Ok(Decimal::ZERO)
        );
    }

    #[test]
    fn amounts_beyond_range_are_an_overflow_error_never_a_panic() {
        let huge = d("70000000000000000000000000000");
        assert_eq!(
            purchase_accrual(&legacy(false), huge, Decimal::ZERO),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            referral_reward(&legacy(false), huge, true),
            Err(MoneyError::Overflow)
        );
        assert_eq!(
            refund_share(huge, d("0.01"), d("0.01"), -huge),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn refunds_give_back_in_proportion_and_never_more_than_the_original() {
        let share = |original, total, refunded, before| {
            refund_share(d(original), d(total), d(refunded), before).expect("in range")
        };
        assert_eq!(share("200", "10000", "10000", Decimal::ZERO), d("200"));
        assert_eq!(share("200", "10000", "2500", Decimal::ZERO), d("50"));
        // Three thirds refunded one by one add up to exactly the original.
        let first = share("1", "3", "1", Decimal::ZERO);
        let second = share("1", "3", "2", first);
        let third = share("1", "3", "3", first + second);
        assert_eq!((first, second, third), (d("0.33"), d("0.34"), d("0.33")));
        assert_eq!(first + second + third, d("1"));
        // Refunding more than was sold stops at the original.
        assert_eq!(share("200", "10000", "20000", d("200")), Decimal::ZERO);
    }
}
