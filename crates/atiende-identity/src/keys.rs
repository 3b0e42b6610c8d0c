//! Token signing keys: generated and kept by the service, sealed at rest,
//! rotated without a restart.
//!
//! A key is published in the JWKS from the moment it is created, and signs
//! from its `activate_time` on. Rotation creates a key that activates
//! `next_key_lead` later — at least one JWKS cache lifetime — so every
//! verifier knows it before it sees a token signed with it. A key stays
//! published until every token it signed has expired: until the next key's
//! activation plus the token lifetime (and a minute of grace). Which key
//! signs and which are published is derived from the activation times alone;
//! nothing else is stored.
//!
//! Signing uses aws-lc-rs directly on a key pair parsed once, rather than
//! `jsonwebtoken::encode`, which parses the private key again on every call
//! (about 1.7 times slower). Verification everywhere uses `jsonwebtoken`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use atiende_platform::auth::{AccessTokenClaims, BoxFuture, JwksError, JwksSource};
use atiende_platform::storage::{Database, now_micros};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::JwkSet;
use secrecy::{ExposeSecret, SecretString};

use crate::domain::IdentityError;
use crate::store::{self, SigningKeyRow};

const GRACE_MICROS: i64 = 60 * 1_000_000;

/// The key that encrypts signing keys at rest (AES-256-GCM).
pub struct KeyEncryptionKey(LessSafeKey);

impl KeyEncryptionKey {
    /// From 32 bytes in standard base64.
    pub fn from_base64(secret: &SecretString) -> Result<Self, IdentityError> {
        let bytes = STANDARD
            .decode(secret.expose_secret().trim())
            .map_err(|_| IdentityError::Keys("the key encryption key is not base64".into()))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| IdentityError::Keys("the key encryption key must be 32 bytes".into()))?;
        Ok(Self(LessSafeKey::new(key)))
    }

    /// A fresh random key, base64.
    pub fn generate_base64() -> Result<SecretString, IdentityError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IdentityError::Crypto)?;
        Ok(SecretString::from(STANDARD.encode(bytes)))
    }

    fn seal(&self, kid: &str, plaintext: &[u8]) -> Result<Vec<u8>, IdentityError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| IdentityError::Crypto)?;
        let mut in_out = plaintext.to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(kid.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| IdentityError::Crypto)?;
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    fn open(&self, kid: &str, sealed: &[u8]) -> Result<Vec<u8>, IdentityError> {
        if sealed.len() < NONCE_LEN {
            return Err(IdentityError::Keys("sealed key too short".into()));
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| IdentityError::Crypto)?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .0
            .open_in_place(nonce, Aad::from(kid.as_bytes()), &mut in_out)
            .map_err(|_| {
                IdentityError::Keys(
                    "a signing key does not open with this key encryption key".into(),
                )
            })?;
        Ok(plain.to_vec())
    }
}

/// One signing key, opened.
struct SigningKey {
    kid: String,
    activate_time: i64,
    x: String,
    y: String,
    /// `None` only in tests of the rotation policy.
    pair: Option<EcdsaKeyPair>,
    /// The JWS header `{"alg":"ES256","kid":…,"typ":"at+jwt"}`, base64url.
    header_b64: String,
}

impl SigningKey {
    fn new(
        kid: String,
        activate_time: i64,
        x: String,
        y: String,
        pair: Option<EcdsaKeyPair>,
    ) -> Self {
        let header = serde_json::json!({ "alg": "ES256", "kid": kid, "typ": "at+jwt" });
        let header_b64 = URL_SAFE_NO_PAD.encode(header.to_string());
        Self {
            kid,
            activate_time,
            x,
            y,
            pair,
            header_b64,
        }
    }

    /// A compact JWS (RFC 7515) of the claims: ES256 signatures are the
    /// fixed-width `r || s` that aws-lc-rs produces.
    fn sign(
        &self,
        claims: &AccessTokenClaims,
        rng: &SystemRandom,
    ) -> Result<String, IdentityError> {
        let pair = self.pair.as_ref().ok_or(IdentityError::Crypto)?;
        let payload = serde_json::to_vec(claims).map_err(|_| IdentityError::Crypto)?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 100);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = pair
            .sign(rng, token.as_bytes())
            .map_err(|_| IdentityError::Crypto)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }
}

/// A published public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub x: String,
    pub y: String,
}

impl PublicKey {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "x": self.x, "y": self.y,
            "kid": self.kid, "alg": "ES256", "use": "sig",
        })
    }
}

/// The keys known at one moment, oldest activation first.
struct KeyRing(Vec<SigningKey>);

impl KeyRing {
    fn signer(&self, now: i64) -> Option<&SigningKey> {
        self.0
            .iter()
            .rev()
            .find(|k| k.activate_time <= now)
            .or_else(|| self.0.first())
    }

