//! Revocation reaches every instance: the bus, logout, the account page,
//! webhooks, the operator CLI.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use figment::Figment;
use figment::providers::{Format, Toml};
use hanko_emulator::{Emulator, EmulatorConfig, SessionToken};
use inkan::config::Config;
use inkan::revocation::{GrantCache, Revocation};
use inkan::server::AppState;
use inkan::store::Revoked;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::support::flow::{
    Endpoint, Tokens, connect_app, cookie, field, hidden_fields, http, mcp, refresh, until_refused,
};
use crate::support::redis::{RedisServer, unique_prefix};

// ---------------------------------------------------------------------------
// Harness: full inkan instances (every route, the real store, the emulator as
// Hanko, a real HTTP upstream) sharing one store.

/// An MCP upstream that answers every request with 200.
async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/mcp",
        axum::routing::any(|| async {
            (
                [("content-type", "application/json")],
                r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

async fn emulator(webhooks: Vec<String>) -> Emulator {
    hanko_emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        EmulatorConfig {
            audience: vec!["localhost".into()],
            key_bits: 2048,
            webhooks,
            ..EmulatorConfig::default()
        },
    )
    .await
    .expect("emulator starts")
}

struct Instance {
    url: String,
    state: AppState,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A bound port for an instance that starts later (its URL goes into the
/// emulator's webhook list first).
async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    (listener, url)
}

/// Starts inkan on `listener`; `store` is a `[store]` table body (empty:
/// a fresh SQLite file); `extra` is TOML laid over everything.
async fn instance(
    listener: TcpListener,
    hanko: &Emulator,
    upstream: &str,
    store: &str,
    extra: &str,
) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let addr = listener.local_addr().unwrap();
    let store = if store.is_empty() {
        format!(
            "backend = \"sqlite\"\npath = \"{}\"",
            dir.path().join("inkan.db").display()
        )
    } else {
        store.to_string()
    };
    let base = format!(
        r#"
        public_url = "http://{addr}"
        listen = "{addr}"
        [hanko]
        api_url = "{hanko}"
        audience = "localhost"
        [store]
        {store}
        [gateway]
        cache_ttl = "10m"
        [[services]]
        id = "notes"
        name = "Team notes"
        upstream = "{upstream}"
        scopes = ["notes:read", "notes:write"]
        "#,
        hanko = hanko.url(),
    );
    let config =
        Config::from_figment(Figment::from(Toml::string(&base)).merge(Toml::string(extra)))
            .expect("test configuration is valid");
    let state = inkan::server::build(config).await.expect("app builds");
    state
        .revocation
        .bus_connected()
        .wait_for(|c| *c)
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = state.clone();
    tokio::spawn(async move {
        let _ = inkan::server::run(listener, served, async {
            let _ = stopped.await;
        })
        .await;
    });
    Instance {
        url: format!("http://{addr}"),
        state,
        _dir: dir,
        stop: Some(stop),
    }
}

/// A new emulator user with a fresh session.
fn sign_in(hanko: &Emulator, email: &str) -> SessionToken {
    let user = hanko.create_user(email).unwrap();
    hanko.create_session(&user.id).unwrap()
}

impl Endpoint for Instance {
    fn base(&self) -> &str {
        &self.url
    }
}

async fn logout(inst: &impl Endpoint, session: &SessionToken, origin: &str) -> reqwest::Response {
    http()
        .post(format!("{}/logout", inst.base()))
        .header("cookie", cookie(session))
        .header("origin", origin)
        .send()
        .await
        .unwrap()
}

/// A `[store]` body for the shared standalone Redis, isolated by prefix.
async fn shared_redis(name: &str) -> String {
    let url = crate::support::redis::standalone().await;
    format!(
        "backend = \"redis\"\nurl = \"{url}\"\nprefix = \"{}\"",
        unique_prefix(name)
    )
}

#[tokio::test]
async fn logout_on_one_instance_reaches_the_other() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let store = shared_redis("logout").await;
    let a = instance(bind().await.0, &hanko, &up, &store, "").await;
    let b = instance(bind().await.0, &hanko, &up, &store, "").await;

    let alice = sign_in(&hanko, "alice@example.com");
    let bob = sign_in(&hanko, "bob@example.com");
    let app = connect_app(&a, &alice, "Alice's app").await;
    let bobs = connect_app(&a, &bob, "Bob's app").await;
    // Validated, and so cached, on both instances.
    for inst in [&a, &b] {
        assert_eq!(mcp(inst, &app.access).await, 200);
        assert_eq!(mcp(inst, &bobs.access).await, 200);
    }

    let out = logout(&a, &alice, &a.url).await;
    assert_eq!(out.status(), 200);
    let cleared = out.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cleared.starts_with("hanko=;")
            && cleared.contains("Max-Age=0")
            && cleared.contains("Path=/"),
        "{cleared}"
    );
    let body: serde_json::Value = out.json().await.unwrap();
    assert_eq!(body["revoked_grants"], 1);

    let latency = until_refused(&b, &app.access, Duration::from_secs(1)).await;
    println!("revocation reached instance B after {latency:?}");
    assert_eq!(mcp(&a, &app.access).await, 401);
    assert_eq!(refresh(&b, &app).await, 400, "the refresh token died too");
    assert_eq!(refresh(&a, &app).await, 400);
    // Bob signed in elsewhere: untouched.
    assert_eq!(mcp(&b, &bobs.access).await, 200);
    // The Hanko session itself was ended (best effort, but the emulator is up).
    assert!(
        !hanko
            .delete_session(&alice.user_id, &alice.session_id)
            .await
    );
}

