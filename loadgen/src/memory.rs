//! `loadgen memory`: the memory of each service (the real ingest, workers and notifier release
//! binaries, started as `loadgen soak` starts them) idle, under a sustained paced load of receipts,
//! under a flood of connections, and 10 s and 30 s after each, read from `/proc/<pid>/status`
//! (`VmRSS`, and `VmHWM`, the peak the kernel saw). Each profile (the settings as shipped, or the
//! earlier unbounded ones) runs on a scratch database and queue prefix of its own, one after the
//! other in the same run, so their figures compare on the same machine under the same load.
//!
//! The load comes from `wrk` (a separate process): the paced phase sends receipts on a fixed
//! schedule (open loop while connections are free), so the rate reached says what the machine
//! could answer; the flood sends as fast as answers come over many connections. The figures go
//! to stdout and to `target/loadgen-memory.json`.

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use loyalty::queue::Stream;
use serde::Serialize;

use crate::cpu;
use crate::setup::{Operator, Scratch};
use crate::soak::bot::FakeBot;
use crate::soak::services::{self, Services};
use crate::wrk::{self, Driven};

#[derive(Debug, Clone, clap::Args)]
pub struct MemoryArgs {
    /// Receipts a second of the sustained phase.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds of the sustained phase.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Connections of the sustained phase (its schedule is kept while one is free).
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Connections of the flood phase.
    #[arg(long, default_value_t = 1000)]
    pub flood_connections: usize,
    /// Receipts of the flood phase, sent as fast as they are answered (60 s at most).
    #[arg(long, default_value_t = 60_000)]
    pub flood_receipts: usize,
    /// Customers the bills are spread over (each has a Telegram id, so the notifier works too).
    #[arg(long, default_value_t = 2000)]
    pub customers: usize,
    /// The settings compared, one after the other in this order: `unbounded` (the earlier ones,
    /// before the memory budget), `shipped` (the defaults as they are), or
    /// `NAME:VAR=VALUE[,VAR=VALUE…]` (the shipped defaults with those variables set).
    #[arg(long = "profile", default_values = ["unbounded", "shipped"], value_parser = Profile::parse)]
    pub profiles: Vec<Profile>,
    /// Where the ingest, workers and notifier binaries are (default: beside this one).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// Where the JSON report goes (default: the workspace's `target/loadgen-memory.json`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub servers: crate::setup::Servers,
}

/// Settings under comparison: a name and the variables every service gets on top of the
/// shipped defaults.
#[derive(Debug, Clone, Serialize)]
pub struct Profile {
    pub name: String,
    pub env: Vec<(String, String)>,
}

impl Profile {
    /// `unbounded`, `shipped`, or `NAME:VAR=VALUE[,VAR=VALUE…]`.
    fn parse(text: &str) -> Result<Self, String> {
        let (name, vars) = text.split_once(':').unwrap_or((text, ""));
        let mut env: Vec<(String, String)> = match name {
            // The settings before the memory budget: no in-flight limit, huge pages as mimalloc
            // asks for them.
            "unbounded" => vec![
                ("INGEST_MAX_IN_FLIGHT".into(), "0".into()),
                ("MIMALLOC_ALLOW_THP".into(), "1".into()),
            ],
            _ => Vec::new(),
        };
        if name.is_empty() || (vars.is_empty() && !matches!(name, "unbounded" | "shipped")) {
            return Err("unbounded, shipped, or NAME:VAR=VALUE[,VAR=VALUE…]".into());
        }
        for pair in vars.split(',').filter(|p| !p.is_empty()) {
            let (var, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair}: not VAR=VALUE"))?;
            env.push((var.to_owned(), value.to_owned()));
        }
        Ok(Self {
            name: name.to_owned(),
            env,
        })
    }
}

/// Seconds of quiet before the idle reading (start-up and seeding are over).
const SETTLE: Duration = Duration::from_secs(5);
/// When memory is read again after a phase.
const AFTER: [Duration; 2] = [Duration::from_secs(10), Duration::from_secs(30)];
/// The flood's longest run.
const FLOOD_SECONDS: u64 = 60;

