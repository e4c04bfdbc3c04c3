//! Dynamic Client Registration (RFC 7591) at `POST /oauth/register`.
//!
//! MCP hosts register a new client per connection, so registrations are
//! rate-limited per client IP and expire when unused.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::client::{MAX_URI_LEN, validate_redirect_uri};
use super::{OAuthError, now};
use crate::server::AppState;
use crate::store::token::mint_client_secret;
use crate::store::{Client, ClientAuthMethod, ClientSource};

const MAX_REDIRECT_URIS: usize = 20;
const MAX_NAME_LEN: usize = 200;
const MAX_SCOPE_LEN: usize = 1000;
/// Tracked addresses before idle ones are forgotten.
const LIMITER_TRIM_AT: usize = 10_000;

/// Registrations per client IP per minute.
pub struct RegistrationLimiter(DefaultKeyedRateLimiter<IpAddr>);

impl RegistrationLimiter {
    pub fn new(per_minute: u32) -> Self {
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN));
        RegistrationLimiter(RateLimiter::keyed(quota))
    }

    fn check(&self, ip: IpAddr) -> Result<(), OAuthError> {
        if self.0.len() > LIMITER_TRIM_AT {
            self.0.retain_recent();
        }
        self.0.check_key(&ip).map_err(|_| OAuthError::RateLimited)
    }
}

/// The metadata a client may send; anything else is ignored (RFC 7591 §2).
#[derive(Debug, Deserialize)]
struct Request {
    redirect_uris: Option<Vec<String>>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    grant_types: Option<Vec<String>>,
    response_types: Option<Vec<String>>,
    token_endpoint_auth_method: Option<String>,
    application_type: Option<String>,
    scope: Option<String>,
}

pub async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, OAuthError> {
    state.oauth.registrations.check(peer.ip())?;
    let body = body.map_err(|_| OAuthError::PayloadTooLarge)?;
    let request: Request = serde_json::from_slice(&body).map_err(|e| {
        OAuthError::InvalidClientMetadata(format!(
            "the body must be a JSON object of client metadata: {e}"
        ))
    })?;
    let metadata = validate(request)?;

    let now = now();
    let client_id = new_client_id();
    let secret = (metadata.auth_method != ClientAuthMethod::None).then(mint_client_secret);
    let client = Client {
        client_id: client_id.clone(),
        client_name: metadata.client_name.clone(),
        client_uri: metadata.client_uri.clone(),
        logo_uri: metadata.logo_uri.clone(),
        redirect_uris: metadata.redirect_uris.clone(),
        grant_types: metadata.grant_types.clone(),
        auth_method: metadata.auth_method,
        secret_hash: secret.as_ref().map(|s| s.hash),
        source: ClientSource::Registered,
        created_at: now,
        expires_at: Some(now + state.config.oauth.registration_ttl.as_secs() as i64),
    };
    state.store.put_client(&client).await?;

    let mut out = Map::new();
    out.insert("client_id".into(), json!(client_id));
    out.insert("client_id_issued_at".into(), json!(now));
    if let Some(secret) = secret {
        // Shown once; only its hash is kept.
        out.insert("client_secret".into(), json!(secret.token));
        out.insert("client_secret_expires_at".into(), json!(0));
    }
    out.insert("redirect_uris".into(), json!(metadata.redirect_uris));
    out.insert("grant_types".into(), json!(metadata.grant_types));
    out.insert("response_types".into(), json!(["code"]));
    out.insert(
        "token_endpoint_auth_method".into(),
        json!(metadata.auth_method.as_str()),
    );
    let optional = [
        ("client_name", metadata.client_name),
        ("client_uri", metadata.client_uri),
        ("logo_uri", metadata.logo_uri),
        ("application_type", metadata.application_type),
        ("scope", metadata.scope),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            out.insert(key.into(), json!(v));
        }
    }
    let mut response = (StatusCode::CREATED, axum::Json(Value::Object(out))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// 128 random bits, base64url.
fn new_client_id() -> String {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

struct Metadata {
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    client_uri: Option<String>,
    logo_uri: Option<String>,
    grant_types: Vec<String>,
    auth_method: ClientAuthMethod,
    application_type: Option<String>,
    scope: Option<String>,
}

fn validate(r: Request) -> Result<Metadata, OAuthError> {
    let bad = |m: String| OAuthError::InvalidClientMetadata(m);
    let redirect_uris = r
        .redirect_uris
        .filter(|u| !u.is_empty())
        .ok_or_else(|| OAuthError::InvalidRedirectUri("redirect_uris is required".into()))?;
    if redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(OAuthError::InvalidRedirectUri(format!(
            "at most {MAX_REDIRECT_URIS} redirect_uris"
        )));
    }
    for uri in &redirect_uris {
        validate_redirect_uri(uri).map_err(OAuthError::InvalidRedirectUri)?;
    }

    let grant_types = r
        .grant_types
        .unwrap_or_else(|| vec!["authorization_code".into(), "refresh_token".into()]);
    if let Some(g) = grant_types
        .iter()
        .find(|g| !matches!(g.as_str(), "authorization_code" | "refresh_token"))
    {
        return Err(bad(format!("unsupported grant type '{g}'")));
    }
    if !grant_types.iter().any(|g| g == "authorization_code") {
        return Err(bad("grant_types must include authorization_code".into()));
    }
    if let Some(rt) = r.response_types
        && rt.iter().any(|t| t != "code")
    {
        return Err(bad("response_types supports only \"code\"".into()));
    }
    let auth_method = match r.token_endpoint_auth_method.as_deref() {
        None | Some("client_secret_basic") => ClientAuthMethod::ClientSecretBasic,
        Some("client_secret_post") => ClientAuthMethod::ClientSecretPost,
        Some("none") => ClientAuthMethod::None,
        Some(other) => {
            return Err(bad(format!(
                "token_endpoint_auth_method '{other}' is not supported; use none, client_secret_post or client_secret_basic"
            )));
        }
    };
    if let Some(t) = &r.application_type
        && t != "native"
        && t != "web"
    {
        return Err(bad("application_type must be native or web".into()));
    }
    if r.client_name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
    {
        return Err(bad(format!(
            "client_name longer than {MAX_NAME_LEN} characters"
        )));
    }
    for (field, uri) in [("client_uri", &r.client_uri), ("logo_uri", &r.logo_uri)] {
        if let Some(u) = uri {
            let ok = u.len() <= MAX_URI_LEN
                && url::Url::parse(u).is_ok_and(|p| p.scheme() == "https" && p.host().is_some());
            if !ok {
                return Err(bad(format!("{field} must be an https URL")));
            }
        }
    }
    if let Some(s) = &r.scope
        && (s.len() > MAX_SCOPE_LEN || s.chars().any(|c| c.is_control() || c == '"' || c == '\\'))
    {
        return Err(bad("scope is not a valid scope string".into()));
    }
    Ok(Metadata {
        redirect_uris,
        client_name: r.client_name.filter(|n| !n.trim().is_empty()),
        client_uri: r.client_uri,
        logo_uri: r.logo_uri,
        grant_types,
        auth_method,
        application_type: r.application_type,
        scope: r.scope,
    })
}
