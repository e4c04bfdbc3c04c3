//! The records the store keeps. Field names follow the domain: a *client*
//! asks, a *user* consents, the consent is a *grant*, and a grant holds one
//! access token and one refresh token at a time.

use serde::{Deserialize, Serialize};

use super::TokenHash;

/// How a client authenticates at the token endpoint (RFC 7591 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    None,
    ClientSecretPost,
    ClientSecretBasic,
}

impl ClientAuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::None => "none",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
        }
    }
}

/// Where a client's metadata came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientSource {
    /// Dynamic Client Registration (RFC 7591).
    Registered,
    /// A Client ID Metadata Document fetched from the https `client_id`.
    MetadataDocument,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub client_name: Option<String>,
    pub client_uri: Option<String>,
    pub logo_uri: Option<String>,
    pub redirect_uris: Vec<String>,
    pub grant_types: Vec<String>,
    pub auth_method: ClientAuthMethod,
    /// SHA-256 of the client secret; only for confidential clients.
    pub secret_hash: Option<TokenHash>,
    pub source: ClientSource,
    pub created_at: i64,
    /// Registrations unused for a while expire; `None` never expires.
    pub expires_at: Option<i64>,
}

/// One user's consent for one client. The Hanko JWT itself is never stored;
/// only who it named and when it ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub grant_id: String,
    /// Hanko user id (`sub`).
    pub user_id: String,
    pub email: Option<String>,
    /// Hanko `session_id` the consent was given under.
    pub session_id: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// Service ids the grant reaches; a token is accepted on `/mcp/<id>` only for these.
    pub services: Vec<String>,
    /// The resource (RFC 8707) the client asked for; the tokens' primary audience.
    pub resource: String,
    pub created_at: i64,
    pub last_used: Option<i64>,
    /// `exp` of the Hanko session JWT at consent.
    pub session_exp: i64,
    /// When the grant ends at the latest (its refresh token's expiry).
    pub expires_at: i64,
}

/// An authorization code waiting to be exchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCode {
    /// The grant the code turns into; its id is fixed at consent.
    pub grant: Grant,
    pub redirect_uri: String,
    /// PKCE S256 challenge (base64url, no padding).
    pub code_challenge: String,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeOutcome {
    /// First and only successful consumption.
    Fresh(Box<PendingCode>),
    /// Already consumed: the caller revokes what the first exchange issued.
    Replayed { grant_id: String },
    /// Never existed or expired.
    Unknown,
}

/// Hashes and expiries of an access and a refresh token issued together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenPair {
    pub access: TokenHash,
    pub access_expires_at: i64,
    pub refresh: TokenHash,
    pub refresh_expires_at: i64,
}

/// What the hot path needs to authorize a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessView {
    pub grant: Grant,
    pub access_expires_at: i64,
}

/// A refresh request: the presented token and the successor derived from it.
///
/// The successor is derived deterministically from the presented refresh
/// token (see [`super::token::successor`]), so a retry inside the grace window
/// yields the same successor without the store ever holding a usable token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rotation {
    pub presented: TokenHash,
    pub successor: TokenPair,
    pub now: i64,
    /// How long the previous refresh token keeps returning the same successor.
    pub grace_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotateOutcome {
    /// The presented token was current; the successor is now current.
    Rotated { grant: Grant },
    /// The presented token is the previous one, inside the grace window, and
    /// its successor is still current: answer with the same successor.
    Repeated {
        grant: Grant,
        access_expires_at: i64,
        refresh_expires_at: i64,
    },
    /// Reuse outside the grace window: the whole grant has been revoked.
    Reused { revoked: Revoked },
    /// The refresh token (or its grant) has expired.
    Expired,
    /// No such grant or token.
    Unknown,
}

/// What a revocation removed, for logs, the CLI and cache invalidation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revoked {
    pub grants: Vec<String>,
    /// Access and refresh tokens (and pending codes) that stopped working.
    pub tokens: u64,
}

impl Revoked {
    pub fn merge(&mut self, other: Revoked) {
        self.grants.extend(other.grants);
        self.tokens += other.tokens;
    }
}
