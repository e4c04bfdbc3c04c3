//! The authorization server over HTTP: a real app, a real SQLite store and
//! the Hanko emulator as Hanko.

use std::collections::HashMap;

use axum::http::header;
use serde_json::{Value, json};

use crate::support::app::{Pkce, TestApp};
use crate::support::flow::hidden_fields;

const REDIRECT: &str = "https://client.example/callback";

/// What is tested, the parameters overridden, the expected `error`.
type ParamCase<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
/// What is tested, the form, the expected status and `error`.
type FormCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16, &'a str);

// ---------------------------------------------------------------- helpers --

/// Query parameters of a redirect's `Location`.
fn location_params(response: &reqwest::Response) -> (url::Url, HashMap<String, String>) {
    let location = response
        .headers()
        .get(header::LOCATION)
        .unwrap_or_else(|| panic!("no Location in a {} response", response.status()))
        .to_str()
        .unwrap();
    let url = url::Url::parse(location)
        .or_else(|_| url::Url::parse(&format!("http://relative.invalid{location}")))
        .unwrap();
    let params = url.query_pairs().into_owned().collect();
    (url, params)
}

/// A signed-in user and a registered public client, ready to authorize.
struct Flow<'a> {
    app: &'a TestApp,
    client_id: String,
    redirect_uri: String,
    pkce: Pkce,
    cookie: String,
}