pub async fn main(args: MemoryArgs) -> anyhow::Result<()> {
    if args.rate.is_nan() || args.rate <= 0.0 || args.seconds == 0 {
        bail!("--rate and --seconds must be positive");
    }
    if args.connections < 2 || args.flood_connections < 2 || args.customers < 2 {
        bail!("--connections, --flood-connections and --customers must be at least 2");
    }
    if args.profiles.is_empty() {
        bail!("no --profile to run");
    }
    let wrk = wrk::find().context("`loadgen memory` needs wrk on PATH")?;
    let bin_dir = services::bin_dir(args.bin_dir.as_deref())?;
    let mut profiles = Vec::new();
    for (i, profile) in args.profiles.iter().enumerate() {
        eprintln!(
            "== profile {}/{}: {} {:?}",
            i + 1,
            args.profiles.len(),
            profile.name,
            profile.env
        );
        let scratch = Scratch::new(&args.servers.database_url, &args.servers.amqp_url)?;
        let outcome = tokio::select! {
            outcome = run(&args, profile, &scratch, &wrk, &bin_dir) => outcome,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        eprintln!("cleaning up: database and queues of {}", scratch.tag);
        let cleaned = scratch.clean().await;
        profiles.push(outcome?);
        cleaned?;
    }
    let report = Report {
        args: Settings {
            rate: args.rate,
            seconds: args.seconds,
            connections: args.connections,
            flood_connections: args.flood_connections,
            flood_receipts: args.flood_receipts,
            customers: args.customers,
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
        },
        profiles,
    };
    report.print();
    let path = args
        .report
        .clone()
        .unwrap_or_else(|| crate::target_dir().join("loadgen-memory.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("write {}", path.display()))?;
    println!("report written to {}", path.display());
    Ok(())
}

/// One process's figures at one instant, from `/proc/<pid>/status` and `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Reading {
    pub rss_kib: u64,
    /// The resident peak since the process started.
    pub hwm_kib: u64,
    /// Heap and stacks (not the mapped binary).
    pub anon_kib: u64,
    pub threads: u64,
    /// CPU time so far (user + system), in clock ticks.
    #[serde(skip)]
    pub cpu_ticks: u64,
}

impl Reading {
    pub fn of(pid: u32) -> Option<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status.lines().find_map(|line| {
                let value = line.strip_prefix(name)?.strip_prefix(':')?;
                value.split_whitespace().next()?.parse::<u64>().ok()
            })
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may hold spaces) are counted from its ')'.
        let fields: Vec<&str> = stat
            .get(stat.rfind(')')? + 2..)?
            .split_whitespace()
            .collect();
        let tick = |i: usize| fields.get(i)?.parse::<u64>().ok();
        Some(Self {
            rss_kib: field("VmRSS")?,
            hwm_kib: field("VmHWM")?,
            anon_kib: field("RssAnon").unwrap_or(0),
            threads: field("Threads").unwrap_or(0),
            cpu_ticks: tick(11)? + tick(12)?,
        })
    }
}

/// Readings of every service at one instant, in the order of `Services::pids`.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// Seconds since the profile's idle reading.
    pub at_s: f64,
    pub phase: &'static str,
    pub readings: Vec<Option<Reading>>,
}

struct Sampler {
    names: Vec<&'static str>,
    pids: Vec<Option<u32>>,
    started: Instant,
    snapshots: Vec<Snapshot>,
}

impl Sampler {
    fn new(services: &Services) -> Self {
        let (names, pids) = services.pids().into_iter().unzip();
        Self {
            names,
            pids,
            started: Instant::now(),
            snapshots: Vec::new(),
        }
    }

    fn take(&mut self, phase: &'static str) -> &Snapshot {
        self.snapshots.push(Snapshot {
            at_s: self.started.elapsed().as_secs_f64(),
            phase,
            readings: self
                .pids
                .iter()
                .map(|pid| pid.and_then(Reading::of))
                .collect(),
        });
        &self.snapshots[self.snapshots.len() - 1]
    }

