//! The Redis backend: one implementation for standalone Redis and Redis
//! Cluster.
//!
//! Layout (grant-centric; `P` is `store.prefix`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P{g:<grant>}` | hash | `m` grant metadata, `a`/`ae` access hash + expiry, `r`/`re` refresh hash + expiry, `t` last rotation, `e` grant expiry, `l` last use; or `x` when it is a tombstone |
//! | `P{g:<grant>}:c` | hash | a pending code: `h` hash, `d` payload (removed on use), `e` expiry |
//! | `P{u:<user>}`, `P{s:<session>}`, `P{c:<client>}` | hash | index: field = grant id |
//! | `P{cl:<client>}` | hash | a client: `d` JSON, `e` expiry |
//! | `P{m}:<name>` | string | a named value |
//!
//! The grant id travels inside every token, so validation is one `HMGET` on
//! one key. A grant's keys share the hash tag `{g:<grant>}`, so every step
//! that changes them together is one Lua script on one slot; no command ever
//! spans slots. Hashes are stored as their 32 raw bytes.
//!
//! Index entries are written before the record they point to, so every token
//! is reachable by a revocation; a revoked grant is replaced by a short-lived
//! tombstone, so a `create_grant` that races the revocation fails. Every key
//! expires: grants and codes with themselves, tombstones after
//! [`TOMBSTONE_SECS`], index keys no earlier than the longest grant they list.
//!
//! The previous refresh token is not stored: its successor is derived from
//! it, so "the current refresh hash equals the presented token's successor"
//! already proves the presented token was the one rotated away last.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Script, Value};
use serde::{Deserialize, Serialize};

use super::{
    AccessView, Client, CodeOutcome, Grant, PendingCode, Revoked, RotateOutcome, Rotation, Store,
    StoreError, StoreResult, TokenHash, TokenPair,
};
use crate::config::StoreConfig;

pub use super::sqlite::TOMBSTONE_SECS;

/// Connect and response timeouts: an unreachable Redis must turn into a
/// `StoreError` (a 503) within a few seconds, not a hung request.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Upper bound for one store call, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);

/// A multiplexed connection to either deployment; cheap to clone.
#[derive(Clone)]
pub enum Conn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Standalone(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Standalone(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Connects to `store.nodes` (cluster) or `store.url` (standalone).
    pub async fn connect(config: &StoreConfig) -> StoreResult<Conn> {
        if !config.nodes.is_empty() {
            let client = redis::cluster::ClusterClientBuilder::new(config.nodes.clone())
                .connection_timeout(IO_TIMEOUT)
                .response_timeout(IO_TIMEOUT)
                .retries(2)
                .build()?;
            return Ok(Conn::Cluster(client.get_async_connection().await?));
        }
        let url = config
            .url
            .as_deref()
            .ok_or_else(|| StoreError("store.url or store.nodes must be set".into()))?;
        let client = redis::Client::open(url)?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(IO_TIMEOUT))
            .set_response_timeout(Some(IO_TIMEOUT))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        Ok(Conn::Standalone(
            ConnectionManager::new_with_config(client, manager_config).await?,
        ))
    }
}

/// Grant fields that never change, packed into one hash field: a JSON array
/// costs far fewer bytes than one hash field each.
#[derive(Serialize, Deserialize)]
struct Meta(
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    i64,
    i64,
);

impl Meta {
    fn of(g: &Grant) -> Meta {
        Meta(
            g.user_id.clone(),
            g.session_id.clone(),
            g.client_id.clone(),
            g.email.clone(),
            g.scopes.join(" "),
            g.services.join(" "),
            g.resource.clone(),
            g.created_at,
            g.session_exp,
        )
    }

    fn parse(b: &[u8]) -> StoreResult<Meta> {
        serde_json::from_slice(b).map_err(|e| StoreError(format!("corrupt grant record: {e}")))
    }

    fn into_grant(self, grant_id: &str, expires_at: i64, last_used: Option<i64>) -> Grant {
        let words = |s: String| {
            s.split(' ')
                .filter(|w| !w.is_empty())
                .map(String::from)
                .collect()
        };
        Grant {
            grant_id: grant_id.to_owned(),
            user_id: self.0,
            session_id: self.1,
            client_id: self.2,
            email: self.3,
            scopes: words(self.4),
            services: words(self.5),
            resource: self.6,
            created_at: self.7,
            last_used,
            session_exp: self.8,
            expires_at,
        }
    }
}

