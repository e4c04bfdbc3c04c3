//! Pages for people: login, consent and error pages (askama templates in
//! `crates/inkan/templates/`).
//!
//! Every page is sent with a nonce-based Content-Security-Policy that forbids
//! framing (clickjacking a consent button is the classic attack on OAuth),
//! `Referrer-Policy: no-referrer` (authorization URLs carry `state` and PKCE
//! challenges) and `Cache-Control: no-store`.

pub mod account;

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use serde::Deserialize;

use crate::server::AppState;

/// A fresh CSP nonce for one response.
pub fn nonce() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    STANDARD.encode(bytes)
}

/// Sources a page may use beyond its own nonce'd inline code.
#[derive(Default)]
pub struct Csp<'a> {
    pub script_src: &'a [&'a str],
    pub connect_src: &'a [&'a str],
    pub form_action: &'a [&'a str],
}

/// Renders `html` with the security headers every page carries.
pub fn page(status: StatusCode, html: String, nonce: &str, csp: &Csp<'_>) -> Response {
    let join = |extra: &[&str]| extra.iter().map(|s| format!(" {s}")).collect::<String>();
    let policy = format!(
        "default-src 'none'; script-src 'nonce-{nonce}' 'strict-dynamic'{scripts}; \
         style-src 'self' 'unsafe-inline'; img-src https: data:; font-src https: data:; \
         connect-src 'self'{connect}; form-action 'self'{forms}; \
         frame-ancestors 'none'; base-uri 'none'",
        scripts = join(csp.script_src),
        connect = join(csp.connect_src),
        forms = join(csp.form_action),
    );
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    (status, headers, html).into_response()
}

fn render(template: &impl Template) -> String {
    template.render().unwrap_or_else(|e| {
        tracing::error!(error = %e, "page template failed");
        "<!doctype html><title>Error</title><p>This page could not be shown.</p>".into()
    })
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorTemplate<'a> {
    title: &'a str,
    message: &'a str,
}

/// A plain error page (no scripts).
pub fn error_page(status: StatusCode, title: &str, message: &str) -> Response {
    page(
        status,
        render(&ErrorTemplate { title, message }),
        &nonce(),
        &Csp::default(),
    )
}

/// One service on the consent page.
pub struct ServiceChoice {
    pub id: String,
    pub name: String,
    pub checked: bool,
}

/// Everything the consent page shows and posts back.
#[derive(Template)]
#[template(path = "consent.html")]
pub struct ConsentPage {
    pub client_name: String,
    pub client_id: String,
    pub logo_uri: Option<String>,
    pub redirect_host: String,
    pub loopback_redirect: bool,
    pub unverified_client: bool,
    pub user: String,
    pub scopes: Vec<String>,
    pub services: Vec<ServiceChoice>,
    /// The original authorization request, posted back verbatim.
    pub hidden: Vec<(String, String)>,
    pub csrf: String,
}

impl ConsentPage {
    /// `redirect_origin` is where the form's answer redirects; the CSP's
    /// `form-action` must allow it, since browsers apply it to redirects.
    pub fn into_response(self, redirect_origin: &str) -> Response {
        let html = render(&self);
        page(
            StatusCode::OK,
            html,
            &nonce(),
            &Csp {
                form_action: &[redirect_origin],
                ..Csp::default()
            },
        )
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    nonce: &'a str,
    elements_url: &'a str,
    api_url: &'a str,
    return_to: &'a str,
    dev_sign_in_url: Option<&'a str>,
    cookie_name: &'a str,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    return_to: Option<String>,
}

/// Only same-origin relative paths: anything else would make the login page
/// an open redirector.
pub fn safe_return_to(candidate: Option<&str>) -> &str {
    match candidate {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 8192
                && !p.chars().any(|c| c.is_control() || c == '\\') =>
        {
            p
        }
        _ => "/",
    }
}

/// `GET /login`: Hanko Elements, and after sign-in back to `return_to`.
pub async fn login(State(state): State<AppState>, Query(q): Query<LoginQuery>) -> Response {
    let hanko = &state.config.hanko;
    let nonce = nonce();
    let origin = |u: &str| {
        url::Url::parse(u)
            .map(|p| p.origin().ascii_serialization())
            .unwrap_or_default()
    };
    let elements_origin = origin(&hanko.elements_url);
    let api_origin = origin(&hanko.api_url);
    let dev_origin = hanko.dev_sign_in_url.as_deref().map(origin);
    let mut connect = vec![api_origin.as_str()];
    if let Some(d) = &dev_origin {
        connect.push(d);
    }
    let html = render(&LoginPage {
        nonce: &nonce,
        elements_url: &hanko.elements_url,
        api_url: &hanko.api_url,
        return_to: safe_return_to(q.return_to.as_deref()),
        dev_sign_in_url: hanko.dev_sign_in_url.as_deref(),
        cookie_name: &hanko.cookie_name,
    });
    page(
        StatusCode::OK,
        html,
        &nonce,
        &Csp {
            script_src: &[elements_origin.as_str()],
            connect_src: &connect,
            form_action: &[],
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_accepts_only_local_paths() {
        assert_eq!(
            safe_return_to(Some("/oauth/authorize?a=b")),
            "/oauth/authorize?a=b"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "javascript:alert(1)",
            "",
        ] {
            assert_eq!(safe_return_to(Some(bad)), "/", "{bad}");
        }
        assert_eq!(safe_return_to(None), "/");
    }
}
