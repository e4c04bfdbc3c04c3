//! The HTTP surface: one router over the shared application state.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use futures_util::future::{BoxFuture, Either};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::Service;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::oauth::OAuth;
use crate::revocation::Revocation;
use crate::store::{SharedStore, Toucher};

/// Everything a request handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub store: SharedStore,
    pub identity: Arc<Identity>,
    /// The authorization server's precomputed metadata, limiter and caches.
    pub oauth: OAuth,
    pub gateway: Gateway,
    pub metrics: Arc<Metrics>,
    /// Logout, the account page, cross-instance invalidation.
    pub revocation: Revocation,
    /// Coalesced `last_used` writes; flushed at shutdown.
    pub toucher: Arc<Toucher>,
}

/// Builds every part of the process from a validated configuration: the one
/// constructor `serve`, `dev` and the tests share.
pub async fn build(config: Config) -> anyhow::Result<AppState> {
    let store = crate::store::connect(&config.store).await?;
    build_with_store(config, store).await
}

/// [`build`] over a store the caller opened.
pub async fn build_with_store(config: Config, store: SharedStore) -> anyhow::Result<AppState> {
    let toucher = Arc::new(Toucher::spawn(
        Arc::clone(&store),
        config.store.touch_interval,
    ));
    let identity = Arc::new(Identity::new(&config.hanko));
    identity.start_background_refresh();
    let metrics = Arc::new(Metrics::new(Some(Arc::clone(&identity))));
    let gateway = Gateway::new(
        &config,
        Arc::clone(&store),
        Arc::clone(&toucher),
        Arc::clone(&metrics),
    )
    .await?;
    let state = AppState(Arc::new(Shared {
        oauth: OAuth::new(&config),
        revocation: Revocation::new(&config),
        config,
        store,
        identity,
        gateway,
        metrics,
        toucher,
    }));
    crate::revocation::start(&state);
    spawn_sweeper(&state);
    Ok(state)
}

/// Deletes expired rows (SQLite; Redis expires by TTL) every `store.sweep_interval`.
/// Holds only a weak reference, so it ends with the state.
fn spawn_sweeper(state: &AppState) {
    let weak = Arc::downgrade(&state.0);
    let every = state.config.store.sweep_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(shared) = weak.upgrade() else { return };
            match shared.store.sweep(crate::store::unix_now()).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(deleted = n, "swept expired records"),
                Err(e) => tracing::warn!(error = %e, "sweep failed"),
            }
        }
    });
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Every route of the process, with request metrics around each.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(crate::oauth::routes())
        .merge(crate::gateway::routes(&state.config))
        .merge(crate::ops::routes())
        .merge(crate::revocation::routes())
        .merge(crate::identity::webhook::routes())
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::track,
        ))
        .with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` resolves, then gives
/// in-flight requests (long SSE streams included) `gateway.shutdown_grace` to
/// finish before closing them. Handlers see the peer address
/// (`ConnectInfo<SocketAddr>`), which per-IP rate limits key on.
///
/// The listener is served by `workers` threads, nginx-style: the caller's
/// runtime is one of them, every other is a thread with its own
/// single-threaded runtime, and all accept from the same socket, so the
/// least busy thread takes the next connection. A connection then stays on
/// one thread with its upstream connections, and a proxied request never
/// wakes another thread.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = state.config.gateway.shutdown_grace;
    let workers = state.config.worker_threads();
    let door = FrontDoor {
        router: app(state.clone()),
        state,
    };
    let (stopping_tx, stopping) = watch::channel(false);
    let listener = listener.into_std()?;
    let mut others = Vec::with_capacity(workers.saturating_sub(1));
    for n in 1..workers {
        let listener = listener.try_clone()?;
        let (door, stopping) = (door.clone(), stopping.clone());
        let (done_tx, done) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("inkan-worker-{n}"))
            .spawn(move || {
                let served = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .and_then(|rt| {
                        rt.block_on(async move {
                            serve_until(TcpListener::from_std(listener)?, door, stopping, grace)
                                .await
                        })
                    });
                let _ = done_tx.send(served);
            })?;
        others.push(done);
    }
    let listener = TcpListener::from_std(listener)?;
    let serving = async move {
        let mut result = serve_until(listener, door, stopping, grace).await;
        for done in others {
            let served = done
                .await
                .unwrap_or_else(|_| Err(std::io::Error::other("a serving thread panicked")));
            result = result.and(served);
        }
        result
    };
    tokio::pin!(serving);
    // Dropping `stopping_tx` (on the signal, or when this future is
    // dropped) also tells every thread to stop.
    let stop = async move {
        shutdown.await;
        let _ = stopping_tx.send(true);
    };
    tokio::select! {
        result = &mut serving => result,
        () = stop => serving.await,
    }
}

/// Longest a client may take to send a request head, and longest an idle
/// keep-alive connection is kept open (slow-loris protection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One thread's share of [`run`]: accept and serve HTTP/1.1 until
/// `stopping`, then drain for at most `grace`.
async fn serve_until(
    listener: TcpListener,
    door: FrontDoor,
    mut stopping: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let connections = GracefulShutdown::new();
    // A closed channel (the sender dropped) also means stop.
    let stop = async move {
        let _ = stopping.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        // Responses go out in one write each; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let door = Door {
            front: door.clone(),
            peer,
        };
        let connection = connections.watch(http.serve_connection(TokioIo::new(tcp), door));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "in-flight requests outlived the shutdown grace; closing them");
        }
    }
    Ok(())
}

/// A failed `accept` of one connection is that connection's problem; any
/// other failure (out of file descriptors) is retried after a pause rather
/// than spun on.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        tracing::error!(error = %e, "accepting connections failed; retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What every connection's [`Door`] shares.
#[derive(Clone)]
struct FrontDoor {
    state: AppState,
    router: Router,
}

/// One connection's entrance: MCP requests the gateway can serve directly
/// take [`crate::gateway::serve_fast`]; everything else goes through the
/// router with the peer address as `ConnectInfo`.
struct Door {
    front: FrontDoor,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Door {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<BoxFuture<'static, Result<Response, Infallible>>, RouteFuture<Infallible>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        let state = &self.front.state;
        if state.gateway.takes_fast_path(&request) {
            let state = state.clone();
            return Either::Left(Box::pin(async move {
                Ok(crate::gateway::serve_fast(state, request).await)
            }));
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        Either::Right(self.front.router.clone().call(request))
    }
}
