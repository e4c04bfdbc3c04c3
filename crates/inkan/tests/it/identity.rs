//! identity tests: the Hanko emulator over real HTTP plays Hanko.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hanko_emulator::{Emulator, EmulatorConfig};
use inkan::config::{Config, HankoConfig};
use inkan::identity::webhook::{WebhookOutcome, routes};
use inkan::identity::{Identity, JwksError, Liveness, LivenessError, Rejection, WebhookHandler};
use serde_json::{Value, json};
use tokio::sync::mpsc;

async fn emulator_with(config: EmulatorConfig) -> Emulator {
    let config = EmulatorConfig {
        key_bits: 2048,
        ..config
    };
    hanko_emulator::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("emulator starts")
}

async fn emulator() -> Emulator {
    emulator_with(EmulatorConfig::default()).await
}

/// inkan's `[hanko]` section pointing at `emu`, plus `extra` lines.
fn hanko_config(emu: &Emulator, extra: &str) -> HankoConfig {
    Config::from_toml_str(&format!(
        r#"
        public_url = "https://mcp.example.com"
        listen = "127.0.0.1:8080"
        [hanko]
        api_url = "{}"
        audience = "localhost"
        {extra}
        [[services]]
        id = "notes"
        name = "Notes"
        upstream = "http://127.0.0.1:9000/mcp"
        "#,
        emu.url()
    ))
    .expect("test config is valid")
    .hanko
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A random id shaped like Hanko's UUIDs.
fn uuid() -> String {
    let h = format!("{:032x}", rand::random::<u128>());
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..]
    )
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn payload(jwt: &str) -> Value {
    let part = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

/// Claims as Hanko issues them, for tests that change one thing.
fn claims(user_id: &str) -> Value {
    json!({
        "sub": user_id,
        "iat": now(),
        "exp": now() + 3600,
        "aud": ["localhost"],
        "session_id": uuid(),
        "amr": ["passkey"],
    })
}

fn with_header(jwt: &str, header: &Value) -> String {
    let mut parts = jwt.splitn(2, '.');
    parts.next();
    format!("{}.{}", b64(header), parts.next().unwrap())
}

#[tokio::test]
async fn verifies_emulator_sessions_with_typed_claims() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, ""));
    let user = emu.create_user("ada@example.com").unwrap();
    let session = emu.create_session(&user.id).unwrap();
    let verified = identity.verify(&session.jwt).await.unwrap();
    assert_eq!(verified.user_id, user.id);
    assert_eq!(verified.session_id, session.session_id);
    assert_eq!(verified.email.as_deref(), Some("ada@example.com"));
    assert_eq!(verified.amr, ["passkey"]);
    assert_eq!(verified.expires_at, session.expires_at);
    assert!(verified.expires_at > now() + 11 * 3600);

    // `aud` as a plain string is accepted too.
    let mut c = claims(&user.id);
    c["aud"] = json!("localhost");
    assert!(identity.verify(&emu.sign_claims(&c)).await.is_ok());
}

#[tokio::test]
async fn key_rotation_old_and_new_keys_verify_and_removed_keys_stop() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, ""));
    let user = emu.create_user("rot@example.com").unwrap();
    let old_kid = emu.current_kid().unwrap();
    let old = emu.create_session(&user.id).unwrap();
    assert!(identity.verify(&old.jwt).await.is_ok());

    let new_kid = emu.rotate_key().unwrap();
    let new = emu.create_session(&user.id).unwrap();
    assert_eq!(
        jsonwebtoken::decode_header(&new.jwt)
            .unwrap()
            .kid
            .as_deref(),
        Some(new_kid.as_str())
    );
    // The unknown kid triggers one refresh; both generations then verify.
    assert!(identity.verify(&new.jwt).await.is_ok());
    assert!(identity.verify(&old.jwt).await.is_ok());
    assert_eq!(emu.jwks_requests(), 2);

    assert!(emu.remove_key(&old_kid));
    identity.refresh_jwks().await.unwrap();
    assert_eq!(identity.verify(&old.jwt).await, Err(Rejection::UnknownKey));
    assert!(identity.verify(&new.jwt).await.is_ok());
}

