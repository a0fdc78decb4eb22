//! The shop's bot: its webhook (`/telegram/v1/orgs/{org}/webhook`), where Telegram posts the
//! messages customers send the bot, and the bot's set-up when an owner pastes its token (the
//! webhook and the menu button point here, so the owner has nothing else to configure).
//!
//! The webhook's secret is derived from the bot token (HMAC-SHA256 keyed by the token), so it is
//! never stored, and a new token brings a new secret with it. Telegram sends it back with every
//! update in `X-Telegram-Bot-Api-Secret-Token`; anything else is refused before it is read.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use hmac::{Hmac, Mac};
use loyalty::access;
use loyalty::customers;
use loyalty::init_data::TelegramUser;
use loyalty::orgs::{self, Organization};
use loyalty_service::telegram::{self as bot_api, Answer};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;
use crate::miniapp::{Referral, is_promo_code, try_referral};

/// How long one Bot API call of the bot's set-up may take: the owner is waiting for the answer.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// The header Telegram repeats the webhook's secret in.
const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// The menu button's label in the chat with the bot.
const MENU_BUTTON_TEXT: &str = "Бонусы";

pub fn router() -> Router<AppState> {
    Router::new().route("/telegram/v1/orgs/{org}/webhook", post(webhook))
}

/// The webhook's secret for organization `org` whose bot token is `token`: 64 hex digits (within
/// Telegram's `A-Za-z0-9_-`, up to 256), different for every organization and every token.
pub fn webhook_secret(token: &str, org: i64) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("loyalty webhook of organization {org}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Where Telegram posts organization `org`'s updates.
pub fn webhook_url(public_url: &reqwest::Url, org: i64) -> String {
    format!(
        "{}/telegram/v1/orgs/{org}/webhook",
        public_url.as_str().trim_end_matches('/')
    )
}

/// The Mini App's address of organization `org`.
pub fn app_url(public_url: &reqwest::Url, org: i64) -> String {
    format!("{}/app/{org}/", public_url.as_str().trim_end_matches('/'))
}

/// An update as Telegram sends it, read leniently: only what the bot answers is named, and
/// anything else (other kinds of update, fields added later) is accepted and ignored.
#[derive(Debug, Deserialize)]
struct Update {
    update_id: i64,
    message: Option<Message>,
}

#[derive(Debug, Deserialize)]
struct Message {
    chat: Chat,
    from: Option<User>,
    text: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Chat {
    id: i64,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct User {
    id: i64,
    #[serde(default)]
    is_bot: bool,
    first_name: String,
    last_name: Option<String>,
    username: Option<String>,
    language_code: Option<String>,
    #[serde(default)]
    is_premium: bool,
}

/// Receives one update of the organization's bot. Refused (401) without the right secret, the
/// same for an organization that does not exist or has no bot. Every authentic update is
/// answered 200 once it is recorded, even one the bot does not understand, so Telegram does not
/// send it again; the bot's reply goes out afterwards, and its failure is only logged. An update
/// answered already (Telegram delivers again after a slow or failed answer) changes nothing and
/// gets no second reply (see [`claim_update`]).
async fn webhook(
    State(state): State<AppState>,
    Path(org): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let given = headers
        .get(SECRET_HEADER)
        .map(|v| v.as_bytes())
        .ok_or(ApiError::Unauthorized)?;
    let org_id: i64 = org.parse().map_err(|_| ApiError::Unauthorized)?;
    let unknown_is_unauthorized = |err: loyalty::Error| match err {
        loyalty::Error::NotFound(_) => ApiError::Unauthorized,
        other => other.into(),
    };
    let mut conn = state.db.acquire().await?;
    let token = orgs::bot_token(&mut conn, &state.config.secrets.token_keys, org_id)
        .await
        .map_err(unknown_is_unauthorized)?
        .ok_or(ApiError::Unauthorized)?;
    let expected = webhook_secret(&token, org_id);
    if !bool::from(expected.as_bytes().ct_eq(given)) {
        return Err(ApiError::Unauthorized);
    }
    let org = orgs::get(&mut conn, org_id)
        .await
        .map_err(unknown_is_unauthorized)?;
    drop(conn);

    let update: Update = match serde_json::from_slice(&body) {
        Ok(update) => update,
        Err(err) => {
            tracing::warn!(org = org_id, error = %err, "a webhook update that is not an Update; ignored");
            return Ok(ok());
        }
    };
    let Some(message) = update.message else {
        return Ok(ok());
    };
    let Some(from) = message.from.filter(|f| !f.is_bot && f.id > 0) else {
        return Ok(ok());
    };
    // The bot talks to people in their own chats; groups it is added to are not its business.
    if message.chat.kind != "private" {
        return Ok(ok());
    }
    // Claimed before anything is done, in a transaction committed only once it is: a delivery of
    // the same update meanwhile waits on the claim and then finds it taken; a failure leaves it
    // unclaimed, so Telegram's next delivery does the work.
    let mut claim = state.db.begin().await?;
    if !claim_update(&mut claim, org_id, bot_id(&token), update.update_id).await? {
        tracing::info!(
            org = org_id,
            update = update.update_id,
            "an update delivered again; it was answered already"
        );
        return Ok(ok());
    }
    let english = from
        .language_code
        .as_deref()
        .is_some_and(|l| l.to_ascii_lowercase().starts_with("en"));
    let text = message.text.as_deref().unwrap_or("").trim();
    let reply = match start_payload(text) {
        Some(payload) => start(&state, &org, from, payload, english).await?,
        None => help(english),
    };
    claim.commit().await?;
    let params = reply_params(&state, &org, message.chat.id, &reply, english);
    let http = state.http.clone();
    let api_url = state.config.telegram_api_url.clone();
    let update_id = update.update_id;
    tokio::spawn(async move {
        match bot_api::call(
            &http,
            &api_url,
            &token,
            "sendMessage",
            &params,
            bot_api::SEND_TIMEOUT,
        )
        .await
        {
            Answer::Done(_) => {
                tracing::debug!(org = org_id, update = update_id, "bot answered");
            }
            failed => {
                tracing::warn!(org = org_id, update = update_id, answer = ?failed, "the bot's answer was not sent");
            }
        }
    });
    Ok(ok())
}

/// How long an answered update's id is kept: Telegram gives up on an update after a day.
const SEEN_FOR: &str = "2 days";

/// Records that update `update_id` of bot `bot` is being answered for organization `org`; false
/// when it was already (then the caller does nothing). Also forgets the organization's updates
/// older than [`SEEN_FOR`], which keeps the table at a few days of messages.
async fn claim_update(
    conn: &mut sqlx::PgConnection,
    org: i64,
    bot: i64,
    update_id: i64,
) -> Result<bool, ApiError> {
    sqlx::query(
        "delete from bot_updates where org_id = $1 and received_at < now() - $2::text::interval",
    )
    .bind(org)
    .bind(SEEN_FOR)
    .execute(&mut *conn)
    .await?;
    let claimed = sqlx::query(
        "insert into bot_updates (org_id, bot_id, update_id) values ($1, $2, $3)
         on conflict do nothing",
    )
    .bind(org)
    .bind(bot)
    .bind(update_id)
    .execute(&mut *conn)
    .await?;
    Ok(claimed.rows_affected() == 1)
}

/// The bot's id: the digits before the token's colon (the stored token was checked to have them).
fn bot_id(token: &str) -> i64 {
    token
        .split_once(':')
        .and_then(|(id, _)| id.parse().ok())
        .unwrap_or(0)
}

/// The empty 200 Telegram expects.
fn ok() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

/// The payload of a `/start` command (`""` without one), or `None` for any other message.
/// `/start@shop_bot` is the same command addressed to the bot by name.
fn start_payload(text: &str) -> Option<&str> {
    let (command, payload) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let command = command.split_once('@').map_or(command, |(c, _)| c);
    (command == "/start").then(|| payload.trim())
}

/// `/start`: the customer is created or updated as a Mini App visit does, may be written to
/// from now on, and a friend's code in the payload is applied with the promo rules.
async fn start(
    state: &AppState,
    org: &Organization,
    from: User,
    payload: &str,
    english: bool,
) -> Result<String, ApiError> {
    let user = TelegramUser {
        id: from.id,
        first_name: from.first_name,
        last_name: from.last_name,
        username: from.username,
        photo_url: None,
        is_premium: from.is_premium,
        language_code: from.language_code,
        allows_write_to_pm: Some(true),
    };
    let mut tx = state.db.begin().await?;
    let (id, first_visit) = customers::visit(&mut tx, org, &user).await?;
    access::allow_messages(&mut tx, org.id, user.id).await?;
    tx.commit().await?;
    tracing::info!(
        org = org.id,
        customer = id,
        first_visit,
        "the bot was started"
    );
    // After the visit's commit, so the promo takes the customers' locks in the program's order.
    let referral = match is_promo_code(payload) {
        true => Some(try_referral(state, org, id, payload).await?),
        false => None,
    };
    Ok(welcome(org, referral.as_ref(), english))
}

/// Escapes text for Telegram's HTML parse mode.
fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn welcome(org: &Organization, referral: Option<&Referral>, english: bool) -> String {
    let shop = html(&org.details.name);
    let mut text = if english {
        format!(
            "Welcome to the bonus program of <b>{shop}</b>! Open the app to see your bonuses and share your promo code with friends."
        )
    } else {
        format!(
            "Добро пожаловать в бонусную программу <b>{shop}</b>! Откройте приложение, чтобы увидеть свои бонусы и поделиться промокодом с друзьями."
        )
    };
    if let Some(referral) = referral {
        let code = html(&referral.code);
        let line = match (referral.applied, english) {
            (true, true) => format!("Promo code {code} applied: the bonus is on your account."),
            (true, false) => format!("Промокод {code} применён: бонус уже на вашем счёте."),
            (false, true) => format!(
                "Promo code {code} was not applied: it is not valid, or it can no longer be used on this account."
            ),
            (false, false) => format!(
                "Промокод {code} не применён: он недействителен или уже не может быть использован для этого счёта."
            ),
        };
        text.push_str("\n\n");
        text.push_str(&line);
    }
    text
}

fn help(english: bool) -> String {
    if english {
        "Tap the button below to open the bonus program: your bonuses, your promo code and your purchases.".to_owned()
    } else {
        "Нажмите кнопку ниже, чтобы открыть бонусную программу: бонусы, промокод и покупки."
            .to_owned()
    }
}

/// `sendMessage`'s parameters: the text, with a button opening the Mini App when the service's
/// public address is known (Telegram opens only HTTPS web apps, so there is none without it).
fn reply_params(
    state: &AppState,
    org: &Organization,
    chat_id: i64,
    text: &str,
    english: bool,
) -> Value {
    let mut params = json!({
        "chat_id": chat_id,
        "text": text,
        "parse_mode": "HTML",
        "link_preview_options": {"is_disabled": true},
    });
    if let Some(public_url) = &state.config.public_url {
        let label = if english {
            "Open bonuses"
        } else {
            "Открыть бонусы"
        };
        params["reply_markup"] = json!({
            "inline_keyboard": [[{"text": label, "web_app": {"url": app_url(public_url, org.id)}}]]
        });
    }
    params
}

/// Sets the bot of organization `org` up for this service, when its public address is
/// configured: learns the bot's username (`getMe`), points its webhook here with the secret
/// (`setWebhook`) and its menu button at the Mini App (`setChatMenuButton`). Returns the
/// username to store, or `None` without a public address (the bot is then left as it is).
///
/// Called inside the transaction that stores the token, before it commits: a token Telegram
/// refuses is a 422 and one that cannot be checked (Telegram unreachable) a 503, and either way
/// nothing is stored, so the owner either has a working bot or is told to try again.
pub async fn register_bot(
    state: &AppState,
    org: i64,
    token: &str,
) -> Result<Option<String>, ApiError> {
    let Some(public_url) = &state.config.public_url else {
        return Ok(None);
    };
    let me = setup_call(state, org, token, "getMe", &json!({})).await?;
    let username = me
        .get("username")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "telegram_bot_token",
                "Telegram says this token is not a bot's (getMe gave no username)",
            )
        })?
        .to_owned();
    setup_call(
        state,
        org,
        token,
        "setWebhook",
        &json!({
            "url": webhook_url(public_url, org),
            "secret_token": webhook_secret(token, org),
            "allowed_updates": ["message"],
        }),
    )
    .await?;
    setup_call(
        state,
        org,
        token,
        "setChatMenuButton",
        &json!({
            "menu_button": {"type": "web_app", "text": MENU_BUTTON_TEXT, "web_app": {"url": app_url(public_url, org)}}
        }),
    )
    .await?;
    tracing::info!(org, "the bot's webhook and menu button are set");
    Ok(Some(username))
}

