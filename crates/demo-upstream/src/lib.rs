//! A small MCP server (rmcp, Streamable HTTP) that stands behind inkan in
//! tests, benchmarks and `inkan dev`.
//!
//! - [`tools`]: `whoami` reports the identity inkan asserted, after verifying
//!   the `X-Inkan-Assertion` JWT; `echo` repeats its argument.
//! - [`assertion`]: the assertion check against inkan's JWKS.
//!
//! [`start`] serves on a listener the caller binds (port 0 in tests) and
//! returns a [`DemoUpstream`] handle that also records the headers of every
//! request, so gateway tests can prove what inkan did *not* forward.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod tools;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use http::HeaderMap;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::assertion::Verifier;
use crate::tools::DemoServer;

/// How many requests' headers [`DemoUpstream::seen_requests`] keeps; the
/// oldest are dropped so a long benchmark cannot grow memory without bound.
pub const SEEN_REQUESTS_CAPACITY: usize = 1024;

#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// inkan's JWKS: `<inkan public_url>/.well-known/jwks.json`.
    pub jwks_url: String,
    /// Expected `aud` of assertions: `<inkan public_url>/mcp/<service>`.
    pub audience: String,
}

/// A running demo upstream. Dropping it leaves the server running until the
/// runtime ends; call [`DemoUpstream::shutdown`] to stop it.
pub struct DemoUpstream {
    addr: SocketAddr,
    seen: SeenRequests,
    cancel: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl DemoUpstream {
    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Headers of the requests received so far, oldest first.
    pub fn seen_requests(&self) -> Vec<HeaderMap> {
        self.seen.snapshot()
    }

    /// Ends open MCP sessions and streams, then waits for the server to stop.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.task.await??;
        Ok(())
    }
}

/// Starts the demo upstream on `listener` and returns once it accepts requests.
pub async fn start(listener: TcpListener, config: DemoConfig) -> anyhow::Result<DemoUpstream> {
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let seen = SeenRequests::default();
    let app = app(&config, seen.clone(), cancel.clone())?;
    let shutdown = cancel.clone();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(DemoUpstream {
        addr,
        seen,
        cancel,
        task,
    })
}

fn app(
    config: &DemoConfig,
    seen: SeenRequests,
    cancel: CancellationToken,
) -> anyhow::Result<Router> {
    let verifier = Verifier::new(config.jwks_url.clone(), &config.audience)?;
    // inkan proxies with `Host: 127.0.0.1:<port>` (the upstream's own
    // authority); the DNS-rebinding check accepts loopback names on any port
    // and nothing else, which is right for a server that only listens locally.
    let mcp_config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(["127.0.0.1", "localhost", "::1"])
        .with_cancellation_token(cancel.child_token());
    let mcp = StreamableHttpService::new(
        move || Ok(DemoServer::new(verifier.clone())),
        Arc::new(LocalSessionManager::default()),
        mcp_config,
    );
    Ok(Router::new()
        .nest_service("/mcp", mcp)
        .layer(middleware::from_fn_with_state(seen, record_headers)))
}

async fn record_headers(
    State(seen): State<SeenRequests>,
    request: Request,
    next: Next,
) -> Response {
    seen.push(request.headers().clone());
    next.run(request).await
}

#[derive(Clone, Default)]
struct SeenRequests(Arc<Mutex<VecDeque<HeaderMap>>>);

impl SeenRequests {
    // A std Mutex is enough: it is held only to push or copy, never across `.await`.
    fn push(&self, headers: HeaderMap) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() == SEEN_REQUESTS_CAPACITY {
            seen.pop_front();
        }
        seen.push_back(headers);
    }

    fn snapshot(&self) -> Vec<HeaderMap> {
        let seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        seen.iter().cloned().collect()
    }
}
