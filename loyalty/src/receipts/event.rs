//! What the POS sends and what ingest puts on the queue: the `ReceiptCreated` event as a type
//! (strict where money is concerned, lenient elsewhere), and [`ReceiptMessage`], read once from the
//! queue's bytes into that type, with the event kept as the POS sent it for storage.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};
use crate::money::{MoneyError, bounded, deserialize_decimal};

/// The event type that carries a receipt; other types are acknowledged and recorded as ignored.
pub const RECEIPT_CREATED: &str = "ReceiptCreated";

/// What every POS event has.
#[derive(Debug, Clone, Deserialize)]
pub struct EventHead {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    #[serde(rename = "type", deserialize_with = "non_empty")]
    pub event_type: String,
}

/// An event as it arrives, read in one pass: the envelope, with `data` left as raw JSON until the
/// event's type says what it is.
#[derive(Debug, Deserialize)]
pub struct IncomingEvent<'a> {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    #[serde(rename = "type", deserialize_with = "non_empty")]
    pub event_type: String,
    #[serde(borrow, default)]
    pub data: Option<&'a serde_json::value::RawValue>,
}

/// A `ReceiptCreated` event; unknown fields are kept in the raw payload, not here.
#[derive(Debug, Clone, Deserialize)]
pub struct ReceiptCreated {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    pub data: Receipt,
}

/// What a receipt is. The POS sends more kinds than the program acts on; those are kept as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    /// A sale: it pays its bill.
    Sell,
    /// A refund of a sale, possibly partial.
    Payback,
    /// BUY, BUYBACK, CORRECTION_…: recorded, ignored.
    Other(String),
}

impl ReceiptKind {
    pub fn as_str(&self) -> &str {
        match self {
            ReceiptKind::Sell => "SELL",
            ReceiptKind::Payback => "PAYBACK",
            ReceiptKind::Other(kind) => kind,
        }
    }
}

impl From<String> for ReceiptKind {
    fn from(kind: String) -> Self {
        match kind.as_str() {
            "SELL" => ReceiptKind::Sell,
            "PAYBACK" => ReceiptKind::Payback,
            _ => ReceiptKind::Other(kind),
        }
    }
}

impl std::fmt::Display for ReceiptKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ReceiptKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReceiptKind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        non_empty(d).map(ReceiptKind::from)
    }
}

