//! gateway tests: challenges, metadata, validation, the streaming proxy,
//! identity assertions and operations endpoints, against real upstreams over
//! HTTP and real stores.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use bytes::Bytes;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use reqwest::header;
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::support::gateway::{self, TestGateway, now};
use crate::support::redis::{RedisServer, unique_prefix};

/// An upstream MCP endpoint at `/mcp` that records what it received:
/// `POST` answers a JSON-RPC result, `GET` streams two SSE events and sends
/// the second only after the test calls `release.notify_one()`.
struct TestUpstream {
    url: String,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    release: Arc<Notify>,
    /// Notified when an SSE stream is dropped by the upstream's server,
    /// i.e. when the connection to it is gone.
    stream_dropped: Arc<Notify>,
}

struct DropSignal(Arc<Notify>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

async fn test_upstream() -> TestUpstream {
    let (app, mut up) = upstream_app();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    up.url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    up
}

/// [`test_upstream`] over TLS, with a fresh self-signed certificate for
/// 127.0.0.1 whose PEM file (in `dir`) is returned as the CA to trust,
/// and a count of the TLS sessions it accepted.
async fn tls_upstream(
    dir: &std::path::Path,
) -> (TestUpstream, std::path::PathBuf, Arc<AtomicUsize>) {
    let (app, mut up) = upstream_app();
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca = dir.join("upstream-ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    up.url = format!("https://{}/mcp", listener.local_addr().unwrap());
    let sessions = Arc::new(AtomicUsize::new(0));
    let counted = sessions.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app, counted) = (acceptor.clone(), app.clone(), counted.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(move |request| {
                    tower::ServiceExt::oneshot(app.clone(), request)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (up, ca, sessions)
}

/// The routes of [`test_upstream`] and the handles to what they see; the
/// caller serves them and fills in `url`.
fn upstream_app() -> (Router, TestUpstream) {
    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let release = Arc::new(Notify::new());
    let stream_dropped = Arc::new(Notify::new());
    let (s1, s2, r, d) = (
        seen.clone(),
        seen.clone(),
        release.clone(),
        stream_dropped.clone(),
    );
    let app = Router::new().route(
        "/mcp",
        post(move |headers: HeaderMap, body: Bytes| async move {
            s1.lock().unwrap().push(headers);
            let answer = format!(
                r#"{{"jsonrpc":"2.0","id":1,"result":{{"received":{}}}}}"#,
                body.len()
            );
            (
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (header::HeaderName::from_static("mcp-session-id"), "s-1"),
                    (header::SET_COOKIE, "upstream=1"),
                ],
                answer,
            )
        })
        .get(move |headers: HeaderMap| async move {
            s2.lock().unwrap().push(headers);
            let signal = Arc::new(DropSignal(d.clone()));
            let stream = futures_util::stream::unfold(0u8, move |step| {
                let release = r.clone();
                let _alive = signal.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, Infallible>(Bytes::from("data: first\n\n")), 1)),
                        1 => {
                            release.notified().await;
                            Some((Ok(Bytes::from("data: second\n\n")), 2))
                        }
                        _ => None,
                    }
                }
            });
            (
                [(header::CONTENT_TYPE, "text/event-stream")],
                Body::from_stream(stream),
            )
        }),
    );
    let up = TestUpstream {
        url: String::new(),
        seen,
        release,
        stream_dropped,
    };
    (app, up)
}

fn services(upstream: &str) -> String {
    format!(
        r#"
        [[services]]
        id = "notes"
        name = "Team notes"
        upstream = "{upstream}"
        scopes = ["notes:read", "notes:write"]
        [[services]]
        id = "wiki"
        name = "Wiki"
        upstream = "{upstream}"
        scopes = ["wiki:read"]
        [[services]]
        id = "open"
        name = "Open"
        upstream = "{upstream}"
        "#
    )
}

async fn start(upstream: &str) -> TestGateway {
    gateway::start(&services(upstream)).await
}

const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

