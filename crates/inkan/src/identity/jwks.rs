//! Hanko's signing keys, fetched once per freshness window per process.
//!
//! - Freshness follows `Cache-Control: max-age` (default 10 min); a background
//!   task refreshes shortly before it ends, so verification rarely waits.
//! - An unknown `kid` triggers at most one refresh per
//!   `hanko.jwks_refresh_cooldown`; concurrent callers share one fetch.
//! - While Hanko is unreachable the last good keys keep verifying, for at most
//!   `hanko.jwks_max_staleness` past their freshness.
//! - Keys are parsed into [`DecodingKey`]s once, when fetched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Rejection;
use crate::config::HankoConfig;

/// Largest JWKS document read.
const MAX_BODY: usize = 64 * 1024;
/// Most keys kept from one document.
const MAX_KEYS: usize = 32;
/// RSA keys shorter than this are refused (Hanko's are 4096 bits).
const MIN_MODULUS_BYTES: usize = 256;
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);
/// Bounds on `max-age`, so a misconfigured Hanko can neither make every
/// verification fetch nor freeze the keys for days.
const MIN_MAX_AGE: Duration = Duration::from_secs(30);
const MAX_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Counters for `/metrics`; read with `load(Ordering::Relaxed)`.
#[derive(Debug, Default)]
pub struct JwksStats {
    /// JWKS requests sent to Hanko.
    pub fetches: AtomicU64,
    /// Key lookups answered from the cache.
    pub hits: AtomicU64,
    /// Requests that failed (network, status, size, content).
    pub failures: AtomicU64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    #[error("JWKS request failed: {0}")]
    Unreachable(String),
    #[error("JWKS request answered HTTP {0}")]
    Status(u16),
    #[error("JWKS document larger than {MAX_BODY} bytes")]
    TooLarge,
    #[error("JWKS document is not a key set: {0}")]
    Invalid(String),
    #[error("JWKS document holds no usable RS256 key")]
    NoUsableKey,
}

struct KeySet {
    keys: HashMap<String, Arc<DecodingKey>>,
    fresh_until: Instant,
    usable_until: Instant,
}

pub(crate) struct JwksCache {
    url: String,
    http: reqwest::Client,
    cooldown: Duration,
    max_staleness: Duration,
    /// Std locks: held for a pointer swap or a timestamp, never across `.await`.
    current: RwLock<Option<Arc<KeySet>>>,
    last_failure: Mutex<Option<Instant>>,
    last_kid_refresh: Mutex<Option<Instant>>,
    /// Bumped after every fetch attempt; a caller that waited for the refresh
    /// lock sees it moved and does not fetch again (single flight).
    generation: AtomicU64,
    refresh: tokio::sync::Mutex<()>,
    stats: JwksStats,
    /// Cancelled on drop, so the background refresher ends with the cache.
    dropped: CancellationToken,
}

impl Drop for JwksCache {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

enum Lookup {
    Found(Arc<DecodingKey>),
    Unknown,
    Unusable,
}

impl JwksCache {
    pub fn new(config: &HankoConfig, http: reqwest::Client) -> JwksCache {
        JwksCache {
            url: format!(
                "{}/.well-known/jwks.json",
                config.api_url.trim_end_matches('/')
            ),
            http,
            cooldown: config.jwks_refresh_cooldown,
            max_staleness: config.jwks_max_staleness,
            current: RwLock::new(None),
            last_failure: Mutex::new(None),
            last_kid_refresh: Mutex::new(None),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(()),
            stats: JwksStats::default(),
            dropped: CancellationToken::new(),
        }
    }

    pub fn stats(&self) -> &JwksStats {
        &self.stats
    }

