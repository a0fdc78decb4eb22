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
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(main)
}
