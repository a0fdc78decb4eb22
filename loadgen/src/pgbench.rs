//! The PostgreSQL baseline: `pgbench`'s TPC-B-like transactions a second on a scratch database of
//! the same server, scale 10, 16 clients.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

use crate::cpu::{self, Usage};
use crate::setup::with_database;

#[derive(Debug, Clone, Copy)]
pub struct Pgbench {
    pub tps: f64,
}

/// `pgbench` from PATH, else the newest under `/usr/lib/postgresql/*/bin`.
fn find() -> anyhow::Result<PathBuf> {
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("pgbench"))
            .find(|p| p.is_file())
    }) {
        return Ok(found);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let path = entry.path().join("bin/pgbench");
            path.is_file().then_some((version, path))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, path)| path)
        .context("pgbench is neither on PATH nor under /usr/lib/postgresql/*/bin")
}

async fn pgbench(binary: &Path, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new(binary)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "pgbench {} failed ({}): {}",
            args.first().unwrap_or(&""),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The `tps = X` figure of pgbench's summary.
fn parse_tps(summary: &str) -> Option<f64> {
    summary.lines().find_map(|line| {
        line.trim()
            .strip_prefix("tps = ")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// Creates `database`, initializes it at scale 10, runs TPC-B-like for `seconds`, drops it;
/// returns the tps and the CPU use during the timed run.
pub async fn run(
    server_url: &str,
    database: &str,
    seconds: u32,
    cpus: usize,
) -> anyhow::Result<(Pgbench, Option<Usage>)> {
    let binary = find()?;
    let mut admin = PgConnection::connect(server_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {database}")))
        .execute(&mut admin)
        .await?;
    let url = with_database(server_url, database)?;
    let measured = async {
        pgbench(&binary, &["-i", "-q", "-s", "10", &url]).await?;
        let cpu = cpu::Sample::now();
        let summary = pgbench(
            &binary,
            &[
                "-b",
                "tpcb-like",
                "-c",
                "16",
                "-j",
                "2",
                "-T",
                &seconds.to_string(),
                &url,
            ],
        )
        .await?;
        let tps = parse_tps(&summary)
            .with_context(|| format!("no `tps = ` in pgbench's output:\n{summary}"))?;
        anyhow::Ok((Pgbench { tps }, cpu.and_then(|c| c.usage(cpus))))
    }
    .await;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "drop database if exists {database} with (force)"
    )))
    .execute(&mut admin)
    .await;
    let measured = measured?;
    dropped?;
    Ok(measured)
}

#[cfg(test)]
mod tests {
    use super::parse_tps;

    #[test]
    fn reads_the_tps_line() {
        let out = "number of failed transactions: 0 (0.000%)\n\
                   latency average = 7.702 ms\n\
                   initial connection time = 9.118 ms\n\
                   tps = 2077.401337 (without initial connection time)\n";
        assert_eq!(parse_tps(out), Some(2077.401337));
        assert_eq!(parse_tps("nothing"), None);
    }
}
