//! Who may do what in one organization: the shop's staff (Telegram users with a role), the
//! shop's API keys, and the platform's operators. The HTTP layer decides which routes a role
//! reaches; this module names the callers and keeps their records.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::Result;
use crate::error::{ConflictCode, Error};

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

/// The start of every API key's secret: a caller's `Bearer lk_…` is a key, anything else the
/// platform's token.
pub const KEY_PREFIX: &str = "lk_";

/// Longest staff or key name.
const MAX_NAME: usize = 200;

/// A member of an organization's staff, as its owners see them.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct StaffMember {
    pub telegram_id: i64,
    pub role: Role,
    /// As the one who added them named them; empty when they gave no name.
    pub name: String,
    /// Who added them (`platform`, `staff:<id>`, `key:<id>`).
    pub added_by: String,
    pub added_at: DateTime<Utc>,
}

/// The columns of [`StaffMember`], spelled once for the queries that return one.
macro_rules! staff_columns {
    () => {
        "telegram_id, role, name, added_by, added_at"
    };
}

/// Staff roles are owner and cashier; a reader is a key's role only.
fn staff_role_checked(role: Role) -> Result<Role> {
    match role {
        Role::Owner | Role::Cashier => Ok(role),
        Role::Reader => Err(Error::invalid(
            "role",
            "staff are owners or cashiers; reader is a role of API keys",
        )),
    }
}

fn name_checked(field: &str, name: &str, required: bool) -> Result<String> {
    let name = name.trim();
    if required && name.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if name.chars().count() > MAX_NAME {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_NAME} characters"),
        ));
    }
    Ok(name.to_owned())
}

/// The organization's staff, owners first, then by Telegram id.
pub async fn list_staff(conn: &mut PgConnection, org: i64) -> Result<Vec<StaffMember>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        staff_columns!(),
        " from staff where org_id = $1 \
         order by role <> 'owner', telegram_id"
    ))
    .bind(org)
    .fetch_all(conn)
    .await?)
}

/// Makes Telegram user `telegram_id` the organization's staff with `role`; a 409
/// (`staff_exists`) when they are already (a role changes with [`set_staff_role`]).
pub async fn add_staff(
    conn: &mut PgConnection,
    org: i64,
    telegram_id: i64,
    role: Role,
    name: &str,
    added_by: Actor,
) -> Result<StaffMember> {
    let role = staff_role_checked(role)?;
    if telegram_id <= 0 {
        return Err(Error::invalid("telegram_id", "must be a Telegram user id"));
    }
    let name = name_checked("name", name, false)?;
    let added: Option<StaffMember> = sqlx::query_as(concat!(
        "insert into staff (org_id, telegram_id, role, name, added_by) values ($1, $2, $3, $4, $5) \
         on conflict (org_id, telegram_id) do nothing returning ",
        staff_columns!()
    ))
    .bind(org)
    .bind(telegram_id)
    .bind(role)
    .bind(&name)
    .bind(added_by.to_string())
    .fetch_optional(conn)
    .await?;
    added.ok_or_else(|| {
        Error::conflict(
            ConflictCode::StaffExists,
            "this Telegram user is staff already; change their role instead",
        )
    })
}

/// Locks the organization's owners and refuses when `telegram_id` is the only one: an
/// organization always keeps an owner who can manage it. The owners' rows are locked so two
/// owners demoting each other at once cannot both pass the check.
async fn keep_an_owner(conn: &mut PgConnection, org: i64, telegram_id: i64) -> Result<()> {
    let owners: Vec<i64> = sqlx::query_scalar(
        "select telegram_id from staff where org_id = $1 and role = 'owner' for update",
    )
    .bind(org)
    .fetch_all(conn)
    .await?;
    if owners == [telegram_id] {
        return Err(Error::conflict(
            ConflictCode::LastOwner,
            "the organization's last owner cannot be removed or demoted; make another owner first",
        ));
    }
    Ok(())
}

/// Changes a staff member's role; demoting the last owner is a 409 (`last_owner`).
pub async fn set_staff_role(
    conn: &mut PgConnection,
    org: i64,
    telegram_id: i64,
    role: Role,
) -> Result<StaffMember> {
    let role = staff_role_checked(role)?;
    if role != Role::Owner {
        keep_an_owner(conn, org, telegram_id).await?;
    }
    sqlx::query_as(concat!(
        "update staff set role = $3 where org_id = $1 and telegram_id = $2 \
         returning ",
        staff_columns!()
    ))
    .bind(org)
    .bind(telegram_id)
    .bind(role)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("staff member"))
}

/// Removes a staff member; removing the last owner is a 409 (`last_owner`).
pub async fn remove_staff(
    conn: &mut PgConnection,
    org: i64,
    telegram_id: i64,
) -> Result<StaffMember> {
    keep_an_owner(conn, org, telegram_id).await?;
    sqlx::query_as(concat!(
        "delete from staff where org_id = $1 and telegram_id = $2 returning ",
        staff_columns!()
    ))
    .bind(org)
    .bind(telegram_id)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("staff member"))
}

