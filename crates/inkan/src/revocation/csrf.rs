//! CSRF tokens for the logout and account forms: an HMAC of the Hanko
//! session id under the key the consent form uses (shared by every instance
//! through the store), separated from the consent form's tokens by a
//! purpose label. A form rendered by one instance can be posted to another,
//! and a token is worthless for anyone else's session.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::server::AppState;
use crate::store::StoreResult;

const PURPOSE: &[u8] = b"inkan account forms v1\0";
/// Longer input is not a token of ours; refuse before hashing anything.
const MAX_TOKEN_LEN: usize = 64;

fn mac(key: &[u8], session_id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(PURPOSE);
    mac.update(session_id.as_bytes());
    mac
}

/// The token to embed in a form for this session.
pub async fn token(state: &AppState, session_id: &str) -> StoreResult<String> {
    let key = crate::oauth::csrf_key(state).await?;
    Ok(URL_SAFE_NO_PAD.encode(mac(key, session_id).finalize().into_bytes()))
}

/// Constant-time check of a posted token against this session.
pub async fn verify(state: &AppState, session_id: &str, token: &str) -> StoreResult<bool> {
    if token.len() > MAX_TOKEN_LEN {
        return Ok(false);
    }
    let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
        return Ok(false);
    };
    let key = crate::oauth::csrf_key(state).await?;
    Ok(mac(key, session_id).verify_slice(&tag).is_ok())
}
