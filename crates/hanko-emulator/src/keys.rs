//! RSA signing keys: generated with aws-lc-rs, used through jsonwebtoken, and
//! published as a JWKS exactly as Hanko publishes its own.

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

/// One RSA key of the key set; the newest one signs.
pub(crate) struct SigningKey {
    pub kid: String,
    /// The private key, PKCS#8 DER, kept for the state file.
    pkcs8: Vec<u8>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    n: String,
    e: String,
}

impl SigningKey {
    pub fn generate(bits: usize) -> anyhow::Result<SigningKey> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            _ => bail!("RSA key size must be 2048, 3072, 4096 or 8192 bits (got {bits})"),
        };
        let pair = KeyPair::generate(size).map_err(|_| anyhow!("RSA key generation failed"))?;
        let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair)
            .map_err(|_| anyhow!("cannot serialise the RSA key"))?;
        SigningKey::from_pkcs8(uuid::Uuid::new_v4().to_string(), pkcs8.as_ref())
    }

    /// A key saved earlier with [`Self::pkcs8`].
    pub fn from_pkcs8(kid: String, pkcs8: &[u8]) -> anyhow::Result<SigningKey> {
        let pair = KeyPair::from_pkcs8(pkcs8).map_err(|_| anyhow!("not an RSA PKCS#8 key"))?;
        // jsonwebtoken reads PKCS#1 DER or PEM; aws-lc-rs writes PKCS#8, which
        // jsonwebtoken unwraps when it comes as PEM.
        let encoding = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", pkcs8).as_bytes())
            .context("jsonwebtoken refused the RSA key")?;
        let public = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
        let n = URL_SAFE_NO_PAD.encode(&public.n);
        let e = URL_SAFE_NO_PAD.encode(&public.e);
        let decoding = DecodingKey::from_rsa_components(&n, &e)?;
        Ok(SigningKey {
            kid,
            pkcs8: pkcs8.to_vec(),
            encoding,
            decoding,
            n,
            e,
        })
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// An RS256 JWS over `claims` with this key's `kid`, as Hanko signs.
    pub fn sign(&self, claims: &impl Serialize) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("signing JSON claims with a valid RSA key cannot fail")
    }

    /// Checks signature and `exp` (no leeway, like Hanko); the audience is not ours to check.
    pub fn verify<T: DeserializeOwned>(&self, token: &str) -> Option<T> {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = 0;
        validation.validate_aud = false;
        jsonwebtoken::decode::<T>(token, &self.decoding, &validation)
            .ok()
            .map(|d| d.claims)
    }

    pub fn jwk(&self) -> Value {
        json!({"alg": "RS256", "e": self.e, "kid": self.kid, "kty": "RSA", "n": self.n, "use": "sig"})
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
