//! The command line, run as the real binary.

use std::process::Command;

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
        stderr.contains("services[0].upstream: must be an http(s) URL (got 'gopher://x')"),
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
