//! `X-Inkan-Assertion`: a short-lived ES256 JWT that tells an upstream who
//! the request is for, verifiable against inkan's `/.well-known/jwks.json`.
//!
//! Claims: `iss` (public_url), `sub`, `email`, `client_id`, `scope`, `aud`
//! (the service's resource URL), `iat`, `exp` (60 s); header `kid`.
//!
//! Signed once per grant and service and reused until half its lifetime has
//! passed, so an upstream never receives an assertion with less than 30 s
//! left, and a busy grant costs one signature per 30 s.
//!
//! The signing key lives in the store (`assertion_keys`): the first instance
//! to start writes it with `put_meta_if_absent`, every other instance and
//! every restart reads the same key. [`Assertions::rotate`] makes a new key
//! current and keeps the previous public key published, so assertions signed
//! just before a rotation still verify.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use axum::http::HeaderValue;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use moka::sync::Cache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::validate::Access;
use crate::config::Config;
use crate::store::{SharedStore, StoreError};

/// The store's name for the key set.
const META_NAME: &str = "assertion_keys";
pub const LIFETIME: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored assertion keys are unreadable: {0}")]
    Corrupt(String),
    #[error("P-256 key generation failed")]
    Generate,
}

/// What the store holds: PKCS#8 documents, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKeys {
    current: StoredKey,
    previous: Option<StoredKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    pkcs8: String,
}

/// A usable key set: the current signing key and the published JWKS.
struct KeySet {
    stored: StoredKeys,
    header: Header,
    signing: EncodingKey,
    jwks: Bytes,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    client_id: &'a str,
    scope: String,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

pub struct Assertions {
    issuer: String,
    store: SharedStore,
    keys: RwLock<Arc<KeySet>>,
    /// Per service: grant id → signed assertion.
    signed: HashMap<String, Cache<String, HeaderValue>>,
}

impl Assertions {
    /// Loads the shared key set from the store, creating it if this is the
    /// first instance ever to start.
    pub async fn load(config: &Config, store: SharedStore) -> Result<Assertions, KeyError> {
        let fresh = serde_json::to_vec(&StoredKeys {
            current: generate()?,
            previous: None,
        })
        .expect("key set serializes");
        let stored = store.put_meta_if_absent(META_NAME, &fresh).await?;
        let keys = KeySet::from_bytes(&stored)?;
        let signed = config
            .services
            .iter()
            .map(|s| {
                let cache = Cache::builder()
                    .max_capacity(config.gateway.cache_capacity.max(1024))
                    .time_to_live(LIFETIME / 2)
                    .build();
                (s.id.clone(), cache)
            })
            .collect();
        Ok(Assertions {
            issuer: config.public_url.clone(),
            store,
            keys: RwLock::new(Arc::new(keys)),
            signed,
        })
    }

    /// The assertion for this grant on this service (`aud` = `resource`).
    pub fn assertion(
        &self,
        service: &str,
        resource: &str,
        access: &Access,
        now: i64,
    ) -> Option<HeaderValue> {
        let cache = self.signed.get(service)?;
        if let Some(v) = cache.get(access.grant_id.as_str()) {
            return Some(v);
        }
        let keys = self.current();
        let claims = Claims {
            iss: &self.issuer,
            sub: &access.user_id,
            email: access.email.as_deref(),
            client_id: &access.client_id,
            scope: access.scopes.join(" "),
            aud: resource,
            iat: now,
            exp: now + LIFETIME.as_secs() as i64,
        };
        let jwt = match jsonwebtoken::encode(&keys.header, &claims, &keys.signing) {
            Ok(jwt) => jwt,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign identity assertion");
                return None;
            }
        };
        let value = HeaderValue::from_str(&jwt).ok()?;
        cache.insert(access.grant_id.clone(), value.clone());
        Some(value)
    }

    /// `GET /.well-known/jwks.json`: current and previous public keys.
    pub fn jwks(&self) -> Bytes {
        self.current().jwks.clone()
    }

    /// Key id of the current signing key.
    pub fn current_kid(&self) -> String {
        self.current().stored.current.kid.clone()
    }

    /// Makes a new key current; the previous one stays published.
    pub async fn rotate(&self) -> Result<String, KeyError> {
        let mut stored = match self.store.get_meta(META_NAME).await? {
            Some(bytes) => parse(&bytes)?,
            None => self.current().stored.clone(),
        };
        stored.previous = Some(stored.current);
        stored.current = generate()?;
        let bytes = serde_json::to_vec(&stored).expect("key set serializes");
        self.store.set_meta(META_NAME, &bytes).await?;
        let keys = KeySet::new(stored)?;
        let kid = keys.stored.current.kid.clone();
        *self.keys.write().expect("key lock poisoned") = Arc::new(keys);
        for cache in self.signed.values() {
            cache.invalidate_all();
        }
        Ok(kid)
    }

    fn current(&self) -> Arc<KeySet> {
        // Held only to clone an Arc; never across an await.
        Arc::clone(&self.keys.read().expect("key lock poisoned"))
    }
}

impl KeySet {
    fn from_bytes(bytes: &[u8]) -> Result<KeySet, KeyError> {
        KeySet::new(parse(bytes)?)
    }

    fn new(stored: StoredKeys) -> Result<KeySet, KeyError> {
        let current_der = decode_der(&stored.current)?;
        let mut jwk = vec![public_jwk(&stored.current.kid, &current_der)?];
        if let Some(prev) = &stored.previous {
            jwk.push(public_jwk(&prev.kid, &decode_der(prev)?)?);
        }
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": jwk }))
            .expect("JWKS serializes")
            .into();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(stored.current.kid.clone());
        Ok(KeySet {
            signing: EncodingKey::from_ec_der(&current_der),
            header,
            jwks,
            stored,
        })
    }
}

fn parse(bytes: &[u8]) -> Result<StoredKeys, KeyError> {
    serde_json::from_slice(bytes).map_err(|e| KeyError::Corrupt(e.to_string()))
}

fn decode_der(key: &StoredKey) -> Result<Vec<u8>, KeyError> {
    STANDARD
        .decode(&key.pkcs8)
        .map_err(|e| KeyError::Corrupt(format!("key {}: {e}", key.kid)))
}

fn key_pair(der: &[u8]) -> Result<EcdsaKeyPair, KeyError> {
    EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
        .map_err(|e| KeyError::Corrupt(format!("not a P-256 PKCS#8 key: {e}")))
}

/// A new P-256 key, named by its RFC 7638 thumbprint.
fn generate() -> Result<StoredKey, KeyError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|_| KeyError::Generate)?;
    let (x, y) = coordinates(&key_pair(doc.as_ref())?);
    Ok(StoredKey {
        kid: thumbprint(&x, &y),
        pkcs8: STANDARD.encode(doc.as_ref()),
    })
}

/// x and y, base64url, from the uncompressed SEC1 point `04 || x || y`.
fn coordinates(pair: &EcdsaKeyPair) -> (String, String) {
    let point = pair.public_key().as_ref();
    (
        URL_SAFE_NO_PAD.encode(&point[1..33]),
        URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
}

fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}

fn public_jwk(kid: &str, der: &[u8]) -> Result<serde_json::Value, KeyError> {
    let (x, y) = coordinates(&key_pair(der)?);
    Ok(serde_json::json!({
        "kty": "EC",
        "crv": "P-256",
        "x": x,
        "y": y,
        "kid": kid,
        "alg": "ES256",
        "use": "sig",
    }))
}
