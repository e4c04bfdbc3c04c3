//! Hanko's HTTP surface: public API, admin API (as on Hanko Cloud, under
//! `/admin`) and the development sign-in that stands in for the login flows.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, Request, State as AxumState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::state::{SessionClaims, State, unix_rfc3339};

type Shared = AxumState<Arc<State>>;

/// Largest request body any route reads.
const BODY_LIMIT: usize = 64 * 1024;

pub(crate) fn router(state: Arc<State>) -> Router {
    let admin = Router::new()
        .route("/users", post(admin_create_user))
        .route("/users/{id}", get(admin_get_user).delete(admin_delete_user))
        .route("/users/{id}/sessions", get(admin_list_sessions))
        .route(
            "/users/{id}/sessions/{session_id}",
            delete(admin_delete_session),
        )
        .route("/sessions", post(admin_create_session))
        .route_layer(middleware::from_fn_with_state(state.clone(), admin_auth));
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(|origin, _| {
            is_loopback_origin(origin)
        }))
        .allow_methods([Method::POST])
        .allow_headers([header::CONTENT_TYPE])
        .expose_headers([header::HeaderName::from_static("x-auth-token")]);
    Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/sessions/validate", get(validate_get).post(validate_post))
        .route("/logout", post(logout))
        .route("/me", get(me))
        .route("/dev/sign-in", post(dev_sign_in).layer(cors))
        .nest("/admin", admin)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), availability))
        .with_state(state)
}

fn error(status: StatusCode) -> Response {
    let message = status.canonical_reason().unwrap_or("Error");
    (
        status,
        Json(json!({"code": status.as_u16(), "message": message})),
    )
        .into_response()
}

async fn availability(AxumState(state): Shared, request: Request, next: Next) -> Response {
    if state.available.load(Ordering::SeqCst) {
        next.run(request).await
    } else {
        error(StatusCode::SERVICE_UNAVAILABLE)
    }
}

async fn admin_auth(AxumState(state): Shared, request: Request, next: Next) -> Response {
    if let Some(key) = &state.config.admin_api_key {
        let presented = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(key.as_bytes())) {
            return error(StatusCode::UNAUTHORIZED);
        }
    }
    next.run(request).await
}

async fn jwks(AxumState(state): Shared) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    ([(header::CACHE_CONTROL, "max-age=600")], Json(state.jwks())).into_response()
}

/// `Authorization: Bearer` first, then the `hanko` cookie, as Hanko reads it.
fn session_token(headers: &HeaderMap) -> Option<&str> {
    if let Some(bearer) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == "hanko")
        .map(|(_, value)| value)
}

fn validation_body(claims: Option<SessionClaims>) -> Json<Value> {
    let Some(c) = claims else {
        return Json(json!({"is_valid": false}));
    };
    let mut out_claims = json!({
        "subject": c.sub,
        "issued_at": unix_rfc3339(c.iat),
        "expiration": unix_rfc3339(c.exp),
        "audience": c.aud,
        "session_id": c.session_id,
    });
    if let Some(email) = c.email {
        out_claims["email"] = email;
    }
    Json(json!({
        "is_valid": true,
        "claims": out_claims,
        "expiration_time": unix_rfc3339(c.exp),
        "user_id": c.sub,
    }))
}

async fn validate_get(AxumState(state): Shared, headers: HeaderMap) -> Json<Value> {
    validation_body(session_token(&headers).and_then(|t| state.validate(t, false)))
}

#[derive(Deserialize)]
struct ValidateBody {
    session_token: Option<String>,
}

async fn validate_post(AxumState(state): Shared, body: Bytes) -> Response {
    let token = serde_json::from_slice::<ValidateBody>(&body)
        .ok()
        .and_then(|b| b.session_token)
        .filter(|t| !t.is_empty());
    match token {
        Some(t) => validation_body(state.validate(&t, true)).into_response(),
        None => (
            StatusCode::BAD_REQUEST,
            Json(json!({"code": 400, "message": "session_token is required"})),
        )
            .into_response(),
    }
}

async fn logout(AxumState(state): Shared, headers: HeaderMap) -> Response {
    let Some(claims) = session_token(&headers).and_then(|t| state.validate(t, false)) else {
        return error(StatusCode::UNAUTHORIZED);
    };
    if let Some(session) = state.delete_session(&claims.sub, &claims.session_id) {
        let state = state.clone();
        tokio::spawn(async move {
            state
                .deliver("session.delete.explicit.logout", session.to_json())
                .await;
        });
    }
    (
        StatusCode::NO_CONTENT,
        [(
            header::SET_COOKIE,
            "hanko=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; SameSite=Lax",
        )],
    )
        .into_response()
}

async fn me(AxumState(state): Shared, headers: HeaderMap) -> Response {
    let user = session_token(&headers)
        .and_then(|t| state.validate(t, false))
        .and_then(|c| state.user(&c.sub));
    let Some(user) = user else {
        return error(StatusCode::UNAUTHORIZED);
    };
    let mut body = user.to_json();
    body["user_id"] = json!(user.id);
    Json(body).into_response()
}

#[derive(Deserialize)]
struct NewEmail {
    address: String,
    #[serde(default)]
    is_primary: bool,
}

#[derive(Deserialize)]
struct NewUser {
    emails: Vec<NewEmail>,
}

