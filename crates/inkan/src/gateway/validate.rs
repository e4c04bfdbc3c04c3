//! The token hot path: every MCP request passes through [`Validator::validate`].
//!
//! 1. Parse the grant id out of `ink_at_<grant id>_<secret>` (no allocation).
//! 2. SHA-256 the whole token.
//! 3. Look the grant id up in an in-process cache; on a hit, compare the
//!    stored access-token hash with ours in constant time.
//! 4. On a miss (or a hash mismatch, e.g. the token was just refreshed),
//!    exactly one [`Store::lookup_access`] round trip, then cache the result.
//! 5. Check expiry, that the service is one of the grant's, and scope.
//!
//! Deliberately absent: JWT verification, parsing the request body, and calls
//! to Hanko on a cache hit. With a Hanko admin API configured, a cache miss
//! asks whether the grant's Hanko session still exists (answers cached,
//! single-flight; see [`Validator::check_liveness_with`]) and revokes the
//! grant when it does not, announcing it like every other revocation
//! ([`Announce`]). A store failure is [`Verdict::Unavailable`] (503), never
//! a 401.
//!
//! Scope rule: a service that lists scopes accepts a token carrying **at
//! least one** of them. The gateway cannot know which MCP tool needs which
//! scope; the upstream gets the granted scopes (`X-Inkan-Scopes` and the
//! assertion's `scope`) and enforces per tool. A service without scopes
//! accepts any token granted for it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::http::HeaderValue;
use moka::sync::Cache;
use prometheus_client::metrics::counter::Counter;

use crate::config::Config;
use crate::identity::{Identity, Liveness};
use crate::metrics::{CacheLabels, CacheResult, Metrics, Outcome};
use crate::store::token::grant_id_of;
use crate::store::touch::Toucher;
use crate::store::{AccessView, Revoked, SharedStore, TokenHash, TokenKind};

/// Who a valid token speaks for, derived once per grant and cached.
#[derive(Debug)]
pub struct Access {
    pub grant_id: String,
    pub user_id: String,
    pub email: Option<String>,
    pub client_id: String,
    pub scopes: Vec<String>,
    pub services: Vec<String>,
    /// The earliest of the access token's expiry, the grant's, and (when
    /// tokens are bound to sessions) the Hanko session's.
    pub expires_at: i64,
    /// The identity headers for the upstream, built once.
    pub headers: IdentityHeaders,
}

#[derive(Debug)]
pub struct IdentityHeaders {
    pub user: HeaderValue,
    pub email: Option<HeaderValue>,
    pub client: HeaderValue,
    pub scopes: HeaderValue,
    pub services: HeaderValue,
}

impl Access {
    fn from_view(view: AccessView, bind_to_session: bool) -> Option<Access> {
        let g = view.grant;
        let mut expires_at = view.access_expires_at.min(g.expires_at);
        if bind_to_session {
            expires_at = expires_at.min(g.session_exp);
        }
        let value = |s: &str| HeaderValue::from_str(s).ok();
        let scopes = g.scopes.join(" ");
        let services = g.services.join(" ");
        let headers = IdentityHeaders {
            user: value(&g.user_id)?,
            email: g.email.as_deref().and_then(value),
            client: value(&g.client_id)?,
            scopes: value(&scopes)?,
            services: value(&services)?,
        };
        Some(Access {
            grant_id: g.grant_id,
            user_id: g.user_id,
            email: g.email,
            client_id: g.client_id,
            scopes: g.scopes,
            services: g.services,
            expires_at,
            headers,
        })
    }
}

/// The result of validating one bearer token for one service.
#[derive(Debug)]
pub enum Verdict {
    Allowed(Arc<Access>),
    /// Malformed, unknown, revoked or expired: `401 invalid_token`.
    Invalid(Outcome),
    /// Valid, but for other services: `401 invalid_token`.
    WrongService,
    /// `403 insufficient_scope`.
    InsufficientScope,
    /// The store could not answer: `503`, the client keeps its token.
    Unavailable,
}

struct Entry {
    hash: TokenHash,
    access: Arc<Access>,
    /// Last second this grant was reported to the [`Toucher`], so a busy
    /// grant costs at most one report per second.
    touched: AtomicI64,
}

/// Validates bearer tokens; one per process, shared by every service.
pub struct Validator {
    store: SharedStore,
    toucher: Arc<Toucher>,
    metrics: Arc<Metrics>,
    /// Cache hit and miss counters, looked up once rather than per request.
    hits: Counter,
    misses: Counter,
    /// `None` when `gateway.cache_capacity` is 0.
    cache: Option<Cache<String, Arc<Entry>>>,
    /// Bumped by every invalidation, so that a store lookup that started
    /// before a revocation does not put the revoked grant back in the cache.
    generation: AtomicU64,
    bind_to_session: bool,
    /// Asked on cache misses whether the grant's Hanko session still exists.
    liveness: OnceLock<LivenessCheck>,
}

/// Told of grants the gateway revoked on its own (a Hanko session found
/// gone on a cache miss), so that this instance's cache and every other
/// instance drop them, as after any revocation.
#[async_trait::async_trait]
pub trait Announce: Send + Sync {
    async fn revoked(&self, revoked: &Revoked);
}

struct LivenessCheck {
    identity: Arc<Identity>,
    announce: Arc<dyn Announce>,
}

impl Validator {
    pub fn new(
        config: &Config,
        store: SharedStore,
        toucher: Arc<Toucher>,
        metrics: Arc<Metrics>,
    ) -> Validator {
        let g = &config.gateway;
        let cache = (g.cache_capacity > 0).then(|| {
            Cache::builder()
                .max_capacity(g.cache_capacity)
                .time_to_live(g.cache_ttl)
                .build()
        });
        let counter = |result| metrics.cache.get_or_create(&CacheLabels { result }).clone();
        Validator {
            hits: counter(CacheResult::Hit),
            misses: counter(CacheResult::Miss),
            store,
            toucher,
            metrics,
            cache,
            generation: AtomicU64::new(0),
            bind_to_session: config.tokens.bind_to_session,
            liveness: OnceLock::new(),
        }
    }