#[tokio::test]
async fn one_jwks_fetch_per_freshness_window() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, ""));
    let user = emu.create_user("many@example.com").unwrap();
    let session = emu.create_session(&user.id).unwrap();
    for _ in 0..10_000 {
        identity.verify(&session.jwt).await.unwrap();
    }
    assert_eq!(emu.jwks_requests(), 1);
    let stats = identity.jwks_stats();
    assert_eq!(stats.fetches.load(Ordering::Relaxed), 1);
    assert_eq!(stats.hits.load(Ordering::Relaxed), 10_000);
    assert_eq!(stats.failures.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn background_refresh_fetches_before_the_first_verification() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, ""));
    let refresher = identity.start_background_refresh();
    let fetched = async {
        while identity.jwks_stats().fetches.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fetched)
        .await
        .expect("the background task fetches the keys");
    let user = emu.create_user("bg@example.com").unwrap();
    let session = emu.create_session(&user.id).unwrap();
    identity.verify(&session.jwt).await.unwrap();
    assert_eq!(emu.jwks_requests(), 1);
    // The task holds only a weak reference: dropping the Identity ends it.
    drop(identity);
    tokio::time::timeout(Duration::from_secs(20), refresher)
        .await
        .expect("the refresher stops with its Identity")
        .unwrap();
}

#[tokio::test]
async fn unknown_kid_storm_costs_one_fetch_per_cooldown() {
    let emu = emulator().await;
    let identity = Arc::new(Identity::new(&hanko_config(&emu, "")));
    let user = emu.create_user("storm@example.com").unwrap();
    let good = emu.create_session(&user.id).unwrap();
    identity.verify(&good.jwt).await.unwrap();
    assert_eq!(emu.jwks_requests(), 1);

    let forged = with_header(
        &good.jwt,
        &json!({"alg": "RS256", "typ": "JWT", "kid": "no-such-key"}),
    );
    for round in 0..2 {
        let mut storm = tokio::task::JoinSet::new();
        for _ in 0..100 {
            let identity = identity.clone();
            let forged = forged.clone();
            storm.spawn(async move { identity.verify(&forged).await });
        }
        let results = storm.join_all().await;
        assert!(
            results.iter().all(|r| *r == Err(Rejection::UnknownKey)),
            "round {round}: {results:?}"
        );
        // One refresh for the first storm; the second falls inside the cooldown.
        assert_eq!(emu.jwks_requests(), 2, "round {round}");
    }
    assert!(identity.verify(&good.jwt).await.is_ok());
}

#[tokio::test]
async fn cached_keys_keep_working_while_hanko_is_down() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, ""));
    let user = emu.create_user("down@example.com").unwrap();
    let session = emu.create_session(&user.id).unwrap();
    identity.verify(&session.jwt).await.unwrap();

    emu.set_available(false);
    assert_eq!(identity.refresh_jwks().await, Err(JwksError::Status(503)));
    assert_eq!(identity.jwks_stats().failures.load(Ordering::Relaxed), 1);
    assert!(identity.verify(&session.jwt).await.is_ok());

    // A process that never saw the keys cannot verify anything.
    let cold = Identity::new(&hanko_config(&emu, ""));
    assert_eq!(
        cold.verify(&session.jwt).await,
        Err(Rejection::KeysUnavailable)
    );
    emu.set_available(true);
}

