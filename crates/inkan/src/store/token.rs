//! Token formats: `ink_at_<grant id>_<secret>`, `ink_rt_…`, `ink_ac_…`, and
//! `ink_cs_<secret>` for client secrets.
//!
//! The grant id (128 random bits, 22 base64url characters) travels inside
//! the token so that validation goes straight to the grant's record: one key,
//! one round trip, one hash slot. The secret is 256 random bits (43
//! characters). Only the SHA-256 of the whole token string is ever stored.
//! Both parts have fixed lengths, so the `_` that base64url may contain never
//! makes parsing ambiguous.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub const GRANT_ID_LEN: usize = 22;
const SECRET_LEN: usize = 43;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Access,
    Refresh,
    Code,
    ClientSecret,
}

impl TokenKind {
    pub const fn prefix(self) -> &'static str {
        match self {
            TokenKind::Access => "ink_at_",
            TokenKind::Refresh => "ink_rt_",
            TokenKind::Code => "ink_ac_",
            TokenKind::ClientSecret => "ink_cs_",
        }
    }
}

/// SHA-256 of a token, code or secret. Compared in constant time.
#[derive(Clone, Copy, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.as_bytes()).into())
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
            let hi = (chunk[0] as char).to_digit(16)?;
            let lo = (chunk[1] as char).to_digit(16)?;
            out[i] = (hi * 16 + lo) as u8;
        }
        Some(TokenHash(out))
    }

    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(TokenHash)
    }
}

impl PartialEq for TokenHash {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl fmt::Debug for TokenHash {
    // Hashes are not secrets, but short output keeps logs readable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenHash({}…)", &self.to_hex()[..12])
    }
}

impl Serialize for TokenHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for TokenHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TokenHash::from_hex(&s).ok_or_else(|| serde::de::Error::custom("bad token hash"))
    }
}

fn random_b64(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

/// A fresh grant id: 128 random bits.
pub fn new_grant_id() -> String {
    random_b64(16)
}

/// A freshly minted token and its hash.
pub struct Minted {
    pub token: String,
    pub hash: TokenHash,
}

impl fmt::Debug for Minted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Minted")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// Mints a grant-bound token (access, refresh or code).
pub fn mint(kind: TokenKind, grant_id: &str) -> Minted {
    debug_assert_eq!(grant_id.len(), GRANT_ID_LEN);
    let token = format!("{}{grant_id}_{}", kind.prefix(), random_b64(32));
    let hash = TokenHash::of(&token);
    Minted { token, hash }
}

/// Mints a client secret (not bound to a grant).
pub fn mint_client_secret() -> Minted {
    let token = format!("{}{}", TokenKind::ClientSecret.prefix(), random_b64(32));
    let hash = TokenHash::of(&token);
    Minted { token, hash }
}

/// Splits a grant-bound token of the expected kind into its grant id.
/// Returns `None` for anything not shaped exactly like one.
pub fn grant_id_of(kind: TokenKind, token: &str) -> Option<&str> {
    let rest = token.strip_prefix(kind.prefix())?;
    if rest.len() != GRANT_ID_LEN + 1 + SECRET_LEN || rest.as_bytes()[GRANT_ID_LEN] != b'_' {
        return None;
    }
    let is_b64 = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    let (grant, secret) = (&rest[..GRANT_ID_LEN], &rest[GRANT_ID_LEN + 1..]);
    (is_b64(grant) && is_b64(secret)).then_some(grant)
}

/// The access and refresh token that succeed `refresh`, derived with
/// HMAC-SHA256 keyed by the presented refresh token.
///
/// Deterministic, so a client that lost the response (or raced itself) gets
/// the same successor again inside the grace window, while the store keeps
/// only hashes: knowing `SHA-256(refresh)` does not give the HMAC key.
pub fn successor(refresh: &str, grant_id: &str) -> (Minted, Minted) {
    let derive = |kind: TokenKind| {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(refresh.as_bytes()).expect("HMAC takes any key length");
        mac.update(kind.prefix().as_bytes());
        let secret = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        let token = format!("{}{grant_id}_{secret}", kind.prefix());
        let hash = TokenHash::of(&token);
        Minted { token, hash }
    };
    (derive(TokenKind::Access), derive(TokenKind::Refresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_back_to_their_grant() {
        let gid = new_grant_id();
        for kind in [TokenKind::Access, TokenKind::Refresh, TokenKind::Code] {
            let m = mint(kind, &gid);
            assert!(m.token.starts_with(kind.prefix()));
            assert_eq!(grant_id_of(kind, &m.token), Some(gid.as_str()));
            assert_eq!(m.hash, TokenHash::of(&m.token));
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let gid = new_grant_id();
        let at = mint(TokenKind::Access, &gid).token;
        assert_eq!(grant_id_of(TokenKind::Refresh, &at), None);
        assert_eq!(grant_id_of(TokenKind::Access, &at[..at.len() - 1]), None);
        assert_eq!(grant_id_of(TokenKind::Access, &format!("{at}x")), None);
        let bad = at.replacen(&gid, &"!".repeat(GRANT_ID_LEN), 1);
        assert_eq!(grant_id_of(TokenKind::Access, &bad), None);
        assert_eq!(grant_id_of(TokenKind::Access, ""), None);
    }

    #[test]
    fn successor_is_deterministic_and_distinct() {
        let gid = new_grant_id();
        let rt = mint(TokenKind::Refresh, &gid).token;
        let (a1, r1) = successor(&rt, &gid);
        let (a2, r2) = successor(&rt, &gid);
        assert_eq!(a1.token, a2.token);
        assert_eq!(r1.token, r2.token);
        assert_ne!(r1.token, rt);
        assert_eq!(
            grant_id_of(TokenKind::Access, &a1.token),
            Some(gid.as_str())
        );
        assert_eq!(
            grant_id_of(TokenKind::Refresh, &r1.token),
            Some(gid.as_str())
        );
        let (a3, _) = successor(&r1.token, &gid);
        assert_ne!(a3.token, a1.token);
    }

    #[test]
    fn hex_round_trip() {
        let h = TokenHash::of("x");
        assert_eq!(TokenHash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(TokenHash::from_hex("zz"), None);
    }
}