#[tokio::test]
async fn logout_scope_session_spares_the_users_other_sessions() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let a = instance(
        bind().await.0,
        &hanko,
        &up,
        "",
        "[revocation]\non_logout = \"session\"",
    )
    .await;
    let user = hanko.create_user("dana@example.com").unwrap();
    let laptop = hanko.create_session(&user.id).unwrap();
    let phone = hanko.create_session(&user.id).unwrap();
    let from_laptop = connect_app(&a, &laptop, "Laptop app").await;
    let from_phone = connect_app(&a, &phone, "Phone app").await;
    let out = logout(&a, &laptop, &a.url).await;
    assert_eq!(out.status(), 200);
    assert_eq!(mcp(&a, &from_laptop.access).await, 401);
    assert_eq!(mcp(&a, &from_phone.access).await, 200);
}

#[tokio::test]
async fn nobody_revokes_another_users_grants() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let a = instance(bind().await.0, &hanko, &up, "", "").await;
    let alice = sign_in(&hanko, "alice@example.com");
    let bob = sign_in(&hanko, "bob@example.com");
    let alices = connect_app(&a, &alice, "Alice's app").await;
    let bobs = connect_app(&a, &bob, "Bob's app").await;
    let bob_grant = inkan::store::token::grant_id_of(inkan::store::TokenKind::Access, &bobs.access)
        .unwrap()
        .to_string();

    // Cross-site logout: refused, nothing revoked.
    let out = logout(&a, &alice, "https://evil.example").await;
    assert_eq!(out.status(), 403);
    let out = http()
        .post(format!("{}/logout", a.url))
        .header("cookie", cookie(&alice))
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    assert_eq!(mcp(&a, &alices.access).await, 200);

    // A forged session (another Hanko's keys) naming Bob logs nobody out.
    let other = emulator(Vec::new()).await;
    let forged = other.sign_claims(&serde_json::json!({
        "sub": bob.user_id, "session_id": bob.session_id, "aud": ["localhost"],
        "iat": inkan::store::unix_now(), "exp": inkan::store::unix_now() + 600,
    }));
    let out = http()
        .post(format!("{}/logout", a.url))
        .header("cookie", format!("hanko={forged}"))
        .header("origin", &a.url)
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 401);
    assert_eq!(mcp(&a, &bobs.access).await, 200);

    // Alice cannot remove Bob's app from her account page.
    let page = http()
        .get(format!("{}/account", a.url))
        .header("cookie", cookie(&alice))
        .send()
        .await
        .unwrap();
    let csrf = field(&hidden_fields(&page.text().await.unwrap()), "csrf").to_string();
    let out = http()
        .post(format!("{}/account/revoke", a.url))
        .header("cookie", cookie(&alice))
        .header("origin", &a.url)
        .form(&[("grant", bob_grant.as_str()), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 404);
    assert_eq!(mcp(&a, &bobs.access).await, 200);
    // Nor with Bob's grant and ids in the logout body: only her own go.
    let out = http()
        .post(format!("{}/logout", a.url))
        .header("cookie", cookie(&alice))
        .header("origin", &a.url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&user_id={}&session_id={}&grant={bob_grant}",
            bob.user_id, bob.session_id
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(mcp(&a, &alices.access).await, 401);
    assert_eq!(mcp(&a, &bobs.access).await, 200);
    // A form without a valid CSRF token is refused.
    let out = http()
        .post(format!("{}/logout", a.url))
        .header("cookie", cookie(&bob))
        .header("origin", &a.url)
        .form(&[("csrf", "AAAA")])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 403);
    assert_eq!(mcp(&a, &bobs.access).await, 200);
}

