//! Real `redis-server` processes for tests: a standalone server and a
//! 3-master cluster, each started once per test process on free ports, plus
//! [`RedisServer`] for tests that stop and restart their own server.
//!
//! Every server runs under `sh -c '… & p=$!; read _; kill $p; wait $p'` with
//! stdin piped from this process: when the test process exits, even by a
//! panic or a signal, stdin reaches EOF and the shell kills the server and
//! removes its data directory (cluster config files included). Tests share the servers and isolate
//! themselves with unique key prefixes ([`unique_prefix`]).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral port")
        .port()
}

/// A key prefix no other test in this process uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "t{}-{name}-{}:",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn ping(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

fn wait_until(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
}

/// One `redis-server` on a fixed port, with its data in a private directory
/// (append-only file on), so a restart keeps the data as a real one would.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    running: Mutex<Option<Running>>,
}

impl RedisServer {
    /// Starts a standalone server on a free port.
    pub fn start_new() -> RedisServer {
        RedisServer::with_args(free_port(), Vec::new())
    }

    fn with_args(port: u16, extra: Vec<String>) -> RedisServer {
        let dir = tempfile::Builder::new()
            .prefix("inkan-redis-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let server = RedisServer {
            port,
            dir,
            extra,
            running: Mutex::new(None),
        };
        server.start();
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port; returns once it answers PING.
    pub fn start(&self) {
        let mut running = self.running.lock().unwrap();
        if running.is_some() {
            return;
        }
        let mut args = vec![
            "--port".to_string(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.display().to_string(),
            "--save".into(),
            "''".into(),
            "--appendonly".into(),
            "yes".into(),
        ];
        args.extend(self.extra.iter().cloned());
        // `stop()` writes "stop" first and the data directory survives for
        // `start()`; a bare EOF means the test process is gone.
        let script = format!(
            "redis-server {} >/dev/null & p=$!; read cmd; kill $p; wait $p; \
             [ \"$cmd\" = stop ] || rm -rf '{}'",
            args.join(" "),
            self.dir.display()
        );
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn redis-server");
        let stdin = child.stdin.take().expect("piped stdin");
        *running = Some(Running { child, stdin });
        let port = self.port;
        wait_until(&format!("redis-server on port {port}"), || ping(port));
    }

    /// Stops the server (SIGTERM, so it writes its data) and waits until it
    /// has exited.
    pub fn stop(&self) {
        if let Some(Running {
            mut child,
            mut stdin,
        }) = self.running.lock().unwrap().take()
        {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shared standalone server's URL.
pub async fn standalone() -> String {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    tokio::task::spawn_blocking(|| SERVER.get_or_init(RedisServer::start_new).url())
        .await
        .expect("start redis")
}

/// The shared 3-master cluster's node URLs.
pub async fn cluster() -> Vec<String> {
    static CLUSTER: OnceLock<Vec<RedisServer>> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        CLUSTER
            .get_or_init(start_cluster)
            .iter()
            .map(RedisServer::url)
            .collect()
    })
    .await
    .expect("start redis cluster")
}

fn start_cluster() -> Vec<RedisServer> {
    let nodes: Vec<RedisServer> = (0..3)
        .map(|_| {
            RedisServer::with_args(
                free_port(),
                vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-node-timeout".into(),
                    "5000".into(),
                ],
            )
        })
        .collect();
    let mut create = Command::new("redis-cli");
    create.arg("--cluster").arg("create");
    for n in &nodes {
        create.arg(format!("127.0.0.1:{}", n.port()));
    }
    let out = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .expect("run redis-cli --cluster create");
    assert!(
        out.status.success(),
        "cluster create failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for n in &nodes {
        let port = n.port().to_string();
        wait_until("cluster_state:ok", || {
            Command::new("redis-cli")
                .args(["-p", &port, "cluster", "info"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        });
    }
    nodes
}
