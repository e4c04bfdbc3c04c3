//! The MCP request path: HTTP/1.1 read and written straight off the socket.
//!
//! Every accepted connection starts here. A request this module recognises
//! — HTTP/1.1 `GET`, `POST` or `DELETE` of `/mcp/<configured service>` with
//! an http upstream,
//! without `Origin` (browsers need CORS), `Transfer-Encoding`, `Expect` or
//! `Upgrade`, with at most one valid `Content-Length` — is authorized with
//! [`super::authorize`] and proxied over a plain TCP connection from this
//! thread's pool. Anything else, from the first byte it did not consume,
//! goes to hyper and the router ([`Next::Handoff`]), which serve it like
//! any other route; so does every later request on that connection.
//!
//! Why by hand: the request is already parsed once (httparse, no
//! allocation), its head is copied once into the upstream's, and the answer
//! is passed on byte for byte as it arrives, chunked or not. A hyper server
//! plus a hyper client cost about three times the CPU per request on a
//! 2-core machine and could not reach 0.85× of nginx's proxy throughput;
//! this path exceeds it (`bench/gateway.sh`).
//!
//! Framing rules (RFC 9112): request bodies are `Content-Length` only (a
//! chunked upload is handed off); responses are empty (`1xx`, `204`, `304`),
//! chunked (tracked by [`Chunked`] to find the end, passed on verbatim),
//! `Content-Length`, or delimited by the upstream closing, which then closes
//! the client connection too. An upstream connection returns to the pool
//! only after a complete HTTP/1.1 message without `Connection: close`,
//! and leaves it only if the upstream has not closed it meanwhile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime};

use axum::http::{Method, StatusCode};
use bytes::{Buf, BytesMut};
use futures_util::FutureExt as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::proxy::{Upstream, strip_request_header, strip_response_header};
use super::{MCP_ROUTE, Refusal, Service, authorize};
use crate::metrics::UpstreamError;
use crate::server::Shared;

/// Request heads longer than this, or with more headers, go to hyper,
/// which refuses or serves them by its own limits.
const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
/// An upstream response head beyond this is a protocol error (502).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Pipelined bytes buffered while a response streams; beyond this the
/// client is not read until the response ends.
const PIPELINE_LIMIT: usize = 64 * 1024;
/// Most buffer space added at once while a request body arrives.
const BODY_READ_CHUNK: usize = 64 * 1024;
/// Largest body of a refused request read (and dropped) to keep its
/// connection open; a larger one closes the connection instead.
const REFUSED_BODY_READ: u64 = 64 * 1024;
/// Idle upstream connections kept per upstream and serving thread.
const POOL_CAP: usize = 64;
/// Longest a write to the client may take (nginx's `send_timeout`): a
/// client that stops reading does not hold its stream open forever.
const SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Buffers that grew beyond this for one large request are given back
/// before the next, so a long stream after it does not keep them.
const KEPT_CAPACITY: usize = 64 * 1024;
/// How long a closing connection keeps reading what the client still sends,
/// so that its unread request body does not turn our answer into a reset.
const LINGER: Duration = Duration::from_secs(2);

/// How [`serve`] left the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Done with it: drop it.
    Close,
    /// Serve the rest with hyper, starting with the buffered bytes.
    Handoff,
}

/// Serves requests on `tcp` until one is not ours ([`Next::Handoff`], with
/// its bytes still in `buf`) or the connection ends. Between requests, a
/// `true` on `stopping` closes the connection.
pub async fn serve(
    tcp: &mut TcpStream,
    buf: &mut BytesMut,
    state: &Shared,
    stopping: &mut watch::Receiver<bool>,
) -> Next {
    let mut conn = Conn {
        tcp,
        buf,
        out: Vec::with_capacity(4096),
        authorization: Vec::with_capacity(128),
        ubuf: BytesMut::new(),
    };
    loop {
        let mut request = match conn.read_head(state, stopping).await {
            Head::Ours(request) => request,
            Head::NotOurs => return Next::Handoff,
            Head::Gone => return Next::Close,
        };
        // Shutting down: this answer says it is the last, so a client
        // that pipelined more knows they were not served.
        request.close |= *stopping.borrow();
        let method = request.method.clone();
        let (status, keep_alive) = conn.answer(state, request).await;
        if let Some(status) = status {
            state
                .metrics
                .http_request(MCP_ROUTE.into(), &method, status);
        }
        if !keep_alive || *stopping.borrow() {
            return Next::Close;
        }
        conn.shrink();
    }
}

