//! `loadgen`: measures the receipt pipeline against what its infrastructure can do at best, in one
//! run on one machine, so a throughput figure comes with the baseline that makes it meaningful.
//!
//! - The broker ceiling (confirmed publishes of receipt-sized messages to a quorum queue, without
//!   HTTP) is what ingest could reach at best; ingest should get within 70 % of it. Its receipts
//!   are posted by `wrk` when it is on PATH, so the load's client does not take ingest's CPU
//!   (reqwest clients in this process otherwise).
//! - `pgbench`'s TPC-B-like tps is what this PostgreSQL does for a small write transaction; one
//!   receipt is one transaction, so the workers should apply at least 1.5× that many receipts a
//!   second (TPC-B is write-heavy, a receipt's transaction touches few rows).
//! - The POST→commit latency is taken in a paced phase with the worker running, since the bulk
//!   phase measures queueing, not latency.
//!
//! Everything runs against a scratch database and queue prefix of its own, removed at the end
//! (also after an error or Ctrl-C). The figures go to stdout and to `target/loadgen-report.json`.

mod broker;
mod cpu;
mod expiry;
mod http;
mod memory;
mod pgbench;
mod report;
mod scale;
mod setup;
mod soak;
mod worker;
mod wrk;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use loyalty::queue::{Broker, Stream, Topology};

use crate::report::{Measured, Report, Settings};
use crate::setup::Scratch;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "loadgen",
    about = "Measures ingest and worker throughput against the broker ceiling and pgbench"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Receipts of the bulk phases (broker ceiling, ingest, worker).
    #[arg(long, default_value_t = 5000)]
    pub receipts: usize,
    /// Customers the bills are spread over.
    #[arg(long, default_value_t = 500)]
    pub customers: usize,
    /// Concurrent publishers (ceiling) and HTTP clients (ingest).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Batches the worker applies at once (`WORKER_CONCURRENCY`).
    #[arg(long, default_value_t = 4)]
    pub worker_concurrency: u16,
    /// Most receipts in one worker transaction (`WORKER_BATCH`).
    #[arg(long, default_value_t = 250)]
    pub worker_batch: u16,
    /// Rounds of the broker-ceiling and ingest phases, alternating; the median round is reported.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub rounds: u32,
    /// Receipts a second of the paced latency phase.
    #[arg(long, default_value_t = 200.0)]
    pub paced_rate: f64,
    /// HTTP client of the ingest phase: `wrk` (a separate process, cheap on the CPU) when it is on
    /// PATH, else reqwest in this process; or the one named.
    #[arg(long, value_enum, default_value_t = ClientChoice::Auto)]
    pub http_client: ClientChoice,
    /// Duration of the pgbench run, in seconds.
    #[arg(long, default_value_t = 15)]
    pub pgbench_seconds: u32,
    #[command(flatten)]
    pub servers: crate::setup::Servers,
    /// Where the JSON report goes (default: the workspace's `target/loadgen-report.json`).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Pushes receipts through the real ingest, workers and notifier while injecting faults
    /// (SIGKILL, restarts, closed broker and database connections), then proves the invariants.
    Soak(soak::SoakArgs),
    /// Times the scheduled expiry step burning 10^6 due lots against a plain update of the same
    /// rows (the baseline), in one run.
    Expiry(expiry::ExpiryArgs),
    /// Fills an organization with 10^6 customers, 10^7 ledger entries and 10^6 receipts at COPY
    /// speed, then times every operator, customer and POS read against it and the workers'
    /// rate against an empty database. The fill skips triggers for its session
    /// (`session_replication_role = replica`), so the database user must be a superuser (the
    /// local `postgres` is); it then sets and checks what the triggers would have written.
    Scale(scale::ScaleArgs),
    /// Each service's resident memory (the real release binaries) idle, under a sustained paced
    /// load of receipts, under a flood of connections, and 10 s / 30 s after, for the settings as
    /// shipped and the earlier unbounded ones, in one run.
    Memory(memory::MemoryArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ClientChoice {
    Auto,
    Wrk,
    Reqwest,
}

impl Args {
    fn worker_concurrency(&self) -> anyhow::Result<u16> {
        Ok(self.worker_concurrency)
    }

    fn paced_receipts(&self) -> usize {
        self.receipts.min(1000)
    }

    fn report_path(&self) -> PathBuf {
        self.report
            .clone()
            .unwrap_or_else(|| target_dir().join("loadgen-report.json"))
    }
}

/// The workspace's `target/` (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace.join("target"), PathBuf::from)
}

