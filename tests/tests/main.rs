//! The end-to-end suite, one binary: each module was a test binary of its own, and linking the
//! whole service stack 31 times cost more than compiling the tests. nextest still runs every test in
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
mod miniapp;
mod miniapp_app;
mod miniapp_page;
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
mod walkthrough;
