//! Redis store benchmark (not a test): memory per grant, and the time to
//! revoke all grants of one user as the store grows. `bench/store.sh` runs
//! it against a fresh `redis-server` it starts itself.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{StreamExt, TryStreamExt, stream};
use inkan::config::{StoreBackend, StoreConfig};
use inkan::store::redis::RedisStore;
use inkan::store::token::{self, TokenKind};
use inkan::store::{Grant, Store, TokenPair, unix_now};

#[derive(Parser)]
struct Args {
    /// Redis URL of a server holding nothing else.
    #[arg(long)]
    url: String,
    /// Largest store size to measure revocation in (10,000 is always measured).
    #[arg(long, default_value_t = 1_000_000)]
    grants: usize,
}

const PREFIX: &str = "inkan:";
/// Grants created concurrently while loading; the multiplexed connection
/// pipelines them on the wire.
const IN_FLIGHT: usize = 512;

fn grant(user: &str, session: &str, client: &str) -> (Grant, TokenPair) {
    let now = unix_now();
    let grant_id = token::new_grant_id();
    let g = Grant {
        grant_id: grant_id.clone(),
        user_id: user.into(),
        email: Some("someone@example.com".into()),
        session_id: session.into(),
        client_id: client.into(),
        scopes: vec!["notes:read".into(), "notes:write".into()],
        services: vec!["notes".into()],
        resource: "https://mcp.example.com/mcp/notes".into(),
        created_at: now,
        last_used: None,
        session_exp: now + 30 * 86400,
        expires_at: now + 30 * 86400,
    };
    let pair = TokenPair {
        access: token::mint(TokenKind::Access, &grant_id).hash,
        access_expires_at: now + 3600,
        refresh: token::mint(TokenKind::Refresh, &grant_id).hash,
        refresh_expires_at: g.expires_at,
    };
    (g, pair)
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn create_all(store: &RedisStore, grants: Vec<(Grant, TokenPair)>) -> anyhow::Result<()> {
    stream::iter(grants)
        .map(|(g, t)| async move { anyhow::Ok(store.create_grant(&g, &t).await?) })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|created| async move {
            anyhow::ensure!(created, "grant not created");
            Ok(())
        })
        .await
}

async fn memory_by_kind(store: &RedisStore) -> anyhow::Result<BTreeMap<&'static str, (u64, u64)>> {
    let mut conn = store.connection();
    let keys: Vec<String> = {
        let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(format!("{PREFIX}*"))
            .arg("COUNT")
            .arg(1000)
            .clone()
            .iter_async(&mut conn)
            .await?;
        let mut keys = Vec::new();
        while let Some(k) = iter.next_item().await {
            keys.push(k?);
        }
        keys
    };
    let mut out = BTreeMap::new();
    for key in keys {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await?;
        let kind = match &key[PREFIX.len()..] {
            k if k.starts_with("{g:") => "grant record",
            k if k.starts_with("{u:") => "user index",
            k if k.starts_with("{s:") => "session index",
            k if k.starts_with("{c:") => "client index",
            k if k.ends_with(":c") => "pending code",
            k if k.starts_with('{') && !k.starts_with("{m}") => "grant record",
            _ => "other",
        };
        let e = out.entry(kind).or_insert((0, 0));
        e.0 += bytes;
        e.1 += 1;
    }
    Ok(out)
}

async fn used_memory(store: &RedisStore) -> anyhow::Result<u64> {
    let mut conn = store.connection();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))
}

fn print_kinds(title: &str, by_kind: &BTreeMap<&'static str, (u64, u64)>, n: usize) -> u64 {
    println!("  {title}:");
    for (kind, (bytes, keys)) in by_kind {
        println!(
            "    {kind:<14} {keys:>5} keys {:>7.1} bytes per grant",
            *bytes as f64 / n as f64
        );
    }
    let total = by_kind.values().map(|(b, _)| b).sum::<u64>() / n as u64;
    println!("    total          {total} bytes per grant");
    total
}

