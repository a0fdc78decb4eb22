//! Instants with the UTC offset they are shown in. The legacy export mixes "+06:00" and "+05:00"
//! on one day, so an entry keeps the offset it was written with; order is always by the instant.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, FixedOffset, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// An organization's IANA time zone (default Asia/Almaty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrgTimeZone(pub Tz);

impl Default for OrgTimeZone {
    fn default() -> Self {
        Self(chrono_tz::Asia::Almaty)
    }
}

impl FromStr for OrgTimeZone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<Tz>()
            .map(Self)
            .map_err(|_| format!("unknown time zone {s:?}; use an IANA name like Asia/Almaty"))
    }
}

impl fmt::Display for OrgTimeZone {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl<'de> Deserialize<'de> for OrgTimeZone {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

impl Serialize for OrgTimeZone {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.name())
    }
}

impl utoipa::PartialSchema for OrgTimeZone {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some("IANA time zone name"))
            .enum_values(Some(chrono_tz::TZ_VARIANTS.iter().map(|zone| zone.name())))
            .examples([serde_json::json!("Asia/Almaty")])
            .into()
    }
}
impl utoipa::ToSchema for OrgTimeZone {}

/// An instant and the offset it is shown with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(pub DateTime<FixedOffset>);

impl Stamp {
    /// `at` as the organization's wall clock shows it.
    pub fn in_zone(at: DateTime<Utc>, zone: OrgTimeZone) -> Self {
        let offset = zone.0.offset_from_utc_datetime(&at.naive_utc()).fix();
        Self(at.with_timezone(&offset))
    }

    pub fn now_in(zone: OrgTimeZone) -> Self {
        Self::in_zone(Utc::now(), zone)
    }

    /// Rebuilds a stored stamp: the instant and the offset it was written with.
    pub fn from_parts(at: DateTime<Utc>, offset_seconds: i32) -> Self {
        let offset = FixedOffset::east_opt(offset_seconds).unwrap_or_else(|| Utc.fix());
        Self(at.with_timezone(&offset))
    }

    pub fn parse_rfc3339(text: &str) -> Result<Self, chrono::ParseError> {
        DateTime::parse_from_rfc3339(text).map(Self)
    }

    pub fn utc(&self) -> DateTime<Utc> {
        self.0.with_timezone(&Utc)
    }

    pub fn offset_seconds(&self) -> i32 {
        self.0.offset().local_minus_utc()
    }

    /// The legacy `date`: RFC 3339 with microseconds and the offset, `2025-12-21T09:33:13.327203+06:00`.
    pub fn rfc3339(&self) -> String {
        self.0.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
    }

    /// The legacy `date_str` and the POS bill date: local wall-clock time, `2025-12-21 09:33:13`.
    pub fn local_str(&self) -> String {
        self.0.format("%Y-%m-%d %H:%M:%S").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn almaty_shows_plus_five_since_2024() {
        let at = DateTime::parse_from_rfc3339("2026-03-21T07:35:18Z")
            .expect("valid")
            .to_utc();
        let stamp = Stamp::in_zone(at, OrgTimeZone::default());
        assert_eq!(stamp.local_str(), "2026-03-21 12:35:18");
        assert_eq!(stamp.offset_seconds(), 5 * 3600);
    }

    #[test]
    fn a_legacy_date_round_trips_with_its_own_offset() {
        let text = "2025-12-21T09:33:13.327203+06:00";
        let stamp = Stamp::parse_rfc3339(text).expect("valid");
        let back = Stamp::from_parts(stamp.utc(), stamp.offset_seconds());
        assert_eq!(back.rfc3339(), text);
        assert_eq!(back.local_str(), "2025-12-21 09:33:13");
    }
}
