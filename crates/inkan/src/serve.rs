//! Process wiring for `inkan serve`: read configuration (already validated),
//! bind, spawn background tasks, wait for a signal, drain with a timeout.

use std::net::SocketAddr;

use anyhow::Context;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, LogConfig, LogFormat};

/// Installs the global `tracing` subscriber (text or JSON lines on stderr).
pub fn init_logging(log: &LogConfig) {
    let filter =
        EnvFilter::try_from_env("INKAN_LOG").unwrap_or_else(|_| EnvFilter::new(&log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests, `inkan dev` starting several parts) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Binds `addr` with an error that says what to do when the port is taken.
pub async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!("{what}: {addr} is already in use; stop whatever listens there or choose another port")
        } else {
            anyhow::anyhow!("{what}: cannot listen on {addr}: {e}")
        }
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// `inkan serve`: build everything, listen, and stop cleanly on a signal.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config.log);
    let listen = config.listen;
    let state = crate::server::build(config).await.context("cannot start")?;
    let listener = bind(listen, "inkan").await?;
    tracing::info!(%listen, public_url = %state.config.public_url, "inkan is serving");
    crate::server::run(listener, state.clone(), shutdown_signal()).await?;
    tracing::info!("shutting down");
    if let Err(e) = state.toucher.flush().await {
        tracing::warn!(error = %e, "last-used times not written at shutdown");
    }
    Ok(())
}
