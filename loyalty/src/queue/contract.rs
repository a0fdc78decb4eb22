//! What travels on the queues, for both sides: the message types and the properties every message
//! carries. Every publisher builds a message's properties here, so the headers are written once:
//!
//! - message id: the POS event id for a receipt, `outbox-<id>` for a notification (what operators
//!   name when they replay a dead letter);
//! - `x-org-id`: the organization, so even an unreadable message can be recorded beside its peers;
//! - `x-attempt`: 1 at the first delivery, incremented at each retry, reset to 1 by a replay;
//! - `x-trace-id`: the receipt's event id (or the request's key), on the receipt and on every
//!   notification it causes: consumers open their log span from it, so one grep follows a receipt
//!   through the services;
//! - `x-last-error`, `x-origin-queue`: set when a failed message is passed on;
//! - JSON content, persistent delivery.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use serde::{Deserialize, Serialize};

pub use crate::receipts::ReceiptMessage;

/// Headers the services set on messages.
pub mod headers {
    /// 1 for the first delivery, incremented at each retry.
    pub const ATTEMPT: &str = "x-attempt";
    /// The error of the last failed attempt.
    pub const LAST_ERROR: &str = "x-last-error";
    /// The queue a dead message came from, for replay.
    pub const ORIGIN: &str = "x-origin-queue";
    /// The organization the message belongs to.
    pub const ORG: &str = "x-org-id";
    /// The receipt's event id (or the request's key) the message is about, for the logs.
    pub const TRACE: &str = "x-trace-id";
}

/// Every message body is JSON.
pub const CONTENT_TYPE: &str = "application/json";
/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;
/// The longest error kept in `x-last-error` (headers travel with every delivery).
const LAST_ERROR_MAX_CHARS: usize = 1000;

/// The message the relay publishes: only the outbox row's id; the sender reloads the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationMessage {
    pub outbox_id: i64,
}

impl NotificationMessage {
    /// Its AMQP message id.
    pub fn message_id(&self) -> String {
        format!("outbox-{}", self.outbox_id)
    }
}

/// The properties of a receipt message's first delivery: its event id names and traces it.
pub fn receipt_properties(event_id: &str, org_id: i64) -> BasicProperties {
    first_delivery(event_id, org_id, Some(event_id))
}

/// The properties of a notification message's first delivery; `trace` is the receipt's event id
/// (or the request's key) behind it.
pub fn notification_properties(
    message: &NotificationMessage,
    org_id: i64,
    trace: Option<&str>,
) -> BasicProperties {
    first_delivery(&message.message_id(), org_id, trace)
}

fn first_delivery(message_id: &str, org_id: i64, trace: Option<&str>) -> BasicProperties {
    let mut table = header_table(&[
        (headers::ORG, org_id.to_string()),
        (headers::ATTEMPT, "1".to_owned()),
    ]);
    if let Some(trace) = trace {
        set(&mut table, headers::TRACE, trace);
    }
    durable_json(
        BasicProperties::default()
            .with_message_id(ShortString::from(message_id))
            .with_headers(table),
    )
}

/// A message's properties as the broker must keep it: persistent, JSON.
pub fn durable_json(properties: BasicProperties) -> BasicProperties {
    properties
        .with_delivery_mode(PERSISTENT)
        .with_content_type(CONTENT_TYPE.into())
}

/// The properties of a failed message passed on to its `attempt`-th try (waiting `delay` in a
/// retry queue), or to the dead letters (`delay` None): every header it had, and its attempt,
/// error and origin queue.
pub fn passed_on(
    original: &BasicProperties,
    attempt: u32,
    error: &str,
    origin: &str,
    delay: Option<Duration>,
) -> BasicProperties {
    let mut table = original.headers().clone().unwrap_or_default();
    let error: String = error.chars().take(LAST_ERROR_MAX_CHARS).collect();
    set(&mut table, headers::ATTEMPT, &attempt.to_string());
    set(&mut table, headers::LAST_ERROR, &error);
    set(&mut table, headers::ORIGIN, origin);
    let mut properties = keep_id(original, table);
    if let Some(delay) = delay {
        properties = properties.with_expiration(ShortString::from(delay.as_millis().to_string()));
    }
    properties
}

/// The properties of a dead letter replayed for a fresh set of attempts.
pub fn replayed(original: &BasicProperties) -> BasicProperties {
    let mut table = original.headers().clone().unwrap_or_default();
    set(&mut table, headers::ATTEMPT, "1");
    keep_id(original, table)
}

fn keep_id(original: &BasicProperties, table: FieldTable) -> BasicProperties {
    let properties = durable_json(BasicProperties::default().with_headers(table));
    match original.message_id() {
        Some(id) => properties.with_message_id(id.clone()),
        None => properties,
    }
}

