//! The streaming proxy to a service's upstream MCP server (Streamable HTTP:
//! `POST`, `GET` for SSE, `DELETE` to end a session).
//!
//! Request bodies (JSON-RPC messages) are read whole, up to
//! `gateway.body_limit`, so an oversized one is refused with a clean `413`
//! before anything reaches the upstream. Response bodies are never buffered:
//! each frame the upstream sends is passed on as it arrives, so an SSE event
//! reaches the client while the upstream keeps the stream open. When the
//! client goes away, axum drops the response body and with it the upstream
//! connection.
//!
//! https upstreams are reached with rustls (the system's roots, or the
//! service's `upstream_ca_file`); `fast.rs` leaves their requests to this
//! path.
//!
//! What the upstream receives: the client's headers minus hop-by-hop headers,
//! `Authorization`, `Cookie` and every `X-Inkan-*` (no token passthrough, no
//! identity spoofing), plus inkan's identity headers and assertion.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderName, HeaderValue};
use axum::http::{Request, Response, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::metrics::histogram::Histogram;

use super::validate::Access;
use crate::config::{GatewayConfig, ServiceConfig, read_ca_file};
use crate::metrics::{Metrics, ServiceLabels, UpstreamError, UpstreamErrorLabels};

/// Why a request could not be proxied; each maps to one synthetic response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyError {
    /// `413`.
    BodyTooLarge,
    /// The client's request body broke off: `400`.
    BadRequestBody,
    /// Connection refused, reset or closed before an answer: `502`.
    Upstream(UpstreamError),
}

type Connector = HttpsConnector<HttpConnector>;
type HttpClient = Client<Connector, Full<Bytes>>;

thread_local! {
    /// This thread's connection pool per upstream (keyed by [`Upstream::key`]).
    /// A pooled connection is driven by a task on the runtime that opened it,
    /// so sharing pools across serving threads would make every proxied
    /// request wake a second thread.
    static POOLS: RefCell<HashMap<usize, HttpClient>> = RefCell::new(HashMap::new());
}

/// Tells [`Upstream`]s apart in [`POOLS`].
static NEXT_KEY: AtomicUsize = AtomicUsize::new(0);

pub struct Upstream {
    service: String,
    pub(super) uri: Uri,
    pub(super) authority: HeaderValue,
    /// `host:port` to connect to.
    pub(super) address: String,
    pub(super) key: usize,
    /// An https upstream: served by this module only.
    pub(super) tls: bool,
    connector: Connector,
    /// This service's `upstream_response_seconds`, looked up once.
    pub(super) latency: Histogram,
    pub(super) connect_timeout: Duration,
    pub(super) first_byte_timeout: Duration,
    pub(super) body_limit: u64,
}

impl Upstream {
    pub fn new(
        service: &ServiceConfig,
        config: &GatewayConfig,
        metrics: &Metrics,
    ) -> anyhow::Result<Upstream> {
        let uri: Uri = service.upstream.parse()?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow::anyhow!("upstream {} has no host", service.upstream))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => anyhow::bail!(
                "service {}: the upstream must be an http or https URL (got {})",
                service.id,
                service.upstream
            ),
        };
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        // The https connector below checks the scheme.
        http.enforce_http(false);
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(service, tls)?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Upstream {
            service: service.id.clone(),
            authority: HeaderValue::from_str(authority.as_str())?,
            address: format!(
                "{}:{}",
                authority.host(),
                authority.port_u16().unwrap_or(if tls { 443 } else { 80 })
            ),
            uri,
            key: NEXT_KEY.fetch_add(1, Ordering::Relaxed),
            tls,
            latency: metrics
                .upstream_latency
                .get_or_create(&ServiceLabels {
                    service: service.id.clone(),
                })
                .clone(),
            connector,
            connect_timeout: config.connect_timeout,
            first_byte_timeout: config.first_byte_timeout,
            body_limit: config.body_limit,
        })
    }

    /// Sends the request upstream and returns the streaming response.
    pub async fn forward(
        &self,
        request: Request<Body>,
        access: &Access,
        assertion: Option<HeaderValue>,
        metrics: &Metrics,
    ) -> Result<Response<Body>, ProxyError> {
        let (parts, body) = request.into_parts();
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_limit) {
            return Err(ProxyError::BodyTooLarge);
        }
        let limit = usize::try_from(self.body_limit).unwrap_or(usize::MAX);
        let body = match Limited::new(body, limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(ProxyError::BodyTooLarge);
            }
            Err(_) => return Err(ProxyError::BadRequestBody),
        };

        // The client's request head becomes the upstream's, edited in place.
        let mut parts = parts;
        parts.uri = match parts.uri.query() {
            Some(q) => self.with_query(q),
            None => self.uri.clone(),
        };
        parts.version = http::Version::HTTP_11;
        parts.extensions.clear();
        let headers = &mut parts.headers;
        strip_headers(headers, strip_request_header);
        headers.insert(header::HOST, self.authority.clone());
        let h = &access.headers;
        headers.insert(X_INKAN_USER, h.user.clone());
        if let Some(email) = &h.email {
            headers.insert(X_INKAN_EMAIL, email.clone());
        }
        headers.insert(X_INKAN_CLIENT, h.client.clone());
        headers.insert(X_INKAN_SCOPES, h.scopes.clone());
        headers.insert(X_INKAN_SERVICES, h.services.clone());
        if let Some(a) = assertion {
            headers.insert(X_INKAN_ASSERTION, a);
        }
        let out = Request::from_parts(parts, Full::new(body));

        let started = Instant::now();
        let sent = tokio::time::timeout(self.first_byte_timeout, self.client().request(out)).await;
        let (kind, why) = match sent {
            Ok(Ok(response)) => {
                self.latency.observe(started.elapsed().as_secs_f64());
                return Ok(response_from(response));
            }
            Err(_) => (UpstreamError::Timeout, None),
            Ok(Err(e)) => {
                // The whole chain: a refused certificate says why only in
                // its innermost source.
                let kind = classify(&e);
                (kind, Some(format!("{:#}", anyhow::Error::new(e))))
            }
        };
        self.failed(metrics, kind, why.as_deref());
        Err(ProxyError::Upstream(kind))
    }

    /// Logs and counts a request that got no answer from this upstream.
    pub(super) fn failed(&self, metrics: &Metrics, kind: UpstreamError, why: Option<&str>) {
        tracing::warn!(service = %self.service, ?kind, error = why, "upstream request failed");
        metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                service: self.service.clone(),
                kind,
            })
            .inc();
    }

    /// This thread's pooled client for this upstream.
    fn client(&self) -> HttpClient {
        POOLS.with_borrow_mut(|pools| {
            pools
                .entry(self.key)
                .or_insert_with(|| {
                    Client::builder(TokioExecutor::new())
                        .pool_idle_timeout(Duration::from_secs(90))
                        .build(self.connector.clone())
                })
                .clone()
        })
    }

    fn with_query(&self, query: &str) -> Uri {
        let path = self.uri.path();
        let pq = match self.uri.query() {
            Some(own) => format!("{path}?{own}&{query}"),
            None => format!("{path}?{query}"),
        };
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = pq.parse().ok();
        Uri::from_parts(parts).unwrap_or_else(|_| self.uri.clone())
    }
}

