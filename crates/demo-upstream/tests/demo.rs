//! The demo upstream over real HTTP: an rmcp client calls its tools, and the
//! assertions `whoami` checks are signed here and served from a real JWKS
//! endpoint.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use demo_upstream::{DemoConfig, DemoUpstream};
use http::{HeaderName, HeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rmcp::RoleClient;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::RwLock;

const AUDIENCE: &str = "http://127.0.0.1:8080/mcp/notes";
const ISSUER: &str = "http://127.0.0.1:8080";

/// An ES256 signing key with its public JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn generate(kid: &str) -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("P-256 key generation");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("generated key parses");
        // Uncompressed SEC1 point: 0x04 || x || y.
        let point = pair.public_key().as_ref();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ES256",
            "use": "sig",
            "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        SigningKey {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signing")
    }
}

fn claims(aud: &str, exp_offset: i64) -> Value {
    let now = jsonwebtoken::get_current_timestamp() as i64;
    json!({
        "iss": ISSUER,
        "sub": "user-123",
        "email": "ada@example.com",
        "client_id": "client-abc",
        "scope": "notes:read notes:write",
        "aud": aud,
        "iat": now,
        "exp": now + exp_offset,
    })
}

/// A real JWKS endpoint whose key set the test can replace, counting fetches.
#[derive(Clone, Default)]
struct Jwks {
    keys: Arc<RwLock<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
}

impl Jwks {
    async fn serve(&self) -> String {
        async fn jwks(State(jwks): State<Jwks>) -> axum::Json<Value> {
            jwks.fetches.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({ "keys": *jwks.keys.read().await }))
        }
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/.well-known/jwks.json", get(jwks))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/.well-known/jwks.json")
    }

    async fn publish(&self, key: &SigningKey) {
        self.keys.write().await.push(key.jwk.clone());
    }
}

async fn start_upstream(jwks_url: String) -> DemoUpstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    demo_upstream::start(
        listener,
        DemoConfig {
            jwks_url,
            audience: AUDIENCE.into(),
        },
    )
    .await
    .unwrap()
}

async fn connect(url: String, headers: &[(&'static str, &str)]) -> RunningService<RoleClient, ()> {
    let headers: HashMap<HeaderName, HeaderValue> = headers
        .iter()
        .map(|(name, value)| {
            (
                HeaderName::from_static(name),
                HeaderValue::from_str(value).unwrap(),
            )
        })
        .collect();
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url).custom_headers(headers),
    );
    ().serve(transport).await.expect("MCP initialize")
}

async fn call(
    client: &RunningService<RoleClient, ()>,
    tool: &'static str,
    args: Value,
) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool);
    if let Value::Object(args) = args {
        params = params.with_arguments(args);
    }
    client.call_tool(params).await.expect("tools/call")
}

fn text(result: &CallToolResult) -> &str {
    &result.content[0].as_text().expect("text content").text
}

async fn whoami_with(upstream: &DemoUpstream, assertion: &str) -> CallToolResult {
    let client = connect(upstream.url(), &[("x-inkan-assertion", assertion)]).await;
    let result = call(&client, "whoami", json!({})).await;
    client.cancel().await.unwrap();
    result
}

#[tokio::test]
async fn echo_returns_its_text() {
    let jwks = Jwks::default();
    let upstream = start_upstream(jwks.serve().await).await;
    let client = connect(upstream.url(), &[]).await;

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    assert_eq!(names, ["echo", "whoami"]);

    let result = call(&client, "echo", json!({ "text": "hello, inkan" })).await;
    assert_ne!(result.is_error, Some(true));
    assert_eq!(text(&result), "hello, inkan");

    client.cancel().await.unwrap();
    upstream.shutdown().await.unwrap();
}

#[tokio::test]
async fn whoami_reports_the_verified_assertion_and_identity_headers() {
    let jwks = Jwks::default();
    let key = SigningKey::generate("k1");
    jwks.publish(&key).await;
    let upstream = start_upstream(jwks.serve().await).await;

    let assertion = key.sign(&claims(AUDIENCE, 300));
    let client = connect(
        upstream.url(),
        &[
            ("x-inkan-assertion", &assertion),
            ("x-inkan-user", "user-123"),
            ("x-inkan-email", "ada@example.com"),
            ("x-inkan-client", "client-abc"),
            ("x-inkan-scopes", "notes:read notes:write"),
            ("x-inkan-services", "notes"),
        ],
    )
    .await;
    let first = call(&client, "whoami", json!({})).await;
    let second = call(&client, "whoami", json!({})).await;
    client.cancel().await.unwrap();

    assert_ne!(first.is_error, Some(true), "{}", text(&first));
    let body: Value = serde_json::from_str(text(&first)).unwrap();
    assert_eq!(body["sub"], "user-123");
    assert_eq!(body["email"], "ada@example.com");
    assert_eq!(body["client_id"], "client-abc");
    assert_eq!(body["scope"], "notes:read notes:write");
    assert_eq!(body["aud"], AUDIENCE);
    assert_eq!(
        body["headers"],
        json!({
            "x-inkan-user": "user-123",
            "x-inkan-email": "ada@example.com",
            "x-inkan-client": "client-abc",
            "x-inkan-scopes": "notes:read notes:write",
            "x-inkan-services": "notes",
        })
    );
    assert_eq!(text(&second), text(&first));
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1, "the JWKS is cached");

    upstream.shutdown().await.unwrap();
}

