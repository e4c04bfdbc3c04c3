//! The Redis backend: one implementation for standalone Redis and Redis
//! Cluster.
//!
//! Layout (grant-centric; `P` is `store.prefix`):
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P{<grant>}` | hash | `0`,`1`,…: the grant's fixed fields, packed ([`pack_meta`]) and cut into pieces; `a`: access hash + expiry (+ last use); `r`: refresh hash + expiry (+ last rotation); `e`: grant expiry when it differs from the refresh token's; or only `x` when it is a tombstone |
//! | `P{<grant>}:c` | hash | a pending code: `h` hash, `d` payload (removed on use), `e` expiry |
//! | `P{u:<user>}`, `P{s:<session>}`, `P{c:<client>}` | hash | index: field = the grant id's 16 raw bytes |
//! | `P{cl:<client>}` | hash | a client: `d` JSON, `e` expiry |
//! | `P{m}:<name>` | string | a named value |
//!
//! The grant id travels inside every token, so validation is one `HGETALL`
//! on one key. A grant's keys share the hash tag `{<grant>}`, so every step
//! that changes them together is one Lua script on one slot; no command ever
//! spans slots.
//!
//! Index entries are written before the record they point to, so every token
//! is reachable by a revocation; a revoked grant is replaced by a short-lived
//! tombstone, so a `create_grant` that races the revocation fails. Every key
//! expires: grants and codes with themselves, tombstones after
//! [`TOMBSTONE_SECS`], index keys no earlier than the longest grant they list.
//!
//! Memory: a hash stays in Redis' compact listpack encoding only while every
//! value is at most 64 bytes (`hash-max-listpack-value`), and a listpack costs
//! a fraction of a hashtable. Hence hashes as 32 raw bytes with their times
//! appended as 5-byte big-endian numbers, the fixed fields packed and cut
//! into 63-byte pieces, and one-letter field names: a grant fits in ~250
//! bytes of listpack (see `bench/store.sh`).
//!
//! Scripts compare token hashes with Lua's `==`, which is not constant-time;
//! that is fine because they are hashes: timing reveals nothing about a
//! token that would let anyone present one.
//!
//! The previous refresh token is not stored: its successor is derived from
//! it, so "the current refresh hash equals the presented token's successor"
//! already proves the presented token was the one rotated away last.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::try_join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Script, Value};

use super::{
    AccessView, Client, CodeOutcome, Grant, PendingCode, Revoked, RotateOutcome, Rotation, Store,
    StoreError, StoreResult, TokenHash, TokenPair, token,
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

const PIECE: usize = 63;
const TAG_UUID: u8 = 0xF0;
const TAG_NONE: u8 = 0xF1;
const TAG_LONG: u8 = 0xF2;
const TAG_HTTPS: u8 = 0xF3;

/// A time as 5 big-endian bytes (good until the year 36812).
fn be5(t: i64) -> [u8; 5] {
    let b = t.clamp(0, (1 << 40) - 1).to_be_bytes();
    [b[3], b[4], b[5], b[6], b[7]]
}

fn from_be5(b: &[u8]) -> Option<i64> {
    let b: &[u8; 5] = b.get(..5)?.try_into().ok()?;
    Some(b.iter().fold(0i64, |n, &x| (n << 8) | i64::from(x)))
}

fn uuid_bytes(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let hex: Vec<u8> = b.iter().copied().filter(|&c| c != b'-').collect();
    let mut out = [0u8; 16];
    for (i, pair) in hex.chunks(2).enumerate() {
        let digit = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn uuid_string(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: Option<&str>) {
    let Some(s) = s else {
        out.push(TAG_NONE);
        return;
    };
    if let Some(u) = uuid_bytes(s) {
        out.push(TAG_UUID);
        out.extend_from_slice(&u);
        return;
    }
    let s = match s.strip_prefix("https://") {
        Some(rest) => {
            out.push(TAG_HTTPS);
            rest
        }
        None => s,
    };
    if s.len() < usize::from(TAG_UUID) {
        out.push(s.len() as u8);
    } else {
        out.push(TAG_LONG);
        out.extend_from_slice(&(s.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }

    fn varint(&mut self) -> Option<i64> {
        let mut z = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some((z >> 1) as i64 ^ -((z & 1) as i64));
            }
        }
        None
    }

    fn string(&mut self) -> Option<Option<String>> {
        let tag = self.take(1)?[0];
        let (https, tag) = if tag == TAG_HTTPS {
            (true, self.take(1)?[0])
        } else {
            (false, tag)
        };
        let body = match tag {
            TAG_NONE => return Some(None),
            TAG_UUID => return Some(Some(uuid_string(self.take(16)?))),
            TAG_LONG => {
                let n = u32::from_be_bytes(self.take(4)?.try_into().ok()?) as usize;
                self.take(n)?
            }
            n => self.take(usize::from(n))?,
        };
        let body = std::str::from_utf8(body).ok()?;
        Some(Some(if https {
            format!("https://{body}")
        } else {
            body.to_owned()
        }))
    }
}

/// The grant fields that never change, packed: UUIDs as 16 bytes, a leading
/// `https://` as one byte, times as varints.
pub fn pack_meta(g: &Grant) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    put_str(&mut out, Some(&g.user_id));
    put_str(&mut out, Some(&g.session_id));
    put_str(&mut out, Some(&g.client_id));
    put_str(&mut out, g.email.as_deref());
    put_str(&mut out, Some(&g.scopes.join(" ")));
    put_str(&mut out, Some(&g.services.join(" ")));
    put_str(&mut out, Some(&g.resource));
    put_varint(&mut out, g.created_at);
    put_varint(&mut out, g.session_exp - g.created_at);
    out
}

