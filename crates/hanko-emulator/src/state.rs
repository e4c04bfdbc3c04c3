//! Users, sessions, keys and webhook delivery: the emulator's whole world,
//! shared by the HTTP routes and the [`crate::Emulator`] handle.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::EmulatorConfig;
use crate::keys::SigningKey;

/// A Hanko user as the emulator knows it: one primary, verified email.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    /// Hanko gives every email address its own id.
    pub email_id: String,
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
}

/// A freshly issued session JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionToken {
    pub jwt: String,
    pub session_id: String,
    pub user_id: String,
    /// `exp` of the JWT (Unix seconds).
    pub expires_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    pub id: String,
    pub user_id: String,
    pub user_agent: String,
    pub ip_address: String,
    #[serde(with = "time::serde::timestamp")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub last_used: OffsetDateTime,
    #[serde(with = "time::serde::timestamp")]
    pub expires_at: OffsetDateTime,
}

#[derive(Default)]
struct Db {
    users: HashMap<String, User>,
    sessions: HashMap<String, SessionRecord>,
}

/// The state file ([`EmulatorConfig::state_file`]): keys, users and
/// sessions, so that a restart keeps every issued session valid.
#[derive(Serialize, Deserialize)]
struct Saved {
    /// Oldest first, as in [`State::keys`].
    keys: Vec<SavedKey>,
    users: Vec<User>,
    sessions: Vec<SessionRecord>,
}

#[derive(Serialize, Deserialize)]
struct SavedKey {
    kid: String,
    /// PKCS#8 DER, base64.
    pkcs8: String,
}

impl Saved {
    fn read(path: &Path) -> anyhow::Result<(Vec<Arc<SigningKey>>, Db)> {
        let text = std::fs::read(path)?;
        let saved: Saved = serde_json::from_slice(&text)?;
        let keys = saved
            .keys
            .into_iter()
            .map(|k| {
                let der = STANDARD.decode(&k.pkcs8)?;
                Ok(Arc::new(SigningKey::from_pkcs8(k.kid, &der)?))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let at = now();
        let db = Db {
            users: saved.users.into_iter().map(|u| (u.id.clone(), u)).collect(),
            sessions: saved
                .sessions
                .into_iter()
                .filter(|s| s.expires_at > at)
                .map(|s| (s.id.clone(), s))
                .collect(),
        };
        Ok((keys, db))
    }

    /// Replaces `path` whole (a new file renamed over it), readable by
    /// its owner only: it holds private keys.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut temporary = path.as_os_str().to_owned();
        temporary.push(".tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(self)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }
}

/// Claims of a session JWT that the emulator reads back.
#[derive(Deserialize)]
pub(crate) struct SessionClaims {
    pub sub: String,
    pub session_id: String,
    pub iat: i64,
    pub exp: i64,
    pub aud: Value,
    pub email: Option<Value>,
}

pub(crate) struct State {
    pub config: EmulatorConfig,
    /// Oldest first; the last key signs. Std locks: never held across `.await`.
    keys: RwLock<Vec<Arc<SigningKey>>>,
    db: Mutex<Db>,
    pub available: AtomicBool,
    pub jwks_requests: AtomicU64,
    http: reqwest::Client,
}

pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .expect("every OffsetDateTime formats as RFC 3339")
}

pub(crate) fn unix_rfc3339(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .map(rfc3339)
        .unwrap_or_default()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

impl User {
    /// The admin API's user object (also the `data` of `user.*` webhooks).
    pub fn to_json(&self) -> Value {
        let at = rfc3339(self.created_at);
        json!({
            "id": self.id,
            "emails": [{
                "id": self.email_id,
                "address": self.email,
                "is_verified": true,
                "is_primary": true,
                "created_at": at,
                "updated_at": at,
            }],
            "created_at": at,
            "updated_at": at,
        })
    }
}

impl SessionRecord {
    /// The admin API's session object (also the `data` of `session.*` webhooks).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "user_agent": self.user_agent,
            "ip_address": self.ip_address,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.last_used),
            "expires_at": rfc3339(self.expires_at),
            "last_used": rfc3339(self.last_used),
        })
    }
}

