//! Organizations (tenants): contacts, time zone, bonus settings, the Telegram bot token, and the POS
//! integrations that act for them.

use backon::Retryable;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;

use crate::crypto::{Sealed, TokenKeys};
use crate::error::{ConflictCode, Error, Result};
use crate::money::{Money, Percent};
use crate::rules::{AccrualBase, BonusProgramSettings, SettingsChanges, Tier};
use crate::time::OrgTimeZone;

/// The legacy `organization_details`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrgDetails {
    pub name: String,
    #[serde(default)]
    pub phone_numbers: Vec<String>,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub whatsapp_link: String,
    #[serde(default)]
    pub telegram_link: String,
}

/// An organization as operators see it. The bot token is never read back, only whether it is set.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Organization {
    pub id: i64,
    #[serde(flatten)]
    pub details: OrgDetails,
    pub time_zone: OrgTimeZone,
    pub bonus_program_settings: BonusProgramSettings,
    pub telegram_bot_token_set: bool,
    /// Shown after amounts in messages (default ₸).
    pub currency_symbol: String,
    /// Message templates that replace the defaults, by kind.
    pub notification_templates: std::collections::BTreeMap<String, String>,
    /// The bot's @username, learned from the Bot API when the token is set.
    pub telegram_bot_username: Option<String>,
    /// The Mini App's short name in @BotFather, for `t.me/<bot>/<short name>` links.
    pub miniapp_short_name: Option<String>,
}

#[derive(sqlx::FromRow)]
struct OrgRow {
    id: i64,
    name: String,
    phone_numbers: Vec<String>,
    address: String,
    whatsapp_link: String,
    telegram_link: String,
    time_zone: String,
    invoice_bonus_percentage: Decimal,
    referral_promo_bonus: Decimal,
    referrer_first_purchase_percentage: Decimal,
    max_bonus_payment_percentage: Decimal,
    accrual_base: AccrualBase,
    accrual_delay_days: i32,
    bonus_lifetime_days: Option<i32>,
    expiry_warning_days: i32,
    tiers: sqlx::types::Json<Vec<Tier>>,
    welcome_bonus: Decimal,
    birthday_bonus: Decimal,
    birthday_window_days: i32,
    telegram_bot_token_set: bool,
    currency_symbol: String,
    notification_templates: sqlx::types::Json<std::collections::BTreeMap<String, String>>,
    telegram_bot_username: Option<String>,
    miniapp_short_name: Option<String>,
}

impl TryFrom<OrgRow> for Organization {
    type Error = Error;
    fn try_from(r: OrgRow) -> Result<Self> {
        let corrupt = |what: &str| Error::invalid(what, "stored value out of range");
        Ok(Organization {
            id: r.id,
            details: OrgDetails {
                name: r.name,
                phone_numbers: r.phone_numbers,
                address: r.address,
                whatsapp_link: r.whatsapp_link,
                telegram_link: r.telegram_link,
            },
            time_zone: r.time_zone.parse().map_err(|_| corrupt("time_zone"))?,
            bonus_program_settings: BonusProgramSettings {
                invoice_bonus_percentage: Percent::new(r.invoice_bonus_percentage)
                    .map_err(|_| corrupt("invoice_bonus_percentage"))?,
                referral_promo_bonus: Money::new(r.referral_promo_bonus)
                    .map_err(|_| corrupt("referral_promo_bonus"))?,
                referrer_first_purchase_percentage: Percent::new(
                    r.referrer_first_purchase_percentage,
                )
                .map_err(|_| corrupt("referrer_first_purchase_percentage"))?,
                max_bonus_payment_percentage: Percent::new(r.max_bonus_payment_percentage)
                    .map_err(|_| corrupt("max_bonus_payment_percentage"))?,
                accrual_base: r.accrual_base,
                accrual_delay_days: u32::try_from(r.accrual_delay_days)
                    .map_err(|_| corrupt("accrual_delay_days"))?,
                bonus_lifetime_days: r
                    .bonus_lifetime_days
                    .map(u32::try_from)
                    .transpose()
                    .map_err(|_| corrupt("bonus_lifetime_days"))?,
                expiry_warning_days: u32::try_from(r.expiry_warning_days)
                    .map_err(|_| corrupt("expiry_warning_days"))?,
                tiers: r.tiers.0,
                welcome_bonus: Money::new(r.welcome_bonus).map_err(|_| corrupt("welcome_bonus"))?,
                birthday_bonus: Money::new(r.birthday_bonus)
                    .map_err(|_| corrupt("birthday_bonus"))?,
                birthday_window_days: u32::try_from(r.birthday_window_days)
                    .map_err(|_| corrupt("birthday_window_days"))?,
            },
            telegram_bot_token_set: r.telegram_bot_token_set,
            currency_symbol: r.currency_symbol,
            notification_templates: r.notification_templates.0,
            telegram_bot_username: r.telegram_bot_username,
            miniapp_short_name: r.miniapp_short_name,
        })
    }
}

