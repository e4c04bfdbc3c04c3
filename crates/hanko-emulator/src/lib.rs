//! A loopback-only emulator of Hanko's wire formats (see
//! `shared/reference/hanko.md`): JWKS, session JWTs, the public session API,
//! the admin API as on Hanko Cloud (under `/admin`), signed webhooks, plus a
//! development sign-in that replaces Hanko's passkey flows.
//!
//! [`start`] runs it on a port; the returned [`Emulator`] handle lets tests
//! and `inkan dev` drive it directly (users, sessions, key rotation, outages).
#![forbid(unsafe_code)]

mod keys;
mod routes;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use state::{SessionToken, User};

use state::State;

/// What the emulated Hanko tenant looks like.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// `aud` of session JWTs and webhooks (Hanko: the relying-party id).
    pub audience: Vec<String>,
    /// RSA modulus size: 2048, 3072, 4096 (Hanko's) or 8192.
    pub key_bits: usize,
    pub session_lifetime: Duration,
    /// When set, the admin API wants `Authorization: Bearer <key>` (Hanko Cloud).
    pub admin_api_key: Option<String>,
    /// Every URL receives every event.
    pub webhooks: Vec<String>,
    /// `iss` of session JWTs; Hanko omits it unless configured.
    pub issuer: Option<String>,
    /// Where keys, users and sessions are kept across restarts (JSON,
    /// owner-only, rewritten on every change); `None` keeps them in memory.
    pub state_file: Option<PathBuf>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            audience: vec!["localhost".into()],
            key_bits: 4096,
            session_lifetime: Duration::from_secs(12 * 3600),
            admin_api_key: None,
            webhooks: Vec::new(),
            issuer: None,
            state_file: None,
        }
    }
}

/// A running emulator; cheap to clone, every clone drives the same server.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    state: Arc<State>,
    stop: Mutex<Option<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

/// Binds `listen` (loopback only) and serves until [`Emulator::shutdown`].
pub async fn start(listen: SocketAddr, config: EmulatorConfig) -> anyhow::Result<Emulator> {
    if !listen.ip().is_loopback() {
        bail!(
            "the Hanko emulator is a development tool and listens on loopback addresses only (got {listen})"
        );
    }
    if config.audience.is_empty() {
        bail!("the Hanko emulator needs at least one audience");
    }
    let state = Arc::new(State::new(config)?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let app = routes::router(state.clone());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(listener, app).with_graceful_shutdown(async {
            let _ = rx.await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "Hanko emulator stopped");
        }
    });
    Ok(Emulator {
        inner: Arc::new(Inner {
            url: format!("http://{addr}"),
            state,
            stop: Mutex::new(Some((tx, task))),
        }),
    })
}

impl Emulator {
    /// Base URL, e.g. `http://127.0.0.1:41234` (no trailing slash).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// The admin API base, `<url>/admin`.
    pub fn admin_url(&self) -> String {
        format!("{}/admin", self.inner.url)
    }

    fn state(&self) -> &State {
        &self.inner.state
    }

    /// A new user with one primary, verified email (no webhook, like the admin API).
    pub fn create_user(&self, email: &str) -> anyhow::Result<User> {
        self.state().create_user(email)
    }

    /// A new session with the configured lifetime.
    pub fn create_session(&self, user_id: &str) -> anyhow::Result<SessionToken> {
        self.create_session_with_lifetime(user_id, self.state().config.session_lifetime)
    }

    pub fn create_session_with_lifetime(
        &self,
        user_id: &str,
        lifetime: Duration,
    ) -> anyhow::Result<SessionToken> {
        self.state()
            .create_session(user_id, lifetime, "hanko-emulator", "127.0.0.1")
    }

    /// Ends a session as an admin would; returns once `session.delete.admin.revoke`
    /// was delivered (or failed). `false` when there was no such session.
    pub async fn delete_session(&self, user_id: &str, session_id: &str) -> bool {
        match self.state().delete_session(user_id, session_id) {
            Some(session) => {
                self.state()
                    .deliver("session.delete.admin.revoke", session.to_json())
                    .await;
                true
            }
            None => false,
        }
    }

    /// Deletes a user and its sessions; returns once `user.delete` was delivered (or failed).
    pub async fn delete_user(&self, user_id: &str) -> bool {
        match self.state().delete_user(user_id) {
            Some(user) => {
                self.state().deliver("user.delete", user.to_json()).await;
                true
            }
            None => false,
        }
    }

    /// Adds a key that signs from now on; older keys stay published. Returns its `kid`.
    pub fn rotate_key(&self) -> anyhow::Result<String> {
        self.state().rotate_key()
    }

    /// Unpublishes a key; `false` when no key had that `kid`.
    pub fn remove_key(&self, kid: &str) -> bool {
        self.state().remove_key(kid)
    }

    /// The `kid` of the key that signs now (`None` once every key was removed).
    pub fn current_kid(&self) -> Option<String> {
        self.state().current_kid()
    }

    /// `false` makes every route answer 503, as if Hanko were down.
    pub fn set_available(&self, available: bool) {
        self.state().available.store(available, Ordering::SeqCst);
    }

    /// How many times `/.well-known/jwks.json` was served.
    pub fn jwks_requests(&self) -> u64 {
        self.state().jwks_requests.load(Ordering::SeqCst)
    }