#[tokio::test]
async fn every_rejection_reason() {
    let emu = emulator_with(EmulatorConfig {
        issuer: Some("https://hanko.example".into()),
        ..EmulatorConfig::default()
    })
    .await;
    let identity = Identity::new(&hanko_config(&emu, r#"issuer = "https://hanko.example""#));
    let user = emu.create_user("rej@example.com").unwrap();
    let good = emu.create_session(&user.id).unwrap();
    assert_eq!(payload(&good.jwt)["iss"], "https://hanko.example");
    assert!(identity.verify(&good.jwt).await.is_ok());

    let signed = |edit: &dyn Fn(&mut Value)| {
        let mut c = claims(&user.id);
        c["iss"] = json!("https://hanko.example");
        edit(&mut c);
        emu.sign_claims(&c)
    };

    assert_eq!(identity.verify("").await, Err(Rejection::Missing));
    for malformed in ["abc", "a.b", "a.b.c.d", "!!.e30.e30", "e30.e30.e30"] {
        assert_eq!(
            identity.verify(malformed).await,
            Err(Rejection::Malformed),
            "{malformed}"
        );
    }
    assert_eq!(
        identity.verify(&"a".repeat(17 * 1024)).await,
        Err(Rejection::Oversized)
    );
    let expired = signed(&|c| {
        c["iat"] = json!(now() - 7200);
        c["exp"] = json!(now() - 120);
    });
    assert_eq!(identity.verify(&expired).await, Err(Rejection::Expired));
    let within_leeway = signed(&|c| c["exp"] = json!(now() - 5));
    assert!(identity.verify(&within_leeway).await.is_ok());

    // Payload swapped under a genuine signature.
    let mut parts: Vec<&str> = good.jwt.split('.').collect();
    let mut tampered = payload(&good.jwt);
    tampered["sub"] = json!(uuid());
    let tampered_b64 = b64(&tampered);
    parts[1] = &tampered_b64;
    assert_eq!(
        identity.verify(&parts.join(".")).await,
        Err(Rejection::BadSignature)
    );

    let unknown = with_header(&good.jwt, &json!({"alg": "RS256", "kid": "nope"}));
    assert_eq!(identity.verify(&unknown).await, Err(Rejection::UnknownKey));

    let other_aud = signed(&|c| c["aud"] = json!(["evil.example"]));
    assert_eq!(
        identity.verify(&other_aud).await,
        Err(Rejection::WrongAudience)
    );
    let no_aud = signed(&|c| {
        c.as_object_mut().unwrap().remove("aud");
    });
    assert_eq!(
        identity.verify(&no_aud).await,
        Err(Rejection::WrongAudience)
    );

    let other_iss = signed(&|c| c["iss"] = json!("https://evil.example"));
    assert_eq!(
        identity.verify(&other_iss).await,
        Err(Rejection::WrongIssuer)
    );
    let no_iss = signed(&|c| {
        c.as_object_mut().unwrap().remove("iss");
    });
    assert_eq!(identity.verify(&no_iss).await, Err(Rejection::WrongIssuer));

    let no_session = signed(&|c| {
        c.as_object_mut().unwrap().remove("session_id");
    });
    assert_eq!(
        identity.verify(&no_session).await,
        Err(Rejection::Malformed)
    );
}

#[tokio::test]
async fn attack_headers_are_refused() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, ""));
    let user = emu.create_user("mallory@example.com").unwrap();
    let good = emu.create_session(&user.id).unwrap();
    identity.verify(&good.jwt).await.unwrap();
    let kid = emu.current_kid().unwrap();
    let body = claims(&user.id);

    // alg: none, with and without a signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})),
        b64(&body)
    );
    assert_eq!(identity.verify(&none).await, Err(Rejection::WrongAlgorithm));
    let none_sig = format!("{none}c2ln");
    assert_eq!(
        identity.verify(&none_sig).await,
        Err(Rejection::WrongAlgorithm)
    );

    // HS256 keyed with the public key, as published in the JWKS.
    let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", emu.url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = URL_SAFE_NO_PAD
        .decode(jwks["keys"][0]["n"].as_str().unwrap())
        .unwrap();
    for secret in [n.as_slice(), jwks["keys"][0].to_string().as_bytes()] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.clone());
        let hs = jsonwebtoken::encode(
            &header,
            &body,
            &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap();
        assert_eq!(identity.verify(&hs).await, Err(Rejection::WrongAlgorithm));
    }

    // ES256 with a key of the attacker's own.
    let ec = aws_lc_rs::signature::EcdsaKeyPair::generate(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
    )
    .unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.clone());
    let es = jsonwebtoken::encode(
        &header,
        &body,
        &jsonwebtoken::EncodingKey::from_ec_der(ec.to_pkcs8v1().unwrap().as_ref()),
    )
    .unwrap();
    assert_eq!(identity.verify(&es).await, Err(Rejection::WrongAlgorithm));

    // RS256 claimed but no kid: there is no key to pick.
    let no_kid = with_header(&good.jwt, &json!({"alg": "RS256", "typ": "JWT"}));
    assert_eq!(identity.verify(&no_kid).await, Err(Rejection::Malformed));
    // Other RSA algorithms are not Hanko's either.
    let rs512 = with_header(&good.jwt, &json!({"alg": "RS512", "kid": kid}));
    assert_eq!(
        identity.verify(&rs512).await,
        Err(Rejection::WrongAlgorithm)
    );
}

