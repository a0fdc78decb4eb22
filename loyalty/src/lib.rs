//! The loyalty program's domain, shared by `ingest`, `workers` and `notifier`: money and the bonus
//! rules (pure), the PostgreSQL ledger (storage), the legacy export format and the queue contract.

pub mod access;
pub mod bills;
pub mod crypto;
pub mod customers;
pub mod db;
pub mod error;
pub mod init_data;
pub mod ledger;
pub mod legacy;
pub mod locks;
pub mod lots;
pub mod money;
pub mod notifications;
pub mod orgs;
pub mod queue;
pub mod receipts;
pub mod reports;
pub mod rules;
pub mod schedule;
pub mod schema;
pub mod standing;
pub mod status_counts;
pub mod time;

pub use error::{Error, Result};
