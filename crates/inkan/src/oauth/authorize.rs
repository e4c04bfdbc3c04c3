//! The authorization endpoint: `GET /oauth/authorize` shows the login
//! redirect or the consent page, `POST /oauth/authorize` takes the decision.
//!
//! The client and redirect URI are checked first; until both are trusted,
//! errors are shown to the person as a page and never redirected (RFC 6749
//! §4.1.2.1). After that every error is redirected with `state` and `iss`
//! (RFC 9207). The decision re-validates the whole request: the consent form
//! is only a carrier for the original parameters, protected by a CSRF token
//! bound to the Hanko session.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use url::Url;

use super::client::{self, is_loopback_redirect, redirect_matches};
use super::{OAuthError, Params, now};
use crate::config::ServiceConfig;
use crate::identity::HankoSession;
use crate::pages::{ConsentPage, ServiceChoice, error_page};
use crate::server::AppState;
use crate::store::token::{mint, new_grant_id};
use crate::store::{Client, ClientSource, Grant, PendingCode, TokenKind};

/// The parameters of an authorization request, in the order they are
/// posted back and MACed.
const REQUEST_PARAMS: [&str; 8] = [
    "client_id",
    "code_challenge",
    "code_challenge_method",
    "redirect_uri",
    "resource",
    "response_type",
    "scope",
    "state",
];
const MAX_STATE_LEN: usize = 2048;
/// Codes live at most this long, whatever `tokens.code_ttl` says.
const MAX_CODE_TTL: i64 = 60;

/// A fully validated authorization request.
struct AuthRequest {
    client: Arc<Client>,
    redirect_uri: String,
    state: Option<String>,
    code_challenge: String,
    resource: String,
    service_id: String,
    /// Known scopes the client asked for; `None` means "the services' scopes".
    scopes: Option<Vec<String>>,
    /// The original parameters, for the consent form and the CSRF token.
    original: Vec<(String, String)>,
}

/// Why a request failed, and whether the client may be told by redirect.
enum Failure {
    Page(OAuthError),
    Redirect {
        redirect_uri: String,
        state: Option<String>,
        error: OAuthError,
    },
}

impl From<OAuthError> for Failure {
    fn from(e: OAuthError) -> Self {
        Failure::Page(e)
    }
}

impl Failure {
    fn into_response(self, issuer: &str) -> Response {
        match self {
            Failure::Page(e) => e.into_page(),
            Failure::Redirect {
                redirect_uri,
                state,
                error,
            } => {
                if let OAuthError::Unavailable(cause) = &error {
                    tracing::error!(error = %cause, "authorize: store unavailable");
                }
                let description = error.description();
                let mut pairs = vec![("error", error.code()), ("error_description", &description)];
                if let Some(s) = &state {
                    pairs.push(("state", s));
                }
                pairs.push(("iss", issuer));
                redirect_with(&redirect_uri, &pairs)
            }
        }
    }
}

/// 303 to `base` with `pairs` appended to its query.
fn redirect_with(base: &str, pairs: &[(&str, &str)]) -> Response {
    match Url::parse(base) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(pairs);
            Redirect::to(url.as_str()).into_response()
        }
        Err(_) => error_page(
            StatusCode::BAD_REQUEST,
            "This sign-in request cannot continue",
            "The application's redirect address is invalid.",
        ),
    }
}

