//! Token revocation (RFC 7009) and introspection (RFC 7662).
//!
//! A refresh token's grant id is read from the token itself; the store is
//! asked only about grants of the authenticated client, so one client can
//! neither revoke nor inspect another's tokens.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::client::ClientForm;
use super::{OAuthError, now};
use crate::server::AppState;
use crate::store::token::grant_id_of;
use crate::store::{ClientAuthMethod, Revoked, TokenHash, TokenKind};

fn no_store(value: serde_json::Value) -> Response {
    let mut response = axum::Json(value).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `POST /oauth/revoke`: a refresh token revokes its whole grant, an access
/// token only itself. Unknown tokens and other clients' tokens are answered
/// with 200 as well (RFC 7009 §2.2), so the answer reveals nothing.
pub async fn revoke(
    State(state): State<AppState>,
    ClientForm { client, params }: ClientForm,
) -> Result<Response, OAuthError> {
    let token = params.require("token")?;

    if let Some(grant_id) = grant_id_of(TokenKind::Refresh, token) {
        let owned = state
            .store
            .get_grant(grant_id)
            .await?
            .is_some_and(|g| g.client_id == client.client_id);
        if owned {
            let revoked = state.store.revoke_grant(grant_id).await?;
            crate::revocation::announce(&state, &revoked).await;
        }
    } else if let Some(grant_id) = grant_id_of(TokenKind::Access, token) {
        let owned = state
            .store
            .get_grant(grant_id)
            .await?
            .is_some_and(|g| g.client_id == client.client_id);
        if owned
            && state
                .store
                .revoke_access_token(grant_id, &TokenHash::of(token))
                .await?
        {
            let revoked = Revoked {
                grants: vec![grant_id.to_string()],
                tokens: 1,
            };
            crate::revocation::announce(&state, &revoked).await;
        }
    }
    Ok(no_store(json!({})))
}

/// `POST /oauth/introspect`: for confidential clients, about their own access
/// tokens. Refresh tokens are reported inactive: checking one without
/// rotating it is not something the store offers. Store trouble is a 503,
/// never `active: false`, which would log users out.
pub async fn introspect(
    State(state): State<AppState>,
    ClientForm { client, params }: ClientForm,
) -> Result<Response, OAuthError> {
    if client.auth_method == ClientAuthMethod::None {
        return Err(OAuthError::invalid_client(
            "introspection is for confidential clients",
            false,
        ));
    }
    let token = params.require("token")?;
    let inactive = || no_store(json!({ "active": false }));
    let Some(grant_id) = grant_id_of(TokenKind::Access, token) else {
        return Ok(inactive());
    };
    let Some(view) = state
        .store
        .lookup_access(grant_id, &TokenHash::of(token))
        .await?
    else {
        return Ok(inactive());
    };
    let now = now();
    let grant = &view.grant;
    if view.access_expires_at <= now || grant.client_id != client.client_id {
        return Ok(inactive());
    }
    // The store keeps expiries, not issue times; for tokens not cut short by
    // the session this is exact.
    let access_ttl = state.config.tokens.access_ttl.as_secs() as i64;
    let issued_at = (view.access_expires_at - access_ttl).max(grant.created_at);
    Ok(no_store(json!({
        "active": true,
        "scope": grant.scopes.join(" "),
        "client_id": grant.client_id,
        "sub": grant.user_id,
        "aud": grant.resource,
        "exp": view.access_expires_at,
        "iat": issued_at,
        "token_type": "Bearer",
    })))
}
