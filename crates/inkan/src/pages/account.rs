//! The account page: the apps a person has connected, with a way to
//! disconnect each one and to sign out everywhere. Plain forms; works
//! without JavaScript. The script only notices a Hanko session that ends
//! while the page is open and logs out here too.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde::Deserialize;

use crate::revocation::logout::{is_form, same_origin, session_of};
use crate::server::AppState;
use crate::store::{Grant, StoreError};

const LOGIN_FOR_ACCOUNT: &str = "/login?return_to=/account";

/// Listens for the end of the Hanko session in this browser and calls
/// `POST /logout` (best effort). Reads the Elements URL and Hanko API URL
/// from `data-hanko-elements` and `data-hanko-api` on `<body>`, so that the
/// script itself is constant and can run under a CSP nonce.
pub const SESSION_END_SCRIPT: &str = r#"
const body = document.body.dataset;
const logout = () => fetch("/logout", { method: "POST", credentials: "same-origin" })
  .catch(() => {})
  .finally(() => location.assign(body.afterLogout || "/login"));
document.addEventListener("hanko-session-expired", logout);
document.addEventListener("hanko-user-logged-out", logout);
if (body.hankoElements && body.hankoApi) {
  import(body.hankoElements).then(({ register }) => register(body.hankoApi)).catch(() => {});
}
"#;

struct AppRow {
    grant_id: String,
    client_name: String,
    redirect_host: String,
    services: String,
    scopes: String,
    created: String,
    last_used: String,
}

#[derive(Template)]
#[template(path = "account.html")]
struct AccountPage {
    who: String,
    apps: Vec<AppRow>,
    csrf: String,
    nonce: String,
    script: &'static str,
    elements_url: String,
    hanko_api: String,
}

fn when(t: i64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| d.format(&fmt).ok())
        .unwrap_or_else(|| "unknown".into())
}

fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

/// The same headers as the other pages: never framed, never cached.
fn secure(mut r: Response, nonce: Option<&str>, state: &AppState) -> Response {
    let csp = match nonce {
        Some(n) => format!(
            "default-src 'none'; script-src 'nonce-{n}' {}; connect-src 'self' {}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            origin_of(&state.config.hanko.elements_url),
            origin_of(&state.config.hanko.api_url),
        ),
        None => "default-src 'none'; frame-ancestors 'none'; base-uri 'none'".into(),
    };
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

fn plain(status: StatusCode, text: &'static str, state: &AppState) -> Response {
    secure((status, text).into_response(), None, state)
}

fn unavailable(e: &StoreError, state: &AppState) -> Response {
    tracing::error!(error = %e, "account page: store unavailable");
    let mut r = plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "The service is briefly unavailable. Try again in a moment.",
        state,
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

async fn row(state: &AppState, g: Grant) -> Result<AppRow, StoreError> {
    let client = state.store.get_client(&g.client_id).await?;
    let (client_name, redirect_uris) = match client {
        Some(c) => (c.client_name.unwrap_or(c.client_id), c.redirect_uris),
        None => (g.client_id.clone(), Vec::new()),
    };
    let mut hosts: Vec<String> = redirect_uris
        .iter()
        .filter_map(|u| url::Url::parse(u).ok()?.host_str().map(str::to_owned))
        .collect();
    hosts.sort();
    hosts.dedup();
    let services = g
        .services
        .iter()
        .map(|id| {
            state
                .config
                .service(id)
                .map_or_else(|| id.clone(), |s| s.name.clone())
        })
        .collect::<Vec<_>>()
        .join(", ");
    Ok(AppRow {
        client_name,
        redirect_host: if hosts.is_empty() {
            "unknown".into()
        } else {
            hosts.join(", ")
        },
        services,
        scopes: g.scopes.join(" "),
        created: when(g.created_at),
        last_used: g.last_used.map_or_else(|| "never".into(), when),
        grant_id: g.grant_id,
    })
}

/// `GET /account`.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(session) = session_of(&state, &headers).await else {
        return secure(
            Redirect::to(LOGIN_FOR_ACCOUNT).into_response(),
            None,
            &state,
        );
    };
    let grants = match state.store.list_user_grants(&session.user_id).await {
        Ok(g) => g,
        Err(e) => return unavailable(&e, &state),
    };
    let mut apps = Vec::with_capacity(grants.len());
    for g in grants {
        match row(&state, g).await {
            Ok(r) => apps.push(r),
            Err(e) => return unavailable(&e, &state),
        }
    }
    let csrf = match state
        .revocation
        .csrf
        .token(state.store.as_ref(), &session.session_id)
        .await
    {
        Ok(t) => t,
        Err(e) => return unavailable(&e, &state),
    };
    let mut raw = [0u8; 16];
    rand::rng().fill_bytes(&mut raw);
    let nonce = URL_SAFE_NO_PAD.encode(raw);
    let page = AccountPage {
        who: session
            .email
            .clone()
            .or(session.username.clone())
            .unwrap_or(session.user_id),
        apps,
        csrf,
        nonce: nonce.clone(),
        script: SESSION_END_SCRIPT,
        elements_url: state.config.hanko.elements_url.clone(),
        hanko_api: state.config.hanko.api_url.clone(),
    };
    match page.render() {
        Ok(html) => secure(Html(html).into_response(), Some(&nonce), &state),
        Err(e) => {
            tracing::error!(error = %e, "account page failed to render");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "Internal error.", &state)
        }
    }
}

#[derive(Deserialize)]
struct RevokeForm {
    grant: String,
    csrf: String,
}

/// `POST /account/revoke`: disconnects one of the signed-in user's apps.
pub async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    if !same_origin(&headers, &state.config.public_url) {
        return plain(StatusCode::FORBIDDEN, "Cross-site request refused.", &state);
    }
    if !is_form(&headers) {
        return plain(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Expected a form.",
            &state,
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<RevokeForm>(&body) else {
        return plain(StatusCode::BAD_REQUEST, "Malformed form.", &state);
    };
    let Some(session) = session_of(&state, &headers).await else {
        return secure(
            Redirect::to(LOGIN_FOR_ACCOUNT).into_response(),
            None,
            &state,
        );
    };
    match state
        .revocation
        .csrf
        .verify(state.store.as_ref(), &session.session_id, &form.csrf)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            return plain(
                StatusCode::FORBIDDEN,
                "This form has expired. Reload the page and try again.",
                &state,
            );
        }
        Err(e) => return unavailable(&e, &state),
    }
    // Someone else's grant and a missing one look the same: no probing.
    let not_found = || plain(StatusCode::NOT_FOUND, "No such app.", &state);
    if form.grant.len() > 64 {
        return not_found();
    }
    match state.store.get_grant(&form.grant).await {
        Ok(Some(g)) if g.user_id == session.user_id => {}
        Ok(_) => return not_found(),
        Err(e) => return unavailable(&e, &state),
    }
    match state.store.revoke_grant(&form.grant).await {
        Ok(revoked) => {
            crate::revocation::announce(&state, &revoked).await;
            tracing::info!(user = %session.user_id, grants = revoked.grants.len(), "app disconnected from the account page");
            secure(Redirect::to("/account").into_response(), None, &state)
        }
        Err(e) => unavailable(&e, &state),
    }
}