    /// Whether a key set is loaded and not past `jwks_max_staleness`, so
    /// that Hanko sessions can be verified now.
    pub fn usable(&self) -> bool {
        self.snapshot()
            .is_some_and(|set| Instant::now() < set.usable_until && !set.keys.is_empty())
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn lookup(&self, kid: &str, now: Instant) -> (Lookup, bool) {
        match self.snapshot() {
            Some(set) if now < set.usable_until => {
                let fresh = now < set.fresh_until;
                match set.keys.get(kid) {
                    Some(key) => (Lookup::Found(key.clone()), fresh),
                    None => (Lookup::Unknown, fresh),
                }
            }
            _ => (Lookup::Unusable, false),
        }
    }

    fn hit(&self, key: Arc<DecodingKey>) -> Result<Arc<DecodingKey>, Rejection> {
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        Ok(key)
    }

    /// The key for `kid`, fetching or refreshing the set as the rules above allow.
    pub async fn key(self: &Arc<Self>, kid: &str) -> Result<Arc<DecodingKey>, Rejection> {
        let seen = self.generation.load(Ordering::Acquire);
        let now = Instant::now();
        let (lookup, fresh) = self.lookup(kid, now);
        if !fresh && self.retry_allowed(now) {
            if let Lookup::Found(key) = lookup {
                // Stale but usable: answer now, refresh behind the caller's back.
                let this = self.clone();
                tokio::spawn(async move {
                    let _ = this.refresh_after(seen).await;
                });
                return self.hit(key);
            }
            let _ = self.refresh_after(seen).await;
            return self.settle(kid);
        }
        match lookup {
            Lookup::Found(key) => self.hit(key),
            Lookup::Unusable => Err(Rejection::KeysUnavailable),
            Lookup::Unknown if self.claim_kid_refresh(now) => {
                let _ = self.refresh_after(seen).await;
                self.settle(kid)
            }
            Lookup::Unknown => {
                // Another caller's refresh may be bringing this very kid (rotation):
                // wait for it rather than refusing a good token.
                if self.refresh.try_lock().is_err() {
                    drop(self.refresh.lock().await);
                    return self.settle(kid);
                }
                Err(Rejection::UnknownKey)
            }
        }
    }

    fn settle(&self, kid: &str) -> Result<Arc<DecodingKey>, Rejection> {
        match self.lookup(kid, Instant::now()).0 {
            Lookup::Found(key) => self.hit(key),
            Lookup::Unknown => Err(Rejection::UnknownKey),
            Lookup::Unusable => Err(Rejection::KeysUnavailable),
        }
    }

    fn retry_allowed(&self, now: Instant) -> bool {
        let last = *self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        last.is_none_or(|at| now.duration_since(at) >= self.cooldown)
    }

    fn claim_kid_refresh(&self, now: Instant) -> bool {
        let mut last = self
            .last_kid_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| now.duration_since(at) >= self.cooldown) {
            *last = Some(now);
            true
        } else {
            false
        }
    }

    /// Fetches unless another caller completed a fetch since `seen`.
    async fn refresh_after(&self, seen: u64) -> Result<(), JwksError> {
        let _guard = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen {
            return Ok(());
        }
        self.fetch_and_store().await
    }

    pub async fn refresh_now(&self) -> Result<(), JwksError> {
        let _guard = self.refresh.lock().await;
        self.fetch_and_store().await
    }

