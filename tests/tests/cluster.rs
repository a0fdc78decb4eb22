//! A RabbitMQ cluster losing a node under load. Three nodes of the test's own (started by
//! `.ci/rabbit-cluster` beside the local broker, which is left alone) carry ingest's and a
//! worker's connections; POS registers post receipts at a steady pace, and the node leading the
//! `receipts` quorum queue is killed in the middle. Every receipt that got a 200 is applied exactly
//! once; while the cluster elects a new leader, POSTs get 503 with `Retry-After` or succeed. The
//! time until receipts flow again and the 503s are printed and written to
//! `target/cluster-failover.json`.
//!
//! Skipped (saying so) where the RabbitMQ server is not installed; `REQUIRE_CLUSTER=1` (set by
//! `.ci/run`) makes that a failure.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use e2e::{TestApp, receipt_event};
use serde_json::json;
use tokio::sync::Mutex;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../.ci/rabbit-cluster");
const RABBIT_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// Receipts the registers post in all, and how many registers post at once.
const RECEIPTS: usize = 300;
const REGISTERS: usize = 4;
/// The pause of one register between two receipts: together about 20 receipts a second.
const PACE: Duration = Duration::from_millis(200);
/// How soon a register sends a refused receipt again (sooner than `Retry-After`, to time the
/// failover finely).
const RESEND_AFTER: Duration = Duration::from_millis(200);

/// How many times the cluster is started afresh before the test gives up on it.
const START_ATTEMPTS: u32 = 3;

/// How long a receipt may go unaccepted before the test fails (instead of hanging).
const GIVE_UP: Duration = Duration::from_secs(45);

/// Three RabbitMQ nodes of this test's own, stopped and deleted when dropped (even when the test
/// fails).
struct Cluster {
    dir: PathBuf,
    urls: Vec<String>,
}

