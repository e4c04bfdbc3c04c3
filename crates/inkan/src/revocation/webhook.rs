//! Hanko webhooks, already verified by [`crate::identity`], turned into
//! revocations: `user.delete` revokes (and thereby purges) everything of the
//! user, `session.delete.*` the grants made under that session.
//!
//! Idempotent: a replayed or duplicated event finds nothing left to revoke.

use std::sync::Weak;

use async_trait::async_trait;

use crate::identity::WebhookHandler;
use crate::server::{AppState, Shared};
use crate::store::{Revoked, StoreResult};

/// Holds the app state weakly: the identity part that calls it is itself
/// owned by the state.
pub struct WebhookRevoker(pub Weak<Shared>);

impl WebhookRevoker {
    async fn run(
        &self,
        what: &str,
        id: &str,
        revoke: impl AsyncFnOnce(&AppState) -> StoreResult<Revoked>,
    ) {
        let Some(shared) = self.0.upgrade() else {
            return;
        };
        let state = AppState(shared);
        match revoke(&state).await {
            Ok(revoked) => {
                super::announce(&state, &revoked).await;
                tracing::info!(
                    what,
                    id,
                    grants = revoked.grants.len(),
                    tokens = revoked.tokens,
                    "Hanko webhook revoked grants"
                );
            }
            // Hanko does not retry; the session-bound expiry and liveness
            // checks still end these grants.
            Err(e) => tracing::error!(error = %e, what, id, "Hanko webhook: revocation failed"),
        }
    }
}

#[async_trait]
impl WebhookHandler for WebhookRevoker {
    async fn user_deleted(&self, user_id: &str) {
        self.run("user deleted", user_id, async |s: &AppState| {
            s.store.revoke_user(user_id).await
        })
        .await;
    }

    async fn session_deleted(&self, _user_id: &str, session_id: &str) {
        self.run("session ended", session_id, async |s: &AppState| {
            s.store.revoke_session(session_id).await
        })
        .await;
    }
}
