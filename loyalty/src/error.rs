//! The domain's errors: what went wrong in words an API can pass on, plus the storage cause.

/// A failed domain operation. The variants say how a caller should answer; `Db` is never shown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well formed but the state of the ledger refuses it (insufficient balance…).
    /// `code` is a [`ConflictCode`]'s wire text (build it with [`Error::conflict`]; match it with
    /// [`Error::conflict_code`]).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A value is not acceptable; `field` names it as the client sent it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why the ledger's state refuses a request; its text is the `code` clients see in the JSON error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConflictCode {
    /// A transaction must run again because a concurrent one changed what it had read (the same
    /// receipt applied by another delivery, a bill moved by a merge).
    ReceiptRace,
    InsufficientBalance,
    TelegramIdTaken,
    AlreadyReferred,
    AfterFirstPurchase,
    AlreadyMerged,
    NotUnmatched,
    BillNumberTaken,
    /// A bill created under the shop's own id that another bill of the organization has.
    BillIdTaken,
    BillClosed,
    TokenKeysMissing,
    /// The customer's birth date is set already (only an operator may correct it).
    BirthDateSet,
    /// The change would leave the organization without an owner.
    LastOwner,
    /// The Telegram user is the organization's staff already (change their role instead).
    StaffExists,
}

impl ConflictCode {
    pub const ALL: [ConflictCode; 14] = [
        ConflictCode::ReceiptRace,
        ConflictCode::InsufficientBalance,
        ConflictCode::TelegramIdTaken,
        ConflictCode::AlreadyReferred,
        ConflictCode::AfterFirstPurchase,
        ConflictCode::AlreadyMerged,
        ConflictCode::NotUnmatched,
        ConflictCode::BillNumberTaken,
        ConflictCode::BillIdTaken,
        ConflictCode::BillClosed,
        ConflictCode::TokenKeysMissing,
        ConflictCode::BirthDateSet,
        ConflictCode::LastOwner,
        ConflictCode::StaffExists,
    ];

    /// The code as it crosses the API.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConflictCode::ReceiptRace => "receipt_race",
            ConflictCode::InsufficientBalance => "insufficient_balance",
            ConflictCode::TelegramIdTaken => "telegram_id_taken",
            ConflictCode::AlreadyReferred => "already_referred",
            ConflictCode::AfterFirstPurchase => "after_first_purchase",
            ConflictCode::AlreadyMerged => "already_merged",
            ConflictCode::NotUnmatched => "not_unmatched",
            ConflictCode::BillNumberTaken => "bill_number_taken",
            ConflictCode::BillIdTaken => "bill_id_taken",
            ConflictCode::BillClosed => "bill_closed",
            ConflictCode::TokenKeysMissing => "token_keys_missing",
            ConflictCode::BirthDateSet => "birth_date_already_set",
            ConflictCode::LastOwner => "last_owner",
            ConflictCode::StaffExists => "staff_exists",
        }
    }

    /// The variant whose wire text is `code`.
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == code)
    }
}

impl std::fmt::Display for ConflictCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub fn conflict(code: ConflictCode, message: impl Into<String>) -> Self {
        Self::Conflict {
            code: code.as_str(),
            message: message.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Which conflict this is, if it is one.
    pub fn conflict_code(&self) -> Option<ConflictCode> {
        match self {
            Error::Conflict { code, .. } => ConflictCode::from_code(code),
            _ => None,
        }
    }

    /// Whether running the transaction again may succeed: it lost a lock race (see `locks`), or a
    /// concurrent delivery of the same receipt committed first.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(err) => crate::locks::is_transient(err),
            _ => self.conflict_code() == Some(ConflictCode::ReceiptRace),
        }
    }
}

/// The wire text of [`ConflictCode::ReceiptRace`], for the HTTP boundary, which carries codes as
/// text.
pub const RACE: &str = ConflictCode::ReceiptRace.as_str();

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_conflict_code_reads_back_from_its_wire_text() {
        for code in ConflictCode::ALL {
            assert_eq!(ConflictCode::from_code(code.as_str()), Some(code));
        }
        assert_eq!(
            ConflictCode::from_code("receipt_race"),
            Some(ConflictCode::ReceiptRace)
        );
        assert_eq!(ConflictCode::from_code("nope"), None);
    }
}
