//! Lots: what each credit left in a bonus wallet. Spending takes from the lots that expire first;
//! a refund gives back to the lots its sale's payment came from, undoing the spending in reverse.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;

use crate::money::MoneyError;

/// When an accrual made at `at` becomes spendable: `delay_days` later (at once for 0).
pub fn activates_at(at: DateTime<Utc>, delay_days: u32) -> Result<DateTime<Utc>, MoneyError> {
    at.checked_add_signed(chrono::TimeDelta::days(i64::from(delay_days)))
        .ok_or(MoneyError::Overflow)
}

/// When a lot that became spendable at `active_from` expires: `lifetime_days` later, or never.
pub fn expires_at(
    active_from: DateTime<Utc>,
    lifetime_days: Option<u32>,
) -> Result<Option<DateTime<Utc>>, MoneyError> {
    lifetime_days
        .map(|days| {
            active_from
                .checked_add_signed(chrono::TimeDelta::days(i64::from(days)))
                .ok_or(MoneyError::Overflow)
        })
        .transpose()
}

/// The first instant of the local day `text` (`YYYY-MM-DD`) in `zone`, which must come after
/// `now`'s local day: when bonuses given that expiry date burn. The refusal says why.
pub fn start_of_local_day(
    text: &str,
    zone: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    use chrono::TimeZone;
    let day = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .map_err(|_| "must be a day of the calendar written YYYY-MM-DD".to_owned())?;
    if day <= now.with_timezone(&zone).date_naive() {
        return Err("must be a day after today (the shop's)".to_owned());
    }
    // Midnight may not exist (a clock moved forward at it): the first instant there is.
    let midnight = day.and_time(chrono::NaiveTime::MIN);
    (0..=3)
        .find_map(|hour| {
            zone.from_local_datetime(&(midnight + chrono::TimeDelta::hours(hour)))
                .earliest()
        })
        .map(|at| at.with_timezone(&Utc))
        .ok_or_else(|| "is not a day in the shop's time zone".to_owned())
}

/// What a lot still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LotBalance {
    pub id: i64,
    pub remaining: Decimal,
    /// `None`: never expires.
    pub expires_at: Option<DateTime<Utc>>,
}

/// What spending `amount` takes from each of `lots` (lot id, amount): soonest expiry first, the
/// lots that never expire last, older lots (lower id) first among equals. The second value is what
/// the lots could not cover (zero when they hold enough).
pub fn spend(
    lots: &[LotBalance],
    amount: Decimal,
) -> Result<(Vec<(i64, Decimal)>, Decimal), MoneyError> {
    let mut order: Vec<&LotBalance> = lots
        .iter()
        .filter(|l| l.remaining > Decimal::ZERO)
        .collect();
    order.sort_by_key(|l| (l.expires_at.is_none(), l.expires_at, l.id));
    let mut left = amount.max(Decimal::ZERO);
    let mut taken = Vec::new();
    for lot in order {
        if left <= Decimal::ZERO {
            break;
        }
        let take = lot.remaining.min(left);
        taken.push((lot.id, take));
        left = left.checked_sub(take).ok_or(MoneyError::Overflow)?;
    }
    Ok((taken, left))
}

