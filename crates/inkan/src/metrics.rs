//! Prometheus metrics, rendered at `GET /metrics` (see [`crate::ops`]).
//!
//! Every label has a small, fixed set of values: routes are axum's route
//! templates (`/mcp/{service}`, never the concrete path), services are the
//! configured ids, outcomes and error kinds are enums. Nothing derived from a
//! request (tokens, users, clients) ever becomes a label.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::identity::Identity;
use crate::server::AppState;

/// Borrowed where the value is fixed, so the gateway's fast path counts a
/// request without allocating.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: Cow<'static, str>,
    pub method: &'static str,
    pub status: u16,
}

/// A closed enum whose label values are snake_case names.
macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $label:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $label),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

label_enum! {
    /// How a bearer token fared on the MCP endpoint.
    Outcome {
        Allowed => "allowed",
        Missing => "missing",
        Malformed => "malformed",
        InQuery => "in_query",
        Unknown => "unknown",
        Expired => "expired",
        WrongService => "wrong_service",
        InsufficientScope => "insufficient_scope",
        StoreError => "store_error",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

label_enum! {
    CacheResult {
        Hit => "hit",
        Miss => "miss",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub result: CacheResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

label_enum! {
    /// Why the proxy could not get an answer from an upstream.
    UpstreamError {
        Unreachable => "unreachable",
        Timeout => "timeout",
        Protocol => "protocol",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub service: String,
    pub kind: UpstreamError,
}

fn latency_histogram() -> Histogram {
    // 100 µs .. ~3.3 s: store round trips sit at the low end, upstreams anywhere.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The process's metrics. Handles are cheap atomics; recording never locks
/// beyond the label lookup of a [`Family`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub validations: Family<OutcomeLabels, Counter>,
    pub cache: Family<CacheLabels, Counter>,
    pub store_latency: Histogram,
    pub upstream_latency: HistogramFamily<ServiceLabels>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// With `identity`, its JWKS counters are published too (read at scrape
    /// time; identity owns them).
    pub fn new(identity: Option<Arc<Identity>>) -> Metrics {
        let mut registry = Registry::with_prefix("inkan");
        let http_requests = Family::default();
        registry.register(
            "http_requests",
            "HTTP requests by route template, method and status",
            http_requests.clone(),
        );
        let validations = Family::default();
        registry.register(
            "token_validations",
            "Bearer token validations on the MCP endpoint by outcome",
            validations.clone(),
        );
        let cache = Family::default();
        registry.register(
            "token_cache",
            "In-process token cache lookups by result",
            cache.clone(),
        );
        let store_latency = latency_histogram();
        registry.register(
            "store_lookup_seconds",
            "Latency of token lookups in the store (cache misses)",
            store_latency.clone(),
        );
        let upstream_latency: HistogramFamily<ServiceLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "upstream_response_seconds",
            "Time from sending a request upstream to its response headers, by service",
            upstream_latency.clone(),
        );
        let upstream_errors = Family::default();
        registry.register(
            "upstream_errors",
            "Requests that got no response from the upstream, by service and kind",
            upstream_errors.clone(),
        );
        if let Some(identity) = identity {
            registry.register_collector(Box::new(JwksCounters(identity)));
        }
        Metrics {
            registry,
            http_requests,
            validations,
            cache,
            store_latency,
            upstream_latency,
            upstream_errors,
        }
    }

    /// Counts one answered request.
    pub fn http_request(&self, route: Cow<'static, str>, method: &Method, status: StatusCode) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route,
                method: method_label(method),
                status: status.as_u16(),
            })
            .inc();
    }

    pub fn validation(&self, outcome: Outcome) {
        self.validations
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Hanko JWKS fetches, failures and cache hits, as counted by [`Identity`].
struct JwksCounters(Arc<Identity>);

impl std::fmt::Debug for JwksCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwksCounters")
    }
}

impl Collector for JwksCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.jwks_stats();
        for (name, help, value) in [
            (
                "hanko_jwks_fetches",
                "JWKS requests sent to Hanko",
                &stats.fetches,
            ),
            (
                "hanko_jwks_failures",
                "JWKS requests that failed",
                &stats.failures,
            ),
            (
                "hanko_jwks_cache_hits",
                "Key lookups answered from the JWKS cache",
                &stats.hits,
            ),
        ] {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// Middleware counting every request by its route template and status.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or(Cow::Borrowed("unmatched"), |p| {
            Cow::Owned(p.as_str().to_owned())
        });
    let method = req.method().clone();
    let response = next.run(req).await;
    state
        .metrics
        .http_request(route, &method, response.status());
    response
}

/// Clients choose methods freely; only the standard ones become label values.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}