async fn call(url: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .post(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream")
        .body(INIT);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.expect("gateway answers")
}

fn www_authenticate(r: &reqwest::Response) -> &str {
    r.headers()
        .get(header::WWW_AUTHENTICATE)
        .expect("challenge present")
        .to_str()
        .unwrap()
}

async fn error_of(r: reqwest::Response) -> String {
    let body: serde_json::Value = r.json().await.expect("JSON error body");
    body["error"].as_str().expect("error field").to_owned()
}

#[tokio::test]
async fn challenges_name_the_metadata_and_scopes() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let base = &gw.url;
    let meta = format!("{base}/.well-known/oauth-protected-resource/mcp/notes");

    let r = call(&gw.mcp_url("notes"), None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        www_authenticate(&r),
        format!(r#"Bearer resource_metadata="{meta}", scope="notes:read notes:write""#)
    );

    for bad in [
        "not-a-token".to_string(),
        format!("ink_at_{}_{}", "A".repeat(22), "b".repeat(43)),
    ] {
        let r = call(&gw.mcp_url("notes"), Some(&bad)).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            www_authenticate(&r),
            format!(
                r#"Bearer error="invalid_token", resource_metadata="{meta}", scope="notes:read notes:write""#
            )
        );
        assert_eq!(error_of(r).await, "invalid_token");
    }

    let r = call(&gw.mcp_url("open"), None).await;
    assert_eq!(
        www_authenticate(&r),
        format!(
            r#"Bearer resource_metadata="{base}/.well-known/oauth-protected-resource/mcp/open""#
        )
    );

    let token = gw.token(&["notes"], &["notes:read"]).await;
    let r = reqwest::Client::new()
        .post(format!("{}?access_token={token}", gw.mcp_url("notes")))
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(www_authenticate(&r).starts_with(r#"Bearer error="invalid_request""#));
    assert_eq!(error_of(r).await, "invalid_request");
    assert!(
        up.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    let r = call(&gw.mcp_url("nope"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

/// The whole path with a real MCP client and the demo MCP server: initialize
/// (session id round trip), list tools, and `whoami`, which verifies the
/// assertion against inkan's JWKS and reports the identity it was given.
#[tokio::test]
async fn mcp_client_reaches_the_demo_upstream_as_the_tokens_user() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = format!("http://{}/mcp", listener.local_addr().unwrap());
    let gw = start(&upstream).await;
    let demo = demo_upstream::start(
        listener,
        demo_upstream::DemoConfig {
            jwks_url: format!("{}/.well-known/jwks.json", gw.url),
            audience: gw.mcp_url("notes"),
        },
    )
    .await
    .unwrap();
    let token = gw.token(&["notes"], &["notes:read"]).await;

    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(gw.mcp_url("notes")).auth_header(token),
    );
    let client = ().serve(transport).await.expect("MCP initialize through inkan");
    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["echo", "whoami"]);

    let result = client
        .call_tool(CallToolRequestParams::new("whoami"))
        .await
        .unwrap();
    assert_ne!(result.is_error, Some(true), "{result:?}");
    let text = serde_json::to_value(&result.content[0]).unwrap()["text"]
        .as_str()
        .unwrap()
        .to_owned();
    let me: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(me["sub"], "user-1");
    assert_eq!(me["email"], "ada@example.com");
    assert_eq!(me["client_id"], "client-1");
    assert_eq!(me["scope"], "notes:read");
    assert_eq!(me["aud"], gw.mcp_url("notes"));
    assert_eq!(me["headers"]["x-inkan-user"], "user-1");
    client.cancel().await.unwrap();

    for seen in demo.seen_requests() {
        assert!(seen.get(header::AUTHORIZATION).is_none());
    }
}

#[tokio::test]
async fn protected_resource_metadata_is_exact() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let get = |path: String| async move {
        let r = reqwest::get(path).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<serde_json::Value>().await.unwrap()
    };
    let doc = get(format!(
        "{}/.well-known/oauth-protected-resource/mcp/notes",
        gw.url
    ))
    .await;
    assert_eq!(
        doc,
        serde_json::json!({
            "resource": format!("{}/mcp/notes", gw.url),
            "authorization_servers": [gw.url],
            "scopes_supported": ["notes:read", "notes:write"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Team notes",
        })
    );
    let root = get(format!("{}/.well-known/oauth-protected-resource", gw.url)).await;
    assert_eq!(root["resource"], gw.url.as_str());
    assert_eq!(
        root["scopes_supported"],
        serde_json::json!(["notes:read", "notes:write", "wiki:read"])
    );
    let r = reqwest::get(format!(
        "{}/.well-known/oauth-protected-resource/mcp/nope",
        gw.url
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cors_lets_browser_clients_read_challenges_and_sessions() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let r = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, gw.mcp_url("notes"))
        .header(header::ORIGIN, "https://app.example")
        .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
        .header(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            "authorization, content-type, mcp-session-id, mcp-protocol-version, last-event-id",
        )
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    let allowed = r.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
    ] {
        assert!(allowed.contains(h), "{h} allowed in {allowed}");
    }
    let r = reqwest::Client::new()
        .post(gw.mcp_url("notes"))
        .header(header::ORIGIN, "https://app.example")
        .body(INIT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let exposed = r.headers()[header::ACCESS_CONTROL_EXPOSE_HEADERS]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("www-authenticate") && exposed.contains("mcp-session-id"));
}

/// Plain MCP requests take the gateway's fast path; requests with an
/// `Origin` (CORS) and paths only the router understands take the router.
/// Both must authenticate, proxy and count alike.
#[tokio::test]
async fn fast_path_and_router_answer_alike() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let token = gw.token(&["notes"], &["notes:read"]).await;
    let post = |url: String, origin: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .post(url)
            .bearer_auth(&token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(INIT);
        if let Some(o) = origin {
            req = req.header(header::ORIGIN, o);
        }
        req.send()
    };

    let plain = post(gw.mcp_url("notes"), None).await.unwrap();
    assert_eq!(plain.status(), StatusCode::OK);
    assert!(
        plain
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_none()
    );
    let expected = plain.text().await.unwrap();

    let browser = post(gw.mcp_url("notes"), Some("https://app.example"))
        .await
        .unwrap();
    assert_eq!(browser.status(), StatusCode::OK);
    assert!(
        browser
            .headers()
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_some()
    );
    assert_eq!(browser.text().await.unwrap(), expected);

    let encoded = post(format!("{}/mcp/%6Eotes", gw.url), None).await.unwrap();
    assert_eq!(encoded.status(), StatusCode::OK);
    assert_eq!(encoded.text().await.unwrap(), expected);

    let unknown = post(gw.mcp_url("nope"), None).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        3,
        "each allowed request reached the upstream once"
    );
    for headers in &seen {
        assert_eq!(headers["x-inkan-user"], "user-1");
        assert!(headers.get(header::AUTHORIZATION).is_none());
        assert!(headers.get("x-inkan-assertion").is_some());
    }
    let metrics = gw.metrics().await;
    let line = r#"inkan_http_requests_total{route="/mcp/{service}",method="POST",status="200"} 3"#;
    assert!(metrics.contains(line), "missing {line} in\n{metrics}");
}

#[tokio::test]
async fn tokens_work_only_for_their_services_and_scopes() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;

    let token = gw.token(&["notes"], &["notes:read"]).await;
    let r = call(&gw.mcp_url("notes"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["mcp-session-id"], "s-1");

    let r = call(&gw.mcp_url("wiki"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(www_authenticate(&r).starts_with(r#"Bearer error="invalid_token""#));

    // Granted for the wiki service, but none of its scopes.
    let token = gw.token(&["notes", "wiki"], &["notes:read"]).await;
    let r = call(&gw.mcp_url("wiki"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        www_authenticate(&r),
        format!(
            r#"Bearer error="insufficient_scope", resource_metadata="{}/.well-known/oauth-protected-resource/mcp/wiki", scope="wiki:read""#,
            gw.url
        )
    );
    assert_eq!(error_of(r).await, "insufficient_scope");

    // A service without scopes accepts any token granted for it.
    let token = gw.token(&["open"], &[]).await;
    assert_eq!(
        call(&gw.mcp_url("open"), Some(&token)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_refused() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;

    let (g, _) = gateway::grant(&["notes"], &["notes:read"]);
    let expired = gw.mint(g, now() - 10).await;
    let r = call(&gw.mcp_url("notes"), Some(&expired)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(r).await, "invalid_token");

    // The Hanko session behind the grant has ended.
    let (mut g, exp) = gateway::grant(&["notes"], &["notes:read"]);
    g.session_exp = now() - 10;
    let unbound = gw.mint(g, exp).await;
    assert_eq!(
        call(&gw.mcp_url("notes"), Some(&unbound)).await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Used once (so cached), then revoked: refused right away.
    let (g, exp) = gateway::grant(&["notes"], &["notes:read"]);
    let grant_id = g.grant_id.clone();
    let token = gw.mint(g, exp).await;
    assert_eq!(
        call(&gw.mcp_url("notes"), Some(&token)).await.status(),
        StatusCode::OK
    );
    let revoked = gw.store().revoke_grant(&grant_id).await.unwrap();
    assert_eq!(revoked.grants, vec![grant_id.clone()]);
    gw.state.gateway.invalidate_grants(&revoked.grants);
    let r = call(&gw.mcp_url("notes"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_of(r).await, "invalid_token");

    // A token with the right grant id but another secret is not the token.
    let forged = format!("{}x", &token[..token.len() - 1]);
    let other = gw.token(&["notes"], &["notes:read"]).await;
    assert_eq!(
        call(&gw.mcp_url("notes"), Some(&other)).await.status(),
        StatusCode::OK
    );
    let forged_other = format!(
        "{}{}",
        &other[..other.len() - 1],
        if other.ends_with('A') { 'B' } else { 'A' }
    );
    for t in [forged, forged_other] {
        assert_eq!(
            call(&gw.mcp_url("notes"), Some(&t)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test]
async fn last_use_is_recorded_without_a_write_per_request() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let (g, exp) = gateway::grant(&["notes"], &["notes:read"]);
    let grant_id = g.grant_id.clone();
    let token = gw.mint(g, exp).await;
    for _ in 0..3 {
        assert_eq!(
            call(&gw.mcp_url("notes"), Some(&token)).await.status(),
            StatusCode::OK
        );
    }
    let before = gw.store().get_grant(&grant_id).await.unwrap().unwrap();
    assert_eq!(before.last_used, None, "no write on the request path");
    gw.toucher.flush().await.unwrap();
    let after = gw.store().get_grant(&grant_id).await.unwrap().unwrap();
    assert!(after.last_used.is_some_and(|t| t >= now() - 60));
}

#[tokio::test]
async fn https_upstreams_are_trusted_through_their_ca_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let (up, ca, sessions) = tls_upstream(dir.path()).await;
    let gw = gateway::start(&format!(
        r#"
        [[services]]
        id = "notes"
        name = "Team notes"
        upstream = "{url}"
        upstream_ca_file = "{ca}"
        scopes = ["notes:read"]
        [[services]]
        id = "wiki"
        name = "Wiki"
        upstream = "{url}"
        scopes = ["wiki:read"]
        "#,
        url = up.url,
        ca = ca.display(),
    ))
    .await;
    let token = gw
        .token(&["notes", "wiki"], &["notes:read", "wiki:read"])
        .await;

    let r = call(&gw.mcp_url("notes"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["mcp-session-id"], "s-1");
    {
        let seen = up.seen.lock().unwrap();
        let headers = seen.last().expect("the upstream was reached over TLS");
        assert!(headers.contains_key("x-inkan-user"));
        assert!(headers.contains_key("x-inkan-assertion"));
        assert!(!headers.contains_key(header::AUTHORIZATION));
    }

    // TLS sessions are pooled, not one per request: the first answer's
    // body is unread and holds one, and each serving thread has its pool.
    for _ in 0..8 {
        let r = call(&gw.mcp_url("notes"), Some(&token)).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.text().await.unwrap();
    }
    let opened = sessions.load(Ordering::SeqCst);
    assert!(opened <= 3, "{opened} TLS sessions for 9 requests");

    // An SSE event crosses the TLS hop before the upstream ends the stream.
    let mut stream = reqwest::Client::new()
        .get(gw.mcp_url("notes"))
        .bearer_auth(&token)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .expect("first event arrives while the stream is open")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    up.release.notify_one();
    let rest = stream.text().await.unwrap();
    assert!(rest.contains("data: second"), "{rest}");

    // Without the private CA the certificate is not trusted: 502, and no
    // request reaches the upstream.
    let reached = up.seen.lock().unwrap().len();
    let r = call(&gw.mcp_url("wiki"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(up.seen.lock().unwrap().len(), reached);
}

#[tokio::test]
async fn upstream_never_sees_client_credentials_or_spoofed_identity() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let token = gw.token(&["notes"], &["notes:read", "notes:write"]).await;
    // Without `Origin` the fast path serves it, with one the router does.
    for origin in [None, Some("http://localhost:6274")] {
        let mut request = reqwest::Client::new()
            .post(gw.mcp_url("notes"))
            .bearer_auth(&token)
            .header(header::COOKIE, "hanko=secret-session")
            .header("X-Inkan-User", "mallory")
            .header("X-Inkan_User", "mallory")
            .header("x_inkan_email", "mallory@example.com")
            .header("X-Inkan-Email", "mallory@example.com")
            .header("X-Inkan-Assertion", "forged")
            .header("X-Inkan-Anything", "forged")
            .header("Mcp-Session-Id", "s-1")
            .header("MCP-Protocol-Version", "2025-11-25")
            .header(header::CONNECTION, "keep-alive, x-private-hop")
            .header("X-Private-Hop", "hop")
            .header(header::CONTENT_TYPE, "application/json")
            .body(INIT);
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers().get(header::SET_COOKIE).is_none(),
            "upstream cookies are not set on inkan's origin"
        );
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["result"]["received"], INIT.len());

        let seen = up.seen.lock().unwrap();
        let h = seen.last().expect("request reached the upstream");
        assert!(h.get(header::AUTHORIZATION).is_none());
        assert!(h.get(header::COOKIE).is_none());
        assert!(h.get("x-private-hop").is_none());
        assert!(h.get("x-inkan-anything").is_none());
        assert!(h.get("x-inkan_user").is_none(), "{origin:?}");
        assert!(h.get("x_inkan_email").is_none(), "{origin:?}");
        assert_eq!(h["x-inkan-user"], "user-1");
        assert_eq!(h.get_all("x-inkan-user").iter().count(), 1);
        assert_eq!(h["x-inkan-email"], "ada@example.com");
        assert_eq!(h["x-inkan-client"], "client-1");
        assert_eq!(h["x-inkan-scopes"], "notes:read notes:write");
        assert_eq!(h["x-inkan-services"], "notes");
        assert_ne!(h["x-inkan-assertion"], "forged");
        assert_eq!(h["mcp-session-id"], "s-1");
        assert_eq!(h["mcp-protocol-version"], "2025-11-25");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        let upstream_authority = up
            .url
            .trim_start_matches("http://")
            .trim_end_matches("/mcp");
        assert_eq!(h[header::HOST], upstream_authority);
    }
}

#[tokio::test]
async fn sse_events_reach_the_client_before_the_stream_ends() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let token = gw.token(&["notes"], &["notes:read"]).await;
    let mut r = reqwest::Client::new()
        .get(gw.mcp_url("notes"))
        .bearer_auth(&token)
        .header(header::ACCEPT, "text/event-stream")
        .header("Last-Event-ID", "41")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");

    // The upstream holds the stream open until released, so a gateway that
    // buffered would never deliver this chunk; the timeout only avoids a hang.
    let first = tokio::time::timeout(Duration::from_secs(20), r.chunk())
        .await
        .expect("first SSE event was held back by the gateway")
        .unwrap()
        .expect("a chunk");
    assert_eq!(&first[..], b"data: first\n\n");
    up.release.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = r.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: second\n\n");
    assert_eq!(
        up.seen.lock().unwrap().last().unwrap()["last-event-id"],
        "41"
    );
}

#[tokio::test]
async fn client_disconnect_ends_the_upstream_stream() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let token = gw.token(&["notes"], &["notes:read"]).await;
    let mut r = reqwest::Client::new()
        .get(gw.mcp_url("notes"))
        .bearer_auth(&token)
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(&r.chunk().await.unwrap().unwrap()[..], b"data: first\n\n");
    drop(r);
    // The upstream stream is still waiting for its release; only a closed
    // upstream connection drops it. The timeout only avoids a hang.
    tokio::time::timeout(Duration::from_secs(20), up.stream_dropped.notified())
        .await
        .expect("upstream stream outlived the client");
}

#[tokio::test]
async fn upstream_failures_map_to_502_and_504() {
    // Nothing listens on a port we bound and released.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = format!("http://{}/mcp", closed.local_addr().unwrap());
    drop(closed);
    // Accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow = format!("http://{}/mcp", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let gw = gateway::start(&format!(
        r#"
        [gateway]
        first_byte_timeout = "1s"
        [[services]]
        id = "down"
        name = "Down"
        upstream = "{down}"
        [[services]]
        id = "slow"
        name = "Slow"
        upstream = "{slow}"
        "#
    ))
    .await;
    let token = gw.token(&["down", "slow"], &[]).await;

    let r = call(&gw.mcp_url("down"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(error_of(r).await, "bad_gateway");

    let r = call(&gw.mcp_url("slow"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_of(r).await, "gateway_timeout");

    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(r#"inkan_upstream_errors_total{service="down",kind="unreachable"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"inkan_upstream_errors_total{service="slow",kind="timeout"} 1"#));
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_413() {
    let up = test_upstream().await;
    let gw = gateway::start(&format!(
        "[gateway]\nbody_limit = 1024\n{}",
        services(&up.url)
    ))
    .await;
    let token = gw.token(&["notes"], &["notes:read"]).await;
    let big = "x".repeat(2048);

    let r = reqwest::Client::new()
        .post(gw.mcp_url("notes"))
        .bearer_auth(&token)
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(error_of(r).await, "request_too_large");

    // Without Content-Length the limit applies while reading.
    let addr = gw.url.trim_start_matches("http://");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /mcp/notes HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..4 {
        let chunk = format!("{:x}\r\n{}\r\n", 512, &big[..512]);
        socket.write_all(chunk.as_bytes()).await.unwrap();
    }
    socket.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(up.seen.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn store_outage_is_503_never_401() {
    let redis = tokio::task::block_in_place(RedisServer::start_new);
    let up = test_upstream().await;
    let gw = gateway::start(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"\nprefix = \"{}\"\n{}",
        redis.url(),
        unique_prefix("gateway-outage"),
        services(&up.url)
    ))
    .await;
    let token = gw.token(&["notes"], &["notes:read"]).await;
    // Blocking, but brief: the runtime's other threads keep the app going.
    tokio::task::block_in_place(|| redis.stop());
    let r = call(&gw.mcp_url("notes"), Some(&token)).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    assert!(r.headers().get(header::WWW_AUTHENTICATE).is_none());
    assert_eq!(error_of(r).await, "temporarily_unavailable");

    let r = reqwest::get(format!("{}/readyz", gw.url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let r = reqwest::get(format!("{}/healthz", gw.url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test]
async fn cache_can_be_disabled() {
    let up = test_upstream().await;
    let gw = gateway::start(&format!(
        "[gateway]\ncache_capacity = 0\n{}",
        services(&up.url)
    ))
    .await;
    let (g, exp) = gateway::grant(&["notes"], &["notes:read"]);
    let grant_id = g.grant_id.clone();
    let token = gw.mint(g, exp).await;
    assert_eq!(
        call(&gw.mcp_url("notes"), Some(&token)).await.status(),
        StatusCode::OK
    );
    // Revoked in the store without telling the gateway: without a cache the
    // very next request sees it.
    gw.store().revoke_grant(&grant_id).await.unwrap();
    assert_eq!(
        call(&gw.mcp_url("notes"), Some(&token)).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

/// The assertion the upstream saw on its latest request.
fn last_assertion(up: &TestUpstream) -> String {
    up.seen.lock().unwrap().last().unwrap()["x-inkan-assertion"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[derive(Debug, serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    email: String,
    client_id: String,
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

async fn verify(gw: &TestGateway, jwt: &str, service: &str) -> AssertionClaims {
    let jwks: JwkSet = reqwest::get(format!("{}/.well-known/jwks.json", gw.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kid = jsonwebtoken::decode_header(jwt).unwrap().kid.expect("kid");
    let jwk = jwks.find(&kid).expect("assertion key is published");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[gw.mcp_url(service)]);
    v.set_issuer(&[&gw.url]);
    jsonwebtoken::decode::<AssertionClaims>(jwt, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .expect("assertion verifies")
        .claims
}

#[tokio::test]
async fn assertions_verify_against_jwks_and_are_reused() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let token = gw
        .token(&["notes", "wiki"], &["notes:read", "wiki:read"])
        .await;

    call(&gw.mcp_url("notes"), Some(&token)).await;
    let first = last_assertion(&up);
    let claims = verify(&gw, &first, "notes").await;
    assert_eq!(claims.sub, "user-1");
    assert_eq!(claims.email, "ada@example.com");
    assert_eq!(claims.client_id, "client-1");
    assert_eq!(claims.scope, "notes:read wiki:read");
    assert_eq!(claims.iss, gw.url);
    assert_eq!(claims.aud, gw.mcp_url("notes"));
    assert_eq!(claims.exp - claims.iat, 60);

    call(&gw.mcp_url("notes"), Some(&token)).await;
    assert_eq!(last_assertion(&up), first, "signed once, reused");

    call(&gw.mcp_url("wiki"), Some(&token)).await;
    let wiki = last_assertion(&up);
    assert_ne!(wiki, first, "one assertion per service");
    assert_eq!(verify(&gw, &wiki, "wiki").await.aud, gw.mcp_url("wiki"));

    let jwks: serde_json::Value = reqwest::get(format!("{}/.well-known/jwks.json", gw.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["alg"], "ES256");
    assert_eq!(key["use"], "sig");
    assert!(key.get("d").is_none(), "no private part published");

    // Rotation: new assertions use the new key, the old key stays published.
    let old_kid = gw.state.gateway.assertions.current_kid();
    let new_kid = gw.state.gateway.assertions.rotate().await.unwrap();
    assert_ne!(old_kid, new_kid);
    call(&gw.mcp_url("notes"), Some(&token)).await;
    let rotated = last_assertion(&up);
    assert_eq!(
        jsonwebtoken::decode_header(&rotated).unwrap().kid,
        Some(new_kid.clone())
    );
    verify(&gw, &rotated, "notes").await;
    verify(&gw, &first, "notes").await;

    // Another instance on the same store signs with the same key.
    let second = inkan::gateway::Gateway::new(
        &gw.state.config,
        gw.store().clone(),
        gw.toucher.clone(),
        gw.state.metrics.clone(),
    )
    .await
    .unwrap();
    assert_eq!(second.assertions.current_kid(), new_kid);
}

#[tokio::test]
async fn metrics_count_requests_validations_and_cache() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let token = gw.token(&["notes"], &["notes:read"]).await;
    call(&gw.mcp_url("notes"), None).await;
    call(&gw.mcp_url("notes"), Some(&token)).await;
    call(&gw.mcp_url("notes"), Some(&token)).await;
    call(&gw.mcp_url("notes"), Some("junk")).await;

    let r = reqwest::get(format!("{}/metrics", gw.url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    for line in [
        r#"inkan_http_requests_total{route="/mcp/{service}",method="POST",status="200"} 2"#,
        r#"inkan_http_requests_total{route="/mcp/{service}",method="POST",status="401"} 2"#,
        r#"inkan_token_validations_total{outcome="allowed"} 2"#,
        r#"inkan_token_validations_total{outcome="missing"} 1"#,
        r#"inkan_token_validations_total{outcome="malformed"} 1"#,
        r#"inkan_token_cache_total{result="miss"} 1"#,
        r#"inkan_token_cache_total{result="hit"} 1"#,
        "inkan_store_lookup_seconds_count 1",
        r#"inkan_upstream_response_seconds_count{service="notes"} 2"#,
    ] {
        assert!(text.contains(line), "missing {line} in\n{text}");
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let up = test_upstream().await;
    let gw = start(&up.url).await;
    let get = |path: &str| reqwest::get(format!("{}/{path}", gw.url));
    assert_eq!(get("healthz").await.unwrap().status(), StatusCode::OK);
    // Hanko's keys never loaded: sign-in cannot work yet.
    assert_eq!(
        get("readyz").await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let hanko = hanko_emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        hanko_emulator::EmulatorConfig {
            key_bits: 2048,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let gw = gateway::start_with_hanko(&services(&up.url), hanko.url()).await;
    let r = reqwest::get(format!("{}/readyz", gw.url)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let metrics = gw.metrics().await;
    // The background refresher and the support's warm-up each fetched once;
    // one fetch per freshness window is proven in the identity tests.
    let fetches: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("inkan_hanko_jwks_fetches_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no JWKS fetch counter: {metrics}"));
    assert!((1..=2).contains(&fetches), "{metrics}");
    assert!(metrics.contains("inkan_hanko_jwks_failures_total 0"));
}
