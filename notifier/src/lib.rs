//! `notifier`: Telegram messages about accruals. Two loops:
//! - the relay publishes outbox rows (written in the ledger's transactions) to the `notifications`
//!   queue and marks them published only after the broker confirmed, so a broker that is down when a
//!   worker commits delays a message but never loses it;
//! - the sender consumes the queue and calls `sendMessage`, within Telegram's limits (≈1 message a
//!   second per chat, ≈30 per bot; a 429 pauses the bot for `retry_after`), recording each
//!   notification's state so a restart never resends what was sent.

pub mod telegram;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use futures::StreamExt;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, message::Delivery};
use loyalty::notifications::{default_template, format_amount, render};
use loyalty::queue::{self, Broker, MAX_ATTEMPTS, PublishError, Stream, headers};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::sync::{Mutex, Semaphore};

use crate::telegram::Answer;

/// Configuration, from the environment (see `notifier --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "notifier", about = "Sends Telegram messages about accruals")]
pub struct Config {
    #[command(flatten)]
    pub backends: loyalty_service::config::Backends,
    #[command(flatten)]
    pub secrets: loyalty_service::config::Secrets,
    /// Telegram Bot API base URL.
    #[arg(
        long,
        env = "TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub telegram_api_url: String,
    /// Where `GET /metrics` is served.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9101")]
    pub metrics_addr: std::net::SocketAddr,
    /// Messages a second per bot.
    #[arg(long, env = "TELEGRAM_BOT_RATE", default_value_t = 30)]
    pub bot_rate: u32,
    /// Messages a second per chat.
    #[arg(long, env = "TELEGRAM_CHAT_RATE", default_value_t = 1)]
    pub chat_rate: u32,
}

/// The message the relay publishes: only the outbox row's id; the sender reloads the rest.
#[derive(Debug, Serialize, Deserialize)]
pub struct NotificationMessage {
    pub outbox_id: i64,
}

/// What became of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Sent {
        message_id: i64,
    },
    /// Already handled by an earlier delivery of the same message.
    Duplicate,
    Skipped(String),
    Unreachable(String),
    Retrying(String),
    Dead(String),
    /// Possibly delivered by an attempt that did not finish; left for an operator, not resent.
    Uncertain(String),
}

/// A notification taken for sending.
struct Claimed {
    org_id: i64,
    customer_id: i64,
    token: String,
    chat_id: i64,
    text: String,
    trace: String,
}

impl Delivered {
    /// The outcome's name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Delivered::Sent { .. } => "sent",
            Delivered::Duplicate => "duplicate",
            Delivered::Skipped(_) => "skipped",
            Delivered::Unreachable(_) => "unreachable",
            Delivered::Retrying(_) => "retrying",
            Delivered::Dead(_) => "dead",
            Delivered::Uncertain(_) => "uncertain",
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    db: PgPool,
    broker: Arc<Broker>,
    http: reqwest::Client,
    api_url: String,
    per_bot: Arc<DefaultKeyedRateLimiter<String>>,
    per_chat: Arc<DefaultKeyedRateLimiter<(String, i64)>>,
    /// Bots Telegram asked to wait (429), until when.
    paused: Arc<Mutex<HashMap<String, tokio::time::Instant>>>,
    /// Open the organizations' sealed bot tokens.
    token_keys: Arc<loyalty::crypto::TokenKeys>,
}

#[derive(sqlx::FromRow)]
struct Pending {
    status: String,
    org_id: i64,
    customer_id: i64,
    kind: String,
    payload: serde_json::Value,
    trace_id: Option<String>,
    telegram_id: Option<i64>,
    unreachable: bool,
    bonuses: Decimal,
    referral_bonuses: Decimal,
    shop: String,
    #[sqlx(flatten)]
    token: loyalty::orgs::StoredToken,
    currency_symbol: String,
    templates: serde_json::Value,
}