/// One client connection's buffers, reused by every request on it.
struct Conn<'c> {
    tcp: &'c mut TcpStream,
    /// Bytes read from the client and not yet consumed.
    buf: &'c mut BytesMut,
    /// The upstream's request head, then the client's response head.
    out: Vec<u8>,
    /// The client's `Authorization` value.
    authorization: Vec<u8>,
    /// Bytes read from the upstream and not yet passed on.
    ubuf: BytesMut,
}

/// A request head this module serves.
struct Request<'s> {
    /// Length of the head in `buf`.
    len: usize,
    method: Method,
    service: &'s Service,
    content_length: Option<u64>,
    has_authorization: bool,
    token_in_query: bool,
    /// The client sent `Connection: close`.
    close: bool,
}

enum Head<'s> {
    Ours(Request<'s>),
    NotOurs,
    Gone,
}

enum Parsed<'s> {
    Complete(Request<'s>),
    Partial,
    NotOurs,
}

/// How a response body ends.
enum Framing {
    Empty,
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// An upstream answer whose head has been turned into the client's (in
/// `out`) and consumed from `ubuf`.
struct Answer {
    status: StatusCode,
    framing: Framing,
    /// HTTP/1.1 without `Connection: close`: reusable once the body ends.
    reusable: bool,
}

enum Failure {
    Upstream(UpstreamError),
    /// The client went away; nothing more to send.
    ClientGone,
}

/// What waiting for the upstream while watching the client produced.
enum Wait {
    Data,
    UpstreamEnded,
    ClientGone,
}

impl<'c> Conn<'c> {
    async fn read_head<'s>(
        &mut self,
        state: &'s Shared,
        stopping: &mut watch::Receiver<bool>,
    ) -> Head<'s> {
        let deadline = tokio::time::sleep(state.config.gateway.header_read_timeout);
        tokio::pin!(deadline);
        loop {
            if !self.buf.is_empty() {
                match self.parse(state) {
                    Parsed::Complete(request) => return Head::Ours(request),
                    Parsed::NotOurs => return Head::NotOurs,
                    Parsed::Partial if self.buf.len() >= MAX_HEAD => return Head::NotOurs,
                    Parsed::Partial => {}
                }
            }
            let idle = self.buf.is_empty();
            room(self.buf);
            tokio::select! {
                read = self.tcp.read_buf(self.buf) => match read {
                    Ok(0) | Err(_) => return Head::Gone,
                    Ok(_) => {}
                },
                () = &mut deadline => return Head::Gone,
                _ = stopping.wait_for(|s| *s), if idle => return Head::Gone,
            }
        }
    }

    /// Parses the head in `buf`; for ours, writes the upstream's request
    /// line and the client's forwardable headers into `out`.
    fn parse<'s>(&mut self, state: &'s Shared) -> Parsed<'s> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut head = httparse::Request::new(&mut headers);
        let len = match head.parse(&self.buf[..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::NotOurs,
        };
        if head.version != Some(1) {
            return Parsed::NotOurs;
        }
        let method = match head.method {
            Some("POST") => Method::POST,
            Some("GET") => Method::GET,
            Some("DELETE") => Method::DELETE,
            _ => return Parsed::NotOurs,
        };
        let target = head.path.unwrap_or_default();
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        let Some(service) = path
            .strip_prefix("/mcp/")
            .and_then(|id| state.gateway.service(id))
        else {
            return Parsed::NotOurs;
        };
        if service.upstream.tls {
            return Parsed::NotOurs;
        }

        let mut content_length = None;
        let mut has_authorization = false;
        let mut close = false;
        self.authorization.clear();
        for h in head.headers.iter() {
            let name = h.name;
            if ["origin", "transfer-encoding", "expect", "upgrade"]
                .iter()
                .any(|n| name.eq_ignore_ascii_case(n))
            {
                return Parsed::NotOurs;
            }
            if name.eq_ignore_ascii_case("content-length") {
                match (content_length, decimal(h.value)) {
                    (None, Some(n)) => content_length = Some(n),
                    _ => return Parsed::NotOurs,
                }
            } else if name.eq_ignore_ascii_case("connection") {
                close |= list_has(h.value, "close");
            } else if name.eq_ignore_ascii_case("authorization") && !has_authorization {
                has_authorization = true;
                self.authorization.extend_from_slice(h.value);
            }
        }

        let upstream = &service.upstream;
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(upstream.uri.path().as_bytes());
        match (upstream.uri.query(), query) {
            (Some(own), Some(q)) => {
                let _ = write!(out, "?{own}&{q}");
            }
            (Some(only), None) | (None, Some(only)) => {
                let _ = write!(out, "?{only}");
            }
            (None, None) => {}
        }
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(upstream.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
        let headers = &*head.headers;
        for h in headers {
            if !strip_request_header(h.name) && !named_by_connection(headers, h.name) {
                header(out, h.name.as_bytes(), h.value);
            }
        }
        Parsed::Complete(Request {
            len,
            method,
            service,
            content_length,
            has_authorization,
            token_in_query: query.is_some_and(super::has_access_token),
            close,
        })
    }

    /// Answers one request; returns the status counted for it (none when
    /// the client left first) and whether the connection may serve another.
    /// The body is read only once the request is authorized, as on the
    /// router's path: an unauthenticated client cannot make us hold more
    /// than [`REFUSED_BODY_READ`] of it.
    async fn answer(&mut self, state: &Shared, request: Request<'_>) -> (Option<StatusCode>, bool) {
        let svc = request.service;
        let declared = request.content_length.unwrap_or(0);
        let fits = declared <= svc.upstream.body_limit;
        // Only used once `fits`, which bounds it by the body limit.
        let end = request
            .len
            .saturating_add(usize::try_from(declared).unwrap_or(usize::MAX));
        let timeout = state.config.gateway.header_read_timeout;
        let authorization = request.has_authorization.then_some(&self.authorization[..]);
        let authorized = authorize(state, svc, request.token_in_query, authorization).await;
        let refusal = match (authorized, fits) {
            (Err(refusal), _) => refusal,
            (Ok(_), false) => Refusal::BodyTooLarge,
            (Ok((access, assertion)), true) => {
                if !self.fill(end, timeout).await {
                    return (None, false);
                }
                let out = &mut self.out;
                let h = &access.headers;
                header(out, b"x-inkan-user", h.user.as_bytes());
                if let Some(email) = &h.email {
                    header(out, b"x-inkan-email", email.as_bytes());
                }
                header(out, b"x-inkan-client", h.client.as_bytes());
                header(out, b"x-inkan-scopes", h.scopes.as_bytes());
                header(out, b"x-inkan-services", h.services.as_bytes());
                if let Some(a) = &assertion {
                    header(out, b"x-inkan-assertion", a.as_bytes());
                }
                if request.content_length.is_some() || request.method == Method::POST {
                    let _ = write!(out, "content-length: {declared}\r\n");
                }
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&self.buf[request.len..end]);
                self.buf.advance(end);
                // GET and DELETE are idempotent (RFC 9110 §9.2.2); POST is not.
                let idempotent = request.method != Method::POST;
                return match self.proxy(&svc.upstream, request.close, idempotent).await {
                    Ok((status, keep_alive)) => (Some(status), keep_alive && !request.close),
                    Err(Failure::ClientGone) => (None, false),
                    Err(Failure::Upstream(kind)) => {
                        svc.upstream.failed(&state.metrics, kind, None);
                        let refusal = match kind {
                            UpstreamError::Timeout => Refusal::UpstreamTimeout,
                            _ => Refusal::UpstreamUnavailable,
                        };
                        let sent = self.refuse(refusal, svc, request.close).await;
                        (Some(refusal.status()), sent && !request.close)
                    }
                };
            }
        };
        // A refused request's body is skipped when it is small or already
        // here, which keeps the connection; otherwise answer, then close.
        let skippable = fits && (self.buf.len() >= end || declared <= REFUSED_BODY_READ);
        if skippable {
            if !self.fill(end, timeout).await {
                return (None, false);
            }
            self.buf.advance(end);
            let sent = self.refuse(refusal, svc, request.close).await;
            (Some(refusal.status()), sent && !request.close)
        } else {
            self.refuse(refusal, svc, true).await;
            linger(self.tcp).await;
            (Some(refusal.status()), false)
        }
    }

    /// Reads until `buf` holds `end` bytes; false if the client left or
    /// stalled. Memory grows with what arrives, not with what a client
    /// declares.
    async fn fill(&mut self, end: usize, timeout: Duration) -> bool {
        while self.buf.len() < end {
            self.buf
                .reserve((end - self.buf.len()).min(BODY_READ_CHUNK));
            match tokio::time::timeout(timeout, self.tcp.read_buf(self.buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return false,
            }
        }
        true
    }

    /// Sends `out` upstream and passes the answer on; returns its status
    /// and whether the client connection may be reused.
    async fn proxy(
        &mut self,
        upstream: &Upstream,
        close: bool,
        idempotent: bool,
    ) -> Result<(StatusCode, bool), Failure> {
        let started = Instant::now();
        let exchange = self.exchange(upstream, close, idempotent);
        let (mut up, answer) =
            match tokio::time::timeout(upstream.first_byte_timeout, exchange).await {
                Ok(result) => result?,
                Err(_) => return Err(Failure::Upstream(UpstreamError::Timeout)),
            };
        upstream.latency.observe(started.elapsed().as_secs_f64());
        let Answer {
            status,
            mut framing,
            reusable,
        } = answer;
        let until_close = matches!(framing, Framing::UntilClose);
        // The head and whatever body came with it leave in one write.
        // Broken framing before anything was sent is still a 502.
        let mut done = self.take_body(&mut framing)?;
        // From here on the status is out; any break closes the connection,
        // so the client cannot take a cut-off body as whole.
        if !self.send().await {
            return Ok((status, false));
        }
        while !done {
            match self.wait_upstream(&mut up).await {
                Wait::Data => {}
                Wait::UpstreamEnded if until_close => break,
                Wait::UpstreamEnded | Wait::ClientGone => return Ok((status, false)),
            }
            self.out.clear();
            let Ok(complete) = self.take_body(&mut framing) else {
                return Ok((status, false));
            };
            done = complete;
            if !self.send().await {
                return Ok((status, false));
            }
        }
        if reusable && !until_close && self.ubuf.is_empty() {
            upstream.release(up);
        }
        Ok((status, !until_close))
    }

    /// Moves the body bytes in `ubuf` that belong to this message into
    /// `out`; true once the message is complete.
    fn take_body(&mut self, framing: &mut Framing) -> Result<bool, Failure> {
        let (take, done) = match framing {
            Framing::Empty => (0, true),
            Framing::Length(left) => {
                let take = (*left).min(self.ubuf.len() as u64);
                *left -= take;
                (take as usize, *left == 0)
            }
            Framing::Chunked(chunked) => {
                let take = chunked
                    .scan(&self.ubuf)
                    .ok_or(Failure::Upstream(UpstreamError::Protocol))?;
                (take, chunked.is_done())
            }
            Framing::UntilClose => (self.ubuf.len(), false),
        };
        self.out.extend_from_slice(&self.ubuf[..take]);
        self.ubuf.advance(take);
        Ok(done)
    }

    /// Writes the request upstream on a pooled connection (or a new one)
    /// and reads the response head. Pooled connections the upstream closed
    /// while idle are noticed before use and dropped. If a reused
    /// connection fails anyway, the request goes once more on a fresh one
    /// when that cannot run it twice: the write itself failed, or the
    /// method is idempotent and nothing came back. A `POST` the upstream
    /// may have received is never sent again (a `502` instead), as Go's
    /// and nginx's clients do.
    async fn exchange(
        &mut self,
        upstream: &Upstream,
        close: bool,
        idempotent: bool,
    ) -> Result<(TcpStream, Answer), Failure> {
        let mut pooled = upstream.take_pooled();
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(up) => up,
                None => upstream.connect().await.map_err(Failure::Upstream)?,
            };
            self.ubuf.clear();
            let (answer, replayable) = if up.write_all(&self.out).await.is_ok() {
                let answer = self.read_answer(&mut up, close).await;
                (answer, idempotent && self.ubuf.is_empty())
            } else {
                (Err(Failure::Upstream(UpstreamError::Unreachable)), true)
            };
            match answer {
                Ok(answer) => return Ok((up, answer)),
                Err(Failure::Upstream(_)) if reused && replayable => upstream.clear_pool(),
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads the upstream's response head, skipping interim `1xx`
    /// answers, and writes the client's head into `out`.
    async fn read_answer(&mut self, up: &mut TcpStream, close: bool) -> Result<Answer, Failure> {
        loop {
            if !self.ubuf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut head = httparse::Response::new(&mut headers);
                match head.parse(&self.ubuf) {
                    Ok(httparse::Status::Complete(len)) => {
                        let code = head.code.unwrap_or_default();
                        if (100..200).contains(&code) && code != 101 {
                            self.ubuf.advance(len);
                            continue;
                        }
                        let answer = client_head(&mut self.out, &head, close)?;
                        self.ubuf.advance(len);
                        return Ok(answer);
                    }
                    Ok(httparse::Status::Partial) if self.ubuf.len() < MAX_RESPONSE_HEAD => {}
                    _ => return Err(Failure::Upstream(UpstreamError::Protocol)),
                }
            }
            match self.wait_upstream(up).await {
                Wait::Data => {}
                Wait::UpstreamEnded => return Err(Failure::Upstream(UpstreamError::Protocol)),
                Wait::ClientGone => return Err(Failure::ClientGone),
            }
        }
    }

    /// Reads more of the upstream's answer into `ubuf`, meanwhile buffering
    /// what the client pipelines and noticing when it hangs up.
    async fn wait_upstream(&mut self, up: &mut TcpStream) -> Wait {
        room(&mut self.ubuf);
        loop {
            let watch_client = self.buf.len() < PIPELINE_LIMIT;
            if watch_client {
                room(self.buf);
            }
            tokio::select! {
                read = up.read_buf(&mut self.ubuf) => return match read {
                    Ok(0) | Err(_) => Wait::UpstreamEnded,
                    Ok(_) => Wait::Data,
                },
                read = self.tcp.read_buf(self.buf), if watch_client => match read {
                    Ok(0) | Err(_) => return Wait::ClientGone,
                    Ok(_) => {}
                },
            }
        }
    }

    /// Writes a synthetic answer; false if the client is gone.
    async fn refuse(&mut self, refusal: Refusal, svc: &Service, close: bool) -> bool {
        let (parts, body) = refusal.respond(Some(svc)).into_parts();
        let body = axum::body::to_bytes(body, usize::MAX)
            .await
            .unwrap_or_default();
        let out = &mut self.out;
        out.clear();
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\ndate: {}\r\n",
            parts.status.as_u16(),
            parts.status.canonical_reason().unwrap_or_default(),
            httpdate::fmt_http_date(SystemTime::now())
        );
        for (name, value) in &parts.headers {
            header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        let _ = write!(out, "content-length: {}\r\n", body.len());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        self.send().await
    }

    /// Writes `out` to the client; false if it is gone or stopped reading.
    async fn send(&mut self) -> bool {
        matches!(
            tokio::time::timeout(SEND_TIMEOUT, self.tcp.write_all(&self.out)).await,
            Ok(Ok(()))
        )
    }

    /// Gives back what one large request made the buffers grow to.
    fn shrink(&mut self) {
        if self.out.capacity() > KEPT_CAPACITY {
            self.out = Vec::with_capacity(4096);
        }
        if self.ubuf.capacity() > KEPT_CAPACITY && self.ubuf.is_empty() {
            self.ubuf = BytesMut::new();
        }
        if self.buf.capacity() > KEPT_CAPACITY && self.buf.len() < KEPT_CAPACITY {
            let pending = self.buf.split();
            *self.buf = BytesMut::with_capacity(8192);
            self.buf.extend_from_slice(&pending);
        }
    }
}

