//! The token endpoint, `POST /oauth/token`: authorization codes (with PKCE)
//! and refresh tokens become an opaque access token and a rotating refresh
//! token.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::client::ClientForm;
use super::{OAuthError, Params, now};
use crate::identity::Liveness;
use crate::server::AppState;
use crate::store::token::{grant_id_of, mint, successor};
use crate::store::{
    Client, CodeOutcome, Grant, RotateOutcome, Rotation, TokenHash, TokenKind, TokenPair,
};

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: i64,
    refresh_token: &'a str,
    scope: String,
}

fn respond(access: &str, refresh: &str, access_expires_at: i64, grant: &Grant) -> Response {
    let body = TokenResponse {
        access_token: access,
        token_type: "Bearer",
        expires_in: (access_expires_at - now()).max(0),
        refresh_token: refresh,
        scope: grant.scopes.join(" "),
    };
    let mut response = axum::Json(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// Expiries of a fresh token pair: the configured lifetimes, never past the
/// Hanko session when tokens are bound to it.
fn expiries(state: &AppState, grant: &Grant, now: i64) -> Result<(i64, i64), OAuthError> {
    let tokens = &state.config.tokens;
    let mut access = now + tokens.access_ttl.as_secs() as i64;
    let mut refresh = now + tokens.refresh_ttl.as_secs() as i64;
    if tokens.bind_to_session {
        access = access.min(grant.session_exp);
        refresh = refresh.min(grant.session_exp);
    }
    if access <= now {
        return Err(OAuthError::InvalidGrant(
            "the sign-in session behind this grant has ended".into(),
        ));
    }
    Ok((access, refresh))
}

/// A `resource` sent with a token request must name the grant's resource.
fn check_resource(params: &Params, grant: &Grant) -> Result<(), OAuthError> {
    match params.get("resource") {
        Some(r) if r.strip_suffix('/').unwrap_or(r) != grant.resource => Err(
            OAuthError::InvalidTarget("resource differs from the authorized resource".into()),
        ),
        _ => Ok(()),
    }
}

pub async fn token(
    State(state): State<AppState>,
    ClientForm { client, params }: ClientForm,
) -> Result<Response, OAuthError> {
    match params.get("grant_type") {
        Some("authorization_code") => exchange_code(&state, &client, &params).await,
        Some("refresh_token") => refresh(&state, &client, &params).await,
        Some(other) => Err(OAuthError::UnsupportedGrantType(format!(
            "grant_type '{other}' is not supported"
        ))),
        None => Err(OAuthError::InvalidRequest("missing grant_type".into())),
    }
}

async fn exchange_code(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<Response, OAuthError> {
    let code = params.require("code")?;
    let verifier = params.require("code_verifier")?;
    if !(43..=128).contains(&verifier.len())
        || !verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
    {
        return Err(OAuthError::InvalidRequest(
            "code_verifier must be 43 to 128 unreserved characters".into(),
        ));
    }
    let invalid = || OAuthError::InvalidGrant("invalid, expired or used authorization code".into());
    let grant_id = grant_id_of(TokenKind::Code, code).ok_or_else(invalid)?;
    let now = now();
    let pending = match state
        .store
        .consume_code(grant_id, &TokenHash::of(code), now)
        .await?
    {
        CodeOutcome::Fresh(p) => p,
        CodeOutcome::Replayed { grant_id } => {
            // A code used twice was intercepted: whatever it bought is void.
            let revoked = state.store.revoke_grant(&grant_id).await?;
            crate::revocation::announce(state, &revoked).await;
            tracing::warn!(grant_id, "authorization code replayed; grant revoked");
            return Err(invalid());
        }
        CodeOutcome::Unknown => return Err(invalid()),
    };
    if pending.expires_at < now || pending.grant.client_id != client.client_id {
        return Err(invalid());
    }
    let redirect_ok = match params.get("redirect_uri") {
        Some(r) => r == pending.redirect_uri,
        // Only a request that could omit it (one registered URI) may omit it here.
        None => client.redirect_uris == [pending.redirect_uri.clone()],
    };
    if !redirect_ok {
        return Err(OAuthError::InvalidGrant(
            "redirect_uri differs from the authorization request".into(),
        ));
    }
    let computed = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    if !bool::from(computed.as_bytes().ct_eq(pending.code_challenge.as_bytes())) {
        return Err(OAuthError::InvalidGrant(
            "code_verifier does not match the code_challenge".into(),
        ));
    }
    check_resource(params, &pending.grant)?;

    let grant = pending.grant;
    let (access_exp, refresh_exp) = expiries(state, &grant, now)?;
    let access = mint(TokenKind::Access, &grant.grant_id);
    let refresh = mint(TokenKind::Refresh, &grant.grant_id);
    let pair = TokenPair {
        access: access.hash,
        access_expires_at: access_exp,
        refresh: refresh.hash,
        refresh_expires_at: refresh_exp,
    };
    let grant = Grant {
        expires_at: refresh_exp,
        ..grant
    };
    if !state.store.create_grant(&grant, &pair).await? {
        // Revoked (logout, user deletion) while the code was pending.
        return Err(invalid());
    }
    Ok(respond(&access.token, &refresh.token, access_exp, &grant))
}

/// A grant whose Hanko session has ended (logout, admin revocation, user
/// deletion) is revoked at its next refresh. When the admin API cannot be
/// reached the refresh proceeds: tokens stay bound to the session's `exp`,
/// and webhooks deliver session ends as well.
async fn session_still_alive(state: &AppState, grant: &Grant) -> Result<(), OAuthError> {
    match state
        .identity
        .session_alive(&grant.user_id, &grant.session_id)
        .await
    {
        Ok(Liveness::Gone) => {
            let revoked = state.store.revoke_grant(&grant.grant_id).await?;
            crate::revocation::announce(state, &revoked).await;
            Err(OAuthError::InvalidGrant(
                "the sign-in session behind this grant has ended".into(),
            ))
        }
        Ok(Liveness::Alive | Liveness::NotChecked) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, grant_id = %grant.grant_id, "session liveness unknown; refreshing anyway");
            Ok(())
        }
    }
}

async fn refresh(
    state: &AppState,
    client: &Client,
    params: &Params,
) -> Result<Response, OAuthError> {
    let presented = params.require("refresh_token")?;
    let invalid = || OAuthError::InvalidGrant("invalid, expired or revoked refresh token".into());
    if !client.grant_types.iter().any(|g| g == "refresh_token") {
        return Err(OAuthError::UnauthorizedClient(
            "this client is not registered for the refresh_token grant".into(),
        ));
    }
    let grant_id = grant_id_of(TokenKind::Refresh, presented).ok_or_else(invalid)?;
    let grant = state.store.get_grant(grant_id).await?.ok_or_else(invalid)?;
    // Checked before rotating, so another client cannot burn the token.
    if grant.client_id != client.client_id {
        return Err(invalid());
    }
    check_resource(params, &grant)?;
    if state.config.hanko.admin_api_url.is_some() {
        session_still_alive(state, &grant).await?;
    }
    if let Some(scope) = params.get("scope") {
        let unknown_to_inkan = |s: &str| {
            !state
                .config
                .services
                .iter()
                .any(|svc| svc.scopes.iter().any(|k| k == s))
        };
        if let Some(extra) = scope
            .split_ascii_whitespace()
            .find(|s| !unknown_to_inkan(s) && !grant.scopes.iter().any(|g| g == s))
        {
            return Err(OAuthError::InvalidScope(format!(
                "scope '{extra}' was not granted"
            )));
        }
    }
    let now = now();
    let (access_exp, refresh_exp) = expiries(state, &grant, now)?;
    let (access, next_refresh) = successor(presented, grant_id);
    let rotation = Rotation {
        presented: TokenHash::of(presented),
        successor: TokenPair {
            access: access.hash,
            access_expires_at: access_exp,
            refresh: next_refresh.hash,
            refresh_expires_at: refresh_exp,
        },
        now,
        grace_secs: state.config.tokens.refresh_grace.as_secs() as i64,
    };
    match state.store.rotate_refresh(grant_id, &rotation).await? {
        RotateOutcome::Rotated { grant } => {
            // The previous access token stopped being the grant's current one;
            // do not let this instance's cache keep accepting it.
            state
                .gateway
                .invalidate_grants(std::slice::from_ref(&grant.grant_id));
            Ok(respond(
                &access.token,
                &next_refresh.token,
                access_exp,
                &grant,
            ))
        }
        RotateOutcome::Repeated {
            grant,
            access_expires_at,
            ..
        } => Ok(respond(
            &access.token,
            &next_refresh.token,
            access_expires_at,
            &grant,
        )),
        RotateOutcome::Reused { revoked } => {
            crate::revocation::announce(state, &revoked).await;
            tracing::warn!(
                grant_id,
                "refresh token reused after rotation; grant revoked"
            );
            Err(invalid())
        }
        RotateOutcome::Expired | RotateOutcome::Unknown => Err(invalid()),
    }
}
