//! `notifier`: Telegram messages about accruals. Two loops:
//! - the relay publishes outbox rows (written in the ledger's transactions) to the `notifications`
//!   queue and marks them published only after the broker confirmed, so a broker that is down when a
//!   worker commits delays a message but never loses it;
//! - the sender, a step of the queue's consumer, calls `sendMessage` within Telegram's limits
//!   (≈1 message a second per chat, ≈30 per bot; a 429 pauses the bot for `retry_after`), recording
//!   each notification's state so a restart never resends what was sent.

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use loyalty::customers::{self, TelegramRecipient};
use loyalty::notifications::{
    self, NotificationStatus, Queued, default_template, format_amount, render,
};
use loyalty::orgs::{self, TelegramSender};
use loyalty::queue::contract::{self, NotificationMessage};
use loyalty::queue::{Broker, Consumer, Failure, Settings, Step, Stream, Verdict};
use rust_decimal::Decimal;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tracing::{Instrument, Span};

use loyalty_service::telegram::{self, Answer};

/// Notifications sent at once (each waits for Telegram's limits and answer).
pub const DEFAULT_CONCURRENCY: u16 = 16;
/// Outbox rows the relay publishes in one transaction.
pub const DEFAULT_RELAY_BATCH: u16 = 500;
/// How long the relay waits when it found nothing to publish (or failed).
pub const DEFAULT_RELAY_INTERVAL_MS: u64 = 200;
/// PostgreSQL connections of one notifier: the relay's and the senders' short transactions.
const DATABASE_CONNECTIONS: u32 = 8;
/// Recording an outcome after Telegram answered is retried, from this delay…
const RECORD_FIRST_DELAY: Duration = Duration::from_millis(50);
/// …up to this delay between tries…
const RECORD_MAX_DELAY: Duration = Duration::from_secs(2);
/// …this many times (some seconds in all).
const RECORD_RETRIES: usize = 8;

/// Configuration, from the environment (see `notifier --help`).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "notifier",
    about = "Sends Telegram messages about accruals",
    after_help = loyalty_service::telemetry::LOG_HELP
)]
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
    /// Notifications sent at once (also the consumer's prefetch).
    #[arg(long, env = "NOTIFIER_CONCURRENCY", default_value_t = DEFAULT_CONCURRENCY)]
    pub concurrency: u16,
    /// Outbox rows the relay publishes in one transaction.
    #[arg(long, env = "NOTIFIER_RELAY_BATCH", default_value_t = DEFAULT_RELAY_BATCH)]
    pub relay_batch: u16,
    /// Milliseconds the relay waits when the outbox had nothing to publish.
    #[arg(long, env = "NOTIFIER_RELAY_INTERVAL_MS", default_value_t = DEFAULT_RELAY_INTERVAL_MS)]
    pub relay_interval_ms: u64,
}

/// How the relay moves the outbox to the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relay {
    /// Rows published in one transaction.
    pub batch: u16,
    /// The pause when there was nothing to publish (or publishing failed).
    pub interval: Duration,
}

impl Default for Relay {
    fn default() -> Self {
        Self {
            batch: DEFAULT_RELAY_BATCH,
            interval: Duration::from_millis(DEFAULT_RELAY_INTERVAL_MS),
        }
    }
}

/// What became of a notification the sender handled (failures are the consumer's `Handled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Sent {
        message_id: i64,
    },
    /// Already handled by an earlier delivery of the same message.
    Duplicate,
    Skipped(String),
    Unreachable(String),
    /// Possibly delivered by an attempt that did not finish; left for an operator, not resent.
    Uncertain(String),
}

impl Delivered {
    /// The outcome's name, for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Delivered::Sent { .. } => "sent",
            Delivered::Duplicate => "duplicate",
            Delivered::Skipped(_) => "skipped",
            Delivered::Unreachable(_) => "unreachable",
            Delivered::Uncertain(_) => "uncertain",
        }
    }
}

