//! Who the user is, according to Hanko.
//!
//! PLACEHOLDER API (the identity issue fills it in; keep these names):
//! one [`Identity`] per process holds the JWKS cache, verifies session JWTs,
//! and answers session-liveness questions through the admin API.

use axum::http::HeaderMap;

/// A verified Hanko session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HankoSession {
    pub user_id: String,
    pub session_id: String,
    pub email: Option<String>,
    pub username: Option<String>,
    pub amr: Vec<String>,
    /// `exp` of the session JWT (Unix seconds).
    pub expires_at: i64,
}

/// Why a session JWT was refused (logged, never shown in detail to clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("no session token")]
    Missing,
    #[error("malformed token")]
    Malformed,
    #[error("token larger than 16 KB")]
    Oversized,
    #[error("token expired")]
    Expired,
    #[error("bad signature")]
    BadSignature,
    #[error("unknown key id")]
    UnknownKey,
    #[error("wrong audience")]
    WrongAudience,
    #[error("wrong issuer")]
    WrongIssuer,
    #[error("wrong algorithm")]
    WrongAlgorithm,
    #[error("Hanko keys unavailable")]
    KeysUnavailable,
}

pub struct Identity {}

impl Identity {
    /// The session token from `Authorization: Bearer` or the session cookie.
    pub fn token_from_headers<'a>(&self, _headers: &'a HeaderMap) -> Option<&'a str> {
        unimplemented!("identity issue")
    }

    pub async fn verify(&self, _token: &str) -> Result<HankoSession, Rejection> {
        unimplemented!("identity issue")
    }
}