/// Undoes [`register_bot`] for the bot of token `old` when organization `org`'s token is
/// replaced by `new` (`""`: removed): `deleteWebhook` (its pending updates dropped) and the menu
/// button back to Telegram's default, so Telegram stops posting updates this service now refuses
/// and customers are not sent to an app that no longer knows the bot. Only a webhook that points
/// here is undone (`getWebhookInfo`): one the owner set elsewhere is theirs. A new token of the
/// same bot (BotFather's revoke) has replaced the webhook already, so nothing is called.
///
/// Called inside the transaction that changes the token, after the new one is set up. A token
/// Telegram refuses (revoked) or a call it refuses is only logged: there is nothing to undo with
/// it and the owner's change goes through. Telegram unreachable is a 503 and nothing is changed,
/// as when a token is set. Without a public address nothing was set up, so nothing is undone.
pub async fn release_bot(state: &AppState, org: i64, old: &str, new: &str) -> Result<(), ApiError> {
    let Some(public_url) = &state.config.public_url else {
        return Ok(());
    };
    if bot_id(old) == bot_id(new) {
        return Ok(());
    }
    let Some(info) = release_call(state, org, old, "getWebhookInfo", &json!({})).await? else {
        return Ok(());
    };
    if info.get("url").and_then(Value::as_str) != Some(webhook_url(public_url, org).as_str()) {
        tracing::info!(
            org,
            "the old bot's webhook is not this service's; left as it is"
        );
        return Ok(());
    }
    let steps = [
        ("deleteWebhook", json!({"drop_pending_updates": true})),
        (
            "setChatMenuButton",
            json!({"menu_button": {"type": "default"}}),
        ),
    ];
    for (method, params) in steps {
        if release_call(state, org, old, method, &params)
            .await?
            .is_none()
        {
            return Ok(());
        }
    }
    tracing::info!(org, "the old bot's webhook and menu button are removed");
    Ok(())
}