/// The grant's fixed fields, with `grant_id`, `expires_at` and `last_used`
/// left for the caller to fill in.
fn unpack_meta(b: &[u8]) -> StoreResult<Grant> {
    let mut r = Reader(b);
    let mut parse = || -> Option<Grant> {
        let mut s = || r.string();
        let (user_id, session_id, client_id) = (s()??, s()??, s()??);
        let email = s()?;
        let words = |w: String| {
            w.split(' ')
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect()
        };
        let (scopes, services, resource) = (words(s()??), words(s()??), s()??);
        let created_at = r.varint()?;
        let session_exp = created_at + r.varint()?;
        Some(Grant {
            grant_id: String::new(),
            user_id,
            email,
            session_id,
            client_id,
            scopes,
            services,
            resource,
            created_at,
            last_used: None,
            session_exp,
            expires_at: 0,
        })
    };
    parse().ok_or_else(|| corrupt("grant record"))
}

/// A grant id as the 16 bytes it encodes (index entries store these).
fn gid_bytes(grant_id: &str) -> StoreResult<Vec<u8>> {
    match URL_SAFE_NO_PAD.decode(grant_id) {
        Ok(b) if b.len() == 16 && grant_id.len() == token::GRANT_ID_LEN => Ok(b),
        _ => Err(StoreError("malformed grant id".into())),
    }
}

fn gid_string(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

/// A grant hash as read back with `HGETALL`.
struct Record {
    meta: Vec<u8>,
    /// Access hash, expiry, and last use when known.
    a: Vec<u8>,
    /// Refresh hash, expiry, and last rotation when there was one.
    r: Vec<u8>,
    e: Option<i64>,
}

impl Record {
    /// `None` for a missing key or a tombstone.
    fn from_fields(fields: Vec<(Vec<u8>, Vec<u8>)>) -> Option<Record> {
        let mut pieces: Vec<(usize, Vec<u8>)> = Vec::new();
        let (mut a, mut r, mut e) = (None, None, None);
        for (k, v) in fields {
            match k.as_slice() {
                b"a" => a = Some(v),
                b"r" => r = Some(v),
                b"e" => e = int_of(&v),
                k => {
                    if let Some(i) = std::str::from_utf8(k).ok().and_then(|k| k.parse().ok()) {
                        pieces.push((i, v));
                    }
                }
            }
        }
        pieces.sort_by_key(|(i, _)| *i);
        Some(Record {
            meta: pieces.into_iter().flat_map(|(_, v)| v).collect(),
            a: a?,
            r: r?,
            e,
        })
    }

    fn access_hash(&self) -> Option<TokenHash> {
        TokenHash::from_slice(self.a.get(..32)?)
    }

    fn access_expires_at(&self) -> StoreResult<i64> {
        from_be5(self.a.get(32..).unwrap_or_default()).ok_or_else(|| corrupt("grant record"))
    }

    fn grant(&self, grant_id: &str) -> StoreResult<Grant> {
        let mut g = unpack_meta(&self.meta)?;
        let refresh_exp = from_be5(self.r.get(32..).unwrap_or_default())
            .ok_or_else(|| corrupt("grant record"))?;
        g.grant_id = grant_id.to_owned();
        g.expires_at = self.e.unwrap_or(refresh_exp);
        g.last_used = self.a.get(37..).and_then(from_be5);
        Ok(g)
    }
}

/// Shared by the scripts that read a grant's packed fields back.
const LUA_HELPERS: &str = r"
local function meta(k)
  local parts, i = {}, 0
  while true do
    local piece = redis.call('HGET', k, tostring(i))
    if not piece then break end
    parts[#parts + 1] = piece
    i = i + 1
  end
  return table.concat(parts)
end
local function t5(v, at)
  local n = 0
  for i = at, at + 4 do n = n * 256 + string.byte(v, i) end
  return n
end
";

const CREATE_GRANT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'a', ARGV[1], 'r', ARGV[2])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'e', ARGV[3]) end
for i = 5, #ARGV do redis.call('HSET', KEYS[1], tostring(i - 5), ARGV[i]) end
redis.call('EXPIREAT', KEYS[1], ARGV[4])
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