    /// Caller holds `self.refresh`.
    async fn fetch_and_store(&self) -> Result<(), JwksError> {
        self.stats.fetches.fetch_add(1, Ordering::Relaxed);
        let result = self.fetch().await;
        let now = Instant::now();
        match &result {
            Ok((keys, max_age)) => {
                let set = KeySet {
                    keys: keys.clone(),
                    fresh_until: now + *max_age,
                    usable_until: now + *max_age + self.max_staleness,
                };
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = None;
                tracing::debug!(keys = keys.len(), ?max_age, "Hanko JWKS refreshed");
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
                tracing::warn!(url = %self.url, error = %e, "Hanko JWKS refresh failed; keeping the last good keys");
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        result.map(|_| ())
    }

    async fn fetch(&self) -> Result<(HashMap<String, Arc<DecodingKey>>, Duration), JwksError> {
        let mut response = self
            .http
            .get(&self.url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| JwksError::Unreachable(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(JwksError::Status(response.status().as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            return Err(JwksError::TooLarge);
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age)
            .unwrap_or(DEFAULT_MAX_AGE)
            .clamp(MIN_MAX_AGE, MAX_MAX_AGE);
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| JwksError::Unreachable(e.without_url().to_string()))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(JwksError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((parse_jwks(&body)?, max_age))
    }
}

fn max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|d| d.trim().strip_prefix("max-age="))
        .find_map(|v| v.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[derive(Deserialize)]
struct JwkSet {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RsaJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

/// Keeps RSA signing keys meant for RS256 (or unlabelled), with a `kid`, of
/// at least 2048 bits; everything else in the set is ignored.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Arc<DecodingKey>>, JwksError> {
    let set: JwkSet =
        serde_json::from_slice(body).map_err(|e| JwksError::Invalid(e.to_string()))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<RsaJwk>(value) else {
            continue;
        };
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|a| a == "RS256")
            && jwk.usage.as_deref().is_none_or(|u| u == "sig");
        let (Some(kid), Some(n), Some(e)) = (jwk.kid, jwk.n, jwk.e) else {
            continue;
        };
        if !usable || kid.is_empty() || kid.len() > 256 {
            continue;
        }
        let (Ok(n), Ok(e)) = (
            URL_SAFE_NO_PAD.decode(n.trim_end_matches('=')),
            URL_SAFE_NO_PAD.decode(e.trim_end_matches('=')),
        ) else {
            continue;
        };
        let modulus = n.strip_prefix(&[0u8][..]).unwrap_or(&n);
        if modulus.len() < MIN_MODULUS_BYTES || e.is_empty() {
            continue;
        }
        keys.insert(kid, Arc::new(DecodingKey::from_rsa_raw_components(&n, &e)));
        if keys.len() == MAX_KEYS {
            break;
        }
    }
    if keys.is_empty() {
        return Err(JwksError::NoUsableKey);
    }
    Ok(keys)
}

/// Refreshes shortly before each freshness window ends; after a failure,
/// retries once per cooldown. Holds only a weak reference between rounds.
pub(crate) fn spawn_refresher(cache: Weak<JwksCache>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(dropped) = cache.upgrade().map(|c| c.dropped.clone()) else {
            return;
        };
        loop {
            let Some(this) = cache.upgrade() else { return };
            let seen = this.generation.load(Ordering::Acquire);
            let now = Instant::now();
            let wake = match this.snapshot() {
                Some(set) if this.retry_allowed(now) => {
                    let window = set.fresh_until.saturating_duration_since(now);
                    now + window.saturating_sub(window / 10 + Duration::from_secs(1))
                }
                Some(_) => now + this.cooldown,
                None if this.retry_allowed(now) => now,
                None => now + this.cooldown,
            };
            let cooldown = this.cooldown.max(Duration::from_secs(1));
            drop(this);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = dropped.cancelled() => return,
            }
            let Some(this) = cache.upgrade() else { return };
            if this.refresh_after(seen).await.is_err() {
                drop(this);
                tokio::select! {
                    () = tokio::time::sleep(cooldown) => {}
                    () = dropped.cancelled() => return,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), None);
    }

    #[test]
    fn only_rsa_signing_keys_are_kept() {
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let short = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "good", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": "AQAB"},
            {"kty": "RSA", "kid": "short", "n": short, "e": "AQAB"},
            {"kty": "RSA", "n": n, "e": "AQAB"},
            {"kty": "EC", "kid": "ec", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"}
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["good"]);
        assert_eq!(
            parse_jwks(br#"{"keys":[]}"#).err(),
            Some(JwksError::NoUsableKey)
        );
        assert!(matches!(parse_jwks(b"[]"), Err(JwksError::Invalid(_))));
    }

    #[test]
    fn keys_past_max_staleness_stop_verifying() {
        let cache = JwksCache::new(&super::super::tests::hanko_config(), reqwest::Client::new());
        assert!(!cache.usable(), "nothing loaded yet");
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let body = serde_json::json!({"keys": [{"kty": "RSA", "kid": "k", "n": n, "e": "AQAB"}]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        let now = Instant::now();
        let install = |fresh_until, usable_until| {
            *cache.current.write().unwrap() = Some(Arc::new(KeySet {
                keys: keys.clone(),
                fresh_until,
                usable_until,
            }));
        };

        // Stale (Hanko unreachable since) but within max staleness: still used.
        install(now - Duration::from_secs(60), now + Duration::from_secs(60));
        assert!(cache.usable());
        assert!(matches!(cache.lookup("k", now), (Lookup::Found(_), false)));

        // Past max staleness: no key verifies, and /readyz says so.
        install(now - Duration::from_secs(120), now - Duration::from_secs(1));
        assert!(!cache.usable());
        assert!(matches!(cache.lookup("k", now), (Lookup::Unusable, false)));
    }
}