/// Stored as its text (the `receipt_type` column), as the POS sent it.
impl sqlx::Type<sqlx::Postgres> for ReceiptKind {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl sqlx::postgres::PgHasArrayType for ReceiptKind {
    fn array_type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::postgres::PgHasArrayType>::array_type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for ReceiptKind {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as sqlx::Encode<sqlx::Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for ReceiptKind {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        <String as sqlx::Decode<sqlx::Postgres>>::decode(value).map(ReceiptKind::from)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Receipt {
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: ReceiptKind,
    pub items: Vec<ReceiptItem>,
    /// Positive for a sale; a refund may come positive or negative.
    #[serde(rename = "totalAmount", deserialize_with = "signed_money")]
    pub total_amount: Decimal,
    #[serde(default)]
    pub extras: Extras,
    #[serde(rename = "dateTime", default)]
    pub date_time: Option<String>,
}

/// How far ahead of ours a POS clock may run: a `dateTime` later than this after the receipt
/// reached us is a wrong clock, and the receipt is dated when it arrived.
pub const POS_CLOCK_AHEAD: chrono::TimeDelta = chrono::TimeDelta::minutes(5);
/// The oldest sale a receipt may date itself to, before it arrived (a POS offline for a long
/// time); an older `dateTime` is a wrong clock too.
pub const OLDEST_SALE: chrono::TimeDelta = chrono::TimeDelta::days(366);

impl Receipt {
    /// When the sale happened: the POS's `dateTime` (UTC), when it is readable and plausible
    /// against `received_at` (see [`POS_CLOCK_AHEAD`], [`OLDEST_SALE`]); otherwise `received_at`.
    /// Entries made from the receipt are dated by it, whenever a worker applies them.
    pub fn sold_at(&self, received_at: DateTime<Utc>) -> DateTime<Utc> {
        self.date_time
            .as_deref()
            .and_then(|text| DateTime::parse_from_rfc3339(text.trim()).ok())
            .map(|at| at.with_timezone(&Utc))
            .filter(|at| {
                received_at
                    .checked_add_signed(POS_CLOCK_AHEAD)
                    .is_some_and(|latest| *at <= latest)
                    && received_at
                        .checked_sub_signed(OLDEST_SALE)
                        .is_some_and(|oldest| *at >= oldest)
            })
            .unwrap_or(received_at)
    }

    /// The bill it names, if it names one of ours; why not otherwise.
    pub fn bill_id(&self) -> std::result::Result<i64, String> {
        crate::bills::named_bill_id(self.extras.bill_id.as_deref())
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReceiptItem {
    #[serde(default)]
    pub name: String,
    #[serde(deserialize_with = "quantity")]
    pub quantity: Decimal,
    #[serde(deserialize_with = "signed_money")]
    pub price: Decimal,
    #[serde(rename = "sumPrice", deserialize_with = "signed_money")]
    pub sum_price: Decimal,
}

/// What the terminal app adds; every field optional.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Extras {
    #[serde(rename = "billId", default, deserialize_with = "optional_id")]
    pub bill_id: Option<String>,
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() || s.len() > 200 {
        return Err(serde::de::Error::custom(
            "must be a non-empty string of at most 200 bytes",
        ));
    }
    Ok(s)
}

/// An amount that may be negative (refunds), with at most 2 decimals, within `MAX_AMOUNT` either way.
fn signed_money<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = quantity(d)?;
    if value.normalize().scale() > 2 {
        return Err(serde::de::Error::custom(MoneyError::TooPrecise(2)));
    }
    Ok(value.normalize())
}

/// A number within `MAX_AMOUNT` either way, with at most [`QUANTITY_PLACES`] decimals (a register
/// weighs in grams): nothing computed from it can overflow.
fn quantity<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let value = bounded(deserialize_decimal(d)?).map_err(serde::de::Error::custom)?;
    if value.normalize().scale() > QUANTITY_PLACES {
        return Err(serde::de::Error::custom(MoneyError::TooPrecise(
            QUANTITY_PLACES,
        )));
    }
    Ok(value)
}

/// Most decimals of a receipt line's quantity.
pub const QUANTITY_PLACES: u32 = 6;

/// A bill id sent as a string or a number; blank means none.
fn optional_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(match value {
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// Why an event can never apply, naming the field as the POS sent it (`data.totalAmount`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub field: String,
    pub message: String,
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::invalid(r.field, r.message)
    }
}

/// An event read as far as it goes.
#[derive(Debug, Clone)]
struct ReadEvent {
    head: EventHead,
    /// The receipt of a `ReceiptCreated`; `None` for other event types.
    receipt: Option<Receipt>,
}

/// The message ingest publishes for each event: the event exactly as the POS sent it, and who sent
/// it. It is read once, where it is decoded (`serde_json::from_slice`, [`ReceiptMessage::decode`]
/// or [`ReceiptMessage::new`]): the typed receipt, or why it can never apply, travels with it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(from = "WireMessage")]
pub struct ReceiptMessage {
    pub org_id: i64,
    pub integration_id: i64,
    /// When ingest acknowledged the event to the POS.
    pub received_at: DateTime<Utc>,
    /// The event as the POS sent it: what is stored. Read, not changed: the typed reading below
    /// was taken from it.
    pub event: serde_json::Value,
    #[serde(skip)]
    read: std::result::Result<ReadEvent, Refusal>,
    /// The head of an event that was refused, when it has a readable one (for its failure row).
    #[serde(skip)]
    refused_head: Option<EventHead>,
}

/// The message's JSON shape.
#[derive(Deserialize)]
struct WireMessage {
    org_id: i64,
    integration_id: i64,
    received_at: DateTime<Utc>,
    event: serde_json::Value,
}

impl From<WireMessage> for ReceiptMessage {
    fn from(w: WireMessage) -> Self {
        ReceiptMessage::new(w.org_id, w.integration_id, w.received_at, w.event)
    }
}

impl ReceiptMessage {
    /// The message for `event`, read once.
    pub fn new(
        org_id: i64,
        integration_id: i64,
        received_at: DateTime<Utc>,
        event: serde_json::Value,
    ) -> Self {
        let head: std::result::Result<EventHead, Refusal> = read_event(&event);
        let refused_head = head.as_ref().ok().cloned();
        let read = read(&event, head);
        ReceiptMessage {
            org_id,
            integration_id,
            received_at,
            refused_head: if read.is_err() { refused_head } else { None },
            read,
            event,
        }
    }

    /// Decodes a message as the queue delivers it.
    pub fn decode(body: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(body)
    }

    /// The message's JSON, built around the event's bytes as the POS sent them (already checked
    /// to be JSON), so the hot path does not parse and serialize the event once more.
    pub fn encode_raw(
        org_id: i64,
        integration_id: i64,
        received_at: DateTime<Utc>,
        event: &[u8],
    ) -> Vec<u8> {
        let head = format!(
            r#"{{"org_id":{org_id},"integration_id":{integration_id},"received_at":"{}","event":"#,
            received_at.to_rfc3339()
        );
        let mut out = Vec::with_capacity(head.len() + event.len() + 1);
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(event);
        out.push(b'}');
        out
    }

    /// The event's id and type, when they are readable.
    pub fn head(&self) -> Option<&EventHead> {
        match &self.read {
            Ok(read) => Some(&read.head),
            Err(_) => self.refused_head.as_ref(),
        }
    }

    /// The event's id for logs: as read, or as it stands in the event, or empty.
    pub fn event_id(&self) -> &str {
        match self.head() {
            Some(head) => &head.id,
            None => self
                .event
                .get("id")
                .and_then(serde_json::Value::as_str)
                .unwrap_or(""),
        }
    }

    /// The event's head and its receipt (`None`: not a receipt event), or why it can never apply.
    pub fn read(&self) -> Result<(&EventHead, Option<&Receipt>)> {
        match &self.read {
            Ok(read) => Ok((&read.head, read.receipt.as_ref())),
            Err(refusal) => Err(refusal.clone().into()),
        }
    }
}

/// Reads the event behind its head: everything that can be refused without the database is
/// refused here.
fn read(
    event: &serde_json::Value,
    head: std::result::Result<EventHead, Refusal>,
) -> std::result::Result<ReadEvent, Refusal> {
    if has_nul(event) {
        return Err(Refusal {
            field: "event".into(),
            message: "a text holds a NUL character (\\u0000), which cannot be stored".into(),
        });
    }
    let head = head?;
    let receipt = if head.event_type == RECEIPT_CREATED {
        let created: ReceiptCreated = read_event(event)?;
        if created.data.kind == ReceiptKind::Sell && created.data.total_amount <= Decimal::ZERO {
            return Err(Refusal {
                field: "data.totalAmount".into(),
                message: "a sale must have a positive total".into(),
            });
        }
        Some(created.data)
    } else {
        None
    };
    Ok(ReadEvent { head, receipt })
}

/// Reads a stored or queued event as `T`; a refusal names the field (`data.totalAmount`).
pub(crate) fn read_event<T: serde::de::DeserializeOwned>(
    event: &serde_json::Value,
) -> std::result::Result<T, Refusal> {
    serde_path_to_error::deserialize(event).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "event".to_owned()
        } else {
            path
        };
        Refusal {
            field,
            message: e.into_inner().to_string(),
        }
    })
}

