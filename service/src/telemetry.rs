//! Logging and metrics, set up once per service. `RUST_LOG` filters the logs, `RUST_LOG_FORMAT=json`
//! switches them to JSON lines; the Prometheus recorder is served on `/metrics`.

use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};

/// The variables [`init`], `runtime::run` and `heap` read, for each binary's `--help` (clap lists
/// only its own arguments).
pub const LOG_HELP: &str = "Logging:
  RUST_LOG         log filter, tracing's env-filter syntax (e.g. `info,sqlx=warn`) [default: info]
  RUST_LOG_FORMAT  `json` for one JSON object per line [default: text]

Memory:
  MIMALLOC_ALLOW_THP  unset: transparent huge pages off for the process (a smaller heap);
                      set: the allocator decides by it (`1`: use them where the kernel allows)
  HEAP_COLLECT        `off`: no heap upkeep; unset: idle workers give their freed memory back
                      to the kernel within seconds";

/// Installs the log subscriber and the metrics recorder. The recorder is installed here, at start,
/// so that every count a service records before `/metrics` is first scraped is kept.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Colours only for a person at a terminal, never escape codes in a file or a log collector.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    let json = std::env::var("RUST_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.fmt_fields(EscapedFields::default()).try_init()
    };
    // A second init (tests starting several services in one process) keeps the first subscriber.
    if let Err(err) = installed {
        tracing::debug!(error = %err, "a log subscriber was already installed; keeping it");
    }
    metrics();
}

/// The text format's fields with every control character escaped (`\n`, `\r`, `\t`, `\u{1b}`…),
/// so a value a client sent (an event id with a newline) cannot forge a log line of its own or
/// drive the terminal. JSON lines escape them already.
#[derive(Debug, Default)]
pub struct EscapedFields(DefaultFields);

impl<'w> FormatFields<'w> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, mut writer: Writer<'w>, fields: R) -> fmt::Result {
        let mut formatted = String::new();
        self.0.format_fields(Writer::new(&mut formatted), fields)?;
        let mut rest = formatted.as_str();
        while let Some(at) = rest.find(char::is_control) {
            writer.write_str(&rest[..at])?;
            let mut chars = rest[at..].chars();
            if let Some(control) = chars.next() {
                write!(writer, "{}", control.escape_debug())?;
            }
            rest = chars.as_str();
        }
        writer.write_str(rest)
    }
}

/// The process's Prometheus recorder, installed once; `render()` gives the text format.
pub fn metrics() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .unwrap_or_else(|_| metrics_exporter_prometheus::PrometheusBuilder::new())
            .build_recorder();
        let handle = recorder.handle();
        // Tests start several services in one process: the first recorder serves them all.
        if let Err(err) = metrics::set_global_recorder(recorder) {
            tracing::debug!(error = %err, "a metrics recorder was already installed; keeping it");
        }
        spawn_upkeep(handle.clone());
        handle
    })
}

/// How often the recorder's pending histogram samples are folded into their buckets.
const METRICS_UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A recorder built by hand (`build_recorder`, so that each service serves `/metrics` on its own
/// listener) gets no upkeep task from the exporter: every histogram sample (one per request, per
/// receipt, per message) waits in the recorder until something drains it, and only a scrape did.
/// A service nobody scraped grew by about 8 bytes a request without end (heaptrack on ingest: 2 MiB
/// of samples after 120 000 receipts). One thread of the process's own drains them every 5 s,
/// whatever runtime the caller has (or none).
fn spawn_upkeep(handle: metrics_exporter_prometheus::PrometheusHandle) {
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(METRICS_UPKEEP_EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(err) = spawned {
        tracing::warn!(error = %err, "no metrics upkeep thread: histograms drain only when scraped");
    }
}

/// Seconds a metrics connection has to send its request head (as ingest's default).
const METRICS_HEADER_TIMEOUT_SECS: u64 = 30;
/// Most connections the metrics listener keeps open: a few scrapers, never a crowd.
const METRICS_MAX_CONNECTIONS: u32 = 64;

/// Serves `GET /metrics` on `addr`, for a service that has no HTTP server of its own.
pub async fn serve_metrics(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "metrics on /metrics");
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { metrics().render() }),
    );
    // A scraper needs few connections; silent ones are closed like ingest's.
    let limits = crate::server::HttpLimits {
        header_timeout_secs: METRICS_HEADER_TIMEOUT_SECS,
        max_connections: METRICS_MAX_CONNECTIONS,
    };
    crate::server::serve(listener, app, &limits, std::future::pending()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_newline_in_a_logged_value_stays_on_its_line_escaped() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .fmt_fields(EscapedFields::default())
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let event = "e-1\nFAKE LINE\r\t\u{1b}[31m\u{85}";
            tracing::info!(event = %event, debug = ?event, "receipt accepted: {event}");
        });
        let text = String::from_utf8(captured.0.lock().expect("lock").clone()).expect("utf-8");
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(
            text.contains(r"event=e-1\nFAKE LINE\r\t\u{1b}[31m\u{85}"),
            "{text}"
        );
        assert!(text.contains(r"receipt accepted: e-1\nFAKE LINE"), "{text}");
        assert!(!text.chars().any(|c| c.is_control() && c != '\n'), "{text}");
    }
}
