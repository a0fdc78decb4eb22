//! The run's figures and their ratios to the baselines, printed and written as JSON.

use std::path::Path;

use serde::Serialize;

use crate::cpu::Usage;
use crate::http::{Bulk, HttpClient, Paced, Throughput};
use crate::pgbench::Pgbench;
use crate::worker::Latency;

/// Ingest should reach this share of the broker ceiling.
pub const INGEST_TARGET: f64 = 0.70;
/// The workers should apply this many receipts per pgbench transaction.
pub const WORKER_TARGET: f64 = 1.5;

#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub receipts: usize,
    pub customers: usize,
    pub concurrency: usize,
    pub worker_concurrency: u16,
    pub paced_receipts: usize,
    pub paced_rate: f64,
    pub pgbench_seconds: u32,
    /// Everything (load, ingest, worker, and here also PostgreSQL and RabbitMQ) shares these.
    pub cpus: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub count: usize,
    pub seconds: f64,
    pub per_second: f64,
    pub cpu: Option<Usage>,
}

impl Phase {
    fn new(t: &Throughput, cpu: Option<Usage>) -> Self {
        Self {
            count: t.count,
            seconds: t.elapsed.as_secs_f64(),
            per_second: t.per_second(),
            cpu,
        }
    }
}

/// One round of the alternating broker-ceiling and ingest phases.
pub type Round = ((Throughput, Option<Usage>), (Bulk, Option<Usage>));

/// The round whose ingest/ceiling ratio is the median (the lower middle one of an even count).
pub fn median_round(mut rounds: Vec<Round>) -> Round {
    let ratio = |r: &Round| r.1.0.throughput.per_second() / r.0.0.per_second();
    rounds.sort_by(|a, b| ratio(a).total_cmp(&ratio(b)));
    let middle = (rounds.len().saturating_sub(1)) / 2;
    rounds.swap_remove(middle)
}

/// Everything a run measured.
pub struct Measured {
    /// The median round's.
    pub ceiling: (Throughput, Option<Usage>),
    pub ingest: (Bulk, Option<Usage>),
    /// Every round's (ceiling msgs/s, ingest receipts/s), in order.
    pub rounds: Vec<(f64, f64)>,
    pub pgbench: (Pgbench, Option<Usage>),
    pub worker: (Throughput, Option<Usage>),
    /// Between the first and the last commit (see `worker::steady_rate`).
    pub worker_steady_per_second: Option<f64>,
    pub paced: Paced,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub value: f64,
    pub target: f64,
    pub met: bool,
}

impl Ratio {
    fn new(value: f64, target: f64) -> Self {
        Self {
            value,
            target,
            met: value >= target,
        }
    }
}

/// The ingest phase's HTTP client and what it saw.
#[derive(Debug, Clone, Serialize)]
pub struct IngestHttp {
    /// `wrk`'s threads; none for reqwest (tasks on loadgen's runtime, next to ingest).
    pub threads: Option<usize>,
    pub connections: usize,
    /// The receipts POSTs' answer time as the client saw it.
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    pub receipts: usize,
    pub achieved_rate: f64,
    /// From the receipts table: ingest's acceptance (`received_at`) to `commit_time_source`.
    pub post_to_commit_p50_ms: f64,
    pub post_to_commit_p99_ms: f64,
    pub post_to_commit_max_ms: f64,
    /// The commit's own timestamp when PostgreSQL tracks them (`track_commit_timestamp`), else
    /// `processed_at`, i.e. `now()`: the start of the worker's transaction, not its commit.
    pub commit_time_source: &'static str,
    /// The POST's answer time as the clients saw it.
    pub http_p50_ms: f64,
    pub http_p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub broker_ceiling_per_second: f64,
    pub ingest_per_second: f64,
    pub ratio: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub generated_at: String,
    pub settings: Settings,
    pub broker_ceiling: Phase,
    pub ingest: Phase,
    /// What posted the ingest phase's receipts: `wrk` (a separate process; its CPU is the phase's
    /// `child_process_cores`) or `reqwest` (in loadgen's process, with ingest).
    pub http_client: HttpClient,
    pub ingest_http: IngestHttp,
    pub pgbench_tps: f64,
    pub pgbench_cpu: Option<Usage>,
    pub worker: Phase,
    /// Receipts a second from the first to the last `processed_at`, leaving out the worker's
    /// start-up and the 100 ms polling.
    pub worker_steady_per_second: Option<f64>,
    /// The median round's.
    pub ingest_vs_broker_ceiling: Ratio,
    /// Every round of the alternating ceiling and ingest phases.
    pub rounds: Vec<RoundReport>,
    pub worker_vs_pgbench_tps: Ratio,
    pub latency: LatencyReport,
}

