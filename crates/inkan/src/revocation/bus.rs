//! The invalidation bus: revoked grant ids travel between instances over
//! Redis pub/sub.
//!
//! Pub/sub is fire-and-forget: a message sent while a subscriber is
//! disconnected is gone. So a subscriber flushes its whole local cache when
//! it loses its connection and again once it is subscribed anew, and the
//! cache's own TTL (`gateway.cache_ttl`) bounds staleness if everything else
//! fails. The store stays the source of truth; the bus only shortens the time
//! a cached validation can outlive its grant.
//!
//! In a cluster, `PUBLISH` reaches subscribers on every node, so the
//! subscriber listens on one node at a time and moves to the next one when
//! that node goes away.

use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use super::GrantCache;
use crate::config::StoreConfig;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Grant ids are 22 characters; anything much longer is not ours.
const MAX_ID_LEN: usize = 64;
/// Bounds the work one message can cause.
const MAX_IDS_PER_MESSAGE: usize = 10_000;

/// Where the bus lives: the store's Redis (standalone or cluster).
#[derive(Debug, Clone)]
pub struct Target {
    /// Standalone: one URL. Cluster: the seed nodes, tried in turn.
    nodes: Vec<String>,
    cluster: bool,
    channel: String,
}

impl Target {
    /// `None` when the store is not Redis (single-node SQLite needs no bus).
    pub fn from_store_config(store: &StoreConfig) -> Option<Target> {
        if store.backend != crate::config::StoreBackend::Redis {
            return None;
        }
        let channel = format!("{}revoked", store.prefix);
        if !store.nodes.is_empty() {
            Some(Target {
                nodes: store.nodes.clone(),
                cluster: true,
                channel,
            })
        } else {
            store.url.as_ref().map(|u| Target {
                nodes: vec![u.clone()],
                cluster: false,
                channel,
            })
        }
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }
}

#[derive(Clone)]
enum Conn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

/// Publishes revoked grant ids. Connects lazily and reconnects on failure,
/// so a Redis outage at startup does not stop the process.
pub struct Publisher {
    target: Target,
    conn: Mutex<Option<Conn>>,
}

impl Publisher {
    pub fn new(target: Target) -> Publisher {
        Publisher {
            target,
            conn: Mutex::new(None),
        }
    }

    async fn connect(&self) -> redis::RedisResult<Conn> {
        let connect = async {
            if self.target.cluster {
                let client = redis::cluster::ClusterClient::new(self.target.nodes.clone())?;
                Ok(Conn::Cluster(client.get_async_connection().await?))
            } else {
                let client = redis::Client::open(self.target.nodes[0].as_str())?;
                Ok(Conn::Single(
                    client.get_multiplexed_async_connection().await?,
                ))
            }
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| timeout_error("connect"))?
    }

    async fn publish_once(&self, payload: &str) -> redis::RedisResult<()> {
        let mut guard = self.conn.lock().await;
        let conn = match guard.as_ref() {
            Some(c) => c.clone(),
            None => {
                let c = self.connect().await?;
                *guard = Some(c.clone());
                c
            }
        };
        drop(guard);
        let channel = self.target.channel.as_str();
        let sent = async {
            match conn {
                Conn::Single(mut c) => c.publish::<_, _, i64>(channel, payload).await,
                Conn::Cluster(mut c) => c.publish::<_, _, i64>(channel, payload).await,
            }
        };
        let result = tokio::time::timeout(PUBLISH_TIMEOUT, sent)
            .await
            .map_err(|_| timeout_error("publish"))
            .and_then(|r| r);
        if result.is_err() {
            *self.conn.lock().await = None;
        }
        result.map(drop)
    }

    /// Sends the ids to every subscribed instance. Retries once on a fresh
    /// connection; a lost message is covered by the flush-on-reconnect and the
    /// cache TTL, so failure is logged, not returned.
    pub async fn publish(&self, grant_ids: &[String]) -> bool {
        if grant_ids.is_empty() {
            return true;
        }
        let payload = grant_ids.join(" ");
        let mut last = None;
        for _ in 0..2 {
            match self.publish_once(&payload).await {
                Ok(()) => return true,
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            tracing::warn!(error = %e, grants = grant_ids.len(), "could not publish revocation; other instances rely on their cache TTL");
        }
        false
    }
}

fn timeout_error(what: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "timed out", what.to_string()))
}

/// The grant ids in a bus message; malformed parts are dropped.
fn parse_message(payload: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(payload) else {
        return Vec::new();
    };
    text.split_ascii_whitespace()
        .filter(|id| id.len() <= MAX_ID_LEN)
        .take(MAX_IDS_PER_MESSAGE)
        .map(str::to_owned)
        .collect()
}

/// Runs the subscriber until `stop` is cancelled. `connected` turns `true`
/// once subscribed (after the cache flush) and `false` whenever the
/// connection is lost.
pub fn spawn_subscriber(
    target: Target,
    cache: Arc<dyn GrantCache>,
    connected: Arc<watch::Sender<bool>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        stop.run_until_cancelled(subscribe_forever(target, cache, connected))
            .await;
    })
}

async fn subscribe_forever(
    target: Target,
    cache: Arc<dyn GrantCache>,
    connected: Arc<watch::Sender<bool>>,
) {
    use futures_util::StreamExt;

    let mut backoff = BACKOFF_MIN;
    let mut node = 0usize;
    loop {
        let url = &target.nodes[node];
        match subscribe(url, &target.channel).await {
            Ok(mut pubsub) => {
                // Anything revoked while we were not listening is unknown to us.
                cache.invalidate_all();
                connected.send_replace(true);
                backoff = BACKOFF_MIN;
                tracing::info!(channel = %target.channel, "revocation bus subscribed");
                let mut messages = pubsub.on_message();
                while let Some(msg) = messages.next().await {
                    let ids = parse_message(msg.get_payload_bytes());
                    if !ids.is_empty() {
                        cache.invalidate_grants(&ids);
                    }
                }
                connected.send_replace(false);
                cache.invalidate_all();
                tracing::warn!(channel = %target.channel, "revocation bus connection lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "revocation bus cannot subscribe");
                node = (node + 1) % target.nodes.len();
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn subscribe(url: &str, channel: &str) -> redis::RedisResult<redis::aio::PubSub> {
    let setup = async {
        let client = redis::Client::open(url)?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, setup)
        .await
        .map_err(|_| timeout_error("subscribe"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_and_split() {
        assert_eq!(parse_message(b"a b  c"), vec!["a", "b", "c"]);
        assert_eq!(parse_message(b"\xff\xfe"), Vec::<String>::new());
        let long = "x".repeat(MAX_ID_LEN + 1);
        assert_eq!(parse_message(format!("ok {long}").as_bytes()), vec!["ok"]);
    }

    #[test]
    fn sqlite_has_no_bus_and_redis_does() {
        let mut store = StoreConfig::default();
        assert!(Target::from_store_config(&store).is_none());
        store.backend = crate::config::StoreBackend::Redis;
        store.url = Some("redis://127.0.0.1:6379".into());
        let t = Target::from_store_config(&store).unwrap();
        assert_eq!(t.channel(), "inkan:revoked");
        assert!(!t.cluster);
        store.nodes = vec!["redis://127.0.0.1:7000".into()];
        assert!(Target::from_store_config(&store).unwrap().cluster);
    }
}
