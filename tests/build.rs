//! Which of the tests driving outside tools can run here. A test whose tools are missing is
//! compiled `#[ignore]`d, so the test runner reports it as skipped, never as passed:
//! - `has_browser`: Node.js, Chromium (`CHROMIUM_PATH`, default `/usr/bin/chromium`) and
//!   `npm ci --prefix tests/browser` (the dashboard's browser test);
//! - `has_telegram_test_api`: Node.js and `npm ci --prefix tests/telegram-test-api` (the notifier
//!   against the Bot API emulator).
//!
//! `REQUIRE_BROWSER=1` (CI) or `REQUIRE_TELEGRAM_TEST_API=1` sets the cfg whatever is installed:
//! the test then runs and fails naming what is missing.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rustc-check-cfg=cfg(has_browser)");
    println!("cargo:rustc-check-cfg=cfg(has_telegram_test_api)");
    let chromium = std::env::var("CHROMIUM_PATH").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let playwright = "browser/node_modules/playwright-core/package.json";
    let emulator = "telegram-test-api/node_modules/telegram-test-api/package.json";
    // A path that does not exist reruns this script at every build, so installing is noticed.
    for watched in [playwright, emulator, chromium.as_str()] {
        println!("cargo:rerun-if-changed={watched}");
    }
    for variable in [
        "CHROMIUM_PATH",
        "REQUIRE_BROWSER",
        "REQUIRE_TELEGRAM_TEST_API",
    ] {
        println!("cargo:rerun-if-env-changed={variable}");
    }
    let node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    let required = |variable: &str| std::env::var_os(variable).is_some();
    if required("REQUIRE_BROWSER")
        || (node && Path::new(&chromium).exists() && Path::new(playwright).exists())
    {
        println!("cargo:rustc-cfg=has_browser");
    }
    if required("REQUIRE_TELEGRAM_TEST_API") || (node && Path::new(emulator).exists()) {
        println!("cargo:rustc-cfg=has_telegram_test_api");
    }
}
