//! The HTTP surface: one router over the shared application state.

use std::sync::Arc;

use axum::Router;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::store::SharedStore;

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub store: SharedStore,
    pub identity: Arc<Identity>,
    pub gateway: Gateway,
    pub metrics: Arc<Metrics>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The whole HTTP surface, with request metrics around every route.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(crate::gateway::routes(&state.config))
        .merge(crate::ops::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}
