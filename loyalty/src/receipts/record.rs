//! Receipts as operators read them: the listing of the `receipts` table.

use serde::Serialize;

use super::ReceiptStatus;

/// A receipt as recorded.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ReceiptRecord {
    pub org_id: i64,
    pub event_id: String,
    pub receipt_id: Option<String>,
    pub event_type: String,
    pub receipt_type: Option<String>,
    pub status: ReceiptStatus,
    pub reason: Option<String>,
    /// A duplicate's: the event id under which the same receipt (`receipt_id`) took effect.
    pub duplicate_of: Option<String>,
    pub bill_id: Option<i64>,
    pub customer_id: Option<i64>,
    pub invoice_id: Option<String>,
    #[schema(value_type = Option<String>)]
    pub total_amount: Option<rust_decimal::Decimal>,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub received_at: chrono::DateTime<chrono::Utc>,
    /// When the sale happened (the receipt's `dateTime`, when plausible): what its entries are
    /// dated by, however late it was applied.
    pub sold_at: Option<chrono::DateTime<chrono::Utc>>,
    /// When a worker applied it.
    pub processed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The last change: the last attempt of a retrying or dead receipt.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// A receipt's place in the list (latest change first): what a keyset page starts after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptKey {
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub org_id: i64,
    pub event_id: String,
}

impl ReceiptKey {
    pub fn of(record: &ReceiptRecord) -> Self {
        Self {
            updated_at: record.updated_at,
            org_id: record.org_id,
            event_id: record.event_id.clone(),
        }
    }

    /// The opaque `next_cursor` text: microseconds, organization, event id (last, so it may hold
    /// any character).
    pub fn cursor(&self) -> String {
        crate::db::encode_cursor(&format!(
            "{}:{}:{}",
            self.updated_at.timestamp_micros(),
            self.org_id,
            self.event_id
        ))
    }

    /// The key of a [`ReceiptKey::cursor`]; `None` for anything else.
    pub fn parse(cursor: &str) -> Option<Self> {
        let text = crate::db::decode_cursor(cursor)?;
        let mut parts = text.splitn(3, ':');
        let micros: i64 = parts.next()?.parse().ok()?;
        let org_id = parts.next()?.parse().ok()?;
        let event_id = parts.next()?.to_owned();
        Some(Self {
            updated_at: chrono::DateTime::from_timestamp_micros(micros)?,
            org_id,
            event_id,
        })
    }
}

/// The query of one list variant: the filter (organization or all, status) and how the page
/// starts. Each variant is its own static statement, so each gets a plan that walks its index in
/// order (a `status = any(…)` or an `is null or …` in a shared statement would make PostgreSQL
/// sort the whole match instead).
macro_rules! receipts_sql {
    ($filter:literal, $page:literal) => {
        concat!(
            "select org_id, event_id, receipt_id, event_type, receipt_type, status, reason, duplicate_of, bill_id,
                    customer_id, invoice_id, total_amount, attempts, last_error, received_at, sold_at, processed_at,
                    updated_at
             from receipts where ",
            $filter,
            $page
        )
    };
}

/// Offset pages of one organization's (`$1`) receipts, or every organization's (`$1` null).
macro_rules! receipts_offset_sql {
    ($filter:literal) => {
        receipts_sql!(
            $filter,
            " order by updated_at desc, org_id desc, event_id desc limit $3 offset $4"
        )
    };
}

