//! `POST /logout`: ends the user's Hanko session and revokes their grants.
//!
//! Who is logged out comes only from the verified Hanko session (cookie or
//! bearer); the body carries nothing but the form's CSRF token and the
//! "everywhere" switch, which can only widen the revocation to the same
//! user's own grants.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use crate::config::LogoutScope;
use crate::identity::HankoSession;
use crate::server::AppState;
use crate::store::{Revoked, StoreResult};

#[derive(Debug, Default, Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
    /// Present on the account page's "Sign out everywhere" button.
    #[serde(default)]
    everywhere: Option<String>,
}

/// Whether a state-changing request comes from our own pages: `Origin` equal
/// to `public_url`, or else `Sec-Fetch-Site` `same-origin`/`none`. A request
/// with neither header is accepted only when it authenticates with a bearer
/// token, which browsers never attach on their own.
///
/// `Origin: null` says nothing: our pages send `Referrer-Policy: no-referrer`,
/// which makes browsers post their forms with exactly that.
pub fn same_origin(headers: &HeaderMap, public_url: &str) -> bool {
    if let Some(origin) = headers.get(header::ORIGIN).filter(|o| *o != "null") {
        return origin.as_bytes() == public_url.as_bytes();
    }
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    has_bearer(headers)
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
}

/// Whether the body is an HTML form post (as opposed to `fetch`/JSON).
pub fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// `Set-Cookie` that removes the Hanko session cookie.
pub fn clear_cookie(state: &AppState) -> HeaderValue {
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let value = format!(
        "{}=; Max-Age=0; Path=/; SameSite=Lax{secure}",
        state.config.hanko.cookie_name
    );
    HeaderValue::from_str(&value).expect("cookie names are validated as tokens")
}

fn json(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        axum::Json(body),
    )
        .into_response()
}

fn store_unavailable(e: &crate::store::StoreError) -> Response {
    tracing::error!(error = %e, "logout: store unavailable");
    let mut r = json(
        StatusCode::SERVICE_UNAVAILABLE,
        serde_json::json!({"error": "temporarily_unavailable"}),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// The verified session of a request, if any.
pub async fn session_of(state: &AppState, headers: &HeaderMap) -> Option<HankoSession> {
    let token = state.identity.token_from_headers(headers)?;
    match state.identity.verify(token).await {
        Ok(s) => Some(s),
        Err(why) => {
            tracing::debug!(%why, "session refused");
            None
        }
    }
}

/// Revokes what a logout of `session` covers and tells every instance.
pub async fn revoke_for_logout(
    state: &AppState,
    session: &HankoSession,
    scope: LogoutScope,
) -> StoreResult<Revoked> {
    let revoked = match scope {
        LogoutScope::User => state.store.revoke_user(&session.user_id).await?,
        LogoutScope::Session => state.store.revoke_session(&session.session_id).await?,
    };
    super::announce(state, &revoked).await;
    tracing::info!(
        user = %session.user_id,
        grants = revoked.grants.len(),
        tokens = revoked.tokens,
        ?scope,
        "logout revoked grants"
    );
    Ok(revoked)
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let form = is_form(&headers);
    if !same_origin(&headers, &state.config.public_url) {
        return json(
            StatusCode::FORBIDDEN,
            serde_json::json!({"error": "cross_site_request"}),
        );
    }
    let fields: LogoutForm = if form {
        match serde_urlencoded::from_bytes(&body) {
            Ok(f) => f,
            Err(_) => {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "invalid_request"}),
                );
            }
        }
    } else {
        LogoutForm::default()
    };

    let Some(session) = session_of(&state, &headers).await else {
        let mut r = if form {
            Redirect::to("/login").into_response()
        } else {
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_session"}),
            )
        };
        r.headers_mut()
            .insert(header::SET_COOKIE, clear_cookie(&state));
        return r;
    };

    if form {
        match super::csrf::verify(&state, &session.session_id, &fields.csrf).await {
            Ok(true) => {}
            Ok(false) => {
                return json(
                    StatusCode::FORBIDDEN,
                    serde_json::json!({"error": "invalid_csrf_token"}),
                );
            }
            Err(e) => return store_unavailable(&e),
        }
    }

    let scope = if fields.everywhere.is_some() {
        LogoutScope::User
    } else {
        state.config.revocation.on_logout
    };
    let revoked = match revoke_for_logout(&state, &session, scope).await {
        Ok(r) => r,
        Err(e) => return store_unavailable(&e),
    };

    if let Some(token) = state.identity.token_from_headers(&headers) {
        state.revocation.end_hanko_session(token).await;
    }

    let mut r = if form {
        Redirect::to("/login").into_response()
    } else {
        json(
            StatusCode::OK,
            serde_json::json!({"revoked_grants": revoked.grants.len()}),
        )
    };
    r.headers_mut()
        .insert(header::SET_COOKIE, clear_cookie(&state));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let us = "https://mcp.example.com";
        assert!(same_origin(&headers(&[("origin", us)]), us));
        assert!(!same_origin(
            &headers(&[("origin", "https://evil.example")]),
            us
        ));
        assert!(!same_origin(
            &headers(&[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "same-origin")
            ]),
            us
        ));
        assert!(same_origin(
            &headers(&[("sec-fetch-site", "same-origin")]),
            us
        ));
        assert!(same_origin(&headers(&[("sec-fetch-site", "none")]), us));
        assert!(!same_origin(
            &headers(&[("sec-fetch-site", "cross-site")]),
            us
        ));
        assert!(!same_origin(&headers(&[]), us));
        assert!(same_origin(
            &headers(&[("origin", "null"), ("sec-fetch-site", "same-origin")]),
            us
        ));
        assert!(!same_origin(&headers(&[("origin", "null")]), us));
        assert!(same_origin(
            &headers(&[("authorization", "Bearer x.y.z")]),
            us
        ));
        assert!(!same_origin(
            &headers(&[
                ("authorization", "Bearer x"),
                ("sec-fetch-site", "cross-site")
            ]),
            us
        ));
    }
}