#[tokio::test]
async fn account_page_lists_the_users_apps_and_revokes_one() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let a = instance(bind().await.0, &hanko, &up, "", "").await;
    let alice = sign_in(&hanko, "alice@example.com");
    let bob = sign_in(&hanko, "bob@example.com");
    let first = connect_app(&a, &alice, "Notes Desktop").await;
    let second = connect_app(&a, &alice, "Claude <test>").await;
    let bobs = connect_app(&a, &bob, "Bob's app").await;
    let grant_of = |t: &Tokens| {
        inkan::store::token::grant_id_of(inkan::store::TokenKind::Access, &t.access)
            .unwrap()
            .to_string()
    };

    let signed_out = http()
        .get(format!("{}/account", a.url))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_out.status(), 303);
    assert_eq!(
        signed_out.headers()["location"],
        "/login?return_to=/account"
    );

    let page = http()
        .get(format!("{}/account", a.url))
        .header("cookie", cookie(&alice))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page.headers()["cache-control"], "no-store");
    let html = page.text().await.unwrap();
    let listed: Vec<String> = hidden_fields(&html)
        .into_iter()
        .filter(|(n, _)| n == "grant")
        .map(|(_, v)| v)
        .collect();
    let mut expected = vec![grant_of(&first), grant_of(&second)];
    expected.sort();
    let mut got = listed.clone();
    got.sort();
    assert_eq!(got, expected, "exactly Alice's grants");
    assert!(!html.contains(&grant_of(&bobs)));
    assert!(html.contains("Notes Desktop") && html.contains("Claude &#60;test&#62;"));
    assert!(html.contains("127.0.0.1") && html.contains("Team notes"));
    assert!(html.contains("hanko-session-expired") && html.contains("hanko-user-logged-out"));

    let csrf = field(&hidden_fields(&html), "csrf").to_string();
    let out = http()
        .post(format!("{}/account/revoke", a.url))
        .header("cookie", cookie(&alice))
        .header("origin", "null")
        .header("sec-fetch-site", "same-origin")
        .form(&[("grant", grant_of(&first).as_str()), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/account");
    assert_eq!(mcp(&a, &first.access).await, 401);
    assert_eq!(refresh(&a, &first).await, 400);
    assert_eq!(mcp(&a, &second.access).await, 200);
    assert_eq!(mcp(&a, &bobs.access).await, 200);

    // "Sign out everywhere" on the account page, then the empty state.
    let out = http()
        .post(format!("{}/logout", a.url))
        .header("cookie", cookie(&alice))
        .header("origin", &a.url)
        .form(&[("csrf", csrf.as_str()), ("everywhere", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 303);
    assert_eq!(out.headers()["location"], "/login");
    assert_eq!(mcp(&a, &second.access).await, 401);
    let carol = sign_in(&hanko, "carol@example.com");
    let empty = http()
        .get(format!("{}/account", a.url))
        .header("cookie", cookie(&carol))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(empty.contains("No apps are connected"), "{empty}");
}

#[tokio::test]
async fn hanko_webhooks_revoke_and_forgeries_do_nothing() {
    let (listener, url) = bind().await;
    let hanko = emulator(vec![format!("{url}/hanko/webhook")]).await;
    let up = upstream().await;
    let a = instance(listener, &hanko, &up, "", "").await;
    let alice = sign_in(&hanko, "alice@example.com");
    let bob = sign_in(&hanko, "bob@example.com");
    let alices = connect_app(&a, &alice, "Alice's app").await;
    let bobs = connect_app(&a, &bob, "Bob's app").await;

    let other = emulator(Vec::new()).await;
    let forged = other.sign_webhook("user.delete", serde_json::json!({"id": alice.user_id}));
    let out = http()
        .post(format!("{}/hanko/webhook", a.url))
        .json(&serde_json::json!({"token": forged, "event": "user.delete"}))
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), 401);
    assert_eq!(mcp(&a, &alices.access).await, 200);

    assert!(hanko.delete_user(&alice.user_id).await);
    assert_eq!(mcp(&a, &alices.access).await, 401);
    assert_eq!(refresh(&a, &alices).await, 400);
    assert_eq!(mcp(&a, &bobs.access).await, 200);

    assert!(hanko.delete_session(&bob.user_id, &bob.session_id).await);
    assert_eq!(mcp(&a, &bobs.access).await, 401);
    assert_eq!(refresh(&a, &bobs).await, 400);
}

#[tokio::test]
async fn tokens_die_with_their_hanko_session() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let a = instance(bind().await.0, &hanko, &up, "", "").await;
    let user = hanko.create_user("erin@example.com").unwrap();
    let short = hanko
        .create_session_with_lifetime(&user.id, Duration::from_secs(3))
        .unwrap();
    let app = connect_app(&a, &short, "Short-lived").await;
    assert!(
        app.expires_in <= 3,
        "access token outlives the session: {}",
        app.expires_in
    );
    assert_eq!(mcp(&a, &app.access).await, 200);
    // The session's `exp` passes during the test: the gateway refuses the
    // (cached) token and the refresh token is dead too.
    until_refused(&a, &app.access, Duration::from_secs(10)).await;
    assert_eq!(refresh(&a, &app).await, 400);
}

