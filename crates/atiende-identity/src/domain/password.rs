//! Citizen passwords: NIST SP 800-63B rules, argon2id hashes.
//!
//! Rules (800-63B 5.1.1.2): at least 8 characters, up to 128 accepted, any
//! characters, no composition rules, and not one of a bundled list of
//! common passwords. Hashes are argon2id at OWASP's parameters (19 MiB,
//! two passes, one lane) in PHC string form, so stronger parameters can be
//! introduced later and old hashes still verify. Hashing takes ~15 ms of
//! CPU: callers run it on tokio's blocking pool.

use std::collections::HashSet;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use secrecy::{ExposeSecret, SecretString};

use crate::domain::IdentityError;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_CHARS: usize = 128;

/// OWASP's argon2id minimum: m = 19 MiB, t = 2, p = 1.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_PASSES: u32 = 2;
pub const ARGON2_LANES: u32 = 1;

const COMMON_PASSWORDS: &str = include_str!("../../data/common-passwords.txt");

fn common_passwords() -> &'static HashSet<String> {
    static SET: OnceLock<HashSet<String>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON_PASSWORDS
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::to_lowercase)
            .collect()
    })
}

/// A password that satisfies the rules. Never printed.
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let chars = raw.chars().count();
        if chars < MIN_PASSWORD_CHARS {
            return Err(format!("must be at least {MIN_PASSWORD_CHARS} characters"));
        }
        if chars > MAX_PASSWORD_CHARS {
            return Err(format!("must be at most {MAX_PASSWORD_CHARS} characters"));
        }
        if common_passwords().contains(&raw.to_lowercase()) {
            return Err("is too common: choose another".to_owned());
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

/// An argon2id hash in PHC form (`$argon2id$v=19$m=19456,t=2,p=1$...`).
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordHash(pub String);

impl std::fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordHash(..)")
    }
}

fn hasher() -> Result<Argon2<'static>, IdentityError> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .map_err(|_| IdentityError::Crypto)?;
    Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
}

/// Hashes with a fresh 128-bit salt. Blocking: ~15 ms of CPU.
pub fn hash_password(password: &str) -> Result<PasswordHash, IdentityError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| IdentityError::Crypto)?;
    let salt = SaltString::encode_b64(&salt).map_err(|_| IdentityError::Crypto)?;
    let hash = hasher()?
        .hash_password(password.as_bytes(), &salt)
        .map_err(|_| IdentityError::Crypto)?;
    Ok(PasswordHash(hash.to_string()))
}

/// Whether `candidate` matches. The parameters come from the stored hash.
/// Blocking: as slow as hashing.
pub fn verify_password(hash: &PasswordHash, candidate: &str) -> bool {
    let Ok(parsed) = argon2::password_hash::PasswordHash::new(&hash.0) else {
        return false;
    };
    Argon2::default()
        .verify_password(candidate.as_bytes(), &parsed)
        .is_ok()
}

/// A hash of a random password, made once: verified against when the
/// account does not exist, so that an unknown account costs the same time
/// as a wrong password.
pub fn dummy_hash() -> Result<&'static PasswordHash, IdentityError> {
    static DUMMY: OnceLock<PasswordHash> = OnceLock::new();
    if let Some(hash) = DUMMY.get() {
        return Ok(hash);
    }
    let mut random = [0u8; 24];
    aws_lc_rs::rand::fill(&mut random).map_err(|_| IdentityError::Crypto)?;
    let hash = hash_password(&crate::domain::hex(&random))?;
    Ok(DUMMY.get_or_init(|| hash))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_is_counted_in_characters_without_composition_rules() {
        assert!(Password::parse("short12").is_err());
        assert!(Password::parse("correct horse battery staple").is_ok());
        assert!(Password::parse("ñandúñandú").is_ok());
        assert!(Password::parse("ñandú").is_err());
        assert!(Password::parse("alllowercaseletters").is_ok());
        assert!(Password::parse(&"x".repeat(64)).is_ok());
        assert!(Password::parse(&"pálido ".repeat(18)).is_ok());
        assert!(Password::parse(&"y".repeat(129)).is_err());
    }

    #[test]
    fn common_passwords_are_refused_whatever_their_case() {
        for common in [
            "password",
            "12345678",
            "Password",
            "iloveyou",
            "QWERTYUIOP",
            "sunshine",
        ] {
            let error = Password::parse(common).err().unwrap();
            assert!(error.contains("too common"), "{common}: {error}");
        }
        assert!(common_passwords().len() > 1500);
        assert!(!common_passwords().contains("# common passwords refused"));
    }

    #[test]
    fn hashes_are_argon2id_at_owasp_parameters_and_verify() {
        let hash = hash_password("correct horse battery staple").unwrap();
        assert!(
            hash.0.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{}",
            hash.0
        );
        assert!(verify_password(&hash, "correct horse battery staple"));
        assert!(!verify_password(&hash, "correct horse battery stapler"));
        assert!(!hash.0.contains("horse"));
        let again = hash_password("correct horse battery staple").unwrap();
        assert_ne!(hash, again, "salted");
        assert!(!verify_password(&PasswordHash("garbage".into()), "x"));
    }

    #[test]
    fn the_dummy_hash_matches_nothing_typed() {
        let dummy = dummy_hash().unwrap();
        assert!(!verify_password(dummy, "password"));
        assert!(std::ptr::eq(dummy, dummy_hash().unwrap()));
    }
}