/// The client's response head for the upstream's `head`, into `out`:
/// hop-by-hop headers and `Set-Cookie` removed, `Transfer-Encoding`
/// kept when the body is passed on as it is.
fn client_head(
    out: &mut Vec<u8>,
    head: &httparse::Response,
    close: bool,
) -> Result<Answer, Failure> {
    let code = head.code.unwrap_or_default();
    let status = StatusCode::from_u16(code).map_err(|_| protocol_error())?;
    if code == 101 {
        return Err(protocol_error());
    }
    let headers = &*head.headers;
    let mut transfer_encoding = None;
    let mut length = None;
    let mut upstream_close = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            match (length, decimal(h.value)) {
                (None, Some(n)) => length = Some(n),
                (Some(a), Some(b)) if a == b => {}
                _ => return Err(protocol_error()),
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            upstream_close |= list_has(h.value, "close");
        }
    }
    let bodiless = matches!(code, 204 | 304);
    // A bodiless answer that declares a body anyway may be followed by
    // stray bytes: its connection is not reused.
    let declares_body = transfer_encoding.is_some() || length.is_some_and(|n| n > 0);
    let framing = if bodiless {
        Framing::Empty
    } else if let Some(te) = transfer_encoding {
        if last_coding_is_chunked(te) {
            Framing::Chunked(Chunked::default())
        } else {
            Framing::UntilClose
        }
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    out.clear();
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\n",
        code,
        head.reason.unwrap_or_default()
    );
    for h in headers {
        let keep = if h.name.eq_ignore_ascii_case("transfer-encoding") {
            !bodiless
        } else if h.name.eq_ignore_ascii_case("content-length") {
            transfer_encoding.is_none() && !bodiless
        } else {
            !strip_response_header(h.name) && !named_by_connection(headers, h.name)
        };
        if keep {
            header(out, h.name.as_bytes(), h.value);
        }
    }
    if close || matches!(framing, Framing::UntilClose) {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(Answer {
        status,
        framing,
        reusable: head.version == Some(1) && !upstream_close && !(bodiless && declares_body),
    })
}

