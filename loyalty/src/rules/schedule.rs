//! The scheduled steps' pure rules: which birthday is due on a day, how much of a due lot may
//! burn while open bills hold part of its wallet, and when a warning is due. The steps in
//! `crate::schedule` only apply what these return.

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use rust_decimal::Decimal;

use crate::money::MoneyError;

/// The day a customer born on `birth` celebrates in `year`: the same month and day, and Feb 28
/// for those born on Feb 29 in a year without one. `None` for a year chrono cannot hold.
pub fn birthday_in(birth: NaiveDate, year: i32) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(year, birth.month(), birth.day())
        .or_else(|| NaiveDate::from_ymd_opt(year, 2, 28))
}

/// The year of the birthday whose window (`window_days` either side) holds `today`, if one does.
/// A window crossing New Year belongs to the birthday's year (a Jan 2 birthday seen on Dec 30 is
/// next year's). Nothing for the day of birth itself or before it.
pub fn birthday_due(birth: NaiveDate, today: NaiveDate, window_days: u32) -> Option<i32> {
    let window = i64::from(window_days);
    [today.year() - 1, today.year(), today.year() + 1]
        .into_iter()
        .filter(|&year| year > birth.year())
        .find(|&year| {
            birthday_in(birth, year).is_some_and(|day| (today - day).num_days().abs() <= window)
        })
}

/// Every birth date (month, day) whose birthday is due on `today` with a window of `window_days`,
/// with the birthday's year: what the scheduled step looks customers up by. Feb 29 is listed with
/// Feb 28 in a year without one. A birth in that year or later is not due (see `birthday_due`).
pub fn birth_days_due(today: NaiveDate, window_days: u32) -> Vec<(u32, u32, i32)> {
    let window = i64::from(window_days);
    let mut due = Vec::new();
    for offset in -window..=window {
        let Some(day) = today.checked_add_signed(TimeDelta::days(offset)) else {
            continue;
        };
        due.push((day.month(), day.day(), day.year()));
        if (day.month(), day.day()) == (2, 28)
            && NaiveDate::from_ymd_opt(day.year(), 2, 29).is_none()
        {
            due.push((2, 29, day.year()));
        }
    }
    due
}

/// What burns of each due lot of one wallet, in order: each its remaining, but never more in all
/// than the wallet's balance less what open bills hold (the rest stays until a later run, when a
/// cancelled bill has released it). Amounts are never negative.
pub fn burn(
    remaining: &[Decimal],
    balance: Decimal,
    held: Decimal,
) -> Result<Vec<Decimal>, MoneyError> {
    let mut free = balance
        .checked_sub(held)
        .ok_or(MoneyError::Overflow)?
        .max(Decimal::ZERO);
    let mut burned = Vec::with_capacity(remaining.len());
    for lot in remaining {
        let take = lot.max(&Decimal::ZERO).min(&free).to_owned();
        free = free.checked_sub(take).ok_or(MoneyError::Overflow)?;
        burned.push(take);
    }
    Ok(burned)
}

/// Until when lots are announced at `now`: `warning_days` ahead; `None` when warnings are off (0).
pub fn warning_horizon(
    now: DateTime<Utc>,
    warning_days: u32,
) -> Result<Option<DateTime<Utc>>, MoneyError> {
    if warning_days == 0 {
        return Ok(None);
    }
    now.checked_add_signed(TimeDelta::days(i64::from(warning_days)))
        .map(Some)
        .ok_or(MoneyError::Overflow)
}

/// The earliest birth date accepted.
pub const EARLIEST_BIRTH_DATE: (i32, u32, u32) = (1900, 1, 1);

/// Why a birth date is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BirthDateError {
    #[error("must be a real date written YYYY-MM-DD")]
    NotADate,
    #[error("must not be in the future")]
    InTheFuture,
    #[error("must not be before 1900-01-01")]
    TooEarly,
}

/// A birth date as a person enters it (`YYYY-MM-DD`): a real date, not after `today`, not
/// before 1900.
pub fn parse_birth_date(text: &str, today: NaiveDate) -> Result<NaiveDate, BirthDateError> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    if !shaped {
        return Err(BirthDateError::NotADate);
    }
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").map_err(|_| BirthDateError::NotADate)?;
    let (y, m, d) = EARLIEST_BIRTH_DATE;
    if NaiveDate::from_ymd_opt(y, m, d).is_some_and(|earliest| date < earliest) {
        return Err(BirthDateError::TooEarly);
    }
    if date > today {
        return Err(BirthDateError::InTheFuture);
    }
    Ok(date)
}

