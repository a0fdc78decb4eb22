//! Notifications to customers: written to the outbox in the transaction that moved their money,
//! rendered from the organization's templates (Russian by default) for Telegram's HTML parse mode.
//! This module owns the `outbox` table: every statement on it is here.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;

use crate::error::Result;
use crate::money::round_money;

/// What a notification is about; each has a template. Stored as its snake_case name.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum NotificationKind {
    PurchaseAccrual,
    ReferralReward,
    PromoBonus,
    OperatorAccrual,
    BonusPayment,
    Refund,
    Welcome,
    /// Bonuses that burn soon: `{amount}` on `{date}`.
    ExpiryWarning,
    /// The welcome bonus, credited on the first visit or creation.
    WelcomeBonus,
    BirthdayBonus,
    /// The customer reached tier `{tier}`: purchases now earn `{percentage}` %.
    TierReached,
    /// A purchase accrual that waits in the pending wallet until `{date}`.
    PendingAccrual,
    /// A referral reward that waits in the pending referral wallet until `{date}`.
    PendingReferralReward,
}

impl NotificationKind {
    pub const ALL: [NotificationKind; 13] = [
        NotificationKind::PurchaseAccrual,
        NotificationKind::ReferralReward,
        NotificationKind::PromoBonus,
        NotificationKind::OperatorAccrual,
        NotificationKind::BonusPayment,
        NotificationKind::Refund,
        NotificationKind::Welcome,
        NotificationKind::ExpiryWarning,
        NotificationKind::WelcomeBonus,
        NotificationKind::BirthdayBonus,
        NotificationKind::TierReached,
        NotificationKind::PendingAccrual,
        NotificationKind::PendingReferralReward,
    ];

    /// Its name, as stored and as the organizations' templates are keyed.
    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationKind::PurchaseAccrual => "purchase_accrual",
            NotificationKind::ReferralReward => "referral_reward",
            NotificationKind::PromoBonus => "promo_bonus",
            NotificationKind::OperatorAccrual => "operator_accrual",
            NotificationKind::BonusPayment => "bonus_payment",
            NotificationKind::Refund => "refund",
            NotificationKind::Welcome => "welcome",
            NotificationKind::ExpiryWarning => "expiry_warning",
            NotificationKind::WelcomeBonus => "welcome_bonus",
            NotificationKind::BirthdayBonus => "birthday_bonus",
            NotificationKind::TierReached => "tier_reached",
            NotificationKind::PendingAccrual => "pending_accrual",
            NotificationKind::PendingReferralReward => "pending_referral_reward",
        }
    }
}

/// The names of every value of an enum that has `ALL` and a `const fn as_str`, as a constant.
macro_rules! names_of {
    ($type:ty) => {{
        let mut names = [""; <$type>::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = <$type>::ALL[i].as_str();
            i += 1;
        }
        names
    }};
}

/// The kinds' names (the keys an organization's templates may have).
pub const KINDS: [&str; 13] = names_of!(NotificationKind);

/// Where a notification's delivery stands (the `outbox.status` check constraint's values).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum NotificationStatus {
    /// Waiting to be sent.
    Pending,
    /// Handed to Telegram; if the notifier dies here the outcome is unknown (then `uncertain`).
    Sending,
    Sent,
    /// Not sent: no `telegram_id`, no bot token, or an unreachable customer.
    Skipped,
    /// Telegram refused the chat (blocked, deactivated, chat not found).
    Unreachable,
    Retrying,
    Dead,
    /// Possibly delivered by an attempt that did not finish; left for an operator, not resent.
    Uncertain,
}

impl NotificationStatus {
    /// Every status, in the order the dashboard shows them.
    pub const ALL: [NotificationStatus; 8] = [
        NotificationStatus::Pending,
        NotificationStatus::Sending,
        NotificationStatus::Sent,
        NotificationStatus::Skipped,
        NotificationStatus::Unreachable,
        NotificationStatus::Retrying,
        NotificationStatus::Dead,
        NotificationStatus::Uncertain,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            NotificationStatus::Pending => "pending",
            NotificationStatus::Sending => "sending",
            NotificationStatus::Sent => "sent",
            NotificationStatus::Skipped => "skipped",
            NotificationStatus::Unreachable => "unreachable",
            NotificationStatus::Retrying => "retrying",
            NotificationStatus::Dead => "dead",
            NotificationStatus::Uncertain => "uncertain",
        }
    }

    /// Whether a (re)delivered message may still send it: a dead one comes back only when an
    /// operator replays it.
    pub fn may_send(self) -> bool {
        matches!(
            self,
            NotificationStatus::Pending | NotificationStatus::Retrying | NotificationStatus::Dead
        )
    }
}

