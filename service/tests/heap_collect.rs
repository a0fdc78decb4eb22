//! Memory a load leaves behind goes back to the kernel once the runtime is idle: blocks allocated
//! on a tokio worker and freed by another thread (as lapin's I/O thread frees what a worker
//! published) are collected by the worker's own heap upkeep, and their pages purged. A test binary
//! of its own, on mimalloc as the services are, since it reads the whole process's RSS.

use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MIB: usize = 1024 * 1024;
/// The tests read the whole process's RSS: under `cargo test` (one process) they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What the load holds at its peak: 64 Ki blocks of 1 KiB.
const HELD: usize = 64 * MIB;

fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / MIB as f64
}

#[test]
fn memory_freed_by_another_thread_returns_once_idle() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // One worker, so that the task that allocates and the upkeep that collects share a heap.
    let runtime = loyalty_service::runtime::build(Some(1)).expect("runtime");
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = rss();
        let blocks = tokio::spawn(async {
            (0..HELD / 1024)
                .map(|i| Box::new([(i % 251) as u8; 1024]))
                .collect::<Vec<_>>()
        })
        .await
        .expect("the allocating task");
        freed_elsewhere_comes_back(idle, blocks).await;
    });
}

#[test]
fn memory_spread_over_every_worker_returns_once_idle() {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The runtime the services run on (one worker per CPU): tasks allocate on whichever worker
    // runs them, and one thread outside the runtime frees everything after they are done.
    let runtime = loyalty_service::runtime::build(None).expect("runtime");
    runtime.block_on(async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let idle = rss();
        let tasks: Vec<_> = (0..16)
            .map(|task| {
                tokio::spawn(async move {
                    let mut held = Vec::with_capacity(HELD / 16 / 1024);
                    for i in 0..HELD / 16 / 1024 {
                        held.push(Box::new([((task + i) % 251) as u8; 1024]));
                        if i % 256 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                    held
                })
            })
            .collect();
        let mut blocks = Vec::new();
        for task in tasks {
            blocks.push(task.await.expect("an allocating task"));
        }
        freed_elsewhere_comes_back(idle, blocks).await;
    });
}

/// Checks that `blocks` are resident, frees them on a thread outside the runtime, and waits for
/// the process to come back within an eighth of the load of `idle`: the purge delay (1 s) and a
/// tick or two of the upkeep (every 1 s), 6 s at most.
async fn freed_elsewhere_comes_back<T: Send + 'static>(idle: usize, blocks: T) {
    let loaded = rss();
    assert!(
        loaded >= idle + HELD * 3 / 4,
        "the load is resident: {:.1} MiB idle, {:.1} MiB loaded",
        mib(idle),
        mib(loaded)
    );
    std::thread::spawn(move || drop(blocks))
        .join()
        .expect("the freeing thread");
    let freed = rss();
    let deadline = Instant::now() + Duration::from_secs(6);
    loop {
        let now = rss();
        if now < idle + HELD / 8 {
            eprintln!(
                "idle {:.1} MiB, loaded {:.1}, just freed {:.1}, back to {:.1}",
                mib(idle),
                mib(loaded),
                mib(freed),
                mib(now)
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{:.1} MiB still resident 6 s after the load was freed (idle {:.1}, loaded {:.1})",
            mib(now),
            mib(idle),
            mib(loaded)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