/// What creating or changing an organization may set.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgChanges {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: Option<String>,
    pub phone_numbers: Option<Vec<String>>,
    pub address: Option<String>,
    pub whatsapp_link: Option<String>,
    pub telegram_link: Option<String>,
    pub time_zone: Option<OrgTimeZone>,
    /// The settings to change; those not named stay as they are.
    pub bonus_program_settings: Option<SettingsChanges>,
    /// Write-only: stored for calling the Bot API, never returned. `""` removes it.
    #[schema(pattern = "^([0-9]+:[^\\u0000]{20,})?$")]
    pub telegram_bot_token: Option<String>,
    /// Shown after amounts in messages (₸, сом, ₽…).
    #[schema(min_length = 1, max_length = 8, pattern = r"\S")]
    pub currency_symbol: Option<String>,
    /// Templates by kind (purchase_accrual, referral_reward, promo_bonus, operator_accrual,
    /// bonus_payment, refund, welcome, expiry_warning, welcome_bonus, birthday_bonus, tier_reached,
    /// pending_accrual, pending_referral_reward),
    /// replacing the Russian defaults; `""` restores a default. HTML, with placeholders {amount}
    /// {balance} {referral_balance} {invoice} {shop} {currency} {returned} {taken} {promo_code}
    /// {date} {tier} {percentage}.
    #[schema(schema_with = crate::notifications::templates_schema)]
    pub notification_templates: Option<std::collections::BTreeMap<String, String>>,
    /// The Mini App's short name in @BotFather (3 to 30 of `A-Za-z0-9_`), so share links open
    /// the app itself (`t.me/<bot>/<short name>?startapp=…`); `""` removes it (links open the bot).
    #[schema(pattern = "^([A-Za-z0-9_]{3,30})?$")]
    pub miniapp_short_name: Option<String>,
}

impl OrgChanges {
    fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            if name.trim().is_empty() || name.chars().count() > 200 {
                return Err(Error::invalid("name", "must be 1 to 200 characters"));
            }
        }
        if let Some(symbol) = &self.currency_symbol {
            if symbol.trim().is_empty() || symbol.chars().count() > 8 {
                return Err(Error::invalid(
                    "currency_symbol",
                    "must be 1 to 8 characters",
                ));
            }
        }
        for (kind, template) in self.notification_templates.iter().flatten() {
            if !crate::notifications::KINDS.contains(&kind.as_str()) {
                return Err(Error::invalid(
                    format!("notification_templates.{kind}"),
                    format!(
                        "unknown kind; use one of {}",
                        crate::notifications::KINDS.join(", ")
                    ),
                ));
            }
            if template.chars().count() > 3000 {
                return Err(Error::invalid(
                    format!("notification_templates.{kind}"),
                    "must be at most 3000 characters",
                ));
            }
        }
        if let Some(name) = &self.miniapp_short_name {
            let valid = name.is_empty()
                || ((3..=30).contains(&name.len())
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            if !valid {
                return Err(Error::invalid(
                    "miniapp_short_name",
                    "must be 3 to 30 letters, digits or underscores, or empty to remove it",
                ));
            }
        }
        if let Some(token) = &self.telegram_bot_token {
            // The Bot API's token shape: "<bot id>:<secret>".
            let valid = token.is_empty()
                || token.split_once(':').is_some_and(|(id, secret)| {
                    !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && secret.len() >= 20
                });
            if !valid {
                return Err(Error::invalid(
                    "telegram_bot_token",
                    "must be the token BotFather gives: digits, a colon, then at least 20 characters",
                ));
            }
        }
        Ok(())
    }
}

const SELECT_ORG: &str =
    "select id, name, phone_numbers, address, whatsapp_link, telegram_link, time_zone,
        invoice_bonus_percentage, referral_promo_bonus, referrer_first_purchase_percentage,
        max_bonus_payment_percentage, accrual_base, accrual_delay_days, bonus_lifetime_days,
        expiry_warning_days, tiers, welcome_bonus, birthday_bonus, birthday_window_days,
        telegram_bot_token_sealed is not null or telegram_bot_token is not null as telegram_bot_token_set,
        currency_symbol, notification_templates, telegram_bot_username, miniapp_short_name
    from organizations";

