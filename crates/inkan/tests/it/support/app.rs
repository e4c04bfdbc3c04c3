//! A real inkan app on 127.0.0.1:0: a temporary SQLite store, the Hanko
//! emulator (2048-bit keys) as Hanko, and a reqwest client that does not
//! follow redirects, so tests see every hop.
//!
//! ```ignore
//! let app = TestApp::start().await;
//! let app = TestApp::with_config("[tokens]\naccess_ttl = \"5m\"").await;
//! ```

use std::net::SocketAddr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use figment::Figment;
use figment::providers::{Format, Toml};
use hanko_emulator::{Emulator, EmulatorConfig, SessionToken};
use inkan::config::Config;
use inkan::server::AppState;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

/// The Hanko audience the emulator signs for and inkan expects.
pub const AUDIENCE: &str = "localhost";

pub struct TestApp {
    /// `public_url`, e.g. `http://127.0.0.1:40123` (no trailing slash).
    pub url: String,
    pub hanko: Emulator,
    /// Follows no redirects and keeps no cookies.
    pub http: reqwest::Client,
    pub state: AppState,
    _dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A PKCE verifier and its S256 challenge.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl Pkce {
    pub fn new() -> Pkce {
        let mut bytes = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
        let verifier = URL_SAFE_NO_PAD.encode(bytes);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        Pkce {
            verifier,
            challenge,
        }
    }
}

impl TestApp {
    pub async fn start() -> TestApp {
        TestApp::with_config("").await
    }

    /// Starts with `overrides` (TOML) laid over the test defaults: two
    /// services, `notes` (`notes:read notes:write`) and `calendar`
    /// (`calendar:read`).
    pub async fn with_config(overrides: &str) -> TestApp {
        let hanko = hanko_emulator::start(
            "127.0.0.1:0".parse().unwrap(),
            EmulatorConfig {
                audience: vec![AUDIENCE.into()],
                key_bits: 2048,
                ..EmulatorConfig::default()
            },
        )
        .await
        .expect("emulator starts");
        TestApp::with_emulator(hanko, overrides).await
    }

    /// Starts against an emulator the caller configured.
    pub async fn with_emulator(hanko: Emulator, overrides: &str) -> TestApp {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let url = format!("http://{addr}");
        let base = format!(
            r#"
            public_url = "{url}"
            listen = "{addr}"
            [hanko]
            api_url = "{hanko_url}"
            audience = "{AUDIENCE}"
            [store]
            backend = "sqlite"
            path = "{db}"
            [[services]]
            id = "notes"
            name = "Team notes"
            upstream = "http://127.0.0.1:9/mcp"
            scopes = ["notes:read", "notes:write"]
            [[services]]
            id = "calendar"
            name = "Calendar"
            upstream = "http://127.0.0.1:9/mcp"
            scopes = ["calendar:read"]
            "#,
            hanko_url = hanko.url(),
            db = dir.path().join("inkan.db").display(),
        );
        let config =
            Config::from_figment(Figment::from(Toml::string(&base)).merge(Toml::string(overrides)))
                .expect("test configuration is valid");
        let state = inkan::server::build(config).await.expect("app builds");
        let (stop, stopped) = oneshot::channel::<()>();
        let served = state.clone();
        tokio::spawn(async move {
            let _ = inkan::server::run(listener, served, async {
                let _ = stopped.await;
            })
            .await;
        });
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        TestApp {
            url,
            hanko,
            http,
            state,
            _dir: dir,
            stop: Some(stop),
        }
    }

    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    /// The resource URL of a service.
    pub fn resource(&self, service: &str) -> String {
        format!("{}/mcp/{service}", self.url)
    }

    /// A new emulator user with a fresh session.
    pub fn sign_in(&self, email: &str) -> SessionToken {
        let user = self.hanko.create_user(email).unwrap();
        self.hanko.create_session(&user.id).unwrap()
    }

    /// The `Cookie` header the Hanko browser SDK would send.
    pub fn cookie(session: &SessionToken) -> String {
        format!("hanko={}", session.jwt)
    }

    /// Registers a client (RFC 7591) and returns the response body.
    pub async fn register(&self, metadata: serde_json::Value) -> serde_json::Value {
        let response = self
            .http
            .post(self.at("/oauth/register"))
            .json(&metadata)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "registration refused");
        response.json().await.unwrap()
    }

    /// Registers a public client for `redirect_uri`; returns its id.
    pub async fn public_client(&self, redirect_uri: &str) -> String {
        let body = self
            .register(serde_json::json!({
                "redirect_uris": [redirect_uri],
                "token_endpoint_auth_method": "none",
                "client_name": "Test client",
            }))
            .await;
        body["client_id"].as_str().unwrap().to_string()
    }
}