/// mimalloc: fewer cycles per allocation than glibc's malloc on the request path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// On the services' runtime (`loyalty_service::runtime`: THP off, the heap upkeep), so that the
/// ingest it serves in process runs as the shipped one does.
fn main() -> anyhow::Result<()> {
    loyalty_service::runtime::run(commands())
}

async fn commands() -> anyhow::Result<()> {
    // sqlx's slow-statement warnings (dropping a database takes a second) are not news here.
    loyalty_service::telemetry::init("warn,sqlx::query=error");
    let args = Args::parse();
    match args.command {
        Some(Command::Soak(soak)) => return soak::main(soak).await,
        Some(Command::Expiry(expiry)) => return expiry::main(expiry).await,
        Some(Command::Scale(scale)) => return scale::main(scale).await,
        Some(Command::Memory(memory)) => return memory::main(memory).await,
        None => {}
    }
    if args.receipts == 0 || args.customers == 0 || args.concurrency == 0 {
        bail!("--receipts, --customers and --concurrency must be positive");
    }
    if args.paced_rate.is_nan() || args.paced_rate <= 0.0 {
        bail!("--paced-rate must be positive");
    }
    args.worker_concurrency()?;
    if args.http_client == ClientChoice::Wrk && wrk::find().is_none() {
        bail!("--http-client wrk: wrk is not on PATH");
    }

    let scratch = Scratch::new(&args.servers.database_url, &args.servers.amqp_url)?;
    let outcome = tokio::select! {
        outcome = run(&args, &scratch) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    eprintln!("cleaning up: databases and queues of {}", scratch.tag);
    let cleaned = scratch.clean().await;
    let report = outcome?;
    cleaned?;
    report.print();
    let path = args.report_path();
    report
        .write(&path)
        .with_context(|| format!("write {}", path.display()))?;
    println!("report written to {}", path.display());
    Ok(())
}

/// Starts a PostgreSQL phase from a fresh checkpoint, so neither pgbench nor the worker pays for
/// the other's dirty pages (a checkpoint landing in one phase and not the other swung the ratio by
/// ±0.2). Needs a superuser or `pg_checkpoint`; without, the phases run as they are.
async fn checkpoint(db: &sqlx::PgPool) {
    if let Err(err) = sqlx::query("checkpoint").execute(db).await {
        eprintln!("      (no checkpoint before the phase: {err})");
    }
}

async fn run(args: &Args, scratch: &Scratch) -> anyhow::Result<Report> {
    let n = args.receipts;
    let k = args.concurrency;
    let m = args.paced_receipts();
    let worker_concurrency = args.worker_concurrency()?;
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);

    eprintln!(
        "[1/6] setup: database {}, {} customers, {} bills",
        scratch.db_name,
        args.customers,
        n + m
    );
    let env = setup::Environment::start(args, scratch).await?;
    let shop = env.operator.seed(args.customers, n + m, k, None).await?;
    let (bulk_bills, paced_bills) = shop.bills.split_at(n);
    let http = http::Client::new(&env.base, &shop.token, k)?;
    http.warm_up().await?;

    let wrk = match args.http_client {
        ClientChoice::Auto | ClientChoice::Wrk => wrk::find(),
        ClientChoice::Reqwest => None,
    };
    let client = if wrk.is_some() { "wrk" } else { "reqwest" };
    let sample = http::receipt_event("ceiling-sample", "ceiling-sample", bulk_bills[0]);
    let receipts_queue = scratch.topology.main(Stream::Receipts);
    // The two phases alternate, `--rounds` times: the ratio of each round compares phases a few
    // seconds apart, and the median round is reported, so one noisy moment does not decide it.
    let mut rounds = Vec::new();
    for round in 1..=args.rounds {
        let last = round == args.rounds;
        eprintln!(
            "[2/6] round {round}/{}: broker ceiling, {n} confirmed publishes, {k} publishers",
            args.rounds
        );
        let ceiling = broker::ceiling(
            &args.servers.amqp_url,
            &scratch.ceiling_queue,
            &shop,
            &sample,
            (n, k),
            cpus,
        )
        .await?;
        eprintln!("      {:.0} msgs/s", ceiling.0.per_second());

        // The last round's receipts stay queued for the worker phase; earlier ones are purged.
        let phase = if last {
            "bulk".to_owned()
        } else {
            format!("round{round}")
        };
        eprintln!(
            "[3/6] round {round}/{}: ingest, {n} receipts, {k} connections from {client}, no worker",
            args.rounds
        );
        let ingest = if let Some(wrk) = &wrk {
            let cpu = cpu::Sample::now();
            let bulk = wrk::post_all(wrk, &env.base, &shop.token, &phase, bulk_bills, k).await?;
            (bulk, cpu.and_then(|c| c.usage(cpus)))
        } else {
            let bodies = http::bodies(&phase, bulk_bills)?;
            let cpu = cpu::Sample::now();
            let bulk = http.post_all(bodies, k).await?;
            (bulk, cpu.and_then(|c| c.usage(cpus)))
        };
        eprintln!(
            "      {:.0} receipts/s ({:.2} of the ceiling)",
            ingest.0.throughput.per_second(),
            ingest.0.throughput.per_second() / ceiling.0.per_second()
        );
        if !last {
            let purged = broker::purge(&args.servers.amqp_url, &receipts_queue).await?;
            if usize::try_from(purged)? != n {
                bail!(
                    "round {round}: the receipts queue held {purged} messages after ingest accepted {n}"
                );
            }
        }
        rounds.push((ceiling, ingest));
    }
    let (ceiling, ingest) = report::median_round(rounds.clone());
    let (ceiling, ceiling_cpu) = ceiling;
    let depth = broker::depth(
        &args.servers.amqp_url,
        &scratch.topology.main(Stream::Receipts),
    )
    .await?;
    if usize::try_from(depth)? != n {
        bail!("the receipts queue holds {depth} messages after ingest accepted {n}");
    }

    checkpoint(&env.db).await;
    eprintln!(
        "[4/6] pgbench: -s 10, tpcb-like -c 16 -j 2 -T {}",
        args.pgbench_seconds
    );
    let (pgbench, pgbench_cpu) = pgbench::run(
        &env.server_url,
        &scratch.pgbench_db,
        args.pgbench_seconds,
        cpus,
    )
    .await?;
    eprintln!("      {:.0} tps", pgbench.tps);

    checkpoint(&env.db).await;
    eprintln!("[5/6] worker: {n} queued receipts, concurrency {worker_concurrency}");
    let broker = Arc::new(Broker::new(
        args.servers.amqp_url.clone(),
        Topology::new(scratch.prefix.clone()),
    ));
    let worker_pool =
        loyalty::db::connect(&env.db_url, u32::from(worker_concurrency) * 2 + 2).await?;
    let cpu = cpu::Sample::now();
    let running =
        worker::Running::start(worker_pool, broker, worker_concurrency, args.worker_batch);
    let bulk = worker::wait_processed(&env.db, shop.org, "bulk-%", n, running.started).await?;
    let worker_cpu = cpu.and_then(|c| c.usage(cpus));
    let worker_steady_per_second = worker::steady_rate(&env.db, shop.org, "bulk-%").await?;
    eprintln!("      {:.0} receipts/s", bulk.per_second());

    eprintln!(
        "[6/6] latency: {m} receipts at {:.0}/s with the worker running",
        args.paced_rate
    );
    let paced_started = std::time::Instant::now();
    let paced = http
        .post_paced(http::bodies("paced", paced_bills)?, args.paced_rate)
        .await?;
    worker::wait_processed(&env.db, shop.org, "paced-%", m, paced_started).await?;
    let latency = worker::commit_latency(&env.db, shop.org, "paced-%").await?;
    eprintln!(
        "      p50 {:.1} ms, p99 {:.1} ms",
        latency.p50_ms, latency.p99_ms
    );
    let stopped = running.stop(Duration::from_secs(30)).await;
    env.stop().await;
    stopped?;

    Ok(Report::new(
        Settings {
            receipts: n,
            customers: args.customers,
            concurrency: k,
            worker_concurrency,
            paced_receipts: m,
            paced_rate: args.paced_rate,
            pgbench_seconds: args.pgbench_seconds,
            cpus,
        },
        &Measured {
            ceiling: (ceiling, ceiling_cpu),
            ingest,
            rounds: rounds
                .iter()
                .map(|(c, i)| (c.0.per_second(), i.0.throughput.per_second()))
                .collect(),
            pgbench: (pgbench, pgbench_cpu),
            worker: (bulk, worker_cpu),
            worker_steady_per_second,
            paced,
            latency,
        },
    ))
}
