//! The services under test as the real release binaries, in child processes the soak can kill
//! with SIGKILL and start again: ingest on a fixed local port (the registers know one address),
//! one or more workers, the notifier. Their output goes to one log file per binary. `loadgen
//! memory` starts them the same way and reads their memory by pid.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// Where the binaries are: `dir` when given, else beside this executable (`target/release/`).
pub fn bin_dir(dir: Option<&Path>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("this executable's directory")?
            .to_path_buf()),
    }
}

/// The environment every service gets.
pub struct Settings {
    pub bin_dir: PathBuf,
    pub logs: PathBuf,
    pub db_url: String,
    pub amqp_url: String,
    pub prefix: String,
    pub admin_token: String,
    pub telegram_api_url: String,
    /// Further variables every service gets (`loadgen memory`'s settings under comparison).
    pub env: Vec<(String, String)>,
}

pub struct Services {
    settings: Settings,
    pub ingest_addr: SocketAddr,
    ingest: Child,
    workers: Vec<Child>,
    notifier: Child,
    /// Processes found dead without the soak killing them (a crash), by binary.
    pub crashed: Vec<String>,
}

impl Services {
    pub async fn start(settings: Settings, workers: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.logs)?;
        for bin in ["ingest", "workers", "notifier"] {
            let path = settings.bin_dir.join(bin);
            if !path.is_file() {
                bail!(
                    "{} is missing: cargo build --release -p ingest -p workers -p notifier",
                    path.display()
                );
            }
        }
        // A free port, kept for every restart of ingest.
        let ingest_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let ingest = spawn(&settings, "ingest", &ingest_env(ingest_addr))?;
        let mut services = Self {
            workers: (0..workers.max(1))
                .map(|_| spawn(&settings, "workers", &[]))
                .collect::<anyhow::Result<_>>()?,
            notifier: spawn(&settings, "notifier", &notifier_env())?,
            settings,
            ingest_addr,
            ingest,
            crashed: Vec::new(),
        };
        services.wait_ingest().await?;
        Ok(services)
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.ingest_addr)
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Waits until ingest answers `/healthz` (it migrates and binds first).
    pub async fn wait_ingest(&mut self) -> anyhow::Result<()> {
        let url = format!("{}/healthz", self.base());
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.ingest.try_wait()? {
                bail!("ingest exited at start ({status}); see its log");
            }
            let answered = http.get(&url).send().await;
            if answered.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("ingest did not answer /healthz within a minute")
    }

    /// SIGKILLs worker process `i` and starts another in its place.
    pub async fn kill_worker(&mut self, i: usize) -> anyhow::Result<()> {
        let i = i % self.workers.len();
        kill(&mut self.workers[i]).await;
        self.workers[i] = spawn(&self.settings, "workers", &[])?;
        Ok(())
    }

    /// SIGKILLs the notifier and starts another.
    pub async fn kill_notifier(&mut self) -> anyhow::Result<()> {
        kill(&mut self.notifier).await;
        self.notifier = spawn(&self.settings, "notifier", &notifier_env())?;
        Ok(())
    }

    /// Stops ingest (SIGTERM, a graceful stop, or SIGKILL) and starts it again on its port.
    pub async fn restart_ingest(&mut self, graceful: bool) -> anyhow::Result<()> {
        if graceful {
            terminate(&mut self.ingest, Duration::from_secs(15)).await;
        } else {
            kill(&mut self.ingest).await;
        }
        self.ingest = spawn(&self.settings, "ingest", &ingest_env(self.ingest_addr))?;
        self.wait_ingest().await
    }

    /// Restarts any process that exited by itself, recording it as a crash.
    pub async fn revive(&mut self) -> anyhow::Result<()> {
        if self.ingest.try_wait()?.is_some() {
            self.crashed.push("ingest".into());
            self.ingest = spawn(&self.settings, "ingest", &ingest_env(self.ingest_addr))?;
            self.wait_ingest().await?;
        }
        for worker in &mut self.workers {
            if worker.try_wait()?.is_some() {
                self.crashed.push("workers".into());
                *worker = spawn(&self.settings, "workers", &[])?;
            }
        }
        if self.notifier.try_wait()?.is_some() {
            self.crashed.push("notifier".into());
            self.notifier = spawn(&self.settings, "notifier", &notifier_env())?;
        }
        Ok(())
    }

    /// Stops everything gracefully (SIGTERM), killing what does not stop within `grace`.
    pub async fn stop(mut self, grace: Duration) {
        terminate(&mut self.ingest, grace).await;
        for worker in &mut self.workers {
            terminate(worker, grace).await;
        }
        terminate(&mut self.notifier, grace).await;
    }

    /// The running processes' ids by binary (a process that has exited has none).
    pub fn pids(&self) -> Vec<(&'static str, Option<u32>)> {
        let mut pids = vec![("ingest", self.ingest.id())];
        pids.extend(self.workers.iter().map(|w| ("workers", w.id())));
        pids.push(("notifier", self.notifier.id()));
        pids
    }

    pub fn logs(&self) -> &Path {
        &self.settings.logs
    }
}

/// The key the soak's services seal its fake bot's token with (a throwaway database, a fake bot).
const SOAK_TOKEN_KEYS: &str = "soak:c29hay1vbmx5LWtleS1ub3QtYS1zZWNyZXQtMzJieXQ=";

fn ingest_env(addr: SocketAddr) -> Vec<(&'static str, String)> {
    vec![("INGEST_ADDR", addr.to_string())]
}

/// Telegram's limits are the fake Bot API's business here: the notifier should not be the
/// bottleneck of a soak.
fn notifier_env() -> Vec<(&'static str, String)> {
    vec![
        ("TELEGRAM_BOT_RATE", "100000".into()),
        ("TELEGRAM_CHAT_RATE", "100000".into()),
    ]
}

fn spawn(settings: &Settings, bin: &str, extra: &[(&str, String)]) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(settings.logs.join(format!("{bin}.log")))?;
    let mut command = Command::new(settings.bin_dir.join(bin));
    command
        .env("DATABASE_URL", &settings.db_url)
        .env("AMQP_URL", &settings.amqp_url)
        .env("QUEUE_PREFIX", &settings.prefix)
        .env("ADMIN_TOKEN", &settings.admin_token)
        .env("TOKEN_KEYS", SOAK_TOKEN_KEYS)
        .env("TELEGRAM_API_URL", &settings.telegram_api_url)
        // Each process its own metrics port; nothing scrapes them here.
        .env("METRICS_ADDR", "127.0.0.1:0")
        // Warnings and errors only: a line per receipt would cost the CPU the soak measures.
        .env("RUST_LOG", "warn")
        // The panic's message is enough; its place is in the source.
        .env("RUST_BACKTRACE", "0")
        .envs(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(settings.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    command
        .spawn()
        .with_context(|| format!("start {}", settings.bin_dir.join(bin).display()))
}

async fn kill(child: &mut Child) {
    let _ = child.start_kill();
    let _ = child.wait().await;
}

/// SIGTERM, then SIGKILL after `grace`.
async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        kill(child).await;
    }
}