    /// A webhook JWS for `event` with `data`, issued now.
    pub fn sign_webhook(&self, event: &str, data: Value) -> String {
        self.sign_webhook_at(
            event,
            data,
            time::OffsetDateTime::now_utc().unix_timestamp(),
        )
    }

    /// A webhook JWS issued at `iat` (Unix seconds), e.g. an expired one.
    pub fn sign_webhook_at(&self, event: &str, data: Value, iat: i64) -> String {
        self.state()
            .sign_webhook_at(event, &data, iat)
            .expect("the emulator has a signing key")
    }

    /// Signs arbitrary claims with the current key and `kid`, for crafting
    /// tokens Hanko would never issue (wrong audience, expired, ...).
    pub fn sign_claims(&self, claims: &Value) -> String {
        self.state()
            .sign(claims)
            .expect("the emulator has a signing key")
    }

    /// Stops accepting connections and waits for in-flight requests.
    pub async fn shutdown(&self) {
        let stop = self
            .inner
            .stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((tx, task)) = stop {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

/// What `--help` says about the routes.
pub const ROUTES_HELP: &str = "\
Routes (Hanko's wire formats):
  GET  /.well-known/jwks.json               signing keys (Cache-Control: max-age=600)
  GET  /sessions/validate                   token from Authorization: Bearer or cookie `hanko`
  POST /sessions/validate                   {\"session_token\": \"<jwt>\"}; 400 without it
  POST /logout                              ends the session, expires the cookie, 204
  GET  /me                                  the signed-in user
  POST /admin/users                         {\"emails\":[{\"address\",\"is_primary\",\"is_verified\"}]}
  GET  /admin/users/{id}                    the user object
  DELETE /admin/users/{id}                  204; fires user.delete
  POST /admin/sessions                      {\"user_id\"} -> {\"session_token\"}
  GET  /admin/users/{id}/sessions           live sessions
  DELETE /admin/users/{id}/sessions/{sid}   204; fires session.delete.admin.revoke
  POST /dev/sign-in                         email (JSON or form) -> {\"session_token\",\"expires_at\",\"user_id\"}
                                            + X-Auth-Token; CORS for loopback origins
Admin routes want `Authorization: Bearer <key>` when --admin-api-key is set.
Webhooks: POST {\"token\":\"<JWS>\",\"event\":\"…\"} to every --webhook URL, one attempt, 10 s timeout.";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_non_loopback_addresses() {
        let config = EmulatorConfig {
            key_bits: 2048,
            ..EmulatorConfig::default()
        };
        let err = start("0.0.0.0:0".parse().unwrap(), config)
            .await
            .err()
            .expect("0.0.0.0 must be refused");
        assert!(err.to_string().contains("loopback"), "{err}");
    }

    #[tokio::test]
    async fn rotation_keeps_old_keys_published() {
        let config = EmulatorConfig {
            key_bits: 2048,
            ..EmulatorConfig::default()
        };
        let emu = start("127.0.0.1:0".parse().unwrap(), config).await.unwrap();
        let first = emu.current_kid().unwrap();
        let second = emu.rotate_key().unwrap();
        assert_ne!(first, second);
        let jwks: Value = reqwest::get(format!("{}/.well-known/jwks.json", emu.url()))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, [first.as_str(), second.as_str()]);
        assert!(emu.remove_key(&first));
        assert!(!emu.remove_key(&first));
        assert_eq!(emu.jwks_requests(), 1);
        emu.shutdown().await;
    }
    async fn validates(emu: &Emulator, jwt: &str) -> bool {
        let answer: Value = reqwest::Client::new()
            .post(format!("{}/sessions/validate", emu.url()))
            .json(&serde_json::json!({ "session_token": jwt }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["is_valid"] == true
    }

    #[tokio::test]
    async fn a_state_file_keeps_keys_users_and_sessions_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hanko.json");
        let config = EmulatorConfig {
            key_bits: 2048,
            state_file: Some(path.clone()),
            ..EmulatorConfig::default()
        };
        let emu = start("127.0.0.1:0".parse().unwrap(), config.clone())
            .await
            .unwrap();
        let alice = emu.create_user("alice@example.com").unwrap();
        let kept = emu.create_session(&alice.id).unwrap();
        let ended = emu.create_session(&alice.id).unwrap();
        assert!(emu.delete_session(&alice.id, &ended.session_id).await);
        let kid = emu.current_kid().unwrap();
        emu.shutdown().await;
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "private keys are the owner's only");
        }

        let emu = start("127.0.0.1:0".parse().unwrap(), config.clone())
            .await
            .unwrap();
        assert_eq!(emu.current_kid().unwrap(), kid);
        assert_eq!(
            emu.state().user_by_email("alice@example.com").unwrap().id,
            alice.id
        );
        assert!(validates(&emu, &kept.jwt).await, "a kept session verifies");
        assert!(
            !validates(&emu, &ended.jwt).await,
            "an ended one stays ended"
        );
        emu.shutdown().await;

        // A damaged file stops the emulator with a clear message; it is
        // not overwritten.
        std::fs::write(&path, b"{ not json").unwrap();
        let err = start("127.0.0.1:0".parse().unwrap(), config)
            .await
            .err()
            .expect("a damaged state file is refused");
        assert!(
            format!("{err:#}").contains("move it away to start afresh"),
            "{err:#}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"{ not json");
    }
}
