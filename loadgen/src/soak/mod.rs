//! `loadgen soak`: the whole pipeline (the real ingest, workers and notifier binaries) under a
//! long stream of receipts from registers that resend, with malformed and poison receipts mixed
//! in, while faults are injected at random intervals; at the end the invariants are proven from
//! the database, the broker and a fake Bot API, and a violation makes the run fail.
//!
//! It runs on a scratch database and queue prefix of its own, removed at the end (also after an
//! error or Ctrl-C); the services' logs stay under `target/soak-<tag>/`.

pub mod bot;
mod faults;
mod pos;
pub mod services;
mod verify;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loyalty::queue::Stream;
use loyalty::receipts::ReceiptMessage;
use rand::seq::SliceRandom;
use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tokio::sync::{Mutex, watch};
use tokio::task::JoinSet;

use crate::broker;
use crate::setup::{Bill, Operator, Scratch, Shop};
use faults::{Injected, Injector};
use pos::{Kind, Malformed, Poison, Pos, Receipt};
use services::Services;

#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Valid sales posted (malformed and poison receipts come on top: 1 % and 0.1 %).
    #[arg(long, default_value_t = 100_000)]
    pub receipts: usize,
    /// Customers the bills are spread over (each has a Telegram id).
    #[arg(long, default_value_t = 2000)]
    pub customers: usize,
    /// Registers posting at once.
    #[arg(long, default_value_t = 32)]
    pub registers: usize,
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Mean time between faults, in seconds (exponentially distributed).
    #[arg(long, default_value_t = 5.0)]
    pub fault_interval: f64,
    /// Sales of 7·10²⁸ published straight to the receipts queue (0 leaves them out).
    #[arg(long, default_value_t = 5)]
    pub huge_totals: usize,
    /// Receipts a second the registers send together (resends come on top).
    #[arg(long, default_value_t = 250.0)]
    pub rate: f64,
    /// Share of receipts answered 200 that a register sends once more.
    #[arg(long, default_value_t = 0.01)]
    pub resend_share: f64,
    /// How long the pipeline may take to apply everything and empty its queues after the last
    /// POST, in seconds.
    #[arg(long, default_value_t = 900)]
    pub drain_timeout: u64,
    /// Where the ingest, workers and notifier binaries are (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    #[command(flatten)]
    pub servers: crate::setup::Servers,
}

/// The registers give up on a receipt after this long without a final answer.
const GIVE_UP: Duration = Duration::from_secs(300);