impl Cluster {
    /// Starts and clusters the nodes; None (the test is skipped) where RabbitMQ is not installed.
    fn start() -> Option<Self> {
        if !Path::new(RABBIT_SERVER).exists() {
            assert!(
                std::env::var("REQUIRE_CLUSTER").as_deref() != Ok("1"),
                "REQUIRE_CLUSTER=1 but the RabbitMQ server ({RABBIT_SERVER}) is not installed"
            );
            eprintln!(
                "SKIPPED: the RabbitMQ server ({RABBIT_SERVER}) is not installed, so no cluster can be started"
            );
            return None;
        }
        let mut failures = Vec::new();
        for attempt in 0..START_ATTEMPTS {
            match Self::start_once(attempt) {
                Ok(cluster) => return Some(cluster),
                Err(failure) => {
                    // The cluster is the test's scaffolding, not what it tests: a node that did not
                    // boot is tried again on other ports, and each failure is shown.
                    eprintln!("cluster start, attempt {}: {failure}", attempt + 1);
                    failures.push(failure);
                }
            }
        }
        panic!(
            "the cluster did not start in {START_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        );
    }

    /// One start, on ports and under names of this process's and this attempt's own (so that runs
    /// beside each other do not collide). AMQP ports 10 000–18 999, distribution ports 10 000
    /// above them: all below the kernel's ephemeral ports (32 768 and up), which any outgoing
    /// connection may hold.
    fn start_once(attempt: u32) -> Result<Self, String> {
        let pid = std::process::id();
        let slot = (pid + attempt * 1_009) % 3_000;
        let first_port = 10_000 + slot * 3;
        let dir = std::env::temp_dir().join(format!("rabbit-cluster-{pid}-{attempt}"));
        // Dropped even if the start fails half-way: whatever started is stopped.
        let mut cluster = Cluster {
            dir,
            urls: Vec::new(),
        };
        let started = std::process::Command::new(SCRIPT)
            .arg("start")
            .arg(&cluster.dir)
            .arg(format!("lc{pid}a{attempt}n"))
            .arg(first_port.to_string())
            .output()
            .map_err(|e| format!("the cluster script did not run: {e}"))?;
        if !started.status.success() {
            return Err(String::from_utf8_lossy(&started.stderr).into_owned());
        }
        cluster.urls = String::from_utf8_lossy(&started.stdout)
            .trim()
            .split(',')
            .map(str::to_owned)
            .collect();
        if cluster.urls.len() != 3 {
            return Err(format!("not three nodes: {:?}", cluster.urls));
        }
        Ok(cluster)
    }

    /// The node leading the quorum queue `queue`.
    async fn leader(&self, queue: &str) -> String {
        let out = tokio::process::Command::new(SCRIPT)
            .arg("leader")
            .arg(&self.dir)
            .arg(queue)
            .output()
            .await
            .expect("the cluster script runs");
        assert!(
            out.status.success(),
            "no leader for {queue}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Kills a node with SIGKILL: a crash, no goodbye to its clients or peers.
    async fn kill(&self, node: &str) {
        let out = tokio::process::Command::new(SCRIPT)
            .arg("kill")
            .arg(&self.dir)
            .arg(node)
            .output()
            .await
            .expect("the cluster script runs");
        assert!(
            out.status.success(),
            "{node} was not killed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let stopped = std::process::Command::new(SCRIPT)
            .arg("stop")
            .arg(&self.dir)
            .output();
        if !stopped.as_ref().is_ok_and(|o| o.status.success()) {
            eprintln!("the test's RabbitMQ nodes were not all stopped: {stopped:?}");
        }
    }
}

/// What the registers saw.
#[derive(Default)]
struct Tally {
    /// When each receipt got its 200, and when its first POST was sent.
    accepted: Vec<(Instant, Instant)>,
    /// 503s, with whether `Retry-After` came with it.
    unavailable: Vec<(Instant, bool)>,
}

/// One register: posts its receipts one after the other, each again after a 503 until it gets
/// its 200; any other answer fails the test.
async fn register(
    app: Arc<TestApp>,
    token: String,
    receipts: Vec<(usize, i64)>,
    tally: Arc<Mutex<Tally>>,
) {
    for (i, bill) in receipts {
        let event = receipt_event(&format!("ev-{i}"), &format!("rc-{i}"), Some(bill), "100");
        let first_sent = Instant::now();
        loop {
            assert!(
                first_sent.elapsed() < GIVE_UP,
                "receipt {i} was refused for {GIVE_UP:?}: the cluster never took receipts again"
            );
            let response = app
                .http
                .post(app.url("/api/v2/receipts"))
                .bearer_auth(&token)
                .json(&event)
                .timeout(GIVE_UP)
                .send()
                .await
                .expect("ingest answers in time");
            match response.status().as_u16() {
                200 => {
                    tally
                        .lock()
                        .await
                        .accepted
                        .push((Instant::now(), first_sent));
                    break;
                }
                503 => {
                    let retry_after = response.headers().contains_key("retry-after");
                    tally
                        .lock()
                        .await
                        .unavailable
                        .push((Instant::now(), retry_after));
                    tokio::time::sleep(RESEND_AFTER).await;
                }
                status => panic!(
                    "receipt {i}: {status} {}",
                    response.text().await.unwrap_or_default()
                ),
            }
        }
        tokio::time::sleep(PACE).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_the_receipts_queue_leader_loses_and_doubles_no_accepted_receipt() {
    // The services' warnings (nodes lost, reconnections) tell the failover's story in the output.
    loyalty_service::telemetry::init("warn");
    let begun = Instant::now();
    let Some(cluster) = Cluster::start() else {
        return;
    };
    eprintln!("three nodes up after {:?}", begun.elapsed());
    let app = Arc::new(TestApp::spawn_on(cluster.urls.clone()).await);
    // As the ingest binary does at start: connect and declare the queues. A quorum queue's leader
    // is placed on the node of the connection that declares it, so the node killed below is the
    // one ingest publishes through (its POSTs must fail over), while the worker, connected to
    // another node, keeps consuming from the new leader.
    app.state
        .broker
        .channel()
        .await
        .expect("ingest connects to a node");
    let shop = app.shop_with_bills(RECEIPTS).await;
    let (org, token, bills) = (shop.org, shop.token.clone(), shop.bills.clone());
    let worker = app.start_worker();

    let started = Instant::now();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let registers: Vec<_> = (0..REGISTERS)
        .map(|r| {
            let receipts = bills
                .iter()
                .enumerate()
                .skip(r)
                .step_by(REGISTERS)
                .map(|(i, bill)| (i, *bill))
                .collect();
            tokio::spawn(register(
                app.clone(),
                token.clone(),
                receipts,
                tally.clone(),
            ))
        })
        .collect();

    // Receipts flow: then the node leading the receipts queue dies.
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.processed(org).await < 20 {
        assert!(Instant::now() < deadline, "no receipt was applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let queue = app
        .state
        .broker
        .topology()
        .main(loyalty::queue::Stream::Receipts);
    let leader = cluster.leader(&queue).await;
    let killed_at = Instant::now();
    let killed_at_utc: DateTime<Utc> = Utc::now();
    cluster.kill(&leader).await;
    let accepted_before_kill = tally.lock().await.accepted.len();
    let progress = {
        let (app, tally) = (app.clone(), tally.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let (accepted, refused) = {
                    let t = tally.lock().await;
                    (t.accepted.len(), t.unavailable.len())
                };
                eprintln!(
                    "{:?} after the kill: {accepted} accepted, {refused} answered 503, {} applied",
                    killed_at.elapsed(),
                    app.processed(org).await
                );
            }
        })
    };
    eprintln!(
        "killed {leader}, the leader of {queue}, after {accepted_before_kill} receipts were accepted"
    );

    for r in registers {
        r.await.expect("the register posted all its receipts");
    }
    let posting = started.elapsed();
    progress.abort();

    // Every receipt got its 200 in the end: each is applied, once.
    app.assert_applied_exactly_once(&shop, RECEIPTS).await;

    // The figures: how long until ingest accepted again and the worker applied a receipt received
    // after the kill, and what the registers were told meanwhile.
    let tally = tally.lock().await;
    assert!(
        tally
            .unavailable
            .iter()
            .all(|(_, retry_after)| *retry_after),
        "every 503 says when to retry"
    );
    let accepting_again = tally
        .accepted
        .iter()
        .filter(|(_, first_sent)| *first_sent >= killed_at)
        .map(|(at, _)| at.duration_since(killed_at))
        .min()
        .expect("receipts were posted after the kill");
    let first_applied_after: Option<DateTime<Utc>> = sqlx::query_scalar(
        "select min(processed_at) from receipts where org_id = $1 and received_at > $2",
    )
    .bind(org)
    .bind(killed_at_utc)
    .fetch_one(&app.db.pool)
    .await
    .expect("query");
    let applying_again = first_applied_after
        .expect("receipts were received after the kill")
        .signed_duration_since(killed_at_utc)
        .to_std()
        .unwrap_or_default();
    let refused = tally.unavailable.len();
    let refused_after_kill = tally
        .unavailable
        .iter()
        .filter(|(at, _)| *at >= killed_at)
        .count();
    let figures = json!({
        "receipts": RECEIPTS,
        "registers": REGISTERS,
        "posting_seconds": posting.as_secs_f64(),
        "killed_node": leader,
        "accepted_before_kill": accepted_before_kill,
        "accepting_again_ms": accepting_again.as_millis() as u64,
        "applying_again_ms": applying_again.as_millis() as u64,
        "answered_503": refused,
        "answered_503_after_kill": refused_after_kill,
    });
    eprintln!("cluster failover: {figures}");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    std::fs::write(
        target.join("cluster-failover.json"),
        serde_json::to_string_pretty(&figures).expect("json"),
    )
    .expect("figures written");
    drop(tally);
    worker.stop().await;
    eprintln!("the test took {:?} before its clean-up", begun.elapsed());
    // The nodes go first: deleting the test's quorum queues while one of their members is down
    // would wait on each of them in turn; with the cluster gone, its data goes with it.
    drop(cluster);
}