impl Report {
    pub fn new(settings: Settings, measured: &Measured) -> Self {
        let ceiling = Phase::new(&measured.ceiling.0, measured.ceiling.1);
        let (bulk, ingest_cpu) = &measured.ingest;
        let ingest = Phase::new(&bulk.throughput, *ingest_cpu);
        let worker = Phase::new(&measured.worker.0, measured.worker.1);
        let (pgbench, pgbench_cpu) = measured.pgbench;
        let (paced, latency) = (&measured.paced, &measured.latency);
        Self {
            generated_at: chrono::Utc::now().to_rfc3339(),
            ingest_vs_broker_ceiling: Ratio::new(
                ingest.per_second / ceiling.per_second,
                INGEST_TARGET,
            ),
            rounds: measured
                .rounds
                .iter()
                .map(|&(ceiling, ingest)| RoundReport {
                    broker_ceiling_per_second: ceiling,
                    ingest_per_second: ingest,
                    ratio: ingest / ceiling,
                })
                .collect(),
            worker_vs_pgbench_tps: Ratio::new(worker.per_second / pgbench.tps, WORKER_TARGET),
            settings,
            broker_ceiling: ceiling,
            ingest,
            http_client: bulk.client,
            ingest_http: IngestHttp {
                threads: bulk.threads,
                connections: bulk.connections,
                answer_p50_ms: bulk.answer_p50_ms,
                answer_p99_ms: bulk.answer_p99_ms,
            },
            pgbench_tps: pgbench.tps,
            pgbench_cpu,
            worker,
            worker_steady_per_second: measured.worker_steady_per_second,
            latency: LatencyReport {
                receipts: paced.sent,
                achieved_rate: paced.rate,
                post_to_commit_p50_ms: latency.p50_ms,
                post_to_commit_p99_ms: latency.p99_ms,
                post_to_commit_max_ms: latency.max_ms,
                commit_time_source: latency.end,
                http_p50_ms: paced.http_p50_ms,
                http_p99_ms: paced.http_p99_ms,
            },
        }
    }

    pub fn print(&self) {
        let s = &self.settings;
        let verdict = |r: &Ratio| if r.met { "met" } else { "NOT MET" };
        println!();
        println!(
            "loadgen: {} receipts, {} customers, concurrency {} (worker {}), {} CPUs",
            s.receipts, s.customers, s.concurrency, s.worker_concurrency, s.cpus
        );
        println!(
            "  broker ceiling   {:>10.0} msgs/s      ({} confirmed publishes in {:.2} s{})",
            self.broker_ceiling.per_second,
            self.broker_ceiling.count,
            self.broker_ceiling.seconds,
            cpu_note(self.broker_ceiling.cpu, None)
        );
        println!(
            "  ingest           {:>10.0} receipts/s  ({} POSTs answered 200 in {:.2} s{})",
            self.ingest.per_second,
            self.ingest.count,
            self.ingest.seconds,
            cpu_note(
                self.ingest.cpu,
                (self.http_client == HttpClient::Wrk).then_some("wrk")
            )
        );
        let h = &self.ingest_http;
        println!(
            "    http_client: {}{}, {} connections; answer p50 {:.1} ms, p99 {:.1} ms",
            self.http_client.name(),
            h.threads
                .map_or_else(String::new, |t| format!(" ({t} threads)")),
            h.connections,
            h.answer_p50_ms,
            h.answer_p99_ms
        );
        println!(
            "  pgbench          {:>10.0} tps         (tpcb-like, scale 10, 16 clients, {} s{})",
            self.pgbench_tps,
            s.pgbench_seconds,
            cpu_note(self.pgbench_cpu, Some("pgbench"))
        );
        println!(
            "  worker           {:>10.0} receipts/s  ({} processed in {:.2} s{})",
            self.worker.per_second,
            self.worker.count,
            self.worker.seconds,
            cpu_note(self.worker.cpu, None)
        );
        if let Some(steady) = self.worker_steady_per_second {
            println!("    steady, first to last commit: {steady:.0} receipts/s");
        }
        println!(
            "  ingest / broker ceiling  {:>6.2}  (target ≥ {:.2}: {}; median of {} rounds: {})",
            self.ingest_vs_broker_ceiling.value,
            self.ingest_vs_broker_ceiling.target,
            verdict(&self.ingest_vs_broker_ceiling),
            self.rounds.len(),
            self.rounds
                .iter()
                .map(|r| format!("{:.2}", r.ratio))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!(
            "  worker / pgbench tps     {:>6.2}  (target ≥ {:.2}: {})",
            self.worker_vs_pgbench_tps.value,
            self.worker_vs_pgbench_tps.target,
            verdict(&self.worker_vs_pgbench_tps)
        );
        let l = &self.latency;
        println!(
            "  POST→commit at {:.0}/s ({} receipts): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            l.achieved_rate,
            l.receipts,
            l.post_to_commit_p50_ms,
            l.post_to_commit_p99_ms,
            l.post_to_commit_max_ms,
        );
        println!("    (commit time: {})", l.commit_time_source);
        println!(
            "  HTTP answer to the paced POSTs: p50 {:.1} ms, p99 {:.1} ms",
            l.http_p50_ms, l.http_p99_ms
        );
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_vec_pretty(self)?)?;
        Ok(())
    }
}

/// ", machine 93 % busy, loadgen 1.2 cores" (and ", wrk 0.3 cores" for the child process
/// `child` of the phase), or nothing without figures.
fn cpu_note(cpu: Option<Usage>, child: Option<&str>) -> String {
    cpu.map_or_else(String::new, |u| {
        let child = child.map_or_else(String::new, |name| {
            format!(", {name} {:.1} cores", u.child_process_cores)
        });
        format!(
            "; machine {:.0} % busy, loadgen {:.1} cores{child}",
            u.machine_busy_pct, u.loadgen_process_cores
        )
    })
}
