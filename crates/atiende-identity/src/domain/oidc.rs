//! OpenID Connect pieces that need no I/O: PKCE (RFC 7636, S256 only),
//! redirect URI rules, random one-time secrets, and pairwise subject
//! identifiers (OIDC Core 8.1).

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use crate::domain::{IdentityError, hex};

/// Whether `verifier` is a valid PKCE code verifier (43 to 128 unreserved
/// characters) whose S256 challenge is `challenge`.
pub fn pkce_s256_matches(verifier: &str, challenge: &str) -> bool {
    let valid = (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if !valid {
        return false;
    }
    let computed = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, verifier.as_bytes()));
    computed.as_bytes().ct_eq(challenge.as_bytes()).into()
}

/// Whether `challenge` has the shape of an S256 challenge (43 base64url
/// characters).
pub fn is_s256_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// A redirect URI a client may register: absolute `https`, or `http` on a
/// loopback host (native and development apps), without a fragment.
pub fn parse_redirect_uri(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|_| "must be an absolute URL".to_owned())?;
    if url.fragment().is_some() {
        return Err("must not have a fragment".to_owned());
    }
    let loopback = matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"));
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err("must use https (or http on localhost)".to_owned()),
    }
    Ok(raw.to_owned())
}

/// 256 random bits, base64url: authorization codes, access tokens, CSRF
/// tokens, request ids.
pub fn random_token() -> Result<String, IdentityError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IdentityError::Crypto)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of a one-time secret, hex: what is stored of it.
pub fn token_hash(token: &str) -> String {
    hex(digest::digest(&digest::SHA256, token.as_bytes()).as_ref())
}

/// The citizen's subject identifier for one agency: SHA-256 over the
/// deployment's secret salt, the agency (the sector) and the citizen.
/// Stable for an agency, unrelated across agencies.
pub fn pairwise_subject(salt: &str, agency_id: &str, citizen_id: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [salt, agency_id, citizen_id] {
        ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    URL_SAFE_NO_PAD.encode(ctx.finish())
}

/// The most keys a client may register for `private_key_jwt`.
pub const MAX_CLIENT_KEYS: usize = 10;
const MAX_CLIENT_JWKS_BYTES: usize = 16 * 1024;

/// Checks a client's JSON Web Key Set for `private_key_jwt`: public
/// asymmetric keys only (EC, RSA of 2048 bits or more, OKP), at most
/// [`MAX_CLIENT_KEYS`]. Returns the set as compact JSON and its size.
pub fn parse_client_jwks(raw: &str) -> Result<(String, usize), String> {
    if raw.len() > MAX_CLIENT_JWKS_BYTES {
        return Err(format!("must be at most {MAX_CLIENT_JWKS_BYTES} bytes"));
    }
    let value: serde_json::Value =
        serde_json::from_str(raw).map_err(|_| "must be a JSON Web Key Set".to_owned())?;
    let keys = value
        .get("keys")
        .and_then(serde_json::Value::as_array)
        .ok_or_else(|| "must be a JSON object with a \"keys\" array".to_owned())?;
    if keys.len() > MAX_CLIENT_KEYS {
        return Err(format!("must hold at most {MAX_CLIENT_KEYS} keys"));
    }
    for (i, key) in keys.iter().enumerate() {
        let object = key
            .as_object()
            .ok_or_else(|| format!("key {i} must be a JSON object"))?;
        if ["d", "p", "q", "dp", "dq", "qi", "k"]
            .iter()
            .any(|private| object.contains_key(*private))
        {
            return Err(format!("key {i} must be a public key (no private members)"));
        }
        match object.get("kty").and_then(serde_json::Value::as_str) {
            Some("EC" | "OKP") => {}
            Some("RSA") => {
                let n = object
                    .get("n")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("");
                // 2048 bits are 256 bytes: 342 base64url characters.
                if n.len() < 342 {
                    return Err(format!("key {i}: RSA keys must have at least 2048 bits"));
                }
            }
            _ => return Err(format!("key {i} must be an EC, RSA or OKP public key")),
        }
    }
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(value.clone())
        .map_err(|_| "must be a JSON Web Key Set".to_owned())?;
    for (i, jwk) in set.keys.iter().enumerate() {
        jsonwebtoken::DecodingKey::from_jwk(jwk).map_err(|_| format!("key {i} is not usable"))?;
    }
    Ok((value.to_string(), keys.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_7636_appendix_b_vector() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        assert!(is_s256_challenge(challenge));
        assert!(pkce_s256_matches(verifier, challenge));
        assert!(!pkce_s256_matches(&verifier.replace('d', "e"), challenge));
        // "plain" (the verifier as the challenge) never matches.
        assert!(!pkce_s256_matches(verifier, verifier));
        assert!(!pkce_s256_matches("short", challenge));
    }

    #[test]
    fn redirect_uris_are_https_or_loopback_without_fragments() {
        assert!(parse_redirect_uri("https://tramites.muni.cl/callback").is_ok());
        assert!(parse_redirect_uri("http://127.0.0.1:3000/cb").is_ok());
        assert!(parse_redirect_uri("http://localhost/cb").is_ok());
        assert!(parse_redirect_uri("http://tramites.muni.cl/cb").is_err());
        assert!(parse_redirect_uri("https://tramites.muni.cl/cb#x").is_err());
        assert!(parse_redirect_uri("/cb").is_err());
    }

    #[test]
    fn pairwise_subjects_differ_per_agency_and_are_stable() {
        let a = pairwise_subject("salt", "agy_1", "ctz_1");
        assert_eq!(a, pairwise_subject("salt", "agy_1", "ctz_1"));
        assert_ne!(a, pairwise_subject("salt", "agy_2", "ctz_1"));
        assert_ne!(a, pairwise_subject("other", "agy_1", "ctz_1"));
        assert_ne!(
            pairwise_subject("s", "agy_1", "ctz_1"),
            pairwise_subject("s", "agy_1c", "tz_1")
        );
        assert!(!a.contains("ctz"));
        assert_ne!(random_token().unwrap(), random_token().unwrap());
    }
}
