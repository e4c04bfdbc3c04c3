//! RFC 9728 protected resource metadata and the `WWW-Authenticate`
//! challenges that point to it, all built once at startup.
//!
//! `resource` is exactly `<public_url>/mcp/<service>`: clients compare it
//! byte for byte with the URL they connected to. `offline_access` is never
//! advertised (configuration refuses it as a service scope).

use axum::http::HeaderValue;
use bytes::Bytes;
use serde_json::json;

use crate::config::{Config, ServiceConfig};

/// The `WWW-Authenticate` values of one service.
#[derive(Debug)]
pub struct Challenges {
    /// No token: `Bearer resource_metadata="…", scope="…"`.
    pub missing: HeaderValue,
    /// Bad, expired, revoked or foreign token.
    pub invalid_token: HeaderValue,
    /// Valid token lacking every scope the service accepts.
    pub insufficient_scope: HeaderValue,
    /// Malformed request (a token in the query string).
    pub invalid_request: HeaderValue,
}

/// URL of a service's metadata document.
pub fn metadata_url(config: &Config, service: &str) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource/mcp/{service}",
        config.public_url
    )
}

pub fn challenges(config: &Config, service: &ServiceConfig) -> Challenges {
    let mut params = format!(
        r#"resource_metadata="{}""#,
        metadata_url(config, &service.id)
    );
    if !service.scopes.is_empty() {
        params.push_str(&format!(r#", scope="{}""#, service.scopes.join(" ")));
    }
    // Config validation guarantees URLs and scopes are header-safe (no
    // quotes, backslashes or whitespace in scopes; URLs parse).
    let value = |s: String| HeaderValue::from_str(&s).expect("challenge is a valid header value");
    Challenges {
        missing: value(format!("Bearer {params}")),
        invalid_token: value(format!(r#"Bearer error="invalid_token", {params}"#)),
        insufficient_scope: value(format!(r#"Bearer error="insufficient_scope", {params}"#)),
        invalid_request: value(format!(r#"Bearer error="invalid_request", {params}"#)),
    }
}

/// The document at `/.well-known/oauth-protected-resource/mcp/<service>`.
pub fn service_document(config: &Config, service: &ServiceConfig) -> Bytes {
    document(
        &config.resource_url(&service.id),
        &config.public_url,
        &service.scopes,
        &service.name,
    )
}

/// The root document, for clients that do not insert the path: the whole
/// gateway as one resource, with every service's scopes.
pub fn root_document(config: &Config) -> Bytes {
    let mut scopes: Vec<String> = Vec::new();
    for s in config.services.iter().flat_map(|s| &s.scopes) {
        if !scopes.contains(s) {
            scopes.push(s.clone());
        }
    }
    document(&config.public_url, &config.public_url, &scopes, "inkan")
}

fn document(resource: &str, issuer: &str, scopes: &[String], name: &str) -> Bytes {
    serde_json::to_vec(&json!({
        "resource": resource,
        "authorization_servers": [issuer],
        "scopes_supported": scopes,
        "bearer_methods_supported": ["header"],
        "resource_name": name,
    }))
    .expect("metadata serializes")
    .into()
}