impl<'a> Flow<'a> {
    async fn new(app: &'a TestApp) -> Flow<'a> {
        let client_id = app.public_client(REDIRECT).await;
        Flow::for_client(app, client_id, REDIRECT).await
    }

    async fn for_client(app: &'a TestApp, client_id: String, redirect_uri: &str) -> Flow<'a> {
        let session = app.sign_in(&format!("{}@example.com", rand_name()));
        Flow {
            app,
            client_id,
            redirect_uri: redirect_uri.to_string(),
            pkce: Pkce::new(),
            cookie: TestApp::cookie(&session),
        }
    }

    /// The standard request parameters, overridden/extended by `extra`
    /// (an empty value removes a parameter).
    fn params(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = [
            ("response_type", "code"),
            ("client_id", self.client_id.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("code_challenge", self.pkce.challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("state", "st-123"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        for (k, v) in extra {
            p.retain(|(pk, _)| pk != k);
            if !v.is_empty() {
                p.push((k.to_string(), v.to_string()));
            }
        }
        p
    }

    async fn authorize(&self, extra: &[(&str, &str)], signed_in: bool) -> reqwest::Response {
        let mut request = self
            .app
            .http
            .get(authorize_url(self.app, &self.params(extra)));
        if signed_in {
            request = request.header(header::COOKIE, &self.cookie);
        }
        request.send().await.unwrap()
    }

    /// GET authorize → consent page → its hidden fields.
    async fn consent(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let response = self.authorize(extra, true).await;
        assert_eq!(response.status(), 200, "consent page expected");
        hidden_fields(&response.text().await.unwrap())
    }

    async fn decide(
        &self,
        fields: &[(String, String)],
        services: &[&str],
        decision: &str,
    ) -> reqwest::Response {
        let mut form = fields.to_vec();
        form.extend(
            services
                .iter()
                .map(|s| ("service".to_string(), s.to_string())),
        );
        form.push(("decision".into(), decision.into()));
        self.app
            .http
            .post(self.app.at("/oauth/authorize"))
            .header(header::COOKIE, &self.cookie)
            .header("sec-fetch-site", "same-origin")
            .header(header::ORIGIN, "null")
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// Through consent to a code.
    async fn code(&self, extra: &[(&str, &str)], services: &[&str]) -> String {
        let fields = self.consent(extra).await;
        let response = self.decide(&fields, services, "approve").await;
        assert_eq!(response.status(), 303);
        let (url, params) = location_params(&response);
        assert!(url.as_str().starts_with(&self.redirect_uri), "{url}");
        assert_eq!(params["state"], "st-123");
        assert_eq!(params["iss"], self.app.url);
        params["code"].clone()
    }

    async fn exchange(&self, code: &str, extra: &[(&str, &str)]) -> reqwest::Response {
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", self.pkce.verifier.as_str()),
            ("redirect_uri", self.redirect_uri.as_str()),
            ("client_id", self.client_id.as_str()),
        ];
        for (k, v) in extra {
            form.retain(|(fk, _)| fk != k);
            if !v.is_empty() {
                form.push((k, v));
            }
        }
        self.app
            .http
            .post(self.app.at("/oauth/token"))
            .form(&form)
            .send()
            .await
            .unwrap()
    }

    /// Code → tokens, asserting success.
    async fn tokens(&self) -> Value {
        let notes = self.app.resource("notes");
        let code = self.code(&[("resource", &notes)], &["notes"]).await;
        let response = self.exchange(&code, &[]).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    async fn refresh(&self, refresh_token: &str) -> reqwest::Response {
        token_request(
            self.app,
            &[
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", &self.client_id),
            ],
        )
        .await
    }
}

fn authorize_url(app: &TestApp, params: &[(String, String)]) -> String {
    format!(
        "{}?{}",
        app.at("/oauth/authorize"),
        serde_urlencoded::to_string(params).unwrap()
    )
}

fn rand_name() -> String {
    let mut b = [0u8; 6];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn token_request(app: &TestApp, form: &[(&str, &str)]) -> reqwest::Response {
    app.http
        .post(app.at("/oauth/token"))
        .form(form)
        .send()
        .await
        .unwrap()
}

async fn error_of(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"].as_str().unwrap_or_default().to_string(),
    )
}

/// Whether an access token still names a live grant in the store.
async fn access_alive(app: &TestApp, token: &str) -> bool {
    let gid = inkan::store::token::grant_id_of(inkan::store::TokenKind::Access, token).unwrap();
    app.state
        .store
        .lookup_access(gid, &inkan::store::TokenHash::of(token))
        .await
        .unwrap()
        .is_some()
}

/// A confidential client (client_secret_post) with its secret.
async fn confidential_client(app: &TestApp) -> (String, String) {
    let body = app
        .register(json!({
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "client_secret_post",
        }))
        .await;
    (
        body["client_id"].as_str().unwrap().into(),
        body["client_secret"].as_str().unwrap().into(),
    )
}

// ---------------------------------------------------------------- metadata --

#[tokio::test]
async fn metadata_names_the_issuer_exactly_and_every_capability() {
    let app = TestApp::start().await;
    for path in [
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
    ] {
        let response = app
            .http
            .get(app.at(path))
            .header(header::ORIGIN, "https://inspector.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "*",
            "browser clients need CORS"
        );
        let m: Value = response.json().await.unwrap();
        assert_eq!(m["issuer"], app.url);
        assert_eq!(m["authorization_endpoint"], app.at("/oauth/authorize"));
        assert_eq!(m["token_endpoint"], app.at("/oauth/token"));
        assert_eq!(m["registration_endpoint"], app.at("/oauth/register"));
        assert_eq!(m["revocation_endpoint"], app.at("/oauth/revoke"));
        assert_eq!(m["introspection_endpoint"], app.at("/oauth/introspect"));
        assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
        assert_eq!(m["response_types_supported"], json!(["code"]));
        assert_eq!(
            m["grant_types_supported"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(
            m["token_endpoint_auth_methods_supported"],
            json!(["none", "client_secret_post", "client_secret_basic"])
        );
        assert_eq!(
            m["scopes_supported"],
            json!(["notes:read", "notes:write", "calendar:read"])
        );
        assert_eq!(m["client_id_metadata_document_supported"], true);
        assert_eq!(m["authorization_response_iss_parameter_supported"], true);
    }
}

// -------------------------------------------------------------------- DCR --

#[tokio::test]
async fn registration_validates_every_field() {
    let app = TestApp::start().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("no redirect_uris", json!({}), "invalid_redirect_uri"),
        (
            "empty redirect_uris",
            json!({"redirect_uris": []}),
            "invalid_redirect_uri",
        ),
        (
            "plain http",
            json!({"redirect_uris": ["http://client.example/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            "fragment",
            json!({"redirect_uris": ["https://client.example/cb#x"]}),
            "invalid_redirect_uri",
        ),
        (
            "relative",
            json!({"redirect_uris": ["/cb"]}),
            "invalid_redirect_uri",
        ),
        (
            "implicit grant",
            json!({"redirect_uris": [REDIRECT], "grant_types": ["implicit"]}),
            "invalid_client_metadata",
        ),
        (
            "no code grant",
            json!({"redirect_uris": [REDIRECT], "grant_types": ["refresh_token"]}),
            "invalid_client_metadata",
        ),
        (
            "token response",
            json!({"redirect_uris": [REDIRECT], "response_types": ["token"]}),
            "invalid_client_metadata",
        ),
        (
            "jwt auth",
            json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "private_key_jwt"}),
            "invalid_client_metadata",
        ),
        (
            "application type",
            json!({"redirect_uris": [REDIRECT], "application_type": "tv"}),
            "invalid_client_metadata",
        ),
        (
            "logo over http",
            json!({"redirect_uris": [REDIRECT], "logo_uri": "http://client.example/logo.png"}),
            "invalid_client_metadata",
        ),
        (
            "long name",
            json!({"redirect_uris": [REDIRECT], "client_name": "x".repeat(201)}),
            "invalid_client_metadata",
        ),
        (
            "wrong type",
            json!({"redirect_uris": "https://client.example/cb"}),
            "invalid_client_metadata",
        ),
    ];
    for (what, body, error) in cases {
        let response = app
            .http
            .post(app.at("/oauth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(error_of(response).await, (400, error.to_string()), "{what}");
    }
    let response = app
        .http
        .post(app.at("/oauth/register"))
        .header(header::CONTENT_TYPE, "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        error_of(response).await,
        (400, "invalid_client_metadata".into())
    );
    let huge = json!({"redirect_uris": [REDIRECT], "client_name": "x".repeat(20_000)});
    let response = app
        .http
        .post(app.at("/oauth/register"))
        .json(&huge)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response).await, (413, "invalid_request".into()));
}

#[tokio::test]
async fn registration_issues_secrets_only_to_confidential_clients() {
    let app = TestApp::start().await;
    // What MCP hosts send: no scope, no application_type.
    let public = app
        .register(json!({
            "redirect_uris": ["http://127.0.0.1:33418/callback", REDIRECT],
            "token_endpoint_auth_method": "none",
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "client_name": "VS Code",
        }))
        .await;
    assert!(public["client_secret"].is_null());
    assert_eq!(public["token_endpoint_auth_method"], "none");
    assert_eq!(public["client_name"], "VS Code");
    assert!(public["client_id_issued_at"].as_i64().unwrap() > 0);

    let basic = app
        .register(json!({"redirect_uris": [REDIRECT], "scope": "notes:read offline_access", "application_type": "web"}))
        .await;
    assert_eq!(basic["token_endpoint_auth_method"], "client_secret_basic");
    let secret = basic["client_secret"].as_str().unwrap();
    assert!(secret.starts_with("ink_cs_"));
    assert_eq!(basic["client_secret_expires_at"], 0);
    assert_eq!(basic["scope"], "notes:read offline_access");

    // Only the hash is stored.
    let stored = app
        .state
        .store
        .get_client(basic["client_id"].as_str().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        stored.secret_hash,
        Some(inkan::store::TokenHash::of(secret))
    );
    assert!(stored.expires_at.is_some(), "registrations expire");
}

#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let app = TestApp::with_config("[oauth]\nregistrations_per_minute = 2").await;
    let body = json!({"redirect_uris": [REDIRECT], "token_endpoint_auth_method": "none"});
    for _ in 0..2 {
        let r = app
            .http
            .post(app.at("/oauth/register"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = app
        .http
        .post(app.at("/oauth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(error_of(r).await, (429, "too_many_requests".into()));
}

#[tokio::test]
async fn unused_registrations_expire_and_use_extends_them() {
    let app = TestApp::start().await;
    let store = &app.state.store;
    let now = inkan::store::unix_now();

    let expired = app.public_client(REDIRECT).await;
    let mut c = store.get_client(&expired).await.unwrap().unwrap();
    c.expires_at = Some(now - 1);
    store.put_client(&c).await.unwrap();
    let r = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", &expired),
        ],
    )
    .await;
    assert_eq!(
        error_of(r).await,
        (401, "invalid_client".into()),
        "clients re-register on invalid_client"
    );
    let flow = Flow::for_client(&app, expired, REDIRECT).await;
    let page = flow.authorize(&[], true).await;
    assert_eq!(page.status(), 400);
    assert!(
        page.headers().get(header::LOCATION).is_none(),
        "never redirect for an unknown client"
    );

    let used = app.public_client(REDIRECT).await;
    let mut c = store.get_client(&used).await.unwrap().unwrap();
    c.expires_at = Some(now + 3600);
    store.put_client(&c).await.unwrap();
    let flow = Flow::for_client(&app, used.clone(), REDIRECT).await;
    let notes = app.resource("notes");
    assert_eq!(
        flow.authorize(&[("resource", &notes)], true).await.status(),
        200
    );
    let extended = store
        .get_client(&used)
        .await
        .unwrap()
        .unwrap()
        .expires_at
        .unwrap();
    assert!(
        extended > now + 29 * 86400,
        "use pushes the expiry out to the full TTL"
    );
}

// --------------------------------------------------------------- authorize --

#[tokio::test]
async fn authorize_errors_about_client_or_redirect_are_pages() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("no client", &[("client_id", "")]),
        ("unknown client", &[("client_id", "nope")]),
        (
            "unregistered redirect",
            &[("redirect_uri", "https://evil.example/cb")],
        ),
        (
            "redirect with other path",
            &[("redirect_uri", "https://client.example/callback/x")],
        ),
        ("repeated parameter", &[]),
    ];
    for (what, extra) in cases {
        let mut params = flow.params(extra);
        if *what == "repeated parameter" {
            params.push(("client_id".into(), flow.client_id.clone()));
        }
        let r = app
            .http
            .get(authorize_url(&app, &params))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{what}");
        assert!(
            r.headers().get(header::LOCATION).is_none(),
            "{what}: never redirected"
        );
        assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert!(
            r.text().await.unwrap().contains("cannot continue"),
            "{what}"
        );
    }
}

#[tokio::test]
async fn authorize_errors_after_the_redirect_is_trusted_are_redirected_with_state_and_iss() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let notes = app.resource("notes");
    let cases: &[ParamCase] = &[
        (
            "token response type",
            &[("response_type", "token")],
            "unsupported_response_type",
        ),
        (
            "no response type",
            &[("response_type", "")],
            "invalid_request",
        ),
        (
            "no PKCE",
            &[("code_challenge", ""), ("code_challenge_method", "")],
            "invalid_request",
        ),
        (
            "plain PKCE",
            &[("code_challenge_method", "plain")],
            "invalid_request",
        ),
        (
            "method missing",
            &[("code_challenge_method", "")],
            "invalid_request",
        ),
        (
            "short challenge",
            &[("code_challenge", "abc")],
            "invalid_request",
        ),
        (
            "unknown resource",
            &[("resource", "https://elsewhere.example/mcp/notes")],
            "invalid_target",
        ),
        (
            "unknown service",
            &[("resource", &format!("{}/mcp/nope", app.url))],
            "invalid_target",
        ),
        ("ambiguous: no resource, no scope", &[], "invalid_target"),
        (
            "ambiguous: only unknown scopes",
            &[("scope", "openid offline_access")],
            "invalid_target",
        ),
        (
            "ambiguous: scopes of two services",
            &[("scope", "notes:read calendar:read")],
            "invalid_target",
        ),
    ];
    for (what, extra, error) in cases {
        for signed_in in [false, true] {
            let r = flow.authorize(extra, signed_in).await;
            assert_eq!(r.status(), 303, "{what}");
            let (url, p) = location_params(&r);
            assert!(url.as_str().starts_with(REDIRECT), "{what}: {url}");
            assert_eq!(p["error"], *error, "{what}");
            assert_eq!(p["state"], "st-123", "{what}");
            assert_eq!(p["iss"], app.url, "{what}");
        }
    }
    // The same request with a valid resource reaches the login redirect.
    let r = flow.authorize(&[("resource", &notes)], false).await;
    let (url, p) = location_params(&r);
    assert_eq!(url.path(), "/login");
    let return_to = &p["return_to"];
    assert!(return_to.starts_with("/oauth/authorize?"), "{return_to}");
    assert!(return_to.contains(&flow.client_id));
}

#[tokio::test]
async fn resource_and_scope_defaults() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let consent_html = |extra: &'static [(&'static str, &'static str)]| {
        let flow = &flow;
        async move {
            let r = flow.authorize(extra, true).await;
            assert_eq!(r.status(), 200, "{extra:?}");
            r.text().await.unwrap()
        }
    };
    // The single service whose scopes cover the request.
    let html = consent_html(&[("scope", "calendar:read offline_access")]).await;
    assert!(html.contains(r#"value="calendar" checked"#), "{html}");
    assert!(html.contains(r#"value="notes">"#));
    // Trailing slash on the resource is tolerated.
    let with_slash = format!("{}/", app.resource("notes"));
    let r = flow.authorize(&[("resource", &with_slash)], true).await;
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"value="notes" checked"#));
    assert!(
        html.contains("notes:write"),
        "missing scope defaults to the service's scopes"
    );

    // Unknown scopes are dropped from what is granted.
    let notes = app.resource("notes");
    let code = flow
        .code(
            &[
                ("resource", &notes),
                ("scope", "openid profile notes:read offline_access"),
            ],
            &["notes"],
        )
        .await;
    let tokens: Value = flow.exchange(&code, &[]).await.json().await.unwrap();
    assert_eq!(tokens["scope"], "notes:read");

    // One configured service: no resource needed.
    let single = TestApp::with_config(
        "[[services]]\nid = \"notes\"\nname = \"Notes\"\nupstream = \"http://127.0.0.1:9/mcp\"\nscopes = [\"notes:read\"]",
    )
    .await;
    let flow = Flow::new(&single).await;
    let code = flow.code(&[], &["notes"]).await;
    let tokens: Value = flow.exchange(&code, &[]).await.json().await.unwrap();
    assert_eq!(tokens["scope"], "notes:read");
    let grant_id = inkan::store::token::grant_id_of(
        inkan::store::TokenKind::Access,
        tokens["access_token"].as_str().unwrap(),
    )
    .unwrap();
    let grant = single
        .state
        .store
        .get_grant(grant_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(grant.resource, single.resource("notes"));
}

#[tokio::test]
async fn full_flow_over_http() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let notes = app.resource("notes");

    // Not signed in: to the login page and back.
    let r = flow.authorize(&[("resource", &notes)], false).await;
    let (_, p) = location_params(&r);
    let login = app
        .http
        .get(app.at(&format!("/login?return_to={}", urlencode(&p["return_to"]))))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let login_html = login.text().await.unwrap();
    assert!(login_html.contains("<hanko-auth>"));
    assert!(login_html.contains(app.hanko.url()));

    // Signed in: the consent page.
    let r = flow
        .authorize(
            &[("resource", &notes), ("scope", "notes:read notes:write")],
            true,
        )
        .await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert!(
        h[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .unwrap()
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(h[header::X_FRAME_OPTIONS], "DENY");
    assert_eq!(h[header::REFERRER_POLICY], "no-referrer");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    let html = r.text().await.unwrap();
    assert!(html.contains("Test client"));
    assert!(
        html.contains("client.example"),
        "the redirect host is shown"
    );
    assert!(html.contains(r#"name="decision" value="approve""#));
    assert!(html.contains(r#"name="decision" value="deny""#));
    assert!(
        html.contains("could not verify"),
        "DCR clients are flagged as unverified"
    );
    let fields = hidden_fields(&html);
    assert!(fields.iter().any(|(k, _)| k == "csrf"));

    // Approve for both services.
    let r = flow
        .decide(&fields, &["notes", "calendar"], "approve")
        .await;
    assert_eq!(r.status(), 303);
    let (url, p) = location_params(&r);
    assert_eq!(url.host_str(), Some("client.example"));
    assert_eq!(p["state"], "st-123");
    assert_eq!(p["iss"], app.url);
    let code = &p["code"];
    assert!(code.starts_with("ink_ac_"));

    // Exchange.
    let r = flow.exchange(code, &[("resource", &notes)]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.headers()[header::PRAGMA], "no-cache");
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["token_type"], "Bearer");
    assert_eq!(t["scope"], "notes:read notes:write");
    assert!(t["expires_in"].as_i64().unwrap() > 3000);
    let access = t["access_token"].as_str().unwrap().to_string();
    let refresh = t["refresh_token"].as_str().unwrap().to_string();
    assert!(access.starts_with("ink_at_") && refresh.starts_with("ink_rt_"));
    let gid = inkan::store::token::grant_id_of(inkan::store::TokenKind::Access, &access).unwrap();
    let grant = app.state.store.get_grant(gid).await.unwrap().unwrap();
    assert_eq!(
        grant.services,
        vec!["notes".to_string(), "calendar".to_string()]
    );
    assert_eq!(grant.resource, notes);
    assert_eq!(grant.client_id, flow.client_id);

    // Refresh: a new pair; the old access token stops working.
    let flow2 = Flow::new(&app).await;
    let t2 = flow2.tokens().await;
    let r = flow2.refresh(t2["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    let t3: Value = r.json().await.unwrap();
    assert_ne!(t3["refresh_token"], t2["refresh_token"]);
    assert!(access_alive(&app, t3["access_token"].as_str().unwrap()).await);
    assert!(!access_alive(&app, t2["access_token"].as_str().unwrap()).await);

    // Introspect with a confidential client: only its own tokens are active.
    let (cid, secret) = confidential_client(&app).await;
    let r = app
        .http
        .post(app.at("/oauth/introspect"))
        .form(&[
            ("token", access.as_str()),
            ("client_id", &cid),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let i: Value = r.json().await.unwrap();
    assert_eq!(
        i,
        json!({"active": false}),
        "another client's token is not revealed"
    );
    let conf = confidential_flow(&app, &cid, &secret).await;
    let r = app
        .http
        .post(app.at("/oauth/introspect"))
        .form(&[
            ("token", conf["access_token"].as_str().unwrap()),
            ("client_id", &cid),
            ("client_secret", &secret),
        ])
        .send()
        .await
        .unwrap();
    let i: Value = r.json().await.unwrap();
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], cid.as_str());
    assert_eq!(i["aud"], notes);
    assert_eq!(i["scope"], "notes:read notes:write");
    assert_eq!(i["token_type"], "Bearer");
    assert!(i["sub"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(i["exp"].as_i64().unwrap() > i["iat"].as_i64().unwrap());
    // Public clients cannot introspect.
    let r = app
        .http
        .post(app.at("/oauth/introspect"))
        .form(&[
            ("token", access.as_str()),
            ("client_id", flow.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (401, "invalid_client".into()));

    // Revoke: another client's token is ignored (200, still valid) ...
    let r = app
        .http
        .post(app.at("/oauth/revoke"))
        .form(&[
            ("token", access.as_str()),
            ("client_id", flow2.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(access_alive(&app, &access).await);
    // ... an access token revokes only itself ...
    let r = app
        .http
        .post(app.at("/oauth/revoke"))
        .form(&[
            ("token", access.as_str()),
            ("token_type_hint", "access_token"),
            ("client_id", flow.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!access_alive(&app, &access).await);
    let r = flow.refresh(&refresh).await;
    assert_eq!(
        r.status(),
        200,
        "revoking the access token leaves the grant"
    );
    let t4: Value = r.json().await.unwrap();
    // A dump of the store gives nothing to present: the SQLite file and its
    // WAL hold neither token nor any token's secret part.
    let db = &app.state.config.store.path;
    let mut dump = std::fs::read(db).unwrap();
    dump.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    for key in ["access_token", "refresh_token"] {
        let token = t4[key].as_str().unwrap();
        let secret = &token.as_bytes()[token.len() - 43..];
        assert!(
            !dump.windows(secret.len()).any(|w| w == secret),
            "{key} found in the store"
        );
    }
    // ... and a refresh token revokes its whole grant.
    let r = app
        .http
        .post(app.at("/oauth/revoke"))
        .form(&[
            ("token", t4["refresh_token"].as_str().unwrap()),
            ("client_id", flow.client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!access_alive(&app, t4["access_token"].as_str().unwrap()).await);
    assert_eq!(
        error_of(flow.refresh(t4["refresh_token"].as_str().unwrap()).await).await,
        (400, "invalid_grant".into())
    );
    // Unknown tokens: still 200.
    let r = app
        .http
        .post(app.at("/oauth/revoke"))
        .form(&[("token", "garbage"), ("client_id", flow.client_id.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// Consent + exchange for a confidential client (secret in the body).
async fn confidential_flow(app: &TestApp, client_id: &str, secret: &str) -> Value {
    let flow = Flow::for_client(app, client_id.to_string(), REDIRECT).await;
    let notes = app.resource("notes");
    let code = flow.code(&[("resource", &notes)], &["notes"]).await;
    let r = flow.exchange(&code, &[("client_secret", secret)]).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn loopback_redirects_match_on_any_port() {
    let app = TestApp::start().await;
    let client_id = app.public_client("http://127.0.0.1/callback").await;
    let flow = Flow::for_client(&app, client_id, "http://127.0.0.1:49152/callback").await;
    let notes = app.resource("notes");
    let r = flow.authorize(&[("resource", &notes)], true).await;
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("runs on your own computer"),
        "loopback warning"
    );
    let code = flow.code(&[("resource", &notes)], &["notes"]).await;
    assert_eq!(flow.exchange(&code, &[]).await.status(), 200);
    // Another path on loopback is still refused, as a page.
    let other =
        Flow::for_client(&app, flow.client_id.clone(), "http://127.0.0.1:49152/other").await;
    let r = other.authorize(&[("resource", &notes)], true).await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn deny_redirects_access_denied() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let notes = app.resource("notes");
    let fields = flow.consent(&[("resource", &notes)]).await;
    let r = flow.decide(&fields, &["notes"], "deny").await;
    assert_eq!(r.status(), 303);
    let (_, p) = location_params(&r);
    assert_eq!(p["error"], "access_denied");
    assert_eq!(p["state"], "st-123");
    assert_eq!(p["iss"], app.url);
    assert!(!p.contains_key("code"));
    // Unchecking the requested service is a refusal too.
    let r = flow.decide(&fields, &["calendar"], "approve").await;
    let (_, p) = location_params(&r);
    assert_eq!(p["error"], "access_denied");
}

#[tokio::test]
async fn forged_or_cross_site_decisions_are_refused() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let notes = app.resource("notes");
    let fields = flow.consent(&[("resource", &notes)]).await;
    let post = |fields: Vec<(String, String)>,
                headers: Vec<(&'static str, &'static str)>,
                cookie: String| {
        let app = &app;
        async move {
            let mut form = fields;
            form.push(("service".into(), "notes".into()));
            form.push(("decision".into(), "approve".into()));
            let mut req = app
                .http
                .post(app.at("/oauth/authorize"))
                .header(header::COOKIE, cookie)
                .form(&form);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            req.send().await.unwrap()
        }
    };
    // Tampered parameter: the CSRF token no longer matches.
    let mut tampered = fields.clone();
    for (k, v) in tampered.iter_mut() {
        if k == "state" {
            *v = "other".into();
        }
    }
    let r = post(tampered, vec![], flow.cookie.clone()).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().get(header::LOCATION).is_none());
    // Another user's session with this user's form.
    let other = TestApp::cookie(&app.sign_in("mallory@example.com"));
    let r = post(fields.clone(), vec![], other).await;
    assert_eq!(r.status(), 403);
    // Missing token.
    let without: Vec<_> = fields
        .iter()
        .filter(|(k, _)| k != "csrf")
        .cloned()
        .collect();
    assert_eq!(
        post(without, vec![], flow.cookie.clone()).await.status(),
        403
    );
    // Cross-site posts, even with a valid token.
    let r = post(
        fields.clone(),
        vec![("sec-fetch-site", "cross-site")],
        flow.cookie.clone(),
    )
    .await;
    assert_eq!(r.status(), 403);
    let r = post(
        fields.clone(),
        vec![("origin", "https://evil.example")],
        flow.cookie.clone(),
    )
    .await;
    assert_eq!(r.status(), 403);
    // The genuine form still works.
    let r = post(
        fields,
        vec![("sec-fetch-site", "same-origin")],
        flow.cookie.clone(),
    )
    .await;
    assert_eq!(r.status(), 303);
    assert!(location_params(&r).1.contains_key("code"));
}

// ------------------------------------------------------------------- token --

#[tokio::test]
async fn token_endpoint_error_paths() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let notes = app.resource("notes");
    let cid = flow.client_id.as_str();

    let v43 = "a".repeat(43);
    let simple: Vec<FormCase> = vec![
        (
            "unknown client",
            vec![("grant_type", "authorization_code"), ("client_id", "nope")],
            401,
            "invalid_client",
        ),
        (
            "no client",
            vec![("grant_type", "authorization_code")],
            401,
            "invalid_client",
        ),
        (
            "no grant type",
            vec![("client_id", cid)],
            400,
            "invalid_request",
        ),
        (
            "password grant",
            vec![("grant_type", "password"), ("client_id", cid)],
            400,
            "unsupported_grant_type",
        ),
        (
            "no code",
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", cid),
                ("code_verifier", &v43),
            ],
            400,
            "invalid_request",
        ),
        (
            "garbage code",
            vec![
                ("grant_type", "authorization_code"),
                ("client_id", cid),
                ("code", "x"),
                ("code_verifier", &v43),
            ],
            400,
            "invalid_grant",
        ),
        (
            "no refresh token",
            vec![("grant_type", "refresh_token"), ("client_id", cid)],
            400,
            "invalid_request",
        ),
        (
            "garbage refresh token",
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", cid),
                ("refresh_token", "ink_rt_x"),
            ],
            400,
            "invalid_grant",
        ),
        (
            "secret for a public client",
            vec![
                ("grant_type", "refresh_token"),
                ("client_id", cid),
                ("client_secret", "s"),
                ("refresh_token", "x"),
            ],
            401,
            "invalid_client",
        ),
    ];
    for (what, form, status, error) in simple {
        assert_eq!(
            error_of(token_request(&app, &form).await).await,
            (status, error.to_string()),
            "{what}"
        );
    }

    let code_cases: &[ParamCase] = &[
        (
            "wrong verifier",
            &[("code_verifier", "b".repeat(43).leak())],
            "invalid_grant",
        ),
        (
            "short verifier",
            &[("code_verifier", "abc")],
            "invalid_request",
        ),
        ("no verifier", &[("code_verifier", "")], "invalid_request"),
        (
            "wrong redirect",
            &[("redirect_uri", "https://client.example/other")],
            "invalid_grant",
        ),
        (
            "wrong resource",
            &[("resource", "https://elsewhere.example/mcp/notes")],
            "invalid_target",
        ),
    ];
    for (what, extra, error) in code_cases {
        let code = flow.code(&[("resource", &notes)], &["notes"]).await;
        let r = flow.exchange(&code, extra).await;
        assert_eq!(error_of(r).await, (400, error.to_string()), "{what}");
    }
    // Another client cannot redeem the code.
    let code = flow.code(&[("resource", &notes)], &["notes"]).await;
    let other = app.public_client(REDIRECT).await;
    let r = flow.exchange(&code, &[("client_id", &other)]).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));

    // Refresh: another client, extra scope, wrong resource.
    let t = flow.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap();
    let refresh_cases: &[ParamCase] = &[
        ("another client", &[("client_id", &other)], "invalid_grant"),
        (
            "extra scope",
            &[("scope", "calendar:read")],
            "invalid_scope",
        ),
        (
            "wrong resource",
            &[("resource", "https://elsewhere.example/mcp")],
            "invalid_target",
        ),
    ];
    for (what, extra, error) in refresh_cases {
        let mut form = vec![
            ("grant_type", "refresh_token"),
            ("client_id", cid),
            ("refresh_token", rt),
        ];
        form.retain(|(k, _)| extra.iter().all(|(e, _)| e != k));
        form.extend_from_slice(extra);
        let r = token_request(&app, &form).await;
        assert_eq!(error_of(r).await, (400, error.to_string()), "{what}");
    }
    // None of those burnt the token.
    let r = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", cid),
            ("refresh_token", rt),
            ("scope", "notes:read offline_access"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn client_authentication_follows_the_registered_method() {
    let app = TestApp::start().await;
    let basic = app.register(json!({"redirect_uris": [REDIRECT]})).await;
    let (id, secret) = (
        basic["client_id"].as_str().unwrap(),
        basic["client_secret"].as_str().unwrap(),
    );
    let form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", "ink_rt_nothing"),
    ];
    // Right credentials: past client authentication, to the grant check.
    let r = app
        .http
        .post(app.at("/oauth/token"))
        .basic_auth(id, Some(secret))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
    // Wrong secret over Basic: 401 with a Basic challenge.
    let r = app
        .http
        .post(app.at("/oauth/token"))
        .basic_auth(id, Some("ink_cs_wrong"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(error_of(r).await, (401, "invalid_client".into()));
    // Registered for Basic, used the body: refused.
    let mut body = form.to_vec();
    body.extend([("client_id", id), ("client_secret", secret)]);
    let r = token_request(&app, &body).await;
    assert_eq!(error_of(r).await, (401, "invalid_client".into()));
    // No secret at all.
    let r = token_request(&app, &[form[0], form[1], ("client_id", id)]).await;
    assert_eq!(error_of(r).await, (401, "invalid_client".into()));
}

#[tokio::test]
async fn tokens_never_outlive_the_hanko_session() {
    let app = TestApp::start().await;
    let client_id = app.public_client(REDIRECT).await;
    let mut flow = Flow::for_client(&app, client_id, REDIRECT).await;
    let user = app.hanko.create_user("short@example.com").unwrap();
    let session = app
        .hanko
        .create_session_with_lifetime(&user.id, std::time::Duration::from_secs(600))
        .unwrap();
    flow.cookie = TestApp::cookie(&session);
    let t = flow.tokens().await;
    assert!(t["expires_in"].as_i64().unwrap() <= 600);
    let gid = inkan::store::token::grant_id_of(
        inkan::store::TokenKind::Access,
        t["access_token"].as_str().unwrap(),
    )
    .unwrap();
    let grant = app.state.store.get_grant(gid).await.unwrap().unwrap();
    assert_eq!(grant.session_exp, session.expires_at);
    assert!(grant.expires_at <= session.expires_at);
    assert_eq!(grant.session_id, session.session_id);
    assert_eq!(grant.email.as_deref(), Some("short@example.com"));
}

#[tokio::test]
async fn concurrent_refresh_of_one_token_yields_one_successor() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let t = flow.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap();
    let answers = futures_util::future::join_all((0..8).map(|_| flow.refresh(rt))).await;
    let mut successors = Vec::new();
    for r in answers {
        assert_eq!(r.status(), 200, "no invalid_grant storm");
        let body: Value = r.json().await.unwrap();
        successors.push((body["access_token"].clone(), body["refresh_token"].clone()));
    }
    successors.dedup();
    assert_eq!(successors.len(), 1, "every caller got the same successor");
    assert!(access_alive(&app, successors[0].0.as_str().unwrap()).await);
}

#[tokio::test]
async fn code_replay_revokes_what_the_code_bought() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let notes = app.resource("notes");
    let code = flow.code(&[("resource", &notes)], &["notes"]).await;
    let first = flow.exchange(&code, &[]).await;
    assert_eq!(first.status(), 200);
    let t: Value = first.json().await.unwrap();
    assert!(access_alive(&app, t["access_token"].as_str().unwrap()).await);
    let replay = flow.exchange(&code, &[]).await;
    assert_eq!(error_of(replay).await, (400, "invalid_grant".into()));
    assert!(
        !access_alive(&app, t["access_token"].as_str().unwrap()).await,
        "access token revoked"
    );
    let r = flow.refresh(t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        error_of(r).await,
        (400, "invalid_grant".into()),
        "refresh token revoked"
    );
}

// -------------------------------------------------------------------- CIMD --

/// Serves `documents` (path → (status, body)) on 127.0.0.1.
async fn document_server(documents: Vec<(&'static str, String)>) -> String {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut router = axum::Router::new();
    for (path, body) in documents {
        router = router.route(
            path,
            get(move || {
                let body = body.clone();
                async move {
                    (
                        [
                            (header::CONTENT_TYPE, "application/json"),
                            (header::CACHE_CONTROL, "max-age=3600"),
                        ],
                        body,
                    )
                }
            }),
        );
    }
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    base
}

#[tokio::test]
async fn metadata_document_clients_work_with_the_test_switch() {
    // The document must name its own URL, so learn the port first.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let good_id = format!("{base}/client.json");
    let liar_id = format!("{base}/liar.json");
    let big_id = format!("{base}/big.json");
    let good = json!({"client_id": good_id, "client_name": "Doc client", "redirect_uris": [REDIRECT, "http://127.0.0.1/cb"]}).to_string();
    let liar = json!({"client_id": "https://someone-else.example/x", "redirect_uris": [REDIRECT]})
        .to_string();
    let big = json!({"client_id": big_id, "redirect_uris": [REDIRECT], "pad": "x".repeat(6000)})
        .to_string();
    {
        use axum::routing::get;
        let router = axum::Router::new()
            .route(
                "/client.json",
                get(move || async move { ([(header::CACHE_CONTROL, "max-age=600")], good) }),
            )
            .route("/liar.json", get(move || async move { liar }))
            .route("/big.json", get(move || async move { big }));
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    }

    let app = TestApp::with_config("[oauth]\ncimd_allow_private_addresses = true").await;
    let flow = Flow::for_client(&app, good_id.clone(), REDIRECT).await;
    let notes = app.resource("notes");
    let r = flow.authorize(&[("resource", &notes)], true).await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(html.contains("Doc client"));
    assert!(
        !html.contains("could not verify"),
        "document clients are verified by their URL"
    );
    let t = flow.tokens().await;
    assert_eq!(t["token_type"], "Bearer");
    // Port-agnostic loopback from the document, too.
    let lo = Flow::for_client(&app, good_id.clone(), "http://127.0.0.1:5555/cb").await;
    assert_eq!(
        lo.authorize(&[("resource", &notes)], true).await.status(),
        200
    );

    for (what, id) in [
        ("client_id mismatch", liar_id),
        ("over 5 KB", big_id),
        ("missing", format!("{base}/absent.json")),
    ] {
        let f = Flow::for_client(&app, id, REDIRECT).await;
        let r = f.authorize(&[("resource", &notes)], true).await;
        assert_eq!(r.status(), 400, "{what}");
        assert!(r.headers().get(header::LOCATION).is_none(), "{what}");
    }
}

#[tokio::test]
async fn private_address_documents_are_refused_by_default() {
    let port_base = document_server(vec![]).await;
    let port = url::Url::parse(&port_base).unwrap().port().unwrap();
    let app = TestApp::start().await;
    assert!(!app.state.config.oauth.cimd_allow_private_addresses);
    let notes = app.resource("notes");
    for id in [
        format!("http://127.0.0.1:{port}/client.json"),
        format!("https://127.0.0.1:{port}/client.json"),
        format!("https://localhost:{port}/client.json"),
        format!("https://[::1]:{port}/client.json"),
        format!("https://[::ffff:127.0.0.1]:{port}/client.json"),
        "https://10.0.0.1/client.json".to_string(),
        "https://169.254.169.254/latest/meta-data".to_string(),
    ] {
        let f = Flow::for_client(&app, id.clone(), REDIRECT).await;
        let r = f.authorize(&[("resource", &notes)], true).await;
        assert_eq!(r.status(), 400, "{id}");
        assert!(r.headers().get(header::LOCATION).is_none(), "{id}");
    }
    // The refusal is the address check, not the fetch: the fetcher says why.
    let err = app
        .state
        .oauth
        .documents
        .get(&format!("https://localhost:{port}/client.json"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, inkan::oauth::cimd::DocumentError::Fetch(ref m) if m.contains("not public")),
        "{err}"
    );
    let err = app
        .state
        .oauth
        .documents
        .get("https://169.254.169.254/x")
        .await
        .unwrap_err();
    assert!(
        matches!(err, inkan::oauth::cimd::DocumentError::PrivateAddress(_)),
        "{err}"
    );
}

// ------------------------------------------------------------------- pages --

#[tokio::test]
async fn login_page_returns_only_to_local_paths_and_offers_dev_sign_in_when_configured() {
    let app = TestApp::start().await;
    let r = app
        .http
        .get(app.at("/login?return_to=https://evil.example/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[header::X_FRAME_OPTIONS], "DENY");
    let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("'nonce-"));
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"data-return-to="/""#));
    assert!(!html.contains("evil.example"));
    assert!(!html.contains("<form id=\"dev-sign-in\">"));
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .unwrap()
        .split('\'')
        .next()
        .unwrap();
    assert!(
        html.contains(&format!("nonce=\"{nonce}\"")),
        "inline script carries the nonce"
    );

    let dev =
        TestApp::with_config("[hanko]\ndev_sign_in_url = \"http://127.0.0.1:1/dev/sign-in\"").await;
    let html = dev
        .http
        .get(dev.at("/login?return_to=/oauth/authorize%3Fa%3Db"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("<form id=\"dev-sign-in\">"));
    assert!(html.contains("http://127.0.0.1:1/dev/sign-in"));
    assert!(html.contains(r#"data-return-to="/oauth/authorize?a=b""#));
}

#[tokio::test]
async fn dev_sign_in_answer_works_as_the_hanko_cookie() {
    let app = TestApp::start().await;
    // What the login page's dev form does: POST {email}, write the cookie.
    let signed: Value = app
        .http
        .post(format!("{}/dev/sign-in", app.hanko.url()))
        .json(&json!({"email": "dev@example.com"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let client_id = app.public_client(REDIRECT).await;
    let mut flow = Flow::for_client(&app, client_id, REDIRECT).await;
    flow.cookie = format!("hanko={}", signed["session_token"].as_str().unwrap());
    let notes = app.resource("notes");
    let r = flow.authorize(&[("resource", &notes)], true).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("dev@example.com"));
}

#[tokio::test]
async fn refresh_revokes_grants_whose_hanko_session_ended() {
    let hanko = hanko_emulator::start(
        "127.0.0.1:0".parse().unwrap(),
        hanko_emulator::EmulatorConfig {
            audience: vec![crate::support::app::AUDIENCE.into()],
            key_bits: 2048,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let admin = hanko.admin_url();
    // No positive liveness cache, so the refresh right after the logout asks.
    let app = TestApp::with_emulator(
        hanko,
        &format!("[hanko]\nadmin_api_url = \"{admin}\"\nliveness_cache = \"0s\""),
    )
    .await;
    let client_id = app.public_client(REDIRECT).await;
    let mut flow = Flow::for_client(&app, client_id, REDIRECT).await;
    let user = app.hanko.create_user("leaver@example.com").unwrap();
    let session = app.hanko.create_session(&user.id).unwrap();
    flow.cookie = TestApp::cookie(&session);
    let t = flow.tokens().await;
    let r = flow.refresh(t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200, "live session: refresh works");
    let t: Value = r.json().await.unwrap();

    assert!(
        app.hanko
            .delete_session(&user.id, &session.session_id)
            .await
    );
    let other = Flow::new(&app).await.tokens().await;
    // A fresh grant of another session is unaffected; this one is revoked.
    let r = flow.refresh(t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(error_of(r).await, (400, "invalid_grant".into()));
    assert!(!access_alive(&app, t["access_token"].as_str().unwrap()).await);
    assert!(access_alive(&app, other["access_token"].as_str().unwrap()).await);
}

#[tokio::test]
async fn metadata_documents_are_cached_and_fetched_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let id = format!("http://{}/client.json", listener.local_addr().unwrap());
    let doc = json!({"client_id": id, "redirect_uris": [REDIRECT]}).to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let router = axum::Router::new().route(
        "/client.json",
        axum::routing::get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let doc = doc.clone();
            async move { ([(header::CACHE_CONTROL, "max-age=3600")], doc) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let app = TestApp::with_config("[oauth]\ncimd_allow_private_addresses = true").await;
    let notes = app.resource("notes");
    let flow = Flow::for_client(&app, id.clone(), REDIRECT).await;
    let extra = [("resource", notes.as_str())];
    let answers =
        futures_util::future::join_all((0..5).map(|_| flow.authorize(&extra, true))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    flow.tokens().await;
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "one fetch, then the cache"
    );
}

#[tokio::test]
async fn browser_clients_get_cors_on_the_token_endpoint() {
    let app = TestApp::start().await;
    for path in ["/oauth/token", "/oauth/register", "/oauth/revoke"] {
        let r = app
            .http
            .request(reqwest::Method::OPTIONS, app.at(path))
            .header(header::ORIGIN, "https://inspector.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}");
        assert_eq!(r.headers()["access-control-allow-origin"], "*", "{path}");
        assert!(
            r.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
        let allowed = r.headers()["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(
            allowed.contains("authorization") && allowed.contains("content-type"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn consent_page_escapes_what_clients_say_about_themselves() {
    let app = TestApp::start().await;
    let body = app
        .register(json!({
            "redirect_uris": [REDIRECT],
            "token_endpoint_auth_method": "none",
            "client_name": "<script>alert(1)</script>\" onmouseover=\"x",
        }))
        .await;
    let flow = Flow::for_client(&app, body["client_id"].as_str().unwrap().into(), REDIRECT).await;
    let notes = app.resource("notes");
    let r = flow
        .authorize(
            &[
                ("resource", &notes),
                ("state", "\"><script>alert(2)</script>"),
            ],
            true,
        )
        .await;
    assert_eq!(r.status(), 200);
    let html = r.text().await.unwrap();
    assert!(!html.contains("<script>alert"), "{html}");
    assert!(!html.contains("\" onmouseover"));
    // The escaped state still round-trips through the form.
    let fields = hidden_fields(&html);
    let state = fields
        .iter()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.as_str());
    assert_eq!(state, Some("\"><script>alert(2)</script>"), "{html}");
    let r = flow.decide(&fields, &["notes"], "approve").await;
    let (_, p) = location_params(&r);
    assert_eq!(p["state"], "\"><script>alert(2)</script>");
    assert!(p.contains_key("code"));
}

// ------------------------------------------------------------------- Redis --

#[tokio::test]
async fn token_flows_behave_the_same_on_redis() {
    use crate::support::redis;
    let url = redis::standalone().await;
    let prefix = redis::unique_prefix("oauth");
    let app = TestApp::with_config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\""
    ))
    .await;
    let flow = Flow::new(&app).await;
    let t = flow.tokens().await;
    let rt = t["refresh_token"].as_str().unwrap();
    let answers = futures_util::future::join_all((0..6).map(|_| flow.refresh(rt))).await;
    let mut successors = Vec::new();
    for r in answers {
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        successors.push(body["refresh_token"].clone());
    }
    successors.dedup();
    assert_eq!(successors.len(), 1);

    let notes = app.resource("notes");
    let code = flow.code(&[("resource", &notes)], &["notes"]).await;
    let first: Value = flow.exchange(&code, &[]).await.json().await.unwrap();
    let replay = flow.exchange(&code, &[]).await;
    assert_eq!(error_of(replay).await, (400, "invalid_grant".into()));
    assert!(!access_alive(&app, first["access_token"].as_str().unwrap()).await);
}

#[tokio::test]
async fn store_outage_answers_503_not_401() {
    let server = tokio::task::spawn_blocking(crate::support::redis::RedisServer::start_new)
        .await
        .unwrap();
    let app = TestApp::with_config(&format!(
        "[store]\nbackend = \"redis\"\nurl = \"{}\"",
        server.url()
    ))
    .await;
    let flow = Flow::new(&app).await;
    let t = flow.tokens().await;
    let server = tokio::task::spawn_blocking(move || {
        server.stop();
        server
    })
    .await
    .unwrap();

    let r = flow.refresh(t["refresh_token"].as_str().unwrap()).await;
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    assert_eq!(error_of(r).await, (503, "temporarily_unavailable".into()));
    let r = app
        .http
        .post(app.at("/oauth/register"))
        .json(&json!({"redirect_uris": [REDIRECT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await, (503, "temporarily_unavailable".into()));
    let r = flow.authorize(&[], true).await;
    assert_eq!(r.status(), 503, "authorize shows a page, never a 401");
    drop(server);
}

#[tokio::test]
async fn a_refresh_retires_the_cached_previous_access_token() {
    let app = TestApp::start().await;
    let flow = Flow::new(&app).await;
    let t = flow.tokens().await;
    let old = t["access_token"].as_str().unwrap();
    let scopes = ["notes:read".to_string(), "notes:write".to_string()];
    let now = inkan::store::unix_now();
    let validator = &app.state.gateway.validator;
    assert!(matches!(
        validator.validate(old, "notes", &scopes, now).await,
        inkan::gateway::validate::Verdict::Allowed(_)
    ));
    let r = flow.refresh(t["refresh_token"].as_str().unwrap()).await;
    assert_eq!(r.status(), 200);
    let next: Value = r.json().await.unwrap();
    assert!(matches!(
        validator.validate(old, "notes", &scopes, now).await,
        inkan::gateway::validate::Verdict::Invalid(_)
    ));
    assert!(matches!(
        validator
            .validate(
                next["access_token"].as_str().unwrap(),
                "notes",
                &scopes,
                now
            )
            .await,
        inkan::gateway::validate::Verdict::Allowed(_)
    ));
}