const CREATE_GRANT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'm', ARGV[1], 'a', ARGV[2], 'ae', ARGV[3], 'r', ARGV[4], 're', ARGV[5], 'e', ARGV[6])
if ARGV[7] ~= '' then redis.call('HSET', KEYS[1], 'l', ARGV[7]) end
redis.call('EXPIREAT', KEYS[1], ARGV[6])
return 1
";

// Returns the payload to the one caller that finds it, 1 to later callers.
const CONSUME_CODE: &str = r"
local c = redis.call('HMGET', KEYS[1], 'h', 'd', 'e')
if not c[1] or c[1] ~= ARGV[1] or tonumber(c[3]) <= tonumber(ARGV[2]) then return 0 end
if not c[2] then return 1 end
redis.call('HDEL', KEYS[1], 'd')
return c[2]
";

// {verdict, meta, last_used, access_exp, refresh_exp}; verdicts: 0 unknown,
// 1 expired, 2 rotated, 3 repeated, 4 reused.
const ROTATE: &str = r"
local g = redis.call('HMGET', KEYS[1], 'm', 'r', 're', 't', 'ae', 'l')
if not g[1] then return {'0'} end
local now = tonumber(ARGV[6])
if now >= tonumber(g[3]) then return {'1'} end
if g[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'a', ARGV[2], 'ae', ARGV[3], 'r', ARGV[4], 're', ARGV[5], 't', ARGV[6], 'e', ARGV[5])
  redis.call('EXPIREAT', KEYS[1], ARGV[5])
  return {'2', g[1], g[6] or ''}
end
if g[2] == ARGV[4] and g[4] and now - tonumber(g[4]) <= tonumber(ARGV[7]) then
  return {'3', g[1], g[6] or '', g[5], g[3]}
end
return {'4'}
";

// {tokens removed, grant meta or '', code payload or ''}
const REVOKE: &str = r"
local g = redis.call('HMGET', KEYS[1], 'm', 'a')
local c = redis.call('HGET', KEYS[2], 'd')
local n = 0
if g[1] then
  n = n + 1
  if g[2] then n = n + 1 end
end
if c then n = n + 1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'x', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {tostring(n), g[1] or '', c or ''}
";

const REVOKE_ACCESS: &str = r"
if redis.call('HGET', KEYS[1], 'a') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'a')
  return 1
end
return 0
";

const TOUCH: &str = r"
if redis.call('HEXISTS', KEYS[1], 'm') == 1 then redis.call('HSET', KEYS[1], 'l', ARGV[1]) end
return 0
";