// ARGV: presented, new a, new r, now (5 bytes), new expiry, now, grace,
// successor refresh hash. Replies {verdict, meta, a, r}; verdicts:
// 0 unknown, 1 expired, 2 rotated, 3 repeated, 4 reused.
const ROTATE: &str = r"
local a = redis.call('HGET', KEYS[1], 'a')
local r = redis.call('HGET', KEYS[1], 'r')
if not a or not r then return {'0'} end
local now = tonumber(ARGV[6])
if now >= t5(r, 33) then return {'1'} end
local current = string.sub(r, 1, 32)
if current == ARGV[1] then
  a = ARGV[2] .. string.sub(a, 38)
  r = ARGV[3] .. ARGV[4]
  redis.call('HSET', KEYS[1], 'a', a, 'r', r)
  redis.call('HDEL', KEYS[1], 'e')
  redis.call('EXPIREAT', KEYS[1], ARGV[5])
  return {'2', meta(KEYS[1]), a, r}
end
if current == ARGV[8] and #r >= 42 and now - t5(r, 38) <= tonumber(ARGV[7]) then
  return {'3', meta(KEYS[1]), a, r}
end
return {'4'}
";

// Replies {tokens removed, grant meta or '', code payload or ''}. One
// HGETALL instead of a call per field: this runs once per revoked grant.
const REVOKE: &str = r"
local n, pieces, a, r = 0, {}, nil, nil
local f = redis.call('HGETALL', KEYS[1])
for i = 1, #f, 2 do
  local k, v = f[i], f[i + 1]
  if k == 'a' then a = v
  elseif k == 'r' then r = v
  elseif k ~= 'e' and k ~= 'x' then pieces[tonumber(k) + 1] = v end
end
local m = ''
if a and r then
  n = 1
  if string.sub(a, 1, 32) ~= string.rep('\0', 32) then n = 2 end
  m = table.concat(pieces)
end
local c = redis.call('HGET', KEYS[2], 'd')
if c then n = n + 1 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'x', '1')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {tostring(n), m, c or ''}
";

// Zeroes the hash but keeps the expiry and last use the field carries; no
// token hashes to zero.
const REVOKE_ACCESS: &str = r"
local a = redis.call('HGET', KEYS[1], 'a')
if a and string.sub(a, 1, 32) == ARGV[1] then
  redis.call('HSET', KEYS[1], 'a', string.rep('\0', 32) .. string.sub(a, 33))
  return 1
end
return 0
";