/// Bytes per grant, measured as the growth of every key the grants touch.
async fn measure_memory(store: &RedisStore) -> anyhow::Result<u64> {
    const USERS: usize = 10;
    const SESSIONS: usize = 10;
    const CLIENTS: usize = 10;
    const N: usize = 1000;
    let users: Vec<String> = (0..USERS).map(|_| uuid()).collect();
    let sessions: Vec<String> = (0..USERS * SESSIONS).map(|_| uuid()).collect();
    let clients: Vec<String> = (0..CLIENTS).map(|_| uuid()).collect();
    let batch = || {
        (0..N)
            .map(|i| {
                grant(
                    &users[i % USERS],
                    &sessions[i % (USERS * SESSIONS)],
                    &clients[i / USERS % CLIENTS],
                )
            })
            .collect::<Vec<_>>()
    };
    create_all(store, batch()).await?;
    let base = memory_by_kind(store).await?;
    let used_before = used_memory(store).await?;
    create_all(store, batch()).await?;
    let grown = memory_by_kind(store).await?;
    let used_after = used_memory(store).await?;
    let delta: BTreeMap<&'static str, (u64, u64)> = grown
        .iter()
        .map(|(kind, (bytes, keys))| {
            let (b0, k0) = base.get(kind).copied().unwrap_or_default();
            (*kind, (bytes - b0, keys - k0))
        })
        .collect();

    println!("== memory per grant (one access + one refresh token) ==");
    println!(
        "method: {N} grants for {USERS} users, {SESSIONS} Hanko sessions each, {CLIENTS} clients \
         (UUID ids, an email, 2 scopes, 1 service, an https resource), created through \
         Store::create_grant; then {N} more for the same users, sessions and clients. \
         Bytes = growth of the sum of MEMORY USAGE (SAMPLES 0) over every key, divided by {N}: \
         each grant's own record plus the delta its entries add to the shared index keys."
    );
    let per_grant = print_kinds("growth by the second batch (the figure)", &delta, N);
    print_kinds(
        "whole keys after the first batch (index keys amortised)",
        &base,
        N,
    );
    println!(
        "  cross-check: INFO used_memory grew by {} bytes per grant in the second batch \
         (also counts the keyspace and expires dictionaries)",
        used_after.saturating_sub(used_before) / N as u64
    );

    let conn = store.connection();
    let usage = |key: String| {
        let mut conn = conn.clone();
        async move {
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .arg("SAMPLES")
                .arg(0)
                .query_async::<u64>(&mut conn)
                .await
        }
    };
    let lone = grant(&users[0], &uuid(), &clients[0]);
    create_all(store, vec![lone.clone()]).await?;
    println!(
        "  a grant that opens a new Hanko session also creates that session's index key: {} bytes",
        usage(store.session_key(&lone.0.session_id)).await?
    );
    // A client shared by very many grants outgrows the compact listpack
    // encoding of its index hash; report what an entry costs there.
    let big = uuid();
    let grants = (0..1000)
        .map(|_| grant(&users[1], &sessions[1], &big))
        .collect();
    create_all(store, grants).await?;
    println!(
        "  an entry in the index of a client with 1000 grants (hashtable encoding): {:.1} bytes",
        usage(store.client_index_key(&big)).await? as f64 / 1000.0
    );
    Ok(per_grant)
}

/// Grows the store to `size` grants with filler users of 10 grants each.
async fn fill_to(store: &RedisStore, have: &mut usize, size: usize) -> anyhow::Result<()> {
    let start = Instant::now();
    let clients: Vec<String> = (0..1000).map(|_| uuid()).collect();
    while *have < size {
        let batch = (size - *have).min(50_000);
        let grants = (0..batch)
            .map(|i| {
                let user = format!("filler-{}", (*have + i) / 10);
                grant(&user, &uuid(), &clients[(*have + i) % clients.len()])
            })
            .collect();
        create_all(store, grants).await?;
        *have += batch;
    }
    eprintln!("  (loaded to {size} grants in {:.1?})", start.elapsed());
    Ok(())
}

async fn measure_revoke(store: &RedisStore, size: usize) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for _ in 0..5 {
        let user = uuid();
        let client = uuid();
        let grants = (0..100).map(|_| grant(&user, &uuid(), &client)).collect();
        create_all(store, grants).await?;
        let start = Instant::now();
        let revoked = store.revoke_user(&user).await?;
        times.push(start.elapsed());
        anyhow::ensure!(revoked.grants.len() == 100, "revoked {revoked:?}");
        anyhow::ensure!(store.list_user_grants(&user).await?.is_empty());
    }
    times.sort();
    println!(
        "  store of {size:>9} grants: revoke all 100 grants of one user: min {:.2?}, median {:.2?}, max {:.2?} (5 users)",
        times[0], times[2], times[4]
    );
    Ok(times)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = RedisStore::connect(&StoreConfig {
        backend: StoreBackend::Redis,
        url: Some(args.url.clone()),
        prefix: PREFIX.into(),
        ..StoreConfig::default()
    })
    .await?;
    store.ping().await?;

    let per_grant = measure_memory(&store).await?;
    let mut have = 3001;

    println!("== revoke all grants of one user (100 grants, each in its own session) ==");
    let mut sizes = vec![10_000, args.grants];
    sizes.sort();
    sizes.dedup();
    let mut medians = Vec::new();
    for size in sizes {
        fill_to(&store, &mut have, size).await?;
        medians.push((size, measure_revoke(&store, size).await?[2]));
    }
    println!("== summary ==");
    println!("  bytes per grant: {per_grant} (target <= 400)");
    for (size, median) in medians {
        println!("  revoke-all median at {size} grants: {median:.2?} (target <= 20ms)");
    }
    Ok(())
}
