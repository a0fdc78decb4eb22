//! The cash registers' side: receipts in the POS's shape, posted as fast as K keep-alive clients
//! go (throughput) or at a fixed rate (latency). Every answer must be a 200.
//!
//! The bulk POSTs go through `wrk` (see `crate::wrk`) when it is installed, since a client in this
//! process competes with ingest for the CPU; the reqwest clients here are the fallback, and post
//! the paced phase, whose load is light.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::setup::Bill;

/// `count` operations in `elapsed`.
#[derive(Debug, Clone, Copy)]
pub struct Throughput {
    pub count: usize,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.count as f64 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// What posted the bulk receipts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HttpClient {
    /// `wrk`, a separate process (its CPU is `child_process_cores`).
    Wrk,
    /// reqwest clients on this process's runtime, next to ingest.
    Reqwest,
}

impl HttpClient {
    pub fn name(self) -> &'static str {
        match self {
            Self::Wrk => "wrk",
            Self::Reqwest => "reqwest",
        }
    }
}

/// The bulk POSTs as their client saw them.
#[derive(Debug, Clone, Copy)]
pub struct Bulk {
    /// Receipts answered 200, in the client's time from the first POST to the last answer.
    pub throughput: Throughput,
    pub client: HttpClient,
    /// `wrk`'s threads; the reqwest clients are tasks on this process's runtime.
    pub threads: Option<usize>,
    pub connections: usize,
    /// The POST's answer time.
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
}

/// The paced phase as the registers saw it.
#[derive(Debug, Clone, Copy)]
pub struct Paced {
    pub sent: usize,
    /// The rate actually achieved.
    pub rate: f64,
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
}

/// A `ReceiptCreated` event in the shape the POS sends (as the end-to-end tests build it), paying
/// `bill` in full.
pub fn receipt_event(event_id: &str, receipt_id: &str, bill: Bill) -> Value {
    let total = bill.total;
    json!({
        "id": event_id,
        "type": "ReceiptCreated",
        "version": 2,
        "userId": "01-000000009264720",
        "timestamp": 1773230494949_i64,
        "data": {
            "id": receipt_id,
            "type": "SELL",
            "items": [{"id": "521", "tax": 0, "name": "Товар", "price": total, "discount": 0, "itemType": "NORMAL",
                       "quantity": 1, "sumPrice": total, "costPrice": 0, "taxPercent": 0, "measureName": "Штука"}],
            "extras": {"billId": bill.id.to_string(), "prepayment": 0, "settlementMethod": "FullSettlement"},
            "shiftId": "19",
            "storeId": "20240116-907B-400D-80BA-5B1712F12B91",
            "dateTime": "2026-03-11T12:01:32.000Z",
            "deviceId": "20260123-D77D-40E1-80FB-5A10E3AF19CA",
            "totalTax": 0,
            "infoCheck": false,
            "employeeId": "20260119-3181-4054-809F-A325514A1A6C",
            "totalAmount": total,
            "paymentSource": "PAY_CARD",
            "totalDiscount": 0
        }
    })
}

/// One serialized receipt per bill, event ids `<phase>-<i>`, receipt ids `<phase>-rc-<i>`.
pub fn bodies(phase: &str, bills: &[Bill]) -> anyhow::Result<Vec<Vec<u8>>> {
    bills
        .iter()
        .enumerate()
        .map(|(i, bill)| {
            let event = receipt_event(&format!("{phase}-{i}"), &format!("{phase}-rc-{i}"), *bill);
            Ok(serde_json::to_vec(&event)?)
        })
        .collect()
}

/// Keep-alive HTTP clients of `/api/v2/receipts`.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    receipts_url: String,
    base: String,
    token: String,
}

