//! The domain's errors: what went wrong in words an API can pass on, plus the storage cause.

/// A failed domain operation. The variants say how a caller should answer; `Db` is never shown.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is well formed but the state of the ledger refuses it (insufficient balance…).
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// A value is not acceptable; `field` names it as the client sent it.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            code,
            message: message.into(),
        }
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Whether running the transaction again may succeed: it lost a lock race (see `locks`), or a
    /// concurrent delivery of the same receipt committed first.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Db(err) => crate::locks::is_transient(err),
            Error::Conflict { code, .. } => *code == RACE,
            _ => false,
        }
    }
}

/// The conflict code of a transaction that must run again because a concurrent one changed what it
/// had read (the same receipt applied by another delivery, a bill moved by a merge).
pub const RACE: &str = "receipt_race";

/// The name of the constraint a database error violated, if any.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) => db.constraint(),
        _ => None,
    }
}
