//! CPU use during a phase, from `/proc` (Linux; absent elsewhere): how busy the whole machine was,
//! how many cores this process (in-process load, ingest and worker together) used, and how many its
//! child processes that ended during the phase used (`wrk`, `pgbench`). On a small machine where
//! PostgreSQL and RabbitMQ run too, it tells a saturated CPU from a slow design, and the load's
//! share of the CPU from the service's.

use serde::Serialize;

/// Counters at one instant.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    machine_busy: u64,
    machine_total: u64,
    process: u64,
    /// Children this process has waited for (their CPU time is added when they are reaped).
    children: u64,
}

/// Use between two samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Usage {
    /// Share of all the machine's CPUs that were busy, in %.
    pub machine_busy_pct: f64,
    /// Cores this process kept busy on average.
    pub loadgen_process_cores: f64,
    /// Cores used by the child processes that ended during the phase: `wrk` in the ingest phase
    /// (when it is the HTTP client), `pgbench` in its own; 0 in the other phases.
    pub child_process_cores: f64,
}

impl Sample {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu  user nice system idle iowait irq softirq steal guest guest_nice
        let ticks: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let machine_total: u64 = ticks.iter().sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name may hold spaces; fields after it are counted from its closing ')'.
        let fields: Vec<&str> = own.get(own.rfind(')')? + 2..)?.split_whitespace().collect();
        let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
        // utime, stime, then cutime, cstime: the waited-for children's.
        let process = field(11)? + field(12)?;
        let children = field(13)? + field(14)?;
        Some(Self {
            machine_busy: machine_total - idle,
            machine_total,
            process,
            children,
        })
    }

    /// Use since this sample; `None` without `/proc` or when no tick went by.
    pub fn usage(self, cpus: usize) -> Option<Usage> {
        let now = Self::now()?;
        let total = now.machine_total.checked_sub(self.machine_total)?;
        if total == 0 || cpus == 0 {
            return None;
        }
        let busy = now.machine_busy.saturating_sub(self.machine_busy);
        let process = now.process.saturating_sub(self.process);
        let children = now.children.saturating_sub(self.children);
        // `total` counts the ticks of every CPU; a process's ticks use the same clock.
        let cores = |ticks: u64| ticks as f64 * cpus as f64 / total as f64;
        Some(Usage {
            machine_busy_pct: 100.0 * busy as f64 / total as f64,
            loadgen_process_cores: cores(process),
            child_process_cores: cores(children),
        })
    }
}