impl Client {
    pub fn new(base: &str, token: &str, connections: usize) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Self {
            http,
            receipts_url: format!("{base}/api/v2/receipts"),
            base: base.to_owned(),
            token: token.to_owned(),
        })
    }

    /// Puts the POS token in ingest's cache, as it is in steady state.
    pub async fn warm_up(&self) -> anyhow::Result<()> {
        let response = self
            .http
            .get(format!("{}/api/v2/hello", self.base))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("GET /api/v2/hello answered {}", response.status());
        }
        Ok(())
    }

    /// Posts one receipt; an error unless the answer is 200.
    async fn post(&self, body: Vec<u8>) -> anyhow::Result<()> {
        let response = self
            .http
            .post(&self.receipts_url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .context("POST /api/v2/receipts")?;
        let status = response.status();
        if status != reqwest::StatusCode::OK {
            let text = response.text().await.unwrap_or_default();
            bail!("POST /api/v2/receipts answered {status}: {text}");
        }
        // Drain the (empty) body so the connection goes back to the pool.
        response.bytes().await?;
        Ok(())
    }

    /// Posts every body with `concurrency` clients, each taking the next one as soon as it is
    /// answered; fails at the end if any answer was not a 200.
    pub async fn post_all(&self, bodies: Vec<Vec<u8>>, concurrency: usize) -> anyhow::Result<Bulk> {
        let count = bodies.len();
        let connections = concurrency.min(count);
        let bodies = Arc::new(bodies);
        let next = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut clients = JoinSet::new();
        for _ in 0..connections {
            let (client, bodies, next) = (self.clone(), bodies.clone(), next.clone());
            clients.spawn(async move {
                let (mut answered, mut failures) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let at = Instant::now();
                    match client.post(body.clone()).await {
                        Ok(()) => answered.push(at.elapsed().as_secs_f64() * 1000.0),
                        Err(err) => failures.push(format!("{err:#}")),
                    }
                }
                (answered, failures)
            });
        }
        let (mut answered, mut failures) = (Vec::with_capacity(count), Vec::new());
        while let Some(done) = clients.join_next().await {
            let (a, f) = done?;
            answered.extend(a);
            failures.extend(f);
        }
        let elapsed = started.elapsed();
        if let Some(first) = failures.first() {
            bail!(
                "{} of {count} receipts were not answered 200; the first: {first}",
                failures.len()
            );
        }
        answered.sort_by(f64::total_cmp);
        Ok(Bulk {
            throughput: Throughput { count, elapsed },
            client: HttpClient::Reqwest,
            threads: None,
            connections,
            answer_p50_ms: percentile(&answered, 0.50),
            answer_p99_ms: percentile(&answered, 0.99),
        })
    }

    /// Posts every body at `rate` a second, each on its own task so a slow answer does not slow
    /// the pace; returns the achieved rate and the registers' view of the answer time.
    pub async fn post_paced(&self, bodies: Vec<Vec<u8>>, rate: f64) -> anyhow::Result<Paced> {
        let sent = bodies.len();
        let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        let started = Instant::now();
        let mut posts = JoinSet::new();
        for body in bodies {
            ticks.tick().await;
            let client = self.clone();
            posts.spawn(async move {
                let at = Instant::now();
                client.post(body).await.map(|()| at.elapsed())
            });
        }
        let pacing = started.elapsed();
        let mut answered = Vec::with_capacity(sent);
        let mut failures = Vec::new();
        while let Some(done) = posts.join_next().await {
            match done? {
                Ok(took) => answered.push(took.as_secs_f64() * 1000.0),
                Err(err) => failures.push(format!("{err:#}")),
            }
        }
        if let Some(first) = failures.first() {
            bail!(
                "{} of {sent} paced receipts were not answered 200; the first: {first}",
                failures.len()
            );
        }
        answered.sort_by(f64::total_cmp);
        Ok(Paced {
            sent,
            // `sent` ticks span `sent - 1` periods.
            rate: sent.saturating_sub(1) as f64 / pacing.as_secs_f64().max(f64::EPSILON),
            http_p50_ms: percentile(&answered, 0.50),
            http_p99_ms: percentile(&answered, 0.99),
        })
    }
}

/// The `q` quantile of sorted values (nearest rank); 0 when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}