async fn validate(state: &AppState, params: &Params) -> Result<AuthRequest, Failure> {
    let client_id = params.get("client_id").ok_or_else(|| {
        OAuthError::InvalidRequest("the request names no client (client_id)".into())
    })?;
    let client = client::find(state, client_id).await?.ok_or_else(|| {
        OAuthError::InvalidRequest(
            "the application is not registered (or its registration expired); start again from the application"
                .into(),
        )
    })?;
    let redirect_uri = match params.get("redirect_uri") {
        Some(r) if redirect_matches(&client.redirect_uris, r) => r.to_string(),
        Some(_) => {
            return Err(Failure::Page(OAuthError::InvalidRequest(
                "the redirect address is not registered for this application".into(),
            )));
        }
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => {
            return Err(Failure::Page(OAuthError::InvalidRequest(
                "the request names no redirect address (redirect_uri)".into(),
            )));
        }
    };
    let state_param = params.get("state").map(str::to_string);
    if state_param
        .as_ref()
        .is_some_and(|s| s.len() > MAX_STATE_LEN)
    {
        return Err(Failure::Page(OAuthError::InvalidRequest(format!(
            "state longer than {MAX_STATE_LEN} bytes"
        ))));
    }
    let fail = |error: OAuthError| Failure::Redirect {
        redirect_uri: redirect_uri.clone(),
        state: state_param.clone(),
        error,
    };

    match params.get("response_type") {
        None => {
            return Err(fail(OAuthError::InvalidRequest(
                "missing response_type".into(),
            )));
        }
        Some("code") => {}
        Some(other) => {
            return Err(fail(OAuthError::UnsupportedResponseType(format!(
                "response_type '{other}' is not supported; use code"
            ))));
        }
    }
    if params.get("code_challenge_method") != Some("S256") {
        return Err(fail(OAuthError::InvalidRequest(
            "PKCE with code_challenge_method=S256 is required".into(),
        )));
    }
    let code_challenge = params
        .get("code_challenge")
        .filter(|c| {
            c.len() == 43
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .ok_or_else(|| {
            fail(OAuthError::InvalidRequest(
                "code_challenge must be a base64url SHA-256 (43 characters)".into(),
            ))
        })?
        .to_string();

    let config = &state.config;
    let scopes = known_scopes(config, params.get("scope"));
    let service = select_service(state, params.get("resource"), scopes.as_deref()).map_err(fail)?;

    let original = REQUEST_PARAMS
        .iter()
        .filter_map(|k| params.get(k).map(|v| (k.to_string(), v.to_string())))
        .collect();
    Ok(AuthRequest {
        client,
        redirect_uri,
        state: state_param,
        code_challenge,
        resource: config.resource_url(&service.id),
        service_id: service.id.clone(),
        scopes,
        original,
    })
}

/// The requested scopes inkan knows; unknown ones (`offline_access`,
/// `openid`, …) are dropped. `None` when nothing known was asked for.
fn known_scopes(config: &crate::config::Config, scope: Option<&str>) -> Option<Vec<String>> {
    let mut known: Vec<String> = Vec::new();
    for s in scope.unwrap_or_default().split_ascii_whitespace() {
        let is_known = config
            .services
            .iter()
            .any(|svc| svc.scopes.iter().any(|k| k == s));
        if is_known && !known.iter().any(|k| k == s) {
            known.push(s.to_string());
        }
    }
    (!known.is_empty()).then_some(known)
}

/// The service a request is for: the one its `resource` names (a trailing
/// slash tolerated), else the only service, else the one service whose
/// scopes cover the requested scopes. Never "everything".
fn select_service<'a>(
    state: &'a AppState,
    resource: Option<&str>,
    scopes: Option<&[String]>,
) -> Result<&'a ServiceConfig, OAuthError> {
    let services = &state.config.services;
    if let Some(resource) = resource {
        let resource = resource.strip_suffix('/').unwrap_or(resource);
        return services
            .iter()
            .find(|s| state.config.resource_url(&s.id) == resource)
            .ok_or_else(|| {
                OAuthError::InvalidTarget(format!("'{resource}' is not a resource served here"))
            });
    }
    if let [only] = services.as_slice() {
        return Ok(only);
    }
    let covering: Vec<&ServiceConfig> = match scopes {
        Some(scopes) => services
            .iter()
            .filter(|s| scopes.iter().all(|want| s.scopes.contains(want)))
            .collect(),
        None => Vec::new(),
    };
    match covering.as_slice() {
        [one] => Ok(one),
        _ => Err(OAuthError::InvalidTarget(
            "name the service with the resource parameter".into(),
        )),
    }
}

