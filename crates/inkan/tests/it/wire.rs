//! The HTTP/1.1 wire as the gateway's fast path (`gateway/fast.rs`) speaks
//! it, seen through raw sockets on both sides: pipelining and the hand-off
//! to the router, every upstream framing, idle upstream connections the
//! upstream closed, requests that must not run twice, broken upstreams,
//! slow clients, and graceful shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::gateway::{self, TestGateway};

/// Bounds every wait, so that a broken gateway fails a test instead of
/// hanging it. Nothing here asserts how fast anything is.
const PATIENCE: Duration = Duration::from_secs(20);

/// What the scripted upstream received.
#[derive(Default)]
struct Seen {
    connections: usize,
    /// Every request's head and body, in arrival order.
    requests: Vec<(String, Vec<u8>)>,
}

/// A raw HTTP/1.1 upstream at `/mcp` that answers as the request's
/// `case=` query parameter says (the gateway passes the query on).
struct ScriptedUpstream {
    url: String,
    seen: Arc<Mutex<Seen>>,
    /// Lets the `stream` case send its second event.
    release: Arc<Notify>,
}

impl ScriptedUpstream {
    fn bodies(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.requests
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    fn connections(&self) -> usize {
        self.seen.lock().unwrap().connections
    }
}

async fn scripted_upstream() -> ScriptedUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Seen::default()));
    let release = Arc::new(Notify::new());
    let (s, r) = (seen.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            s.lock().unwrap().connections += 1;
            tokio::spawn(play_script(socket, s.clone(), r.clone()));
        }
    });
    ScriptedUpstream { url, seen, release }
}

fn echo(body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra_headers}content-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    answer
}

/// Serves one upstream connection. Returning closes it.
async fn play_script(mut socket: TcpStream, seen: Arc<Mutex<Seen>>, release: Arc<Notify>) {
    let mut buf = Vec::new();
    let mut on_this_connection = 0;
    while let Some((head, body)) = read_request(&mut socket, &mut buf).await {
        on_this_connection += 1;
        let request_line = head.lines().next().unwrap_or_default().to_owned();
        let case = request_line
            .split_once("case=")
            .map(|(_, rest)| rest.split([' ', '&']).next().unwrap_or_default())
            .unwrap_or_default()
            .to_owned();
        seen.lock().unwrap().requests.push((head, body.clone()));
        let answer = match case.as_str() {
            "chunked" => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                transfer-encoding: chunked\r\ntrailer: x-t\r\n\r\n\
                5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n"
                .to_vec(),
            "continue" => {
                let mut a = b"HTTP/1.1 100 Continue\r\n\r\n".to_vec();
                a.extend(echo(&body, ""));
                a
            }
            "hops" => echo(
                &body,
                "connection: keep-alive, x-hop\r\nx-hop: 1\r\nkeep-alive: timeout=5\r\n\
                 set-cookie: upstream=1\r\nstrict-transport-security: max-age=9\r\n\
                 www-authenticate: Bearer realm=\"upstream\"\r\nx-kept: 1\r\n",
            ),
            // No body, yet one declared and sent later: stray bytes on the
            // upstream connection.
            "no-content" => {
                let head = b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n";
                if socket.write_all(head).await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                b"stray".to_vec()
            }
            "until-close" => {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it")
                    .await;
                return;
            }
            "close-after" => {
                // Answered as reusable, then closed while idle, as upstreams
                // with a short keep-alive timeout do.
                let _ = socket.write_all(&echo(&body, "")).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                return;
            }
            // Reads the second request on a connection, then hangs up.
            "vanish-second" if on_this_connection == 2 => return,
            "garbage" => b"SPDY/9 what\r\n\r\n".to_vec(),
            "cut" => {
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly ten b")
                    .await;
                return;
            }
            "stream" => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                            transfer-encoding: chunked\r\n\r\n";
                let first = "d\r\ndata: first\n\n\r\n";
                if socket
                    .write_all(format!("{head}{first}").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                release.notified().await;
                b"e\r\ndata: second\n\n\r\n0\r\n\r\n".to_vec()
            }
            _ => echo(&body, ""),
        };
        if socket.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Reads one request (head and `Content-Length` body) from `buf` and the
/// socket; `None` once the peer closes.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            let total = end + 4 + length;
            while buf.len() < total {
                if read_more(socket, buf).await == 0 {
                    return None;
                }
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Some((head, body));
        }
        if read_more(socket, buf).await == 0 {
            return None;
        }
    }
}