    fn published(&self, now: i64, token_ttl: i64) -> impl Iterator<Item = &SigningKey> {
        self.0.iter().enumerate().filter_map(move |(i, key)| {
            let retired_after = self.0.get(i + 1).map(|next| {
                next.activate_time
                    .saturating_add(token_ttl)
                    .saturating_add(GRACE_MICROS)
            });
            match retired_after {
                Some(limit) if now >= limit => None,
                _ => Some(key),
            }
        })
    }
}

/// The service's signing keys, shared by all its handlers.
pub struct Keys {
    db: Database,
    kek: KeyEncryptionKey,
    ring: RwLock<Arc<KeyRing>>,
    rng: SystemRandom,
    token_ttl_micros: i64,
    next_key_lead: Duration,
}

impl Keys {
    /// Seals another secret kept at rest (a citizen's TOTP key) under the
    /// key encryption key; `context` (e.g. `totp:<citizen id>`) is bound to
    /// it as associated data, so a sealed value cannot be moved to another
    /// row. Contexts never look like key ids.
    pub(crate) fn seal_secret(
        &self,
        context: &str,
        plain: &[u8],
    ) -> Result<Vec<u8>, IdentityError> {
        self.kek.seal(context, plain)
    }

    pub(crate) fn open_secret(
        &self,
        context: &str,
        sealed: &[u8],
    ) -> Result<Vec<u8>, IdentityError> {
        self.kek.open(context, sealed)
    }

    /// Loads the keys, creating the first one if there is none.
    pub async fn load(
        db: Database,
        kek: KeyEncryptionKey,
        token_ttl: Duration,
        next_key_lead: Duration,
    ) -> Result<Self, IdentityError> {
        let keys = Self {
            db,
            kek,
            ring: RwLock::new(Arc::new(KeyRing(Vec::new()))),
            rng: SystemRandom::new(),
            token_ttl_micros: micros(token_ttl),
            next_key_lead,
        };
        keys.reload().await?;
        if keys.current_ring().0.is_empty() {
            let row = keys.generate(now_micros())?;
            store::insert_signing_key(&keys.db, &row).await?;
            keys.reload().await?;
        }
        Ok(keys)
    }

    /// Re-reads the keys (rotations made by other instances).
    pub async fn reload(&self) -> Result<(), IdentityError> {
        let rows = store::list_signing_keys(&self.db).await?;
        let mut keys = Vec::with_capacity(rows.len());
        for row in rows {
            let der = self.kek.open(&row.kid, &row.private_key_sealed)?;
            let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
                .map_err(|_| IdentityError::Keys("a stored signing key does not parse".into()))?;
            keys.push(SigningKey::new(
                row.kid,
                row.activate_time,
                row.public_x,
                row.public_y,
                Some(pair),
            ));
        }
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(KeyRing(keys));
        Ok(())
    }

    /// Adds the next key: published now, signing after the lead time. While
    /// a next key is waiting to sign, rotating again returns that key: keys
    /// are not piled up.
    pub async fn rotate(&self) -> Result<PublicKey, IdentityError> {
        let now = now_micros();
        if let Some(pending) = self.current_ring().0.iter().find(|k| k.activate_time > now) {
            return Ok(PublicKey {
                kid: pending.kid.clone(),
                x: pending.x.clone(),
                y: pending.y.clone(),
            });
        }
        let row = self.generate(now.saturating_add(micros(self.next_key_lead)))?;
        store::insert_signing_key(&self.db, &row).await?;
        self.reload().await?;
        Ok(PublicKey {
            kid: row.kid,
            x: row.public_x,
            y: row.public_y,
        })
    }

    /// Deletes keys that are no longer published (every token they signed
    /// has expired), and re-reads the rest.
    pub async fn prune(&self) -> Result<usize, IdentityError> {
        let ring = self.current_ring();
        let published: Vec<&str> = ring
            .published(now_micros(), self.token_ttl_micros)
            .map(|k| k.kid.as_str())
            .collect();
        let retired: Vec<String> = ring
            .0
            .iter()
            .filter(|k| !published.contains(&k.kid.as_str()))
            .map(|k| k.kid.clone())
            .collect();
        for kid in &retired {
            store::delete_signing_key(&self.db, kid).await?;
        }
        if !retired.is_empty() {
            self.reload().await?;
        }
        Ok(retired.len())
    }

    /// When the given key starts signing, in microseconds.
    pub fn activate_time(&self, kid: &str) -> Option<i64> {
        self.current_ring()
            .0
            .iter()
            .find(|k| k.kid == kid)
            .map(|k| k.activate_time)
    }

    /// Signs the claims with the current key.
    pub fn sign(&self, claims: &AccessTokenClaims) -> Result<String, IdentityError> {
        let ring = self.current_ring();
        let key = ring
            .signer(now_micros())
            .ok_or_else(|| IdentityError::Keys("no signing key".into()))?;
        key.sign(claims, &self.rng)
    }

