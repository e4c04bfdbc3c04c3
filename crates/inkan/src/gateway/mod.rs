//! The resource server: `/mcp/<service>` behind bearer tokens.
//!
//! - [`metadata`]: RFC 9728 documents and `WWW-Authenticate` challenges.
//! - [`validate`]: the token hot path (hash, cache, at most one store trip).
//! - [`fast`]: the request hot path: plain MCP requests served and proxied
//!   straight off the socket.
//! - [`proxy`]: the streaming proxy for what the router serves (browser
//!   requests with `Origin`, chunked uploads, odd requests).
//! - [`assertion`]: the signed identity assertion and `/.well-known/jwks.json`.
//!
//! Every refusal is one of [`Refusal`]'s synthetic responses, built in one
//! place ([`Refusal::respond`]).

pub mod assertion;
pub mod fast;
pub mod metadata;
pub mod proxy;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use tower_http::cors::{AllowOrigin, CorsLayer};

use self::assertion::Assertions;
use self::metadata::Challenges;
use self::proxy::{ProxyError, Upstream};
use self::validate::{Access, Validator, Verdict};
use crate::config::Config;
use crate::metrics::{Metrics, Outcome, UpstreamError};
use crate::server::{AppState, Shared};
use crate::store::SharedStore;
use crate::store::touch::Toucher;

/// One configured service, with everything a request needs precomputed.
pub struct Service {
    pub id: String,
    /// `<public_url>/mcp/<id>`: the audience of its assertions.
    pub resource: String,
    pub scopes: Vec<String>,
    challenges: Challenges,
    metadata: Bytes,
    upstream: Upstream,
}

/// The gateway's share of the application state.
pub struct Gateway {
    pub validator: Validator,
    pub assertions: Assertions,
    services: HashMap<String, Service>,
    root_metadata: Bytes,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// Builds every service's state and loads the assertion keys (creating
    /// them in the store on first start).
    pub async fn new(
        config: &Config,
        store: SharedStore,
        toucher: Arc<Toucher>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Gateway> {
        let mut services = HashMap::new();
        for s in &config.services {
            services.insert(
                s.id.clone(),
                Service {
                    id: s.id.clone(),
                    resource: config.resource_url(&s.id),
                    scopes: s.scopes.clone(),
                    challenges: metadata::challenges(config, s),
                    metadata: metadata::service_document(config, s),
                    upstream: Upstream::new(s, &config.gateway, &metrics)?,
                },
            );
        }
        Ok(Gateway {
            validator: Validator::new(config, Arc::clone(&store), toucher, Arc::clone(&metrics)),
            assertions: Assertions::load(config, store).await?,
            services,
            root_metadata: metadata::root_document(config),
            metrics,
        })
    }

    pub fn service(&self, id: &str) -> Option<&Service> {
        self.services.get(id)
    }

    /// Drops cached validations of revoked grants on this instance.
    pub fn invalidate_grants(&self, grant_ids: &[String]) {
        self.validator.invalidate_grants(grant_ids);
    }

    /// Drops every cached validation on this instance.
    pub fn invalidate_all(&self) {
        self.validator.invalidate_all();
    }
}

/// The gateway's routes: metadata, JWKS and the MCP endpoints.
pub fn routes(config: &Config) -> Router<AppState> {
    Router::new()
        .route(MCP_ROUTE, any(mcp))
        .route("/.well-known/oauth-protected-resource", get(root_metadata))
        .route(
            "/.well-known/oauth-protected-resource/mcp/{service}",
            get(service_metadata),
        )
        .route("/.well-known/jwks.json", get(jwks))
        .layer(cors(config))
}

/// Browser-based MCP clients need to read the challenge and the session id.
fn cors(config: &Config) -> CorsLayer {
    let origins = &config.gateway.cors_origins;
    let allow_origin = if origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            MCP_SESSION_ID,
            MCP_PROTOCOL_VERSION,
            LAST_EVENT_ID,
        ])
        .expose_headers([header::WWW_AUTHENTICATE, MCP_SESSION_ID])
        .max_age(Duration::from_secs(3600))
}

const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

fn json(body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn root_metadata(State(state): State<AppState>) -> Response {
    json(state.gateway.root_metadata.clone())
}

async fn service_metadata(State(state): State<AppState>, Path(service): Path<String>) -> Response {
    match state.gateway.service(&service) {
        Some(s) => json(s.metadata.clone()),
        None => Refusal::UnknownService.respond(None),
    }
}

async fn jwks(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        state.gateway.assertions.jwks(),
    )
        .into_response()
}

/// The route template every MCP request is counted under.
pub const MCP_ROUTE: &str = "/mcp/{service}";

/// `ANY /mcp/<service>` through the router: what [`fast`] hands off, such
/// as requests that carry an `Origin` (browsers, which need CORS).
async fn mcp(
    State(state): State<AppState>,
    Path(service): Path<String>,
    request: Request,
) -> Response {
    match state.gateway.service(&service) {
        Some(svc) => handle(&state, svc, request).await,
        None => Refusal::UnknownService.respond(None),
    }
}