/// What an https upstream's certificate is checked against: the service's
/// `upstream_ca_file`, else the system's roots (none are loaded for http).
fn tls_config(service: &ServiceConfig, tls: bool) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if tls {
        match &service.upstream_ca_file {
            Some(path) => {
                let certs = read_ca_file(path).map_err(|why| {
                    anyhow::anyhow!("service {}: {}: {why}", service.id, path.display())
                })?;
                for cert in certs {
                    roots.add(cert)?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    tracing::warn!(
                        service = %service.id,
                        "no system CA certificates found; set upstream_ca_file or install ca-certificates, or every request to this upstream fails"
                    );
                }
            }
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The upstream's response, streamed, minus what must not reach the client.
fn response_from(upstream: Response<hyper::body::Incoming>) -> Response<Body> {
    let (mut parts, body) = upstream.into_parts();
    strip_headers(&mut parts.headers, strip_response_header);
    Response::from_parts(parts, Body::new(body))
}

const X_INKAN_USER: HeaderName = HeaderName::from_static("x-inkan-user");
const X_INKAN_EMAIL: HeaderName = HeaderName::from_static("x-inkan-email");
const X_INKAN_CLIENT: HeaderName = HeaderName::from_static("x-inkan-client");
const X_INKAN_SCOPES: HeaderName = HeaderName::from_static("x-inkan-scopes");
const X_INKAN_SERVICES: HeaderName = HeaderName::from_static("x-inkan-services");
const X_INKAN_ASSERTION: HeaderName = HeaderName::from_static("x-inkan-assertion");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn is_one_of(name: &str, names: &[&str]) -> bool {
    names.iter().any(|n| name.eq_ignore_ascii_case(n))
}

/// Whether a client request header (any case) stays out of the upstream's.
/// `X-Inkan_User` and the like go too: CGI-style stacks read `_` as `-`.
pub(super) fn strip_request_header(name: &str) -> bool {
    is_one_of(name, &HOP_BY_HOP)
        || is_one_of(name, &["host", "authorization", "cookie", "content-length"])
        || name.len() >= 8
            && name
                .bytes()
                .zip(b"x-inkan-")
                .all(|(b, want)| b.to_ascii_lowercase() == *want || (b == b'_' && *want == b'-'))
}

/// Response headers that speak for inkan's origin, shared by every
/// service, or for its own sign-in: an upstream does not get to set them.
const ORIGIN_WIDE: [&str; 5] = [
    "set-cookie",
    "strict-transport-security",
    "alt-svc",
    "clear-site-data",
    "www-authenticate",
];

/// Whether an upstream response header (any case) stays out of the
/// client's: hop-by-hop headers and [`ORIGIN_WIDE`] ones.
pub(super) fn strip_response_header(name: &str) -> bool {
    is_one_of(name, &HOP_BY_HOP) || is_one_of(name, &ORIGIN_WIDE)
}

/// Removes `strip` and anything the `Connection` header names as
/// connection-specific.
fn strip_headers(headers: &mut HeaderMap, strip: fn(&str) -> bool) {
    let mut doomed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| HeaderName::from_bytes(s.trim().as_bytes()).ok())
        .collect();
    doomed.extend(headers.keys().filter(|n| strip(n.as_str())).cloned());
    for name in doomed {
        headers.remove(name);
    }
}

/// A connect timeout surfaces as an I/O `TimedOut` somewhere in the chain.
fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return UpstreamError::Timeout;
        }
        source = s.source();
    }
    if e.is_connect() {
        UpstreamError::Unreachable
    } else {
        UpstreamError::Protocol
    }
}