/// A date as the warning shows it: `DD.MM.YYYY`.
pub fn warning_date(day: NaiveDate) -> String {
    day.format("%d.%m.%Y").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).expect("a real date")
    }

    #[test]
    fn a_leap_day_birthday_is_kept_on_feb_28_in_other_years() {
        assert_eq!(birthday_in(d(2000, 2, 29), 2027), Some(d(2027, 2, 28)));
        assert_eq!(birthday_in(d(2000, 2, 29), 2028), Some(d(2028, 2, 29)));
        assert_eq!(birthday_due(d(2000, 2, 29), d(2027, 2, 28), 0), Some(2027));
        assert_eq!(birthday_due(d(2000, 2, 29), d(2027, 3, 1), 0), None);
    }

    #[test]
    fn the_window_counts_either_side_and_crossing_new_year_belongs_to_the_birthday() {
        let birth = d(1990, 1, 2);
        assert_eq!(birthday_due(birth, d(2026, 12, 30), 3), Some(2027));
        assert_eq!(birthday_due(birth, d(2026, 12, 29), 3), None);
        assert_eq!(birthday_due(d(1990, 12, 30), d(2027, 1, 2), 3), Some(2026));
        assert_eq!(birthday_due(birth, d(2026, 1, 5), 3), Some(2026));
        assert_eq!(birthday_due(birth, d(2026, 1, 6), 3), None);
        assert_eq!(birthday_due(d(2026, 1, 2), d(2026, 1, 2), 3), None);
    }

    #[test]
    fn a_burn_leaves_what_open_bills_hold() {
        let lots = [Decimal::from(30), Decimal::from(50)];
        assert_eq!(
            burn(&lots, Decimal::from(100), Decimal::from(40)).expect("in range"),
            vec![Decimal::from(30), Decimal::from(30)]
        );
        assert_eq!(
            burn(&lots, Decimal::from(100), Decimal::ZERO).expect("in range"),
            vec![Decimal::from(30), Decimal::from(50)]
        );
        assert_eq!(
            burn(&lots, Decimal::from(10), Decimal::from(20)).expect("in range"),
            vec![Decimal::ZERO, Decimal::ZERO]
        );
    }

    #[test]
    fn warnings_look_ahead_their_days_and_show_the_local_date() {
        let now = DateTime::from_timestamp(0, 0).expect("epoch");
        assert_eq!(warning_horizon(now, 0).expect("in range"), None);
        assert_eq!(
            warning_horizon(now, 7).expect("in range"),
            DateTime::from_timestamp(7 * 86_400, 0)
        );
        assert_eq!(warning_date(d(2027, 3, 8)), "08.03.2027");
    }

    #[test]
    fn a_birth_date_is_a_real_past_date_since_1900() {
        let today = d(2026, 11, 30);
        assert_eq!(parse_birth_date("1990-06-10", today), Ok(d(1990, 6, 10)));
        assert_eq!(parse_birth_date("2026-11-30", today), Ok(today));
        assert_eq!(parse_birth_date("2000-02-29", today), Ok(d(2000, 2, 29)));
        for bad in [
            "2001-02-29",
            "1990-13-01",
            "1990-6-10",
            "10.06.1990",
            "",
            "1990-06-10T00:00",
        ] {
            assert_eq!(
                parse_birth_date(bad, today),
                Err(BirthDateError::NotADate),
                "{bad}"
            );
        }
        assert_eq!(
            parse_birth_date("2026-12-01", today),
            Err(BirthDateError::InTheFuture)
        );
        assert_eq!(
            parse_birth_date("1899-12-31", today),
            Err(BirthDateError::TooEarly)
        );
    }

    proptest! {
        #[test]
        fn the_due_birth_days_are_exactly_the_due_birthdays(
            birth_days in 0i64..40_000,
            ahead in 1i64..30_000,
            window in 0u32..=60,
        ) {
            let birth = d(1900, 1, 1) + TimeDelta::days(birth_days);
            let today = birth + TimeDelta::days(ahead);
            let listed = birth_days_due(today, window)
                .into_iter()
                .find(|&(m, day, year)| (m, day) == (birth.month(), birth.day()) && year > birth.year())
                .map(|(_, _, year)| year);
            prop_assert_eq!(listed, birthday_due(birth, today, window));
        }

        #[test]
        fn a_burn_never_exceeds_a_lot_nor_the_free_balance(
            lots in proptest::collection::vec(0i64..100_000, 0..10),
            balance in 0i64..500_000,
            held in 0i64..500_000,
        ) {
            let remaining: Vec<Decimal> = lots.iter().map(|c| Decimal::new(*c, 2)).collect();
            let (balance, held) = (Decimal::new(balance, 2), Decimal::new(held, 2));
            let burned = burn(&remaining, balance, held).expect("in range");
            let total: Decimal = burned.iter().sum();
            prop_assert!(total <= (balance - held).max(Decimal::ZERO));
            for (b, r) in burned.iter().zip(&remaining) {
                prop_assert!(*b >= Decimal::ZERO && b <= r);
            }
            // All of it burns when nothing holds it back.
            if held.is_zero() && remaining.iter().sum::<Decimal>() <= balance {
                prop_assert_eq!(burned, remaining);
            }
        }
    }
}
