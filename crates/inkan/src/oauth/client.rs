//! Clients: where they come from (registration or metadata document), which
//! redirect URIs they may use, and how they authenticate at the token,
//! revocation and introspection endpoints.

use std::sync::Arc;

use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, header};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use url::{Host, Url};

use super::{OAuthError, Params, now};
use crate::server::AppState;
use crate::store::{Client, ClientAuthMethod, ClientSource, TokenHash};

/// The form of a token, revocation or introspection request, and the
/// client it authenticates (RFC 6749 §2.3): one extractor for the three
/// endpoints, so they cannot disagree on how a client proves itself.
pub struct ClientForm {
    pub client: Arc<Client>,
    pub params: Params,
}

impl FromRequest<AppState> for ClientForm {
    type Rejection = OAuthError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, OAuthError> {
        let (mut parts, body) = request.into_parts();
        let headers = std::mem::take(&mut parts.headers);
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(|_| OAuthError::PayloadTooLarge)?;
        let (params, _) = Params::parse(&body, &[])?;
        let client = authenticate(state, &headers, &params).await?;
        Ok(ClientForm { client, params })
    }
}

/// Longest redirect URI accepted anywhere.
pub const MAX_URI_LEN: usize = 2048;

/// Checks a redirect URI a client wants to register: https, or http on a
/// loopback address (RFC 8252 §7.3); never a fragment.
pub fn validate_redirect_uri(uri: &str) -> Result<(), String> {
    if uri.len() > MAX_URI_LEN {
        return Err(format!("redirect URI longer than {MAX_URI_LEN} bytes"));
    }
    let parsed = Url::parse(uri).map_err(|_| format!("'{uri}' is not an absolute URI"))?;
    if parsed.fragment().is_some() {
        return Err(format!("'{uri}' must not contain a fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("'{uri}' must not contain credentials"));
    }
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        _ => Err(format!(
            "'{uri}' must be https, or http on 127.0.0.1, [::1] or localhost"
        )),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => ip == std::net::Ipv4Addr::LOCALHOST,
        Some(Host::Ipv6(ip)) => ip == std::net::Ipv6Addr::LOCALHOST,
        None => false,
    }
}

/// Whether `requested` is one of `registered`. Exact string comparison,
/// except that loopback http redirects match on any port (RFC 8252 §7.3):
/// native clients listen on ephemeral ports.
pub fn redirect_matches(registered: &[String], requested: &str) -> bool {
    if registered.iter().any(|r| r == requested) {
        return true;
    }
    let Ok(req) = Url::parse(requested) else {
        return false;
    };
    if req.scheme() != "http" || !is_loopback(&req) || req.fragment().is_some() {
        return false;
    }
    registered.iter().any(|r| {
        Url::parse(r).is_ok_and(|reg| {
            reg.scheme() == "http"
                && reg.host() == req.host()
                && reg.path() == req.path()
                && reg.query() == req.query()
        })
    })
}

/// Whether the redirect URI points at the user's own machine (shown as a
/// warning on the consent page).
pub fn is_loopback_redirect(uri: &str) -> bool {
    Url::parse(uri).is_ok_and(|u| is_loopback(&u))
}

/// Whether a `client_id` names a metadata document rather than a registration.
pub fn is_document_url(state: &AppState, client_id: &str) -> bool {
    client_id.starts_with("https://")
        || (state.config.oauth.cimd_allow_private_addresses
            && client_id.starts_with("http://127.0.0.1:"))
}

/// Finds a live client: a registration in the store, or a metadata document.
/// `Ok(None)` when there is no such client (or its registration expired).
pub async fn find(state: &AppState, client_id: &str) -> Result<Option<Arc<Client>>, OAuthError> {
    if client_id.is_empty() || client_id.len() > MAX_URI_LEN {
        return Ok(None);
    }
    if is_document_url(state, client_id) {
        if !state.config.oauth.client_id_metadata_documents {
            return Ok(None);
        }
        return match state.oauth.documents.get(client_id).await {
            Ok(client) => Ok(Some(client)),
            Err(e) => {
                tracing::info!(client_id, error = %e, "client metadata document refused");
                Ok(None)
            }
        };
    }
    let Some(client) = state.store.get_client(client_id).await? else {
        return Ok(None);
    };
    let now = now();
    match client.expires_at {
        Some(exp) if exp <= now => Ok(None),
        Some(exp) => {
            // Pushing the expiry out costs a write, so only once a tenth of
            // the lifetime has been used up.
            let ttl = state.config.oauth.registration_ttl.as_secs() as i64;
            if client.source == ClientSource::Registered && exp - now < ttl - ttl / 10 {
                state.store.extend_client(client_id, now + ttl).await?;
            }
            Ok(Some(Arc::new(client)))
        }
        None => Ok(Some(Arc::new(client))),
    }
}

/// Authenticates the client of a token, revocation or introspection request
/// by the method it registered (RFC 6749 §2.3.1).
pub async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    params: &Params,
) -> Result<Arc<Client>, OAuthError> {
    let basic = basic_credentials(headers)?;
    let used_basic = basic.is_some();
    let (client_id, secret, method) = match basic {
        Some((id, secret)) => {
            if params.get("client_secret").is_some() {
                return Err(OAuthError::InvalidRequest(
                    "use one client authentication method, not two".into(),
                ));
            }
            if params.get("client_id").is_some_and(|body_id| body_id != id) {
                return Err(OAuthError::InvalidRequest(
                    "client_id in the body differs from the Authorization header".into(),
                ));
            }
            (id, Some(secret), ClientAuthMethod::ClientSecretBasic)
        }
        None => {
            let id = params.get("client_id").ok_or_else(|| {
                OAuthError::invalid_client("client authentication is required", false)
            })?;
            match params.get("client_secret") {
                Some(s) => (
                    id.to_string(),
                    Some(s.to_string()),
                    ClientAuthMethod::ClientSecretPost,
                ),
                None => (id.to_string(), None, ClientAuthMethod::None),
            }
        }
    };
    let unknown = || OAuthError::invalid_client("unknown or expired client", used_basic);
    let client = find(state, &client_id).await?.ok_or_else(unknown)?;
    if client.auth_method != method {
        return Err(OAuthError::invalid_client(
            format!(
                "this client authenticates with {}",
                client.auth_method.as_str()
            ),
            used_basic,
        ));
    }
    if let Some(secret) = secret {
        let expected = client.secret_hash.ok_or_else(unknown)?;
        // TokenHash compares in constant time.
        if TokenHash::of(&secret) != expected {
            return Err(OAuthError::invalid_client(
                "bad client credentials",
                used_basic,
            ));
        }
    }
    Ok(client)
}

