//! The end-to-end suite, one binary: each module was a test binary of its own, and linking the
//! whole service stack once per file cost more than compiling the tests. nextest still runs every test in
//! a process of its own (`cargo nextest run -p e2e -E 'test(/^bot::/)'` runs one module).

mod access;
mod bills;
mod binaries;
mod bot;
mod cluster;
mod connections;
mod dashboard;
mod faults;
mod http_edge;
mod imported_expiry;
mod legacy_import;
mod liability_totals;
mod miniapp;
mod miniapp_app;
mod miniapp_page;
mod miniapp_profile;
mod notifier;
mod openapi;
mod operations;
mod operator_api;
mod paging;
mod pipeline;
mod poison;
mod pos_log_replay;
mod races;
mod reports;
mod rules_lifecycle;
mod rules_pipeline;
mod rules_views;
mod sale_time;
mod schedule;
mod secrets;
mod shedding;
mod status_counts;
mod walkthrough;

/// A file added to `tests/tests/` runs only once it is a module here: one forgotten would pass
/// silently.
#[test]
fn every_test_file_is_a_module_of_the_suite() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
    let main = std::fs::read_to_string(dir.join("main.rs")).expect("main.rs");
    let files = std::fs::read_dir(&dir).expect("tests/tests");
    for file in files {
        let name = file
            .expect("entry")
            .file_name()
            .to_string_lossy()
            .into_owned();
        if let Some(module) = name.strip_suffix(".rs").filter(|m| *m != "main") {
            assert!(
                main.contains(&format!("\nmod {module};\n")),
                "tests/tests/{name} is not a module of tests/tests/main.rs"
            );
        }
    }
}