    /// Validates `token` for `service`, whose configured scopes are `required`.
    pub async fn validate(
        &self,
        token: &str,
        service: &str,
        required: &[String],
        now: i64,
    ) -> Verdict {
        let verdict = self.check(token, service, required, now).await;
        let outcome = match &verdict {
            Verdict::Allowed(_) => Outcome::Allowed,
            Verdict::Invalid(o) => *o,
            Verdict::WrongService => Outcome::WrongService,
            Verdict::InsufficientScope => Outcome::InsufficientScope,
            Verdict::Unavailable => Outcome::StoreError,
        };
        self.metrics.validation(outcome);
        verdict
    }

    async fn check(&self, token: &str, service: &str, required: &[String], now: i64) -> Verdict {
        let Some(grant_id) = grant_id_of(TokenKind::Access, token) else {
            return Verdict::Invalid(Outcome::Malformed);
        };
        let hash = TokenHash::of(token);

        let cached = self.cache.as_ref().and_then(|c| c.get(grant_id));
        let entry = match cached {
            Some(e) if e.hash == hash => {
                self.count_cache(CacheResult::Hit);
                e
            }
            _ => {
                self.count_cache(CacheResult::Miss);
                match self.load(grant_id, hash).await {
                    Ok(Some(e)) => e,
                    Ok(None) => return Verdict::Invalid(Outcome::Unknown),
                    Err(()) => return Verdict::Unavailable,
                }
            }
        };

        let access = &entry.access;
        if now >= access.expires_at {
            return Verdict::Invalid(Outcome::Expired);
        }
        if !access.services.iter().any(|s| s == service) {
            return Verdict::WrongService;
        }
        if !required.is_empty() && !required.iter().any(|r| access.scopes.contains(r)) {
            return Verdict::InsufficientScope;
        }
        let last = entry.touched.load(Ordering::Relaxed);
        if last < now
            && entry
                .touched
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.toucher.touch(&access.grant_id, now);
        }
        Verdict::Allowed(Arc::clone(access))
    }

    /// One store round trip; caches what it found unless an invalidation
    /// ran meanwhile.
    async fn load(&self, grant_id: &str, hash: TokenHash) -> Result<Option<Arc<Entry>>, ()> {
        let generation = self.generation.load(Ordering::Acquire);
        let started = Instant::now();
        let looked_up = self.store.lookup_access(grant_id, &hash).await;
        self.metrics
            .store_latency
            .observe(started.elapsed().as_secs_f64());
        let view = match looked_up {
            Ok(Some(view)) => view,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::warn!(error = %e, "token lookup failed; answering 503");
                return Err(());
            }
        };
        if !self.session_alive(&view).await? {
            return Ok(None);
        }
        let Some(access) = Access::from_view(view, self.bind_to_session) else {
            tracing::warn!(
                grant_id,
                "grant holds values that cannot be sent as headers; refusing its token"
            );
            return Ok(None);
        };
        let entry = Arc::new(Entry {
            hash,
            access: Arc::new(access),
            touched: AtomicI64::new(0),
        });
        if let Some(cache) = &self.cache {
            cache.insert(grant_id.to_owned(), Arc::clone(&entry));
            // An invalidation either bumped the generation before this
            // check (we undo our insert) or runs its own invalidation after
            // our insert; either way the revoked grant does not stay cached.
            if self.generation.load(Ordering::Acquire) != generation {
                cache.invalidate(grant_id);
            }
        }
        Ok(Some(entry))
    }

    /// Makes cache misses check the grant's Hanko session through the admin
    /// API (a no-op answer when none is configured); grants found dead are
    /// revoked and reported to `announce`. Set once at startup.
    pub fn check_liveness_with(&self, identity: Arc<Identity>, announce: Arc<dyn Announce>) {
        let _ = self.liveness.set(LivenessCheck { identity, announce });
    }

    /// `Ok(false)` when Hanko says the grant's session is gone: the grant is
    /// revoked here and now. An unreachable admin API does not block
    /// requests; session-bound expiry and webhooks still end the grant.
    async fn session_alive(&self, view: &AccessView) -> Result<bool, ()> {
        let Some(check) = self.liveness.get() else {
            return Ok(true);
        };
        let g = &view.grant;
        match check
            .identity
            .session_alive(&g.user_id, &g.session_id)
            .await
        {
            Ok(Liveness::Alive | Liveness::NotChecked) => Ok(true),
            Ok(Liveness::Gone) => match self.store.revoke_grant(&g.grant_id).await {
                Ok(revoked) => {
                    check.announce.revoked(&revoked).await;
                    tracing::info!(grant_id = %g.grant_id, "Hanko session gone; grant revoked");
                    Ok(false)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "revoking a grant whose session is gone failed; answering 503");
                    Err(())
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "session liveness unknown; allowing the request");
                Ok(true)
            }
        }
    }

    fn count_cache(&self, result: CacheResult) {
        if self.cache.is_some() {
            match result {
                CacheResult::Hit => self.hits.inc(),
                CacheResult::Miss => self.misses.inc(),
            };
        }
    }

    /// Drops cached validations of these grants (called by revocation).
    pub fn invalidate_grants(&self, grant_ids: &[String]) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            for id in grant_ids {
                cache.invalidate(id.as_str());
            }
        }
    }

    /// Drops every cached validation (e.g. after invalidation messages may
    /// have been lost).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}