/// One call undoing the old bot's set-up: its result, `None` when Telegram refused it (nothing
/// more to do with this token), or a 503 when Telegram could not be reached.
async fn release_call(
    state: &AppState,
    org: i64,
    token: &str,
    method: &str,
    params: &Value,
) -> Result<Option<Value>, ApiError> {
    let answer = setup_answer(state, token, method, params).await;
    match answer {
        Answer::Done(result) => Ok(Some(result)),
        Answer::BadToken(_) | Answer::Rejected(_) | Answer::Unreachable(_) => {
            tracing::info!(org, method, answer = ?answer, "Telegram refused the old bot's call; nothing to undo");
            Ok(None)
        }
        Answer::RetryAfter(_) | Answer::Transient(_) | Answer::Uncertain(_) => {
            tracing::warn!(org, method, answer = ?answer, "Telegram unreachable to remove the old bot's webhook");
            Err(ApiError::unavailable(
                "Telegram could not be reached to remove the old bot's webhook; nothing was changed, try again shortly",
            ))
        }
    }
}

/// Telegram's answer to one call setting a bot up or undoing it, within [`SETUP_TIMEOUT`].
async fn setup_answer(state: &AppState, token: &str, method: &str, params: &Value) -> Answer {
    bot_api::call(
        &state.http,
        &state.config.telegram_api_url,
        token,
        method,
        params,
        SETUP_TIMEOUT,
    )
    .await
}

