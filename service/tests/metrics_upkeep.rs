//! Histogram samples recorded while nobody scrapes `/metrics` are drained by the process's own
//! upkeep: a service that is never scraped does not grow with the requests it serves. (Before it,
//! every sample waited in the recorder until a scrape; heaptrack found 2 MiB of them in an ingest
//! after 120 000 receipts.) A test binary of its own, since it counts the whole process's heap.

use std::time::{Duration, Instant};

#[global_allocator]
static HEAP: cap::Cap<std::alloc::System> = cap::Cap::new(std::alloc::System, usize::MAX);

const SAMPLES: u32 = 200_000;

#[test]
fn samples_nobody_scrapes_are_drained_within_seconds() {
    loyalty_service::telemetry::metrics();
    let histogram = metrics::histogram!("loyalty_upkeep_test_seconds");
    let before = HEAP.allocated();
    for i in 0..SAMPLES {
        histogram.record(f64::from(i % 1000) / 1000.0);
    }
    let waiting = HEAP.allocated().saturating_sub(before);
    assert!(
        waiting >= SAMPLES as usize * 4,
        "the samples wait in the recorder first: {waiting} bytes for {SAMPLES}"
    );
    // The upkeep runs every 5 s: within two rounds the samples are counts in their buckets.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let held = HEAP.allocated().saturating_sub(before);
        if held < waiting / 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {held} bytes held of {waiting} after 12 s: no upkeep drained them"
        );
        // A service keeps recording: drained blocks are freed once the recording threads have
        // moved on (epoch-based reclamation), which a few more samples bring about here.
        for _ in 0..1000 {
            histogram.record(0.5);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
