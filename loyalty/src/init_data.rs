//! Telegram Mini App init data (`Authorization: tma <initData>`), validated as Telegram specifies:
//! the data-check string (every field but `hash`, sorted, `key=value` joined by newlines) signed
//! with HMAC-SHA256 under the key HMAC-SHA256("WebAppData", bot token).

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// The Telegram user the init data speaks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TelegramUser {
    pub id: i64,
    pub first_name: String,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub photo_url: Option<String>,
    #[serde(default)]
    pub is_premium: bool,
    pub language_code: Option<String>,
    pub allows_write_to_pm: Option<bool>,
}

/// Why init data is refused. Callers answer all of them with the same 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    #[error("no hash")]
    NoHash,
    #[error("bad signature")]
    BadSignature,
    #[error("auth_date missing or outside the accepted window")]
    Stale,
    #[error("no usable user")]
    NoUser,
}

/// What valid init data tells besides the user: signed, so it can be trusted as the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validated {
    pub user: TelegramUser,
    /// The `startapp` parameter of the link that opened the Mini App (a friend's promo code, for
    /// a referral by link); `None` when it was opened otherwise.
    pub start_param: Option<String>,
}

/// Validates `init_data` for the bot whose token is `bot_token`, at `now`, accepting it for
/// `max_age` after its `auth_date` (and up to a minute before, for clock skew).
pub fn validate(
    init_data: &str,
    bot_token: &str,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<TelegramUser, Invalid> {
    validate_all(init_data, bot_token, now, max_age).map(|valid| valid.user)
}

/// [`validate`], keeping the signed `start_param` too.
pub fn validate_all(
    init_data: &str,
    bot_token: &str,
    now: DateTime<Utc>,
    max_age: Duration,
) -> Result<Validated, Invalid> {
    let mut hash = None;
    let mut fields: Vec<(String, String)> = Vec::new();
    for (key, value) in url::form_urlencoded::parse(init_data.trim().as_bytes()) {
        if key == "hash" {
            hash = Some(value.into_owned());
        } else {
            fields.push((key.into_owned(), value.into_owned()));
        }
    }
    let hash = hex::decode(hash.ok_or(Invalid::NoHash)?).map_err(|_| Invalid::BadSignature)?;
    fields.sort();
    let check: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();

    let mut secret =
        Hmac::<Sha256>::new_from_slice(b"WebAppData").map_err(|_| Invalid::BadSignature)?;
    secret.update(bot_token.as_bytes());
    let secret = secret.finalize().into_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).map_err(|_| Invalid::BadSignature)?;
    mac.update(check.join("\n").as_bytes());
    // Constant-time comparison.
    mac.verify_slice(&hash).map_err(|_| Invalid::BadSignature)?;

    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let auth_date = field("auth_date")
        .and_then(|d| d.parse::<i64>().ok())
        .and_then(|d| DateTime::from_timestamp(d, 0))
        .ok_or(Invalid::Stale)?;
    let age = now.signed_duration_since(auth_date);
    let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
    if age > max_age || age < -chrono::Duration::seconds(60) {
        return Err(Invalid::Stale);
    }
    let mut user: TelegramUser =
        serde_json::from_str(field("user").ok_or(Invalid::NoUser)?).map_err(|_| Invalid::NoUser)?;
    if user.id <= 0 {
        return Err(Invalid::NoUser);
    }
    user.strip_nul();
    let start_param = field("start_param")
        .map(|p| p.replace('\0', ""))
        .filter(|p| !p.is_empty());
    Ok(Validated { user, start_param })
}

impl TelegramUser {
    /// Telegram signs whatever a user typed as their name, NUL included; PostgreSQL stores no NUL
    /// in text, so the profile is kept without it.
    fn strip_nul(&mut self) {
        let texts = [
            Some(&mut self.first_name),
            self.last_name.as_mut(),
            self.username.as_mut(),
            self.photo_url.as_mut(),
            self.language_code.as_mut(),
        ];
        for text in texts.into_iter().flatten() {
            text.retain(|c| c != '\0');
        }
    }
}

/// The Telegram user id `init_data` claims, read without checking its signature: for keying a rate
/// limit before the validation, which costs the bot token's lookup. Trust it for nothing else.
pub fn claimed_user_id(init_data: &str) -> Option<i64> {
    #[derive(Deserialize)]
    struct Claimed {
        id: i64,
    }
    url::form_urlencoded::parse(init_data.trim().as_bytes())
        .find(|(key, _)| key == "user")
        .and_then(|(_, user)| serde_json::from_str::<Claimed>(&user).ok())
        .map(|claimed| claimed.id)
        .filter(|id| *id > 0)
}

