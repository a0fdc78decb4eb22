//! Graceful shutdown: every service stops taking work on SIGTERM (docker stop) or Ctrl-C and
//! finishes what it holds.

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    // A signal that cannot be listened for is logged and never fires: failing to register Ctrl-C
    // must not read as "shutdown requested".
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "Ctrl-C cannot be listened for; SIGTERM still stops the service");
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "SIGTERM cannot be listened for; Ctrl-C still stops the service");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutdown requested");
}
