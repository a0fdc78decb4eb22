//! Money and percentages as types that cannot hold invalid values.
//!
//! Every amount is a `Decimal` rounded to 0.01 half away from zero; raw JSON numbers and strings stop
//! here. JSON numbers are read by their own text (serde_json's `arbitrary_precision`), never through
//! a float, so `10.0000000000000001` is refused for its 16 decimals instead of read as 10.

use std::fmt;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// The one rounding rule of the ledger: to 0.01, half away from zero.
pub fn round_money(value: Decimal) -> Decimal {
    value.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Why a text or number is not an acceptable amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("must be a decimal number like 1234.56")]
    NotANumber,
    #[error("must be greater than zero")]
    NotPositive,
    #[error("must not be negative")]
    Negative,
    #[error("must have at most {0} decimal places")]
    TooPrecise(u32),
    #[error("must be at most {0}")]
    TooLarge(Decimal),
    #[error("is too large to compute with")]
    Overflow,
}

/// Parses the plain decimal notation (`-12.5`, `1000`), refusing exponents, separators and blanks.
pub fn parse_decimal(text: &str) -> Result<Decimal, MoneyError> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let mut parts = digits.splitn(2, '.');
    let int = parts.next().unwrap_or_default();
    let frac = parts.next();
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !plain(int) || frac.is_some_and(|f| !plain(f)) {
        return Err(MoneyError::NotANumber);
    }
    Decimal::from_str(text).map_err(|_| MoneyError::NotANumber)
}

/// Largest amount accepted anywhere (a trillion), also for totals and quantities: far above any
/// real bill, far below `Decimal`'s range, so a percentage of it can never overflow.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// Refuses an amount, of either sign, beyond `MAX_AMOUNT`.
pub fn bounded(value: Decimal) -> Result<Decimal, MoneyError> {
    if value.abs() > MAX_AMOUNT {
        return Err(MoneyError::TooLarge(MAX_AMOUNT));
    }
    Ok(value)
}

/// The text of a JSON number: plain decimal notation, or with an exponent (`1e3`), which JSON allows
/// for numbers (not for strings).
fn parse_number_text(text: &str) -> Result<Decimal, MoneyError> {
    if text.contains(['e', 'E']) {
        return Decimal::from_scientific(text).map_err(|_| MoneyError::NotANumber);
    }
    parse_decimal(text)
}

/// The key under which serde_json's `arbitrary_precision` hands a number over as a one-entry map.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

fn checked_amount(value: Decimal, allow_zero: bool) -> Result<Decimal, MoneyError> {
    if value.is_sign_negative() && !value.is_zero() {
        return Err(MoneyError::Negative);
    }
    if value.is_zero() && !allow_zero {
        return Err(MoneyError::NotPositive);
    }
    if value.normalize().scale() > 2 {
        return Err(MoneyError::TooPrecise(2));
    }
    if value > MAX_AMOUNT {
        return Err(MoneyError::TooLarge(MAX_AMOUNT));
    }
    Ok(value.normalize())
}

/// Reads a decimal from a JSON string or number without passing through arithmetic on floats.
struct DecimalVisitor;