    /// Runs `work`, taking a snapshot every second until it is done.
    async fn during<T>(&mut self, phase: &'static str, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                done = &mut work => return done,
                _ = tick.tick() => {
                    self.take(phase);
                }
            }
        }
    }

    /// Waits `after` since `since`, then takes a snapshot.
    async fn after(&mut self, phase: &'static str, since: Instant, after: Duration) {
        tokio::time::sleep_until((since + after).into()).await;
        self.take(phase);
    }

    /// Service `i`'s largest resident size over the snapshots of `phase`.
    fn peak(&self, i: usize, phase: &str) -> Option<u64> {
        self.of(i, phase).map(|r| r.rss_kib).max()
    }

    fn last(&self, i: usize, phase: &str) -> Option<Reading> {
        self.of(i, phase).last()
    }

    fn of<'a>(&'a self, i: usize, phase: &'a str) -> impl Iterator<Item = Reading> + 'a {
        self.snapshots
            .iter()
            .filter(move |s| s.phase == phase)
            .filter_map(move |s| s.readings.get(i).copied().flatten())
    }

    /// Cores service `i` kept busy over the snapshots of `phase`.
    fn cores(&self, i: usize, phase: &str) -> Option<f64> {
        let first = self.snapshots.iter().find(|s| s.phase == phase)?;
        let last = self.snapshots.iter().rfind(|s| s.phase == phase)?;
        let ticks = last.readings.get(i).copied().flatten()?.cpu_ticks
            - first.readings.get(i).copied().flatten()?.cpu_ticks;
        let seconds = last.at_s - first.at_s;
        // Linux's USER_HZ is 100 everywhere but on exotic builds.
        (seconds > 0.0).then(|| ticks as f64 / 100.0 / seconds)
    }
}

fn mib(kib: Option<u64>) -> Option<f64> {
    kib.map(|k| (k as f64 / 1024.0 * 10.0).round() / 10.0)
}

/// One service's memory through a profile's run, in MiB of resident memory.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceMemory {
    pub service: &'static str,
    pub idle_mib: Option<f64>,
    pub load_peak_mib: Option<f64>,
    pub load_after_10s_mib: Option<f64>,
    pub load_after_30s_mib: Option<f64>,
    pub flood_peak_mib: Option<f64>,
    pub flood_after_10s_mib: Option<f64>,
    pub flood_after_30s_mib: Option<f64>,
    /// The kernel's own peak (`VmHWM`) at the end: catches a spike between two readings.
    pub hwm_mib: Option<f64>,
    /// Heap and stacks at the load's peak reading.
    pub load_peak_anon_mib: Option<f64>,
    pub threads_idle: Option<u64>,
    pub threads_peak: Option<u64>,
    pub load_cores: Option<f64>,
    pub flood_cores: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct ProfileRun {
    pub profile: Profile,
    pub load: Driven,
    pub load_machine: Option<cpu::Usage>,
    /// Receipts queued for the workers when the load ended, and 30 s later.
    pub backlog_after_load: (u32, u32),
    pub flood: Driven,
    pub flood_machine: Option<cpu::Usage>,
    pub backlog_after_flood: (u32, u32),
    /// `/proc/loadavg` when the profile started and when it ended.
    pub loadavg: (String, String),
    pub services: Vec<ServiceMemory>,
    pub snapshots: Vec<Snapshot>,
}

