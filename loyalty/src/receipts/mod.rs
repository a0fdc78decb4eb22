//! Receipts: applying the POS's receipts to the ledger exactly once, in one transaction.
//!
//! - `event`: the POS wire types and the queue's [`ReceiptMessage`], read once;
//! - `batch`: applying many receipts in one transaction ([`apply_batch`]); `locking` locks what
//!   they move first;
//! - `sale` and `refund`: what a `SELL` and a `PAYBACK` do (amounts decided by `crate::rules`);
//! - `attach`: an operator applying an unmatched sale to a customer;
//! - `failure`: recording receipts that failed, for operators;
//! - `record`: the receipts as operators list them.

mod attach;
mod batch;
mod event;
mod failure;
mod locking;
mod record;
mod refund;
mod sale;

pub use attach::{Attached, attach};
pub use batch::apply_batch;
pub use event::{
    EventHead, Extras, IncomingEvent, QUANTITY_PLACES, RECEIPT_CREATED, Receipt, ReceiptCreated,
    ReceiptItem, ReceiptKind, ReceiptMessage, Refusal,
};
pub use failure::{record_failure, record_unreadable};
pub use record::{ReceiptKey, ReceiptRecord, list};

use serde::{Deserialize, Serialize};

use crate::error::{ConflictCode, Error};

/// Where a receipt's record stands (the `status` column; its CHECK constraint lists the same).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum ReceiptStatus {
    /// Claimed by a transaction applying it.
    Processing,
    Processed,
    Duplicate,
    Unmatched,
    Ignored,
    Retrying,
    Dead,
}

impl ReceiptStatus {
    /// Every status, in the order of the migrations' CHECK constraint (and the dashboard's).
    pub const ALL: [ReceiptStatus; 7] = [
        ReceiptStatus::Processing,
        ReceiptStatus::Processed,
        ReceiptStatus::Duplicate,
        ReceiptStatus::Unmatched,
        ReceiptStatus::Ignored,
        ReceiptStatus::Retrying,
        ReceiptStatus::Dead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ReceiptStatus::Processing => "processing",
            ReceiptStatus::Processed => "processed",
            ReceiptStatus::Duplicate => "duplicate",
            ReceiptStatus::Unmatched => "unmatched",
            ReceiptStatus::Ignored => "ignored",
            ReceiptStatus::Retrying => "retrying",
            ReceiptStatus::Dead => "dead",
        }
    }

    /// The texts of [`ReceiptStatus::ALL`], in its order.
    pub const NAMES: [&'static str; 7] = {
        let mut names = [""; 7];
        let mut i = 0;
        while i < names.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };
}

impl std::fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What applying a receipt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Processed {
        customer_id: i64,
        invoice_id: String,
    },
    /// The event, or the receipt under another event id, was applied before.
    Duplicate,
    /// No bill to apply it to; kept for operators.
    Unmatched { reason: String },
    /// Not a receipt that moves bonuses (another event type, BUY, corrections…).
    Ignored,
}

impl Outcome {
    /// The receipt's status after it.
    pub fn receipt_status(&self) -> ReceiptStatus {
        match self {
            Outcome::Processed { .. } => ReceiptStatus::Processed,
            Outcome::Duplicate => ReceiptStatus::Duplicate,
            Outcome::Unmatched { .. } => ReceiptStatus::Unmatched,
            Outcome::Ignored => ReceiptStatus::Ignored,
        }
    }

    /// The text of [`Outcome::receipt_status`], for logs and metrics labels.
    pub fn status(&self) -> &'static str {
        self.receipt_status().as_str()
    }
}

fn race() -> Error {
    Error::conflict(
        ConflictCode::ReceiptRace,
        "the same receipt was applied concurrently",
    )
}

/// A total no rule can compute with: the receipt's own fault, so it is refused, not retried.
fn out_of_range(e: crate::money::MoneyError) -> Error {
    Error::invalid("data.totalAmount", e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipt_statuses_are_the_migrations_check_constraint() {
        let migration = include_str!("../../../migrations/20261124000004_receipt_claims.sql");
        let listed = ReceiptStatus::NAMES.map(|s| format!("'{s}'")).join(", ");
        assert!(
            migration.contains(&format!("check (status in ({listed}))")),
            "{listed}"
        );
    }
}