#[tokio::test]
async fn whoami_refuses_missing_and_invalid_assertions() {
    let jwks = Jwks::default();
    let key = SigningKey::generate("k1");
    jwks.publish(&key).await;
    let upstream = start_upstream(jwks.serve().await).await;

    let client = connect(upstream.url(), &[("x-inkan-user", "spoofed")]).await;
    let missing = call(&client, "whoami", json!({})).await;
    client.cancel().await.unwrap();
    assert_eq!(missing.is_error, Some(true));
    assert!(
        text(&missing).contains("missing X-Inkan-Assertion"),
        "{}",
        text(&missing)
    );

    let wrong_audience = whoami_with(
        &upstream,
        &key.sign(&claims("http://127.0.0.1:8080/mcp/other", 300)),
    )
    .await;
    assert_eq!(wrong_audience.is_error, Some(true));
    assert!(
        text(&wrong_audience).contains("InvalidAudience"),
        "{}",
        text(&wrong_audience)
    );

    let expired = whoami_with(&upstream, &key.sign(&claims(AUDIENCE, -3600))).await;
    assert_eq!(expired.is_error, Some(true));
    assert!(
        text(&expired).contains("ExpiredSignature"),
        "{}",
        text(&expired)
    );

    // Same kid, different key: the signature cannot verify.
    let impostor = SigningKey::generate("k1");
    let forged = whoami_with(&upstream, &impostor.sign(&claims(AUDIENCE, 300))).await;
    assert_eq!(forged.is_error, Some(true));
    assert!(
        text(&forged).contains("InvalidSignature"),
        "{}",
        text(&forged)
    );

    let garbage = whoami_with(&upstream, "not.a.jwt").await;
    assert_eq!(garbage.is_error, Some(true));

    upstream.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_unknown_kid_refetches_the_jwks_once() {
    let jwks = Jwks::default();
    let old = SigningKey::generate("old");
    jwks.publish(&old).await;
    let upstream = start_upstream(jwks.serve().await).await;

    let before = whoami_with(&upstream, &old.sign(&claims(AUDIENCE, 300))).await;
    assert_ne!(before.is_error, Some(true), "{}", text(&before));
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 1);

    let unpublished = SigningKey::generate("unpublished");
    let refused = whoami_with(&upstream, &unpublished.sign(&claims(AUDIENCE, 300))).await;
    assert_eq!(refused.is_error, Some(true));
    assert!(
        text(&refused).contains("no key \"unpublished\""),
        "{}",
        text(&refused)
    );
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 2);

    let rotated = SigningKey::generate("new");
    jwks.publish(&rotated).await;
    let after = whoami_with(&upstream, &rotated.sign(&claims(AUDIENCE, 300))).await;
    assert_ne!(after.is_error, Some(true), "{}", text(&after));
    assert_eq!(jwks.fetches.load(Ordering::SeqCst), 3);

    upstream.shutdown().await.unwrap();
}

#[tokio::test]
async fn request_headers_are_recorded_and_loopback_hosts_are_accepted() {
    let jwks = Jwks::default();
    let upstream = start_upstream(jwks.serve().await).await;

    // The rmcp client sends `Host: 127.0.0.1:<port>`, as inkan's proxy does.
    let client = connect(upstream.url(), &[("x-probe", "first")]).await;
    call(&client, "echo", json!({ "text": "x" })).await;
    client.cancel().await.unwrap();

    let seen = upstream.seen_requests();
    assert!(!seen.is_empty());
    let port = upstream.local_addr().port();
    for headers in &seen {
        assert_eq!(headers["x-probe"], "first");
        assert_eq!(headers["host"], format!("127.0.0.1:{port}").as_str());
    }

    // A foreign Host (DNS rebinding) is refused before any MCP handling.
    let response = reqwest::Client::new()
        .post(upstream.url())
        .header("host", "evil.example")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert_eq!(
        upstream.seen_requests().len(),
        seen.len() + 1,
        "refused requests are recorded too"
    );

    upstream.shutdown().await.unwrap();
}
