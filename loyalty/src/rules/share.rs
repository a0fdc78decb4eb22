//! The largest share of a bill a customer may pay with bonuses (`max_bonus_payment_percentage`).

use rust_decimal::{Decimal, RoundingStrategy};

use crate::money::{MoneyError, Percent};

/// `percentage` % of a bill's `total`, rounded *down* to the cent: a cap is never exceeded by
/// rounding. 100 % is the total itself.
pub fn share_cap(percentage: Percent, total: Decimal) -> Result<Decimal, MoneyError> {
    let cap = total
        .max(Decimal::ZERO)
        .checked_mul(percentage.get())
        .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED))
        .ok_or(MoneyError::Overflow)?;
    Ok(cap
        .round_dp_with_strategy(2, RoundingStrategy::ToZero)
        .normalize())
}

/// The most a customer may pay with bonuses on a bill of `total`: the share the program allows,
/// and no more than the wallet has `available` (less what other open bills hold).
pub fn max_bonus_payment(
    percentage: Percent,
    total: Decimal,
    available: Decimal,
) -> Result<Decimal, MoneyError> {
    Ok(share_cap(percentage, total)?
        .min(available)
        .max(Decimal::ZERO)
        .normalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal literal")
    }
    fn pct(s: &str) -> Percent {
        Percent::from_str(s).expect("percent")
    }

    #[test]
    fn the_cap_is_rounded_down_to_the_cent() {
        assert_eq!(share_cap(pct("30"), d("99.99")), Ok(d("29.99")));
        assert_eq!(share_cap(pct("33.33"), d("10")), Ok(d("3.33")));
        assert_eq!(share_cap(pct("50"), d("0.03")), Ok(d("0.01")));
        assert_eq!(share_cap(pct("100"), d("9550")), Ok(d("9550")));
        assert_eq!(share_cap(pct("0"), d("9550")), Ok(Decimal::ZERO));
    }

    #[test]
    fn the_maximum_is_the_cap_or_the_wallet_whichever_is_less() {
        assert_eq!(
            max_bonus_payment(pct("30"), d("1000"), d("500")),
            Ok(d("300"))
        );
        assert_eq!(
            max_bonus_payment(pct("30"), d("1000"), d("120.5")),
            Ok(d("120.5"))
        );
        assert_eq!(
            max_bonus_payment(pct("30"), d("1000"), d("-5")),
            Ok(Decimal::ZERO)
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn cents(max: i64) -> impl Strategy<Value = Decimal> {
            (0..max).prop_map(|c| Decimal::new(c, 2))
        }

        proptest! {
            #[test]
            fn never_above_the_share_the_wallet_or_the_total_and_never_a_cent_short(
                total in cents(100_000_000_000),
                available in cents(100_000_000_000),
                basis in 0i64..=10_000,
            ) {
                let percentage = Percent::new(Decimal::new(basis, 2)).expect("0 to 100");
                let max = max_bonus_payment(percentage, total, available).expect("in range");
                let exact_share = total * percentage.get() / Decimal::ONE_HUNDRED;
                prop_assert!(max >= Decimal::ZERO);
                prop_assert!(max <= available && max <= total && max <= exact_share);
                prop_assert!(max.scale() <= 2);
                // One cent more would break the share, unless the wallet is what limits it.
                if max < available {
                    prop_assert!(max + Decimal::new(1, 2) > exact_share);
                }
            }
        }
    }
}