/// The Hanko session of the person at the browser, if any.
async fn session(state: &AppState, headers: &HeaderMap) -> Option<HankoSession> {
    let token = state.identity.token_from_headers(headers)?;
    match state.identity.verify(token).await {
        Ok(s) => Some(s),
        Err(reason) => {
            tracing::debug!(%reason, "authorize: Hanko session refused");
            None
        }
    }
}

fn login_redirect(original: &[(String, String)]) -> Response {
    let query = serde_urlencoded::to_string(original).unwrap_or_default();
    let return_to = format!("/oauth/authorize?{query}");
    let login = serde_urlencoded::to_string([("return_to", return_to)]).unwrap_or_default();
    Redirect::to(&format!("/login?{login}")).into_response()
}

/// HMAC-SHA256(key, session id ‖ 0 ‖ canonical request parameters).
fn csrf_mac(key: &[u8], session_id: &str, original: &[(String, String)]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(session_id.as_bytes());
    mac.update(&[0]);
    mac.update(
        serde_urlencoded::to_string(original)
            .unwrap_or_default()
            .as_bytes(),
    );
    mac
}

/// `GET /oauth/authorize`.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let issuer = state.config.public_url.clone();
    match show_inner(&state, &headers, query.unwrap_or_default()).await {
        Ok(r) => r,
        Err(f) => f.into_response(&issuer),
    }
}

async fn show_inner(
    state: &AppState,
    headers: &HeaderMap,
    query: String,
) -> Result<Response, Failure> {
    let (params, _) = Params::parse(query.as_bytes(), &[])?;
    let request = validate(state, &params).await?;
    let Some(session) = session(state, headers).await else {
        return Ok(login_redirect(&request.original));
    };
    let key = super::csrf_key(state).await.map_err(OAuthError::from)?;
    let csrf = URL_SAFE_NO_PAD.encode(
        csrf_mac(key, &session.session_id, &request.original)
            .finalize()
            .into_bytes(),
    );
    Ok(consent_page(state, &request, &session, csrf))
}

fn consent_page(
    state: &AppState,
    r: &AuthRequest,
    session: &HankoSession,
    csrf: String,
) -> Response {
    let config = &state.config;
    let service = config
        .service(&r.service_id)
        .expect("validated service exists");
    let scopes = match &r.scopes {
        Some(s) => s.clone(),
        None => service.scopes.clone(),
    };
    let scopes = scopes
        .iter()
        .map(|s| {
            let owner = config
                .services
                .iter()
                .find(|svc| svc.scopes.contains(s))
                .map(|svc| svc.name.as_str())
                .unwrap_or_default();
            format!("{s} ({owner})")
        })
        .collect::<Vec<_>>();
    let scopes = if scopes.is_empty() {
        vec![format!("use {}", service.name)]
    } else {
        scopes
    };
    let redirect = Url::parse(&r.redirect_uri).ok();
    let redirect_host = redirect
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let redirect_origin = redirect
        .as_ref()
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let page = ConsentPage {
        client_name: r
            .client
            .client_name
            .clone()
            .unwrap_or_else(|| r.client.client_id.clone()),
        client_id: r.client.client_id.clone(),
        logo_uri: r.client.logo_uri.clone(),
        redirect_host,
        loopback_redirect: is_loopback_redirect(&r.redirect_uri),
        unverified_client: r.client.source != ClientSource::MetadataDocument,
        user: session
            .email
            .clone()
            .or_else(|| session.username.clone())
            .unwrap_or_else(|| session.user_id.clone()),
        scopes,
        services: config
            .services
            .iter()
            .map(|s| ServiceChoice {
                id: s.id.clone(),
                name: s.name.clone(),
                checked: s.id == r.service_id,
            })
            .collect(),
        hidden: r.original.clone(),
        csrf,
    };
    page.into_response(&redirect_origin)
}

/// Refuses decisions posted from another site (in addition to the CSRF token).
fn same_origin(state: &AppState, headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if site.is_some_and(|s| s != "same-origin" && s != "none") {
        return false;
    }
    let ours = Url::parse(&state.config.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        // `Referrer-Policy: no-referrer` makes browsers send `Origin: null`
        // on same-origin form posts.
        None | Some("null") => true,
        Some(origin) => origin == ours,
    }
}

