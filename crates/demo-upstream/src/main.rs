//! `demo-upstream`: the demo MCP server on its own, for benchmarks and manual runs.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use clap::Parser;
use demo_upstream::DemoConfig;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(
    name = "demo-upstream",
    version,
    about = "A demo MCP server that reports the identity inkan asserted"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// inkan's JWKS, `<public_url>/.well-known/jwks.json`.
    #[arg(long)]
    jwks_url: String,
    /// Expected assertion audience, `<public_url>/mcp/<service>`.
    #[arg(long)]
    audience: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let upstream = demo_upstream::start(
        listener,
        DemoConfig {
            jwks_url: args.jwks_url,
            audience: args.audience,
        },
    )
    .await?;
    tracing::info!(url = %upstream.url(), "demo upstream listening");
    tokio::signal::ctrl_c().await?;
    upstream.shutdown().await
}
