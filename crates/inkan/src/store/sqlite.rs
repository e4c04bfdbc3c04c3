//! The embedded backend: one SQLite file in WAL mode.
//!
//! rusqlite is synchronous, so every call runs on tokio's blocking pool. All
//! writes go through one connection behind a std `Mutex`; reads use a few
//! more connections, which WAL lets run beside the writer. The mutexes are
//! only ever taken inside `spawn_blocking` closures, never across an
//! `.await`, so an async task can never hold one while it is parked, and a
//! single writer also makes every multi-statement step trivially serial.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    AccessView, Client, CodeOutcome, Grant, PendingCode, RotateOutcome, Rotation, Store,
    StoreError, StoreResult, TokenHash, TokenPair, unix_now,
};
use crate::store::Revoked;

/// How long a revoked grant id stays blocked. It only has to outlive the
/// codes that may still be pending for it (codes live at most 10 minutes).
pub const TOMBSTONE_SECS: i64 = 15 * 60;

const READERS: usize = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    data TEXT NOT NULL,
    expires_at INTEGER
);
CREATE TABLE IF NOT EXISTS codes (
    grant_id TEXT PRIMARY KEY,
    code_hash BLOB NOT NULL,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    data TEXT NOT NULL,
    consumed INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS codes_user ON codes(user_id);
CREATE INDEX IF NOT EXISTS codes_session ON codes(session_id);
CREATE INDEX IF NOT EXISTS codes_client ON codes(client_id);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    data TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_used INTEGER,
    expires_at INTEGER NOT NULL,
    access_hash BLOB,
    access_expires_at INTEGER NOT NULL,
    refresh_hash BLOB NOT NULL,
    refresh_expires_at INTEGER NOT NULL,
    rotated_at INTEGER
);
CREATE INDEX IF NOT EXISTS grants_user ON grants(user_id);
CREATE INDEX IF NOT EXISTS grants_session ON grants(session_id);
CREATE INDEX IF NOT EXISTS grants_client ON grants(client_id);
CREATE TABLE IF NOT EXISTS revoked (
    grant_id TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
";

const GRANT_COLUMNS: &str = "data, last_used, expires_at";

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
}

fn open_connection(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic inside a closure cannot leave a half-applied transaction (it
    // rolls back on drop), so a poisoned connection is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| StoreError(format!("encode: {e}")))
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError(format!("corrupt record: {e}")))
}

fn hash_of(b: Option<&[u8]>) -> Option<TokenHash> {
    b.and_then(TokenHash::from_slice)
}

fn grant_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<i64>, i64)> {
    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
}

fn build_grant((data, last_used, expires_at): (String, Option<i64>, i64)) -> StoreResult<Grant> {
    let mut g: Grant = from_json(&data)?;
    g.last_used = last_used;
    g.expires_at = expires_at;
    Ok(g)
}

impl SqliteStore {
    /// Opens (or creates) the database and its schema.
    pub async fn open(path: impl Into<PathBuf>) -> StoreResult<SqliteStore> {
        let path = path.into();
        tokio::task::spawn_blocking(move || {
            let writer = open_connection(&path)?;
            writer.execute_batch(SCHEMA)?;
            let readers = (0..READERS)
                .map(|_| open_connection(&path).map(Mutex::new))
                .collect::<StoreResult<Vec<_>>>()?;
            Ok(SqliteStore {
                writer: Arc::new(Mutex::new(writer)),
                readers: Arc::new(readers),
            })
        })
        .await
        .map_err(|e| StoreError(format!("sqlite open task: {e}")))?
    }

    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let writer = self.writer.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = lock(&writer);
            let tx = conn.transaction()?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError(format!("sqlite task: {e}")))?
    }

    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let guard = readers
                .iter()
                .find_map(|m| m.try_lock().ok())
                .unwrap_or_else(|| lock(&readers[0]));
            f(&guard)
        })
        .await
        .map_err(|e| StoreError(format!("sqlite task: {e}")))?
    }
}