/// Authenticate, then proxy.
async fn handle(state: &AppState, svc: &Service, request: Request) -> Response {
    let token_in_query = request.uri().query().is_some_and(has_access_token);
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    let (access, assertion) = match authorize(state, svc, token_in_query, authorization).await {
        Ok(allowed) => allowed,
        Err(refusal) => return refusal.respond(Some(svc)),
    };
    match svc
        .upstream
        .forward(request, &access, assertion, &state.gateway.metrics)
        .await
    {
        Ok(response) => response,
        Err(ProxyError::BodyTooLarge) => Refusal::BodyTooLarge.respond(Some(svc)),
        Err(ProxyError::BadRequestBody) => Refusal::BadRequestBody.respond(Some(svc)),
        Err(ProxyError::Upstream(UpstreamError::Timeout)) => {
            Refusal::UpstreamTimeout.respond(Some(svc))
        }
        Err(ProxyError::Upstream(_)) => Refusal::UpstreamUnavailable.respond(Some(svc)),
    }
}

/// Whether a request for `svc` may pass, given whether its query carries
/// an access token and its `Authorization` value; if so, who it speaks for
/// and the identity assertion to send upstream.
async fn authorize(
    state: &Shared,
    svc: &Service,
    token_in_query: bool,
    authorization: Option<&[u8]>,
) -> Result<(Arc<Access>, Option<HeaderValue>), Refusal> {
    let gateway = &state.gateway;
    if token_in_query {
        gateway.metrics.validation(Outcome::InQuery);
        return Err(Refusal::TokenInQuery);
    }
    let Some(token) = authorization.and_then(bearer) else {
        gateway.metrics.validation(Outcome::Missing);
        return Err(Refusal::MissingToken);
    };
    let now = unix_now();
    match gateway
        .validator
        .validate(token, &svc.id, &svc.scopes, now)
        .await
    {
        Verdict::Allowed(access) => {
            let assertion = gateway
                .assertions
                .assertion(&svc.id, &svc.resource, &access, now);
            Ok((access, assertion))
        }
        Verdict::Invalid(_) | Verdict::WrongService => Err(Refusal::InvalidToken),
        Verdict::InsufficientScope => Err(Refusal::InsufficientScope),
        Verdict::Unavailable => Err(Refusal::StoreUnavailable),
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme
/// case-insensitive). Any other scheme counts as no token.
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// RFC 6750 §2.3 allows `?access_token=`; MCP forbids it (tokens leak into
/// logs and histories), so its presence alone refuses the request.
fn has_access_token(query: &str) -> bool {
    url::form_urlencoded::parse(query.as_bytes()).any(|(k, _)| k == "access_token")
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Every way the gateway answers instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownService,
    TokenInQuery,
    MissingToken,
    InvalidToken,
    InsufficientScope,
    StoreUnavailable,
    BodyTooLarge,
    BadRequestBody,
    UpstreamUnavailable,
    UpstreamTimeout,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        self.parts().0
    }

    fn parts(self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Refusal::UnknownService => (StatusCode::NOT_FOUND, "not_found", "no such service"),
            Refusal::TokenInQuery => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "access tokens are accepted only in the Authorization header",
            ),
            Refusal::MissingToken => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required",
            ),
            Refusal::InvalidToken => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "the access token is invalid, expired, revoked or not for this service",
            ),
            Refusal::InsufficientScope => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                "the access token lacks the scopes this service requires",
            ),
            Refusal::StoreUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "token validation is temporarily unavailable; retry shortly",
            ),
            Refusal::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_too_large",
                "the request body exceeds the gateway's limit",
            ),
            Refusal::BadRequestBody => (
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "the request body could not be read",
            ),
            Refusal::UpstreamUnavailable => (
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "the MCP server behind this endpoint is unavailable",
            ),
            Refusal::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "the MCP server behind this endpoint did not answer in time",
            ),
        }
    }

    /// The synthetic response: status, RFC 6750 challenge where one applies,
    /// and a small JSON body (`error`, `error_description`).
    pub fn respond(self, service: Option<&Service>) -> Response {
        let (status, error, description) = self.parts();
        let body = serde_json::json!({ "error": error, "error_description": description });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(s) = service {
            let challenge = match self {
                Refusal::MissingToken => Some(&s.challenges.missing),
                Refusal::InvalidToken => Some(&s.challenges.invalid_token),
                Refusal::InsufficientScope => Some(&s.challenges.insufficient_scope),
                Refusal::TokenInQuery => Some(&s.challenges.invalid_request),
                _ => None,
            };
            if let Some(c) = challenge {
                headers.insert(header::WWW_AUTHENTICATE, c.clone());
            }
        }
        if self == Refusal::StoreUnavailable {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}
