//! `hanko-emulator`: the emulator alone, for local development.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hanko_emulator::{EmulatorConfig, ROUTES_HELP};

/// A loopback-only emulator of Hanko's session, admin and webhook APIs.
#[derive(Debug, Parser)]
#[command(name = "hanko-emulator", version, after_help = ROUTES_HELP)]
struct Args {
    /// Loopback address to listen on, e.g. 127.0.0.1:8081.
    #[arg(long)]
    listen: SocketAddr,
    /// `aud` of session JWTs (repeatable); default `localhost`.
    #[arg(long = "audience")]
    audience: Vec<String>,
    /// Webhook callback URL (repeatable); every event goes to every URL.
    #[arg(long = "webhook")]
    webhook: Vec<String>,
    /// Require `Authorization: Bearer <KEY>` on /admin routes.
    #[arg(long, env = "HANKO_EMULATOR_ADMIN_API_KEY", hide_env_values = true)]
    admin_api_key: Option<String>,
    /// RSA key size: 2048, 3072, 4096 or 8192.
    #[arg(long, default_value_t = 4096)]
    key_bits: usize,
    /// Session lifetime, e.g. `12h`, `30m`.
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    session_lifetime: Duration,
    /// `iss` claim of session JWTs (omitted by default, as Hanko does).
    #[arg(long)]
    issuer: Option<String>,
    /// Keep keys, users and sessions in this JSON file across restarts.
    #[arg(long)]
    state_file: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let defaults = EmulatorConfig::default();
    let config = EmulatorConfig {
        audience: if args.audience.is_empty() {
            defaults.audience
        } else {
            args.audience
        },
        key_bits: args.key_bits,
        session_lifetime: args.session_lifetime,
        admin_api_key: args.admin_api_key,
        webhooks: args.webhook,
        issuer: args.issuer,
        state_file: args.state_file,
    };
    let emulator = hanko_emulator::start(args.listen, config).await?;
    tracing::info!(url = emulator.url(), "Hanko emulator listening");
    tokio::signal::ctrl_c().await?;
    emulator.shutdown().await;
    Ok(())
}