impl Notifier {
    pub fn new(
        db: PgPool,
        broker: Arc<Broker>,
        api_url: String,
        bot_rate: u32,
        chat_rate: u32,
        token_keys: loyalty::crypto::TokenKeys,
    ) -> Self {
        let rate = |n: u32| Quota::per_second(NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN));
        Self {
            db,
            broker,
            http: reqwest::Client::new(),
            api_url,
            per_bot: Arc::new(RateLimiter::keyed(rate(bot_rate))),
            per_chat: Arc::new(RateLimiter::keyed(rate(chat_rate))),
            paused: Arc::new(Mutex::new(HashMap::new())),
            token_keys: Arc::new(token_keys),
        }
    }

    /// Publishes up to 500 unpublished outbox rows; returns how many. Rows are marked published
    /// in the same transaction, after the broker confirmed each; on any failure none is marked
    /// and they go again (the sender tells a repeat from a first time).
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "select id, org_id from outbox where published_at is null order by id limit 500 for update skip locked",
        )
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let queue = self.broker.topology().main(Stream::Notifications);
        let publishes = rows.iter().map(|(id, org)| {
            let body =
                serde_json::to_vec(&NotificationMessage { outbox_id: *id }).unwrap_or_default();
            let properties = BasicProperties::default()
                .with_message_id(ShortString::from(format!("outbox-{id}")))
                .with_headers(queue::header_table(&[
                    (headers::ORG, org.to_string()),
                    (headers::ATTEMPT, "1".into()),
                ]));
            let queue = queue.clone();
            async move { self.broker.publish(&queue, &body, properties).await }
        });
        for result in futures::future::join_all(publishes).await {
            result?;
        }
        sqlx::query("update outbox set published_at = now() where id = any($1)")
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Sends the notification a message names, or records why not. Returns an error only when a
    /// failed message could not be passed on (it must then stay unacked).
    pub async fn process(
        &self,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<Delivered, PublishError> {
        let attempt = queue::attempt_of(properties);
        let Ok(message) = serde_json::from_slice::<NotificationMessage>(body) else {
            let error = "not a notification message".to_owned();
            self.broker
                .pass_on(
                    Stream::Notifications,
                    body,
                    properties,
                    attempt,
                    &error,
                    true,
                )
                .await?;
            return Ok(Delivered::Dead(error));
        };
        let id = message.outbox_id;
        let prepared = match self.claim(id).await {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(done)) => {
                metrics::counter!("loyalty_notifications_total", "outcome" => done.label())
                    .increment(1);
                return Ok(done);
            }
            Err(err) => {
                let error = format!("database: {err}");
                return self
                    .retry_or_dead(id, body, properties, attempt, error, false)
                    .await;
            }
        };
        let Claimed {
            org_id,
            customer_id,
            token,
            chat_id,
            text,
            trace,
        } = prepared;
        let answer = loop {
            self.wait_for_turn(&token, chat_id).await;
            let started = std::time::Instant::now();
            let answer =
                telegram::send_message(&self.http, &self.api_url, &token, chat_id, &text).await;
            metrics::histogram!("loyalty_telegram_seconds").record(started.elapsed().as_secs_f64());
            match answer {
                Answer::RetryAfter(wait) => {
                    metrics::counter!("loyalty_notifications_throttled_total").increment(1);
                    tracing::warn!(outbox = id, trace = %trace, ?wait, "Telegram asked the bot to wait");
                    self.paused
                        .lock()
                        .await
                        .insert(token.clone(), tokio::time::Instant::now() + wait);
                }
                other => break other,
            }
        };
        let failure = match answer {
            Answer::Sent { message_id } => {
                self.finish(id, "sent", None, Some(message_id)).await;
                Ok(Delivered::Sent { message_id })
            }
            Answer::Unreachable(reason) => {
                self.finish(id, "unreachable", Some(&reason), None).await;
                self.mark_unreachable(org_id, customer_id, &reason).await;
                Ok(Delivered::Unreachable(reason))
            }
            Answer::Uncertain(reason) => {
                self.finish(id, "uncertain", Some(&reason), None).await;
                Ok(Delivered::Uncertain(reason))
            }
            Answer::Rejected(reason) => {
                Err((format!("Telegram refused the message: {reason}"), true))
            }
            Answer::BadToken(reason) => {
                tracing::error!(
                    outbox = id,
                    "the organization's bot token was refused by Telegram"
                );
                Err((format!("bot token refused: {reason}"), false))
            }
            Answer::Transient(reason) => Err((reason, false)),
            // The loop above waits out every 429; should one come through, it is retried later.
            Answer::RetryAfter(wait) => Err((format!("throttled for {wait:?}"), false)),
        };
        let outcome = match failure {
            Ok(outcome) => outcome,
            Err((error, permanent)) => {
                return self
                    .retry_or_dead(id, body, properties, attempt, error, permanent)
                    .await;
            }
        };
        tracing::info!(outbox = id, trace = %trace, outcome = ?outcome, "notification handled");
        metrics::counter!("loyalty_notifications_total", "outcome" => outcome.label()).increment(1);
        Ok(outcome)
    }

    /// Takes the notification for sending: `pending`/`retrying` → `sending`, committed before the
    /// call to Telegram. A row found `sending` was handed to Telegram by an attempt that never
    /// recorded its outcome: it may have been delivered, so it is marked uncertain, not resent.
    async fn claim(&self, id: i64) -> Result<Result<Claimed, Delivered>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let row: Option<Pending> = sqlx::query_as(
            "select o.status, o.org_id, o.customer_id, o.kind, o.payload, o.trace_id, c.telegram_id,
                    c.telegram_unreachable_at is not null as unreachable, c.bonuses, c.referral_bonuses,
                    g.name as shop, g.id, g.telegram_bot_token, g.telegram_bot_token_key, g.telegram_bot_token_sealed,
                    g.currency_symbol,
                    g.notification_templates as templates
             from outbox o
             join customers c on c.org_id = o.org_id and c.id = o.customer_id
             join organizations g on g.id = o.org_id
             where o.id = $1
             for update of o",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(Err(Delivered::Duplicate));
        };
        // A token this process cannot open fails the attempt (retried, then dead for a replay once
        // TOKEN_KEYS is right); the error names the key, never the token.
        let bot_token = row.token.open(&self.token_keys)?;
        let settle = |status: &'static str, reason: String| (status, reason);
        let verdict = match row.status.as_str() {
            // A dead one comes back only when an operator replays it.
            "pending" | "retrying" | "dead" => None,
            "sending" => Some(settle(
                "uncertain",
                "redelivered while being sent: it may have been delivered".into(),
            )),
            _ => return Ok(Err(Delivered::Duplicate)),
        };
        let verdict = verdict.or_else(|| match (&row.telegram_id, &bot_token) {
            (None, _) => Some(settle("skipped", "the customer has no telegram_id".into())),
            (_, None) => Some(settle(
                "skipped",
                "the organization has no Telegram bot token".into(),
            )),
            _ if row.unreachable => Some(settle(
                "skipped",
                "the customer is unreachable on Telegram".into(),
            )),
            _ => None,
        });
        if let Some((status, reason)) = verdict {
            sqlx::query(
                "update outbox set status = $2, last_error = $3, updated_at = now() where id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(&reason)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            tracing::info!(outbox = id, status, reason = %reason, "notification not sent");
            return Ok(Err(if status == "uncertain" {
                Delivered::Uncertain(reason)
            } else {
                Delivered::Skipped(reason)
            }));
        }
        sqlx::query("update outbox set status = 'sending', attempts = attempts + 1, updated_at = now() where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let text = text_of(&row);
        let (Some(chat), Some(token)) = (row.telegram_id, bot_token) else {
            return Ok(Err(Delivered::Duplicate));
        };
        Ok(Ok(Claimed {
            org_id: row.org_id,
            customer_id: row.customer_id,
            token,
            chat_id: chat,
            text,
            trace: row.trace_id.unwrap_or_default(),
        }))
    }

    /// Waits for Telegram's limits: a paused bot, then the bot's and the chat's rates.
    async fn wait_for_turn(&self, token: &str, chat_id: i64) {
        let until = self.paused.lock().await.get(token).copied();
        if let Some(until) = until {
            tokio::time::sleep_until(until).await;
        }
        self.per_bot.until_key_ready(&token.to_owned()).await;
        self.per_chat
            .until_key_ready(&(token.to_owned(), chat_id))
            .await;
    }

    /// Telegram refused the chat for good: the customer is not written to again until they come
    /// back through the Mini App.
    async fn mark_unreachable(&self, org_id: i64, customer_id: i64, reason: &str) {
        let marked = sqlx::query(
            "update customers set telegram_unreachable_at = now(), telegram_unreachable_reason = $3
             where org_id = $1 and id = $2",
        )
        .bind(org_id)
        .bind(customer_id)
        .bind(reason)
        .execute(&self.db)
        .await;
        if let Err(err) = marked {
            tracing::error!(customer = customer_id, error = %err, "could not mark the customer unreachable");
        }
    }

    async fn finish(&self, id: i64, status: &str, error: Option<&str>, message_id: Option<i64>) {
        // The message is out: a dropped database connection must not leave its row 'sending', so
        // recording is retried for a few seconds.
        let record = || {
            sqlx::query(
                "update outbox set status = $2, last_error = $3, telegram_message_id = $4,
                        sent_at = case when $2 = 'sent' then now() else sent_at end, updated_at = now()
                 where id = $1",
            )
            .bind(id)
            .bind(status)
            .bind(error)
            .bind(message_id)
            .execute(&self.db)
        };
        let recorded = record
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(50))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(8)
                    .with_jitter(),
            )
            .notify(|err, wait| tracing::warn!(outbox = id, error = %err, ?wait, "recording a notification's outcome failed; retrying"))
            .await;
        if let Err(err) = recorded {
            // The row stays 'sending': a redelivery marks it uncertain instead of resending.
            tracing::error!(outbox = id, error = %err, "could not record a notification's outcome");
        }
    }

    async fn retry_or_dead(
        &self,
        id: i64,
        body: &[u8],
        properties: &BasicProperties,
        attempt: u32,
        error: String,
        permanent: bool,
    ) -> Result<Delivered, PublishError> {
        let dead = permanent || attempt >= MAX_ATTEMPTS;
        self.broker
            .pass_on(
                Stream::Notifications,
                body,
                properties,
                attempt,
                &error,
                dead,
            )
            .await?;
        self.finish(
            id,
            if dead { "dead" } else { "retrying" },
            Some(&error),
            None,
        )
        .await;
        tracing::warn!(outbox = id, attempt, dead, error = %error, "notification not delivered");
        let delivered = if dead {
            Delivered::Dead(error)
        } else {
            Delivered::Retrying(error)
        };
        metrics::counter!("loyalty_notifications_total", "outcome" => delivered.label())
            .increment(1);
        Ok(delivered)
    }

    /// Relays and sends until `shutdown` resolves.
    pub async fn run(
        &self,
        concurrency: u16,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let relay = {
            let this = self.clone();
            tokio::spawn(async move {
                loop {
                    match this.relay_once().await {
                        Ok(n) if n > 0 => continue,
                        Ok(_) => {}
                        Err(err) => tracing::warn!(error = %err, "outbox relay failed; retrying"),
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let permits = Arc::new(Semaphore::new(usize::from(concurrency.max(1))));
        let result = async {
            loop {
                let connect = || self.broker.connect();
                let conn = tokio::select! {
                    conn = connect.retry(ExponentialBuilder::default().with_max_delay(Duration::from_secs(10)).without_max_times().with_jitter())
                        .notify(|err, wait| tracing::warn!(error = %err, ?wait, "RabbitMQ not reachable; retrying")) => conn?,
                    () = &mut shutdown => return anyhow::Ok(()),
                };
                let channel = conn.create_channel().await?;
                channel.basic_qos(concurrency.max(1), BasicQosOptions::default()).await?;
                let tag = ShortString::from(format!("notifier-{}", std::process::id()));
                let queue = self.broker.topology().main(Stream::Notifications);
                let mut consumer = channel.basic_consume(queue.as_str().into(), tag.clone(), BasicConsumeOptions::default(), FieldTable::default()).await?;
                loop {
                    let next = tokio::select! {
                        next = consumer.next() => next,
                        () = &mut shutdown => {
                            let _ = channel.basic_cancel(tag.clone(), BasicCancelOptions::default()).await;
                            let _ = permits.acquire_many(u32::from(concurrency.max(1))).await;
                            let _ = conn.close(200, "shutdown".into()).await;
                            return Ok(());
                        }
                    };
                    match next {
                        Some(Ok(delivery)) => {
                            let permit = permits.clone().acquire_owned().await?;
                            let this = self.clone();
                            tokio::spawn(async move {
                                this.handle(delivery).await;
                                drop(permit);
                            });
                        }
                        Some(Err(err)) => {
                            tracing::warn!(error = %err, "consumer lost its connection; reconnecting");
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
        .await;
        relay.abort();
        result
    }

    async fn handle(&self, delivery: Delivery) {
        match self.process(&delivery.data, &delivery.properties).await {
            Ok(_) => {
                if let Err(err) = delivery.ack(BasicAckOptions::default()).await {
                    tracing::warn!(error = %err, "ack failed; the redelivery will be a duplicate");
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not pass a failed notification on; it will be redelivered")
            }
        }
    }
}

/// The message text: the organization's template for the kind (or the default), filled in.
fn text_of(row: &Pending) -> String {
    let template = row
        .templates
        .get(&row.kind)
        .and_then(|t| t.as_str())
        .unwrap_or_else(|| default_template(&row.kind));
    let amount = |key: &str| -> String {
        row.payload
            .get(key)
            .and_then(|v| v.as_str())
            .and_then(|s| s.parse::<Decimal>().ok())
            .map(format_amount)
            .unwrap_or_default()
    };
    let values = BTreeMap::from([
        ("amount", amount("amount")),
        ("returned", amount("returned")),
        ("taken", amount("taken")),
        ("balance", format_amount(row.bonuses)),
        ("referral_balance", format_amount(row.referral_bonuses)),
        (
            "invoice",
            row.payload
                .get("invoice_id")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        ),
        ("shop", row.shop.clone()),
        (
            "promo_code",
            row.payload
                .get("promo_code")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .to_owned(),
        ),
        ("currency", row.currency_symbol.clone()),
    ]);
    render(template, &values)
}

/// Connects, migrates, declares the topology, relays and sends until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let db = config.backends.database(8).await?;
    // Refuses to start unable to read the bot tokens (ingest is the one that reseals them).
    loyalty::orgs::prepare_bot_tokens(&db, &config.secrets.token_keys, false).await?;
    let broker = Arc::new(config.backends.broker());
    tokio::spawn(loyalty_service::telemetry::serve_metrics(
        config.metrics_addr,
    ));
    Notifier::new(
        db,
        broker,
        config.telegram_api_url.clone(),
        config.bot_rate,
        config.chat_rate,
        config.secrets.token_keys,
    )
    .run(16, loyalty_service::shutdown::signal())
    .await
}