/// Signs init data for a user (what Telegram does; tests and tools use it).
pub fn sign(fields: &[(&str, &str)], bot_token: &str) -> String {
    let mut sorted: Vec<(&str, &str)> = fields.to_vec();
    sorted.sort();
    let check: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut secret = Hmac::<Sha256>::new_from_slice(b"WebAppData").expect("any key length");
    secret.update(bot_token.as_bytes());
    let secret = secret.finalize().into_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret).expect("any key length");
    mac.update(check.join("\n").as_bytes());
    let hash = hex::encode(mac.finalize().into_bytes());
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        out.append_pair(k, v);
    }
    out.append_pair("hash", &hash);
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "123456789:TEST-fake-token_for-unit-tests";
    const VECTOR: &str = "auth_date=1735689600&query_id=AAE-test-query&user=%7B%22id%22%3A424242%2C%22first_name%22%3A%22Alice%22%2C%22username%22%3A%22alice%22%2C%22language_code%22%3A%22ru%22%7D&hash=cf5dcab8624815dfe3bd18a89f530cdcec88d66e38d7fb1829164f6c3afaeb97";
    const DAY: Duration = Duration::from_secs(86_400);

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).expect("time")
    }

    #[test]
    fn the_published_test_vector_is_valid() {
        let user = validate(VECTOR, TOKEN, at(1_735_689_600 + 60), DAY).expect("valid");
        assert_eq!(
            (user.id, user.first_name.as_str(), user.username.as_deref()),
            (424242, "Alice", Some("alice"))
        );
    }

    #[test]
    fn tampered_expired_and_foreign_init_data_are_refused() {
        let tampered = VECTOR.replace("424242", "424243");
        assert_eq!(
            validate(&tampered, TOKEN, at(1_735_689_660), DAY),
            Err(Invalid::BadSignature)
        );
        assert_eq!(
            validate(VECTOR, TOKEN, at(1_735_689_600 + 86_401), DAY),
            Err(Invalid::Stale)
        );
        assert_eq!(
            validate(
                VECTOR,
                "987654321:another-bots-token",
                at(1_735_689_660),
                DAY
            ),
            Err(Invalid::BadSignature)
        );
        assert_eq!(
            validate("user=%7B%7D", TOKEN, at(0), DAY),
            Err(Invalid::NoHash)
        );
    }

    #[test]
    fn a_nul_in_a_signed_profile_is_dropped() {
        let user =
            r#"{"id":7,"first_name":"Al\u0000ice","last_name":"\u0000","username":"a\u0000"}"#;
        let data = sign(&[("auth_date", "1735689600"), ("user", user)], TOKEN);
        let user = validate(&data, TOKEN, at(1_735_689_600), DAY).expect("valid");
        assert_eq!(
            (
                user.first_name.as_str(),
                user.last_name.as_deref(),
                user.username.as_deref()
            ),
            ("Alice", Some(""), Some("a"))
        );
    }

    #[test]
    fn the_signed_start_param_and_write_permission_are_kept() {
        let user = r#"{"id":7,"first_name":"Ann","allows_write_to_pm":true}"#;
        let data = sign(
            &[
                ("auth_date", "1735689600"),
                ("start_param", "PROMO100001"),
                ("user", user),
            ],
            TOKEN,
        );
        let valid = validate_all(&data, TOKEN, at(1_735_689_600), DAY).expect("valid");
        assert_eq!(valid.start_param.as_deref(), Some("PROMO100001"));
        assert_eq!(valid.user.allows_write_to_pm, Some(true));
        let plain = sign(&[("auth_date", "1735689600"), ("user", user)], TOKEN);
        let valid = validate_all(&plain, TOKEN, at(1_735_689_600), DAY).expect("valid");
        assert_eq!(valid.start_param, None);
    }

    #[test]
    fn signing_and_validating_agree() {
        let user = r#"{"id":7,"first_name":"Ермек"}"#;
        let data = sign(&[("auth_date", "1735689600"), ("user", user)], TOKEN);
        assert_eq!(
            validate(&data, TOKEN, at(1_735_689_600), DAY).map(|u| u.id),
            Ok(7)
        );
    }
}
