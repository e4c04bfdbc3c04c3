//! The token store: clients, grants, codes, access and refresh tokens.
//!
//! One trait, [`Store`], with one module per backend ([`sqlite`], [`redis`]).
//! Every backend passes the same test suite (`tests/store.rs`).
//!
//! What is stored is never enough to present: tokens, codes and client
//! secrets arrive here only as [`TokenHash`]es (SHA-256 of the whole token).

pub mod model;
pub mod redis;
pub mod sqlite;
pub mod token;
pub mod touch;

use async_trait::async_trait;
use std::sync::Arc;

use crate::config::{StoreBackend, StoreConfig};

pub use model::*;
pub use token::{TokenHash, TokenKind};
pub use touch::Toucher;

/// A store failure: the backend could not be reached or answered nonsense.
///
/// The gateway maps this to `503` with `Retry-After`, never to `401`: a 401
/// makes clients throw away their tokens and start a new login.
#[derive(Debug, thiserror::Error)]
#[error("store unavailable: {0}")]
pub struct StoreError(pub String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(format!("sqlite: {e}"))
    }
}

impl From<::redis::RedisError> for StoreError {
    fn from(e: ::redis::RedisError) -> Self {
        StoreError(format!("redis: {e}"))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A shared handle to whichever backend the configuration chose.
pub type SharedStore = Arc<dyn Store>;

/// Opens the backend the configuration names: the SQLite file (schema
/// created on open) or Redis, standalone (`store.url`) or cluster
/// (`store.nodes`).
pub async fn connect(config: &StoreConfig) -> StoreResult<SharedStore> {
    Ok(match config.backend {
        StoreBackend::Sqlite => Arc::new(sqlite::SqliteStore::open(&config.path).await?),
        StoreBackend::Redis => Arc::new(redis::RedisStore::connect(config).await?),
    })
}

/// The current time in Unix seconds, for the few places that must judge
/// expiry without being handed a `now`.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The one interface every backend implements. All times are Unix seconds.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Cheap liveness probe for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    // ---- clients ----
    /// Inserts or replaces a client. Registered clients carry `expires_at`.
    async fn put_client(&self, client: &Client) -> StoreResult<()>;
    async fn get_client(&self, client_id: &str) -> StoreResult<Option<Client>>;
    /// Pushes an unused registration's expiry out (called when a client is used).
    async fn extend_client(&self, client_id: &str, expires_at: i64) -> StoreResult<()>;

    // ---- authorization codes ----
    /// Stores a one-time code (`ink_ac_<grant id>_…`). The grant id is written to the
    /// user, session and client indexes *before* the code itself, so that a
    /// revocation that runs while the code is pending also kills its grant.
    async fn put_code(&self, code: &TokenHash, pending: &PendingCode) -> StoreResult<()>;
    /// Consumes a code atomically: of any number of concurrent callers,
    /// exactly one sees [`CodeOutcome::Fresh`]. Later callers within the
    /// code's lifetime see [`CodeOutcome::Replayed`] with the grant the code
    /// was meant for, so the caller can revoke what it issued.
    async fn consume_code(
        &self,
        grant_id: &str,
        code: &TokenHash,
        now: i64,
    ) -> StoreResult<CodeOutcome>;

    // ---- grants and tokens ----
    /// Creates the grant with its first access and refresh token. Returns
    /// `false` (and writes nothing) when the grant id was revoked meanwhile
    /// (a tombstone exists) or already exists.
    async fn create_grant(&self, grant: &Grant, tokens: &TokenPair) -> StoreResult<bool>;
    /// The hot path: the grant and its current access token in one round trip.
    /// `None` when the grant does not exist or `access` is not its current
    /// access token. Expiry is checked by the caller against the returned view.
    async fn lookup_access(
        &self,
        grant_id: &str,
        access: &TokenHash,
    ) -> StoreResult<Option<AccessView>>;
    /// Refresh-token rotation as a compare-and-swap; see [`RotateOutcome`].
    async fn rotate_refresh(
        &self,
        grant_id: &str,
        rotation: &Rotation,
    ) -> StoreResult<RotateOutcome>;
    async fn get_grant(&self, grant_id: &str) -> StoreResult<Option<Grant>>;
    /// All live grants of one user, newest first (the account page).
    async fn list_user_grants(&self, user_id: &str) -> StoreResult<Vec<Grant>>;
    /// Records last use of grants; called in batches by [`touch::Toucher`],
    /// never once per request.
    async fn touch_grants(&self, updates: &[(String, i64)]) -> StoreResult<()>;

    // ---- revocation ----
    /// Removes the access token if it is the grant's current one.
    async fn revoke_access_token(&self, grant_id: &str, access: &TokenHash) -> StoreResult<bool>;
    async fn revoke_grant(&self, grant_id: &str) -> StoreResult<Revoked>;
    async fn revoke_user(&self, user_id: &str) -> StoreResult<Revoked>;
    async fn revoke_session(&self, session_id: &str) -> StoreResult<Revoked>;
    async fn revoke_client(&self, client_id: &str) -> StoreResult<Revoked>;

    // ---- small named values (the gateway's signing keys) ----
    async fn get_meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>>;
    /// Sets `name` only if absent; returns the value that is stored afterwards
    /// (ours or the one another instance wrote first).
    async fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> StoreResult<Vec<u8>>;
    async fn set_meta(&self, name: &str, value: &[u8]) -> StoreResult<()>;

    /// Deletes everything expired. Redis expires by TTL and returns 0.
    async fn sweep(&self, now: i64) -> StoreResult<u64>;
}
