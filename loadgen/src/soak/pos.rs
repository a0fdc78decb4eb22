//! The registers' side of the soak: the receipts (valid sales, malformed ones ingest must refuse,
//! poison ones it may accept but no worker can apply) and the POS behaviour of sending them: a
//! receipt that got no 200 is sent again until it gets one, and some that did get a 200 are sent
//! once more, as real registers do after a lost answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::http::receipt_event;
use crate::setup::Bill;

/// What a receipt is, and so what must become of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Pays its open bill: applied exactly once once it got a 200.
    Sale,
    /// Ingest must refuse it with a 4xx, and nothing may change.
    Malformed(Malformed),
    /// Accepted (or refused) but never applied: it must end with its reason.
    Poison(Poison),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Malformed {
    /// The body stops half-way.
    NotJson,
    /// `totalAmount` with three decimals.
    TooPrecise,
    /// No `data.items`.
    NoItems,
    /// `totalAmount` is text.
    TextTotal,
    /// `99.99999999999999999`: more than 2 decimals, which an f64 reading rounds to 100.
    ExcessDigits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Poison {
    /// A refund of zero of a paid sale: can never be applied (dead).
    ZeroRefund,
    /// A refund of a bill that does not exist: no sale to refund (kept with its reason).
    RefundOfNothing,
    /// A NUL character in an item name: refused at the edge, or dead with its reason.
    NulInName,
    /// `extras.note` nested 130 levels deep: refused at the edge, or dead with its reason.
    DeepJson,
    /// A sale of 7·10²⁸ published straight to the queue, as an older ingest would have.
    HugeTotal,
    /// A message on the receipts queue that is not a receipt message at all.
    NotAMessage,
}

impl Poison {
    /// Published to the receipts queue directly rather than posted.
    pub fn is_direct(self) -> bool {
        matches!(self, Poison::HugeTotal | Poison::NotAMessage)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Sale => write!(f, "sale"),
            Kind::Malformed(m) => write!(f, "malformed {m:?}"),
            Kind::Poison(p) => write!(f, "poison {p:?}"),
        }
    }
}

pub struct Receipt {
    pub event_id: String,
    pub receipt_id: String,
    /// The bill it names, when it names a real one.
    pub bill: Option<i64>,
    pub kind: Kind,
    /// As posted (or, for direct poison, as the event inside the published message).
    pub body: Vec<u8>,
}

/// Replaced in a serialized event by raw JSON that `serde_json::Value` cannot hold.
const RAW: &str = "\"@@raw@@\"";

fn event(event_id: &str, receipt_id: &str, bill: Bill) -> Value {
    receipt_event(event_id, receipt_id, bill)
}

fn serialize(event: &Value, raw: Option<&str>) -> anyhow::Result<Vec<u8>> {
    let text = serde_json::to_string(event)?;
    Ok(match raw {
        Some(raw) => text.replacen(RAW, raw, 1),
        None => text,
    }
    .into_bytes())
}

pub fn sale(i: usize, bill: Bill) -> anyhow::Result<Receipt> {
    let (event_id, receipt_id) = (format!("soak-s{i}"), format!("soak-s{i}-rc"));
    let body = serialize(&event(&event_id, &receipt_id, bill), None)?;
    Ok(Receipt {
        event_id,
        receipt_id,
        bill: Some(bill.id),
        kind: Kind::Sale,
        body,
    })
}

pub fn malformed(i: usize, bill: Bill, variant: Malformed) -> anyhow::Result<Receipt> {
    let (event_id, receipt_id) = (format!("soak-m{i}"), format!("soak-m{i}-rc"));
    let mut event = event(&event_id, &receipt_id, bill);
    let mut raw = None;
    match variant {
        Malformed::NotJson => {}
        Malformed::TooPrecise => event["data"]["totalAmount"] = json!(10.001),
        Malformed::NoItems => {
            if let Some(data) = event["data"].as_object_mut() {
                data.remove("items");
            }
        }
        Malformed::TextTotal => event["data"]["totalAmount"] = json!("lots"),
        Malformed::ExcessDigits => {
            event["data"]["totalAmount"] = json!("@@raw@@");
            raw = Some("99.99999999999999999");
        }
    }
    let mut body = serialize(&event, raw)?;
    if variant == Malformed::NotJson {
        body.truncate(body.len() / 2);
    }
    Ok(Receipt {
        event_id,
        receipt_id,
        bill: Some(bill.id),
        kind: Kind::Malformed(variant),
        body,
    })
}

