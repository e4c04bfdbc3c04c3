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
use crate::store::SharedStore;

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
    pub revocation: crate::revocation::Revocation,
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

/// Serves [`app`] on `listener` until `shutdown` resolves. Handlers see the
/// peer address (`ConnectInfo<SocketAddr>`), which per-IP rate limits key on.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
