//! What a user and an MCP client do over HTTP, against any running inkan:
//! the consent form's hidden fields, the whole OAuth flow, MCP requests and
//! refreshes.

use std::time::{Duration, Instant};

use hanko_emulator::SessionToken;
use reqwest::StatusCode;

use super::app::Pkce;

/// Follows no redirects and keeps no cookies.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Sends `request` and reads its answer as JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// The `Cookie` header of a signed-in browser.
pub fn cookie(session: &SessionToken) -> String {
    format!("hanko={}", session.jwt)
}

/// Undoes HTML escaping: named entities and decimal/hex character references.
pub fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let ch = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The hidden fields of a page's forms, in page order.
pub fn hidden_fields(html: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(i) = rest.find("<input type=\"hidden\" name=\"") {
        rest = &rest[i + 27..];
        let name_end = rest.find('"').unwrap();
        let name = &rest[..name_end];
        let value_start = rest.find("value=\"").unwrap() + 7;
        let value_end = value_start + rest[value_start..].find('"').unwrap();
        out.push((unescape(name), unescape(&rest[value_start..value_end])));
        rest = &rest[value_end..];
    }
    out
}

/// The value of the first field called `name`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    &fields.iter().find(|(n, _)| n == name).unwrap().1
}

/// Anything serving inkan over HTTP: an in-process instance, an `inkan
/// serve` process, `inkan dev`.
pub trait Endpoint {
    /// `public_url`, without a trailing slash.
    fn base(&self) -> &str;

    /// The service the flow asks for and MCP requests go to.
    fn service(&self) -> &str {
        "notes"
    }
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub client_id: String,
    pub expires_in: i64,
}

/// The whole OAuth flow a client and its user go through: registration,
/// authorization with the Hanko session, consent, code exchange.
pub async fn connect_app(inst: &impl Endpoint, session: &SessionToken, name: &str) -> Tokens {
    let http = http();
    let redirect_uri = "http://127.0.0.1:9/callback";
    let reg = json_of(http.post(format!("{}/oauth/register", inst.base())).json(
        &serde_json::json!({
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "client_name": name,
        }),
    ))
    .await;
    let client_id = reg["client_id"].as_str().unwrap().to_string();
    let pkce = Pkce::new();
    let resource = format!("{}/mcp/{}", inst.base(), inst.service());
    let mut authorize = url::Url::parse(&format!("{}/oauth/authorize", inst.base())).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("code_challenge", &pkce.challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("state", "st")
        .append_pair("resource", &resource);
    let consent = http
        .get(authorize.as_str())
        .header("cookie", cookie(session))
        .send()
        .await
        .unwrap();
    assert_eq!(consent.status(), 200, "consent page");
    let mut form = hidden_fields(&consent.text().await.unwrap());
    form.push(("service".into(), inst.service().into()));
    form.push(("decision".into(), "approve".into()));
    let decided = http
        .post(format!("{}/oauth/authorize", inst.base()))
        .header("cookie", cookie(session))
        .header("origin", inst.base())
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), 303, "consent decision");
    let location = url::Url::parse(decided.headers()["location"].to_str().unwrap()).unwrap();
    let code = location
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .to_string();
    let tokens = json_of(http.post(format!("{}/oauth/token", inst.base())).form(&[
        ("grant_type", "authorization_code"),
        ("code", &code),
        ("redirect_uri", redirect_uri),
        ("client_id", &client_id),
        ("code_verifier", &pkce.verifier),
        ("resource", &resource),
    ]))
    .await;
    Tokens {
        access: tokens["access_token"].as_str().unwrap().to_string(),
        refresh: tokens["refresh_token"].as_str().unwrap().to_string(),
        expires_in: tokens["expires_in"].as_i64().unwrap(),
        client_id,
    }
}

/// Status of one MCP request with `token` on `inst`: an `initialize`,
/// which a real MCP server answers without a session.
pub async fn mcp(inst: &impl Endpoint, token: &str) -> StatusCode {
    http()
        .post(format!("{}/mcp/{}", inst.base(), inst.service()))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"inkan-tests","version":"1"}}}"#,
        )
        .send()
        .await
        .unwrap()
        .status()
}

/// Status of a refresh with `tokens` on `inst`.
pub async fn refresh(inst: &impl Endpoint, tokens: &Tokens) -> StatusCode {
    http()
        .post(format!("{}/oauth/token", inst.base()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &tokens.refresh),
            ("client_id", &tokens.client_id),
        ])
        .send()
        .await
        .unwrap()
        .status()
}

/// Polls `inst` until `token` is refused with 401; returns how long it took.
pub async fn until_refused(inst: &impl Endpoint, token: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let status = mcp(inst, token).await;
        if status == StatusCode::UNAUTHORIZED {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "token still answered {status} after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
