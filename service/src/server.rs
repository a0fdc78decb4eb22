//! The HTTP server under ingest's API and every service's metrics listener. `axum::serve` sets no timer and detects HTTP/1
//! or 2 by waiting for a connection's first bytes without a deadline, so silent connections stayed
//! open forever: ~20,000 of them once exhausted the descriptors and `/healthz` stopped answering.
//! Here every connection must send a complete request head within `HTTP_HEADER_TIMEOUT`, and at
//! most `HTTP_MAX_CONNECTIONS` are open at once.
//!
//! hyper 1.12 starts the header timer when a connection opens and again as soon as a kept-alive
//! one has answered (`idle()` asks for the next read, which arms it), so the same timeout is also
//! how long an idle keep-alive connection is kept. Only HTTP/1.1 is served: the cash registers,
//! the dashboard and the proxies in front speak it, and HTTP/2's idle connections have no
//! header timer.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Limits on the connections of one listener.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimits {
    /// Seconds a connection has to send a complete request head, counted from when it opens or,
    /// kept alive, from its previous answer; then it is closed.
    #[arg(long = "http-header-timeout", env = "HTTP_HEADER_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Most connections open at once; one more is closed as soon as it is accepted. Keep it under
    /// the open-file limit (`ulimit -n`) less ~100 descriptors for the database, broker and logs.
    #[arg(long = "http-max-connections", env = "HTTP_MAX_CONNECTIONS", default_value_t = 4096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// Serves `app` on `listener` until `shutdown` resolves; then stops accepting, lets every
/// connection finish the request it is serving, and returns once all are closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: &HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_timeout_secs));
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stop, stopping) = watch::channel(());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_failed(&err).await;
                    continue;
                }
            },
        };
        // Over the bound the connection is closed at once: a refused client retries, while one
        // left waiting in the accept queue would hold the queue's slots and the client's timer.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics::counter!("loyalty_http_connections_refused_total").increment(1);
            continue;
        };
        metrics::gauge!("loyalty_http_connections").increment(1);
        let http = http.clone();
        let mut stopping = stopping.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            if let Err(err) = stream.set_nodelay(true) {
                tracing::debug!(error = %err, "TCP_NODELAY not set on a connection");
            }
            let conn = http.serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let served = tokio::select! {
                served = conn.as_mut() => served,
                _ = stopping.changed() => {
                    // Closes at once when idle, after its answer when a request is in flight.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            // A client that hung up or sent garbage is its own business: nothing to alert on.
            if let Err(err) = served {
                tracing::debug!(error = %err, "connection ended with an error");
            }
            metrics::gauge!("loyalty_http_connections").decrement(1);
            drop(permit);
        });
    }
    drop(listener);
    stop.send_replace(());
    // Each connection holds a permit until it is closed: all of them back means all are done.
    if let Err(err) = permits.acquire_many(limits.max_connections).await {
        tracing::warn!(error = %err, "connections not awaited at shutdown");
    }
}

/// An accept that failed: a connection reset before it was taken is nothing; running out of
/// descriptors is waited out briefly, since accepting again at once would fail the same way.
async fn accept_failed(err: &io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::warn!(error = %err, "accepting a connection failed");
    tokio::time::sleep(Duration::from_millis(50)).await;
}
