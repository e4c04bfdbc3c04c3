//! The account page: the apps a person has connected, with a way to
//! disconnect each one and to sign out everywhere. Plain forms; works
//! without JavaScript. The script only notices a Hanko session that ends
//! while the page is open and logs out here too.

use askama::Template;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::{Csp, error_page, nonce, page as render_page};
use crate::revocation::csrf;
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

fn unavailable(e: &StoreError) -> Response {
    tracing::error!(error = %e, "account page: store unavailable");
    let mut r = error_page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Briefly unavailable",
        "The service is briefly unavailable. Try again in a moment.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

fn to_login() -> Response {
    Redirect::to(LOGIN_FOR_ACCOUNT).into_response()
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
        return to_login();
    };
    let grants = match state.store.list_user_grants(&session.user_id).await {
        Ok(g) => g,
        Err(e) => return unavailable(&e),
    };
    let mut apps = Vec::with_capacity(grants.len());
    for g in grants {
        match row(&state, g).await {
            Ok(r) => apps.push(r),
            Err(e) => return unavailable(&e),
        }
    }
    let csrf = match csrf::token(&state, &session.session_id).await {
        Ok(t) => t,
        Err(e) => return unavailable(&e),
    };
    let nonce = nonce();
    let hanko = &state.config.hanko;
    let html = AccountPage {
        who: session
            .email
            .clone()
            .or(session.username.clone())
            .unwrap_or(session.user_id),
        apps,
        csrf,
        nonce: nonce.clone(),
        script: SESSION_END_SCRIPT,
        elements_url: hanko.elements_url.clone(),
        hanko_api: hanko.api_url.clone(),
    }
    .render();
    match html {
        Ok(html) => {
            let elements = origin_of(&hanko.elements_url);
            let api = origin_of(&hanko.api_url);
            render_page(
                StatusCode::OK,
                html,
                &nonce,
                &Csp {
                    script_src: &[elements.as_str()],
                    connect_src: &[api.as_str()],
                    form_action: &[],
                },
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "account page failed to render");
            error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Error",
                "This page could not be shown.",
            )
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
        return error_page(
            StatusCode::FORBIDDEN,
            "Refused",
            "Cross-site request refused.",
        );
    }
    if !is_form(&headers) {
        return error_page(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Refused",
            "Expected a form.",
        );
    }
    let Ok(form) = serde_urlencoded::from_bytes::<RevokeForm>(&body) else {
        return error_page(StatusCode::BAD_REQUEST, "Refused", "Malformed form.");
    };
    let Some(session) = session_of(&state, &headers).await else {
        return to_login();
    };
    match csrf::verify(&state, &session.session_id, &form.csrf).await {
        Ok(true) => {}
        Ok(false) => {
            return error_page(
                StatusCode::FORBIDDEN,
                "Form expired",
                "This form has expired. Reload the page and try again.",
            );
        }
        Err(e) => return unavailable(&e),
    }
    // Someone else's grant and a missing one look the same: no probing.
    let not_found = || error_page(StatusCode::NOT_FOUND, "Not found", "No such app.");
    if form.grant.len() > 64 {
        return not_found();
    }
    match state.store.get_grant(&form.grant).await {
        Ok(Some(g)) if g.user_id == session.user_id => {}
        Ok(_) => return not_found(),
        Err(e) => return unavailable(&e),
    }
    match state.store.revoke_grant(&form.grant).await {
        Ok(revoked) => {
            crate::revocation::announce(&state, &revoked).await;
            tracing::info!(user = %session.user_id, grants = revoked.grants.len(), "app disconnected from the account page");
            Redirect::to("/account").into_response()
        }
        Err(e) => unavailable(&e),
    }
}
