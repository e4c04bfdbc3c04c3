//! CSRF tokens for the logout and account forms: an HMAC of the Hanko
//! session id under a key every instance shares (kept in the store), so a
//! form rendered by one instance can be posted to another, and a token is
//! worthless for anyone else's session.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::OnceCell;

use crate::store::{Store, StoreResult};

const KEY_NAME: &str = "revocation.csrf_key";
const PURPOSE: &[u8] = b"inkan account forms v1\0";
/// Longer input is not a token of ours; refuse before hashing anything.
const MAX_TOKEN_LEN: usize = 64;

#[derive(Default)]
pub struct CsrfKey(OnceCell<Vec<u8>>);

impl CsrfKey {
    async fn key(&self, store: &dyn Store) -> StoreResult<&[u8]> {
        self.0
            .get_or_try_init(|| async {
                let mut fresh = [0u8; 32];
                rand::rng().fill_bytes(&mut fresh);
                store.put_meta_if_absent(KEY_NAME, &fresh).await
            })
            .await
            .map(Vec::as_slice)
    }

    fn mac(key: &[u8], session_id: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(PURPOSE);
        mac.update(session_id.as_bytes());
        mac
    }

    /// The token to embed in a form for this session.
    pub async fn token(&self, store: &dyn Store, session_id: &str) -> StoreResult<String> {
        let key = self.key(store).await?;
        Ok(URL_SAFE_NO_PAD.encode(Self::mac(key, session_id).finalize().into_bytes()))
    }

    /// Constant-time check of a posted token against this session.
    pub async fn verify(
        &self,
        store: &dyn Store,
        session_id: &str,
        token: &str,
    ) -> StoreResult<bool> {
        if token.len() > MAX_TOKEN_LEN {
            return Ok(false);
        }
        let Ok(tag) = URL_SAFE_NO_PAD.decode(token) else {
            return Ok(false);
        };
        let key = self.key(store).await?;
        Ok(Self::mac(key, session_id).verify_slice(&tag).is_ok())
    }
}