#[tokio::test]
async fn a_grant_whose_session_is_gone_dies_at_its_next_cache_miss() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let admin = format!(
        "[hanko]\nadmin_api_url = \"{}\"\n[gateway]\ncache_capacity = 0",
        hanko.admin_url()
    );
    let a = instance(bind().await.0, &hanko, &up, "", &admin).await;
    let alice = sign_in(&hanko, "alice@example.com");
    let app = connect_app(&a, &alice, "Alice's app").await;
    assert_eq!(mcp(&a, &app.access).await, 200);
    // Ended at Hanko with nobody telling inkan (no webhook configured).
    assert!(
        hanko
            .delete_session(&alice.user_id, &alice.session_id)
            .await
    );
    // Positive answers are cached for `hanko.liveness_cache`; poll past it.
    until_refused(&a, &app.access, Duration::from_secs(60)).await;
    assert_eq!(refresh(&a, &app).await, 400);
}

#[tokio::test]
async fn a_session_found_gone_on_one_instance_is_dropped_by_the_others() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let store = shared_redis("liveness").await;
    // A asks Hanko on every request (no cache) and remembers answers for a
    // second; B caches validations for ten minutes and never asks Hanko.
    let asks = format!(
        "[hanko]\nadmin_api_url = \"{}\"\nliveness_cache = \"1s\"\n[gateway]\ncache_capacity = 0",
        hanko.admin_url()
    );
    let a = instance(bind().await.0, &hanko, &up, &store, &asks).await;
    let b = instance(bind().await.0, &hanko, &up, &store, "").await;
    let alice = sign_in(&hanko, "alice@example.com");
    let app = connect_app(&a, &alice, "Alice's app").await;
    assert_eq!(mcp(&b, &app.access).await, 200, "cached on B");
    assert!(
        hanko
            .delete_session(&alice.user_id, &alice.session_id)
            .await
    );
    until_refused(&a, &app.access, Duration::from_secs(30)).await;
    // Only the bus can tell B before its cache entry expires.
    let took = until_refused(&b, &app.access, Duration::from_secs(5)).await;
    println!("B refused {took:?} after A found the session gone");
}