/// `POST /oauth/authorize`: the consent decision.
pub async fn decide(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let issuer = state.config.public_url.clone();
    match decide_inner(&state, &headers, &body).await {
        Ok(r) => r,
        Err(f) => f.into_response(&issuer),
    }
}

async fn decide_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Failure> {
    if !same_origin(state, headers) {
        return Err(Failure::Page(OAuthError::AccessDenied(
            "the decision was posted from another site".into(),
        )));
    }
    let (params, repeated) = Params::parse(body, &["service"])?;
    let request = validate(state, &params).await?;
    let Some(session) = session(state, headers).await else {
        return Ok(login_redirect(&request.original));
    };
    let key = super::csrf_key(state).await.map_err(OAuthError::from)?;
    let presented = params
        .get("csrf")
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .unwrap_or_default();
    // `verify_slice` compares in constant time.
    if csrf_mac(key, &session.session_id, &request.original)
        .verify_slice(&presented)
        .is_err()
    {
        return Err(Failure::Page(OAuthError::AccessDenied(
            "the consent form expired or was not issued to you; start again from the application"
                .into(),
        )));
    }
    let fail = |error: OAuthError| Failure::Redirect {
        redirect_uri: request.redirect_uri.clone(),
        state: request.state.clone(),
        error,
    };
    match params.get("decision") {
        Some("approve") => {}
        Some("deny") => {
            return Err(fail(OAuthError::AccessDenied(
                "the user denied the request".into(),
            )));
        }
        _ => {
            return Err(fail(OAuthError::InvalidRequest(
                "decision must be approve or deny".into(),
            )));
        }
    }
    let chosen: Vec<&ServiceConfig> = state
        .config
        .services
        .iter()
        .filter(|s| repeated.iter().any(|(_, v)| *v == s.id))
        .collect();
    if !chosen.iter().any(|s| s.id == request.service_id) {
        return Err(fail(OAuthError::AccessDenied(
            "the service the application asked for was not selected".into(),
        )));
    }
    let offered: Vec<&String> = chosen.iter().flat_map(|s| &s.scopes).collect();
    let scopes: Vec<String> = match &request.scopes {
        Some(asked) => asked
            .iter()
            .filter(|s| offered.contains(s))
            .cloned()
            .collect(),
        None => {
            let mut all: Vec<String> = Vec::new();
            for s in offered {
                if !all.contains(s) {
                    all.push(s.clone());
                }
            }
            all
        }
    };
    if request.scopes.is_some() && scopes.is_empty() {
        return Err(fail(OAuthError::InvalidScope(
            "none of the requested scopes belongs to the selected services".into(),
        )));
    }

    let now = now();
    let tokens = &state.config.tokens;
    let mut grant_expires = now + tokens.refresh_ttl.as_secs() as i64;
    if tokens.bind_to_session {
        grant_expires = grant_expires.min(session.expires_at);
    }
    let grant_id = new_grant_id();
    let code = mint(TokenKind::Code, &grant_id);
    let pending = PendingCode {
        grant: Grant {
            grant_id,
            user_id: session.user_id.clone(),
            email: session.email.clone(),
            session_id: session.session_id.clone(),
            client_id: request.client.client_id.clone(),
            scopes,
            services: chosen.iter().map(|s| s.id.clone()).collect(),
            resource: request.resource.clone(),
            created_at: now,
            last_used: None,
            session_exp: session.expires_at,
            expires_at: grant_expires,
        },
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        expires_at: now + (tokens.code_ttl.as_secs() as i64).min(MAX_CODE_TTL),
    };
    state
        .store
        .put_code(&code.hash, &pending)
        .await
        .map_err(|e| fail(e.into()))?;
    let mut pairs = vec![("code", code.token.as_str())];
    if let Some(s) = &request.state {
        pairs.push(("state", s));
    }
    pairs.push(("iss", &state.config.public_url));
    Ok(redirect_with(&request.redirect_uri, &pairs))
}