impl State {
    /// A fresh world, or the one in `config.state_file` when that exists.
    pub fn new(config: EmulatorConfig) -> anyhow::Result<State> {
        let (keys, db) = match &config.state_file {
            Some(path) if path.exists() => Saved::read(path).with_context(|| {
                format!(
                    "cannot read the emulator state in {}; move it away to start afresh",
                    path.display()
                )
            })?,
            _ => (
                vec![Arc::new(SigningKey::generate(config.key_bits)?)],
                Db::default(),
            ),
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?;
        let state = State {
            config,
            keys: RwLock::new(keys),
            db: Mutex::new(db),
            available: AtomicBool::new(true),
            jwks_requests: AtomicU64::new(0),
            http,
        };
        if let Some(path) = &state.config.state_file {
            state.saved().write(path).with_context(|| {
                format!("cannot write the emulator state to {}", path.display())
            })?;
        }
        Ok(state)
    }

    fn saved(&self) -> Saved {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|k| SavedKey {
                kid: k.kid.clone(),
                pkcs8: STANDARD.encode(k.pkcs8()),
            })
            .collect();
        let db = self.db();
        Saved {
            keys,
            users: db.users.values().cloned().collect(),
            sessions: db.sessions.values().cloned().collect(),
        }
    }

    /// Writes the state file, if there is one, after a change. Call with no
    /// lock held. A failed write is logged: the running emulator is fine,
    /// only a restart would forget the change.
    fn persist(&self) {
        if let Some(path) = &self.config.state_file
            && let Err(e) = self.saved().write(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "could not save the emulator state");
        }
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn signing_key(&self) -> Option<Arc<SigningKey>> {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .cloned()
    }

    pub fn jwks(&self) -> Value {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
    }