async fn read_more(socket: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(PATIENCE, socket.read(&mut chunk))
        .await
        .expect("peer neither sent nor closed")
        .unwrap_or(0);
    buf.extend_from_slice(&chunk[..n]);
    n
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lower-case names.
    headers: Vec<(String, String)>,
    /// Decoded (de-chunked) body.
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Reads one response from `buf` and the socket, by its framing:
/// chunked, `Content-Length`, or until the connection closes.
async fn read_answer(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Answer {
    let (status, headers, head_len) = loop {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut head = httparse::Response::new(&mut slots);
        match head.parse(buf).expect("a well-formed response head") {
            httparse::Status::Complete(len) => {
                let headers = head
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (head.code.unwrap(), headers, len);
            }
            httparse::Status::Partial => {
                assert!(read_more(socket, buf).await > 0, "closed before a response");
            }
        }
    };
    buf.drain(..head_len);
    let mut answer = Answer {
        status,
        headers,
        body: Vec::new(),
    };
    if matches!(status, 204 | 304) {
        // No body, whatever the head says.
    } else if answer.header("transfer-encoding") == Some("chunked") {
        answer.body = read_chunked(socket, buf).await;
    } else if let Some(length) = answer.header("content-length") {
        let length: usize = length.parse().unwrap();
        while buf.len() < length {
            assert!(read_more(socket, buf).await > 0, "body cut short");
        }
        answer.body = buf.drain(..length).collect();
    } else {
        while read_more(socket, buf).await > 0 {}
        answer.body = std::mem::take(buf);
    }
    answer
}

/// Decodes a chunked body (RFC 9112 §7.1), trailers skipped.
async fn read_chunked(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line = read_line(socket, buf).await;
        let size = line.split(';').next().unwrap().trim();
        let size = usize::from_str_radix(size, 16).expect("a chunk size");
        if size == 0 {
            while !read_line(socket, buf).await.is_empty() {}
            return body;
        }
        while buf.len() < size + 2 {
            assert!(read_more(socket, buf).await > 0, "chunk cut short");
        }
        body.extend(buf.drain(..size));
        assert_eq!(buf.drain(..2).collect::<Vec<_>>(), b"\r\n");
    }
}

async fn read_line(socket: &mut TcpStream, buf: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end + 2);
            return line;
        }
        assert!(read_more(socket, buf).await > 0, "line cut short");
    }
}

/// Whether the peer has closed the connection (any bytes still in flight
/// are read and dropped first).
async fn closed_by_peer(socket: &mut TcpStream) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, socket.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

fn request(method: &str, target: &str, token: Option<&str>, body: &str, extra: &str) -> String {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    let length = if method == "POST" {
        format!("content-length: {}\r\n", body.len())
    } else {
        String::new()
    };
    format!(
        "{method} {target} HTTP/1.1\r\nhost: inkan.test\r\ncontent-type: application/json\r\n\
         {auth}{extra}{length}\r\n{body}"
    )
}

fn post(target: &str, token: Option<&str>, body: &str, extra: &str) -> String {
    request("POST", target, token, body, extra)
}

async fn start(upstream: &ScriptedUpstream, gateway_section: &str) -> (TestGateway, String) {
    start_with(upstream, "", gateway_section).await
}

/// [`start`] with top-level configuration keys.
async fn start_with(
    upstream: &ScriptedUpstream,
    top_level: &str,
    gateway_section: &str,
) -> (TestGateway, String) {
    let tail = format!(
        "[gateway]\n{gateway_section}\n[[services]]\nid = \"notes\"\nname = \"Notes\"\nupstream = \"{}\"\n",
        upstream.url
    );
    let gw = gateway::start_configured(top_level, &tail, "http://127.0.0.1:9").await;
    let token = gw.token(&["notes"], &[]).await;
    (gw, token)
}