#[tokio::test]
async fn tokens_come_from_bearer_or_the_configured_cookie() {
    let emu = emulator().await;
    let identity = Identity::new(&hanko_config(&emu, r#"cookie_name = "sess""#));
    let mut headers = axum::http::HeaderMap::new();
    assert_eq!(identity.token_from_headers(&headers), None);
    headers.insert("cookie", "hanko=x; sess=from-cookie".parse().unwrap());
    assert_eq!(identity.token_from_headers(&headers), Some("from-cookie"));
    headers.insert("authorization", "Bearer from-header".parse().unwrap());
    assert_eq!(identity.token_from_headers(&headers), Some("from-header"));
}

/// Records what the receiver dispatched.
struct Recorder(mpsc::UnboundedSender<String>);

#[async_trait]
impl WebhookHandler for Recorder {
    async fn user_deleted(&self, user_id: &str) {
        let _ = self.0.send(format!("user {user_id}"));
    }
    async fn session_deleted(&self, user_id: &str, session_id: &str) {
        let _ = self.0.send(format!("session {user_id} {session_id}"));
    }
}

struct WebhookRig {
    emu: Emulator,
    identity: Arc<Identity>,
    url: String,
    events: mpsc::UnboundedReceiver<String>,
}

/// inkan's receiver on a real port, the emulator delivering to it.
async fn webhook_rig(admin_api_key: Option<&str>) -> WebhookRig {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hanko/webhook", listener.local_addr().unwrap());
    let emu = emulator_with(EmulatorConfig {
        webhooks: vec![url.clone()],
        admin_api_key: admin_api_key.map(String::from),
        ..EmulatorConfig::default()
    })
    .await;
    let extra = match admin_api_key {
        Some(key) => format!(
            "admin_api_url = \"{}\"\nadmin_api_key = \"{key}\"",
            emu.admin_url()
        ),
        None => format!("admin_api_url = \"{}\"", emu.admin_url()),
    };
    let identity = Arc::new(Identity::new(&hanko_config(&emu, &extra)));
    let (tx, events) = mpsc::unbounded_channel();
    assert!(identity.set_webhook_handler(Arc::new(Recorder(tx))));
    let app = routes().with_state(identity.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    WebhookRig {
        emu,
        identity,
        url,
        events,
    }
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("a webhook arrives")
        .expect("the channel is open")
}

#[tokio::test]
async fn webhooks_from_the_emulator_reach_the_handler() {
    let mut rig = webhook_rig(Some("admin-secret")).await;
    let user = rig.emu.create_user("hook@example.com").unwrap();
    let a = rig.emu.create_session(&user.id).unwrap();
    let b = rig.emu.create_session(&user.id).unwrap();
    assert_eq!(
        rig.identity.session_alive(&user.id, &a.session_id).await,
        Ok(Liveness::Alive)
    );

    assert!(rig.emu.delete_session(&user.id, &a.session_id).await);
    assert_eq!(
        next_event(&mut rig.events).await,
        format!("session {} {}", user.id, a.session_id)
    );
    // The webhook also dropped the cached positive liveness answer.
    assert_eq!(
        rig.identity.session_alive(&user.id, &a.session_id).await,
        Ok(Liveness::Gone)
    );

    // Logout through Hanko's public API fires session.delete.explicit.logout.
    let logout = reqwest::Client::new()
        .post(format!("{}/logout", rig.emu.url()))
        .bearer_auth(&b.jwt)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    assert_eq!(
        next_event(&mut rig.events).await,
        format!("session {} {}", user.id, b.session_id)
    );

    assert!(rig.emu.delete_user(&user.id).await);
    assert_eq!(
        next_event(&mut rig.events).await,
        format!("user {}", user.id)
    );
    assert!(rig.events.try_recv().is_err());
}

#[tokio::test]
async fn forged_expired_replayed_and_mismatched_webhooks_are_refused() {
    let mut rig = webhook_rig(None).await;
    let http = reqwest::Client::new();
    let post = |body: Value| {
        let request = http.post(&rig.url).json(&body).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    let data = json!({"id": uuid()});

    // Genuine, then the very same delivery again.
    let token = rig.emu.sign_webhook("user.delete", data.clone());
    let body = json!({"token": token, "event": "user.delete"});
    assert_eq!(post(body.clone()).await, 200);
    assert_eq!(
        next_event(&mut rig.events).await,
        format!("user {}", data["id"].as_str().unwrap())
    );
    assert_eq!(post(body).await, 401, "replay");

    // Signed by another "Hanko" whose keys we never trusted.
    let impostor = emulator().await;
    let forged = impostor.sign_webhook("user.delete", data.clone());
    assert_eq!(
        post(json!({"token": forged, "event": "user.delete"})).await,
        401
    );
    // Our Hanko's kid, someone else's signature.
    let mut parts: Vec<String> = forged.split('.').map(String::from).collect();
    parts[0] = rig
        .emu
        .sign_webhook("x", json!({}))
        .split('.')
        .next()
        .unwrap()
        .into();
    assert_eq!(
        post(json!({"token": parts.join("."), "event": "user.delete"})).await,
        401
    );

    let expired = rig
        .emu
        .sign_webhook_at("user.delete", data.clone(), now() - 1000);
    assert_eq!(
        post(json!({"token": expired, "event": "user.delete"})).await,
        401
    );

    // The unsigned `event` must match the signed `evt`.
    let created = rig.emu.sign_webhook("user.create", data.clone());
    assert_eq!(
        post(json!({"token": created, "event": "user.delete"})).await,
        401
    );

    // A session token is not a webhook token.
    let user = rig.emu.create_user("notahook@example.com").unwrap();
    let session = rig.emu.create_session(&user.id).unwrap();
    assert_eq!(
        post(json!({"token": session.jwt, "event": "user.delete"})).await,
        401
    );

    // Genuine events inkan does not act on: 200, nothing dispatched.
    let created = rig.emu.sign_webhook("user.create", data.clone());
    assert_eq!(
        post(json!({"token": created, "event": "user.create"})).await,
        200
    );
    // Signed, but without the ids the event needs.
    let empty = rig
        .emu
        .sign_webhook("session.delete.explicit.revoke", json!({}));
    assert_eq!(
        post(json!({"token": empty, "event": "session.delete.explicit.revoke"})).await,
        400
    );
    assert_eq!(post(json!({"nope": 1})).await, 400);
    let oversized = http
        .post(&rig.url)
        .body(vec![b' '; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert!(rig.events.try_recv().is_err());

    let token = rig.emu.sign_webhook(
        "session.delete.passive.expire",
        json!({"id": uuid(), "user_id": uuid()}),
    );
    let body = json!({"token": token, "event": "session.delete.passive.expire"}).to_string();
    assert_eq!(
        rig.identity.receive_webhook(body.as_bytes()).await,
        WebhookOutcome::Handled
    );
    assert!(next_event(&mut rig.events).await.starts_with("session "));
    assert_eq!(
        rig.identity.receive_webhook(body.as_bytes()).await,
        WebhookOutcome::Replayed
    );

    // Without a registered handler the receiver says so instead of dropping events.
    let lonely = Identity::new(&hanko_config(&rig.emu, ""));
    let token = rig.emu.sign_webhook("user.delete", data);
    let body = json!({"token": token, "event": "user.delete"}).to_string();
    assert_eq!(
        lonely.receive_webhook(body.as_bytes()).await,
        WebhookOutcome::NoHandler
    );
}

#[tokio::test]
async fn liveness_through_the_admin_api() {
    let emu = emulator_with(EmulatorConfig {
        admin_api_key: Some("k3y".into()),
        ..EmulatorConfig::default()
    })
    .await;
    let user = emu.create_user("live@example.com").unwrap();
    let s = emu.create_session(&user.id).unwrap();
    let gone = emu.create_session(&user.id).unwrap();
    assert!(emu.delete_session(&user.id, &gone.session_id).await);

    let without_admin = Identity::new(&hanko_config(&emu, ""));
    assert_eq!(
        without_admin.session_alive(&user.id, &s.session_id).await,
        Ok(Liveness::NotChecked)
    );

    let admin = format!(
        "admin_api_url = \"{}\"\nadmin_api_key = \"k3y\"",
        emu.admin_url()
    );
    let identity = Identity::new(&hanko_config(&emu, &admin));
    assert_eq!(
        identity.session_alive(&user.id, &s.session_id).await,
        Ok(Liveness::Alive)
    );
    assert_eq!(
        identity.session_alive(&user.id, &gone.session_id).await,
        Ok(Liveness::Gone)
    );
    let stranger = uuid();
    assert_eq!(
        identity.session_alive(&stranger, &s.session_id).await,
        Ok(Liveness::Gone)
    );

    let wrong_key = format!(
        "admin_api_url = \"{}\"\nadmin_api_key = \"nope\"",
        emu.admin_url()
    );
    let refused = Identity::new(&hanko_config(&emu, &wrong_key));
    assert_eq!(
        refused.session_alive(&user.id, &s.session_id).await,
        Err(LivenessError::Status(401))
    );

    emu.set_available(false);
    let fresh = Identity::new(&hanko_config(&emu, &admin));
    assert_eq!(
        fresh.session_alive(&user.id, &s.session_id).await,
        Err(LivenessError::Status(503))
    );
    emu.set_available(true);
}

#[tokio::test]
async fn emulator_speaks_hankos_public_api() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let user = emu.create_user("wire@example.com").unwrap();
    let session = emu.create_session(&user.id).unwrap();

    let jwks = http
        .get(format!("{}/.well-known/jwks.json", emu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.headers()["cache-control"], "max-age=600");
    let jwks: Value = jwks.json().await.unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["alg"], "RS256");
    assert_eq!(key["kty"], "RSA");
    assert_eq!(key["use"], "sig");
    assert_eq!(key["e"], "AQAB");
    assert_eq!(key["kid"].as_str(), emu.current_kid().as_deref());

    let header = jsonwebtoken::decode_header(&session.jwt).unwrap();
    assert_eq!(header.alg, jsonwebtoken::Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("JWT"));
    let claims = payload(&session.jwt);
    assert_eq!(
        claims["aud"],
        json!(["localhost"]),
        "aud is always an array"
    );
    assert_eq!(claims["sub"], user.id.as_str());
    assert_eq!(claims["session_id"], session.session_id.as_str());
    assert_eq!(
        claims["email"],
        json!({"address": "wire@example.com", "is_primary": true, "is_verified": true})
    );
    assert_eq!(claims["amr"], json!(["passkey"]));
    assert!(claims.get("iss").is_none() && claims.get("jti").is_none());

    let validate = format!("{}/sessions/validate", emu.url());
    let by_bearer: Value = http
        .get(&validate)
        .bearer_auth(&session.jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_bearer["is_valid"], true);
    assert_eq!(by_bearer["user_id"], user.id.as_str());
    assert_eq!(by_bearer["claims"]["subject"], user.id.as_str());
    assert_eq!(
        by_bearer["claims"]["session_id"],
        session.session_id.as_str()
    );
    assert_eq!(by_bearer["claims"]["audience"], json!(["localhost"]));
    assert_eq!(by_bearer["claims"]["email"]["address"], "wire@example.com");
    let expiration = by_bearer["expiration_time"].as_str().unwrap();
    assert_eq!(
        time::OffsetDateTime::parse(expiration, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .unix_timestamp(),
        session.expires_at
    );
    let by_cookie: Value = http
        .get(&validate)
        .header("cookie", format!("hanko={}", session.jwt))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(by_cookie, by_bearer);
    let anonymous = http.get(&validate).send().await.unwrap();
    assert_eq!(anonymous.status(), 200);
    assert_eq!(
        anonymous.json::<Value>().await.unwrap(),
        json!({"is_valid": false})
    );

    let posted: Value = http
        .post(&validate)
        .json(&json!({"session_token": session.jwt}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(posted["is_valid"], true);
    let missing = http.post(&validate).json(&json!({})).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["code"], 400);
    assert!(missing["message"].is_string());

    let me: Value = http
        .get(format!("{}/me", emu.url()))
        .bearer_auth(&session.jwt)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user.id.as_str());
    assert_eq!(me["user_id"], user.id.as_str());
    assert_eq!(me["emails"][0]["address"], "wire@example.com");

    let logout = format!("{}/logout", emu.url());
    let unauthorized = http.post(&logout).send().await.unwrap();
    assert_eq!(unauthorized.status(), 401);
    assert_eq!(
        unauthorized.json::<Value>().await.unwrap(),
        json!({"code": 401, "message": "Unauthorized"})
    );
    let out = http
        .post(&logout)
        .header("cookie", format!("hanko={}", session.jwt))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 204);
    let cookie = out.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("hanko=;") && cookie.contains("Max-Age=0"),
        "{cookie}"
    );
    let after: Value = http
        .post(&validate)
        .json(&json!({"session_token": session.jwt}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(after, json!({"is_valid": false}));

    emu.set_available(false);
    let down = http
        .get(format!("{}/.well-known/jwks.json", emu.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), 503);
    emu.set_available(true);
}

#[tokio::test]
async fn emulator_admin_api_shapes_and_api_key() {
    let emu = emulator_with(EmulatorConfig {
        admin_api_key: Some("s3cret".into()),
        ..EmulatorConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let admin = emu.admin_url();
    let new_user = json!({"emails": [{"address": "admin@example.com", "is_primary": true, "is_verified": true}]});

    let no_key = http
        .post(format!("{admin}/users"))
        .json(&new_user)
        .send()
        .await
        .unwrap();
    assert_eq!(no_key.status(), 401);
    assert_eq!(
        no_key.json::<Value>().await.unwrap(),
        json!({"code": 401, "message": "Unauthorized"})
    );
    let wrong_key = http
        .get(format!("{admin}/users/{}", uuid()))
        .bearer_auth("s3cre")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_key.status(), 401);

    let user: Value = http
        .post(format!("{admin}/users"))
        .bearer_auth("s3cret")
        .json(&new_user)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = user["id"].as_str().unwrap().to_string();
    assert_eq!(user_id.len(), 36);
    assert_eq!(user["emails"][0]["address"], "admin@example.com");
    assert_eq!(user["emails"][0]["is_primary"], true);
    for field in ["created_at", "updated_at"] {
        assert!(user[field].is_string(), "{field}");
    }
    let fetched: Value = http
        .get(format!("{admin}/users/{user_id}"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, user);

    let created: Value = http
        .post(format!("{admin}/sessions"))
        .bearer_auth("s3cret")
        .json(&json!({"user_id": user_id, "user_agent": "tests", "ip_address": "127.0.0.1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jwt = created["session_token"].as_str().unwrap();
    let identity = Identity::new(&hanko_config(&emu, ""));
    let verified = identity.verify(jwt).await.unwrap();
    assert_eq!(verified.user_id, user_id);

    let list: Value = http
        .get(format!("{admin}/users/{user_id}/sessions"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = &list.as_array().unwrap()[0];
    assert_eq!(listed["id"], verified.session_id.as_str());
    assert_eq!(listed["user_id"], user_id.as_str());
    assert_eq!(listed["user_agent"], "tests");
    assert_eq!(listed["ip_address"], "127.0.0.1");
    for field in ["created_at", "updated_at", "expires_at", "last_used"] {
        assert!(listed[field].is_string(), "{field}");
    }

    let session_url = format!("{admin}/users/{user_id}/sessions/{}", verified.session_id);
    let deleted = http
        .delete(&session_url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    let again = http
        .delete(&session_url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 404);
    let empty: Value = http
        .get(format!("{admin}/users/{user_id}/sessions"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(empty, json!([]));

    let gone = http
        .delete(format!("{admin}/users/{user_id}"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 204);
    let missing = http
        .get(format!("{admin}/users/{user_id}"))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn emulator_dev_sign_in_for_the_login_page() {
    let emu = emulator().await;
    let http = reqwest::Client::new();
    let sign_in = format!("{}/dev/sign-in", emu.url());

    let first = http
        .post(&sign_in)
        .json(&json!({"email": "dev@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 200);
    let header_token = first.headers()["x-auth-token"]
        .to_str()
        .unwrap()
        .to_string();
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["session_token"], header_token.as_str());
    assert!(first["expires_at"].is_string());
    let identity = Identity::new(&hanko_config(&emu, ""));
    let verified = identity.verify(&header_token).await.unwrap();
    assert_eq!(verified.user_id, first["user_id"].as_str().unwrap());
    assert_eq!(verified.email.as_deref(), Some("dev@example.com"));

    // The same email is the same user; forms work too.
    let second: Value = http
        .post(&sign_in)
        .form(&[("email", "dev@example.com")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(second["user_id"], first["user_id"]);
    assert_ne!(second["session_token"], first["session_token"]);
    let bad = http
        .post(&sign_in)
        .json(&json!({"email": "not an email"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);

    let preflight = |origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, &sign_in)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let local = preflight("http://localhost:8080").await.unwrap();
    assert_eq!(
        local.headers()["access-control-allow-origin"],
        "http://localhost:8080"
    );
    let remote = preflight("https://evil.example").await.unwrap();
    assert!(
        remote
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let exposed = http
        .post(&sign_in)
        .header("origin", "http://127.0.0.1:8080")
        .json(&json!({"email": "dev@example.com"}))
        .send()
        .await
        .unwrap();
    let expose = exposed.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(expose.contains("x-auth-token"), "{expose}");
}

#[tokio::test]
async fn emulator_shuts_down_gracefully() {
    let emu = emulator().await;
    let url = format!("{}/.well-known/jwks.json", emu.url());
    assert!(reqwest::get(&url).await.unwrap().status().is_success());
    emu.shutdown().await;
    assert!(reqwest::get(&url).await.is_err());
}
