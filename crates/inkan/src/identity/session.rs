//! Session JWT verification.
//!
//! The algorithm is pinned to RS256 by us, never taken from the token: a
//! header naming anything else (`none`, HS256 keyed with the public key,
//! ES256, ...) is refused before any key is touched. The key is chosen by the
//! required `kid` from the JWKS cache, so an unknown `kid` can cost at most
//! one JWKS fetch per cooldown.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::jwks::JwksCache;
use super::{HankoSession, Rejection};
use crate::config::HankoConfig;

/// Hanko's JWTs are ~1 KB; anything near this is not one of them.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// Longest `sub` / `session_id` accepted (Hanko's are UUIDs); they become store keys.
const MAX_ID_LEN: usize = 128;

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct EmailClaim {
    address: String,
}

#[derive(Deserialize)]
struct SessionClaims {
    sub: String,
    session_id: String,
    exp: i64,
    iat: Option<i64>,
    #[serde(default)]
    email: Option<EmailClaim>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    amr: Option<Vec<String>>,
}

/// Checks shape and header, then signature and the registered claims in
/// `validation` (whose algorithm list must be exactly RS256).
pub(crate) async fn verify_jws<T: DeserializeOwned>(
    jwks: &Arc<JwksCache>,
    token: &str,
    validation: &Validation,
) -> Result<T, Rejection> {
    if token.is_empty() {
        return Err(Rejection::Missing);
    }
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::Oversized);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Rejection::Malformed);
    };
    let header: JoseHeader = URL_SAFE_NO_PAD
        .decode(header)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or(Rejection::Malformed)?;
    if header.alg != "RS256" {
        return Err(Rejection::WrongAlgorithm);
    }
    // Without a kid there is no key to choose; Hanko always sets one.
    let kid = header
        .kid
        .filter(|k| !k.is_empty())
        .ok_or(Rejection::Malformed)?;
    let key = jwks.key(&kid).await?;
    jsonwebtoken::decode::<T>(token, &key, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => Rejection::BadSignature,
            ErrorKind::ExpiredSignature => Rejection::Expired,
            ErrorKind::InvalidAudience => Rejection::WrongAudience,
            ErrorKind::InvalidIssuer => Rejection::WrongIssuer,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => Rejection::WrongAlgorithm,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Rejection::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Rejection::WrongIssuer,
            _ => Rejection::Malformed,
        })
}

/// RS256 only, `exp` required, [`LEEWAY_SECS`] of skew.
pub(crate) fn rs256_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.leeway = LEEWAY_SECS;
    validation.validate_aud = false;
    validation.set_required_spec_claims(&["exp"]);
    validation
}

pub(crate) async fn verify(
    jwks: &Arc<JwksCache>,
    config: &HankoConfig,
    token: &str,
) -> Result<HankoSession, Rejection> {
    let mut validation = rs256_validation();
    validation.validate_aud = true;
    validation.set_audience(&[&config.audience]);
    let mut required = vec!["exp", "sub", "aud"];
    if let Some(issuer) = &config.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);

    let claims: SessionClaims = verify_jws(jwks, token, &validation).await?;
    // A token issued in the future was not issued by a sane Hanko.
    if claims
        .iat
        .is_some_and(|iat| iat > now() + LEEWAY_SECS as i64)
    {
        return Err(Rejection::Malformed);
    }
    let id_ok = |s: &str| !s.is_empty() && s.len() <= MAX_ID_LEN;
    if !id_ok(&claims.sub) || !id_ok(&claims.session_id) {
        return Err(Rejection::Malformed);
    }
    Ok(HankoSession {
        user_id: claims.sub,
        session_id: claims.session_id,
        email: claims.email.map(|e| e.address),
        username: claims.username,
        amr: claims.amr.unwrap_or_default(),
        expires_at: claims.exp,
    })
}

pub(crate) fn now() -> i64 {
    i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap_or(i64::MAX)
}