    pub fn rotate_key(&self) -> anyhow::Result<String> {
        let key = SigningKey::generate(self.config.key_bits)?;
        let kid = key.kid.clone();
        self.keys
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(key));
        self.persist();
        Ok(kid)
    }

    pub fn remove_key(&self, kid: &str) -> bool {
        let removed = {
            let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
            let before = keys.len();
            keys.retain(|k| k.kid != kid);
            keys.len() != before
        };
        if removed {
            self.persist();
        }
        removed
    }

    pub fn current_kid(&self) -> Option<String> {
        self.signing_key().map(|k| k.kid.clone())
    }

    /// Signs arbitrary claims with the newest key (tests craft edge cases with it).
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let key = self
            .signing_key()
            .ok_or_else(|| anyhow::anyhow!("every signing key was removed"))?;
        Ok(key.sign(claims))
    }

    pub fn create_user(&self, email: &str) -> anyhow::Result<User> {
        let user = {
            let mut db = self.db();
            if db
                .users
                .values()
                .any(|u| u.email.eq_ignore_ascii_case(email))
            {
                anyhow::bail!("a user with email {email} already exists");
            }
            let user = User {
                id: uuid::Uuid::new_v4().to_string(),
                email: email.to_string(),
                email_id: uuid::Uuid::new_v4().to_string(),
                created_at: now(),
            };
            db.users.insert(user.id.clone(), user.clone());
            user
        };
        self.persist();
        Ok(user)
    }

    pub fn user(&self, id: &str) -> Option<User> {
        self.db().users.get(id).cloned()
    }

    pub fn user_by_email(&self, email: &str) -> Option<User> {
        self.db()
            .users
            .values()
            .find(|u| u.email.eq_ignore_ascii_case(email))
            .cloned()
    }

    pub fn create_session(
        &self,
        user_id: &str,
        lifetime: Duration,
        user_agent: &str,
        ip_address: &str,
    ) -> anyhow::Result<SessionToken> {
        let user = self
            .user(user_id)
            .ok_or_else(|| anyhow::anyhow!("no user {user_id}"))?;
        let created = now();
        let iat = created.unix_timestamp();
        let exp = iat + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2);
        let session_id = uuid::Uuid::new_v4().to_string();
        let mut claims = json!({
            "sub": user.id,
            "iat": iat,
            "exp": exp,
            "aud": self.config.audience,
            "session_id": session_id,
            "email": {"address": user.email, "is_primary": true, "is_verified": true},
            "amr": ["passkey"],
        });
        if let Some(iss) = &self.config.issuer {
            claims["iss"] = json!(iss);
        }
        let jwt = self.sign(&claims)?;
        let record = SessionRecord {
            id: session_id.clone(),
            user_id: user.id.clone(),
            user_agent: user_agent.to_string(),
            ip_address: ip_address.to_string(),
            created_at: created,
            last_used: created,
            expires_at: OffsetDateTime::from_unix_timestamp(exp)?,
        };
        self.db().sessions.insert(session_id.clone(), record);
        self.persist();
        Ok(SessionToken {
            jwt,
            session_id,
            user_id: user.id,
            expires_at: exp,
        })
    }

    /// What Hanko checks: signature, `kid`, `exp`, and that the session still exists.
    pub fn validate(&self, token: &str, touch: bool) -> Option<SessionClaims> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let key = self
            .keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|k| k.kid == kid)
            .cloned()?;
        let claims: SessionClaims = key.verify(token)?;
        let mut db = self.db();
        let session = db.sessions.get_mut(&claims.session_id)?;
        if session.user_id != claims.sub || session.expires_at <= now() {
            return None;
        }
        if touch {
            session.last_used = now();
        }
        Some(claims)
    }

    /// Live sessions of a user, or `None` when the user does not exist.
    pub fn sessions_of(&self, user_id: &str) -> Option<Vec<SessionRecord>> {
        let db = self.db();
        db.users.get(user_id)?;
        let at = now();
        let mut list: Vec<_> = db
            .sessions
            .values()
            .filter(|s| s.user_id == user_id && s.expires_at > at)
            .cloned()
            .collect();
        list.sort_by_key(|s| s.created_at);
        Some(list)
    }

    pub fn delete_session(&self, user_id: &str, session_id: &str) -> Option<SessionRecord> {
        let removed = {
            let mut db = self.db();
            match db.sessions.get(session_id) {
                Some(s) if s.user_id == user_id => db.sessions.remove(session_id),
                _ => None,
            }
        };
        if removed.is_some() {
            self.persist();
        }
        removed
    }

    pub fn delete_user(&self, user_id: &str) -> Option<User> {
        let user = {
            let mut db = self.db();
            let user = db.users.remove(user_id)?;
            db.sessions.retain(|_, s| s.user_id != user_id);
            user
        };
        self.persist();
        Some(user)
    }

    /// The webhook JWS: RS256 with the session keys, valid for five minutes.
    pub fn sign_webhook_at(&self, event: &str, data: &Value, iat: i64) -> anyhow::Result<String> {
        self.sign(&json!({
            "sub": "hanko webhooks",
            "iat": iat,
            "exp": iat + 300,
            "aud": self.config.audience,
            "evt": event,
            "data": data,
        }))
    }

    /// One attempt per configured URL, 10 s timeout, no retries, as Hanko does.
    pub async fn deliver(&self, event: &str, data: Value) {
        if self.config.webhooks.is_empty() {
            return;
        }
        let token = match self.sign_webhook_at(event, &data, now().unix_timestamp()) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(event, error = %e, "cannot sign webhook");
                return;
            }
        };
        let body = json!({"token": token, "event": event});
        let sends = self.config.webhooks.iter().map(|url| {
            let request = self.http.post(url).json(&body).send();
            let url = url.clone();
            let event = event.to_string();
            async move {
                match request.await {
                    Ok(r) => {
                        tracing::debug!(%url, %event, status = %r.status(), "webhook delivered")
                    }
                    Err(e) => tracing::warn!(%url, %event, error = %e, "webhook delivery failed"),
                }
            }
        });
        join_all(sends).await;
    }
}

/// Runs the deliveries concurrently without pulling in `futures`.
async fn join_all<F: Future<Output = ()> + Send + 'static>(futures: impl Iterator<Item = F>) {
    let mut set = tokio::task::JoinSet::new();
    for f in futures {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}