const TOUCH: &str = r"
local a = redis.call('HGET', KEYS[1], 'a')
if a then redis.call('HSET', KEYS[1], 'a', string.sub(a, 1, 37) .. ARGV[1]) end
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
                rotate: Script::new(&format!("{LUA_HELPERS}{ROTATE}")),
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

    /// `P{<grant id>}`: no letter tag, as grant ids never contain `:`;
    /// the shorter name keeps the key in a smaller allocation class.
    pub fn grant_key(&self, grant_id: &str) -> String {
        format!("{}{{{grant_id}}}", self.prefix)
    }

    pub fn code_key(&self, grant_id: &str) -> String {
        format!("{}{{{grant_id}}}:c", self.prefix)
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
        let id = gid_bytes(&grant.grant_id)?;
        try_join_all(keys.iter().map(|k| {
            let mut conn = self.conn.clone();
            let script = &self.scripts.index_add;
            let id = &id;
            async move {
                script
                    .key(k)
                    .arg(id)
                    .arg(grant.expires_at)
                    .invoke_async::<i64>(&mut conn)
                    .await
            }
        }))
        .await?;
        Ok(())
    }

    /// Runs independent single-key commands: one pipeline on a standalone
    /// server, concurrent requests on a cluster (a cluster pipeline must stay
    /// within one slot).
    async fn run_all<T: FromRedisValue>(&self, cmds: Vec<Cmd>) -> StoreResult<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = match &self.conn {
            Conn::Standalone(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd);
                }
                pipe.query_async(&mut c.clone()).await?
            }
            Conn::Cluster(c) => {
                try_join_all(cmds.iter().map(|cmd| {
                    let mut c = c.clone();
                    async move { cmd.query_async::<Value>(&mut c).await }
                }))
                .await?
            }
        };
        values
            .into_iter()
            .map(|v| redis::from_redis_value(v).map_err(|e| StoreError(format!("redis: {e}"))))
            .collect()
    }

    /// What the revoke script removed for one grant, and the grant's record
    /// (or its pending code's), so the caller can clean the other indexes.
    fn revoke_reply(grant_id: &str, reply: &[Vec<u8>]) -> StoreResult<(Revoked, Option<Grant>)> {
        let [n, meta, code] = reply else {
            return Err(corrupt("revoke"));
        };
        let tokens = int_of(n).ok_or_else(|| corrupt("revoke"))? as u64;
        let grant = if !meta.is_empty() {
            Some(unpack_meta(meta)?)
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

    /// Revokes grants and removes them from every index that lists them,
    /// and from `walked` (the index they were found in) in any case.
    async fn revoke_many(
        &self,
        grant_ids: &[String],
        walked: Option<&str>,
    ) -> StoreResult<Revoked> {
        // EVAL rather than EVALSHA: pipelined commands cannot recover from
        // NOSCRIPT one by one, and Redis caches the compiled script anyway.
        let cmds = grant_ids
            .iter()
            .map(|g| {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(REVOKE)
                    .arg(2)
                    .arg(self.grant_key(g))
                    .arg(self.code_key(g))
                    .arg(TOMBSTONE_SECS);
                cmd
            })
            .collect();
        let replies: Vec<Vec<Vec<u8>>> = self.run_all(cmds).await?;
        let results = replies
            .iter()
            .zip(grant_ids)
            .map(|(reply, g)| Self::revoke_reply(g, reply))
            .collect::<StoreResult<Vec<_>>>()?;
        let mut out = Revoked::default();
        let mut unindex: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        for ((revoked, grant), id) in results.into_iter().zip(grant_ids) {
            out.merge(revoked);
            let id = gid_bytes(id)?;
            let mut keys: Vec<String> = walked.map(str::to_owned).into_iter().collect();
            if let Some(g) = grant {
                keys.extend([
                    self.user_key(&g.user_id),
                    self.session_key(&g.session_id),
                    self.client_index_key(&g.client_id),
                ]);
            }
            keys.sort();
            keys.dedup();
            for key in keys {
                unindex.entry(key).or_default().push(id.clone());
            }
        }
        let cmds = unindex
            .iter()
            .map(|(key, ids)| {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(key).arg(ids);
                cmd
            })
            .collect();
        self.run_all::<i64>(cmds).await?;
        Ok(out)
    }

    async fn revoke_index(&self, index: Index, id: &str) -> StoreResult<Revoked> {
        let key = self.index_key(index, id);
        let mut conn = self.conn.clone();
        let entries: Vec<Vec<u8>> = redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await?;
        if entries.is_empty() {
            return Ok(Revoked::default());
        }
        let ids: Vec<String> = entries.iter().map(|e| gid_string(e)).collect();
        self.revoke_many(&ids, Some(&key)).await
    }

    async fn read_record(&self, grant_id: &str) -> StoreResult<Option<Record>> {
        let mut conn = self.conn.clone();
        let fields: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(self.grant_key(grant_id))
            .query_async(&mut conn)
            .await?;
        Ok(Record::from_fields(fields))
    }

    async fn read_grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        self.read_record(grant_id)
            .await?
            .map(|r| r.grant(grant_id))
            .transpose()
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
            let mut a = tokens.access.0.to_vec();
            a.extend_from_slice(&be5(tokens.access_expires_at));
            if let Some(used) = grant.last_used {
                a.extend_from_slice(&be5(used));
            }
            let mut r = tokens.refresh.0.to_vec();
            r.extend_from_slice(&be5(tokens.refresh_expires_at));
            let e = if grant.expires_at == tokens.refresh_expires_at {
                String::new()
            } else {
                grant.expires_at.to_string()
            };
            let meta = pack_meta(grant);
            let mut conn = self.conn.clone();
            let mut call = self
                .scripts
                .create_grant
                .key(self.grant_key(&grant.grant_id));
            call.arg(a)
                .arg(r)
                .arg(e)
                .arg(grant.expires_at.max(tokens.refresh_expires_at));
            for piece in meta.chunks(PIECE) {
                call.arg(piece);
            }
            let created: i64 = call.invoke_async(&mut conn).await?;
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
            let Some(record) = self.read_record(grant_id).await? else {
                return Ok(None);
            };
            if record.access_hash() != Some(*access) {
                return Ok(None);
            }
            Ok(Some(AccessView {
                grant: record.grant(grant_id)?,
                access_expires_at: record.access_expires_at()?,
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
            let mut a = s.access.0.to_vec();
            a.extend_from_slice(&be5(s.access_expires_at));
            let mut r = s.refresh.0.to_vec();
            r.extend_from_slice(&be5(s.refresh_expires_at));
            let mut conn = self.conn.clone();
            let reply: Vec<Vec<u8>> = self
                .scripts
                .rotate
                .key(self.grant_key(grant_id))
                .arg(&rotation.presented.0[..])
                .arg(a)
                .arg(r)
                .arg(&be5(rotation.now)[..])
                .arg(s.refresh_expires_at)
                .arg(rotation.now)
                .arg(rotation.grace_secs)
                .arg(&s.refresh.0[..])
                .invoke_async(&mut conn)
                .await?;
            let record = |reply: &[Vec<u8>]| match reply {
                [_, meta, a, r] => Ok(Record {
                    meta: meta.clone(),
                    a: a.clone(),
                    r: r.clone(),
                    e: None,
                }),
                _ => Err(corrupt("rotate")),
            };
            Ok(match reply.first().and_then(|v| int_of(v)) {
                Some(0) => RotateOutcome::Unknown,
                Some(1) => RotateOutcome::Expired,
                Some(2) => {
                    let grant = record(&reply)?.grant(grant_id)?;
                    // The grant now lives longer: so must its index entries.
                    self.index_grant(&grant).await?;
                    RotateOutcome::Rotated { grant }
                }
                Some(3) => {
                    let record = record(&reply)?;
                    let grant = record.grant(grant_id)?;
                    RotateOutcome::Repeated {
                        access_expires_at: record.access_expires_at()?,
                        refresh_expires_at: grant.expires_at,
                        grant,
                    }
                }
                Some(4) => RotateOutcome::Reused {
                    revoked: self.revoke_many(&[grant_id.to_owned()], None).await?,
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
            let entries: Vec<Vec<u8>> =
                redis::cmd("HKEYS").arg(&key).query_async(&mut conn).await?;
            let probes = try_join_all(entries.iter().map(|entry| async move {
                let id = gid_string(entry);
                let id = &id;
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
                StoreResult::Ok((entry, grant, pending))
            }))
            .await?;
            // Entries of codes never exchanged and of grants that expired
            // would otherwise pile up in an active user's index.
            let stale: Vec<&Vec<u8>> = probes
                .iter()
                .filter(|(_, _, live)| !live)
                .map(|(entry, _, _)| *entry)
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
                        .arg(&be5(*at)[..])
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
        self.bounded(self.revoke_many(&[grant_id.to_owned()], None))
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Grant {
        Grant {
            grant_id: String::new(),
            user_id: "0b9d6c2e-7f1a-4c3b-9e8d-2a1f0c4b5d6e".into(),
            email: None,
            session_id: "not-a-uuid".into(),
            client_id: "https://client.example.com/".to_owned() + &"x".repeat(300),
            scopes: vec!["notes:read".into(), "notes:write".into()],
            services: vec![],
            resource: "http://127.0.0.1:8080/mcp/notes".into(),
            created_at: 1_700_000_000,
            last_used: None,
            session_exp: 1_600_000_000,
            expires_at: 0,
        }
    }

    #[test]
    fn packed_grant_fields_round_trip() {
        let g = sample();
        assert_eq!(unpack_meta(&pack_meta(&g)).unwrap(), g);
        let upper = Grant {
            user_id: g.user_id.to_uppercase(),
            email: Some("a@b.c".into()),
            ..g
        };
        assert_eq!(unpack_meta(&pack_meta(&upper)).unwrap(), upper);
        assert!(unpack_meta(&pack_meta(&upper)[..10]).is_err());
    }

    #[test]
    fn times_and_grant_ids_round_trip() {
        for t in [0, 1, 1_700_000_000, (1 << 40) - 1] {
            assert_eq!(from_be5(&be5(t)), Some(t));
        }
        let id = token::new_grant_id();
        assert_eq!(gid_string(&gid_bytes(&id).unwrap()), id);
        assert!(gid_bytes("short").is_err());
    }
}