pub async fn create(conn: &mut PgConnection, keys: &TokenKeys, new: &OrgChanges) -> Result<i64> {
    new.validate()?;
    let name = new
        .name
        .as_deref()
        .ok_or_else(|| Error::invalid("name", "is required"))?;
    let id = sqlx::query_scalar("insert into organizations (name) values ($1) returning id")
        .bind(name)
        .fetch_one(&mut *conn)
        .await?;
    update(conn, keys, id, new).await?;
    Ok(id)
}

pub async fn get(conn: &mut PgConnection, id: i64) -> Result<Organization> {
    let row: Option<OrgRow> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_ORG} where id = $1")))
            .bind(id)
            .fetch_optional(conn)
            .await?;
    row.ok_or(Error::NotFound("organization"))?.try_into()
}

/// The organizations of `ids` (repeats read once), by id.
pub async fn by_id(
    conn: &mut PgConnection,
    mut ids: Vec<i64>,
) -> Result<std::collections::HashMap<i64, Organization>> {
    ids.sort_unstable();
    ids.dedup();
    let mut found = std::collections::HashMap::with_capacity(ids.len());
    for id in ids {
        found.insert(id, get(conn, id).await?);
    }
    Ok(found)
}

/// Applies the fields that are present; absent ones stay as they are. A bot token is sealed under
/// `keys` (see `set_bot_token`).
pub async fn update(
    conn: &mut PgConnection,
    keys: &TokenKeys,
    id: i64,
    c: &OrgChanges,
) -> Result<()> {
    c.validate()?;
    let settings = match &c.bonus_program_settings {
        Some(changes) => Some(changes.apply_to(&current_settings(conn, id).await?)?),
        None => None,
    };
    let s = settings.as_ref();
    let updated = sqlx::query(
        "update organizations set
            name = coalesce($2, name),
            phone_numbers = coalesce($3, phone_numbers),
            address = coalesce($4, address),
            whatsapp_link = coalesce($5, whatsapp_link),
            telegram_link = coalesce($6, telegram_link),
            time_zone = coalesce($7, time_zone),
            invoice_bonus_percentage = coalesce($8, invoice_bonus_percentage),
            referral_promo_bonus = coalesce($9, referral_promo_bonus),
            referrer_first_purchase_percentage = coalesce($10, referrer_first_purchase_percentage),
            currency_symbol = coalesce($11, currency_symbol),
            -- Templates merge: a kind given an empty text goes back to its default.
            notification_templates = case when $12::jsonb is null then notification_templates
                else (select coalesce(jsonb_object_agg(key, value), '{}'::jsonb)
                      from jsonb_each(notification_templates || $12::jsonb) where value <> to_jsonb(''::text)) end,
            max_bonus_payment_percentage = coalesce($13, max_bonus_payment_percentage),
            accrual_base = coalesce($14, accrual_base),
            accrual_delay_days = coalesce($15, accrual_delay_days),
            bonus_lifetime_days = case when $16 then $17 else bonus_lifetime_days end,
            expiry_warning_days = coalesce($18, expiry_warning_days),
            tiers = coalesce($19, tiers),
            welcome_bonus = coalesce($20, welcome_bonus),
            birthday_bonus = coalesce($21, birthday_bonus),
            birthday_window_days = coalesce($22, birthday_window_days),
            miniapp_short_name = case when $23::text is null then miniapp_short_name
                else nullif($23, '') end
         where id = $1",
    )
    .bind(id)
    .bind(&c.name)
    .bind(&c.phone_numbers)
    .bind(&c.address)
    .bind(&c.whatsapp_link)
    .bind(&c.telegram_link)
    .bind(c.time_zone.map(|z| z.to_string()))
    .bind(s.map(|s| s.invoice_bonus_percentage.get()))
    .bind(s.map(|s| s.referral_promo_bonus.get()))
    .bind(s.map(|s| s.referrer_first_purchase_percentage.get()))
    .bind(&c.currency_symbol)
    .bind(c.notification_templates.as_ref().map(sqlx::types::Json))
    .bind(s.map(|s| s.max_bonus_payment_percentage.get()))
    .bind(s.map(|s| s.accrual_base))
    .bind(s.map(|s| days(s.accrual_delay_days)))
    .bind(s.is_some())
    .bind(s.and_then(|s| s.bonus_lifetime_days).map(days))
    .bind(s.map(|s| days(s.expiry_warning_days)))
    .bind(s.map(|s| sqlx::types::Json(s.tiers.clone())))
    .bind(s.map(|s| s.welcome_bonus.get()))
    .bind(s.map(|s| s.birthday_bonus.get()))
    .bind(s.map(|s| days(s.birthday_window_days)))
    .bind(&c.miniapp_short_name)
    .execute(&mut *conn)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(Error::NotFound("organization"));
    }
    if let Some(token) = &c.telegram_bot_token {
        set_bot_token(conn, keys, id, token).await?;
    }
    Ok(())
}

