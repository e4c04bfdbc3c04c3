//! The HTTP surface: one router over the shared application state.

use std::sync::Arc;

use crate::config::Config;
use crate::store::SharedStore;

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub store: SharedStore,
    pub identity: Arc<crate::identity::Identity>,
    pub revocation: crate::revocation::Revocation,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