/// One call of the bot's set-up; every refusal is the owner's to read, never a 500.
async fn setup_call(
    state: &AppState,
    org: i64,
    token: &str,
    method: &str,
    params: &Value,
) -> Result<Value, ApiError> {
    let answer = setup_answer(state, token, method, params).await;
    match answer {
        Answer::Done(result) => Ok(result),
        Answer::BadToken(_) => {
            tracing::warn!(org, method, "Telegram refused the bot token");
            Err(ApiError::invalid(
                "telegram_bot_token",
                "Telegram refused this token; copy it again from @BotFather (nothing was changed)",
            ))
        }
        Answer::Rejected(reason) | Answer::Unreachable(reason) => {
            tracing::warn!(org, method, reason, "Telegram refused the bot's set-up");
            Err(ApiError::invalid(
                "telegram_bot_token",
                format!("Telegram refused {method}: {reason} (nothing was changed)"),
            ))
        }
        Answer::RetryAfter(_) | Answer::Transient(_) | Answer::Uncertain(_) => {
            tracing::warn!(org, method, answer = ?answer, "Telegram unreachable for the bot's set-up");
            Err(ApiError::unavailable(
                "Telegram could not be reached to set the bot up; nothing was changed, try again shortly",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_payloads_are_read_from_the_command() {
        assert_eq!(start_payload("/start"), Some(""));
        assert_eq!(start_payload("/start PROMO100001"), Some("PROMO100001"));
        assert_eq!(start_payload("/start@shop_bot  PROMO1 "), Some("PROMO1"));
        assert_eq!(start_payload("/started"), None);
        assert_eq!(start_payload("hello /start"), None);
    }

    #[test]
    fn secrets_differ_by_token_and_organization_and_suit_telegram() {
        let token = "123456789:TEST-fake-token_for-unit-tests";
        let secret = webhook_secret(token, 1);
        assert_eq!(secret.len(), 64);
        assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(secret, webhook_secret(token, 2));
        assert_ne!(secret, webhook_secret("987654321:another-bots-token-xx", 1));
    }

    #[test]
    fn names_are_escaped_for_html() {
        assert_eq!(html("A&B <b>"), "A&amp;B &lt;b&gt;");
    }
}
