//! `inkan dev`: the whole system on one machine. It starts the Hanko
//! emulator and the demo MCP server in this process and runs the gateway
//! with an ordinary configuration pointing at them. Nothing else in inkan
//! knows it is in dev mode: the login page's email form comes from the
//! `hanko.dev_sign_in_url` configuration key, which dev sets.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Toml};

use crate::config::Config;
use crate::serve::{bind, init_logging, shutdown_signal};

pub struct DevPorts {
    pub gateway: u16,
    pub hanko: u16,
    pub upstream: u16,
}

/// The configuration dev runs the gateway with; `INKAN_*` variables still
/// override it.
pub fn config(data_dir: &Path, ports: &DevPorts) -> anyhow::Result<Config> {
    let DevPorts {
        gateway,
        hanko,
        upstream,
    } = ports;
    let db = data_dir.join("inkan.db");
    let toml = format!(
        r#"
        public_url = "http://127.0.0.1:{gateway}"
        listen = "127.0.0.1:{gateway}"
        [hanko]
        api_url = "http://127.0.0.1:{hanko}"
        audience = "localhost"
        admin_api_url = "http://127.0.0.1:{hanko}/admin"
        dev_sign_in_url = "http://127.0.0.1:{hanko}/dev/sign-in"
        # The emulator does not speak Hanko's flow API, so Hanko Elements has
        # nothing to talk to; the login page's email form signs in instead.
        elements_url = "http://127.0.0.1:{hanko}/dev/no-elements.js"
        [store]
        backend = "sqlite"
        path = {db:?}
        [[services]]
        id = "demo"
        name = "Demo MCP server"
        upstream = "http://127.0.0.1:{upstream}/mcp"
        scopes = ["demo:use"]
        "#,
        db = db.display().to_string(),
    );
    let figment = Figment::from(Toml::string(&toml)).merge(Env::prefixed("INKAN_").split("__"));
    Config::from_figment(figment).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Runs the emulator, the demo upstream and the gateway until Ctrl-C.
pub async fn run(data_dir: &Path, ports: DevPorts) -> anyhow::Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let config = config(data_dir, &ports)?;
    init_logging(&config.log);
    let loopback = |port| SocketAddr::from((Ipv4Addr::LOCALHOST, port));

    // Bind the gateway first: a taken port should fail before anything starts.
    let listener = bind(loopback(ports.gateway), "gateway").await?;
    let upstream_listener = bind(loopback(ports.upstream), "demo MCP server").await?;
    let hanko = hanko_emulator::start(
        loopback(ports.hanko),
        hanko_emulator::EmulatorConfig {
            audience: vec!["localhost".into()],
            key_bits: 2048,
            webhooks: vec![format!("{}/hanko/webhook", config.public_url)],
            // Users, sessions and keys survive restarts like inkan's store,
            // so connected apps keep working and keep their user.
            state_file: Some(data_dir.join("hanko-emulator.json")),
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("Hanko emulator on 127.0.0.1:{}: {e:#}", ports.hanko))?;
    let demo = demo_upstream::start(
        upstream_listener,
        demo_upstream::DemoConfig {
            jwks_url: format!("{}/.well-known/jwks.json", config.public_url),
            audience: config.resource_url("demo"),
        },
    )
    .await?;

    let state = crate::server::build(config).await?;
    print_banner(&state.config, data_dir);
    crate::server::run(listener, state.clone(), shutdown_signal()).await?;
    let _ = state.toucher.flush().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), demo.shutdown()).await;
    hanko.shutdown().await;
    eprintln!("inkan dev stopped");
    Ok(())
}

fn print_banner(config: &Config, data_dir: &Path) {
    let mcp = config.resource_url("demo");
    let base = &config.public_url;
    println!(
        r#"
inkan dev is running (data in {data}; Ctrl-C stops everything)

  MCP server URL   {mcp}
  Account page     {base}/account
  Hanko emulator   {hanko}  (sign in with any email address)

Connect MCP Inspector:
  npx @modelcontextprotocol/inspector
  then Transport "Streamable HTTP", URL {mcp}, Connect

Connect Claude Code:
  claude mcp add --transport http inkan-demo {mcp}
  then run /mcp in Claude Code to sign in
"#,
        data = data_dir.display(),
        hanko = config.hanko.api_url,
    );
}
