//! Second factors: TOTP (RFC 6238: HMAC-SHA-1, 6 digits, 30-second steps,
//! one step of drift either way) and single-use recovery codes.

use aws_lc_rs::{digest, hmac};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use subtle::ConstantTimeEq;

use crate::domain::{IdentityError, hex};

pub const TOTP_DIGITS: u32 = 6;
pub const TOTP_STEP_SECONDS: i64 = 30;
/// Steps accepted either side of the current one (clock drift).
pub const TOTP_DRIFT_STEPS: i64 = 1;
/// RFC 4226 asks for at least 128 bits; 160 is what most authenticators
/// expect.
pub const TOTP_SECRET_BYTES: usize = 20;
pub const RECOVERY_CODES: usize = 10;

/// A TOTP shared secret. Never printed.
pub struct TotpSecret(SecretBox<Vec<u8>>);

impl TotpSecret {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut bytes = vec![0u8; TOTP_SECRET_BYTES];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IdentityError::Crypto)?;
        Ok(Self(SecretBox::new(Box::new(bytes))))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }

    /// From base32 as an authenticator app takes it (case, spaces and
    /// padding ignored); `None` when it is not base32.
    pub fn from_base32(text: &str) -> Option<Self> {
        let mut bytes = Vec::with_capacity(text.len() * 5 / 8);
        let (mut buffer, mut bits) = (0u32, 0u32);
        for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
            let value = match c.to_ascii_uppercase() {
                u @ 'A'..='Z' => u32::from(u) - u32::from('A'),
                d @ '2'..='7' => u32::from(d) - u32::from('2') + 26,
                _ => return None,
            };
            buffer = (buffer << 5) | value;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                bytes.push(u8::try_from((buffer >> bits) & 0xff).ok()?);
            }
        }
        Some(Self::from_bytes(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        self.0.expose_secret()
    }

    /// The secret in base32 (RFC 4648, no padding), as authenticators take it.
    pub fn base32(&self) -> SecretString {
        SecretString::from(base32(self.expose()))
    }

    /// The `otpauth://totp/...` URI for a QR code or a manual entry.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> SecretString {
        let issuer = percent_encode(issuer);
        let label = format!("{issuer}:{}", percent_encode(account));
        SecretString::from(format!(
            "otpauth://totp/{label}?secret={}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}",
            base32(self.expose())
        ))
    }

    /// The step of `code` if it is valid at `unix_seconds` (± drift) and
    /// later than `last_used_step`: a code is accepted once.
    pub fn verify(&self, code: &str, unix_seconds: i64, last_used_step: i64) -> Option<i64> {
        let code = code.trim();
        if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let now_step = unix_seconds.div_euclid(TOTP_STEP_SECONDS);
        let mut found = None;
        // Every candidate is computed and compared, so the time taken does
        // not say which step matched.
        for step in (now_step - TOTP_DRIFT_STEPS)..=(now_step + TOTP_DRIFT_STEPS) {
            let Ok(counter) = u64::try_from(step) else {
                continue;
            };
            let expected = format!("{:06}", hotp(self.expose(), counter, TOTP_DIGITS));
            let matches: bool = expected.as_bytes().ct_eq(code.as_bytes()).into();
            if matches && step > last_used_step && found.is_none() {
                found = Some(step);
            }
        }
        found
    }
}

/// RFC 4226 HOTP with HMAC-SHA-1 and dynamic truncation.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    binary % 10u32.pow(digits)
}

fn base32_char(index: u32) -> char {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    usize::try_from(index)
        .ok()
        .and_then(|i| ALPHABET.get(i))
        .map_or('A', |b| char::from(*b))
}

fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(base32_char((buffer >> bits) & 31));
        }
    }
    if bits > 0 {
        out.push(base32_char((buffer << (5 - bits)) & 31));
    }
    out
}

