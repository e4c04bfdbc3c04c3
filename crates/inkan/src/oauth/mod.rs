//! The authorization server (OAuth 2.1 for MCP clients).
//!
//! - [`metadata`]: RFC 8414 metadata, serialized once at startup.
//! - [`register`]: Dynamic Client Registration (RFC 7591), rate-limited per IP.
//! - [`cimd`]: Client ID Metadata Documents, fetched with SSRF protection.
//! - [`client`]: finding a client, matching redirect URIs, client authentication.
//! - [`authorize`]: the authorization request, the consent decision, CSRF.
//! - [`token`]: code exchange and refresh-token rotation.
//! - [`revoke`]: RFC 7009 revocation and RFC 7662 introspection.
//! - [`error`]: the one error type and its RFC 6749 / 7591 bodies.

pub mod authorize;
pub mod cimd;
pub mod client;
pub mod error;
pub mod metadata;
pub mod register;
pub mod revoke;
pub mod token;

use std::collections::HashMap;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method, header};
use axum::routing::{get, post};
use tower_http::cors::{Any, CorsLayer};

use crate::config::Config;
use crate::server::AppState;
use crate::store::StoreResult;

pub use error::OAuthError;

use crate::store::unix_now as now;

/// Largest body any OAuth endpoint reads.
pub const BODY_LIMIT: usize = 16 * 1024;

/// The authorization server's share of [`crate::server::Shared`].
pub struct OAuth {
    pub metadata: metadata::Metadata,
    pub registrations: register::RegistrationLimiter,
    pub documents: cimd::DocumentFetcher,
    csrf_key: tokio::sync::OnceCell<Vec<u8>>,
}

impl OAuth {
    pub fn new(config: &Config) -> Self {
        OAuth {
            metadata: metadata::Metadata::new(config),
            registrations: register::RegistrationLimiter::new(
                config.oauth.registrations_per_minute,
            ),
            documents: cimd::DocumentFetcher::new(&config.oauth),
            csrf_key: tokio::sync::OnceCell::new(),
        }
    }
}

/// The consent form's CSRF key: random, created by whichever instance asks
/// first and shared by all through the store.
pub(crate) async fn csrf_key(state: &AppState) -> StoreResult<&[u8]> {
    state
        .oauth
        .csrf_key
        .get_or_try_init(|| async {
            let mut fresh = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut fresh);
            state.store.put_meta_if_absent("csrf_key", &fresh).await
        })
        .await
        .map(Vec::as_slice)
}

pub fn routes() -> Router<AppState> {
    // Browser-based MCP clients call these cross-origin; none uses cookies.
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .expose_headers([header::WWW_AUTHENTICATE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("mcp-protocol-version"),
        ]);
    let public_api = Router::new()
        .route(
            "/.well-known/oauth-authorization-server",
            get(metadata::serve),
        )
        .route("/.well-known/openid-configuration", get(metadata::serve))
        .route("/oauth/register", post(register::register))
        .route("/oauth/token", post(token::token))
        .route("/oauth/revoke", post(revoke::revoke))
        .layer(cors);
    Router::new()
        .merge(public_api)
        .route("/oauth/introspect", post(revoke::introspect))
        .route(
            "/oauth/authorize",
            get(authorize::show).post(authorize::decide),
        )
        .route("/login", get(crate::pages::login))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Request parameters, each present at most once (RFC 6749 §3.1).
#[derive(Debug, Default, Clone)]
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `application/x-www-form-urlencoded` (a query or a form body).
    /// `repeatable` names parameters that may occur more than once; their
    /// values are returned separately.
    pub fn parse(
        raw: &[u8],
        repeatable: &[&str],
    ) -> Result<(Params, Vec<(String, String)>), OAuthError> {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(raw)
            .map_err(|_| OAuthError::InvalidRequest("malformed form or query encoding".into()))?;
        let mut map = HashMap::new();
        let mut repeated = Vec::new();
        for (k, v) in pairs {
            if repeatable.contains(&k.as_str()) {
                repeated.push((k, v));
            } else if map.insert(k.clone(), v).is_some() {
                return Err(OAuthError::InvalidRequest(format!(
                    "parameter '{k}' must not be repeated"
                )));
            }
        }
        Ok((Params(map), repeated))
    }

    /// A parameter's value; empty values count as absent (RFC 6749 §3.1).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name)
            .ok_or_else(|| OAuthError::InvalidRequest(format!("missing parameter '{name}'")))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}