/// Revokes every grant and pending code that `column = value` selects.
fn revoke_where(tx: &Transaction<'_>, column: &str, value: &str) -> StoreResult<Revoked> {
    let now = unix_now();
    let mut ids: Vec<String> = Vec::new();
    for table in ["grants", "codes"] {
        let mut stmt = tx.prepare(&format!("SELECT grant_id FROM {table} WHERE {column} = ?1"))?;
        for id in stmt.query_map([value], |r| r.get::<_, String>(0))? {
            let id = id?;
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    let mut out = Revoked::default();
    for id in ids {
        out.merge(revoke_one(tx, &id, now)?);
    }
    Ok(out)
}

fn revoke_one(tx: &Transaction<'_>, grant_id: &str, now: i64) -> StoreResult<Revoked> {
    let grant_tokens: Option<u64> = tx
        .query_row(
            "DELETE FROM grants WHERE grant_id = ?1 RETURNING access_hash IS NOT NULL",
            [grant_id],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .map(|access| 1 + u64::from(access));
    let code_tokens: Option<u64> = tx
        .query_row(
            "DELETE FROM codes WHERE grant_id = ?1 RETURNING consumed = 0",
            [grant_id],
            |r| r.get::<_, bool>(0),
        )
        .optional()?
        .map(u64::from);
    tx.execute(
        "INSERT OR REPLACE INTO revoked (grant_id, expires_at) VALUES (?1, ?2)",
        params![grant_id, now + TOMBSTONE_SECS],
    )?;
    let tokens = grant_tokens.unwrap_or(0) + code_tokens.unwrap_or(0);
    Ok(if tokens > 0 {
        Revoked {
            grants: vec![grant_id.to_owned()],
            tokens,
        }
    } else {
        Revoked::default()
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn ping(&self) -> StoreResult<()> {
        self.read(|c| Ok(c.query_row("SELECT 1", [], |_| Ok(()))?))
            .await
    }

    async fn put_client(&self, client: &Client) -> StoreResult<()> {
        let (id, data, exp) = (client.client_id.clone(), json(client)?, client.expires_at);
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO clients (client_id, data, expires_at) VALUES (?1, ?2, ?3)",
                params![id, data, exp],
            )?;
            Ok(())
        })
        .await
    }

    async fn get_client(&self, client_id: &str) -> StoreResult<Option<Client>> {
        let id = client_id.to_owned();
        self.read(move |c| {
            let row: Option<(String, Option<i64>)> = c
                .query_row(
                    "SELECT data, expires_at FROM clients WHERE client_id = ?1
                     AND (expires_at IS NULL OR expires_at > ?2)",
                    params![id, unix_now()],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            row.map(|(data, exp)| {
                let mut client: Client = from_json(&data)?;
                client.expires_at = exp;
                Ok(client)
            })
            .transpose()
        })
        .await
    }

    async fn extend_client(&self, client_id: &str, expires_at: i64) -> StoreResult<()> {
        let id = client_id.to_owned();
        self.write(move |tx| {
            tx.execute(
                "UPDATE clients SET expires_at = ?2 WHERE client_id = ?1 AND expires_at IS NOT NULL",
                params![id, expires_at],
            )?;
            Ok(())
        })
        .await
    }

    async fn put_code(&self, code: &TokenHash, pending: &PendingCode) -> StoreResult<()> {
        let (hash, data, p) = (code.0.to_vec(), json(pending)?, pending.clone());
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO codes
                 (grant_id, code_hash, user_id, session_id, client_id, data, consumed, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7)",
                params![
                    p.grant.grant_id,
                    hash,
                    p.grant.user_id,
                    p.grant.session_id,
                    p.grant.client_id,
                    data,
                    p.expires_at
                ],
            )?;
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
        let (id, code) = (grant_id.to_owned(), *code);
        self.write(move |tx| {
            // The single writer serialises callers, so exactly one sees
            // `consumed = 0`. The row stays until it expires so that later
            // callers can be told the code was replayed.
            let row: Option<(Vec<u8>, String, bool)> = tx
                .query_row(
                    "SELECT code_hash, data, consumed FROM codes
                     WHERE grant_id = ?1 AND expires_at > ?2",
                    params![id, now],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let Some((hash, data, consumed)) = row else {
                return Ok(CodeOutcome::Unknown);
            };
            if hash_of(Some(&hash)) != Some(code) {
                return Ok(CodeOutcome::Unknown);
            }
            if consumed {
                return Ok(CodeOutcome::Replayed { grant_id: id });
            }
            tx.execute("UPDATE codes SET consumed = 1 WHERE grant_id = ?1", [&id])?;
            Ok(CodeOutcome::Fresh(Box::new(from_json(&data)?)))
        })
        .await
    }

    async fn create_grant(&self, grant: &Grant, tokens: &TokenPair) -> StoreResult<bool> {
        let (g, t, data) = (grant.clone(), *tokens, json(grant)?);
        self.write(move |tx| {
            let blocked: bool = tx.query_row(
                "SELECT EXISTS(SELECT 1 FROM revoked WHERE grant_id = ?1 AND expires_at > ?2)
                     OR EXISTS(SELECT 1 FROM grants WHERE grant_id = ?1)",
                params![g.grant_id, unix_now()],
                |r| r.get(0),
            )?;
            if blocked {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO grants (grant_id, user_id, session_id, client_id, data, created_at,
                     last_used, expires_at, access_hash, access_expires_at, refresh_hash,
                     refresh_expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    g.grant_id,
                    g.user_id,
                    g.session_id,
                    g.client_id,
                    data,
                    g.created_at,
                    g.last_used,
                    g.expires_at,
                    t.access.0.to_vec(),
                    t.access_expires_at,
                    t.refresh.0.to_vec(),
                    t.refresh_expires_at
                ],
            )?;
            Ok(true)
        })
        .await
    }

    async fn lookup_access(
        &self,
        grant_id: &str,
        access: &TokenHash,
    ) -> StoreResult<Option<AccessView>> {
        let (id, access) = (grant_id.to_owned(), *access);
        self.read(move |c| {
            let row = c
                .query_row(
                    &format!(
                        "SELECT {GRANT_COLUMNS}, access_hash, access_expires_at
                         FROM grants WHERE grant_id = ?1"
                    ),
                    [&id],
                    |r| {
                        Ok((
                            grant_from_row(r)?,
                            r.get::<_, Option<Vec<u8>>>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                )
                .optional()?;
            match row {
                Some((g, hash, access_expires_at)) if hash_of(hash.as_deref()) == Some(access) => {
                    Ok(Some(AccessView {
                        grant: build_grant(g)?,
                        access_expires_at,
                    }))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        grant_id: &str,
        rotation: &Rotation,
    ) -> StoreResult<RotateOutcome> {
        let (id, rot) = (grant_id.to_owned(), *rotation);
        self.write(move |tx| {
            let row = tx
                .query_row(
                    &format!(
                        "SELECT {GRANT_COLUMNS}, refresh_hash, refresh_expires_at, rotated_at,
                             access_expires_at
                         FROM grants WHERE grant_id = ?1"
                    ),
                    [&id],
                    |r| {
                        Ok((
                            grant_from_row(r)?,
                            r.get::<_, Vec<u8>>(3)?,
                            r.get::<_, i64>(4)?,
                            r.get::<_, Option<i64>>(5)?,
                            r.get::<_, i64>(6)?,
                        ))
                    },
                )
                .optional()?;
            let Some((g, current, refresh_exp, rotated_at, access_exp)) = row else {
                return Ok(RotateOutcome::Unknown);
            };
            if rot.now >= refresh_exp {
                return Ok(RotateOutcome::Expired);
            }
            let current = hash_of(Some(&current));
            let s = rot.successor;
            if current == Some(rot.presented) {
                tx.execute(
                    "UPDATE grants SET access_hash = ?2, access_expires_at = ?3,
                         refresh_hash = ?4, refresh_expires_at = ?5, rotated_at = ?6,
                         expires_at = ?5
                     WHERE grant_id = ?1",
                    params![
                        id,
                        s.access.0.to_vec(),
                        s.access_expires_at,
                        s.refresh.0.to_vec(),
                        s.refresh_expires_at,
                        rot.now
                    ],
                )?;
                let mut grant = build_grant(g)?;
                grant.expires_at = s.refresh_expires_at;
                return Ok(RotateOutcome::Rotated { grant });
            }
            // The successor is derived from the presented token, so a current
            // refresh hash equal to the successor's proves that the presented
            // token is the one rotated away last: no need to store it.
            if current == Some(s.refresh)
                && rotated_at.is_some_and(|at| rot.now - at <= rot.grace_secs)
            {
                return Ok(RotateOutcome::Repeated {
                    grant: build_grant(g)?,
                    access_expires_at: access_exp,
                    refresh_expires_at: refresh_exp,
                });
            }
            let revoked = revoke_one(tx, &id, rot.now)?;
            Ok(RotateOutcome::Reused { revoked })
        })
        .await
    }

    async fn get_grant(&self, grant_id: &str) -> StoreResult<Option<Grant>> {
        let id = grant_id.to_owned();
        self.read(move |c| {
            c.query_row(
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM grants WHERE grant_id = ?1 AND expires_at > ?2"
                ),
                params![id, unix_now()],
                grant_from_row,
            )
            .optional()?
            .map(build_grant)
            .transpose()
        })
        .await
    }

    async fn list_user_grants(&self, user_id: &str) -> StoreResult<Vec<Grant>> {
        let id = user_id.to_owned();
        self.read(move |c| {
            let mut stmt = c.prepare(&format!(
                "SELECT {GRANT_COLUMNS} FROM grants WHERE user_id = ?1 AND expires_at > ?2
                 ORDER BY created_at DESC, grant_id"
            ))?;
            let rows = stmt.query_map(params![id, unix_now()], grant_from_row)?;
            rows.map(|r| build_grant(r?)).collect()
        })
        .await
    }

    async fn touch_grants(&self, updates: &[(String, i64)]) -> StoreResult<()> {
        let updates = updates.to_vec();
        self.write(move |tx| {
            let mut stmt = tx.prepare("UPDATE grants SET last_used = ?2 WHERE grant_id = ?1")?;
            for (id, at) in &updates {
                stmt.execute(params![id, at])?;
            }
            Ok(())
        })
        .await
    }

    async fn revoke_access_token(&self, grant_id: &str, access: &TokenHash) -> StoreResult<bool> {
        let (id, access) = (grant_id.to_owned(), access.0.to_vec());
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE grants SET access_hash = NULL WHERE grant_id = ?1 AND access_hash = ?2",
                params![id, access],
            )?;
            Ok(n > 0)
        })
        .await
    }

    async fn revoke_grant(&self, grant_id: &str) -> StoreResult<Revoked> {
        let id = grant_id.to_owned();
        self.write(move |tx| revoke_one(tx, &id, unix_now())).await
    }

    async fn revoke_user(&self, user_id: &str) -> StoreResult<Revoked> {
        let id = user_id.to_owned();
        self.write(move |tx| revoke_where(tx, "user_id", &id)).await
    }

    async fn revoke_session(&self, session_id: &str) -> StoreResult<Revoked> {
        let id = session_id.to_owned();
        self.write(move |tx| revoke_where(tx, "session_id", &id))
            .await
    }

    async fn revoke_client(&self, client_id: &str) -> StoreResult<Revoked> {
        let id = client_id.to_owned();
        self.write(move |tx| revoke_where(tx, "client_id", &id))
            .await
    }

    async fn get_meta(&self, name: &str) -> StoreResult<Option<Vec<u8>>> {
        let name = name.to_owned();
        self.read(move |c| {
            Ok(
                c.query_row("SELECT value FROM meta WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })
                .optional()?,
            )
        })
        .await
    }

    async fn put_meta_if_absent(&self, name: &str, value: &[u8]) -> StoreResult<Vec<u8>> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.write(move |tx| {
            tx.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES (?1, ?2)",
                params![name, value],
            )?;
            Ok(
                tx.query_row("SELECT value FROM meta WHERE name = ?1", [&name], |r| {
                    r.get(0)
                })?,
            )
        })
        .await
    }

    async fn set_meta(&self, name: &str, value: &[u8]) -> StoreResult<()> {
        let (name, value) = (name.to_owned(), value.to_vec());
        self.write(move |tx| {
            tx.execute(
                "INSERT OR REPLACE INTO meta (name, value) VALUES (?1, ?2)",
                params![name, value],
            )?;
            Ok(())
        })
        .await
    }

    async fn sweep(&self, now: i64) -> StoreResult<u64> {
        self.write(move |tx| {
            let mut n = 0;
            n += tx.execute("DELETE FROM grants WHERE expires_at <= ?1", [now])?;
            n += tx.execute("DELETE FROM codes WHERE expires_at <= ?1", [now])?;
            n += tx.execute(
                "DELETE FROM clients WHERE expires_at IS NOT NULL AND expires_at <= ?1",
                [now],
            )?;
            n += tx.execute("DELETE FROM revoked WHERE expires_at <= ?1", [now])?;
            Ok(n as u64)
        })
        .await
    }
}
