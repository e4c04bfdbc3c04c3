//! The HTTP surface: one router over the shared application state.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::oauth::OAuth;
use crate::revocation::Revocation;
use crate::store::{SharedStore, Toucher};

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub store: SharedStore,
    pub identity: Arc<Identity>,
    /// The authorization server's precomputed metadata, limiter and caches.
    pub oauth: OAuth,
    pub gateway: Gateway,
    pub metrics: Arc<Metrics>,
    /// Logout, the account page, cross-instance invalidation.
    pub revocation: Revocation,
    /// Coalesced `last_used` writes; flushed at shutdown.
    pub toucher: Arc<Toucher>,
}

/// Builds every part of the process from a validated configuration: the one
/// constructor `serve`, `dev` and the tests share.
pub async fn build(config: Config) -> anyhow::Result<AppState> {
    let store = crate::store::connect(&config.store).await?;
    build_with_store(config, store).await
}

/// [`build`] over a store the caller opened.
pub async fn build_with_store(config: Config, store: SharedStore) -> anyhow::Result<AppState> {
    let toucher = Arc::new(Toucher::spawn(
        Arc::clone(&store),
        config.store.touch_interval,
    ));
    let identity = Arc::new(Identity::new(&config.hanko));
    identity.start_background_refresh();
    let metrics = Arc::new(Metrics::new(Some(Arc::clone(&identity))));
    let gateway = Gateway::new(
        &config,
        Arc::clone(&store),
        Arc::clone(&toucher),
        Arc::clone(&metrics),
    )
    .await?;
    let state = AppState(Arc::new(Shared {
        oauth: OAuth::new(&config),
        revocation: Revocation::new(&config),
        config,
        store,
        identity,
        gateway,
        metrics,
        toucher,
    }));
    crate::revocation::start(&state);
    spawn_sweeper(&state);
    Ok(state)
}

/// Deletes expired rows (SQLite; Redis expires by TTL) every `store.sweep_interval`.
/// Holds only a weak reference, so it ends with the state.
fn spawn_sweeper(state: &AppState) {
    let weak = Arc::downgrade(&state.0);
    let every = state.config.store.sweep_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            match shared.store.sweep(crate::store::unix_now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "swept expired records"),
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    });
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Every route of the process, with request metrics around each.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(crate::oauth::routes())
        .merge(crate::gateway::routes(&state.config))
        .merge(crate::ops::routes())
        .merge(crate::revocation::routes())
        .merge(crate::identity::webhook::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then gives
/// in-flight requests (long SSE streams included) `gateway.shutdown_grace` to
/// finish before closing them. Handlers see the peer address
/// (`ConnectInfo<SocketAddr>`), which per-IP rate limits key on.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config.gateway.shutdown_grace;
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    });
    let deadline = async move {
        let _ = stopping.wait_for(|s| *s).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        res = server => res,
        () = deadline => {
            tracing::warn!(?grace, "in-flight requests outlived the shutdown grace; closing them");
            Ok(())
        }
    }
}