fn set(table: &mut FieldTable, key: &str, value: &str) {
    table.insert(
        ShortString::from(key),
        AMQPValue::LongString(LongString::from(value)),
    );
}

/// Message headers as a table.
pub fn header_table(pairs: &[(&str, String)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in pairs {
        set(&mut table, key, value);
    }
    table
}

/// The attempt number a delivery carries (1 when absent).
pub fn attempt_of(properties: &BasicProperties) -> u32 {
    header(properties, headers::ATTEMPT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// The organization a delivery names.
pub fn org_of(properties: &BasicProperties) -> Option<i64> {
    header(properties, headers::ORG).and_then(|o| o.parse().ok())
}

/// What a delivery's log lines are traced by: its trace header, else its message id (a receipt
/// published before the header existed is named by its event id).
pub fn trace_of(properties: &BasicProperties) -> Option<String> {
    header(properties, headers::TRACE).or_else(|| message_id_of(properties))
}

/// A delivery's message id.
pub fn message_id_of(properties: &BasicProperties) -> Option<String> {
    properties.message_id().as_ref().map(|id| id.to_string())
}

/// A header's value as text.
pub fn header(properties: &BasicProperties, key: &str) -> Option<String> {
    let value = properties.headers().as_ref()?.inner().get(key)?;
    Some(match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        other => format!("{other:?}"),
    })
}

/// Why RabbitMQ itself dead-lettered a message (its `x-death` header: the latest reason and the
/// queue it left), for a message no service gave an error to (parked by the delivery limit).
pub fn broker_death(properties: &BasicProperties) -> Option<String> {
    let deaths = properties.headers().as_ref()?.inner().get("x-death")?;
    let AMQPValue::FieldArray(deaths) = deaths else {
        return None;
    };
    let AMQPValue::FieldTable(latest) = deaths.as_slice().first()? else {
        return None;
    };
    let text = |key: &str| match latest.inner().get(key) {
        Some(AMQPValue::LongString(s)) => Some(s.to_string()),
        Some(AMQPValue::ShortString(s)) => Some(s.to_string()),
        _ => None,
    };
    let reason = text("reason")?;
    Some(match text("queue") {
        Some(queue) => format!("dead-lettered by RabbitMQ from {queue}: {reason}"),
        None => format!("dead-lettered by RabbitMQ: {reason}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_is_named_traced_and_counted_by_its_event_id() {
        let p = receipt_properties("ev-1", 7);
        assert_eq!(message_id_of(&p).as_deref(), Some("ev-1"));
        assert_eq!(org_of(&p), Some(7));
        assert_eq!(attempt_of(&p), 1);
        assert_eq!(trace_of(&p).as_deref(), Some("ev-1"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(
            p.content_type().as_ref().map(|c| c.as_str()),
            Some(CONTENT_TYPE)
        );
    }

    #[test]
    fn a_notification_carries_the_receipts_trace() {
        let message = NotificationMessage { outbox_id: 42 };
        let p = notification_properties(&message, 7, Some("ev-1"));
        assert_eq!(message_id_of(&p).as_deref(), Some("outbox-42"));
        assert_eq!(trace_of(&p).as_deref(), Some("ev-1"));
        let untraced = notification_properties(&message, 7, None);
        assert_eq!(trace_of(&untraced).as_deref(), Some("outbox-42"));
    }

    #[test]
    fn a_passed_on_message_keeps_its_headers_and_a_replay_starts_over() {
        let first = receipt_properties("ev-1", 7);
        let long = "x".repeat(5000);
        let retried = passed_on(
            &first,
            3,
            &long,
            "receipts",
            Some(Duration::from_millis(1500)),
        );
        assert_eq!(attempt_of(&retried), 3);
        assert_eq!(org_of(&retried), Some(7));
        assert_eq!(trace_of(&retried).as_deref(), Some("ev-1"));
        assert_eq!(
            header(&retried, headers::LAST_ERROR).map(|e| e.len()),
            Some(LAST_ERROR_MAX_CHARS)
        );
        assert_eq!(
            header(&retried, headers::ORIGIN).as_deref(),
            Some("receipts")
        );
        assert_eq!(
            retried.expiration().as_ref().map(|e| e.as_str()),
            Some("1500")
        );
        let dead = passed_on(&retried, 3, "boom", "receipts", None);
        assert_eq!(dead.expiration(), &None);
        let again = replayed(&dead);
        assert_eq!(attempt_of(&again), 1);
        assert_eq!(message_id_of(&again).as_deref(), Some("ev-1"));
        assert_eq!(header(&again, headers::LAST_ERROR).as_deref(), Some("boom"));
    }
}