fn protocol_error() -> Failure {
    Failure::Upstream(UpstreamError::Protocol)
}

/// Makes sure a read into `b` gets a useful amount of space: tokio's
/// `read_buf` would otherwise grow a full buffer by 64 bytes at a time.
fn room(b: &mut BytesMut) {
    if b.capacity() - b.len() < 2048 {
        b.reserve(8192);
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A `Content-Length` value: digits only.
fn decimal(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Whether the comma-separated header `value` lists `token`.
fn list_has(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Whether a `Connection` header among `headers` names `name` as
/// connection-specific (RFC 9110 §7.6.1).
fn named_by_connection(headers: &[httparse::Header], name: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| list_has(h.value, name))
}

fn last_coding_is_chunked(te: &[u8]) -> bool {
    te.split(|&b| b == b',')
        .next_back()
        .is_some_and(|c| c.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// Closes `tcp` politely after a final answer sent while the client was
/// still sending: stop writing, then read and discard for a moment.
async fn linger(tcp: &mut TcpStream) {
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 8192];
    let _ = tokio::time::timeout(LINGER, async {
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// Where a chunked body (RFC 9112 §7.1) stands, byte by byte: enough to
/// find where it ends, so the bytes can be passed on unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    Size {
        size: u64,
        digits: bool,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// Start of a trailer line, or the final empty line.
    LineStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size {
            size: 0,
            digits: false,
        }
    }
}

impl Chunked {
    pub fn is_done(&self) -> bool {
        *self == Chunked::Done
    }

    /// Consumes the body's bytes at the start of `bytes`; returns how many
    /// there were (fewer than `bytes.len()` only once done), or `None` if
    /// the framing is broken.
    pub fn scan(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            match *self {
                Chunked::Done => break,
                Chunked::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    *self = if take == left {
                        Chunked::DataCr
                    } else {
                        Chunked::Data(left - take)
                    };
                    continue;
                }
                _ => {}
            }
            let b = bytes[i];
            i += 1;
            *self = match (*self, b) {
                (Chunked::Size { size, .. }, b) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16)?);
                    Chunked::Size {
                        size: size.checked_mul(16)?.checked_add(digit)?,
                        digits: true,
                    }
                }
                (Chunked::Size { size, digits: true }, b';' | b' ' | b'\t') => {
                    Chunked::Extension { size }
                }
                (Chunked::Size { size, digits: true } | Chunked::Extension { size }, b'\r') => {
                    Chunked::SizeLf { size }
                }
                // Every line ends in CRLF: a bare LF is where another
                // parser could see a different end, so it is refused.
                (Chunked::Extension { size }, b) if b != b'\n' => Chunked::Extension { size },
                (Chunked::SizeLf { size: 0 }, b'\n') => Chunked::LineStart,
                (Chunked::SizeLf { size }, b'\n') => Chunked::Data(size),
                (Chunked::DataCr, b'\r') => Chunked::DataLf,
                (Chunked::DataLf, b'\n') => Chunked::default(),
                (Chunked::LineStart, b'\r') => Chunked::EndLf,
                (Chunked::Trailer, b'\r') => Chunked::TrailerLf,
                (Chunked::LineStart | Chunked::Trailer, b) if b != b'\n' => Chunked::Trailer,
                (Chunked::TrailerLf, b'\n') => Chunked::LineStart,
                (Chunked::EndLf, b'\n') => Chunked::Done,
                _ => return None,
            };
        }
        Some(i)
    }
}

