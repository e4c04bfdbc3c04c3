//! Redis backend, standalone and cluster (in progress on branch `store`).

use super::{StoreError, StoreResult};
use crate::config::StoreConfig;

pub struct RedisStore;

impl RedisStore {
    pub async fn connect(_config: &StoreConfig) -> StoreResult<super::sqlite::SqliteStore> {
        Err(StoreError("the redis backend is not available yet".into()))
    }
}
