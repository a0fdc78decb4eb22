//! The broker ceiling: what RabbitMQ confirms a second for messages exactly like the ones ingest
//! publishes (same body size, headers and properties, persistent, mandatory, to a quorum queue),
//! from K concurrent publishers sharing one confirm channel, as ingest's requests do. No HTTP, no
//! JSON parsing: the best ingest could do.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use loyalty::queue::{self, headers};
use loyalty::receipts::ReceiptMessage;
use serde_json::Value;
use tokio::task::JoinSet;

use crate::cpu::{self, Usage};
use crate::http::Throughput;
use crate::setup::Shop;

async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name("loadgen".into()),
    )
    .await
    .context("connect to RabbitMQ")
}

/// Publishes `count` receipt messages built from `sample` to a scratch quorum queue `queue`,
/// deleted afterwards, with `publishers` concurrent publishers; returns the throughput and the CPU
/// use while publishing.
pub async fn ceiling(
    url: &str,
    queue: &str,
    shop: &Shop,
    sample: &Value,
    (count, publishers): (usize, usize),
    cpus: usize,
) -> anyhow::Result<(Throughput, Option<Usage>)> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    // Declared as the receipts queue is: quorum, its delivery limit and dead-letter route.
    queue::declare_quorum(
        &channel,
        queue,
        Some(&format!("{queue}.dead")),
        queue::REDELIVERY_LIMIT,
    )
    .await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    // Ingest serializes the event it received inside a `ReceiptMessage`; so does this.
    let messages: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let id = format!("ceiling-{i}");
            let mut event = sample.clone();
            event["id"] = Value::String(id.clone());
            event["data"]["id"] = Value::String(format!("ceiling-rc-{i}"));
            let message =
                ReceiptMessage::new(shop.org, shop.integration, chrono::Utc::now(), event);
            Ok((id, serde_json::to_vec(&message)?))
        })
        .collect::<anyhow::Result<_>>()?;
    let messages = Arc::new(messages);
    let next = Arc::new(AtomicUsize::new(0));
    let org = shop.org;

    let cpu = cpu::Sample::now();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..publishers.min(count) {
        let (channel, messages, next) = (channel.clone(), messages.clone(), next.clone());
        let queue = queue.to_owned();
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((id, body)) = messages.get(i) else {
                    break;
                };
                publish(&channel, &queue, id, org, body).await?;
            }
            anyhow::Ok(())
        });
    }
    let mut outcome = Ok(());
    while let Some(done) = tasks.join_next().await {
        if let Err(err) = done.map_err(anyhow::Error::from).and_then(|r| r) {
            outcome = outcome.and(Err(err));
        }
    }
    let elapsed = started.elapsed();
    let usage = cpu.and_then(|c| c.usage(cpus));

    let deleted = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "done".into()).await;
    outcome?;
    let depth = deleted.context("delete the ceiling queue")?;
    if usize::try_from(depth)? != count {
        bail!("the ceiling queue held {depth} messages, {count} were confirmed");
    }
    Ok((Throughput { count, elapsed }, usage))
}

/// One publish as `loyalty::queue::Broker::publish` does it, waiting for the confirm.
async fn publish(
    channel: &Channel,
    queue: &str,
    id: &str,
    org: i64,
    body: &[u8],
) -> anyhow::Result<()> {
    let properties = queue::contract::receipt_properties(id, org);
    let confirm = channel
        .basic_publish(
            "".into(),
            ShortString::from(queue),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirm {
        Confirmation::Ack(None) => Ok(()),
        other => bail!("the broker did not confirm a ceiling message: {other:?}"),
    }
}

/// Empties `queue` (which must exist); returns how many messages it held.
pub async fn purge(url: &str, queue: &str) -> anyhow::Result<u32> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    let purged = channel
        .queue_purge(queue.into(), lapin::options::QueuePurgeOptions::default())
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(purged)
}

/// Messages ready in `queue` (which must exist).
pub async fn depth(url: &str, queue: &str) -> anyhow::Result<u32> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(declared.message_count())
}

/// Publishes `messages` (message id, body) to `queue` as ingest does, for organization `org`.
pub async fn publish_all(
    url: &str,
    queue: &str,
    org: i64,
    messages: &[(String, Vec<u8>)],
) -> anyhow::Result<()> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for (id, body) in messages {
        publish(&channel, queue, id, org, body).await?;
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// The messages in `queue` (which must exist), each with its message id and why it is there (the
/// service's `x-last-error`, else RabbitMQ's `x-death`); they are taken without acknowledgement, so
/// closing the connection puts them back.
pub async fn peek(url: &str, queue: &str) -> anyhow::Result<Vec<(String, Option<String>)>> {
    let conn = connect(url).await?;
    let channel = conn.create_channel().await?;
    let mut found = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), lapin::options::BasicGetOptions::default())
        .await?
    {
        let properties = &message.delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned())
            .unwrap_or_default();
        let why = queue::header(properties, headers::LAST_ERROR)
            .or_else(|| queue::broker_death(properties));
        found.push((id, why));
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(found)
}
