//! Revocation reaches every instance: the bus, logout, the account page,
//! webhooks, the operator CLI.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use inkan::config::Config;
use inkan::revocation::{GrantCache, Revocation};
use inkan::store::Revoked;

use crate::support::redis::{RedisServer, unique_prefix};

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

    let out = inkan(&["revoke", "--user", "alice", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("revoked 2 grant(s)"), "{stdout}");

    let out = inkan(&["revoke", "--client", "c1", "--config", cfg]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 1 grant(s)"));
    let out = inkan(&["revoke", "--grant", &grants[3], "--config", cfg]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 1 grant(s)"));
    let out = inkan(&["revoke", "--session", "s4", "--config", cfg]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked 0 grant(s)"));

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
