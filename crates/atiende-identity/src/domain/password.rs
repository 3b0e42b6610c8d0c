//! Citizen passwords: NIST SP 800-63B rules, argon2id hashes.
//!
//! Rules (800-63B 5.1.1.2): at least 8 characters, up to 128 accepted, any
//! characters, no composition rules, and not one of a bundled list of
//! common passwords. Hashes are argon2id at OWASP's parameters (19 MiB,
//! two passes, one lane) in PHC string form, so stronger parameters can be
//! introduced later and old hashes still verify. Hashing takes ~15 ms of
//! CPU: callers run it on tokio's blocking pool.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD;
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

fn params() -> Result<Params, IdentityError> {
    Params::new(ARGON2_MEMORY_KIB, ARGON2_PASSES, ARGON2_LANES, None)
        .map_err(|_| IdentityError::Crypto)
}

/// argon2's working memory (1 KiB blocks), kept between hashes: allocating
/// and faulting in 19 MiB for every hash costs a good part of the hash
/// itself. At most one buffer per core is kept.
fn with_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    static POOL: Mutex<Vec<Vec<Block>>> = Mutex::new(Vec::new());
    let taken = POOL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .pop()
        .filter(|memory| memory.len() == blocks);
    let mut memory = taken.unwrap_or_else(|| vec![Block::default(); blocks]);
    let out = work(&mut memory);
    let keep = std::thread::available_parallelism().map_or(2, usize::from);
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < keep {
        pool.push(memory);
    }
    out
}

/// The raw argon2 output for a password, salt and parameters.
fn argon2_output(
    algorithm: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
) -> Result<(), IdentityError> {
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    with_memory(blocks, |memory| {
        argon2.hash_password_into_with_memory(password, salt, out, memory)
    })
    .map_err(|_| IdentityError::Crypto)
}

/// Hashes with a fresh 128-bit salt. Blocking: ~15 ms of CPU.
pub fn hash_password(password: &str) -> Result<PasswordHash, IdentityError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| IdentityError::Crypto)?;
    let mut out = [0u8; 32];
    argon2_output(
        Algorithm::Argon2id,
        Version::V0x13,
        params()?,
        password.as_bytes(),
        &salt,
        &mut out,
    )?;
    // PHC string format: standard base64 alphabet without padding.
    Ok(PasswordHash(format!(
        "$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_PASSES},p={ARGON2_LANES}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    )))
}

/// Whether `candidate` matches. The algorithm, version and parameters
/// come from the stored hash. Blocking: as slow as hashing.
pub fn verify_password(hash: &PasswordHash, candidate: &str) -> bool {
    let Ok(parsed) = argon2::password_hash::PasswordHash::new(&hash.0) else {
        return false;
    };
    let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
        Algorithm::try_from(parsed.algorithm),
        Params::try_from(&parsed),
        parsed.salt,
        parsed.hash,
    ) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from) {
        None => Version::V0x13,
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    let mut out = vec![0u8; expected.len()];
    if argon2_output(
        algorithm,
        version,
        params,
        candidate.as_bytes(),
        salt,
        &mut out,
    )
    .is_err()
    {
        return false;
    }
    // Output compares in constant time.
    argon2::password_hash::Output::new(&out).is_ok_and(|computed| computed == expected)
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
    fn hashes_agree_with_the_argon2_crates_own_hasher_both_ways() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
        let ours = hash_password("un largo paseo junto al mar").unwrap();
        let parsed = argon2::password_hash::PasswordHash::new(&ours.0).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"un largo paseo junto al mar", &parsed)
                .is_ok()
        );
        let theirs = Argon2::new(Algorithm::Argon2id, Version::V0x13, params().unwrap())
            .hash_password(
                b"un largo paseo junto al mar",
                &SaltString::encode_b64(b"0123456789abcdef").unwrap(),
            )
            .unwrap()
            .to_string();
        assert!(verify_password(
            &PasswordHash(theirs.clone()),
            "un largo paseo junto al mar"
        ));
        assert!(!verify_password(
            &PasswordHash(theirs),
            "un largo paseo junto al ma"
        ));
    }

    #[test]
    fn the_dummy_hash_matches_nothing_typed() {
        let dummy = dummy_hash().unwrap();
        assert!(!verify_password(dummy, "password"));
        assert!(std::ptr::eq(dummy, dummy_hash().unwrap()));
    }
}