/// Receipts of one organization (or all), with one of `statuses` (or any), latest change first
/// (ties by organization and event id, descending), from `start`.
pub async fn list<'c>(
    db: impl sqlx::PgExecutor<'c>,
    org: Option<i64>,
    statuses: Option<&[&str]>,
    limit: i64,
    start: &crate::db::PageStart<ReceiptKey>,
) -> sqlx::Result<Vec<ReceiptRecord>> {
    use crate::db::PageStart;

    /// Which status filter applies.
    enum Filter {
        Any,
        One,
        Several,
    }
    let filter = match statuses {
        None => Filter::Any,
        Some([_]) => Filter::One,
        Some(_) => Filter::Several,
    };
    let sql: &'static str = match (org.is_some(), filter, start) {
        (true, Filter::Any, PageStart::Offset(_)) => {
            receipts_offset_sql!("org_id = $1 and $2::text[] is null")
        }
        (true, Filter::One, PageStart::Offset(_)) => {
            receipts_offset_sql!("org_id = $1 and status = ($2::text[])[1]")
        }
        (true, Filter::Several, PageStart::Offset(_)) => {
            receipts_offset_sql!("org_id = $1 and status = any($2::text[])")
        }
        (false, Filter::Any, PageStart::Offset(_)) => {
            receipts_offset_sql!("$1::bigint is null and $2::text[] is null")
        }
        (false, Filter::One, PageStart::Offset(_)) => {
            receipts_offset_sql!("$1::bigint is null and status = ($2::text[])[1]")
        }
        (false, Filter::Several, PageStart::Offset(_)) => {
            receipts_offset_sql!("$1::bigint is null and status = any($2::text[])")
        }
        // One organization: its key is (updated_at, event_id); $5, the cursor's organization,
        // only has to be bound.
        (true, Filter::Any, PageStart::After(_)) => receipts_sql!(
            "org_id = $1 and $2::text[] is null and $5::bigint is not null",
            " and (updated_at, event_id) < ($4, $6)
             order by updated_at desc, event_id desc limit $3"
        ),
        (true, Filter::One, PageStart::After(_)) => receipts_sql!(
            "org_id = $1 and status = ($2::text[])[1] and $5::bigint is not null",
            " and (updated_at, event_id) < ($4, $6)
             order by updated_at desc, event_id desc limit $3"
        ),
        (true, Filter::Several, PageStart::After(_)) => receipts_sql!(
            "org_id = $1 and status = any($2::text[]) and $5::bigint is not null",
            " and (updated_at, event_id) < ($4, $6)
             order by updated_at desc, event_id desc limit $3"
        ),
        (false, Filter::Any, PageStart::After(_)) => receipts_sql!(
            "$1::bigint is null and $2::text[] is null",
            " and (updated_at, org_id, event_id) < ($4, $5, $6)
             order by updated_at desc, org_id desc, event_id desc limit $3"
        ),
        (false, Filter::One, PageStart::After(_)) => receipts_sql!(
            "$1::bigint is null and status = ($2::text[])[1]",
            " and (updated_at, org_id, event_id) < ($4, $5, $6)
             order by updated_at desc, org_id desc, event_id desc limit $3"
        ),
        (false, Filter::Several, PageStart::After(_)) => receipts_sql!(
            "$1::bigint is null and status = any($2::text[])",
            " and (updated_at, org_id, event_id) < ($4, $5, $6)
             order by updated_at desc, org_id desc, event_id desc limit $3"
        ),
    };
    let query = sqlx::query_as(sql).bind(org).bind(statuses).bind(limit);
    let query = match start {
        PageStart::Offset(offset) => query.bind(*offset),
        PageStart::After(key) => query
            .bind(key.updated_at)
            .bind(key.org_id)
            .bind(&key.event_id),
    };
    query.fetch_all(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_cursor_round_trips_whatever_the_event_id_holds() {
        let key = ReceiptKey {
            updated_at: chrono::DateTime::from_timestamp_micros(1_764_495_000_123_456)
                .expect("instant"),
            org_id: 42,
            event_id: "ev:1/ä b".to_owned(),
        };
        assert_eq!(ReceiptKey::parse(&key.cursor()), Some(key));
        assert_eq!(ReceiptKey::parse("garbage"), None);
        assert_eq!(ReceiptKey::parse(&crate::db::encode_cursor("1:2")), None);
    }
}