/// `Authorization: Basic` with form-urlencoded id and secret (RFC 6749 §2.3.1).
fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || OAuthError::invalid_client("malformed Basic credentials", true);
    let value = value.to_str().map_err(|_| bad())?;
    let Some((scheme, encoded)) = value.split_once(' ') else {
        return Err(bad());
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    let unescape = |s: &str| -> Result<String, OAuthError> {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(&format!("v={s}")).map_err(|_| bad())?;
        pairs.into_iter().next().map(|(_, v)| v).ok_or_else(bad)
    };
    Ok(Some((unescape(id)?, unescape(secret)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_redirects_match_on_any_port() {
        let reg = vec![
            "http://127.0.0.1/callback".to_string(),
            "https://app.example/cb".to_string(),
        ];
        assert!(redirect_matches(&reg, "http://127.0.0.1:53121/callback"));
        assert!(redirect_matches(&reg, "http://127.0.0.1/callback"));
        assert!(!redirect_matches(&reg, "http://127.0.0.1:53121/other"));
        assert!(!redirect_matches(&reg, "http://localhost:53121/callback"));
        assert!(redirect_matches(&reg, "https://app.example/cb"));
        assert!(!redirect_matches(&reg, "https://app.example:8443/cb"));
        assert!(!redirect_matches(&reg, "https://app.example/cb/"));
    }

    #[test]
    fn redirect_uri_rules() {
        for ok in [
            "https://claude.ai/api/mcp/auth_callback",
            "http://127.0.0.1:3000/cb",
            "http://localhost/cb",
            "http://[::1]:9/cb",
        ] {
            assert!(validate_redirect_uri(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://example.com/cb",
            "https://a.example/cb#frag",
            "javascript:alert(1)",
            "/relative",
            "https://user:pw@a.example/cb",
        ] {
            assert!(validate_redirect_uri(bad).is_err(), "{bad}");
        }
    }
}
