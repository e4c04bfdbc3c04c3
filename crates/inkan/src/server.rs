//! The HTTP surface: one router over the shared application state.

use std::sync::Arc;

use crate::config::Config;
use crate::identity::Identity;
use crate::store::SharedStore;

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub store: SharedStore,
    pub identity: Arc<Identity>,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