/// A notification taken for sending.
struct Claimed {
    org_id: i64,
    customer_id: i64,
    token: String,
    chat_id: i64,
    text: String,
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
    relay: Relay,
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
            relay: Relay::default(),
        }
    }

    /// The relay's batch and pause (the defaults otherwise).
    pub fn relaying(mut self, relay: Relay) -> Self {
        self.relay = relay;
        self
    }

    /// Publishes up to a relay batch of unpublished outbox rows; returns how many. Rows are marked
    /// published in the same transaction, after the broker confirmed each; on any failure none is
    /// marked and they go again (the sender tells a repeat from a first time).
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut tx = self.db.begin().await?;
        let rows = notifications::unpublished(&mut tx, i64::from(self.relay.batch.max(1))).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let queue = self.broker.topology().main(Stream::Notifications);
        let publishes = rows.iter().map(|row| {
            let message = NotificationMessage { outbox_id: row.id };
            let properties =
                contract::notification_properties(&message, row.org_id, row.trace_id.as_deref());
            let queue = &queue;
            async move {
                let body = serde_json::to_vec(&message)?;
                self.broker.publish(queue, &body, properties).await?;
                anyhow::Ok(())
            }
        });
        for result in futures::future::join_all(publishes).await {
            result?;
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        notifications::mark_published(&mut tx, &ids).await?;
        tx.commit().await?;
        Ok(rows.len())
    }

    /// Relays until aborted.
    async fn relay_forever(self) {
        loop {
            match self.relay_once().await {
                Ok(n) if n > 0 => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "outbox relay failed; retrying"),
            }
            tokio::time::sleep(self.relay.interval).await;
        }
    }

    /// The sender as a consumer of the notifications queue, `concurrency` messages at once.
    pub fn consumer(&self, concurrency: u16) -> Consumer<Notifier> {
        Consumer::new(
            self.broker.clone(),
            self.clone(),
            Settings {
                concurrency,
                batch: 1,
            },
        )
    }

    /// Relays and sends until `shutdown` resolves.
    pub async fn run(
        &self,
        concurrency: u16,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let relay = tokio::spawn(self.clone().relay_forever());
        let result = self.consumer(concurrency).run(shutdown).await;
        relay.abort();
        result
    }

    /// Sends the notification, or says why not.
    async fn deliver(&self, id: i64) -> Verdict<Delivered> {
        let claimed = match self.claim(id).await {
            Ok(Ok(claimed)) => claimed,
            Ok(Err(done)) => {
                metrics::counter!("loyalty_notifications_total", "outcome" => done.label())
                    .increment(1);
                return Verdict::Done(done);
            }
            Err(err) => return Verdict::transient(format!("database: {err}")),
        };
        let answer = loop {
            self.wait_for_turn(&claimed.token, claimed.chat_id).await;
            let started = std::time::Instant::now();
            let answer = telegram::send_message(
                &self.http,
                &self.api_url,
                &claimed.token,
                claimed.chat_id,
                &claimed.text,
            )
            .await;
            metrics::histogram!("loyalty_telegram_seconds").record(started.elapsed().as_secs_f64());
            match answer {
                Answer::RetryAfter(wait) => {
                    metrics::counter!("loyalty_notifications_throttled_total").increment(1);
                    tracing::warn!(outbox = id, ?wait, "Telegram asked the bot to wait");
                    self.paused
                        .lock()
                        .await
                        .insert(claimed.token.clone(), tokio::time::Instant::now() + wait);
                }
                other => break other,
            }
        };
        let outcome = match answer {
            // Telegram always says which message it made; without it, delivery is unknown.
            Answer::Done(sent) => {
                match sent.get("message_id").and_then(serde_json::Value::as_i64) {
                    Some(message_id) => {
                        self.finish(id, NotificationStatus::Sent, None, Some(message_id))
                            .await;
                        Delivered::Sent { message_id }
                    }
                    None => {
                        let reason = "sendMessage answered ok without a message_id".to_owned();
                        self.finish(id, NotificationStatus::Uncertain, Some(&reason), None)
                            .await;
                        Delivered::Uncertain(reason)
                    }
                }
            }
            Answer::Unreachable(reason) => {
                self.finish(id, NotificationStatus::Unreachable, Some(&reason), None)
                    .await;
                self.mark_unreachable(claimed.org_id, claimed.customer_id, &reason)
                    .await;
                Delivered::Unreachable(reason)
            }
            Answer::Uncertain(reason) => {
                self.finish(id, NotificationStatus::Uncertain, Some(&reason), None)
                    .await;
                Delivered::Uncertain(reason)
            }
            Answer::Rejected(reason) => {
                return Verdict::permanent(format!("Telegram refused the message: {reason}"));
            }
            Answer::BadToken(reason) => {
                tracing::error!(
                    outbox = id,
                    "the organization's bot token was refused by Telegram"
                );
                return Verdict::transient(format!("bot token refused: {reason}"));
            }
            Answer::Transient(reason) => return Verdict::transient(reason),
            // The loop above waits out every 429; should one come through, it is retried later.
            Answer::RetryAfter(wait) => {
                return Verdict::transient(format!("throttled for {wait:?}"));
            }
        };
        tracing::info!(outbox = id, outcome = ?outcome, "notification handled");
        metrics::counter!("loyalty_notifications_total", "outcome" => outcome.label()).increment(1);
        Verdict::Done(outcome)
    }

    /// Takes the notification for sending: `pending`/`retrying` → `sending`, committed before the
    /// call to Telegram. A row found `sending` was handed to Telegram by an attempt that never
    /// recorded its outcome: it may have been delivered, so it is marked uncertain, not resent.
    async fn claim(&self, id: i64) -> loyalty::Result<Result<Claimed, Delivered>> {
        let mut tx = self.db.begin().await?;
        let Some(queued) = notifications::lock(&mut tx, id).await? else {
            return Ok(Err(Delivered::Duplicate));
        };
        let recipient =
            customers::telegram_recipient(&mut tx, queued.org_id, queued.customer_id).await?;
        let sender = orgs::telegram_sender(&mut tx, queued.org_id).await?;
        let (Some(recipient), Some(sender)) = (recipient, sender) else {
            return Ok(Err(Delivered::Duplicate));
        };
        // A token this process cannot open fails the attempt (retried, then dead for a replay once
        // TOKEN_KEYS is right); the error names the key, never the token.
        let bot_token = sender.token.open(&self.token_keys)?;
        let verdict = match queued.status {
            NotificationStatus::Sending => Some((
                NotificationStatus::Uncertain,
                "redelivered while being sent: it may have been delivered",
            )),
            status if status.may_send() => None,
            _ => return Ok(Err(Delivered::Duplicate)),
        };
        let unsendable = match (&recipient.telegram_id, &bot_token) {
            (None, _) => Some("the customer has no telegram_id"),
            (_, None) => Some("the organization has no Telegram bot token"),
            _ if recipient.unreachable => Some("the customer is unreachable on Telegram"),
            _ => None,
        };
        let verdict = verdict.or(unsendable.map(|reason| (NotificationStatus::Skipped, reason)));
        if let Some((status, reason)) = verdict {
            notifications::record(&mut tx, id, status, Some(reason), None).await?;
            tx.commit().await?;
            tracing::info!(
                outbox = id,
                status = status.as_str(),
                reason,
                "notification not sent"
            );
            return Ok(Err(if status == NotificationStatus::Uncertain {
                Delivered::Uncertain(reason.to_owned())
            } else {
                Delivered::Skipped(reason.to_owned())
            }));
        }
        notifications::start_sending(&mut tx, id).await?;
        tx.commit().await?;
        let text = text_of(&queued, &recipient, &sender);
        let (Some(chat_id), Some(token)) = (recipient.telegram_id, bot_token) else {
            return Ok(Err(Delivered::Duplicate));
        };
        Ok(Ok(Claimed {
            org_id: queued.org_id,
            customer_id: queued.customer_id,
            token,
            chat_id,
            text,
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
        let marked = async {
            let mut conn = self.db.acquire().await?;
            customers::mark_telegram_unreachable(&mut conn, org_id, customer_id, reason).await
        };
        if let Err(err) = marked.await {
            tracing::error!(customer = customer_id, error = %err, "could not mark the customer unreachable");
        }
    }

    /// Records a notification's state. The message may be out: a dropped database connection
    /// must not leave its row `sending`, so recording is retried for a few seconds.
    async fn finish(
        &self,
        id: i64,
        status: NotificationStatus,
        error: Option<&str>,
        message_id: Option<i64>,
    ) {
        let record = || async {
            let mut conn = self.db.acquire().await?;
            notifications::record(&mut conn, id, status, error, message_id).await
        };
        let recorded = record
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(RECORD_FIRST_DELAY)
                    .with_max_delay(RECORD_MAX_DELAY)
                    .with_max_times(RECORD_RETRIES)
                    .with_jitter(),
            )
            .notify(|err, wait| tracing::warn!(outbox = id, error = %err, ?wait, "recording a notification's outcome failed; retrying"))
            .await;
        if let Err(err) = recorded {
            // The row stays 'sending': a redelivery marks it uncertain instead of resending.
            tracing::error!(outbox = id, error = %err, "could not record a notification's outcome");
        }
    }
}

impl Step for Notifier {
    type Message = NotificationMessage;
    type Done = Delivered;
    const STREAM: Stream = Stream::Notifications;
    const NAME: &'static str = "notifier";

    fn decode(&self, body: &[u8]) -> Result<NotificationMessage, String> {
        serde_json::from_slice(body).map_err(|_| "not a notification message".to_owned())
    }

    async fn process(
        &self,
        messages: &[NotificationMessage],
        spans: &[Span],
    ) -> Vec<Verdict<Delivered>> {
        let sends = messages
            .iter()
            .zip(spans)
            .map(|(message, span)| self.deliver(message.outbox_id).instrument(span.clone()));
        futures::future::join_all(sends).await
    }

    async fn failed(&self, message: &NotificationMessage, failure: &Failure) {
        let status = if failure.dead {
            NotificationStatus::Dead
        } else {
            NotificationStatus::Retrying
        };
        self.finish(message.outbox_id, status, Some(&failure.error), None)
            .await;
    }
}

/// The message text: the organization's template for the kind (or the default), filled in.
fn text_of(queued: &Queued, recipient: &TelegramRecipient, sender: &TelegramSender) -> String {
    let template = sender
        .notification_templates
        .get(queued.kind.as_str())
        .and_then(|t| t.as_str())
        .unwrap_or_else(|| default_template(queued.kind));
    let text = |key: &str| -> String {
        queued
            .payload
            .get(key)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    let amount = |key: &str| -> String {
        text(key)
            .parse::<Decimal>()
            .map(format_amount)
            .unwrap_or_default()
    };
    let values = BTreeMap::from([
        ("amount", amount("amount")),
        ("returned", amount("returned")),
        ("taken", amount("taken")),
        ("balance", format_amount(recipient.bonuses)),
        (
            "referral_balance",
            format_amount(recipient.referral_bonuses),
        ),
        ("invoice", text("invoice_id")),
        ("shop", sender.name.clone()),
        ("promo_code", text("promo_code")),
        ("currency", sender.currency_symbol.clone()),
        ("date", text("date")),
        ("tier", text("tier")),
        ("percentage", text("percentage")),
    ]);
    render(template, &values)
}

/// Connects, migrates, declares the topology, relays and sends until SIGTERM or Ctrl-C.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let db = config.backends.database(DATABASE_CONNECTIONS).await?;
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
    .relaying(Relay {
        batch: config.relay_batch,
        interval: Duration::from_millis(config.relay_interval_ms),
    })
    .run(config.concurrency, loyalty_service::shutdown::signal())
    .await
}