thread_local! {
    /// This thread's idle upstream connections, by [`Upstream::key`]. A
    /// connection stays with the runtime (thread) that opened it.
    static POOL: RefCell<HashMap<usize, Vec<TcpStream>>> = RefCell::new(HashMap::new());
}

impl Upstream {
    /// The most recently used idle connection that is still open.
    fn take_pooled(&self) -> Option<TcpStream> {
        POOL.with_borrow_mut(|pool| {
            let idle = pool.get_mut(&self.key)?;
            std::iter::from_fn(|| idle.pop()).find(still_open)
        })
    }

    fn release(&self, up: TcpStream) {
        POOL.with_borrow_mut(|pool| {
            let idle = pool.entry(self.key).or_default();
            if idle.len() < POOL_CAP {
                idle.push(up);
            }
        });
    }

    /// After one pooled connection turned out closed, the others (as old
    /// or older) likely are too.
    fn clear_pool(&self) {
        POOL.with_borrow_mut(|pool| pool.remove(&self.key));
    }

    async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(self.address.as_str()),
        )
        .await
        {
            Ok(Ok(up)) => {
                let _ = up.set_nodelay(true);
                Ok(up)
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => Err(UpstreamError::Timeout),
            Ok(Err(_)) => Err(UpstreamError::Unreachable),
            Err(_) => Err(UpstreamError::Timeout),
        }
    }
}

