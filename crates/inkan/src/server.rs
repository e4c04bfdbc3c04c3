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
use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::gateway::fast::{self, Next};
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

/// One thread's share of [`run`]: accept connections and serve each
/// with [`fast::serve`], handing over to hyper (HTTP/1.1) and the router
/// what it does not serve, until `stopping`; then drain for at most
/// `grace`.
async fn serve_until(
    listener: TcpListener,
    door: FrontDoor,
    stopping: watch::Receiver<bool>,
    grace: Duration,
) -> std::io::Result<()> {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(door.state.config.gateway.header_read_timeout);
    let handed_off = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut stop_signal = stopping.clone();
    // A closed channel (the sender dropped) also means stop.
    let stop = async move {
        let _ = stop_signal.wait_for(|s| *s).await;
    };
    tokio::pin!(stop);
    loop {
        let (mut tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            // Finished connections leave the set as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            () = &mut stop => break,
        };
        // Responses go out in one write each; Nagle would only delay them.
        let _ = tcp.set_nodelay(true);
        let (door, http, watcher) = (door.clone(), http.clone(), handed_off.watcher());
        let mut stopping = stopping.clone();
        connections.spawn(async move {
            let mut buf = BytesMut::with_capacity(8192);
            if fast::serve(&mut tcp, &mut buf, &door.state, &mut stopping).await == Next::Close {
                return;
            }
            let io = TokioIo::new(Prefixed {
                prefix: buf.freeze(),
                inner: tcp,
            });
            let door = Door {
                router: door.router,
                peer,
            };
            if let Err(e) = watcher.watch(http.serve_connection(io, door)).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Idle connections close at once (both paths watch `stopping` or the
    // graceful signal between requests); busy ones finish what they serve.
    let drained = async {
        handed_off.shutdown().await;
        while connections.join_next().await.is_some() {}
    };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(grace) => {
            tracing::warn!(?grace, "in-flight requests outlived the shutdown grace; closing them");
        }
    }
    // Dropping the set aborts whatever is still running.
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

/// What every connection's task shares.
#[derive(Clone)]
struct FrontDoor {
    state: AppState,
    router: Router,
}

/// A handed-off connection's entrance to the router, with the peer address
/// as `ConnectInfo`.
struct Door {
    router: Router,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Door {
    type Response = Response;
    type Error = Infallible;
    type Future = RouteFuture<Infallible>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ConnectInfo(self.peer));
        self.router.clone().call(request)
    }
}

/// A connection whose first bytes were already read (by [`fast::serve`]):
/// reads return those first.
struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
