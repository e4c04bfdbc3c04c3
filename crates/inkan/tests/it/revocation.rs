//! Revocation reaches every instance: the bus, logout, the account page,
//! webhooks, the operator CLI.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use inkan::config::Config;
use inkan::revocation::{GrantCache, Revocation};
use inkan::store::Revoked;

struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start_on(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        Redis { port, child }
    }
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Redis::start_on(port)
    }
    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
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

fn config(port: u16) -> Config {
    Config::from_toml_str(&format!(
        r#"
        public_url = "http://127.0.0.1:1"
        listen = "127.0.0.1:0"
        [hanko]
        api_url = "http://127.0.0.1:2"
        audience = "localhost"
        [store]
        backend = "redis"
        url = "redis://127.0.0.1:{port}"
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
    let mut redis = Redis::start();
    let a_cache = Arc::new(Recorder::default());
    let b_cache = Arc::new(Recorder::default());
    let a = Revocation::start(&config(redis.port), a_cache.clone());
    let b = Revocation::start(&config(redis.port), b_cache.clone());
    let mut b_up = b.bus_connected();
    b_up.wait_for(|c| *c).await.unwrap();
    a.bus_connected().wait_for(|c| *c).await.unwrap();

    let revoked = Revoked {
        grants: vec!["g1".into(), "g2".into()],
        tokens: 4,
    };
    a.announce(&revoked).await;
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
    redis.stop();
    b_up.wait_for(|c| !*c).await.unwrap();
    let redis = Redis::start_on(redis.port);
    b_up.wait_for(|c| *c).await.unwrap();
    assert!(*b_cache.flushes.lock().unwrap() >= flushes_before + 2);

    a.announce(&Revoked {
        grants: vec!["g3".into()],
        tokens: 1,
    })
    .await;
    until("b to hear after restart", || {
        b_cache.grants.lock().unwrap().contains(&"g3".to_string())
    })
    .await;
    drop(redis);
}
