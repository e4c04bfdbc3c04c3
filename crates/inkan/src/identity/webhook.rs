//! `POST /hanko/webhook`: Hanko tells us a user or a session is gone.
//!
//! The body `{"token","event"}` is trusted only through its JWS: RS256 with
//! Hanko's session keys (same JWKS cache), `sub` = `hanko webhooks`, `exp`
//! checked, and the signed `evt` must equal the body's `event`. A token seen
//! before is refused (replay), so a payload acts at most once per process;
//! handlers are idempotent anyway, and webhooks are never the only path to
//! revocation (Hanko sends each one once, without retries).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::session::{LEEWAY_SECS, now, rs256_validation, verify_jws};
use super::{Identity, Rejection};
use crate::server::AppState;

/// Largest webhook body read (Hanko's are a few KB).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a seen token is remembered; tokens living longer are refused,
/// since their replay could not be detected. Hanko's live 5 minutes.
const REPLAY_WINDOW: Duration = Duration::from_secs(600);
/// Longest user or session id accepted from a payload.
const MAX_ID_LEN: usize = 128;

/// What inkan does when Hanko reports an ending; the revocation module implements it.
#[async_trait]
pub trait WebhookHandler: Send + Sync {
    async fn user_deleted(&self, user_id: &str);
    async fn session_deleted(&self, user_id: &str, session_id: &str);
}

/// What became of one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// A `user.delete` or `session.delete.*` reached the handler.
    Handled,
    /// A genuine event inkan does not act on.
    Ignored,
    /// Forged, expired, or signed for another event.
    Rejected(Rejection),
    /// A token already received: a payload acts at most once.
    Replayed,
    /// Not a webhook body, or a signed payload without the ids it needs.
    BadRequest,
    /// No [`WebhookHandler`] registered yet.
    NoHandler,
}

impl WebhookOutcome {
    pub fn status(self) -> StatusCode {
        match self {
            WebhookOutcome::Handled | WebhookOutcome::Ignored => StatusCode::OK,
            WebhookOutcome::Rejected(_) | WebhookOutcome::Replayed => StatusCode::UNAUTHORIZED,
            WebhookOutcome::BadRequest => StatusCode::BAD_REQUEST,
            WebhookOutcome::NoHandler => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[derive(Deserialize)]
struct Delivery {
    token: String,
    event: String,
}

#[derive(Deserialize)]
struct WebhookClaims {
    evt: String,
    exp: i64,
    iat: Option<i64>,
    #[serde(default)]
    data: serde_json::Value,
}

pub(crate) struct WebhookReceiver {
    seen: moka::sync::Cache<[u8; 32], ()>,
}

impl WebhookReceiver {
    pub fn new() -> WebhookReceiver {
        WebhookReceiver {
            seen: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REPLAY_WINDOW + Duration::from_secs(LEEWAY_SECS))
                .build(),
        }
    }

    /// `true` the first time a token is presented.
    fn first_sighting(&self, token: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.seen.entry(digest).or_insert(()).is_fresh()
    }
}

fn id(value: &serde_json::Value) -> Option<&str> {
    value
        .as_str()
        .filter(|s| !s.is_empty() && s.len() <= MAX_ID_LEN)
}

impl Identity {
    /// Verifies one webhook body and dispatches it to the registered handler.
    pub async fn receive_webhook(&self, body: &[u8]) -> WebhookOutcome {
        let outcome = self.receive(body).await;
        match outcome {
            WebhookOutcome::Rejected(reason) => {
                tracing::warn!(%reason, "Hanko webhook refused");
            }
            WebhookOutcome::Replayed => tracing::warn!("Hanko webhook replayed; refused"),
            WebhookOutcome::BadRequest => tracing::warn!("Hanko webhook body malformed"),
            WebhookOutcome::NoHandler => {
                tracing::error!("Hanko webhook received before a handler was registered");
            }
            WebhookOutcome::Handled | WebhookOutcome::Ignored => {}
        }
        outcome
    }

    async fn receive(&self, body: &[u8]) -> WebhookOutcome {
        if body.len() > MAX_BODY {
            return WebhookOutcome::BadRequest;
        }
        let Ok(delivery) = serde_json::from_slice::<Delivery>(body) else {
            return WebhookOutcome::BadRequest;
        };
        let mut validation = rs256_validation();
        validation.sub = Some("hanko webhooks".into());
        validation.set_required_spec_claims(&["exp", "sub"]);
        let claims: WebhookClaims = match verify_jws(&self.jwks, &delivery.token, &validation).await
        {
            Ok(c) => c,
            Err(reason) => return WebhookOutcome::Rejected(reason),
        };
        let now = now();
        if claims.exp > now + REPLAY_WINDOW.as_secs() as i64
            || claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS as i64)
        {
            return WebhookOutcome::Rejected(Rejection::Expired);
        }
        if claims.evt != delivery.event {
            return WebhookOutcome::Rejected(Rejection::Malformed);
        }
        let Some(handler) = self.handler.get() else {
            return WebhookOutcome::NoHandler;
        };
        if !self.webhooks.first_sighting(&delivery.token) {
            return WebhookOutcome::Replayed;
        }
        let data = &claims.data;
        if claims.evt == "user.delete" {
            let Some(user_id) = id(&data["id"]) else {
                return WebhookOutcome::BadRequest;
            };
            tracing::info!(user_id, "Hanko reports user deleted");
            self.liveness.forget_user(user_id).await;
            handler.user_deleted(user_id).await;
            WebhookOutcome::Handled
        } else if claims.evt.starts_with("session.delete.") {
            let (Some(user_id), Some(session_id)) = (id(&data["user_id"]), id(&data["id"])) else {
                return WebhookOutcome::BadRequest;
            };
            tracing::info!(user_id, session_id, event = %claims.evt, "Hanko reports session ended");
            self.liveness.forget_session(user_id, session_id).await;
            handler.session_deleted(user_id, session_id).await;
            WebhookOutcome::Handled
        } else {
            WebhookOutcome::Ignored
        }
    }
}

impl FromRef<AppState> for Arc<Identity> {
    fn from_ref(state: &AppState) -> Arc<Identity> {
        state.identity.clone()
    }
}

/// `POST /hanko/webhook`, for any router state that yields the [`Identity`]
/// (`AppState` in the server, `Arc<Identity>` itself in tests).
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Arc<Identity>: FromRef<S>,
{
    Router::new()
        .route("/hanko/webhook", post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn receive(State(identity): State<Arc<Identity>>, body: Bytes) -> StatusCode {
    identity.receive_webhook(&body).await.status()
}