impl<'de> de::Visitor<'de> for DecimalVisitor {
    type Value = Decimal;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a decimal number, as a JSON number or string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Decimal, E> {
        parse_decimal(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Decimal, E> {
        Ok(Decimal::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Decimal, E> {
        Decimal::try_from_i128_with_scale(v, 0).map_err(|_| E::custom(MoneyError::Overflow))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Decimal, E> {
        i128::try_from(v)
            .map_err(|_| E::custom(MoneyError::Overflow))
            .and_then(|v| self.visit_i128(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Decimal, E> {
        // serde_json hands a float over only when its shortest text is exactly what the sender wrote.
        if !v.is_finite() {
            return Err(E::custom(MoneyError::NotANumber));
        }
        // Written back as serde_json writes it, so `384.0` keeps its decimal as the sender wrote it
        // (`f64`'s own text would be `384`).
        let text = serde_json::Number::from_f64(v)
            .map(|n| n.to_string())
            .ok_or_else(|| E::custom(MoneyError::NotANumber))?;
        parse_number_text(&text).map_err(E::custom)
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Decimal, A::Error> {
        // Any other number comes as its text, under serde_json's private key.
        if map.next_key::<String>()?.as_deref() != Some(NUMBER_TOKEN) {
            return Err(de::Error::invalid_type(de::Unexpected::Map, &self));
        }
        let text: String = map.next_value()?;
        parse_number_text(&text).map_err(de::Error::custom)
    }
}

/// Deserializes any decimal (string or number) exactly.
pub fn deserialize_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    d.deserialize_any(DecimalVisitor)
}

/// Money crosses the API as a JSON number written with its own digits, the way the documents write
/// it (`17500`, `1107.36`, `15.9`): never through a float, so no `.0` is added to a whole number. A
/// value keeps the decimals it was read with (the legacy export's `384.0` stays `384.0`); values
/// computed here are [`exact`], without trailing zeros.
pub fn serialize_decimal<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
    rust_decimal::serde::arbitrary_precision::serialize(value, s)
}

/// The same number as a JSON value, for documents built as values.
pub fn decimal_json(value: Decimal) -> serde_json::Value {
    // The text of a `Decimal` is always a valid JSON number.
    value
        .to_string()
        .parse::<serde_json::Number>()
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// A computed value without trailing zeros (`7950.0` → `7950`), as the documents write numbers.
pub fn exact(value: Decimal) -> Decimal {
    value.normalize()
}

/// The largest amount again, as the whole number the API's schema states.
const MAX_AMOUNT_UNITS: u64 = 1_000_000_000_000;

/// Where a decimal's range starts.
#[derive(Debug, Clone, Copy)]
pub enum Lowest {
    /// Above zero (amounts, quantities).
    AboveZero,
    /// Zero (balances, percentages).
    Zero,
    /// Minus the largest value (receipts' amounts, which refunds may send negative).
    MinusMax,
}

/// What the API accepts for a decimal, stated in its JSON Schema: a JSON number within the bounds on
/// a grid of `places` decimals, or a string in the plain notation [`parse_decimal`] reads.
#[derive(Debug, Clone, Copy)]
pub struct DecimalSchema {
    pub lowest: Lowest,
    /// The largest value, a whole number.
    pub max: u64,
    /// At most this many decimals; any number when `None`.
    pub places: Option<u32>,
}

impl DecimalSchema {
    /// Money as the API takes it: up to a trillion, 2 decimals.
    pub const fn money(lowest: Lowest) -> Self {
        Self {
            lowest,
            max: MAX_AMOUNT_UNITS,
            places: Some(2),
        }
    }

    pub fn schema(&self, doc: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
        let max = self.max.to_string();
        let number = ObjectBuilder::new()
            .schema_type(Type::Number)
            .maximum(Some(max.parse::<f64>().unwrap_or(f64::MAX)));
        let number = match self.lowest {
            Lowest::AboveZero => number.exclusive_minimum(Some(0)),
            Lowest::Zero => number.minimum(Some(0)),
            Lowest::MinusMax => number.minimum(Some(-max.parse::<f64>().unwrap_or(f64::MAX))),
        };
        let number = match self.places {
            Some(places) => {
                number.multiple_of(Some(10f64.powi(-i32::try_from(places).unwrap_or(0))))
            }
            None => number,
        };
        // Below the maximum: fewer digits than it has, then decimals; at the maximum, only zeros.
        // Without a limit on decimals, 16 keep a string within what a `Decimal` holds.
        let below = max.len() - 1;
        let places = self.places.unwrap_or(16);
        let digits =
            format!("0*([0-9]{{1,{below}}}(\\.[0-9]{{1,{places}}})?|{max}(\\.0{{1,{places}}})?)");
        let pattern = match self.lowest {
            Lowest::AboveZero => format!("^(?!0*(\\.0*)?$){digits}$"),
            // "-0" is zero, not negative.
            Lowest::Zero => format!("^({digits}|-0+(\\.0{{1,{places}}})?)$"),
            Lowest::MinusMax => format!("^-?{digits}$"),
        };
        let text = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern));
        AnyOfBuilder::new()
            .item(number)
            .item(text)
            .description(Some(doc))
            .examples([serde_json::json!(1234.56)])
            .into()
    }
}

macro_rules! decimal_newtype {
    ($name:ident, $check:expr, $schema:expr, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(Decimal);

        impl $name {
            pub fn new(value: Decimal) -> Result<Self, MoneyError> {
                let check: fn(Decimal) -> Result<Decimal, MoneyError> = $check;
                check(value).map(Self)
            }
            pub fn get(self) -> Decimal {
                self.0
            }
        }

        impl FromStr for $name {
            type Err = MoneyError;
            fn from_str(s: &str) -> Result<Self, MoneyError> {
                Self::new(parse_decimal(s)?)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                Self::new(deserialize_decimal(d)?).map_err(de::Error::custom)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                serialize_decimal(&self.0, s)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $schema.schema($doc)
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

decimal_newtype!(
    Amount,
    |v| checked_amount(v, false),
    DecimalSchema::money(Lowest::AboveZero),
    "An amount of money moved by an operation: greater than zero, at most 2 decimal places (a JSON number or string)."
);
decimal_newtype!(
    Money,
    |v| checked_amount(v, true),
    DecimalSchema::money(Lowest::Zero),
    "A non-negative amount of money with at most 2 decimal places (a JSON number or string)."
);
decimal_newtype!(
    Percent,
    |v| {
        if v.is_sign_negative() && !v.is_zero() {
            Err(MoneyError::Negative)
        } else if v.normalize().scale() > 4 {
            Err(MoneyError::TooPrecise(4))
        } else if v > Decimal::ONE_HUNDRED {
            Err(MoneyError::TooLarge(Decimal::ONE_HUNDRED))
        } else {
            Ok(v.normalize())
        }
    },
    DecimalSchema {
        lowest: Lowest::Zero,
        max: 100,
        places: Some(4)
    },
    "A percentage between 0 and 100 with at most 4 decimal places."
);

decimal_newtype!(
    Quantity,
    |v| {
        if v <= Decimal::ZERO {
            Err(MoneyError::NotPositive)
        } else if v.normalize().scale() > 3 {
            Err(MoneyError::TooPrecise(3))
        } else if v > MAX_AMOUNT {
            Err(MoneyError::TooLarge(MAX_AMOUNT))
        } else {
            Ok(v.normalize())
        }
    },
    DecimalSchema {
        lowest: Lowest::AboveZero,
        max: MAX_AMOUNT_UNITS,
        places: Some(3)
    },
    "A quantity of goods: greater than zero, at most 3 decimal places (grams, litres)."
);

impl Money {
    pub const ZERO: Self = Self(Decimal::ZERO);
}

impl Percent {
    pub const ZERO: Self = Self(Decimal::ZERO);
    pub const HUNDRED: Self = Self(Decimal::ONE_HUNDRED);

    /// `percent` % of `base`, rounded once by the ledger's rule; `Overflow` beyond `Decimal`'s range.
    pub fn of(self, base: Decimal) -> Result<Decimal, MoneyError> {
        base.checked_mul(self.0)
            .and_then(|v| v.checked_div(Decimal::ONE_HUNDRED))
            .map(|v| exact(round_money(v)))
            .ok_or(MoneyError::Overflow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal literal")
    }

    #[test]
    fn rounding_is_half_away_from_zero() {
        assert_eq!(round_money(d("0.005")), d("0.01"));
        assert_eq!(round_money(d("0.015")), d("0.02"));
        assert_eq!(round_money(d("2.345")), d("2.35"));
        assert_eq!(round_money(d("-2.345")), d("-2.35"));
        assert_eq!(round_money(d("2.344")), d("2.34"));
    }

    #[test]
    fn amounts_accept_strings_and_numbers_exactly() {
        let a: Amount = serde_json::from_str("1107.36").expect("number");
        assert_eq!(a.get(), d("1107.36"));
        let a: Amount = serde_json::from_str("\"15.9\"").expect("string");
        assert_eq!(a.get(), d("15.9"));
        let a: Amount = serde_json::from_str("17500").expect("integer");
        assert_eq!(a.get(), d("17500"));
    }

    #[test]
    fn amounts_refuse_what_is_not_money() {
        for bad in [
            "0", "-1", "\"-0.5\"", "1.001", "\"abc\"", "\"1e5\"", "\"\"", "\" 1\"", "null", "true",
        ] {
            assert!(
                serde_json::from_str::<Amount>(bad).is_err(),
                "{bad} accepted"
            );
        }
        assert_eq!(Amount::from_str("0"), Err(MoneyError::NotPositive));
        assert_eq!(Amount::from_str("1.234"), Err(MoneyError::TooPrecise(2)));
        assert_eq!(Money::from_str("0").map(Money::get), Ok(Decimal::ZERO));
    }

    #[test]
    fn the_documented_maximum_is_the_enforced_one() {
        assert_eq!(Decimal::from(MAX_AMOUNT_UNITS), MAX_AMOUNT);
    }

    #[test]
    fn money_serializes_as_a_json_number() {
        let m = Money::from_str("222.36").expect("valid");
        assert_eq!(serde_json::to_string(&m).expect("serializes"), "222.36");
    }

    #[test]
    fn numbers_are_written_the_way_the_documents_write_them() {
        let text = |v: Decimal| serde_json::to_string(&decimal_json(v)).expect("serializes");
        // Computed values lose their trailing zeros; no float ever adds a `.0`.
        assert_eq!(text(exact(d("7950.0") + d("9550.0"))), "17500");
        assert_eq!(text(exact(d("1107.360"))), "1107.36");
        assert_eq!(text(exact(d("15.90"))), "15.9");
        assert_eq!(text(Decimal::ZERO), "0");
        // A value read from a document keeps its text.
        let read: Decimal =
            deserialize_decimal(&mut serde_json::Deserializer::from_str("384.0")).expect("number");
        assert_eq!(text(read), "384.0");
        let percent = Percent::from_str("2.0").expect("valid");
        assert_eq!(serde_json::to_string(&percent).expect("serializes"), "2");
        assert_eq!(percent.of(d("17500")).map(text), Ok("350".to_owned()));
    }

    #[test]
    fn percent_of_base_matches_the_legacy_figures() {
        let two = Percent::from_str("2").expect("valid");
        let five = Percent::from_str("5").expect("valid");
        assert_eq!(two.of(d("11118")), Ok(d("222.36")));
        assert_eq!(five.of(d("1000")), Ok(d("50")));
        assert_eq!(two.of(d("0.25")), Ok(d("0.01")));
        assert!(Percent::from_str("100.5").is_err());
    }

    #[test]
    fn a_percentage_of_an_amount_beyond_range_is_an_error_not_a_panic() {
        let two = Percent::from_str("2").expect("valid");
        assert_eq!(
            two.of(d("70000000000000000000000000000")),
            Err(MoneyError::Overflow)
        );
    }

    #[test]
    fn json_numbers_are_read_by_their_own_text_not_through_a_float() {
        // Both round to a whole number as floats; exactly, they have too many decimals.
        for text in ["99.99999999999999999", "10.0000000000000001"] {
            assert!(
                serde_json::from_str::<Amount>(text).is_err(),
                "{text} accepted"
            );
            let value: serde_json::Value = serde_json::from_str(text).expect("json");
            assert!(
                serde_json::from_value::<Amount>(value).is_err(),
                "{text} accepted from a Value"
            );
        }
        let exact: Decimal = deserialize_decimal(&mut serde_json::Deserializer::from_str(
            "12345678901234567.89",
        ))
        .expect("number");
        assert_eq!(exact, d("12345678901234567.89"));
        let a: Money = serde_json::from_str("1e3").expect("exponent");
        assert_eq!(a.get(), d("1000"));
        let a: Amount = serde_json::from_str("0.1").expect("short float");
        assert_eq!(a.get(), d("0.1"));
    }

    #[test]
    fn amounts_beyond_the_cap_or_beyond_decimal_are_refused_not_a_panic() {
        assert_eq!(
            Amount::from_str("1000000000000.01"),
            Err(MoneyError::TooLarge(MAX_AMOUNT))
        );
        for text in [
            "70000000000000000000000000000",
            "7e28",
            "1e400",
            "-1e400",
            "123456789012345678901234567890123",
        ] {
            assert!(
                serde_json::from_str::<Amount>(text).is_err(),
                "{text} accepted"
            );
        }
        assert_eq!(
            bounded(d("-1000000000001")),
            Err(MoneyError::TooLarge(MAX_AMOUNT))
        );
        assert_eq!(bounded(d("-5")), Ok(d("-5")));
    }
}
