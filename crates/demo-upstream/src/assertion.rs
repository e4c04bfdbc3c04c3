//! Verification of the `X-Inkan-Assertion` header: an ES256 JWT that inkan
//! signs once per grant and service, checked against inkan's JWKS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, RwLock};

/// The claims inkan puts into an identity assertion.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub sub: String,
    #[serde(default)]
    pub email: Option<String>,
    pub client_id: String,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Why an assertion was refused; the message is shown to the tool caller.
#[derive(Debug, thiserror::Error)]
pub enum AssertionError {
    #[error("missing X-Inkan-Assertion header")]
    Missing,
    #[error("X-Inkan-Assertion is not valid UTF-8")]
    NotText,
    #[error("malformed assertion header: {0}")]
    Header(jsonwebtoken::errors::Error),
    #[error("assertion has no kid")]
    NoKid,
    #[error("assertion algorithm {0:?} is not ES256")]
    Algorithm(Algorithm),
    #[error("no key {0:?} in the JWKS")]
    UnknownKid(String),
    #[error("fetching the JWKS failed: {0}")]
    Jwks(String),
    #[error("assertion rejected: {0}")]
    Invalid(jsonwebtoken::errors::Error),
}

/// Checks assertions against a JWKS fetched lazily, so the demo upstream can
/// start before inkan does. Keys are cached; an unknown `kid` triggers one
/// refetch (single-flight) to follow inkan's key rotation.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    jwks_url: String,
    http: reqwest::Client,
    validation: Validation,
    keys: RwLock<HashMap<String, DecodingKey>>,
    // Held across the fetch so concurrent misses cause one request, not many.
    refetch: Mutex<()>,
}

impl Verifier {
    pub fn new(jwks_url: String, audience: &str) -> anyhow::Result<Self> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        Ok(Verifier {
            inner: Arc::new(Inner {
                jwks_url,
                http,
                validation,
                keys: RwLock::new(HashMap::new()),
                refetch: Mutex::new(()),
            }),
        })
    }

    pub async fn verify(
        &self,
        header: Option<&http::HeaderValue>,
    ) -> Result<AssertionClaims, AssertionError> {
        let token = header
            .ok_or(AssertionError::Missing)?
            .to_str()
            .map_err(|_| AssertionError::NotText)?;
        let jwt_header = decode_header(token).map_err(AssertionError::Header)?;
        if jwt_header.alg != Algorithm::ES256 {
            return Err(AssertionError::Algorithm(jwt_header.alg));
        }
        let kid = jwt_header.kid.ok_or(AssertionError::NoKid)?;
        let key = self.key(&kid).await?;
        decode::<AssertionClaims>(token, &key, &self.inner.validation)
            .map(|data| data.claims)
            .map_err(AssertionError::Invalid)
    }

    async fn key(&self, kid: &str) -> Result<DecodingKey, AssertionError> {
        if let Some(key) = self.inner.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        let _flight = self.inner.refetch.lock().await;
        if let Some(key) = self.inner.keys.read().await.get(kid) {
            return Ok(key.clone());
        }
        let fetched = self.fetch().await?;
        let found = fetched.get(kid).cloned();
        *self.inner.keys.write().await = fetched;
        found.ok_or_else(|| AssertionError::UnknownKid(kid.to_owned()))
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, AssertionError> {
        let failed = |e: reqwest::Error| AssertionError::Jwks(e.to_string());
        let set: JwkSet = self
            .inner
            .http
            .get(&self.inner.jwks_url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(failed)?
            .json()
            .await
            .map_err(failed)?;
        // Keys that are not usable EC keys are skipped rather than failing the
        // whole set, so one odd entry cannot lock every caller out.
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                DecodingKey::from_jwk(jwk).ok().map(|key| (kid, key))
            })
            .collect())
    }
}