/// A client connection to the gateway and the bytes read from it but not
/// yet taken as answers.
struct Peer {
    socket: TcpStream,
    buf: Vec<u8>,
}

impl Peer {
    async fn connect(gw: &TestGateway) -> Peer {
        let socket = TcpStream::connect(gw.url.trim_start_matches("http://"))
            .await
            .unwrap();
        Peer {
            socket,
            buf: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.socket.write_all(bytes.as_ref()).await.unwrap();
    }

    async fn answer(&mut self) -> Answer {
        read_answer(&mut self.socket, &mut self.buf).await
    }

    /// Reads until `needle` has arrived (the bytes stay in `buf`).
    async fn read_until(&mut self, needle: &[u8]) {
        while find(&self.buf, needle).is_none() {
            assert!(
                read_more(&mut self.socket, &mut self.buf).await > 0,
                "closed before {:?} arrived: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.buf)
            );
        }
    }

    async fn closed(&mut self) -> bool {
        closed_by_peer(&mut self.socket).await
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_and_the_router_takes_over() {
    let up = scripted_upstream().await;
    let (gw, token) = start(&up, "").await;
    let mut c = Peer::connect(&gw).await;

    let three = [
        post("/mcp/notes", Some(&token), "one", ""),
        post("/mcp/notes", None, "refused", ""),
        post("/mcp/notes", Some(&token), "two", ""),
    ]
    .concat();
    c.send(three).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "one"));
    let a = c.answer().await;
    assert_eq!(a.status, 401);
    assert!(a.header("www-authenticate").is_some(), "{a:?}");
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "two"));

    // A browser's request on the same connection: the router answers,
    // with CORS, and keeps the connection.
    let browser = post(
        "/mcp/notes",
        Some(&token),
        "three",
        "origin: https://app.example\r\n",
    );
    c.send(browser).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "three"));
    assert!(a.header("access-control-allow-origin").is_some(), "{a:?}");
    let last = post("/mcp/notes", Some(&token), "four", "connection: close\r\n");
    c.send(last).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "four"));
    assert!(c.closed().await);

    assert_eq!(up.bodies(), ["one", "two", "three", "four"]);
    // One pooled connection for the fast path, one for the router's client.
    assert_eq!(up.connections(), 2);
    let authority = up
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp");
    for (head, _) in &up.seen.lock().unwrap().requests {
        let head = head.to_ascii_lowercase();
        assert!(!head.contains("authorization:"), "{head}");
        assert!(head.contains("x-inkan-user: user-1"), "{head}");
        assert!(head.contains(&format!("host: {authority}")), "{head}");
        assert!(!head.contains("inkan.test"), "{head}");
    }
}

#[tokio::test]
async fn every_upstream_framing_reaches_the_client_intact() {
    let up = scripted_upstream().await;
    let (gw, token) = start(&up, "").await;
    let mut c = Peer::connect(&gw).await;

    // A chunked answer, then another request on the same connection: the
    // gateway found where the chunked body (with trailers) ended.
    let two = [
        post("/mcp/notes?case=chunked", Some(&token), "", ""),
        post("/mcp/notes", Some(&token), "after", ""),
    ]
    .concat();
    c.send(two).await;
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "hello world"));
    assert_eq!(a.header("transfer-encoding"), Some("chunked"));
    let a = c.answer().await;
    assert_eq!(a.text(), "after");

    // Interim answers stay between the gateway and the upstream.
    c.send(post("/mcp/notes?case=continue", Some(&token), "cont", ""))
        .await;
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "cont"));

    // Connection-specific and cookie headers stop at the gateway.
    c.send(post("/mcp/notes?case=hops", Some(&token), "hops", ""))
        .await;
    let a = c.answer().await;
    assert_eq!(a.text(), "hops");
    assert_eq!(a.header("x-kept"), Some("1"));
    for gone in [
        "x-hop",
        "keep-alive",
        "set-cookie",
        "strict-transport-security",
        "www-authenticate",
    ] {
        assert!(a.header(gone).is_none(), "{gone} reached the client: {a:?}");
    }

    // A 204 that declares a body: none reaches the client, nor does a
    // length it would wait for, and the next answer is the right one.
    let opened = up.connections();
    c.send(post("/mcp/notes?case=no-content", Some(&token), "", ""))
        .await;
    let a = c.answer().await;
    assert_eq!(a.status, 204);
    assert!(a.header("content-length").is_none(), "{a:?}");
    c.send(post("/mcp/notes", Some(&token), "next", "")).await;
    assert_eq!(c.answer().await.text(), "next");
    assert_eq!(
        up.connections(),
        opened + 1,
        "the connection with stray bytes was not reused"
    );

    // An answer delimited by the upstream closing ends the client's
    // connection too, and says so.
    c.send(post("/mcp/notes?case=until-close", Some(&token), "", ""))
        .await;
    let a = c.answer().await;
    assert_eq!((a.status, a.text().as_str()), (200, "all of it"));
    assert_eq!(a.header("connection"), Some("close"));
    assert!(c.buf.is_empty());
}