/// Whether an idle upstream connection is still usable: nothing (no
/// `FIN`, no stray bytes) arrived since its last answer. The reactor's
/// cached readiness answers without a system call unless something did.
fn still_open(up: &TcpStream) -> bool {
    match up.ready(Interest::READABLE).now_or_never() {
        None => true,
        Some(Ok(_)) => {
            matches!(up.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
        Some(Err(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(parts: &[&[u8]]) -> (Chunked, usize) {
        let mut c = Chunked::default();
        let mut total = 0;
        for p in parts {
            total += c.scan(p).expect("well-formed");
        }
        (c, total)
    }

    #[test]
    fn chunked_end_is_found_across_any_split() {
        let body = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\n";
        for cut in 0..body.len() {
            let (c, n) = scan_all(&[&body[..cut], &body[cut..]]);
            assert!(c.is_done(), "cut at {cut}");
            assert_eq!(n, body.len());
        }
    }

    #[test]
    fn chunked_scan_stops_at_the_end() {
        let mut c = Chunked::default();
        assert_eq!(c.scan(b"0\r\n\r\nHTTP/1.1 200"), Some(5));
        assert!(c.is_done());
        let mut open = Chunked::default();
        assert_eq!(open.scan(b"3\r\nab"), Some(5));
        assert!(!open.is_done());
    }

    #[test]
    fn broken_chunked_framing_is_refused() {
        for bad in [
            &b"zz\r\n"[..],
            b"\r\n",
            b"3\r\nabcX",
            b"FFFFFFFFFFFFFFFFF\r\n",
            // Bare LFs, where a lenient client would see another end.
            b"0\r\n\nHTTP/1.1 200 OK\r\n",
            b"5;x\nhello\r\n",
            b"0\r\nx-t: 1\n\r\n",
            b"0\r\nx-t: 1\rX",
        ] {
            assert_eq!(Chunked::default().scan(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(decimal(b" 42 "), Some(42));
        for bad in [&b"+4"[..], b"-1", b"4 2", b"", b"0x10"] {
            assert_eq!(decimal(bad), None);
        }
    }

    #[test]
    fn connection_lists_are_read_token_by_token() {
        assert!(list_has(b"keep-alive, Close", "close"));
        assert!(!list_has(b"closed", "close"));
        assert!(last_coding_is_chunked(b"gzip, Chunked"));
        assert!(!last_coding_is_chunked(b"chunked, gzip"));
    }
}