fn percent_encode(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A recovery code as shown to the citizen once: 16 characters of an
/// alphabet without look-alikes, in groups of four (80 random bits, so a
/// fast hash is enough at rest).
pub struct RecoveryCode(SecretString);

const RECOVERY_ALPHABET: &[u8; 32] = b"abcdefghjkmnpqrstuvwxyz234567890";

impl RecoveryCode {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut random = [0u8; 16];
        aws_lc_rs::rand::fill(&mut random).map_err(|_| IdentityError::Crypto)?;
        let mut code = String::with_capacity(19);
        for (i, b) in random.iter().enumerate() {
            if i > 0 && i % 4 == 0 {
                code.push('-');
            }
            code.push(char::from(RECOVERY_ALPHABET[usize::from(b & 31)]));
        }
        Ok(Self(SecretString::from(code)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> String {
        recovery_code_hash(self.expose())
    }
}

/// SHA-256 of a typed recovery code with case, spaces and dashes ignored.
pub fn recovery_code_hash(typed: &str) -> String {
    let normalised: String = typed
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect();
    hex(digest::digest(&digest::SHA256, normalised.as_bytes()).as_ref())
}

/// Whether typed text looks like a recovery code rather than a TOTP code.
pub fn looks_like_recovery_code(typed: &str) -> bool {
    typed.chars().filter(|c| c.is_ascii_alphanumeric()).count() == 16
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc_6238_sha1_test_vectors() {
        // RFC 6238 appendix B (SHA-1, 8 digits, 30 s steps).
        let vectors: [(u64, u32); 6] = [
            (59, 94_287_082),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ];
        for (time, expected) in vectors {
            assert_eq!(hotp(RFC_SECRET, time / 30, 8), expected, "T={time}");
            assert_eq!(hotp(RFC_SECRET, time / 30, 6), expected % 1_000_000);
        }
    }

    #[test]
    fn codes_verify_within_one_step_of_drift_and_only_once() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        let at = 1_111_111_111;
        assert_eq!(secret.verify("050471", at, 0), Some(at / 30));
        assert_eq!(secret.verify(" 050471 ", at, 0), Some(at / 30));
        // 30 s later it is the previous step: still fine; 60 s later not.
        assert_eq!(secret.verify("050471", at + 30, 0), Some(at / 30));
        assert_eq!(secret.verify("050471", at + 60, 0), None);
        assert_eq!(secret.verify("050471", at - 30, 0), Some(at / 30));
        // Replay of a used step.
        assert_eq!(secret.verify("050471", at, at / 30), None);
        assert_eq!(secret.verify("050472", at, 0), None);
        assert_eq!(secret.verify("50471", at, 0), None);
        assert_eq!(secret.verify("05047a", at, 0), None);
    }

    #[test]
    fn otpauth_uri_carries_the_base32_secret_and_parameters() {
        let secret = TotpSecret::from_bytes(RFC_SECRET.to_vec());
        assert_eq!(
            secret.base32().expose_secret(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
        let uri = secret.otpauth_uri("Atiende", "ctz_01 ab");
        assert_eq!(
            uri.expose_secret(),
            "otpauth://totp/Atiende:ctz_01%20ab?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Atiende&algorithm=SHA1&digits=6&period=30"
        );
        assert_eq!(base32(b"f"), "MY");
        let back = TotpSecret::from_base32("gezd gnbv gy3t qojq gezdgnbvgy3tqojq").unwrap();
        assert_eq!(back.expose(), RFC_SECRET);
        assert!(TotpSecret::from_base32("GEZ1").is_none());
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }

    #[test]
    fn recovery_codes_are_random_and_hash_forgivingly() {
        let a = RecoveryCode::generate().unwrap();
        let b = RecoveryCode::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert_eq!(a.expose().len(), 19);
        assert!(looks_like_recovery_code(a.expose()));
        assert!(!looks_like_recovery_code("123456"));
        let typed = a.expose().to_uppercase().replace('-', " ");
        assert_eq!(recovery_code_hash(&typed), a.hash());
        assert_ne!(a.hash(), b.hash());
        assert!(!a.hash().contains(&a.expose()[..4]));
    }
}