/// The statuses' names, in the order the dashboard shows them.
pub const STATUSES: [&str; 8] = names_of!(NotificationStatus);

/// The schema of an organization's templates: by kind, at most 3000 characters each.
pub fn templates_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            Type::Object,
            Type::Null,
        ]))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(KINDS)),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(3000))
                .pattern(Some(crate::schema::NO_NUL)),
        ))
        .into()
}

/// The default template of a kind. Placeholders: `{amount}`, `{balance}`, `{referral_balance}`,
/// `{invoice}`, `{shop}`, `{currency}`, `{promo_code}`, for refunds `{returned}`, `{taken}`, for
/// expiry warnings `{date}`, for tiers `{tier}` and `{percentage}`.
pub fn default_template(kind: NotificationKind) -> &'static str {
    match kind {
        NotificationKind::PurchaseAccrual => {
            "🎁 Начислено {amount} {currency} бонусов за покупку по накладной #{invoice} в «{shop}».\nБаланс: {balance} {currency}."
        }
        NotificationKind::ReferralReward => {
            "🤝 Ваш друг совершил первую покупку в «{shop}»: на реферальный счёт начислено {amount} {currency}.\nРеферальный баланс: {referral_balance} {currency}."
        }
        NotificationKind::PromoBonus => {
            "🎉 Промокод принят: «{shop}» начислил вам {amount} {currency} бонусов.\nБаланс: {balance} {currency}."
        }
        NotificationKind::OperatorAccrual => {
            "🎁 «{shop}» начислил вам {amount} {currency} бонусов.\nБаланс: {balance} {currency}."
        }
        NotificationKind::BonusPayment => {
            "💳 Списано {amount} {currency} бонусов в оплату накладной #{invoice} в «{shop}».\nБаланс: {balance} {currency}."
        }
        NotificationKind::Welcome => {
            "👋 Добро пожаловать в бонусную программу «{shop}»!\nВаш промокод для друзей: {promo_code}. Друг получит бонус, а вы — процент с его первой покупки."
        }
        NotificationKind::Refund => {
            "↩️ Возврат по накладной #{invoice} в «{shop}»: возвращено {returned} {currency}, списано {taken} {currency}.\nБаланс: {balance} {currency}."
        }
        NotificationKind::ExpiryWarning => {
            "⏳ {date} сгорят {amount} {currency} ваших бонусов в «{shop}». Успейте потратить!\nБаланс: {balance} {currency}."
        }
        NotificationKind::WelcomeBonus => {
            "🎁 «{shop}» дарит вам {amount} {currency} приветственных бонусов.\nБаланс: {balance} {currency}."
        }
        NotificationKind::BirthdayBonus => {
            "🎂 С днём рождения! «{shop}» дарит вам {amount} {currency} бонусов.\nБаланс: {balance} {currency}."
        }
        NotificationKind::TierReached => {
            "⭐ Вы достигли уровня «{tier}» в «{shop}»: теперь с каждой покупки начисляется {percentage} % бонусами."
        }
        NotificationKind::PendingAccrual => {
            "🎁 За покупку по накладной #{invoice} в «{shop}» начислено {amount} {currency} бонусов. Они станут доступны {date}."
        }
        NotificationKind::PendingReferralReward => {
            "🤝 Ваш друг совершил первую покупку в «{shop}»: вам начислено {amount} {currency} реферальных бонусов. Они станут доступны {date}."
        }
    }
}

/// An amount as people read it here: thin groups of three, a decimal comma, cents only when
/// there are any (`1 234,56`, `50`).
pub fn format_amount(value: Decimal) -> String {
    let value = round_money(value);
    let negative = value.is_sign_negative() && !value.is_zero();
    let text = value.abs().to_string();
    let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
    let mut grouped = String::new();
    for (i, digit) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push('\u{a0}');
        }
        grouped.push(digit);
    }
    let frac = frac.trim_end_matches('0');
    let frac = if frac.is_empty() {
        String::new()
    } else {
        format!(",{frac:0<2}")
    };
    format!("{}{grouped}{frac}", if negative { "-" } else { "" })
}