pub async fn main(args: SoakArgs) -> anyhow::Result<()> {
    if args.receipts < 100 || args.customers < 2 || args.registers == 0 {
        bail!("--receipts must be at least 100, --customers at least 2, --registers positive");
    }
    if args.fault_interval.is_nan()
        || args.fault_interval <= 0.0
        || args.rate.is_nan()
        || args.rate <= 0.0
        || !(0.0..=1.0).contains(&args.resend_share)
    {
        bail!("--fault-interval and --rate must be positive, --resend-share within 0..=1");
    }
    let scratch = Scratch::new(&args.servers.database_url, &args.servers.amqp_url)?;
    let logs = crate::target_dir().join(format!("soak-{}", scratch.tag));
    let outcome = tokio::select! {
        outcome = run(&args, &scratch, logs) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!("cleaning up: database and queues of {}", scratch.tag);
    let cleaned = scratch.clean().await;
    let report = outcome?;
    cleaned?;
    report.print();
    let violations: u64 = report.checks.iter().map(|c| c.violations).sum();
    if violations > 0 {
        bail!("{violations} invariant violations");
    }
    Ok(())
}

/// What a run measured and proved.
struct Report {
    args: SoakArgs,
    kinds: Vec<(String, usize)>,
    answers: pos::Answers,
    injected: Injected,
    crashed: Vec<String>,
    pos_phase: Duration,
    applied_after: Option<Duration>,
    drained_after: Option<Duration>,
    answered_200: usize,
    outbox: Vec<(String, i64)>,
    bot_calls: u64,
    checks: Vec<verify::Check>,
    panics: Vec<(String, usize)>,
    logs: PathBuf,
}

async fn run(args: &SoakArgs, scratch: &Scratch, logs: PathBuf) -> anyhow::Result<Report> {
    let fake_bot = bot::FakeBot::start().await?;
    eprintln!(
        "[1/5] setup: database {}, queue prefix {}",
        scratch.db_name, scratch.prefix
    );
    let (db_url, setup_db) = scratch.create_database().await?;
    setup_db.close().await;
    // The soak's own connections are named, so the database fault spares them.
    let db = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(
            PgConnectOptions::from_str(&db_url)?.application_name(faults::APPLICATION_NAME),
        )
        .await?;
    let admin_token = format!("soak-{}", rand::random::<u64>());
    let bin_dir = services::bin_dir(args.bin_dir.as_deref())?;
    let services = Services::start(
        services::Settings {
            bin_dir,
            logs: logs.clone(),
            db_url,
            amqp_url: args.servers.amqp_url.clone(),
            prefix: scratch.prefix.clone(),
            admin_token: admin_token.clone(),
            telegram_api_url: fake_bot.url.clone(),
            env: Vec::new(),
        },
        args.workers,
    )
    .await?;
    let base = services.base();
    let services = Arc::new(Mutex::new(services));

    let n = args.receipts;
    let malformed_count = (n / 100).max(5);
    let poison_each = (n / 4000).max(2);
    let huge_count = args.huge_totals;
    let operator = Operator::new(&base, &admin_token, db.clone());
    let bot_token = format!("123456:soak{}{:020}", scratch.tag, rand::random::<u32>());
    let shop = operator
        .seed(
            args.customers,
            n + malformed_count + huge_count,
            16,
            Some(&bot_token),
        )
        .await?;
    let bonus_bills = bonus_bills(&operator, &shop, args.customers.min(100)).await?;
    let plan = Plan::new(
        &shop,
        &bonus_bills,
        n,
        malformed_count,
        poison_each,
        huge_count,
    )?;
    eprintln!(
        "      {} customers, {} sales, {} malformed, {} poison posted, {} poison published",
        args.customers,
        plan.sales,
        malformed_count,
        plan.posted
            .iter()
            .filter(|r| matches!(r.kind, Kind::Poison(_)))
            .count(),
        plan.direct.len()
    );

    let register = Pos::new(&base, &shop.token)?;
    eprintln!(
        "[2/5] {} sales to pay bills a zero refund can name",
        plan.first.len()
    );
    let first = Arc::new(plan.first);
    let (first_finals, first_answers) = register
        .send_all(first.clone(), args.registers, (None, 0.0), GIVE_UP)
        .await?;
    wait_sales_applied(&db, shop.org, first.len(), Duration::from_secs(120))
        .await
        .context("the first sales")?;

    eprintln!(
        "[3/5] {} receipts from {} registers at {}/s, faults every ~{} s",
        plan.posted.len(),
        args.registers,
        args.rate,
        args.fault_interval
    );
    let (stop_faults, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(
        Injector {
            services: services.clone(),
            db: db.clone(),
            db_name: scratch.db_name.clone(),
            prefix: scratch.prefix.clone(),
            mean: Duration::from_secs_f64(args.fault_interval),
        }
        .run(stopped),
    );
    let started = Instant::now();
    let direct: Vec<(String, Vec<u8>)> = plan
        .direct
        .iter()
        .map(|r| {
            let body = match r.kind {
                Kind::Poison(Poison::NotAMessage) => r.body.clone(),
                _ => ReceiptMessage::encode_raw(
                    shop.org,
                    shop.integration,
                    chrono::Utc::now(),
                    &r.body,
                ),
            };
            (r.event_id.clone(), body)
        })
        .collect();
    broker::publish_all(
        &args.servers.amqp_url,
        &scratch.topology.main(Stream::Receipts),
        shop.org,
        &direct,
    )
    .await?;
    let posted = Arc::new(plan.posted);
    let (posted_finals, mut answers) = register
        .send_all(
            posted.clone(),
            args.registers,
            (Some(args.rate), args.resend_share),
            GIVE_UP,
        )
        .await?;
    let pos_phase = started.elapsed();
    answers.by_status = merge_counts(answers.by_status, &first_answers.by_status);
    answers.unanswered += first_answers.unanswered;
    answers.resent += first_answers.resent;
    let sale_200 = first_finals
        .iter()
        .chain(
            posted
                .iter()
                .zip(&posted_finals)
                .filter(|(r, _)| r.kind == Kind::Sale)
                .map(|(_, s)| s),
        )
        .filter(|s| **s == Some(200))
        .count();
    eprintln!(
        "      answered in {:.0} s; waiting for the workers to apply {sale_200} sales (faults go on)",
        pos_phase.as_secs_f64()
    );
    let drain = Duration::from_secs(args.drain_timeout);
    let applied = wait_sales_applied(&db, shop.org, sale_200, drain).await;
    let applied_after = applied.is_ok().then(|| started.elapsed());
    let _ = stop_faults.send(true);
    let injected = match tasks.join_next().await {
        Some(done) => done?,
        None => Injected::default(),
    };
    services.lock().await.revive().await?;

    eprintln!("[4/5] waiting for the queues and the outbox to empty");
    let drained = wait_drained(&db, shop.org, &scratch.prefix, drain).await;
    let drained_after = drained.as_ref().ok().map(|()| started.elapsed());
    if let Err(err) = &drained {
        eprintln!("      {err:#}");
    }

    eprintln!("[5/5] stopping the services, checking the invariants");
    // Stopped first, so the counts compared below do not move while they are read.
    let services = Arc::try_unwrap(services)
        .map_err(|_| anyhow::anyhow!("services still shared"))?
        .into_inner();
    let crashed = services.crashed.clone();
    let logs = services.logs().to_path_buf();
    services.stop(Duration::from_secs(15)).await;
    let dead_letters = broker::peek(
        &args.servers.amqp_url,
        &scratch.topology.dead(Stream::Receipts),
    )
    .await?;
    let queues: Vec<(String, u64, u64)> = faults::queues(&scratch.prefix)
        .await?
        .into_iter()
        .filter(|(name, _, _)| !name.ends_with(".dead"))
        .collect();
    let bot_counts = fake_bot.counts();
    let mut receipts: Vec<Receipt> = Vec::new();
    let mut finals = first_finals;
    finals.extend(posted_finals);
    finals.extend(plan.direct.iter().map(|_| None));
    receipts.extend(Arc::try_unwrap(first).map_err(|_| anyhow::anyhow!("receipts still shared"))?);
    receipts.extend(Arc::try_unwrap(posted).map_err(|_| anyhow::anyhow!("receipts still shared"))?);
    receipts.extend(plan.direct);
    let checks = verify::run(
        &db,
        &verify::Evidence {
            org: shop.org,
            receipts: &receipts,
            finals: &finals,
            dead_letters: &dead_letters,
            bot: &bot_counts,
            queues: &queues,
        },
    )
    .await?;
    let outbox: Vec<(String, i64)> = sqlx::query_as(
        "select status, count(*) from outbox where org_id = $1 group by status order by status",
    )
    .bind(shop.org)
    .fetch_all(&db)
    .await?;

    fake_bot.stop();
    db.close().await;
    let mut kinds: Vec<(String, usize)> = Vec::new();
    for r in &receipts {
        let name = r.kind.to_string();
        match kinds.iter_mut().find(|(k, _)| *k == name) {
            Some((_, count)) => *count += 1,
            None => kinds.push((name, 1)),
        }
    }
    Ok(Report {
        args: args.clone(),
        kinds,
        answers,
        injected,
        crashed,
        pos_phase,
        applied_after,
        drained_after,
        answered_200: sale_200,
        outbox,
        bot_calls: bot_counts.calls,
        checks,
        panics: panics(&logs),
        logs,
    })
}

/// The receipts of a run, in the order they are sent.
struct Plan {
    /// Sales sent before the faults, so zero refunds have paid bills to name.
    first: Vec<Receipt>,
    /// Sales, malformed and poison receipts, shuffled.
    posted: Vec<Receipt>,
    /// Poison published straight to the receipts queue.
    direct: Vec<Receipt>,
    sales: usize,
}

impl Plan {
    fn new(
        shop: &Shop,
        bonus_bills: &[Bill],
        sales: usize,
        malformed: usize,
        poison_each: usize,
        huge: usize,
    ) -> anyhow::Result<Self> {
        let (sale_bills, rest) = shop.bills.split_at(sales);
        let (malformed_bills, huge_bills) = rest.split_at(malformed);
        // Half the bonus bills are paid; the other half stay open with their holds.
        let paying: Vec<Bill> = sale_bills
            .iter()
            .chain(&bonus_bills[..bonus_bills.len() / 2])
            .copied()
            .collect();
        let mut all_sales = paying
            .iter()
            .enumerate()
            .map(|(i, bill)| pos::sale(i, *bill))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let first: Vec<Receipt> = all_sales
            .drain(..(sales / 20).clamp(poison_each, 500))
            .collect();
        let paid: Vec<Bill> = paying[..first.len()].to_vec();

        let mut posted = all_sales;
        let variants = [
            Malformed::NotJson,
            Malformed::TooPrecise,
            Malformed::NoItems,
            Malformed::TextTotal,
            Malformed::ExcessDigits,
        ];
        for (i, bill) in malformed_bills.iter().enumerate() {
            posted.push(pos::malformed(i, *bill, variants[i % variants.len()])?);
        }
        let mut i = 0;
        for variant in [
            Poison::ZeroRefund,
            Poison::RefundOfNothing,
            Poison::NulInName,
            Poison::DeepJson,
        ] {
            for j in 0..poison_each {
                posted.push(pos::poison(i, paid[j % paid.len()], variant)?);
                i += 1;
            }
        }
        posted.shuffle(&mut rand::rng());
        let mut direct = Vec::new();
        for bill in huge_bills.iter().take(huge) {
            direct.push(pos::poison(i, *bill, Poison::HugeTotal)?);
            i += 1;
        }
        for _ in 0..3 {
            direct.push(pos::poison(i, paid[0], Poison::NotAMessage)?);
            i += 1;
        }
        Ok(Self {
            first,
            posted,
            direct,
            sales: paying.len(),
        })
    }
}

/// Bills with a bonus payment, created as an operator would: `count` customers get 100 bonuses,
/// then a bill of 1000 of which 30 are paid with them (held until the bill is paid).
async fn bonus_bills(operator: &Operator, shop: &Shop, count: usize) -> anyhow::Result<Vec<Bill>> {
    let mut bills = Vec::with_capacity(count);
    for customer in shop.customers.iter().take(count) {
        let org = shop.org;
        operator
            .post(
                &format!("/orgs/{org}/customers/{customer}/bonuses"),
                &json!({"op": "accrue", "amount": 100}),
                201,
            )
            .await?;
        let bill = operator
            .post(
                &format!("/orgs/{org}/bills"),
                &json!({
                    "customer_id": customer.to_string(),
                    "items": [{"name": "Товар", "quantity": 1, "unit_price": 1000}],
                    "bonus_payment": {"amount": 30}
                }),
                201,
            )
            .await?;
        let id = match &bill["id"] {
            serde_json::Value::String(s) => s.parse()?,
            other => other.as_i64().context("bill id")?,
        };
        bills.push(Bill { id, total: 1000 });
    }
    Ok(bills)
}

/// Waits until `expected` sales (`soak-s…` events) are processed.
async fn wait_sales_applied(
    db: &PgPool,
    org: i64,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let expected = i64::try_from(expected)?;
    loop {
        let processed: i64 = sqlx::query_scalar(
            "select count(*) from receipts
             where org_id = $1 and event_id like 'soak-s%' and status = 'processed'",
        )
        .bind(org)
        .fetch_one(db)
        .await?;
        if processed >= expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{processed} of {expected} sales applied after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until no receipt is retrying, no work or retry queue holds a message (ready or
/// unacknowledged) and the outbox has nothing left to send, three times in a row.
async fn wait_drained(
    db: &PgPool,
    org: i64,
    prefix: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut quiet = 0;
    loop {
        let (retrying, unsent): (i64, i64) = sqlx::query_as(
            "select (select count(*) from receipts where org_id = $1 and status = 'retrying'),
                    (select count(*) from outbox where org_id = $1
                     and status in ('pending', 'sending', 'retrying'))",
        )
        .bind(org)
        .fetch_one(db)
        .await?;
        let queued: u64 = faults::queues(prefix)
            .await?
            .iter()
            .filter(|(name, _, _)| !name.ends_with(".dead"))
            .map(|(_, ready, unacked)| ready + unacked)
            .sum();
        if retrying == 0 && unsent == 0 && queued == 0 {
            quiet += 1;
            if quiet == 3 {
                return Ok(());
            }
        } else {
            quiet = 0;
        }
        if Instant::now() > deadline {
            bail!(
                "not drained after {timeout:?}: {retrying} receipts retrying, {unsent} notifications unsent, {queued} messages queued or unacknowledged"
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn merge_counts(
    mut a: std::collections::BTreeMap<u16, u64>,
    b: &std::collections::BTreeMap<u16, u64>,
) -> std::collections::BTreeMap<u16, u64> {
    for (k, v) in b {
        *a.entry(*k).or_default() += v;
    }
    a
}

/// Panics the services wrote to their logs (a panicking task is not a dead process), counted by
/// service and message.
fn panics(logs: &std::path::Path) -> Vec<(String, usize)> {
    let mut found: Vec<(String, usize)> = Vec::new();
    for bin in ["ingest", "workers", "notifier"] {
        let Ok(log) = std::fs::read_to_string(logs.join(format!("{bin}.log"))) else {
            continue;
        };
        let mut lines = log.lines();
        while let Some(line) = lines.next() {
            if !line.contains("panicked at") {
                continue;
            }
            let what = format!("{bin}: {}", lines.next().unwrap_or_default());
            match found.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += 1,
                None => found.push((what, 1)),
            }
        }
    }
    found
}

impl Report {
    fn print(&self) {
        let secs = |d: Option<Duration>| {
            d.map_or_else(
                || "never (timed out)".to_owned(),
                |d| format!("{:.0} s", d.as_secs_f64()),
            )
        };
        println!(
            "\nsoak: {} customers, {} worker processes, {} registers at {}/s, a fault every ~{} s",
            self.args.customers,
            self.args.workers,
            self.args.registers,
            self.args.rate,
            self.args.fault_interval
        );
        let kinds: Vec<String> = self
            .kinds
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        println!("receipts: {}", kinds.join(", "));
        let statuses: Vec<String> = self
            .answers
            .by_status
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        println!(
            "POSTs: {} ({}; no answer: {}); resent after no 200: {}, after a 200: {}",
            self.answers.posts(),
            statuses.join(", "),
            self.answers.unanswered,
            self.answers.resent,
            self.answers.resent_after_200
        );
        let faults: Vec<String> = self
            .injected
            .by_kind
            .iter()
            .map(|(k, n)| format!("{k:?}: {n}"))
            .collect();
        println!(
            "faults: {} ({}); broker connections closed: {}, database backends terminated: {}",
            self.injected.by_kind.values().sum::<u64>(),
            faults.join(", "),
            self.injected.broker_connections_closed,
            self.injected.db_backends_terminated
        );
        for error in &self.injected.errors {
            println!("  fault not injected: {error}");
        }
        if !self.crashed.is_empty() {
            println!(
                "services that died by themselves (restarted): {}",
                self.crashed.join(", ")
            );
        }
        println!(
            "panics in the services' logs: {} (logs in {})",
            self.panics.iter().map(|(_, n)| n).sum::<usize>(),
            self.logs.display()
        );
        for (what, n) in &self.panics {
            println!("  {n} × {what}");
        }
        let rate = |d: Option<Duration>| {
            d.map_or(0.0, |d| {
                self.answered_200 as f64 / d.as_secs_f64().max(f64::EPSILON)
            })
        };
        println!(
            "elapsed: POSTs answered in {:.0} s ({:.0} sales/s); all {} sales applied after {} ({:.0} receipts/s); drained after {}",
            self.pos_phase.as_secs_f64(),
            rate(Some(self.pos_phase)),
            self.answered_200,
            secs(self.applied_after),
            rate(self.applied_after),
            secs(self.drained_after)
        );
        let outbox: Vec<String> = self
            .outbox
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        println!(
            "notifications: {}; sendMessage calls: {}",
            outbox.join(", "),
            self.bot_calls
        );
        println!("invariants:");
        for check in &self.checks {
            let verdict = if check.violations == 0 {
                "ok  "
            } else {
                "FAIL"
            };
            println!(
                "  [{verdict}] {} ({} checked, {} violations)",
                check.name, check.checked, check.violations
            );
            for example in &check.examples {
                println!("         e.g. {example}");
            }
        }
    }
}