#[tokio::test]
async fn idle_connections_the_upstream_closed_are_not_reused() {
    let up = scripted_upstream().await;
    let (gw, token) = start(&up, "").await;
    let mut c = Peer::connect(&gw).await;
    for body in ["first", "second"] {
        let r = post("/mcp/notes?case=close-after", Some(&token), body, "");
        c.send(r).await;
        let a = c.answer().await;
        assert_eq!((a.status, a.text().as_str()), (200, body));
        // Long enough for the upstream to hang up the idle connection.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(up.bodies(), ["first", "second"], "each sent exactly once");
    assert_eq!(up.connections(), 2);
}

#[tokio::test]
async fn a_post_the_upstream_may_have_run_is_never_sent_twice() {
    let up = scripted_upstream().await;
    let (gw, token) = start(&up, "").await;
    let mut c = Peer::connect(&gw).await;

    let first = post("/mcp/notes?case=vanish-second", Some(&token), "a", "");
    c.send(first).await;
    assert_eq!(c.answer().await.status, 200);
    // The upstream reads this one on the reused connection and hangs up.
    let second = post("/mcp/notes?case=vanish-second", Some(&token), "b", "");
    c.send(second).await;
    let a = c.answer().await;
    assert_eq!(a.status, 502, "{a:?}");
    assert!(a.text().contains("bad_gateway"));
    assert_eq!(up.bodies(), ["a", "b"], "the POST was not sent again");

    // An idempotent request that met the same fate is sent once more, on a
    // fresh connection, and answered.
    let get = request("GET", "/mcp/notes?case=vanish-second", Some(&token), "", "");
    for _ in 0..2 {
        c.send(&get).await;
        assert_eq!(c.answer().await.status, 200);
    }
    assert_eq!(
        up.bodies().len(),
        5,
        "a, b, the first GET, the second twice"
    );
}

#[tokio::test]
async fn broken_upstream_answers_are_502_or_end_the_connection() {
    let up = scripted_upstream().await;
    let (gw, token) = start(&up, "").await;
    let mut c = Peer::connect(&gw).await;

    c.send(post("/mcp/notes?case=garbage", Some(&token), "", ""))
        .await;
    let a = c.answer().await;
    assert_eq!(a.status, 502);
    assert!(a.text().contains("bad_gateway"), "{a:?}");

    // The status is out before the body breaks off: the connection ends,
    // so the client cannot take the cut body for a whole one.
    c.send(post("/mcp/notes?case=cut", Some(&token), "", ""))
        .await;
    while read_more(&mut c.socket, &mut c.buf).await > 0 {}
    let raw = String::from_utf8_lossy(&c.buf);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(raw.contains("content-length: 100"), "{raw}");
    assert!(raw.ends_with("\r\n\r\nonly ten b"), "{raw}");

    let metrics = gw.metrics().await;
    let line = r#"inkan_upstream_errors_total{service="notes",kind="protocol"} 1"#;
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off() {
    let up = scripted_upstream().await;
    let (gw, token) = start(&up, "header_read_timeout = \"1s\"").await;

    let mut half_head = Peer::connect(&gw).await;
    half_head
        .send(b"POST /mcp/notes HTTP/1.1\r\nhost: inkan.test\r\n")
        .await;

    let mut half_body = Peer::connect(&gw).await;
    let head = format!(
        "POST /mcp/notes HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: 10\r\n\r\nabc"
    );
    half_body.send(head).await;

    let mut idle = Peer::connect(&gw).await;
    idle.send(post("/mcp/notes", Some(&token), "x", "")).await;
    assert_eq!(idle.answer().await.status, 200);

    let mut idle_routed = Peer::connect(&gw).await;
    idle_routed
        .send(b"GET /healthz HTTP/1.1\r\nhost: inkan.test\r\n\r\n")
        .await;
    assert_eq!(idle_routed.answer().await.status, 200);

    for (what, socket) in [
        ("half a request head", &mut half_head),
        ("half a request body", &mut half_body),
        ("an idle keep-alive connection", &mut idle),
        ("an idle connection the router served", &mut idle_routed),
    ] {
        assert!(socket.closed().await, "{what} was kept open");
    }
    assert_eq!(
        up.bodies(),
        ["x"],
        "the unfinished body never went upstream"
    );
}

#[tokio::test]
async fn refusals_come_before_the_body_is_read() {
    let up = scripted_upstream().await;
    // Far longer than the test waits: an answer must not wait for the body.
    let (gw, token) = start(&up, "header_read_timeout = \"60s\"").await;

    // No token and a megabyte announced but not sent: 401 at once, and the
    // connection closes rather than reading the body.
    let mut c = Peer::connect(&gw).await;
    c.send(b"POST /mcp/notes HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000\r\n\r\n{")
        .await;
    let answer = c.answer().await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(c.closed().await);

    // A small refused body still arriving is read and dropped, and the
    // connection serves the next request.
    let mut c = Peer::connect(&gw).await;
    c.send(b"POST /mcp/notes HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\n\r\nab")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(format!(
        "cd{}",
        post("/mcp/notes", Some(&token), "next", "")
    ))
    .await;
    assert_eq!(c.answer().await.status, 401);
    assert_eq!(c.answer().await.status, 200);
    assert_eq!(up.bodies(), ["next"], "no refused body went upstream");
}

/// Connects until the gateway's port refuses.
async fn refused(gw: &TestGateway) -> bool {
    let addr = gw.url.trim_start_matches("http://");
    tokio::time::timeout(PATIENCE, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn shutdown_lets_streams_finish_and_closes_idle_connections() {
    let up = scripted_upstream().await;
    let (mut gw, token) = start(&up, "").await;

    let mut stream = Peer::connect(&gw).await;
    let get = request("GET", "/mcp/notes?case=stream", Some(&token), "", "");
    stream.send(get).await;
    stream.read_until(b"data: first").await;
    let mut idle = Peer::connect(&gw).await;
    idle.send(post("/mcp/notes", Some(&token), "x", "")).await;
    assert_eq!(idle.answer().await.status, 200);

    gw.shut_down();
    assert!(idle.closed().await, "idle connection kept open");
    assert!(refused(&gw).await, "still accepting after shutdown");

    // The stream in flight goes on to its end.
    up.release.notify_one();
    stream.read_until(b"0\r\n\r\n").await;
    assert!(find(&stream.buf, b"data: second").is_some());
    tokio::time::timeout(PATIENCE, gw.stopped())
        .await
        .expect("server did not stop after its last stream ended");
}

#[tokio::test]
async fn shutdown_grace_bounds_a_stream_that_never_ends() {
    let up = scripted_upstream().await;
    // One serving thread: this test's own runtime, which goes on running
    // after the server stops, so nothing but the server can end the stream.
    let (mut gw, token) = start_with(&up, "workers = 1", "shutdown_grace = \"1s\"").await;
    let mut stream = Peer::connect(&gw).await;
    let get = request("GET", "/mcp/notes?case=stream", Some(&token), "", "");
    stream.send(get).await;
    stream.read_until(b"data: first").await;

    gw.shut_down();
    tokio::time::timeout(PATIENCE, gw.stopped())
        .await
        .expect("server outlived its shutdown grace");
    assert!(stream.closed().await, "stream outlived the grace");
}