/// A number of days as stored; the settings' validation keeps it far below `i32::MAX`.
fn days(n: u32) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The stored settings, locked until the transaction ends so two changes apply one after the other.
async fn current_settings(conn: &mut PgConnection, id: i64) -> Result<BonusProgramSettings> {
    let row: Option<OrgRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_ORG} where id = $1 for update"
    )))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    let org: Organization = row.ok_or(Error::NotFound("organization"))?.try_into()?;
    Ok(org.bonus_program_settings)
}

/// Stores the bot token sealed under the current key (`""` removes it). Without `TOKEN_KEYS` a
/// token is refused rather than kept readable: a secret the server cannot protect is not stored.
async fn set_bot_token(
    conn: &mut PgConnection,
    keys: &TokenKeys,
    id: i64,
    token: &str,
) -> Result<()> {
    let sealed = if token.is_empty() {
        None
    } else {
        Some(keys.seal(id, token).map_err(|_| {
            Error::conflict(
                ConflictCode::TokenKeysMissing,
                "bot tokens are stored encrypted and this server has no TOKEN_KEYS; set it and restart",
            )
        })?)
    };
    // The username was the old bot's: links must not name a bot the token no longer drives.
    sqlx::query("update organizations set telegram_bot_username = null where id = $1")
        .bind(id)
        .execute(&mut *conn)
        .await?;
    store_sealed(conn, id, sealed.as_ref()).await
}

/// Stores the bot's @username as `getMe` told it (links that open the app name it).
pub async fn set_bot_username(conn: &mut PgConnection, id: i64, username: &str) -> Result<()> {
    sqlx::query("update organizations set telegram_bot_username = $2 where id = $1")
        .bind(id)
        .bind(username)
        .execute(conn)
        .await?;
    Ok(())
}

async fn store_sealed(conn: &mut PgConnection, id: i64, sealed: Option<&Sealed>) -> Result<()> {
    sqlx::query(
        "update organizations set telegram_bot_token = null, telegram_bot_token_key = $2,
                                  telegram_bot_token_sealed = $3
         where id = $1",
    )
    .bind(id)
    .bind(sealed.map(|s| s.key_id.as_str()))
    .bind(sealed.map(|s| s.bytes.as_slice()))
    .execute(conn)
    .await?;
    Ok(())
}

/// A POS integration: the `system` name `hello` answers with, and the token it authenticates with.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NewIntegration {
    pub id: i64,
    /// Shown once; only its sha256 is stored.
    pub token: String,
}

pub fn token_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

pub async fn create_integration(
    conn: &mut PgConnection,
    org_id: i64,
    system: &str,
) -> Result<NewIntegration> {
    let system = system.trim();
    if system.is_empty() || system.chars().count() > 200 {
        return Err(Error::invalid("system", "must be 1 to 200 characters"));
    }
    let token = format!("pos_{}", hex::encode(rand::random::<[u8; 24]>()));
    let id = sqlx::query_scalar(
        "insert into integrations (org_id, system, token_sha256)
         select id, $2, $3 from organizations where id = $1 returning id",
    )
    .bind(org_id)
    .bind(system)
    .bind(token_digest(&token))
    .fetch_optional(conn)
    .await?
    .ok_or(Error::NotFound("organization"))?;
    Ok(NewIntegration { id, token })
}

/// The integration a POS token belongs to.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Integration {
    pub id: i64,
    pub org_id: i64,
    pub system: String,
}

pub async fn integration_by_token(
    conn: &mut PgConnection,
    token: &str,
) -> Result<Option<Integration>> {
    Ok(
        sqlx::query_as("select id, org_id, system from integrations where token_sha256 = $1")
            .bind(token_digest(token))
            .fetch_optional(conn)
            .await?,
    )
}

/// A bot token as stored: sealed, or (written before tokens were sealed, until ingest's start
/// seals it) plain.
#[derive(sqlx::FromRow)]
pub struct StoredToken {
    pub id: i64,
    pub telegram_bot_token: Option<String>,
    pub telegram_bot_token_key: Option<String>,
    pub telegram_bot_token_sealed: Option<Vec<u8>>,
}

