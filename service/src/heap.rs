//! Memory given back to the kernel once a load ends.
//!
//! mimalloc keeps a heap per thread. A block freed by another thread (a payload a worker published
//! and lapin's I/O thread wrote out, a body read on one tokio worker and dropped on the other) goes
//! on its page's cross-thread free list, and only the page's owner collects that list, on its own
//! slow path. A worker that goes idle after a load allocates nothing more, so its pages stay
//! resident with nothing alive in them. Pages that do come free go back to mimalloc's arena and to
//! the kernel (`MADV_DONTNEED`) only after `MIMALLOC_PURGE_DELAY` (1 s in mimalloc v3), and only
//! when some thread next passes through that slow path. Before this, ingest ended a flood 22–24 MiB
//! above its idle 24 MiB while heaptrack counted 2.3 MiB still allocated.
//!
//! So each tokio worker collects its heap as it parks (goes idle), at most once per
//! [`COLLECT_AT_MOST_EVERY`] (a busy worker parks thousands of times a second), and a task on the
//! runtime collects every [`PURGE_TICK`], which returns to the kernel the arena pages whose purge
//! delay has passed. It is `mi_collect(false)`: the forced variant purges at once and measured
//! 0.77–0.89 of the sustained rate for 1–3 MiB more (README "Memory").

use std::cell::Cell;
use std::time::{Duration, Instant};

/// A worker parking again within this of its last collection does not collect again.
pub const COLLECT_AT_MOST_EVERY: Duration = Duration::from_millis(10);
/// How often the runtime's own task collects, so that purges come due although nothing allocates.
pub const PURGE_TICK: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Called by each tokio worker as it parks (`Builder::on_thread_park`).
pub(crate) fn on_park() {
    let now = Instant::now();
    let due = LAST_COLLECT.with(|last| match last.get() {
        Some(at) if now.saturating_duration_since(at) < COLLECT_AT_MOST_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    });
    if due {
        collect();
    }
}

/// The runtime's task: collects every [`PURGE_TICK`] for as long as the runtime runs.
pub(crate) async fn purge_ticks() {
    let mut tick = tokio::time::interval(PURGE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        collect();
    }
}

/// The variable that turns the collection off (`off`), to compare against or to rule it out.
const HEAP_COLLECT: &str = "HEAP_COLLECT";

/// Collects the calling thread's mimalloc heap and purges the arena pages that are due, unless
/// [`HEAP_COLLECT`] is `off`.
fn collect() {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *ON.get_or_init(|| std::env::var(HEAP_COLLECT).as_deref() != Ok("off")) {
        mi_collect();
    }
}

/// The one `unsafe` of the workspace.
#[allow(unsafe_code)]
fn mi_collect() {
    // SAFETY: `mi_collect` takes no pointer and returns nothing. It works on mimalloc's own state:
    // the calling thread's heap (thread-local) and the process's arenas, which mimalloc guards with
    // its own atomics; mimalloc documents it as callable from any thread at any time ("eagerly free
    // memory"). Where mimalloc is not the global allocator (a test binary), it touches only
    // mimalloc's own, unused, heap.
    unsafe { libmimalloc_sys::mi_collect(false) }
}