    /// Signs other JWTs (ID tokens, `typ: JWT`) with the current key.
    pub fn sign_jwt(&self, claims: &serde_json::Value) -> Result<String, IdentityError> {
        let ring = self.current_ring();
        let key = ring
            .signer(now_micros())
            .ok_or_else(|| IdentityError::Keys("no signing key".into()))?;
        let pair = key.pair.as_ref().ok_or(IdentityError::Crypto)?;
        let header = serde_json::json!({ "alg": "ES256", "kid": key.kid, "typ": "JWT" });
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        let payload = serde_json::to_vec(claims).map_err(|_| IdentityError::Crypto)?;
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = pair
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| IdentityError::Crypto)?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
        Ok(token)
    }

    /// The published keys, newest first.
    pub fn published(&self) -> Vec<PublicKey> {
        let ring = self.current_ring();
        let mut keys: Vec<PublicKey> = ring
            .published(now_micros(), self.token_ttl_micros)
            .map(|k| PublicKey {
                kid: k.kid.clone(),
                x: k.x.clone(),
                y: k.y.clone(),
            })
            .collect();
        keys.reverse();
        keys
    }

    pub fn jwks_json(&self) -> serde_json::Value {
        let keys: Vec<_> = self.published().iter().map(PublicKey::to_json).collect();
        serde_json::json!({ "keys": keys })
    }

    fn current_ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn generate(&self, activate_time: i64) -> Result<SigningKeyRow, IdentityError> {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .map_err(|_| IdentityError::Crypto)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .map_err(|_| IdentityError::Crypto)?;
        // Uncompressed point: 0x04 || X (32 bytes) || Y (32 bytes).
        let point = pair.public_key().as_ref();
        let (Some(x), Some(y)) = (point.get(1..33), point.get(33..65)) else {
            return Err(IdentityError::Crypto);
        };
        let x = URL_SAFE_NO_PAD.encode(x);
        let y = URL_SAFE_NO_PAD.encode(y);
        let kid = thumbprint(&x, &y);
        let sealed = self.kek.seal(&kid, pkcs8.as_ref())?;
        Ok(SigningKeyRow {
            kid,
            private_key_sealed: sealed,
            public_x: x,
            public_y: y,
            create_time: now_micros(),
            activate_time,
        })
    }
}

/// RFC 7638 JWK thumbprint: the key id is derived from the key itself.
fn thumbprint(x: &str, y: &str) -> String {
    let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// The service's own keys as a JWKS source, for verifiers in this process.
/// A fetch re-reads the keys from the database first, so that a token signed
/// by a key another instance just created verifies here too (the verifier
/// fetches on an unknown `kid`, at most once per its minimum interval).
pub struct LocalJwks(pub Arc<Keys>);

impl JwksSource for LocalJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
        Box::pin(async move {
            if let Err(error) = self.0.reload().await {
                tracing::warn!(%error, "re-reading signing keys failed; using the ones known");
            }
            serde_json::from_value(self.0.jwks_json()).map_err(|e| JwksError(e.to_string()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kid: &str, activate_time: i64) -> SigningKey {
        SigningKey::new(
            kid.into(),
            activate_time,
            String::new(),
            String::new(),
            None,
        )
    }

    #[test]
    fn next_key_is_published_before_it_signs_and_old_key_until_its_tokens_expire() {
        let ttl = 600 * 1_000_000;
        let ring = KeyRing(vec![key("old", 0), key("next", 1_000_000_000)]);
        let kids = |now| {
            ring.published(now, ttl)
                .map(|k| k.kid.clone())
                .collect::<Vec<_>>()
        };
        // Before activation: old signs, both published.
        assert_eq!(ring.signer(500).map(|k| k.kid.as_str()), Some("old"));
        assert_eq!(kids(500), ["old", "next"]);
        // After activation: next signs, old still published for its tokens.
        assert_eq!(
            ring.signer(1_000_000_001).map(|k| k.kid.as_str()),
            Some("next")
        );
        assert_eq!(kids(1_000_000_001 + ttl), ["old", "next"]);
        // Once every token of old has expired (plus grace), old is gone.
        assert_eq!(kids(1_000_000_000 + ttl + GRACE_MICROS), ["next"]);
    }

    #[test]
    fn sealed_keys_open_only_with_their_kid_and_kek() {
        let kek =
            KeyEncryptionKey::from_base64(&KeyEncryptionKey::generate_base64().unwrap()).unwrap();
        let sealed = kek.seal("kid-1", b"private").unwrap();
        assert_eq!(kek.open("kid-1", &sealed).unwrap(), b"private");
        assert!(kek.open("kid-2", &sealed).is_err());
        let other =
            KeyEncryptionKey::from_base64(&KeyEncryptionKey::generate_base64().unwrap()).unwrap();
        assert!(other.open("kid-1", &sealed).is_err());
    }
}
