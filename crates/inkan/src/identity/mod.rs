//! Who the user is, according to Hanko.
//!
//! One [`Identity`] per process holds the JWKS cache ([`jwks`]), verifies
//! session JWTs ([`session`]), answers session-liveness questions through the
//! admin API ([`liveness`]) and receives Hanko's webhooks ([`webhook`]).
//!
//! Nothing here runs on the MCP hot path: session JWTs are verified at
//! authorize time and for webhooks only.

pub mod jwks;
pub mod liveness;
pub mod session;
pub mod webhook;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::{HeaderMap, header};

use crate::config::HankoConfig;

pub use jwks::{JwksError, JwksStats};
pub use liveness::{Liveness, LivenessError};
pub use webhook::WebhookHandler;

/// A verified Hanko session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HankoSession {
    pub user_id: String,
    pub session_id: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub amr: Vec<String>,
    /// `exp` of the session JWT (Unix seconds).
    pub expires_at: i64,
}

/// Why a session JWT was refused (logged, never shown in detail to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no session token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token larger than 16 KB")]
    Oversized,
    #[error("token expired")]
    Expired,
    #[error("bad signature")]
    BadSignature,
    #[error("unknown key id")]
    UnknownKey,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong algorithm")]
    WrongAlgorithm,
    #[error("Hanko keys unavailable")]
    KeysUnavailable,
}

/// Timeouts for every call to Hanko: none of them may hold a request for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Identity {
    config: HankoConfig,
    jwks: Arc<jwks::JwksCache>,
    liveness: liveness::LivenessChecker,
    webhooks: webhook::WebhookReceiver,
    handler: OnceLock<Arc<dyn WebhookHandler>>,
}

impl Identity {
    /// Builds the cache without touching the network; keys are fetched on the
    /// first verification or by [`Identity::start_background_refresh`].
    pub fn new(config: &HankoConfig) -> Identity {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client's TLS backend initialises");
        Identity {
            config: config.clone(),
            jwks: Arc::new(jwks::JwksCache::new(config, http.clone())),
            liveness: liveness::LivenessChecker::new(config, http),
            webhooks: webhook::WebhookReceiver::new(),
            handler: OnceLock::new(),
        }
    }

    /// Fetches the keys now and keeps them fresh in the background until the
    /// `Identity` is dropped. Call once at startup, inside the runtime.
    /// A failed first fetch is logged, not fatal: verification retries it.
    pub fn start_background_refresh(&self) -> tokio::task::JoinHandle<()> {
        jwks::spawn_refresher(Arc::downgrade(&self.jwks))
    }

    /// Fetches the JWKS now, whatever its freshness (operators, tests).
    pub async fn refresh_jwks(&self) -> Result<(), JwksError> {
        self.jwks.refresh_now().await
    }

    /// Whether Hanko's keys are loaded and usable (for `/readyz`).
    pub fn keys_loaded(&self) -> bool {
        self.jwks.usable()
    }

    /// Fetch, hit and failure counters of the JWKS cache (for `/metrics`).
    pub fn jwks_stats(&self) -> &JwksStats {
        self.jwks.stats()
    }

    /// Who handles `user.delete` and `session.delete.*` webhooks; set once at
    /// startup. Until it is set, the receiver answers 503.
    pub fn set_webhook_handler(&self, handler: Arc<dyn WebhookHandler>) -> bool {
        self.handler.set(handler).is_ok()
    }

    /// The session token from `Authorization: Bearer` or the session cookie.
    pub fn token_from_headers<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        if let Some(bearer) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
        {
            return Some(bearer);
        }
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.config.cookie_name)
            .map(|(_, value)| value.trim_matches('"'))
            .filter(|t| !t.is_empty())
    }

    /// Verifies a Hanko session JWT: signature, key, algorithm, time, audience, issuer.
    pub async fn verify(&self, token: &str) -> Result<HankoSession, Rejection> {
        session::verify(&self.jwks, &self.config, token).await
    }

    /// Whether Hanko still knows the session (admin API; `NotChecked` without one).
    pub async fn session_alive(
        &self,
        user_id: &str,
        session_id: &str,
    ) -> Result<Liveness, LivenessError> {
        self.liveness.check(user_id, session_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    /// A `[hanko]` section pointing at a closed port (nothing is fetched).
    pub(super) fn hanko_config() -> crate::config::HankoConfig {
        crate::config::Config::from_toml_str(
            r#"
            public_url = "https://mcp.example.com"
            listen = "127.0.0.1:8080"
            [hanko]
            api_url = "http://127.0.0.1:1"
            audience = "localhost"
            cookie_name = "hanko"
            [[services]]
            id = "notes"
            name = "Notes"
            upstream = "http://127.0.0.1:9000/mcp"
            "#,
        )
        .unwrap()
        .hanko
    }

    fn identity() -> Identity {
        Identity::new(&hanko_config())
    }

    #[test]
    fn bearer_wins_over_cookie() {
        let id = identity();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; hanko=cookie"),
        );
        assert_eq!(id.token_from_headers(&h), Some("cookie"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer header"),
        );
        assert_eq!(id.token_from_headers(&h), Some("header"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic xyz"));
        assert_eq!(id.token_from_headers(&h), Some("cookie"));
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("hankoo=x; xhanko=y"),
        );
        assert_eq!(id.token_from_headers(&other), None);
    }
}