#[derive(Debug, Serialize)]
struct Settings {
    rate: f64,
    seconds: u64,
    connections: usize,
    flood_connections: usize,
    flood_receipts: usize,
    customers: usize,
    cpus: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    args: Settings,
    profiles: Vec<ProfileRun>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

async fn run(
    args: &MemoryArgs,
    profile: &Profile,
    scratch: &Scratch,
    wrk: &std::path::Path,
    bin_dir: &std::path::Path,
) -> anyhow::Result<ProfileRun> {
    let loadavg_start = loadavg();
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let fake_bot = FakeBot::start().await?;
    let (db_url, db) = scratch.create_database().await?;
    let admin_token = format!("memory-{}", rand::random::<u64>());
    let services = Services::start(
        services::Settings {
            bin_dir: bin_dir.to_path_buf(),
            logs: crate::target_dir().join(format!("memory-{}", scratch.tag)),
            db_url,
            amqp_url: args.servers.amqp_url.clone(),
            prefix: scratch.prefix.clone(),
            admin_token: admin_token.clone(),
            telegram_api_url: fake_bot.url.clone(),
            env: profile.env.clone(),
        },
        1,
    )
    .await?;
    let base = services.base();
    let load_count = (args.rate * args.seconds as f64).ceil() as usize;
    eprintln!(
        "[1/4] seeding {} customers, {} bills",
        args.customers,
        load_count + args.flood_receipts
    );
    let operator = Operator::new(&base, &admin_token, db.clone());
    let bot_token = format!("123456:memory{}{:020}", scratch.tag, rand::random::<u32>());
    let shop = operator
        .seed(
            args.customers,
            load_count + args.flood_receipts,
            16,
            Some(&bot_token),
        )
        .await?;
    let (load_bills, flood_bills) = shop.bills.split_at(load_count);
    let receipts_queue = scratch.topology.main(Stream::Receipts);
    let depth = || crate::broker::depth(&args.servers.amqp_url, &receipts_queue);

    let mut sampler = Sampler::new(&services);
    tokio::time::sleep(SETTLE).await;
    let idle = sampler.take("idle").clone();
    eprintln!("      idle: {}", brief(&sampler.names, &idle));

    eprintln!(
        "[2/4] sustained: {:.0} receipts/s for {} s over {} connections",
        args.rate, args.seconds, args.connections
    );
    let cpu = cpu::Sample::now();
    let load = sampler
        .during(
            "load",
            wrk::drive(
                wrk,
                &base,
                &shop.token,
                "load",
                load_bills,
                args.connections,
                (Some(args.rate), args.seconds),
            ),
        )
        .await?;
    let load_machine = cpu.and_then(|c| c.usage(cpus));
    let ended = Instant::now();
    let backlog = depth().await?;
    eprintln!(
        "      reached {:.0} accepted/s ({} shed, {} socket errors, p99 {:.0} ms); machine {:.0} % busy; {backlog} queued",
        load.ok_per_second,
        load.shed,
        load.socket_errors,
        load.answer_p99_ms,
        load_machine.map_or(0.0, |u| u.machine_busy_pct)
    );
    sampler.after("load+10s", ended, AFTER[0]).await;
    sampler.after("load+30s", ended, AFTER[1]).await;
    let backlog_later = depth().await?;

    eprintln!(
        "[3/4] flood: {} receipts over {} connections",
        flood_bills.len(),
        args.flood_connections
    );
    let cpu = cpu::Sample::now();
    let flood = sampler
        .during(
            "flood",
            wrk::drive(
                wrk,
                &base,
                &shop.token,
                "flood",
                flood_bills,
                args.flood_connections,
                (None, FLOOD_SECONDS),
            ),
        )
        .await?;
    let flood_machine = cpu.and_then(|c| c.usage(cpus));
    let ended = Instant::now();
    let flood_backlog = depth().await?;
    eprintln!(
        "      {:.0} accepted/s, {} shed, {} socket errors, p99 {:.0} ms",
        flood.ok_per_second, flood.shed, flood.socket_errors, flood.answer_p99_ms
    );
    sampler.after("flood+10s", ended, AFTER[0]).await;
    sampler.after("flood+30s", ended, AFTER[1]).await;
    let flood_backlog_later = depth().await?;
    let end = sampler.take("end").clone();

    eprintln!("[4/4] stopping the services");
    services.stop(Duration::from_secs(15)).await;
    db.close().await;
    drop(fake_bot);

    let memory = (0..sampler.names.len())
        .map(|i| {
            let reading = |s: &Snapshot| s.readings.get(i).copied().flatten();
            let peak_reading = sampler.of(i, "load").max_by_key(|r| r.rss_kib);
            ServiceMemory {
                service: sampler.names[i],
                idle_mib: mib(reading(&idle).map(|r| r.rss_kib)),
                load_peak_mib: mib(sampler.peak(i, "load")),
                load_after_10s_mib: mib(sampler.last(i, "load+10s").map(|r| r.rss_kib)),
                load_after_30s_mib: mib(sampler.last(i, "load+30s").map(|r| r.rss_kib)),
                flood_peak_mib: mib(sampler.peak(i, "flood")),
                flood_after_10s_mib: mib(sampler.last(i, "flood+10s").map(|r| r.rss_kib)),
                flood_after_30s_mib: mib(sampler.last(i, "flood+30s").map(|r| r.rss_kib)),
                hwm_mib: mib(reading(&end).map(|r| r.hwm_kib)),
                load_peak_anon_mib: mib(peak_reading.map(|r| r.anon_kib)),
                threads_idle: reading(&idle).map(|r| r.threads),
                threads_peak: sampler
                    .snapshots
                    .iter()
                    .filter_map(reading)
                    .map(|r| r.threads)
                    .max(),
                load_cores: sampler.cores(i, "load"),
                flood_cores: sampler.cores(i, "flood"),
            }
        })
        .collect();
    Ok(ProfileRun {
        profile: profile.clone(),
        load,
        load_machine,
        backlog_after_load: (backlog, backlog_later),
        flood,
        flood_machine,
        backlog_after_flood: (flood_backlog, flood_backlog_later),
        loadavg: (loadavg_start, loadavg()),
        services: memory,
        snapshots: sampler.snapshots,
    })
}

/// `ingest 21.3 MiB, workers …` for the progress lines.
fn brief(names: &[&str], snapshot: &Snapshot) -> String {
    names
        .iter()
        .zip(&snapshot.readings)
        .map(|(name, r)| match r {
            Some(r) => format!("{name} {:.1} MiB", r.rss_kib as f64 / 1024.0),
            None => format!("{name} gone"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    fn print(&self) {
        let a = &self.args;
        println!(
            "\nloadgen memory: sustained {:.0}/s for {} s over {} connections; flood {} receipts over {} connections; {} CPUs",
            a.rate, a.seconds, a.connections, a.flood_receipts, a.flood_connections, a.cpus
        );
        let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        for p in &self.profiles {
            println!(
                "\n{} {:?}  (load average {} → {})",
                p.profile.name, p.profile.env, p.loadavg.0, p.loadavg.1
            );
            println!(
                "  sustained: {:.0} accepted/s of {:.0} asked ({} shed, {} socket errors, p50 {:.1} ms, p99 {:.1} ms), machine {:.0} % busy, wrk {:.2} cores; queued {} at the end, {} 30 s later",
                p.load.ok_per_second,
                a.rate,
                p.load.shed,
                p.load.socket_errors,
                p.load.answer_p50_ms,
                p.load.answer_p99_ms,
                p.load_machine.map_or(0.0, |u| u.machine_busy_pct),
                p.load_machine.map_or(0.0, |u| u.child_process_cores),
                p.backlog_after_load.0,
                p.backlog_after_load.1
            );
            println!(
                "  flood:     {:.0} accepted/s, {} of {} answered ({} shed, {} socket errors, p99 {:.1} ms), machine {:.0} % busy",
                p.flood.ok_per_second,
                p.flood.answered,
                p.flood.sent,
                p.flood.shed,
                p.flood.socket_errors,
                p.flood.answer_p99_ms,
                p.flood_machine.map_or(0.0, |u| u.machine_busy_pct)
            );
            println!(
                "  {:<9} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>11}",
                "RSS MiB",
                "idle",
                "load↑",
                "+10s",
                "+30s",
                "flood↑",
                "+10s",
                "+30s",
                "HWM",
                "anon↑",
                "threads",
                "cores l/f"
            );
            for s in &p.services {
                println!(
                    "  {:<9} {:>6} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>11}",
                    s.service,
                    cell(s.idle_mib),
                    cell(s.load_peak_mib),
                    cell(s.load_after_10s_mib),
                    cell(s.load_after_30s_mib),
                    cell(s.flood_peak_mib),
                    cell(s.flood_after_10s_mib),
                    cell(s.flood_after_30s_mib),
                    cell(s.hwm_mib),
                    cell(s.load_peak_anon_mib),
                    format!(
                        "{}/{}",
                        s.threads_idle.unwrap_or(0),
                        s.threads_peak.unwrap_or(0)
                    ),
                    format!(
                        "{}/{}",
                        cell(s.load_cores).trim(),
                        cell(s.flood_cores).trim()
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_named_settings_on_top_of_the_shipped_ones() {
        let unbounded = Profile::parse("unbounded").expect("unbounded");
        assert_eq!(
            unbounded.env,
            [
                ("INGEST_MAX_IN_FLIGHT".to_owned(), "0".to_owned()),
                ("MIMALLOC_ALLOW_THP".to_owned(), "1".to_owned())
            ]
        );
        assert!(Profile::parse("shipped").expect("shipped").env.is_empty());
        let custom =
            Profile::parse("purge:MIMALLOC_PURGE_DELAY=0,INGEST_MAX_IN_FLIGHT=64").expect("custom");
        assert_eq!(custom.name, "purge");
        assert_eq!(custom.env.len(), 2);
        assert!(Profile::parse("other").is_err());
        assert!(Profile::parse("x:NOVALUE").is_err());
    }

    #[test]
    fn reads_a_running_process_memory() {
        let own = Reading::of(std::process::id()).expect("/proc/self");
        assert!(own.rss_kib > 0 && own.hwm_kib >= own.rss_kib && own.threads >= 1);
        assert!(Reading::of(u32::MAX).is_none());
    }
}
