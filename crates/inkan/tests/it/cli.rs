//! The command line, run as the real binary.

use std::process::Command;

use hanko_emulator::SessionToken;

use crate::support::flow::{Endpoint, connect_app, json_of, mcp, refresh};

const GOOD: &str = r#"
public_url = "https://mcp.example.com"
listen = "127.0.0.1:0"
[hanko]
api_url = "https://tenant.hanko.io"
audience = "mcp.example.com"
admin_api_url = "https://tenant.hanko.io/admin"
admin_api_key = "very-secret-key"
[[services]]
id = "notes"
name = "Team notes"
upstream = "http://127.0.0.1:9000/mcp"
scopes = ["notes:read"]
"#;

fn inkan(args: &[&str], config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inkan.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_inkan"))
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("INKAN_PUBLIC_URL")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_prints_effective_config_with_secrets_masked() {
    let (code, stdout, _) = inkan(&["check-config"], GOOD);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("public_url = \"https://mcp.example.com\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("access_ttl = \"1h\""),
        "defaults are shown: {stdout}"
    );
    assert!(!stdout.contains("very-secret-key"), "{stdout}");
}

#[test]
fn check_config_explains_every_bad_value() {
    let bad = GOOD
        .replace("https://mcp.example.com\"", "https://mcp.example.com/\"")
        .replace("http://127.0.0.1:9000/mcp", "gopher://x")
        + "[store]\nbackend = \"redis\"\n";
    let (code, _, stderr) = inkan(&["check-config"], &bad);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("public_url: public_url must not end with '/'"),
        "{stderr}"
    );
    assert!(
        stderr.contains("services[0].upstream: must be an http or https URL (got 'gopher://x')"),
        "{stderr}"
    );
    assert!(stderr.contains("store.url"), "{stderr}");
}

#[test]
fn serve_refuses_bad_config_with_exit_64_before_binding() {
    let (code, _, stderr) = inkan(
        &["serve"],
        &GOOD.replace("[hanko]", "[store]\nbackend = \"etcd\"\n[hanko]"),
    );
    assert_eq!(code, 64, "{stderr}");
    assert!(
        stderr.contains("store.backend") && stderr.contains("etcd"),
        "{stderr}"
    );
}

#[test]
fn missing_explicit_config_file_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_inkan"))
        .args(["check-config", "--config", "/nonexistent/inkan.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/inkan.toml"));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `inkan dev` as a client sees it.
struct Dev {
    base: String,
    /// The Hanko emulator it started.
    hanko: String,
}

impl Endpoint for Dev {
    fn base(&self) -> &str {
        &self.base
    }

    fn service(&self) -> &str {
        "demo"
    }
}

impl Dev {
    /// Signs in at the emulator as the login page's email form does.
    async fn sign_in(&self, email: &str) -> SessionToken {
        let answer = json_of(
            reqwest::Client::new()
                .post(format!("{}/dev/sign-in", self.hanko))
                .json(&serde_json::json!({ "email": email })),
        )
        .await;
        SessionToken {
            jwt: answer["session_token"].as_str().unwrap().to_string(),
            user_id: answer["user_id"].as_str().unwrap().to_string(),
            session_id: String::new(),
            expires_at: 0,
        }
    }
}

/// Starts `inkan dev` on free ports and waits for its banner.
fn start_dev(data_dir: &std::path::Path, port: u16) -> (std::process::Child, String, Dev) {
    use std::io::{BufRead, BufReader};
    let hanko_port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_inkan"))
        .args(["dev", "--data-dir"])
        .arg(data_dir)
        .args(["--port", &port.to_string()])
        .args(["--hanko-port", &hanko_port.to_string()])
        .args(["--upstream-port", &free_port().to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut banner = String::new();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        banner.push_str(&line);
        banner.push('\n');
        if line.contains("/mcp in Claude Code") {
            break;
        }
    }
    let dev = Dev {
        base: format!("http://127.0.0.1:{port}"),
        hanko: format!("http://127.0.0.1:{hanko_port}"),
    };
    (child, banner, dev)
}

fn interrupt(child: &mut std::process::Child) -> i32 {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    child.wait().unwrap().code().unwrap_or(-1)
}

#[tokio::test]
async fn dev_runs_everything_and_keeps_its_store_across_restarts() {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let (mut dev, banner, endpoint) = start_dev(data.path(), port);
    let mcp_url = format!("http://127.0.0.1:{port}/mcp/demo");
    assert!(
        banner.contains(&format!("MCP server URL   {mcp_url}")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("http://127.0.0.1:{port}/account")),
        "{banner}"
    );
    assert!(
        banner.contains("npx @modelcontextprotocol/inspector"),
        "{banner}"
    );

    let http = reqwest::Client::new();
    let r = http.post(&mcp_url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("oauth-protected-resource/mcp/demo"),
        "{challenge}"
    );
    let ready = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let login = http
        .get(format!("http://127.0.0.1:{port}/login"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        login.contains("dev-sign-in"),
        "dev mode offers the email sign-in form"
    );

    // A client registered today is still known after a restart.
    let reg = json_of(
        http
        .post(format!("http://127.0.0.1:{port}/oauth/register"))
        .json(&serde_json::json!({"redirect_uris": ["http://127.0.0.1/callback"], "token_endpoint_auth_method": "none"})),
    )
    .await;
    let client_id = reg["client_id"].as_str().unwrap().to_string();
    // So is an app connected today, with the user it was connected for.
    let alice = endpoint.sign_in("alice@example.com").await;
    let app = connect_app(&endpoint, &alice, "Alice's app").await;
    assert_eq!(mcp(&endpoint, &app.access).await, 200);
    assert_eq!(interrupt(&mut dev), 0, "Ctrl-C stops dev cleanly");

    let (mut dev, _, endpoint) = start_dev(data.path(), port);
    // The first request after a restart misses the cache and asks the
    // emulator's admin API whether Alice's session still exists: it does.
    assert_eq!(mcp(&endpoint, &app.access).await, 200);
    assert_eq!(refresh(&endpoint, &app).await, 200);
    assert_eq!(
        endpoint.sign_in("alice@example.com").await.user_id,
        alice.user_id,
        "the same email is the same user"
    );
    let authorize = format!(
        "http://127.0.0.1:{port}/oauth/authorize?response_type=code&client_id={client_id}&redirect_uri=http://127.0.0.1:5555/callback&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=s"
    );
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects.get(authorize).send().await.unwrap();
    assert_eq!(r.status(), 303, "known client goes on to sign-in");
    assert!(
        r.headers()["location"]
            .to_str()
            .unwrap()
            .starts_with("/login?return_to=")
    );

    // A second dev on the same port fails with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_inkan"))
        .args(["dev", "--data-dir"])
        .arg(data.path())
        .args(["--port", &port.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("127.0.0.1:{port} is already in use")),
        "{err}"
    );
    assert_eq!(interrupt(&mut dev), 0);
}