fn valid_email(email: &str) -> bool {
    email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

async fn admin_create_user(AxumState(state): Shared, body: Bytes) -> Response {
    let Ok(new) = serde_json::from_slice::<NewUser>(&body) else {
        return error(StatusCode::BAD_REQUEST);
    };
    let email = new
        .emails
        .iter()
        .find(|e| e.is_primary)
        .or(new.emails.first());
    let Some(email) = email.filter(|e| valid_email(&e.address)) else {
        return error(StatusCode::BAD_REQUEST);
    };
    match state.create_user(&email.address) {
        Ok(user) => Json(user.to_json()).into_response(),
        Err(_) => error(StatusCode::CONFLICT),
    }
}

async fn admin_get_user(AxumState(state): Shared, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return error(StatusCode::BAD_REQUEST);
    }
    match state.user(&id) {
        Some(user) => Json(user.to_json()).into_response(),
        None => error(StatusCode::NOT_FOUND),
    }
}

async fn admin_delete_user(AxumState(state): Shared, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return error(StatusCode::BAD_REQUEST);
    }
    match state.delete_user(&id) {
        Some(user) => {
            let state = state.clone();
            tokio::spawn(async move { state.deliver("user.delete", user.to_json()).await });
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND),
    }
}

#[derive(Deserialize)]
struct NewSession {
    user_id: String,
    #[serde(default)]
    user_agent: Option<String>,
    #[serde(default)]
    ip_address: Option<String>,
}

async fn admin_create_session(AxumState(state): Shared, body: Bytes) -> Response {
    let Ok(new) = serde_json::from_slice::<NewSession>(&body) else {
        return error(StatusCode::BAD_REQUEST);
    };
    if !valid_id(&new.user_id) {
        return error(StatusCode::BAD_REQUEST);
    }
    match state.create_session(
        &new.user_id,
        state.config.session_lifetime,
        new.user_agent.as_deref().unwrap_or(""),
        new.ip_address.as_deref().unwrap_or(""),
    ) {
        Ok(token) => Json(json!({"session_token": token.jwt})).into_response(),
        Err(_) => error(StatusCode::NOT_FOUND),
    }
}

async fn admin_list_sessions(AxumState(state): Shared, Path(id): Path<String>) -> Response {
    if !valid_id(&id) {
        return error(StatusCode::BAD_REQUEST);
    }
    match state.sessions_of(&id) {
        Some(list) => Json(list.iter().map(|s| s.to_json()).collect::<Vec<_>>()).into_response(),
        None => error(StatusCode::NOT_FOUND),
    }
}

async fn admin_delete_session(
    AxumState(state): Shared,
    Path((id, session_id)): Path<(String, String)>,
) -> Response {
    if !valid_id(&id) || !valid_id(&session_id) {
        return error(StatusCode::BAD_REQUEST);
    }
    match state.delete_session(&id, &session_id) {
        Some(session) => {
            let state = state.clone();
            tokio::spawn(async move {
                state
                    .deliver("session.delete.admin.revoke", session.to_json())
                    .await;
            });
            StatusCode::NO_CONTENT.into_response()
        }
        None => error(StatusCode::NOT_FOUND),
    }
}

#[derive(Deserialize)]
struct SignIn {
    email: String,
}

/// Stands in for Hanko's passkey flows: the email is the whole credential.
async fn dev_sign_in(AxumState(state): Shared, headers: HeaderMap, body: Bytes) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let sign_in = if is_json {
        serde_json::from_slice::<SignIn>(&body).ok()
    } else {
        serde_urlencoded::from_bytes::<SignIn>(&body).ok()
    };
    let Some(email) = sign_in.map(|s| s.email.trim().to_string()) else {
        return error(StatusCode::BAD_REQUEST);
    };
    if !valid_email(&email) {
        return error(StatusCode::BAD_REQUEST);
    }
    let user = match state.user_by_email(&email) {
        Some(u) => u,
        None => match state.create_user(&email) {
            Ok(u) => u,
            Err(_) => return error(StatusCode::CONFLICT),
        },
    };
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token = match state.create_session(
        &user.id,
        state.config.session_lifetime,
        user_agent,
        "127.0.0.1",
    ) {
        Ok(t) => t,
        Err(_) => return error(StatusCode::INTERNAL_SERVER_ERROR),
    };
    let mut response = Json(json!({
        "session_token": token.jwt,
        "expires_at": unix_rfc3339(token.expires_at),
        "user_id": user.id,
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&token.jwt) {
        response.headers_mut().insert("x-auth-token", v);
    }
    response
}

/// `http(s)://localhost`, `127.x.x.x` or `[::1]`, any port.
fn is_loopback_origin(origin: &HeaderValue) -> bool {
    let Some(rest) = origin.to_str().ok().and_then(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
    }) else {
        return false;
    };
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split_once(']').map(|(h, _)| h).unwrap_or("")
    } else {
        rest.split(':').next().unwrap_or("")
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_only() {
        for ok in [
            "http://localhost:8080",
            "http://127.0.0.1:3000",
            "https://[::1]:9",
            "http://localhost",
        ] {
            assert!(is_loopback_origin(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in [
            "http://example.com",
            "http://localhost.evil.com",
            "http://10.0.0.1:80",
            "null",
        ] {
            assert!(!is_loopback_origin(&HeaderValue::from_static(bad)), "{bad}");
        }
    }

    #[test]
    fn emails_are_checked() {
        assert!(valid_email("a@b.c"));
        assert!(!valid_email("nobody"));
        assert!(!valid_email("a b@c"));
        assert!(!valid_email("@c"));
    }
}
