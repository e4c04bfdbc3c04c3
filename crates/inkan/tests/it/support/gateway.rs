//! A real inkan app (gateway + ops routes) on a free port, with a store of
//! the test's choosing, and helpers that mint tokens straight into the store.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use inkan::config::Config;
use inkan::server::AppState;
use inkan::store::token::{self, Minted};
use inkan::store::touch::Toucher;
use inkan::store::{Grant, SharedStore, TokenKind, TokenPair};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestGateway {
    /// `http://127.0.0.1:<port>`, also the configured `public_url`.
    pub url: String,
    pub state: AppState,
    pub toucher: Arc<Toucher>,
    server: JoinHandle<()>,
    /// Starts the server's graceful shutdown when sent (or dropped).
    stop: Option<oneshot::Sender<()>>,
    _dir: TempDir,
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Starts inkan with `tail` appended to a minimal configuration: `tail`
/// holds the `[[services]]` and may hold `[store]` / `[gateway]` sections
/// (without `[store]`, a fresh SQLite file in a temp dir is used).
pub async fn start(tail: &str) -> TestGateway {
    start_with_hanko(tail, "http://127.0.0.1:9").await
}

/// [`start`] with Hanko at `hanko_api_url` (e.g. the emulator), whose keys
/// are fetched before this returns.
pub async fn start_with_hanko(tail: &str, hanko_api_url: &str) -> TestGateway {
    start_configured("", tail, hanko_api_url).await
}

/// [`start_with_hanko`] with `top_level` keys (such as `workers`) placed
/// before the first section.
pub async fn start_configured(top_level: &str, tail: &str, hanko_api_url: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let url = format!("http://{addr}");
    let mut toml = format!(
        r#"
        public_url = "{url}"
        listen = "{addr}"
        {top_level}
        [hanko]
        api_url = "{hanko_api_url}"
        audience = "localhost"
        {tail}
        "#
    );
    if !tail.contains("[store]") {
        toml.push_str(&format!(
            "\n[store]\nbackend = \"sqlite\"\npath = \"{}\"\n",
            dir.path().join("inkan.db").display()
        ));
    }
    let config = Config::from_toml_str(&toml).expect("test config is valid");
    let state = inkan::server::build(config).await.expect("app builds");
    // Unreachable in most tests; readiness tests look at the outcome.
    let _ = state.identity.refresh_jwks().await;
    let toucher = Arc::clone(&state.toucher);
    let served = state.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        inkan::server::run(listener, served, shutdown)
            .await
            .expect("server runs");
    });
    TestGateway {
        url,
        state,
        toucher,
        server,
        stop: Some(stop),
        _dir: dir,
    }
}

/// What a minted grant looks like; tests adjust it before [`TestGateway::mint`].
pub fn grant(services: &[&str], scopes: &[&str]) -> (Grant, i64) {
    let now = now();
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let grant = Grant {
        grant_id: token::new_grant_id(),
        user_id: "user-1".into(),
        email: Some("ada@example.com".into()),
        session_id: "session-1".into(),
        client_id: "client-1".into(),
        scopes: strings(scopes),
        services: strings(services),
        resource: String::new(),
        created_at: now,
        last_used: None,
        session_exp: now + 3600,
        expires_at: now + 86400,
    };
    (grant, now + 3600)
}

impl TestGateway {
    /// Begins a graceful shutdown, as SIGTERM does for `inkan serve`.
    pub fn shut_down(&mut self) {
        self.stop.take();
    }

    /// Waits for `inkan::server::run` to return after [`Self::shut_down`].
    pub async fn stopped(&mut self) {
        (&mut self.server).await.expect("server task ends cleanly");
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    pub fn store(&self) -> &SharedStore {
        &self.state.store
    }

    pub fn mcp_url(&self, service: &str) -> String {
        format!("{}/mcp/{service}", self.url)
    }

    /// Stores `grant` with a fresh access token expiring at
    /// `access_expires_at`, and returns that token.
    pub async fn mint(&self, mut grant: Grant, access_expires_at: i64) -> String {
        if grant.resource.is_empty() {
            grant.resource = self.state.config.resource_url(&grant.services[0]);
        }
        let access: Minted = token::mint(TokenKind::Access, &grant.grant_id);
        let refresh = token::mint(TokenKind::Refresh, &grant.grant_id);
        let pair = TokenPair {
            access: access.hash,
            access_expires_at,
            refresh: refresh.hash,
            refresh_expires_at: grant.expires_at,
        };
        assert!(
            self.store()
                .create_grant(&grant, &pair)
                .await
                .expect("store answers"),
            "grant created"
        );
        access.token
    }

    /// A token for the default test user on `services` with `scopes`.
    pub async fn token(&self, services: &[&str], scopes: &[&str]) -> String {
        let (g, exp) = grant(services, scopes);
        self.mint(g, exp).await
    }
}