/// An API key as its organization's owners see it: never its secret.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct ApiKey {
    pub id: i64,
    pub name: String,
    pub role: Role,
    /// Who created it (`platform`, `staff:<id>`, `key:<id>`).
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When it was last used, to the minute; null if never.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked; null while it works.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The columns of [`ApiKey`], spelled once for the queries that return one.
macro_rules! key_columns {
    () => {
        "id, name, role, created_by, created_at, last_used_at, revoked_at"
    };
}

/// A key just created: the only time its secret is seen.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewApiKey {
    pub id: i64,
    pub name: String,
    pub role: Role,
    /// `lk_…`: send as `Authorization: Bearer <secret>`. Shown once; only its digest is kept.
    pub secret: String,
    pub created_at: DateTime<Utc>,
}

/// Who a valid key is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHolder {
    pub id: i64,
    pub org_id: i64,
    pub role: Role,
}

/// How a secret is kept: its SHA-256 (the secret is 32 random bytes, so no salt or slow hash
/// is needed to keep it from being guessed back).
fn key_digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Creates a key of organization `org` with `role`; its secret is in the answer only.
pub async fn create_key(
    conn: &mut PgConnection,
    org: i64,
    name: &str,
    role: Role,
    created_by: Actor,
) -> Result<NewApiKey> {
    let name = name_checked("name", name, true)?;
    let secret = format!(
        "{KEY_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    );
    let (id, created_at): (i64, DateTime<Utc>) = sqlx::query_as(
        "insert into api_keys (org_id, name, role, secret_sha256, created_by) \
         values ($1, $2, $3, $4, $5) returning id, created_at",
    )
    .bind(org)
    .bind(&name)
    .bind(role)
    .bind(key_digest(&secret))
    .bind(created_by.to_string())
    .fetch_one(conn)
    .await?;
    Ok(NewApiKey {
        id,
        name,
        role,
        secret,
        created_at,
    })
}

/// The key whose secret this is, if it exists and is not revoked. Its last-used time moves at
/// most once a minute, so a busy key does not write on every request.
pub async fn verify_key(conn: &mut PgConnection, secret: &str) -> Result<Option<KeyHolder>> {
    if !secret.starts_with(KEY_PREFIX) {
        return Ok(None);
    }
    let found: Option<(i64, i64, Role, bool)> = sqlx::query_as(
        "select id, org_id, role, \
                last_used_at is null or last_used_at < now() - interval '1 minute' \
         from api_keys where secret_sha256 = $1 and revoked_at is null",
    )
    .bind(key_digest(secret))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((id, org_id, role, stale)) = found else {
        return Ok(None);
    };
    if stale {
        sqlx::query(
            "update api_keys set last_used_at = now() where id = $1 \
             and (last_used_at is null or last_used_at < now() - interval '1 minute')",
        )
        .bind(id)
        .execute(conn)
        .await?;
    }
    Ok(Some(KeyHolder { id, org_id, role }))
}

/// The organization's keys, newest first, revoked ones included.
pub async fn list_keys(conn: &mut PgConnection, org: i64) -> Result<Vec<ApiKey>> {
    Ok(sqlx::query_as(concat!(
        "select ",
        key_columns!(),
        " from api_keys where org_id = $1 order by id desc"
    ))
    .bind(org)
    .fetch_all(conn)
    .await?)
}

/// Revokes key `id` of organization `org`: it stops working with the next request. Revoking it
/// again keeps the first revocation's time.
pub async fn revoke_key(conn: &mut PgConnection, org: i64, id: i64) -> Result<ApiKey> {
    sqlx::query_as(concat!(
        "update api_keys set revoked_at = coalesce(revoked_at, now()) \
         where org_id = $1 and id = $2 returning ",
        key_columns!()
    ))
    .bind(org)
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("API key"))
}

/// One change in an organization's audit trail.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `platform`, `staff:<telegram id>` or `key:<id>`.
    pub actor: String,
    /// What was done, e.g. `customer.bonuses`, `bill.create`, `staff.add`.
    pub action: String,
    pub customer_id: Option<i64>,
    /// What the request said (secrets left out) and what it named.
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

/// Writes one row of the audit trail; call it in the transaction that makes the change.
pub async fn record(
    conn: &mut PgConnection,
    org: i64,
    actor: Actor,
    action: &str,
    customer: Option<i64>,
    detail: &serde_json::Value,
) -> Result<()> {
    sqlx::query(
        "insert into audit_log (org_id, actor, action, customer_id, detail) \
         values ($1, $2, $3, $4, $5)",
    )
    .bind(org)
    .bind(actor.to_string())
    .bind(action)
    .bind(customer)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// A page of the organization's audit trail, newest first: the entries before id `before`
/// (all when `None`), by `actor` when given.
pub async fn audit_page(
    conn: &mut PgConnection,
    org: i64,
    before: Option<i64>,
    actor: Option<&str>,
    limit: i64,
) -> Result<Vec<AuditEntry>> {
    Ok(sqlx::query_as(
        "select id, at, actor, action, customer_id, detail from audit_log \
         where org_id = $1 and ($2::bigint is null or id < $2) and ($3::text is null or actor = $3) \
         order by id desc limit $4",
    )
    .bind(org)
    .bind(before)
    .bind(actor)
    .bind(limit)
    .fetch_all(conn)
    .await?)
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