/// Escapes what Telegram's HTML parse mode would read as markup.
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Fills a template; every value is escaped, unknown placeholders stay as written.
pub fn render(template: &str, values: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) if values.contains_key(&after[..end]) => {
                out.push_str(&escape_html(&values[&after[..end]]));
                rest = &after[end + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A notification to send, written to the outbox in the transaction that caused it.
pub struct Note<'a> {
    pub org_id: i64,
    pub customer_id: i64,
    pub kind: NotificationKind,
    pub payload: serde_json::Value,
    /// The receipt's event id (or the request's key), so one grep follows it to its message.
    pub trace_id: &'a str,
}

pub async fn queue(conn: &mut PgConnection, notes: &[Note<'_>]) -> Result<()> {
    if notes.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into outbox (org_id, customer_id, kind, payload, trace_id)
         select * from unnest($1::bigint[], $2::bigint[], $3::text[], $4::jsonb[], $5::text[])",
    )
    .bind(notes.iter().map(|n| n.org_id).collect::<Vec<_>>())
    .bind(notes.iter().map(|n| n.customer_id).collect::<Vec<_>>())
    .bind(notes.iter().map(|n| n.kind).collect::<Vec<_>>())
    .bind(notes.iter().map(|n| n.payload.clone()).collect::<Vec<_>>())
    .bind(
        notes
            .iter()
            .map(|n| n.trace_id.to_owned())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// An outbox row the relay has yet to publish.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unpublished {
    pub id: i64,
    pub org_id: i64,
    /// The receipt's event id (or the request's key) behind it.
    pub trace_id: Option<String>,
}

/// Up to `limit` rows not yet published, oldest first, locked for this transaction (another
/// relay skips them).
pub async fn unpublished(conn: &mut PgConnection, limit: i64) -> Result<Vec<Unpublished>> {
    Ok(sqlx::query_as(
        "select id, org_id, trace_id from outbox where published_at is null
         order by id limit $1 for update skip locked",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// Marks rows published (once the broker confirmed them).
pub async fn mark_published(conn: &mut PgConnection, ids: &[i64]) -> Result<()> {
    sqlx::query("update outbox set published_at = now() where id = any($1)")
        .bind(ids)
        .execute(conn)
        .await?;
    Ok(())
}

/// A notification as the sender reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Queued {
    pub status: NotificationStatus,
    pub org_id: i64,
    pub customer_id: i64,
    pub kind: NotificationKind,
    pub payload: serde_json::Value,
    pub trace_id: Option<String>,
}

/// The notification, locked until the transaction ends (one delivery of it at a time).
pub async fn lock(conn: &mut PgConnection, id: i64) -> Result<Option<Queued>> {
    Ok(sqlx::query_as(
        "select status, org_id, customer_id, kind, payload, trace_id from outbox
         where id = $1 for update",
    )
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Takes the notification for sending: `sending`, one more attempt.
pub async fn start_sending(conn: &mut PgConnection, id: i64) -> Result<()> {
    sqlx::query(
        "update outbox set status = $2, attempts = attempts + 1, updated_at = now() where id = $1",
    )
    .bind(id)
    .bind(NotificationStatus::Sending)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records where a notification stands: its status, the last error, and Telegram's message id
/// (the time it was sent, when `sent`).
pub async fn record(
    conn: &mut PgConnection,
    id: i64,
    status: NotificationStatus,
    error: Option<&str>,
    telegram_message_id: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "update outbox set status = $2, last_error = $3,
                telegram_message_id = $4,
                sent_at = case when $2 = 'sent' then now() else sent_at end, updated_at = now()
         where id = $1",
    )
    .bind(id)
    .bind(status)
    .bind(error)
    .bind(telegram_message_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// A notification and its delivery state, as operators list them.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct NotificationRecord {
    pub id: i64,
    pub org_id: i64,
    pub customer_id: i64,
    pub kind: NotificationKind,
    pub payload: serde_json::Value,
    /// The receipt's event id (or the operator request's key) behind it.
    pub trace_id: Option<String>,
    pub status: NotificationStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub telegram_message_id: Option<i64>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub published_at: Option<chrono::DateTime<chrono::Utc>>,
    pub sent_at: Option<chrono::DateTime<chrono::Utc>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The query of one list variant (see `receipts::list` for why each is its own statement).
macro_rules! notifications_sql {
    ($filter:literal, $page:literal) => {
        concat!(
            "select id, org_id, customer_id, kind, payload, trace_id, status, attempts, last_error,
                    telegram_message_id, created_at, published_at, sent_at, updated_at
             from outbox where ",
            $filter,
            $page
        )
    };
}

/// Notifications of one organization (or all), with one of `statuses` (or any), latest first,
/// from `start` (an offset, or after a notification's id: `crate::db::id_cursor`).
pub async fn list<'c>(
    db: impl sqlx::PgExecutor<'c>,
    org: Option<i64>,
    statuses: Option<&[&str]>,
    limit: i64,
    start: &crate::db::PageStart<i64>,
) -> sqlx::Result<Vec<NotificationRecord>> {
    use crate::db::PageStart;

    let sql: &'static str = match (org.is_some(), statuses, start) {
        (true, None, PageStart::Offset(_)) => {
            notifications_sql!(
                "org_id = $1 and $2::text[] is null",
                " order by id desc limit $3 offset $4"
            )
        }
        (true, Some([_]), PageStart::Offset(_)) => notifications_sql!(
            "org_id = $1 and status = ($2::text[])[1]",
            " order by id desc limit $3 offset $4"
        ),
        (true, Some(_), PageStart::Offset(_)) => notifications_sql!(
            "org_id = $1 and status = any($2::text[])",
            " order by id desc limit $3 offset $4"
        ),
        (false, None, PageStart::Offset(_)) => notifications_sql!(
            "$1::bigint is null and $2::text[] is null",
            " order by id desc limit $3 offset $4"
        ),
        (false, Some([_]), PageStart::Offset(_)) => notifications_sql!(
            "$1::bigint is null and status = ($2::text[])[1]",
            " order by id desc limit $3 offset $4"
        ),
        (false, Some(_), PageStart::Offset(_)) => notifications_sql!(
            "$1::bigint is null and status = any($2::text[])",
            " order by id desc limit $3 offset $4"
        ),
        (true, None, PageStart::After(_)) => notifications_sql!(
            "org_id = $1 and $2::text[] is null",
            " and id < $4 order by id desc limit $3"
        ),
        (true, Some([_]), PageStart::After(_)) => notifications_sql!(
            "org_id = $1 and status = ($2::text[])[1]",
            " and id < $4 order by id desc limit $3"
        ),
        (true, Some(_), PageStart::After(_)) => notifications_sql!(
            "org_id = $1 and status = any($2::text[])",
            " and id < $4 order by id desc limit $3"
        ),
        (false, None, PageStart::After(_)) => notifications_sql!(
            "$1::bigint is null and $2::text[] is null",
            " and id < $4 order by id desc limit $3"
        ),
        (false, Some([_]), PageStart::After(_)) => notifications_sql!(
            "$1::bigint is null and status = ($2::text[])[1]",
            " and id < $4 order by id desc limit $3"
        ),
        (false, Some(_), PageStart::After(_)) => notifications_sql!(
            "$1::bigint is null and status = any($2::text[])",
            " and id < $4 order by id desc limit $3"
        ),
    };
    let query = sqlx::query_as(sql).bind(org).bind(statuses).bind(limit);
    let query = match start {
        PageStart::Offset(offset) => query.bind(*offset),
        PageStart::After(id) => query.bind(*id),
    };
    query.fetch_all(db).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str_exact(s).expect("decimal")
    }

    #[test]
    fn amounts_read_as_people_write_them() {
        assert_eq!(format_amount(d("1234.56")), "1\u{a0}234,56");
        assert_eq!(format_amount(d("50")), "50");
        assert_eq!(format_amount(d("0.6")), "0,60");
        assert_eq!(format_amount(d("1000000")), "1\u{a0}000\u{a0}000");
        assert_eq!(format_amount(d("222.36")), "222,36");
        assert_eq!(format_amount(d("-5.5")), "-5,50");
    }

    #[test]
    fn values_are_escaped_and_unknown_placeholders_kept() {
        let values = BTreeMap::from([
            ("shop", "<b>Tom & Jerry</b>".to_owned()),
            ("amount", "50".to_owned()),
        ]);
        assert_eq!(
            render("{shop}: {amount} {nope}", &values),
            "&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;: 50 {nope}"
        );
    }

    #[test]
    fn kinds_and_statuses_have_one_name_each() {
        for kind in NotificationKind::ALL {
            assert_eq!(
                serde_json::to_value(kind).expect("json"),
                serde_json::json!(kind.as_str())
            );
        }
        for status in NotificationStatus::ALL {
            assert_eq!(
                serde_json::to_value(status).expect("json"),
                serde_json::json!(status.as_str())
            );
        }
        assert_eq!(KINDS[0], "purchase_accrual");
        assert_eq!(STATUSES[7], "uncertain");
    }

    #[test]
    fn every_kind_has_a_russian_default() {
        for kind in NotificationKind::ALL {
            assert!(default_template(kind).contains("{shop}"), "{kind:?}");
        }
    }
}
