//! The bonus rules, as pure functions over `Decimal`: what a purchase earns, what a referrer gets,
//! what a refund takes back. Storage applies what these return; nothing else decides amounts.

use rust_decimal::Decimal;

use crate::money::{Money, Percent, round_money};

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
pub fn purchase_accrual(
    settings: &BonusSettings,
    total: Decimal,
    paid_with_bonuses: Decimal,
) -> Decimal {
    if paid_with_bonuses > Decimal::ZERO && !settings.accrue_when_paying_with_bonuses {
        return Decimal::ZERO;
    }
    settings.invoice_bonus_percentage.of(total)
}

/// What the referrer earns from a friend's purchase: only the first one counts.
pub fn referral_reward(settings: &BonusSettings, total: Decimal, first_purchase: bool) -> Decimal {
    if !first_purchase {
        return Decimal::ZERO;
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
) -> Decimal {
    if sale_total <= Decimal::ZERO || original <= Decimal::ZERO {
        return Decimal::ZERO;
    }
    let share = refunded_total.min(sale_total) / sale_total;
    let due = round_money(original * share).min(original);
    (due - already_reversed).max(Decimal::ZERO)
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
        assert_eq!(
            purchase_accrual(&legacy(false), d("11118"), Decimal::ZERO),
            d("222.36")
        );
        assert_eq!(
            purchase_accrual(&legacy(false), d("80"), Decimal::ZERO),
            d("1.6")
        );
    }

    #[test]
    fn paying_with_bonuses_earns_nothing_under_the_last_legacy_rule() {
        assert_eq!(
            purchase_accrual(&legacy(false), d("10000"), d("400")),
            Decimal::ZERO
        );
    }

    #[test]
    fn paying_with_bonuses_earns_on_the_full_amount_under_the_earlier_rule() {
        // Invoice 9B6E3C60: 10000 with 200 paid by bonuses earned 200.
        assert_eq!(
            purchase_accrual(&legacy(true), d("10000"), d("200")),
            d("200")
        );
    }

    #[test]
    fn only_the_first_purchase_rewards_the_referrer() {
        assert_eq!(referral_reward(&legacy(false), d("1000"), true), d("50"));
        assert_eq!(
            referral_reward(&legacy(false), d("1000"), false),
            Decimal::ZERO
        );
    }

    #[test]
    fn refunds_give_back_in_proportion_and_never_more_than_the_original() {
        assert_eq!(
            refund_share(d("200"), d("10000"), d("10000"), Decimal::ZERO),
            d("200")
        );
        assert_eq!(
            refund_share(d("200"), d("10000"), d("2500"), Decimal::ZERO),
            d("50")
        );
        // Three thirds refunded one by one add up to exactly the original.
        let first = refund_share(d("1"), d("3"), d("1"), Decimal::ZERO);
        let second = refund_share(d("1"), d("3"), d("2"), first);
        let third = refund_share(d("1"), d("3"), d("3"), first + second);
        assert_eq!((first, second, third), (d("0.33"), d("0.34"), d("0.33")));
        assert_eq!(first + second + third, d("1"));
        // Refunding more than was sold stops at the original.
        assert_eq!(
            refund_share(d("200"), d("10000"), d("20000"), d("200")),
            Decimal::ZERO
        );
    }
}
