//! Notifications to customers: written to the outbox in the transaction that moved their money,
//! rendered from the organization's templates (Russian by default) for Telegram's HTML parse mode.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use sqlx::PgConnection;

use crate::error::Result;
use crate::money::round_money;

/// What a notification is about; each has a template.
pub const KINDS: [&str; 7] = [
    "purchase_accrual",
    "referral_reward",
    "promo_bonus",
    "operator_accrual",
    "bonus_payment",
    "refund",
    "welcome",
];

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
/// `{invoice}`, `{shop}`, `{currency}`, `{promo_code}`, and for refunds `{returned}`, `{taken}`.
pub fn default_template(kind: &str) -> &'static str {
    match kind {
        "purchase_accrual" => {
            "🎁 Начислено {amount} {currency} бонусов за покупку по накладной #{invoice} в «{shop}».\nБаланс: {balance} {currency}."
        }
        "referral_reward" => {
            "🤝 Ваш друг совершил первую покупку в «{shop}»: на реферальный счёт начислено {amount} {currency}.\nРеферальный баланс: {referral_balance} {currency}."
        }
        "promo_bonus" => {
            "🎉 Промокод принят: «{shop}» начислил вам {amount} {currency} бонусов.\nБаланс: {balance} {currency}."
        }
        "operator_accrual" => {
            "🎁 «{shop}» начислил вам {amount} {currency} бонусов.\nБаланс: {balance} {currency}."
        }
        "bonus_payment" => {
            "💳 Списано {amount} {currency} бонусов в оплату накладной #{invoice} в «{shop}».\nБаланс: {balance} {currency}."
        }
        "welcome" => {
            "👋 Добро пожаловать в бонусную программу «{shop}»!\nВаш промокод для друзей: {promo_code}. Друг получит бонус, а вы — процент с его первой покупки."
        }
        "refund" => {
            "↩️ Возврат по накладной #{invoice} в «{shop}»: возвращено {returned} {currency}, списано {taken} {currency}.\nБаланс: {balance} {currency}."
        }
        _ => "«{shop}»: баланс {balance} {currency}.",
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
    pub kind: &'static str,
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
    .bind(notes.iter().map(|n| n.kind.to_owned()).collect::<Vec<_>>())
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
    fn every_kind_has_a_russian_default() {
        for kind in KINDS {
            assert!(default_template(kind).contains("{shop}"), "{kind}");
        }
    }
}