/// What giving back `amount` of a spending returns to each lot: `taken` is what the spending took
/// from each lot, in the order it took it, less what was given back before. The lots taken from
/// last get theirs back first; never more than a lot gave. The second value is what is left over
/// (zero unless `amount` exceeds what was taken).
pub fn give_back(
    taken: &[(i64, Decimal)],
    amount: Decimal,
) -> Result<(Vec<(i64, Decimal)>, Decimal), MoneyError> {
    let mut left = amount.max(Decimal::ZERO);
    let mut back = Vec::new();
    for &(lot, owed) in taken.iter().rev() {
        if left <= Decimal::ZERO {
            break;
        }
        let give = owed.max(Decimal::ZERO).min(left);
        if give > Decimal::ZERO {
            back.push((lot, give));
            left = left.checked_sub(give).ok_or(MoneyError::Overflow)?;
        }
    }
    Ok((back, left))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn day(n: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(n * 86_400, 0)
    }

    fn lot(id: i64, remaining: i64, expires: Option<i64>) -> LotBalance {
        LotBalance {
            id,
            remaining: Decimal::from(remaining),
            expires_at: expires.and_then(day),
        }
    }

    #[test]
    fn an_expiry_date_is_the_start_of_a_later_local_day() {
        let now = DateTime::parse_from_rfc3339("2026-11-30T20:00:00Z")
            .expect("instant")
            .to_utc();
        let almaty = chrono_tz::Asia::Almaty;
        // 20:00 UTC is already 1 December in Almaty (+05:00): the 1st is today there.
        assert!(start_of_local_day("2026-12-01", almaty, now).is_err());
        assert_eq!(
            start_of_local_day("2026-12-02", almaty, now).map(|at| at.to_rfc3339()),
            Ok("2026-12-01T19:00:00+00:00".to_owned())
        );
        assert!(start_of_local_day("2026-02-30", almaty, now).is_err());
        assert!(start_of_local_day("soon", almaty, now).is_err());
    }

    #[test]
    fn spending_takes_the_soonest_expiry_first_and_the_everlasting_last() {
        let lots = [
            lot(1, 100, None),
            lot(2, 50, Some(30)),
            lot(3, 70, Some(10)),
        ];
        let (taken, short) = spend(&lots, Decimal::from(150)).expect("in range");
        assert_eq!(
            taken,
            vec![
                (3, Decimal::from(70)),
                (2, Decimal::from(50)),
                (1, Decimal::from(30))
            ]
        );
        assert_eq!(short, Decimal::ZERO);
        let (_, short) = spend(&lots, Decimal::from(300)).expect("in range");
        assert_eq!(short, Decimal::from(80));
    }

    #[test]
    fn a_refund_gives_back_in_reverse_and_never_more_than_was_taken() {
        let taken = [(3, Decimal::from(70)), (2, Decimal::from(50))];
        assert_eq!(
            give_back(&taken, Decimal::from(60)).expect("in range"),
            (
                vec![(2, Decimal::from(50)), (3, Decimal::from(10))],
                Decimal::ZERO
            )
        );
        assert_eq!(
            give_back(&taken, Decimal::from(200)).expect("in range").1,
            Decimal::from(80)
        );
    }

    proptest! {
        #[test]
        fn spending_never_takes_more_than_a_lot_holds_nor_more_than_asked(
            holdings in proptest::collection::vec((0i64..10_000, proptest::option::of(0i64..400)), 0..12),
            cents in 0i64..200_000,
        ) {
            let lots: Vec<LotBalance> = holdings
                .iter()
                .enumerate()
                .map(|(i, (cents, exp))| LotBalance {
                    id: i as i64,
                    remaining: Decimal::new(*cents, 2),
                    expires_at: exp.and_then(day),
                })
                .collect();
            let amount = Decimal::new(cents, 2);
            let (taken, short) = spend(&lots, amount).expect("in range");
            let total: Decimal = taken.iter().map(|t| t.1).sum();
            prop_assert_eq!(total + short, amount);
            for (id, take) in &taken {
                let lot = lots.iter().find(|l| l.id == *id).expect("a lot of the list");
                prop_assert!(*take > Decimal::ZERO && *take <= lot.remaining);
            }
            // Giving it all back restores exactly what was taken, lot by lot.
            let (back, over) = give_back(&taken, total).expect("in range");
            prop_assert_eq!(over, Decimal::ZERO);
            let mut back_sorted = back.clone();
            back_sorted.sort();
            let mut taken_sorted = taken.clone();
            taken_sorted.sort();
            prop_assert_eq!(back_sorted, taken_sorted);
        }
    }
}
