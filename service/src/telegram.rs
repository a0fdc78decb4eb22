//! The Bot API as the services call it (the notifier's `sendMessage`, ingest's bot answers and
//! the bot's registration) and what each answer means, classified once. The token is part of the
//! URL, so no URL is ever logged or put into an error.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

/// How long a `sendMessage` call may take; later, it may or may not have been delivered.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// The bounds of a 429's `retry_after`, in seconds (1 when Telegram gives none).
const RETRY_AFTER_SECS: (u64, u64) = (1, 3600);

/// What Telegram's answer to a call means.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// `ok: true`, with the method's `result`.
    Done(Value),
    /// 429: the whole bot must pause; not a failed attempt.
    RetryAfter(Duration),
    /// 403 (blocked, deactivated, never started) or 400 chat not found: never retry.
    Unreachable(String),
    /// 400 about our message (entities, length): our bug; dead-letter it.
    Rejected(String),
    /// 401 or 404: the organization's bot token is wrong or revoked.
    BadToken(String),
    /// Not delivered (5xx, connection refused): retry with backoff.
    Transient(String),
    /// The request may have reached Telegram (a timeout after sending): never resend blindly.
    Uncertain(String),
}

#[derive(Deserialize)]
struct Reply {
    ok: bool,
    result: Option<Value>,
    error_code: Option<u16>,
    description: Option<String>,
    parameters: Option<Parameters>,
}

#[derive(Deserialize)]
struct Parameters {
    retry_after: Option<u64>,
}

/// A text message in HTML, without link previews.
pub async fn send_message(
    http: &reqwest::Client,
    api_url: &str,
    token: &str,
    chat_id: i64,
    text: &str,
) -> Answer {
    let params = json!({ "chat_id": chat_id, "text": text, "parse_mode": "HTML", "link_preview_options": {"is_disabled": true} });
    call(http, api_url, token, "sendMessage", &params, SEND_TIMEOUT).await
}

/// Calls Bot API `method` with `params` as JSON, waiting at most `timeout`.
pub async fn call(
    http: &reqwest::Client,
    api_url: &str,
    token: &str,
    method: &str,
    params: &Value,
    timeout: Duration,
) -> Answer {
    let url = format!("{}/bot{token}/{method}", api_url.trim_end_matches('/'));
    let sent = http.post(url).json(params).timeout(timeout).send().await;
    let response = match sent {
        Ok(r) => r,
        Err(err) if err.is_connect() => {
            return Answer::Transient(format!("connection failed: {}", err.without_url()));
        }
        Err(err) if err.is_builder() => {
            return Answer::Rejected(format!("request not built: {}", err.without_url()));
        }
        Err(err) => return Answer::Uncertain(format!("no answer: {}", err.without_url())),
    };
    let status = response.status().as_u16();
    let reply: Option<Reply> = response.json().await.ok();
    classify(status, reply)
}

fn classify(status: u16, reply: Option<Reply>) -> Answer {
    let description = reply
        .as_ref()
        .and_then(|r| r.description.clone())
        .unwrap_or_default();
    let code = reply.as_ref().and_then(|r| r.error_code).unwrap_or(status);
    match (code, reply) {
        (
            200,
            Some(Reply {
                ok: true,
                result: Some(result),
                ..
            }),
        ) => Answer::Done(result),
        (429, reply) => {
            let seconds = reply
                .and_then(|r| r.parameters)
                .and_then(|p| p.retry_after)
                .unwrap_or(RETRY_AFTER_SECS.0);
            Answer::RetryAfter(Duration::from_secs(
                seconds.clamp(RETRY_AFTER_SECS.0, RETRY_AFTER_SECS.1),
            ))
        }
        (403, _) => Answer::Unreachable(description),
        (400, _) if description.to_ascii_lowercase().contains("chat not found") => {
            Answer::Unreachable(description)
        }
        (400, _) => Answer::Rejected(description),
        (401 | 404, _) => Answer::BadToken(format!("{code} {description}")),
        (code, _) => Answer::Transient(format!("{code} {description}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(json: serde_json::Value) -> Option<Reply> {
        serde_json::from_value(json).ok()
    }

    #[test]
    fn answers_are_classified_by_code_and_description_prefix() {
        assert_eq!(
            classify(200, reply(json!({"ok": true, "result": {"message_id": 7}}))),
            Answer::Done(json!({"message_id": 7}))
        );
        assert_eq!(
            classify(
                429,
                reply(
                    json!({"ok": false, "error_code": 429, "description": "Too Many Requests: retry after 35", "parameters": {"retry_after": 35}})
                )
            ),
            Answer::RetryAfter(Duration::from_secs(35))
        );
        assert!(matches!(
            classify(
                403,
                reply(
                    json!({"ok": false, "error_code": 403, "description": "Forbidden: bot was blocked by the user"})
                )
            ),
            Answer::Unreachable(_)
        ));
        assert!(matches!(
            classify(
                400,
                reply(
                    json!({"ok": false, "error_code": 400, "description": "Bad Request: chat not found"})
                )
            ),
            Answer::Unreachable(_)
        ));
        assert!(matches!(
            classify(
                400,
                reply(
                    json!({"ok": false, "error_code": 400, "description": "Bad Request: can't parse entities"})
                )
            ),
            Answer::Rejected(_)
        ));
        assert!(matches!(
            classify(
                401,
                reply(json!({"ok": false, "error_code": 401, "description": "Unauthorized"}))
            ),
            Answer::BadToken(_)
        ));
        assert!(matches!(classify(502, None), Answer::Transient(_)));
    }
}