// The index key lives at least as long as the longest grant it lists.
const INDEX_ADD: &str = r"
redis.call('HSET', KEYS[1], ARGV[1], '')
if redis.call('EXPIRETIME', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('EXPIREAT', KEYS[1], ARGV[2])
end
return 0
";

const EXTEND_CLIENT: &str = r"
if redis.call('HEXISTS', KEYS[1], 'e') == 1 then
  redis.call('HSET', KEYS[1], 'e', ARGV[1])
  redis.call('EXPIREAT', KEYS[1], ARGV[1])
end
return 0
";

struct Scripts {
    create_grant: Script,
    consume_code: Script,
    rotate: Script,
    revoke: Script,
    revoke_access: Script,
    touch: Script,
    index_add: Script,
    extend_client: Script,
}

pub struct RedisStore {
    conn: Conn,
    prefix: String,
    scripts: Scripts,
}

/// Which index a revocation walks.
#[derive(Clone, Copy)]
enum Index {
    User,
    Session,
    Client,
}

impl Index {
    fn tag(self) -> &'static str {
        match self {
            Index::User => "u",
            Index::Session => "s",
            Index::Client => "c",
        }
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError(format!("redis: unexpected reply to {what}"))
}

fn int_of(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

fn opt_int(b: Option<&Vec<u8>>) -> Option<i64> {
    b.and_then(|b| int_of(b))
}

impl RedisStore {
    pub async fn connect(config: &StoreConfig) -> StoreResult<RedisStore> {
        if config.prefix.contains(['{', '}']) {
            return Err(StoreError(
                "store.prefix must not contain '{' or '}' (they select cluster hash slots)".into(),
            ));
        }
        Ok(RedisStore::with_connection(
            Conn::connect(config).await?,
            &config.prefix,
        ))
    }

    /// A store over an existing connection (benchmarks and tests use their
    /// own prefix to share one server).
    pub fn with_connection(conn: Conn, prefix: &str) -> RedisStore {
        RedisStore {
            conn,
            prefix: prefix.to_owned(),
            scripts: Scripts {
                create_grant: Script::new(CREATE_GRANT),
                consume_code: Script::new(CONSUME_CODE),
                rotate: Script::new(ROTATE),
                revoke: Script::new(REVOKE),
                revoke_access: Script::new(REVOKE_ACCESS),
                touch: Script::new(TOUCH),
                index_add: Script::new(INDEX_ADD),
                extend_client: Script::new(EXTEND_CLIENT),
            },
        }
    }

    /// The connection, for tools (the benchmark) that inspect the keys.
    pub fn connection(&self) -> Conn {
        self.conn.clone()
    }

    pub fn grant_key(&self, grant_id: &str) -> String {
        format!("{}{{g:{grant_id}}}", self.prefix)
    }

    pub fn code_key(&self, grant_id: &str) -> String {
        format!("{}{{g:{grant_id}}}:c", self.prefix)
    }

    pub fn user_key(&self, user_id: &str) -> String {
        self.index_key(Index::User, user_id)
    }

    pub fn session_key(&self, session_id: &str) -> String {
        self.index_key(Index::Session, session_id)
    }

    pub fn client_index_key(&self, client_id: &str) -> String {
        self.index_key(Index::Client, client_id)
    }

    fn index_key(&self, index: Index, id: &str) -> String {
        format!("{}{{{}:{id}}}", self.prefix, index.tag())
    }

    fn client_key(&self, client_id: &str) -> String {
        format!("{}{{cl:{client_id}}}", self.prefix)
    }

    fn meta_key(&self, name: &str) -> String {
        format!("{}{{m}}:{name}", self.prefix)
    }

    /// Bounds a whole store call, so that a Redis that stopped answering
    /// fails the request instead of holding it.
    async fn bounded<T>(&self, fut: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
        tokio::time::timeout(CALL_TIMEOUT, fut)
            .await
            .map_err(|_| StoreError("redis: no answer in time".into()))?
    }

    /// Adds `grant_id` to the user, session and client index of `grant`.
    async fn index_grant(&self, grant: &Grant) -> StoreResult<()> {
        let keys = [
            self.user_key(&grant.user_id),
            self.session_key(&grant.session_id),
            self.client_index_key(&grant.client_id),
        ];
        try_join_all(keys.iter().map(|k| {
            let mut conn = self.conn.clone();
            let script = &self.scripts.index_add;
            async move {
                script
                    .key(k)
                    .arg(&grant.grant_id)
                    .arg(grant.expires_at)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
        }))
        .await?;
        Ok(())
    }

    /// Revokes one grant (and its pending code); returns what it removed and
    /// the grant's record, so the caller can clean the other indexes.
    async fn revoke_one(&self, grant_id: &str) -> StoreResult<(Revoked, Option<Grant>)> {
        let mut conn = self.conn.clone();
        let reply: Vec<Vec<u8>> = self
            .scripts
            .revoke
            .key(self.grant_key(grant_id))
            .key(self.code_key(grant_id))
            .arg(TOMBSTONE_SECS)
            .invoke_async(&mut conn)
            .await?;
        let [n, meta, code] = reply.as_slice() else {
            return Err(corrupt("revoke"));
        };
        let tokens = int_of(n).ok_or_else(|| corrupt("revoke"))? as u64;
        let grant = if !meta.is_empty() {
            Some(Meta::parse(meta)?.into_grant(grant_id, 0, None))
        } else if !code.is_empty() {
            let pending: PendingCode = serde_json::from_slice(code)
                .map_err(|e| StoreError(format!("corrupt code record: {e}")))?;
            Some(pending.grant)
        } else {
            None
        };
        let revoked = if tokens > 0 {
            Revoked {
                grants: vec![grant_id.to_owned()],
                tokens,
            }
        } else {
            Revoked::default()
        };
        Ok((revoked, grant))
    }

    /// Revokes grants and removes them from every index that lists them.
    async fn revoke_many(&self, grant_ids: &[String]) -> StoreResult<Revoked> {
        let results = try_join_all(grant_ids.iter().map(|g| self.revoke_one(g))).await?;
        let mut out = Revoked::default();
        let mut unindex: Vec<(String, Vec<&str>)> = Vec::new();
        for ((revoked, grant), id) in results.into_iter().zip(grant_ids) {
            out.merge(revoked);
            if let Some(g) = grant {
                for key in [
                    self.user_key(&g.user_id),
                    self.session_key(&g.session_id),
                    self.client_index_key(&g.client_id),
                ] {
                    match unindex.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, ids)) => ids.push(id),
                        None => unindex.push((key, vec![id])),
                    }
                }
            }
        }
        try_join_all(unindex.iter().map(|(key, ids)| {
            let mut conn = self.conn.clone();
            async move {
                redis::cmd("HDEL")
                    .arg(key)
                    .arg(ids)
                    .query_async::<i64>(&mut conn)
                    .await
            }
        }))
        .await?;
        Ok(out)
    }

    async fn revoke_index(&self, index: Index, id: &str) -> StoreResult<Revoked> {
        let key = self.index_key(index, id);
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await?;
        if ids.is_empty() {
            return Ok(Revoked::default());
        }
        let out = self.revoke_many(&ids).await?;
        // Entries whose record was already gone were not cleaned above.
        redis::cmd("HDEL")
            .arg(&key)
            .arg(&ids)
            .query_async::<i64>(&mut conn)
            .await?;
        Ok(out)
    }

    async fn read_grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        let mut conn = self.conn.clone();
        let [m, e, l]: [Option<Vec<u8>>; 3] = redis::cmd("HMGET")
            .arg(self.grant_key(grant_id))
            .arg(&["m", "e", "l"])
            .query_async(&mut conn)
            .await?;
        let Some(m) = m else { return Ok(None) };
        let e = opt_int(e.as_ref()).ok_or_else(|| corrupt("grant"))?;
        Ok(Some(Meta::parse(&m)?.into_grant(
            grant_id,
            e,
            opt_int(l.as_ref()),
        )))
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> StoreResult<()> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            redis::cmd("PING").query_async::<String>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn put_client(&self, client: &Client) -> StoreResult<()> {
        self.bounded(async {
            let key = self.client_key(&client.client_id);
            let data = serde_json::to_vec(client).map_err(|e| StoreError(e.to_string()))?;
            let mut pipe = redis::pipe();
            pipe.atomic().del(&key).hset(&key, "d", data);
            if let Some(exp) = client.expires_at {
                pipe.hset(&key, "e", exp).expire_at(&key, exp);
            }
            let mut conn = self.conn.clone();
            pipe.query_async::<()>(&mut conn).await?;
            Ok(())
        })
        .await
    }

    async fn get_client(&self, client_id: &str) -> StoreResult<Option<Client>> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            let (d, e): (Option<Vec<u8>>, Option<Vec<u8>>) = redis::cmd("HMGET")
                .arg(self.client_key(client_id))
                .arg(&["d", "e"])
                .query_async(&mut conn)
                .await?;
            let Some(d) = d else { return Ok(None) };
            let mut client: Client = serde_json::from_slice(&d)
                .map_err(|e| StoreError(format!("corrupt client record: {e}")))?;
            client.expires_at = opt_int(e.as_ref());
            Ok(Some(client))
        })
        .await
    }

    async fn extend_client(&self, client_id: &str, expires_at: i64) -> StoreResult<()> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            self.scripts
                .extend_client
                .key(self.client_key(client_id))
                .arg(expires_at)
                .invoke_async::<i64>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn put_code(&self, code: &TokenHash, pending: &PendingCode) -> StoreResult<()> {
        self.bounded(async {
            self.index_grant(&pending.grant).await?;
            let key = self.code_key(&pending.grant.grant_id);
            let data = serde_json::to_vec(pending).map_err(|e| StoreError(e.to_string()))?;
            let mut conn = self.conn.clone();
            redis::pipe()
                .atomic()
                .del(&key)
                .hset_multiple(
                    &key,
                    &[
                        ("h", code.0.to_vec()),
                        ("d", data),
                        ("e", pending.expires_at.to_string().into_bytes()),
                    ],
                )
                .expire_at(&key, pending.expires_at)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn consume_code(
        &self,
        grant_id: &str,
        code: &TokenHash,
        now: i64,
    ) -> StoreResult<CodeOutcome> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            let reply: Value = self
                .scripts
                .consume_code
                .key(self.code_key(grant_id))
                .arg(&code.0[..])
                .arg(now)
                .invoke_async(&mut conn)
                .await?;
            Ok(match reply {
                Value::BulkString(data) => {
                    let pending: PendingCode = serde_json::from_slice(&data)
                        .map_err(|e| StoreError(format!("corrupt code record: {e}")))?;
                    CodeOutcome::Fresh(Box::new(pending))
                }
                Value::Int(1) => CodeOutcome::Replayed {
                    grant_id: grant_id.to_owned(),
                },
                Value::Int(0) => CodeOutcome::Unknown,
                _ => return Err(corrupt("consume_code")),
            })
        })
        .await
    }

    async fn create_grant(&self, grant: &Grant, tokens: &TokenPair) -> StoreResult<bool> {
        self.bounded(async {
            self.index_grant(grant).await?;
            let meta =
                serde_json::to_vec(&Meta::of(grant)).map_err(|e| StoreError(e.to_string()))?;
            let mut conn = self.conn.clone();
            let created: i64 = self
                .scripts
                .create_grant
                .key(self.grant_key(&grant.grant_id))
                .arg(meta)
                .arg(&tokens.access.0[..])
                .arg(tokens.access_expires_at)
                .arg(&tokens.refresh.0[..])
                .arg(tokens.refresh_expires_at)
                .arg(grant.expires_at)
                .arg(grant.last_used.map(|l| l.to_string()).unwrap_or_default())
                .invoke_async(&mut conn)
                .await?;
            Ok(created == 1)
        })
        .await
    }

    async fn lookup_access(
        &self,
        grant_id: &str,
        access: &TokenHash,
    ) -> StoreResult<Option<AccessView>> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            let fields: [Option<Vec<u8>>; 5] = redis::cmd("HMGET")
                .arg(self.grant_key(grant_id))
                .arg(&["m", "a", "ae", "e", "l"])
                .query_async(&mut conn)
                .await?;
            let [Some(m), Some(a), ae, e, l] = fields else {
                return Ok(None);
            };
            if TokenHash::from_slice(&a) != Some(*access) {
                return Ok(None);
            }
            let (Some(ae), Some(e)) = (opt_int(ae.as_ref()), opt_int(e.as_ref())) else {
                return Err(corrupt("lookup_access"));
            };
            Ok(Some(AccessView {
                grant: Meta::parse(&m)?.into_grant(grant_id, e, opt_int(l.as_ref())),
                access_expires_at: ae,
            }))
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        grant_id: &str,
        rotation: &Rotation,
    ) -> StoreResult<RotateOutcome> {
        self.bounded(async {
            let s = &rotation.successor;
            let mut conn = self.conn.clone();
            let reply: Vec<Vec<u8>> = self
                .scripts
                .rotate
                .key(self.grant_key(grant_id))
                .arg(&rotation.presented.0[..])
                .arg(&s.access.0[..])
                .arg(s.access_expires_at)
                .arg(&s.refresh.0[..])
                .arg(s.refresh_expires_at)
                .arg(rotation.now)
                .arg(rotation.grace_secs)
                .invoke_async(&mut conn)
                .await?;
            let verdict = reply.first().and_then(|v| int_of(v));
            let last_used = |i: usize| reply.get(i).and_then(|b| int_of(b));
            Ok(match (verdict, reply.as_slice()) {
                (Some(0), _) => RotateOutcome::Unknown,
                (Some(1), _) => RotateOutcome::Expired,
                (Some(2), [_, m, _]) => {
                    let grant =
                        Meta::parse(m)?.into_grant(grant_id, s.refresh_expires_at, last_used(2));
                    self.index_grant(&grant).await?;
                    RotateOutcome::Rotated { grant }
                }
                (Some(3), [_, m, _, ae, re]) => {
                    let (Some(ae), Some(re)) = (int_of(ae), int_of(re)) else {
                        return Err(corrupt("rotate"));
                    };
                    RotateOutcome::Repeated {
                        grant: Meta::parse(m)?.into_grant(grant_id, re, last_used(2)),
                        access_expires_at: ae,
                        refresh_expires_at: re,
                    }
                }
                (Some(4), _) => RotateOutcome::Reused {
                    revoked: self.revoke_many(&[grant_id.to_owned()]).await?,
                },
                _ => return Err(corrupt("rotate")),
            })
        })
        .await
    }

    async fn get_grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        self.bounded(self.read_grant(grant_id)).await
    }

    async fn list_user_grants(&self, user_id: &str) -> StoreResult<Vec<Grant>> {
        self.bounded(async {
            let key = self.user_key(user_id);
            let mut conn = self.conn.clone();
            let ids: Vec<String> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await?;
            let probes = try_join_all(ids.iter().map(|id| async move {
                let grant = self.read_grant(id).await?;
                let mut conn = self.conn.clone();
                let pending: bool = match grant {
                    Some(_) => true,
                    None => {
                        redis::cmd("EXISTS")
                            .arg(self.code_key(id))
                            .query_async(&mut conn)
                            .await?
                    }
                };
                StoreResult::Ok((id, grant, pending))
            }))
            .await?;
            // Entries of codes never exchanged and of grants that expired
            // would otherwise pile up in an active user's index.
            let stale: Vec<&String> = probes
                .iter()
                .filter(|(_, _, live)| !live)
                .map(|(id, _, _)| *id)
                .collect();
            if !stale.is_empty() {
                redis::cmd("HDEL")
                    .arg(&key)
                    .arg(stale)
                    .query_async::<i64>(&mut conn)
                    .await?;
            }
            let mut grants: Vec<Grant> = probes
                .into_iter()
                .filter_map(|(_, g, _)| g)
                .filter(|g| g.user_id == user_id)
                .collect();
            grants.sort_by(|a, b| {
                b.created_at
                    .cmp(&a.created_at)
                    .then_with(|| a.grant_id.cmp(&b.grant_id))
            });
            Ok(grants)
        })
        .await
    }

    async fn touch_grants(&self, updates: &[(String, i64)]) -> StoreResult<()> {
        self.bounded(async {
            try_join_all(updates.iter().map(|(id, at)| {
                let mut conn = self.conn.clone();
                let key = self.grant_key(id);
                async move {
                    self.scripts
                        .touch
                        .key(key)
                        .arg(*at)
                        .invoke_async::<i64>(&mut conn)
                        .await
                }
            }))
            .await?;
            Ok(())
        })
        .await
    }

    async fn revoke_access_token(&self, grant_id: &str, access: &TokenHash) -> StoreResult<bool> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            let n: i64 = self
                .scripts
                .revoke_access
                .key(self.grant_key(grant_id))
                .arg(&access.0[..])
                .invoke_async(&mut conn)
                .await?;
            Ok(n == 1)
        })
        .await
    }

    async fn revoke_grant(&self, grant_id: &str) -> StoreResult<Revoked> {
        self.bounded(self.revoke_many(&[grant_id.to_owned()])).await
    }

    async fn revoke_user(&self, user_id: &str) -> StoreResult<Revoked> {
        self.bounded(self.revoke_index(Index::User, user_id)).await
    }

    async fn revoke_session(&self, session_id: &str) -> StoreResult<Revoked> {
        self.bounded(self.revoke_index(Index::Session, session_id))
            .await
    }

    async fn revoke_client(&self, client_id: &str) -> StoreResult<Revoked> {
        self.bounded(self.revoke_index(Index::Client, client_id))
            .await
    }

    async fn get_meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            Ok(redis::cmd("GET")
                .arg(self.meta_key(name))
                .query_async(&mut conn)
                .await?)
        })
        .await
    }

    async fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            let previous: Option<Vec<u8>> = redis::cmd("SET")
                .arg(self.meta_key(name))
                .arg(value)
                .arg("NX")
                .arg("GET")
                .query_async(&mut conn)
                .await?;
            Ok(previous.unwrap_or_else(|| value.to_vec()))
        })
        .await
    }

    async fn set_meta(&self, name: &str, value: &[u8]) -> StoreResult<()> {
        self.bounded(async {
            let mut conn = self.conn.clone();
            redis::cmd("SET")
                .arg(self.meta_key(name))
                .arg(value)
                .query_async::<()>(&mut conn)
                .await?;
            Ok(())
        })
        .await
    }

    async fn sweep(&self, _now: i64) -> StoreResult<u64> {
        Ok(0)
    }
}
