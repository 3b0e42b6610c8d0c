//! Test support for services other than identity (feature `testing`): a
//! fixed ES256 key that signs test tokens, and its JWKS, so that a service's
//! tests can authenticate callers without the identity service.
//!
//! The key is public — it is in this file — and trusted only by a verifier
//! built with [`verifier`]. Nothing in a deployed service is configured
//! with it.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;

use crate::auth::{
    AccessTokenClaims, BoxFuture, Environment, JwksError, JwksSource, Scope, TokenVerifier,
    VerifierSettings, unix_now,
};

pub const TEST_ISSUER: &str = "https://identity.test.invalid";
pub const TEST_AUDIENCE: &str = "atiende";
const TEST_KID: &str = "test-key-1";
const TEST_PRIVATE_KEY_PEM: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgrmvgNv2dLN/khand
YKjQAIc/EqsOl4wyQl5tQxGHpbehRANCAAQ44sybFdfN8zcUiKzcN4eMAgSeBtoC
ptzRya/c7L+qlL/HMyn2Grj4XxKoKn0PiG2MBtXkJABCxq1O3EdW+1hw
-----END PRIVATE KEY-----
";
const TEST_X: &str = "OOLMmxXXzfM3FIis3DeHjAIEngbaAqbc0cmv3Oy_qpQ";
const TEST_Y: &str = "v8czKfYauPhfEqgqfQ-IbYwG1eQkAELGrU7cR1b7WHA";

/// The JWKS document that publishes the test key.
pub fn jwks_json() -> serde_json::Value {
    serde_json::json!({ "keys": [{
        "kty": "EC", "crv": "P-256", "x": TEST_X, "y": TEST_Y,
        "kid": TEST_KID, "alg": "ES256", "use": "sig",
    }]})
}

/// The JWKS that publishes the test key.
pub struct TestJwks;

impl JwksSource for TestJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
        Box::pin(async {
            serde_json::from_value(jwks_json()).map_err(|e| JwksError(e.to_string()))
        })
    }
}

/// A verifier that trusts the test key only.
pub fn verifier() -> Arc<TokenVerifier> {
    Arc::new(TokenVerifier::new(
        VerifierSettings {
            issuer: TEST_ISSUER.to_owned(),
            audience: TEST_AUDIENCE.to_owned(),
            max_age: Duration::from_secs(3600),
            min_refresh_interval: Duration::ZERO,
        },
        TestJwks,
    ))
}

/// A token of `agency_id` with the given scopes, valid for ten minutes.
pub fn token(agency_id: &str, scopes: &[Scope], environment: Environment) -> String {
    let now = unix_now();
    let claims = AccessTokenClaims {
        iss: TEST_ISSUER.to_owned(),
        aud: TEST_AUDIENCE.to_owned(),
        sub: format!("cli_{:032x}", rand::random::<u128>()),
        agency: agency_id.to_owned(),
        scope: scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" "),
        env: environment.as_str().to_owned(),
        iat: now,
        nbf: now,
        exp: now + 600,
        jti: format!("{:032x}", rand::random::<u128>()),
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(TEST_KID.to_owned());
    match jsonwebtoken::EncodingKey::from_ec_pem(TEST_PRIVATE_KEY_PEM.as_bytes())
        .and_then(|key| jsonwebtoken::encode(&header, &claims, &key))
    {
        Ok(token) => token,
        Err(error) => format!("unsignable-test-token: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn test_tokens_verify_with_the_test_verifier_only() {
        let token = token("agy_1", &[Scope::NotificationsSend], Environment::Sandbox);
        let caller = verifier().verify(&token).await.unwrap();
        assert_eq!(caller.agency_id, "agy_1");
        assert!(caller.scopes.contains(Scope::NotificationsSend));
    }

    /// Serves the keys once, then never answers (a black-holed JWKS).
    struct OnceThenHang(std::sync::atomic::AtomicBool, serde_json::Value);

    impl JwksSource for OnceThenHang {
        fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
            let first = !self.0.swap(true, std::sync::atomic::Ordering::SeqCst);
            let json = self.1.clone();
            Box::pin(async move {
                if !first {
                    std::future::pending::<()>().await;
                }
                serde_json::from_value(json).map_err(|e| JwksError(e.to_string()))
            })
        }
    }

    fn settings(max_age: Duration) -> VerifierSettings {
        VerifierSettings {
            issuer: TEST_ISSUER.to_owned(),
            audience: TEST_AUDIENCE.to_owned(),
            max_age,
            min_refresh_interval: Duration::ZERO,
        }
    }

    #[tokio::test]
    async fn known_keys_keep_verifying_while_the_jwks_hangs() {
        let source = OnceThenHang(Default::default(), jwks_json());
        let verifier = TokenVerifier::new(settings(Duration::from_millis(1)), source);
        let first = token("agy_1", &[Scope::PaymentsRead], Environment::Live);
        verifier.verify(&first).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The keys are stale and the source hangs: a new token with the
        // known kid still verifies, without waiting for the fetch.
        let second = token("agy_1", &[Scope::PaymentsRead], Environment::Live);
        let verified = tokio::time::timeout(Duration::from_secs(2), verifier.verify(&second)).await;
        assert!(matches!(verified, Ok(Ok(_))), "{verified:?}");
    }

    #[tokio::test]
    async fn a_jwk_that_names_another_algorithm_does_not_verify() {
        let mut json = jwks_json();
        json["keys"][0]["alg"] = "ES384".into();
        let source = OnceThenHang(Default::default(), json);
        let verifier = TokenVerifier::new(settings(Duration::from_secs(60)), source);
        let token = token("agy_1", &[Scope::PaymentsRead], Environment::Live);
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            crate::auth::AuthError::Algorithm
        );
    }

    /// Answers after ten (virtual) seconds.
    struct Slow;

    impl JwksSource for Slow {
        fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
            Box::pin(async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                serde_json::from_value(jwks_json()).map_err(|e| JwksError(e.to_string()))
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_giving_up_does_not_abort_the_fetch() {
        let verifier = TokenVerifier::new(settings(Duration::from_secs(60)), Slow);
        let token = token("agy_1", &[Scope::PaymentsRead], Environment::Live);
        // The first caller waits 5 s, gives up; the fetch goes on.
        assert_eq!(
            verifier.verify(&token).await.unwrap_err(),
            crate::auth::AuthError::KeysUnavailable
        );
        tokio::time::sleep(Duration::from_secs(6)).await;
        // Fetched meanwhile: the token verifies.
        verifier.verify(&token).await.unwrap();
    }
}
