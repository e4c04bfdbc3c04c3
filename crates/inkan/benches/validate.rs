//! Token validation on the gateway's hot path.
//!
//! `cargo bench -p inkan --bench validate` prints the time per validation
//! for a cache hit (target: at most 2 µs) and, for comparison, for a miss
//! (cache disabled, one SQLite round trip each).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use inkan::config::Config;
use inkan::gateway::validate::{Validator, Verdict};
use inkan::metrics::Metrics;
use inkan::store::token::{self, new_grant_id};
use inkan::store::touch::Toucher;
use inkan::store::{Grant, SharedStore, TokenKind, TokenPair};

const HIT_ITERATIONS: u32 = 1_000_000;
const MISS_ITERATIONS: u32 = 20_000;
const TARGET: Duration = Duration::from_micros(2);

fn config(db: &std::path::Path, cache_capacity: u64) -> Config {
    Config::from_toml_str(&format!(
        r#"
        public_url = "https://mcp.example.com"
        listen = "127.0.0.1:8080"
        [hanko]
        api_url = "https://tenant.hanko.io"
        audience = "mcp.example.com"
        [store]
        path = "{}"
        [gateway]
        cache_capacity = {cache_capacity}
        cache_ttl = "1h"
        [[services]]
        id = "notes"
        name = "Team notes"
        upstream = "http://127.0.0.1:9000/mcp"
        scopes = ["notes:read", "notes:write"]
        "#,
        db.display()
    ))
    .expect("bench config is valid")
}

async fn mint(store: &SharedStore, now: i64) -> String {
    let grant_id = new_grant_id();
    let grant = Grant {
        grant_id: grant_id.clone(),
        user_id: "user-1".into(),
        email: Some("ada@example.com".into()),
        session_id: "session-1".into(),
        client_id: "client-1".into(),
        scopes: vec!["notes:read".into()],
        services: vec!["notes".into()],
        resource: "https://mcp.example.com/mcp/notes".into(),
        created_at: now,
        last_used: None,
        session_exp: now + 3600,
        expires_at: now + 86400,
    };
    let access = token::mint(TokenKind::Access, &grant_id);
    let refresh = token::mint(TokenKind::Refresh, &grant_id);
    let pair = TokenPair {
        access: access.hash,
        access_expires_at: now + 3600,
        refresh: refresh.hash,
        refresh_expires_at: now + 86400,
    };
    assert!(
        store
            .create_grant(&grant, &pair)
            .await
            .expect("store answers")
    );
    access.token
}

async fn measure(cache_capacity: u64, iterations: u32) -> Duration {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = config(&dir.path().join("bench.db"), cache_capacity);
    let store = inkan::store::connect(&config.store)
        .await
        .expect("store opens");
    let toucher = Arc::new(Toucher::spawn(store.clone(), config.store.touch_interval));
    let validator = Validator::new(
        &config,
        store.clone(),
        toucher,
        Arc::new(Metrics::default()),
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = mint(&store, now).await;
    let scopes = &config.services[0].scopes;
    assert!(matches!(
        validator.validate(&token, "notes", scopes, now).await,
        Verdict::Allowed(_)
    ));
    let started = Instant::now();
    for _ in 0..iterations {
        let verdict = validator
            .validate(black_box(&token), black_box("notes"), scopes, now)
            .await;
        black_box(verdict);
    }
    started.elapsed() / iterations
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let hit = measure(100_000, HIT_ITERATIONS).await;
        println!(
            "validate, cache hit:               {:>8.0} ns/op ({HIT_ITERATIONS} iterations; target <= {} ns: {})",
            hit.as_nanos(),
            TARGET.as_nanos(),
            if hit <= TARGET { "met" } else { "MISSED" }
        );
        let miss = measure(0, MISS_ITERATIONS).await;
        println!(
            "validate, no cache (SQLite lookup): {:>8.0} ns/op ({MISS_ITERATIONS} iterations)",
            miss.as_nanos()
        );
    });
}