/// Whether any text of `value`, key or string, holds a NUL, which PostgreSQL refuses in text and
/// jsonb: such a receipt can never be stored, so it is refused instead of retried.
fn has_nul(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(items) => items.iter().any(has_nul),
        serde_json::Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-11T12:01:32.123456Z")
            .expect("date")
            .to_utc()
    }

    fn decode(event: &str) -> ReceiptMessage {
        ReceiptMessage::decode(&ReceiptMessage::encode_raw(7, 9, at(), event.as_bytes()))
            .expect("decodes")
    }

    #[test]
    fn a_message_built_around_the_raw_event_decodes_to_the_same_event() {
        let event = br#"{"id": "e1", "type": "ReceiptCreated", "data": {"totalAmount": 15.9}}"#;
        let message: ReceiptMessage =
            serde_json::from_slice(&ReceiptMessage::encode_raw(7, 9, at(), event))
                .expect("decodes");
        assert_eq!(
            (message.org_id, message.integration_id, message.received_at),
            (7, 9, at())
        );
        assert_eq!(
            message.event,
            serde_json::from_slice::<serde_json::Value>(event).expect("json")
        );
    }

    #[test]
    fn a_sale_is_dated_by_its_receipt_unless_the_pos_clock_is_implausible() {
        let receipt = |date_time: Option<&str>| Receipt {
            id: "r".into(),
            kind: ReceiptKind::Sell,
            items: Vec::new(),
            total_amount: Decimal::ONE,
            extras: Extras::default(),
            date_time: date_time.map(str::to_owned),
        };
        let received = at();
        let day_before = received - chrono::TimeDelta::days(1);
        assert_eq!(
            receipt(Some(&day_before.to_rfc3339())).sold_at(received),
            day_before
        );
        assert_eq!(
            receipt(Some("2026-03-11T12:02:18.000Z")).sold_at(received),
            DateTime::parse_from_rfc3339("2026-03-11T12:02:18Z")
                .expect("date")
                .to_utc(),
            "a minute ahead is a clock's drift"
        );
        for wrong in [
            Some("2026-03-11T13:01:32Z"),
            Some("2024-01-01T00:00:00Z"),
            Some("yesterday"),
            Some(""),
            None,
        ] {
            assert_eq!(receipt(wrong).sold_at(received), received, "{wrong:?}");
        }
    }

    #[test]
    fn a_decoded_message_carries_its_typed_receipt() {
        let message = decode(
            r#"{"id": "e1", "type": "ReceiptCreated", "data": {"id": "r1", "type": "PAYBACK",
                "items": [], "totalAmount": -15.90, "extras": {"billId": 42}}}"#,
        );
        let (head, receipt) = message.read().expect("readable");
        let receipt = receipt.expect("a receipt");
        assert_eq!((head.id.as_str(), message.event_id()), ("e1", "e1"));
        assert_eq!(receipt.kind, ReceiptKind::Payback);
        assert_eq!(receipt.total_amount, Decimal::new(-159, 1));
        assert_eq!(receipt.bill_id(), Ok(42));
    }

    #[test]
    fn other_events_and_unknown_kinds_are_read_not_refused() {
        let message = decode(r#"{"id": "e2", "type": "ShiftOpened"}"#);
        assert!(matches!(message.read(), Ok((_, None))));
        let message = decode(
            r#"{"id": "e3", "type": "ReceiptCreated", "data": {"id": "r3", "type": "BUYBACK",
                "items": [], "totalAmount": 5}}"#,
        );
        let (_, receipt) = message.read().expect("readable");
        assert_eq!(
            receipt.map(|r| r.kind.clone()),
            Some(ReceiptKind::Other("BUYBACK".into()))
        );
    }

    #[test]
    fn a_refused_event_names_the_field_and_keeps_its_head_for_the_failure_row() {
        let refused = |event: &str| match decode(event).read() {
            Err(Error::Invalid { field, message }) => (field, message),
            other => panic!("not refused: {other:?}"),
        };
        let (field, _) = refused(
            r#"{"id": "e4", "type": "ReceiptCreated", "data": {"id": "r4", "type": "SELL",
                "items": [], "totalAmount": 1.001}}"#,
        );
        assert_eq!(field, "data.totalAmount");
        let (field, message) = refused(
            r#"{"id": "e5", "type": "ReceiptCreated", "data": {"id": "r5", "type": "SELL",
                "items": [], "totalAmount": 0}}"#,
        );
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("data.totalAmount", "a sale must have a positive total")
        );
        let (field, message) = refused(r#"{"id": "e\u0000", "type": "X"}"#);
        assert_eq!(field, "event");
        assert!(message.contains("NUL"));
        let (field, _) = refused(r#"{"type": "X"}"#);
        assert_eq!(field, "event");
        let message =
            decode(r#"{"id": "e6", "type": "ReceiptCreated", "data": {"totalAmount": "x"}}"#);
        assert_eq!(
            message.head().map(|h| h.event_type.as_str()),
            Some(RECEIPT_CREATED)
        );
        assert_eq!(message.event_id(), "e6");
    }
}
