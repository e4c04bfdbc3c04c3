//! "Is Hanko session X still alive?" through the admin API, the only place
//! Hanko answers that from a session id alone.
//!
//! Only positive answers are cached (for `hanko.liveness_cache`): a session
//! that ended must be seen as gone on the next check. Concurrent checks of one
//! session share one request.

use std::sync::Arc;

use moka::future::Cache;
use serde::Deserialize;

use crate::config::HankoConfig;

/// Largest session list read (a user has a handful of sessions).
const MAX_BODY: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Hanko lists the session.
    Alive,
    /// The session or its user no longer exists.
    Gone,
    /// No admin API configured: nobody can tell.
    NotChecked,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LivenessError {
    #[error("Hanko admin API unreachable: {0}")]
    Unreachable(String),
    #[error("Hanko admin API answered HTTP {0}")]
    Status(u16),
    #[error("Hanko admin API answered something that is not a session list")]
    Invalid,
}

/// Why a lookup did not end in a cached `Alive`.
#[derive(Debug, Clone)]
enum NotAlive {
    Gone,
    Failed(LivenessError),
}

#[derive(Deserialize)]
struct AdminSession {
    id: String,
}

pub(crate) struct LivenessChecker {
    admin: Option<url::Url>,
    api_key: Option<String>,
    http: reqwest::Client,
    alive: Cache<(String, String), ()>,
}

impl LivenessChecker {
    pub fn new(config: &HankoConfig, http: reqwest::Client) -> LivenessChecker {
        LivenessChecker {
            admin: config
                .admin_api_url
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok()),
            api_key: config.admin_api_key.clone(),
            http,
            alive: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(config.liveness_cache)
                .build(),
        }
    }

    pub async fn check(&self, user_id: &str, session_id: &str) -> Result<Liveness, LivenessError> {
        let Some(admin) = &self.admin else {
            return Ok(Liveness::NotChecked);
        };
        let key = (user_id.to_string(), session_id.to_string());
        let lookup = self
            .alive
            .try_get_with(key, async {
                match self.fetch(admin, user_id, session_id).await {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(NotAlive::Gone),
                    Err(e) => Err(NotAlive::Failed(e)),
                }
            })
            .await;
        match lookup {
            Ok(()) => Ok(Liveness::Alive),
            Err(e) => match Arc::unwrap_or_clone(e) {
                NotAlive::Gone => Ok(Liveness::Gone),
                NotAlive::Failed(e) => Err(e),
            },
        }
    }

    /// Forgets cached answers for a session that Hanko told us has ended.
    pub async fn forget_session(&self, user_id: &str, session_id: &str) {
        self.alive
            .invalidate(&(user_id.to_string(), session_id.to_string()))
            .await;
    }

    /// Forgets cached answers for every session of a deleted user.
    pub async fn forget_user(&self, user_id: &str) {
        let keys: Vec<_> = self
            .alive
            .iter()
            .filter(|(key, ())| key.0 == user_id)
            .map(|(key, ())| key)
            .collect();
        for key in keys {
            self.alive.invalidate(&*key).await;
        }
    }

    async fn fetch(
        &self,
        admin: &url::Url,
        user_id: &str,
        session_id: &str,
    ) -> Result<bool, LivenessError> {
        let mut url = admin.clone();
        url.path_segments_mut()
            .map_err(|()| LivenessError::Invalid)?
            .pop_if_empty()
            .extend(["users", user_id, "sessions"]);
        let mut request = self.http.get(url);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| LivenessError::Unreachable(e.without_url().to_string()))?;
        match response.status().as_u16() {
            200 => {}
            // Hanko answers 404 for a user that no longer exists (and 400 for an id
            // that cannot be one): either way no session of it is alive.
            400 | 404 => return Ok(false),
            status => return Err(LivenessError::Status(status)),
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| LivenessError::Unreachable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(LivenessError::Invalid);
            }
            body.extend_from_slice(&chunk);
        }
        let sessions: Vec<AdminSession> =
            serde_json::from_slice(&body).map_err(|_| LivenessError::Invalid)?;
        Ok(sessions.iter().any(|s| s.id == session_id))
    }
}
