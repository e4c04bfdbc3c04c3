//! Revocation that reaches every instance.
//!
//! Whatever revokes (logout, the account page, Hanko webhooks, RFC 7009, the
//! operator CLI, refresh-token reuse) first changes the store, which is the
//! source of truth, then calls [`announce`]: this instance's validation
//! cache forgets the grants at once, and with a Redis store the grant ids go
//! out on the [`bus`] so that every other instance forgets them too. With
//! SQLite there is one node and nothing to tell.

pub mod bus;
pub mod csrf;
pub mod logout;
pub mod operator;
pub mod webhook;

use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::config::Config;
use crate::gateway::validate::Announce;
use crate::server::{AppState, Shared};
use crate::store::Revoked;

/// A process-local cache of validations that must forget revoked grants
/// (the gateway's validation cache).
pub trait GrantCache: Send + Sync + 'static {
    fn invalidate_grants(&self, grant_ids: &[String]);
    /// Used when invalidations may have been missed (bus reconnect).
    fn invalidate_all(&self);
}

/// This instance's end of revocation: with Redis, the bus publisher and
/// (once [`Revocation::start_bus`] ran) the subscriber. Dropping it stops
/// the subscriber.
pub struct Revocation {
    bus: Option<bus::Target>,
    publisher: Option<bus::Publisher>,
    connected_tx: Arc<watch::Sender<bool>>,
    connected: watch::Receiver<bool>,
    http: reqwest::Client,
    hanko_logout_url: String,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

/// Forms on these routes carry a CSRF token and a grant id at most.
const FORM_BODY_LIMIT: usize = 4 * 1024;
const HANKO_LOGOUT_TIMEOUT: Duration = Duration::from_secs(3);

/// `POST /logout`, `GET /account`, `POST /account/revoke`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/logout", post(logout::logout))
        .route("/account", get(crate::pages::account::page))
        .route("/account/revoke", post(crate::pages::account::revoke))
        .layer(DefaultBodyLimit::max(FORM_BODY_LIMIT))
}

impl Revocation {
    pub fn new(config: &Config) -> Revocation {
        let stop = CancellationToken::new();
        let bus = bus::Target::from_store_config(&config.store);
        let (tx, connected) = watch::channel(bus.is_none());
        Revocation {
            publisher: bus.clone().map(bus::Publisher::new),
            bus,
            connected_tx: Arc::new(tx),
            connected,
            http: reqwest::Client::builder()
                .timeout(HANKO_LOGOUT_TIMEOUT)
                .build()
                .expect("a client without custom TLS roots builds"),
            hanko_logout_url: format!("{}/logout", config.hanko.api_url.trim_end_matches('/')),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    /// Starts listening for other instances' revocations (Redis only; a
    /// no-op otherwise). Must run inside a Tokio runtime; call it once.
    pub fn start_bus(&self, cache: Arc<dyn GrantCache>) {
        if let Some(target) = &self.bus {
            bus::spawn_subscriber(
                target.clone(),
                cache,
                self.connected_tx.clone(),
                self.stop.clone(),
            );
        }
    }

    /// Tells every other instance (Redis only). The caller has already
    /// cleared its own cache.
    pub async fn publish(&self, revoked: &Revoked) {
        if let Some(p) = &self.publisher {
            p.publish(&revoked.grants).await;
        }
    }

    /// `true` while this instance hears invalidations from the others
    /// (always, without a bus). Waiting on it tells tests and `/readyz`
    /// that the subscriber is in place.
    pub fn bus_connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Asks Hanko to end the session the JWT belongs to. Best effort: the
    /// grants are already revoked, and Hanko's own expiry ends the session
    /// at the latest.
    pub async fn end_hanko_session(&self, session_jwt: &str) {
        let sent = self
            .http
            .post(&self.hanko_logout_url)
            .bearer_auth(session_jwt)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => tracing::debug!("Hanko session ended"),
            Ok(r) => tracing::warn!(status = %r.status(), "Hanko refused to end the session"),
            Err(e) => tracing::warn!(error = %e, "could not reach Hanko to end the session"),
        }
    }
}

/// This instance, as the bus subscriber and the gateway's liveness check
/// reach it: weak, because the state owns both.
struct Instance(Weak<Shared>);

impl GrantCache for Instance {
    fn invalidate_grants(&self, grant_ids: &[String]) {
        if let Some(shared) = self.0.upgrade() {
            shared.gateway.validator.invalidate_grants(grant_ids);
        }
    }

    fn invalidate_all(&self) {
        if let Some(shared) = self.0.upgrade() {
            shared.gateway.validator.invalidate_all();
        }
    }
}

#[async_trait::async_trait]
impl Announce for Instance {
    async fn revoked(&self, revoked: &Revoked) {
        if let Some(shared) = self.0.upgrade() {
            announce(&AppState(shared), revoked).await;
        }
    }
}

/// Connects revocation to the rest of the app once the state exists:
/// registers the Hanko webhook handler, lets the gateway check session
/// liveness on cache misses, and starts listening on the bus. Call once at
/// startup, inside the runtime.
pub fn start(state: &AppState) {
    state.gateway.validator.check_liveness_with(
        state.identity.clone(),
        Arc::new(Instance(Arc::downgrade(&state.0))),
    );
    let handler = webhook::WebhookRevoker(Arc::downgrade(&state.0));
    if !state.identity.set_webhook_handler(Arc::new(handler)) {
        tracing::warn!("a Hanko webhook handler was already registered");
    }
    state
        .revocation
        .start_bus(Arc::new(Instance(Arc::downgrade(&state.0))));
}

/// Tells this instance's caches, and every other instance, that grants were
/// revoked. Call it after every successful store revocation.
pub async fn announce(state: &AppState, revoked: &Revoked) {
    if revoked.grants.is_empty() {
        return;
    }
    state.gateway.validator.invalidate_grants(&revoked.grants);
    state.revocation.publish(revoked).await;
}