/// A poison receipt; `bill` is the paid bill a zero refund names, or the open bill a huge sale
/// names (other variants name none that exists).
pub fn poison(i: usize, bill: Bill, variant: Poison) -> anyhow::Result<Receipt> {
    let (event_id, receipt_id) = (format!("soak-p{i}"), format!("soak-p{i}-rc"));
    let mut event = event(&event_id, &receipt_id, bill);
    let mut named = Some(bill.id);
    let mut raw = None;
    match variant {
        Poison::ZeroRefund => {
            event["data"]["type"] = json!("PAYBACK");
            event["data"]["totalAmount"] = json!(0);
            event["data"]["items"][0]["price"] = json!(0);
            event["data"]["items"][0]["sumPrice"] = json!(0);
        }
        Poison::RefundOfNothing => {
            event["data"]["type"] = json!("PAYBACK");
            event["data"]["extras"]["billId"] =
                json!((9_000_000_000_000_u64 + i as u64).to_string());
            named = None;
        }
        Poison::NulInName => {
            event["data"]["items"][0]["name"] = json!("Товар\u{0}");
            named = None;
        }
        Poison::DeepJson => {
            event["data"]["extras"]["note"] = json!("@@raw@@");
            raw = Some(format!("{}{}", "[".repeat(130), "]".repeat(130)));
            named = None;
        }
        Poison::HugeTotal => {
            event["data"]["totalAmount"] = json!("@@raw@@");
            raw = Some("70000000000000000000000000000".to_owned());
        }
        Poison::NotAMessage => named = None,
    }
    let body = if variant == Poison::NotAMessage {
        b"not a receipt message {".to_vec()
    } else {
        serialize(&event, raw.as_deref())?
    };
    Ok(Receipt {
        event_id,
        receipt_id,
        bill: named,
        kind: Kind::Poison(variant),
        body,
    })
}

/// How the POSTs were answered.
#[derive(Debug, Default, Clone)]
pub struct Answers {
    pub by_status: BTreeMap<u16, u64>,
    /// POSTs with no answer: connection refused or reset, timeout.
    pub unanswered: u64,
    /// POSTs sent again after no 200.
    pub resent: u64,
    /// POSTs sent again after a 200.
    pub resent_after_200: u64,
}

impl Answers {
    pub fn posts(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.unanswered
    }

    fn merge(&mut self, other: &Answers) {
        for (status, n) in &other.by_status {
            *self.by_status.entry(*status).or_default() += n;
        }
        self.unanswered += other.unanswered;
        self.resent += other.resent;
        self.resent_after_200 += other.resent_after_200;
    }
}

/// The registers' keep-alive clients.
#[derive(Clone)]
pub struct Pos {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Pos {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            // The registers give up waiting after 10 s and send again.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?,
            url: format!("{base}/api/v2/receipts"),
            token: token.to_owned(),
        })
    }

    async fn post(&self, body: &[u8]) -> Option<u16> {
        let response = self
            .http
            .post(&self.url)
            .bearer_auth(&self.token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .ok()?;
        let status = response.status().as_u16();
        response.bytes().await.ok()?;
        Some(status)
    }

    /// Sends every receipt with `registers` concurrent clients, the i-th not before i / `rate`
    /// seconds, until each has a final answer (a 200 or a refusal other than 408/429), or
    /// `give_up` has passed for it; `resend_share` of those answered 200 are sent once more.
    /// Returns each receipt's final status (None: given up).
    pub async fn send_all(
        &self,
        receipts: Arc<Vec<Receipt>>,
        registers: usize,
        (rate, resend_share): (Option<f64>, f64),
        give_up: Duration,
    ) -> anyhow::Result<(Vec<Option<u16>>, Answers)> {
        let started = tokio::time::Instant::now();
        let next = Arc::new(AtomicUsize::new(0));
        let answers = Arc::new(Mutex::new(Answers::default()));
        let mut clients = JoinSet::new();
        for _ in 0..registers.min(receipts.len()).max(1) {
            let (pos, receipts, next, answers) = (
                self.clone(),
                receipts.clone(),
                next.clone(),
                answers.clone(),
            );
            clients.spawn(async move {
                let mut mine = Answers::default();
                let mut finals = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(receipt) = receipts.get(i) else {
                        break;
                    };
                    if let Some(rate) = rate {
                        tokio::time::sleep_until(
                            started + Duration::from_secs_f64(i as f64 / rate),
                        )
                        .await;
                    }
                    let status = pos.until_answered(&receipt.body, give_up, &mut mine).await;
                    if status == Some(200) && rand::rng().random_bool(resend_share) {
                        mine.resent_after_200 += 1;
                        pos.until_answered(&receipt.body, give_up, &mut mine).await;
                    }
                    finals.push((i, status));
                }
                answers
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .merge(&mine);
                finals
            });
        }
        let mut finals = vec![None; receipts.len()];
        while let Some(done) = clients.join_next().await {
            for (i, status) in done? {
                finals[i] = status;
            }
        }
        let answers = answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Ok((finals, answers))
    }

    /// Posts `body` until a final answer, backing off from 100 ms to 2 s between tries.
    async fn until_answered(
        &self,
        body: &[u8],
        give_up: Duration,
        answers: &mut Answers,
    ) -> Option<u16> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(100);
        loop {
            let status = self.post(body).await;
            match status {
                Some(s) => *answers.by_status.entry(s).or_default() += 1,
                None => answers.unanswered += 1,
            }
            if let Some(s) =
                status.filter(|&s| s == 200 || ((400..500).contains(&s) && s != 408 && s != 429))
            {
                return Some(s);
            }
            if started.elapsed() > give_up {
                return None;
            }
            answers.resent += 1;
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(wait.mul_f64(jitter)).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}