impl StoredToken {
    fn sealed(&self) -> Option<Sealed> {
        Some(Sealed {
            key_id: self.telegram_bot_token_key.clone()?,
            bytes: self.telegram_bot_token_sealed.clone()?,
        })
    }

    /// The token in clear, if the organization has one. A token `keys` cannot open is a stored
    /// value this process cannot decode (a key removed too early, an altered row).
    pub fn open(&self, keys: &TokenKeys) -> Result<Option<String>, sqlx::Error> {
        match self.sealed() {
            Some(sealed) => keys
                .open(self.id, &sealed)
                .map(Some)
                .map_err(|e| sqlx::Error::Decode(Box::new(e))),
            None => Ok(self.telegram_bot_token.clone()),
        }
    }
}

const STORED_TOKEN: &str =
    "select id, telegram_bot_token, telegram_bot_token_key, telegram_bot_token_sealed
    from organizations";

/// The organization's bot token, to validate Mini App init data and to send messages.
pub async fn bot_token(
    conn: &mut PgConnection,
    keys: &TokenKeys,
    org_id: i64,
) -> Result<Option<String>> {
    let stored: StoredToken =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("{STORED_TOKEN} where id = $1")))
            .bind(org_id)
            .fetch_optional(conn)
            .await?
            .ok_or(Error::NotFound("organization"))?;
    Ok(stored.open(keys)?)
}

/// Checks at start that every stored bot token opens under `keys`, and refuses to start otherwise
/// (no `TOKEN_KEYS` while tokens exist, or a token under a key no longer listed), so a service
/// never runs unable to read its tokens. With `reseal` (ingest), tokens stored in clear or under
/// a key other than the first are sealed again under the first: this is the rotation's
/// re-encryption. Returns how many were resealed.
pub async fn prepare_bot_tokens(
    pool: &sqlx::PgPool,
    keys: &TokenKeys,
    reseal: bool,
) -> anyhow::Result<usize> {
    // A database that drops the connection (a restart, a terminated backend) is waited for; a
    // token no listed key opens is the operator's to fix, at once.
    let prepare = || prepare_bot_tokens_once(pool, keys, reseal);
    prepare
        .retry(crate::db::start_up_retry())
        .when(|err| {
            err.downcast_ref::<sqlx::Error>().is_some()
                || matches!(err.downcast_ref::<Error>(), Some(Error::Db(_)))
        })
        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "reading the bot tokens failed; retrying"))
        .await
}

async fn prepare_bot_tokens_once(
    pool: &sqlx::PgPool,
    keys: &TokenKeys,
    reseal: bool,
) -> anyhow::Result<usize> {
    let mut tx = pool.begin().await?;
    let stored: Vec<StoredToken> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{STORED_TOKEN} where telegram_bot_token is not null or telegram_bot_token_sealed is not null
         order by id for update"
    )))
    .fetch_all(&mut *tx)
    .await?;
    if stored.is_empty() {
        return Ok(0);
    }
    if keys.is_empty() {
        anyhow::bail!(
            "{} organization(s) have a Telegram bot token but TOKEN_KEYS is not set: set it \
             (id:base64key, 32-byte keys) to read them and to seal any stored in clear",
            stored.len()
        );
    }
    let mut resealed = 0;
    for row in &stored {
        let token = row
            .open(keys)
            .map_err(|e| anyhow::anyhow!("organization {}: {e}", row.id))?
            .unwrap_or_default();
        if reseal && row.telegram_bot_token_key.as_deref() != keys.current() {
            let sealed = keys.seal(row.id, &token)?;
            store_sealed(&mut tx, row.id, Some(&sealed)).await?;
            resealed += 1;
        }
    }
    tx.commit().await?;
    Ok(resealed)
}

// ---- For the notifier: an organization as the sender of Telegram messages. ----

/// What the notifier needs of an organization to send its messages.
#[derive(sqlx::FromRow)]
pub struct TelegramSender {
    /// The shop's name, as the templates show it.
    pub name: String,
    #[sqlx(flatten)]
    pub token: StoredToken,
    pub currency_symbol: String,
    /// Kind → template; kinds not listed use the defaults.
    pub notification_templates: serde_json::Value,
}

/// The organization as a Telegram sender, if it exists.
pub async fn telegram_sender(
    conn: &mut PgConnection,
    org_id: i64,
) -> Result<Option<TelegramSender>> {
    Ok(sqlx::query_as(
        "select name, id, telegram_bot_token, telegram_bot_token_key, telegram_bot_token_sealed,
                currency_symbol, notification_templates
         from organizations where id = $1",
    )
    .bind(org_id)
    .fetch_optional(conn)
    .await?)
}