#[tokio::test]
async fn instances_recover_from_a_redis_restart() {
    let redis = Arc::new(RedisServer::start_new());
    let store = format!(
        "backend = \"redis\"\nurl = \"{}\"\nprefix = \"{}\"",
        redis.url(),
        unique_prefix("restart")
    );
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let a = instance(bind().await.0, &hanko, &up, &store, "").await;
    let b = instance(bind().await.0, &hanko, &up, &store, "").await;
    let alice = sign_in(&hanko, "alice@example.com");
    let app = connect_app(&a, &alice, "Alice's app").await;
    assert_eq!(mcp(&b, &app.access).await, 200);

    let mut b_bus = b.state.revocation.bus_connected();
    blocking(&redis, RedisServer::stop).await;
    b_bus.wait_for(|c| !*c).await.unwrap();
    // The store is gone: fail closed with 503, never 401.
    assert_eq!(mcp(&b, &app.access).await, 503);

    blocking(&redis, RedisServer::start).await;
    // Revoke at once, quite possibly before B has resubscribed; B must
    // still stop accepting the token (its cache was flushed).
    // The store's connections notice the restart on their first command, as
    // a user would by retrying a logout that answered 503.
    let deadline = Instant::now() + Duration::from_secs(10);
    let revoked = loop {
        match a.state.store.revoke_user(&alice.user_id).await {
            Ok(r) => break r,
            Err(e) => assert!(Instant::now() < deadline, "store never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(revoked.grants.len(), 1);
    inkan::revocation::announce(&a.state, &revoked).await;
    let b_was_listening = *b_bus.borrow();
    until_refused(&b, &app.access, Duration::from_secs(10)).await;
    println!("B was resubscribed when A revoked: {b_was_listening}");

    // Both instances are back: a new grant works on both, and a logout on
    // A now reaches B over the bus.
    b_bus.wait_for(|c| *c).await.unwrap();
    a.state
        .revocation
        .bus_connected()
        .wait_for(|c| *c)
        .await
        .unwrap();
    let again = sign_in(&hanko, "alice2@example.com");
    let app2 = connect_app(&a, &again, "Again").await;
    assert_eq!(mcp(&b, &app2.access).await, 200);
    assert_eq!(logout(&a, &again, &a.url).await.status(), 200);
    until_refused(&b, &app2.access, Duration::from_secs(1)).await;
}

#[derive(Default)]
struct Recorder {
    grants: Mutex<Vec<String>>,
    flushes: Mutex<u32>,
}

impl GrantCache for Recorder {
    fn invalidate_grants(&self, ids: &[String]) {
        self.grants.lock().unwrap().extend_from_slice(ids);
    }
    fn invalidate_all(&self) {
        *self.flushes.lock().unwrap() += 1;
    }
}

fn redis_config(store: &str) -> Config {
    Config::from_toml_str(&format!(
        r#"
        public_url = "http://127.0.0.1:1"
        listen = "127.0.0.1:0"
        [hanko]
        api_url = "http://127.0.0.1:2"
        audience = "localhost"
        [store]
        backend = "redis"
        {store}
        [[services]]
        id = "notes"
        name = "Notes"
        upstream = "http://127.0.0.1:3/mcp"
        "#
    ))
    .unwrap()
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn bus_reaches_other_instances_and_flushes_after_reconnect() {
    let redis = RedisServer::start_new();
    let store = format!("url = \"{}\"", redis.url());
    let a_cache = Arc::new(Recorder::default());
    let b_cache = Arc::new(Recorder::default());
    let a = Revocation::new(&redis_config(&store));
    a.start_bus(a_cache.clone());
    let b = Revocation::new(&redis_config(&store));
    b.start_bus(b_cache.clone());
    let mut b_up = b.bus_connected();
    b_up.wait_for(|c| *c).await.unwrap();
    a.bus_connected().wait_for(|c| *c).await.unwrap();

    let revoked = Revoked {
        grants: vec!["g1".into(), "g2".into()],
        tokens: 4,
    };
    a.publish(&revoked).await;
    until("b to hear", || b_cache.grants.lock().unwrap().len() == 2).await;
    assert_eq!(*b_cache.grants.lock().unwrap(), vec!["g1", "g2"]);
    assert!(
        a_cache
            .grants
            .lock()
            .unwrap()
            .starts_with(&["g1".to_string(), "g2".to_string()])
    );

    let flushes_before = *b_cache.flushes.lock().unwrap();
    let redis = Arc::new(redis);
    blocking(&redis, RedisServer::stop).await;
    b_up.wait_for(|c| !*c).await.unwrap();
    blocking(&redis, RedisServer::start).await;
    b_up.wait_for(|c| *c).await.unwrap();
    assert!(*b_cache.flushes.lock().unwrap() >= flushes_before + 2);

    a.publish(&Revoked {
        grants: vec!["g3".into()],
        tokens: 1,
    })
    .await;
    until("b to hear after restart", || {
        b_cache.grants.lock().unwrap().contains(&"g3".to_string())
    })
    .await;
}

/// Runs a blocking `RedisServer` operation off the async workers.
async fn blocking(redis: &Arc<RedisServer>, op: fn(&RedisServer)) {
    let redis = Arc::clone(redis);
    tokio::task::spawn_blocking(move || op(&redis))
        .await
        .unwrap();
}

#[tokio::test]
async fn bus_works_on_a_cluster() {
    let nodes = crate::support::redis::cluster().await;
    let list = nodes
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let store = format!("nodes = [{list}]\nprefix = \"{}\"", unique_prefix("bus"));
    let a = Revocation::new(&redis_config(&store));
    let b_cache = Arc::new(Recorder::default());
    let b = Revocation::new(&redis_config(&store));
    b.start_bus(b_cache.clone());
    b.bus_connected().wait_for(|c| *c).await.unwrap();
    a.publish(&Revoked {
        grants: vec!["c1".into(), "c2".into()],
        tokens: 2,
    })
    .await;
    until("the cluster subscriber to hear", || {
        b_cache.grants.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(*b_cache.grants.lock().unwrap(), vec!["c1", "c2"]);
}

fn sample_grant(
    user: &str,
    session: &str,
    client: &str,
) -> (inkan::store::Grant, inkan::store::TokenPair) {
    use inkan::store::token::{mint, new_grant_id};
    use inkan::store::{Grant, TokenKind, TokenPair};
    let now = inkan::store::unix_now();
    let grant_id = new_grant_id();
    let grant = Grant {
        grant_id: grant_id.clone(),
        user_id: user.into(),
        email: None,
        session_id: session.into(),
        client_id: client.into(),
        scopes: vec!["notes:read".into()],
        services: vec!["notes".into()],
        resource: "http://127.0.0.1:1/mcp/notes".into(),
        created_at: now,
        last_used: None,
        session_exp: now + 3600,
        expires_at: now + 86400,
    };
    let tokens = TokenPair {
        access: mint(TokenKind::Access, &grant_id).hash,
        access_expires_at: now + 3600,
        refresh: mint(TokenKind::Refresh, &grant_id).hash,
        refresh_expires_at: now + 86400,
    };
    (grant, tokens)
}

fn sqlite_config(path: &std::path::Path) -> String {
    format!(
        r#"
        public_url = "http://127.0.0.1:1"
        listen = "127.0.0.1:0"
        [hanko]
        api_url = "http://127.0.0.1:2"
        audience = "localhost"
        [store]
        backend = "sqlite"
        path = "{}"
        [[services]]
        id = "notes"
        name = "Notes"
        upstream = "http://127.0.0.1:3/mcp"
        "#,
        path.display()
    )
}

/// Runs `inkan revoke <args>` and asserts it succeeded and printed `expected`.
fn revoke_says(args: &[&str], expected: &str) {
    let out = inkan(&[&["revoke"], args].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(expected),
        "inkan revoke {args:?}: {} (expected {expected:?})\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inkan(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_inkan"))
        .args(args)
        .env_remove("INKAN_STORE__BACKEND")
        .output()
        .unwrap()
}

#[tokio::test]
async fn operator_cli_revokes_in_a_sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("inkan.db");
    let config_path = dir.path().join("inkan.toml");
    std::fs::write(&config_path, sqlite_config(&db)).unwrap();
    let config = Config::from_toml_str(&sqlite_config(&db)).unwrap();
    let grants = {
        let store = inkan::store::connect(&config.store).await.unwrap();
        let mut ids = Vec::new();
        for (user, session, client) in [
            ("alice", "s1", "c1"),
            ("alice", "s2", "c2"),
            ("bob", "s3", "c1"),
            ("carol", "s4", "c3"),
        ] {
            let (g, t) = sample_grant(user, session, client);
            assert!(store.create_grant(&g, &t).await.unwrap());
            ids.push(g.grant_id);
        }
        ids
    };
    let cfg = config_path.to_str().unwrap();

    revoke_says(&["--user", "alice", "--config", cfg], "revoked 2 grant(s)");
    revoke_says(&["--client", "c1", "--config", cfg], "revoked 1 grant(s)");
    revoke_says(
        &["--grant", &grants[3], "--config", cfg],
        "revoked 1 grant(s)",
    );
    revoke_says(&["--session", "s4", "--config", cfg], "revoked 0 grant(s)");

    let store = inkan::store::connect(&config.store).await.unwrap();
    for id in &grants {
        assert_eq!(
            store.get_grant(id).await.unwrap(),
            None,
            "grant {id} survived"
        );
    }

    let broken = dir.path().join("broken.toml");
    std::fs::write(
        &broken,
        sqlite_config(&db).replace("backend = \"sqlite\"", "backend = \"etcd\""),
    )
    .unwrap();
    let out = inkan(&[
        "revoke",
        "--user",
        "alice",
        "--config",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let unopenable = dir.path().join("unopenable.toml");
    std::fs::write(
        &unopenable,
        sqlite_config(&dir.path().join("missing/dir/inkan.db")),
    )
    .unwrap();
    let out = inkan(&[
        "revoke",
        "--user",
        "alice",
        "--config",
        unopenable.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the store"));
}

/// An `inkan serve` process, killed when dropped.
struct Served {
    url: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Endpoint for Served {
    fn base(&self) -> &str {
        &self.url
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve_process(hanko: &Emulator, upstream: &str, store: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let (listener, url) = bind().await;
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let config = dir.path().join("inkan.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            public_url = "{url}"
            listen = "{addr}"
            [hanko]
            api_url = "{hanko}"
            audience = "localhost"
            [store]
            {store}
            [[services]]
            id = "notes"
            name = "Team notes"
            upstream = "{upstream}"
            scopes = ["notes:read", "notes:write"]
            "#,
            hanko = hanko.url(),
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_inkan"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let served = Served {
        url,
        child,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = http().get(format!("{}/readyz", served.url)).send().await;
        if ready.is_ok_and(|r| r.status() == StatusCode::OK) {
            return served;
        }
        assert!(
            Instant::now() < deadline,
            "inkan serve did not become ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logout_through_one_serve_process_reaches_another() {
    let hanko = emulator(Vec::new()).await;
    let up = upstream().await;
    let store = shared_redis("two-processes").await;
    let a = serve_process(&hanko, &up, &store).await;
    let b = serve_process(&hanko, &up, &store).await;
    let alice = sign_in(&hanko, "alice@example.com");
    let app = connect_app(&a, &alice, "Alice's app").await;
    // Validated, and so cached, by both processes.
    assert_eq!(mcp(&a, &app.access).await, 200);
    assert_eq!(mcp(&b, &app.access).await, 200);

    assert_eq!(logout(&a, &alice, &a.url).await.status(), 200);
    let latency = until_refused(&b, &app.access, Duration::from_secs(1)).await;
    println!("revocation reached the other inkan serve process after {latency:?}");
    assert_eq!(refresh(&b, &app).await, 400, "the refresh token died too");
}
