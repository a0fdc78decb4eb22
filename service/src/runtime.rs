//! How every binary's `main` runs: THP off (below), then its work on a multi-threaded tokio
//! runtime with one worker thread per CPU (tokio's default).
//!
//! What keeps a service's resident memory small before anything runs: the binaries allocate with
//! mimalloc (v3), which asks the kernel for transparent huge pages on its arenas
//! (`madvise(MADV_HUGEPAGE)`): a 2 MiB region touched anywhere becomes resident whole, so a small
//! heap spread over a few regions costs several times its size. Measured with `loadgen memory`,
//! that was ~13 MiB of an idle service's ~23 MiB of heap. So transparent huge pages are turned off
//! for the process (`prctl(PR_SET_THP_DISABLE)`), unless `MIMALLOC_ALLOW_THP` is set: then
//! mimalloc does as that says.

/// The variable that leaves huge pages to mimalloc (`1`: use them where the kernel allows).
pub const ALLOW_THP: &str = "MIMALLOC_ALLOW_THP";

/// Before the runtime starts: pages already made huge stay so.
fn without_huge_pages() {
    if std::env::var_os(ALLOW_THP).is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        // Logging is not set up yet; the service runs as well, with more memory.
        eprintln!("transparent huge pages not turned off: {err}");
    }
}

/// Runs `main` on the runtime, once huge pages are off.
pub fn run(main: impl Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    without_huge_pages();
    build(None)?.block_on(main)
}

/// The multi-threaded runtime every binary runs on (`workers`: tokio's worker threads, by default
/// one per CPU), with its heap upkeep (`crate::heap`): each worker collects as it parks, and a
/// task collects every second.
pub fn build(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = workers {
        builder.worker_threads(workers);
    }
    let runtime = builder
        .enable_all()
        .on_thread_park(crate::heap::on_park)
        .build()?;
    runtime.spawn(crate::heap::purge_ticks());
    Ok(runtime)
}
