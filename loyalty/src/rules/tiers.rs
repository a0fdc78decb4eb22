//! Tiers: the accrual percentage grows with the money a customer has spent (sales less refunds).

use rust_decimal::Decimal;

use super::{BonusProgramSettings, Tier};
use crate::money::{MoneyError, Percent};

/// The highest tier `spent` reaches, with its place in the list; `None` below the first one (or
/// without tiers).
pub fn tier_reached(settings: &BonusProgramSettings, spent: Decimal) -> Option<(usize, &Tier)> {
    settings
        .tiers
        .iter()
        .enumerate()
        .rev()
        .find(|(_, tier)| spent >= tier.min_spent.get())
}

/// The percentage a purchase earns for a customer who had spent `spent_before` before it: their
/// tier's, or the program's own below the first tier.
pub fn accrual_percentage(settings: &BonusProgramSettings, spent_before: Decimal) -> Percent {
    tier_reached(settings, spent_before).map_or(settings.invoice_bonus_percentage, |(_, tier)| {
        tier.percentage
    })
}

/// The next tier above what `spent` reaches, and the money that remains to reach it.
pub fn next_tier(
    settings: &BonusProgramSettings,
    spent: Decimal,
) -> Result<Option<(&Tier, Decimal)>, MoneyError> {
    let next = match tier_reached(settings, spent) {
        Some((i, _)) => settings.tiers.get(i + 1),
        None => settings.tiers.first(),
    };
    next.map(|tier| {
        let rest = tier
            .min_spent
            .get()
            .checked_sub(spent)
            .ok_or(MoneyError::Overflow)?;
        Ok((tier, rest.max(Decimal::ZERO)))
    })
    .transpose()
}

/// The tier a customer newly reaches when what they spent goes from `before` to `after` (a higher
/// one than before), for the message that congratulates them; `None` otherwise.
pub fn newly_reached(
    settings: &BonusProgramSettings,
    before: Decimal,
    after: Decimal,
) -> Option<&Tier> {
    let was = tier_reached(settings, before).map(|(i, _)| i);
    match tier_reached(settings, after) {
        Some((i, tier)) if was.is_none_or(|w| i > w) => Some(tier),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::Money;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal literal")
    }

    fn tiered() -> BonusProgramSettings {
        let tier = |name: &str, min: &str, pct: &str| Tier {
            name: name.into(),
            min_spent: Money::from_str(min).expect("money"),
            percentage: Percent::from_str(pct).expect("percent"),
        };
        BonusProgramSettings {
            invoice_bonus_percentage: Percent::from_str("1").expect("percent"),
            tiers: vec![tier("Silver", "10000", "3"), tier("Gold", "50000", "5")],
            ..BonusProgramSettings::default()
        }
    }

    #[test]
    fn the_percentage_is_the_tier_reached_before_the_purchase() {
        let s = tiered();
        assert_eq!(
            accrual_percentage(&s, d("0")),
            Percent::from_str("1").expect("p")
        );
        assert_eq!(
            accrual_percentage(&s, d("9999.99")),
            Percent::from_str("1").expect("p")
        );
        assert_eq!(
            accrual_percentage(&s, d("10000")),
            Percent::from_str("3").expect("p")
        );
        assert_eq!(
            accrual_percentage(&s, d("1000000")),
            Percent::from_str("5").expect("p")
        );
        assert_eq!(
            accrual_percentage(&BonusProgramSettings::default(), d("1000000")),
            Percent::ZERO
        );
    }

    #[test]
    fn what_remains_to_the_next_tier() {
        let s = tiered();
        let next = |spent| {
            next_tier(&s, d(spent))
                .expect("in range")
                .map(|(t, rest)| (t.name.clone(), rest))
        };
        assert_eq!(next("2500"), Some(("Silver".into(), d("7500"))));
        assert_eq!(next("10000"), Some(("Gold".into(), d("40000"))));
        assert_eq!(next("50000"), None);
    }

    #[test]
    fn only_a_higher_tier_is_newly_reached() {
        let s = tiered();
        let reached = |a, b| newly_reached(&s, d(a), d(b)).map(|t| t.name.clone());
        assert_eq!(reached("9000", "10000"), Some("Silver".into()));
        assert_eq!(reached("9000", "60000"), Some("Gold".into()));
        assert_eq!(reached("10000", "20000"), None);
        assert_eq!(
            reached("60000", "9000"),
            None,
            "a refund lowers it silently"
        );
        assert_eq!(reached("0", "100"), None);
    }
}
