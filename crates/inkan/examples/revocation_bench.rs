//! Revocation propagation between two inkan instances sharing one Redis.
//!
//! Instance A revokes a grant (store + `revocation::announce`, the seam every
//! revoking route uses); the clock starts when that call returns and stops
//! when instance B's validator, which had the token cached, refuses it.
//! Run through `bench/revocation.sh`.
//!
//! ```sh
//! cargo run --release -p inkan --example revocation_bench -- --redis redis://127.0.0.1:6379 --revocations 200
//! ```
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use inkan::config::Config;
use inkan::gateway::validate::Verdict;
use inkan::server::AppState;
use inkan::store::token::{mint, new_grant_id};
use inkan::store::{Grant, TokenKind, TokenPair, unix_now};

async fn instance(redis: &str, prefix: &str) -> anyhow::Result<AppState> {
    let config = Config::from_toml_str(&format!(
        r#"
        public_url = "http://127.0.0.1:1"
        listen = "127.0.0.1:0"
        [hanko]
        api_url = "http://127.0.0.1:2"
        audience = "localhost"
        [store]
        backend = "redis"
        url = "{redis}"
        prefix = "{prefix}"
        [gateway]
        cache_ttl = "10m"
        [[services]]
        id = "notes"
        name = "Notes"
        upstream = "http://127.0.0.1:3/mcp"
        "#
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let state = inkan::server::build(config).await?;
    tokio::time::timeout(
        Duration::from_secs(10),
        state.revocation.bus_connected().wait_for(|c| *c),
    )
    .await
    .context("the revocation bus did not connect")??;
    Ok(state)
}

async fn allowed(state: &AppState, token: &str) -> bool {
    matches!(
        state
            .gateway
            .validator
            .validate(token, "notes", &[], unix_now())
            .await,
        Verdict::Allowed(_)
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut redis = "redis://127.0.0.1:6379".to_string();
    let mut n = 200usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--redis" => redis = args.next().context("--redis needs a URL")?,
            "--revocations" => {
                n = args
                    .next()
                    .context("--revocations needs a number")?
                    .parse()?
            }
            other => bail!("unknown argument {other}; use --redis URL --revocations N"),
        }
    }
    let prefix = format!("bench-{}:", std::process::id());
    let a = instance(&redis, &prefix).await?;
    let b = instance(&redis, &prefix).await?;

    let now = unix_now();
    let mut tokens = Vec::with_capacity(n);
    for _ in 0..n {
        let grant_id = new_grant_id();
        let access = mint(TokenKind::Access, &grant_id);
        let grant = Grant {
            grant_id: grant_id.clone(),
            user_id: "bench-user".into(),
            email: None,
            session_id: "bench-session".into(),
            client_id: "bench-client".into(),
            scopes: Vec::new(),
            services: vec!["notes".into()],
            resource: a.config.resource_url("notes"),
            created_at: now,
            last_used: None,
            session_exp: now + 3600,
            expires_at: now + 3600,
        };
        let pair = TokenPair {
            access: access.hash,
            access_expires_at: now + 3600,
            refresh: mint(TokenKind::Refresh, &grant_id).hash,
            refresh_expires_at: now + 3600,
        };
        if !a.store.create_grant(&grant, &pair).await? {
            bail!("could not create a grant");
        }
        // Cached on B, so only the bus can make B refuse it before the TTL.
        if !allowed(&b, &access.token).await {
            bail!("B refused a fresh token");
        }
        tokens.push((grant_id, access.token));
    }

    let mut latencies = Vec::with_capacity(n);
    for (grant_id, token) in &tokens {
        let revoked = a.store.revoke_grant(grant_id).await?;
        inkan::revocation::announce(&a, &revoked).await;
        let returned = Instant::now();
        while allowed(&b, token).await {
            if returned.elapsed() > Duration::from_secs(10) {
                bail!("B still accepts a token revoked 10 s ago");
            }
            tokio::task::yield_now().await;
        }
        latencies.push(returned.elapsed());
    }
    latencies.sort();
    println!(
        "revocation propagation A -> B over Redis pub/sub, {n} revocations: p50 {:?}, p99 {:?}, max {:?} (target p99 <= 100ms)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies[latencies.len() - 1],
    );
    Ok(())
}
