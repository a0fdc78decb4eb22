//! Who may do what in one organization: the shop's staff (Telegram users with a role), the
//! shop's API keys, and the platform's operators. The HTTP layer decides which routes a role
//! reaches; this module names the callers and keeps their records.

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::Result;

/// What a caller bound to one organization may do. Staff are owners or cashiers; a key may also
/// be a reader (a BI export: every read, no change).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum Role {
    /// Everything in the organization: settings, staff, keys, reports, and what a cashier does.
    Owner,
    /// Finds customers, moves their bonuses and debts with a reason, creates and cancels bills.
    Cashier,
    /// Reads everything of the organization and changes nothing (keys only).
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Cashier => "cashier",
            Role::Reader => "reader",
        }
    }
}

/// Who made a change, as ledger entries (`actor`) and the audit trail record it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Actor {
    /// The platform's operators (`ADMIN_TOKEN`).
    Platform,
    /// A staff member, by Telegram user id.
    Staff(i64),
    /// An organization's API key, by id.
    Key(i64),
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Actor::Platform => f.write_str("platform"),
            Actor::Staff(id) => write!(f, "staff:{id}"),
            Actor::Key(id) => write!(f, "key:{id}"),
        }
    }
}

/// The role of Telegram user `telegram_id` in organization `org`, if they are its staff.
pub async fn staff_role(
    conn: &mut PgConnection,
    org: i64,
    telegram_id: i64,
) -> Result<Option<Role>> {
    Ok(
        sqlx::query_scalar("select role from staff where org_id = $1 and telegram_id = $2")
            .bind(org)
            .bind(telegram_id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Records that the customer with Telegram id `telegram_id` let the bot write to them (`/start`,
/// or write access granted in the Mini App): a mark of unreachable is cleared. Returns whether
/// such a customer exists.
pub async fn allow_messages(conn: &mut PgConnection, org: i64, telegram_id: i64) -> Result<bool> {
    let updated = sqlx::query(
        "update customers set messages_allowed_at = now(), telegram_unreachable_at = null, \
         telegram_unreachable_reason = null where org_id = $1 and telegram_id = $2",
    )
    .bind(org)
    .bind(telegram_id)
    .execute(conn)
    .await?;
    Ok(updated.rows_affected() > 0)
}

/// The link that opens the organization's Mini App with `start` (a promo code) in it: the
/// Mini App's own link when its short name is known, else the bot's `/start` link (its menu
/// button opens the app); `None` while the bot's username is unknown.
pub fn share_link(
    bot_username: Option<&str>,
    short_name: Option<&str>,
    start: &str,
) -> Option<String> {
    let bot = bot_username.filter(|b| !b.is_empty())?;
    Some(match short_name.filter(|s| !s.is_empty()) {
        Some(app) => format!("https://t.me/{bot}/{app}?startapp={start}"),
        None => format!("https://t.me/{bot}?start={start}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_are_named_as_the_ledger_keeps_them() {
        assert_eq!(Actor::Platform.to_string(), "platform");
        assert_eq!(Actor::Staff(42).to_string(), "staff:42");
        assert_eq!(Actor::Key(7).to_string(), "key:7");
    }

    #[test]
    fn share_links_prefer_the_mini_app_link() {
        assert_eq!(
            share_link(Some("shop_bot"), Some("bonus"), "PROMO100001").as_deref(),
            Some("https://t.me/shop_bot/bonus?startapp=PROMO100001")
        );
        assert_eq!(
            share_link(Some("shop_bot"), None, "PROMO100001").as_deref(),
            Some("https://t.me/shop_bot?start=PROMO100001")
        );
        assert_eq!(share_link(None, Some("bonus"), "PROMO1"), None);
    }
}
