//! Authorization server metadata (RFC 8414), served at
//! `/.well-known/oauth-authorization-server` and `/.well-known/openid-configuration`.
//!
//! The document depends only on configuration, so it is serialized once.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::json;

use crate::config::Config;
use crate::server::AppState;

pub struct Metadata(Bytes);

impl Metadata {
    pub fn new(config: &Config) -> Self {
        let issuer = &config.public_url;
        let mut scopes: Vec<&str> = Vec::new();
        for scope in config.services.iter().flat_map(|s| &s.scopes) {
            if !scopes.contains(&scope.as_str()) {
                scopes.push(scope);
            }
        }
        let client_auth = ["none", "client_secret_post", "client_secret_basic"];
        let doc = json!({
            // Clients compare it byte for byte with the URL they discovered.
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/oauth/authorize"),
            "token_endpoint": format!("{issuer}/oauth/token"),
            "registration_endpoint": format!("{issuer}/oauth/register"),
            "revocation_endpoint": format!("{issuer}/oauth/revoke"),
            "introspection_endpoint": format!("{issuer}/oauth/introspect"),
            "scopes_supported": scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": client_auth,
            "revocation_endpoint_auth_methods_supported": client_auth,
            "introspection_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": config.oauth.client_id_metadata_documents,
            "authorization_response_iss_parameter_supported": true,
        });
        Metadata(Bytes::from(
            serde_json::to_vec(&doc).expect("a JSON value always serializes"),
        ))
    }

    pub fn bytes(&self) -> Bytes {
        self.0.clone()
    }
}

pub async fn serve(State(state): State<AppState>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        state.oauth.metadata.bytes(),
    )
        .into_response()
}
