//! Faults at random intervals while the receipts flow: SIGKILL of a worker or the notifier (started
//! again at once), a restart of ingest (graceful or SIGKILL), the services' broker connections
//! closed by the broker, their database connections terminated. Only this soak's processes and
//! connections are touched: the broker connections are the ones named after its queue prefix, the
//! database backends those of its own database.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Mutex, watch};

use super::services::Services;

/// The soak's own database connections, spared by `pg_terminate_backend`.
pub const APPLICATION_NAME: &str = "loadgen-soak";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillWorker,
    KillNotifier,
    RestartIngest,
    CloseBrokerConnections,
    TerminateDbConnections,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::KillWorker,
        Fault::KillNotifier,
        Fault::RestartIngest,
        Fault::CloseBrokerConnections,
        Fault::TerminateDbConnections,
    ];
}

/// What the injector did.
#[derive(Debug, Default)]
pub struct Injected {
    pub by_kind: BTreeMap<Fault, u64>,
    pub broker_connections_closed: u64,
    pub db_backends_terminated: u64,
    /// Faults that could not be injected (the soak goes on).
    pub errors: Vec<String>,
}

pub struct Injector {
    pub services: Arc<Mutex<Services>>,
    pub db: PgPool,
    pub db_name: String,
    pub prefix: String,
    /// Mean time between faults (exponentially distributed).
    pub mean: Duration,
}

impl Injector {
    /// Injects faults until `stop` turns true; also restarts any service that died by itself.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> Injected {
        let mut injected = Injected::default();
        loop {
            let pause = {
                let u: f64 = rand::rng().random_range(f64::EPSILON..1.0);
                self.mean.mul_f64(-u.ln()).min(self.mean * 4)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
            let fault = *Fault::ALL
                .choose(&mut rand::rng())
                .unwrap_or(&Fault::KillWorker);
            match self.inject(fault, &mut injected).await {
                Ok(()) => *injected.by_kind.entry(fault).or_default() += 1,
                Err(err) => injected.errors.push(format!("{fault:?}: {err:#}")),
            }
            if let Err(err) = self.services.lock().await.revive().await {
                injected.errors.push(format!("revive: {err:#}"));
            }
        }
        injected
    }

    async fn inject(&self, fault: Fault, injected: &mut Injected) -> anyhow::Result<()> {
        match fault {
            Fault::KillWorker => {
                let mut services = self.services.lock().await;
                let i = rand::rng().random_range(0..services.workers());
                services.kill_worker(i).await
            }
            Fault::KillNotifier => self.services.lock().await.kill_notifier().await,
            Fault::RestartIngest => {
                let graceful = rand::rng().random_bool(0.5);
                self.services.lock().await.restart_ingest(graceful).await
            }
            Fault::CloseBrokerConnections => {
                injected.broker_connections_closed += close_connections(&self.prefix).await?;
                Ok(())
            }
            Fault::TerminateDbConnections => {
                let terminated: i64 = sqlx::query_scalar(
                    "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity
                     where datname = $1 and pid <> pg_backend_pid() and application_name <> $2",
                )
                .bind(&self.db_name)
                .bind(APPLICATION_NAME)
                .fetch_one(&self.db)
                .await?;
                injected.db_backends_terminated += u64::try_from(terminated)?;
                Ok(())
            }
        }
    }
}

/// `rabbitmqctl <args> --formatter json --quiet`, parsed.
async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<Value> {
    let output = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .args(["--formatter", "json", "--quiet"])
        .output()
        .await
        .context("run rabbitmqctl")?;
    if !output.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    serde_json::from_slice(&output.stdout).context("rabbitmqctl's JSON")
}

/// Closes every broker connection whose client-provided name carries `prefix` (the services
/// name theirs `loyalty <role> <prefix>`); returns how many.
pub async fn close_connections(prefix: &str) -> anyhow::Result<u64> {
    // The plain listing: the JSON one shows pids in a form `close_connection` does not take.
    let listed = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "pid",
            "client_properties",
            "--quiet",
            "--no-table-headers",
        ])
        .output()
        .await
        .context("run rabbitmqctl")?;
    if !listed.status.success() {
        bail!(
            "rabbitmqctl list_connections: {}",
            String::from_utf8_lossy(&listed.stderr).trim()
        );
    }
    let named = "\"connection_name\",\"loyalty ";
    let ours: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|line| line.contains(named) && line.contains(&format!(" {prefix}\"")))
        .filter_map(|line| line.split('\t').next().map(str::to_owned))
        .collect();
    let mut closed = 0;
    for pid in ours {
        let output = tokio::process::Command::new("rabbitmqctl")
            .args(["close_connection", &pid, "loadgen soak fault", "--quiet"])
            .output()
            .await?;
        if !output.status.success() {
            bail!(
                "rabbitmqctl close_connection: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        closed += 1;
    }
    Ok(closed)
}

/// The queues whose names start with `prefix`, with their ready and unacknowledged messages.
pub async fn queues(prefix: &str) -> anyhow::Result<Vec<(String, u64, u64)>> {
    let listed = rabbitmqctl(&[
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ])
    .await?;
    Ok(listed
        .as_array()
        .context("rabbitmqctl list_queues: not a list")?
        .iter()
        .filter_map(|q| {
            let name = q["name"].as_str()?;
            name.starts_with(prefix).then(|| {
                (
                    name.to_owned(),
                    q["messages_ready"].as_u64().unwrap_or(0),
                    q["messages_unacknowledged"].as_u64().unwrap_or(0),
                )
            })
        })
        .collect())
}
