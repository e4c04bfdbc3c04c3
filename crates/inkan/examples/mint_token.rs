//! Mints an access token straight into the configured store, so benchmarks
//! can call `/mcp/<service>` without a browser sign-in.
//!
//! It writes what a completed authorization would: a client and a grant for
//! one service, with a fresh access and refresh token, and prints the access
//! token on stdout. Operators have no use for it: anyone who can run it can
//! already write to the store.
//!
//! ```text
//! cargo run --release -p inkan --example mint_token -- --config inkan.toml --service notes
//! ```

use std::path::PathBuf;

use anyhow::{Context, anyhow, ensure};
use clap::Parser;
use inkan::store::token::{mint, new_grant_id};
use inkan::store::{self, Client, ClientAuthMethod, ClientSource, Grant, TokenKind, TokenPair};

#[derive(Debug, Parser)]
struct Args {
    /// The inkan configuration whose store receives the grant.
    #[arg(long, short)]
    config: PathBuf,
    /// Service id the token is valid for.
    #[arg(long)]
    service: String,
}

const CLIENT_ID: &str = "inkan-bench";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = inkan::cli::load_config(Some(args.config)).map_err(|e| anyhow!("{e}"))?;
    let service = config
        .services
        .iter()
        .find(|s| s.id == args.service)
        .with_context(|| format!("no service {:?} in the configuration", args.service))?;
    let store = store::connect(&config.store).await?;

    let now = store::unix_now();
    let access_expires_at = now + config.tokens.access_ttl.as_secs() as i64;
    let expires_at = now + config.tokens.refresh_ttl.as_secs() as i64;
    store
        .put_client(&Client {
            client_id: CLIENT_ID.into(),
            client_name: Some("inkan benchmark".into()),
            client_uri: None,
            logo_uri: None,
            redirect_uris: vec!["http://127.0.0.1/callback".into()],
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            auth_method: ClientAuthMethod::None,
            secret_hash: None,
            source: ClientSource::Registered,
            created_at: now,
            expires_at: None,
        })
        .await?;

    let grant_id = new_grant_id();
    let access = mint(TokenKind::Access, &grant_id);
    let refresh = mint(TokenKind::Refresh, &grant_id);
    let grant = Grant {
        grant_id,
        user_id: "bench-user".into(),
        email: Some("bench@example.com".into()),
        session_id: "bench-session".into(),
        client_id: CLIENT_ID.into(),
        scopes: service.scopes.clone(),
        services: vec![service.id.clone()],
        resource: format!("{}/mcp/{}", config.public_url, service.id),
        created_at: now,
        last_used: None,
        session_exp: expires_at,
        expires_at,
    };
    let tokens = TokenPair {
        access: access.hash,
        access_expires_at,
        refresh: refresh.hash,
        refresh_expires_at: expires_at,
    };
    ensure!(
        store.create_grant(&grant, &tokens).await?,
        "the store refused the new grant"
    );
    println!("{}", access.token);
    Ok(())
}
