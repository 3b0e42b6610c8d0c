//! The identity service's domain: agencies, their clients, client secrets,
//! citizens and their credentials, the audit trail, and what can go wrong.
//! Plain Rust: no gRPC, no SQL.
//!
//! - [`national_id`]: national ids (Chile's RUN) with their scheme.
//! - [`password`]: NIST 800-63B password rules, argon2id hashes.
//! - [`totp`]: TOTP second factors and recovery codes.
//! - [`citizen`]: citizens, contact details, levels of assurance.
//! - [`audit`]: the hash-chained audit log and its verifier.
//! - [`oidc`]: PKCE, redirect URIs, pairwise subjects.

pub mod audit;
pub mod citizen;
pub mod national_id;
pub mod oidc;
pub mod password;
pub mod totp;

use atiende_platform::auth::{Environment, Scope, ScopeSet};
use atiende_platform::error::ApiError;
use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

pub const AGENCY_ID_PREFIX: &str = "agy";
pub const CLIENT_ID_PREFIX: &str = "cli";
const MAX_DISPLAY_NAME_CHARS: usize = 200;

/// A human-readable name: 1 to 200 characters, no control characters, no
/// surrounding white space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("must not be empty".to_owned());
        }
        if trimmed.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(format!(
                "must be at most {MAX_DISPLAY_NAME_CHARS} characters"
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tenant of the platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agency {
    pub agency_id: String,
    pub display_name: DisplayName,
    /// Operators run the platform: they create agencies and rotate keys.
    pub operator: bool,
    pub create_time: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientState {
    Active,
    Disabled,
}

impl ClientState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// An OAuth client of an agency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    pub client_id: String,
    pub agency_id: String,
    pub display_name: DisplayName,
    pub scopes: ScopeSet,
    pub environment: Environment,
    pub state: ClientState,
    pub create_time: i64,
    pub secret_rotate_time: i64,
}

/// A client secret as handed to its owner, once: `ats_` and 256 random bits
/// in base64url. The prefix lets secret scanners recognise a leaked one.
pub struct ClientSecret(SecretString);

const SECRET_PREFIX: &str = "ats_";

impl ClientSecret {
    pub fn generate() -> Result<Self, IdentityError> {
        let mut bytes = [0u8; 32];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IdentityError::Crypto)?;
        Ok(Self(SecretString::from(format!(
            "{SECRET_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes)
        ))))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    pub fn hash(&self) -> SecretHash {
        SecretHash::of(self.expose())
    }
}

/// What is stored of a secret: its SHA-256, hex. A 256-bit random secret
/// cannot be guessed, so a slow password hash would only cost time on every
/// token request without adding safety.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretHash(pub String);

impl SecretHash {
    pub fn of(secret: &str) -> Self {
        let digest = digest::digest(&digest::SHA256, secret.as_bytes());
        Self(hex(digest.as_ref()))
    }

    /// Constant-time comparison with a presented secret.
    pub fn matches(&self, presented: &str) -> bool {
        let candidate = Self::of(presented);
        candidate.0.as_bytes().ct_eq(self.0.as_bytes()).into()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// What can go wrong in the identity service.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Unknown client, wrong secret or disabled client: one answer for all,
    /// so that credentials cannot be probed.
    #[error("invalid client credentials")]
    InvalidClientCredentials,
    #[error("the client may not request the scope {}", .0.as_str())]
    ScopeNotGranted(Scope),
    #[error("only operator agencies may do this")]
    NotOperator,
    #[error("sandbox clients can only manage sandbox clients")]
    SandboxCannotManageLive,
    #[error("agency not found")]
    AgencyNotFound,
    #[error("client not found")]
    ClientNotFound,
    #[error("the client is disabled")]
    ClientDisabled,
    #[error("citizen not found")]
    CitizenNotFound,
    #[error("a citizen with this national id is already registered")]
    CitizenAlreadyExists,
    #[error("only the agency that registered the citizen may do this")]
    NotRegisteringAgency,
    #[error("substantial and high levels of assurance need an enrolled second factor")]
    SecondFactorNeeded,
    #[error("a second factor is already enrolled")]
    SecondFactorAlreadyEnrolled,
    #[error("no second factor enrolment is pending")]
    NoPendingEnrolment,
    #[error("the code is not valid")]
    WrongCode,
    #[error("the redirect URI must be https (or http on localhost) without a fragment")]
    InvalidRedirectUri,
    #[error("delivery: {0}")]
    Delivery(String),
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
    #[error("a cryptographic operation failed")]
    Crypto,
    #[error("signing keys: {0}")]
    Keys(String),
}

impl From<IdentityError> for ApiError {
    fn from(error: IdentityError) -> Self {
        match error {
            IdentityError::InvalidClientCredentials => {
                ApiError::Unauthenticated("invalid client credentials")
            }
            IdentityError::ScopeNotGranted(_)
            | IdentityError::NotOperator
            | IdentityError::SandboxCannotManageLive => {
                ApiError::PermissionDenied(error.to_string())
            }
            IdentityError::AgencyNotFound => ApiError::NotFound("agency"),
            IdentityError::ClientNotFound => ApiError::NotFound("client"),
            IdentityError::ClientDisabled
            | IdentityError::SecondFactorNeeded
            | IdentityError::SecondFactorAlreadyEnrolled
            | IdentityError::NoPendingEnrolment => ApiError::FailedPrecondition(error.to_string()),
            IdentityError::CitizenNotFound => ApiError::NotFound("citizen"),
            IdentityError::CitizenAlreadyExists => ApiError::AlreadyExists("citizen"),
            IdentityError::NotRegisteringAgency => ApiError::PermissionDenied(error.to_string()),
            IdentityError::WrongCode => ApiError::invalid("code", "is not valid"),
            IdentityError::InvalidRedirectUri => {
                ApiError::invalid("redirect_uri", error.to_string())
            }
            IdentityError::Storage(e) => ApiError::from(e),
            IdentityError::Crypto | IdentityError::Keys(_) | IdentityError::Delivery(_) => {
                ApiError::internal(error)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_are_trimmed_and_bounded() {
        assert_eq!(
            DisplayName::parse("  Municipalidad  ").unwrap().as_str(),
            "Municipalidad"
        );
        assert!(DisplayName::parse("   ").is_err());
        assert!(DisplayName::parse(&"a".repeat(201)).is_err());
        assert!(DisplayName::parse("bad\u{0}name").is_err());
        assert!(DisplayName::parse(&"ñ".repeat(200)).is_ok());
    }

    #[test]
    fn secrets_are_long_random_and_only_match_themselves() {
        let a = ClientSecret::generate().unwrap();
        let b = ClientSecret::generate().unwrap();
        assert!(a.expose().starts_with("ats_"));
        assert_eq!(a.expose().len(), 4 + 43);
        assert_ne!(a.expose(), b.expose());
        assert!(a.hash().matches(a.expose()));
        assert!(!a.hash().matches(b.expose()));
        assert!(!a.hash().0.contains(a.expose()));
    }
}
