//! The identity service's configuration.

use std::time::Duration;

use atiende_platform::config::{GrpcConfig, HttpConfig, StorageConfig, millis};
use atiende_platform::telemetry::TelemetryConfig;
use secrecy::SecretString;
use serde::Deserialize;

/// Unknown sections are ignored (one environment may configure several
/// services); unknown keys inside a section are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct IdentityConfig {
    pub storage: StorageConfig,
    pub grpc: GrpcConfig,
    pub http: HttpConfig,
    pub telemetry: TelemetryConfig,
    pub tokens: TokenConfig,
    pub operators: OperatorConfig,
    pub citizens: CitizenConfig,
}

/// Citizen sign-in policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CitizenConfig {
    /// Failed sign-ins, per account and per source, that lock it.
    pub lockout_threshold: u32,
    /// How long a lockout lasts; also the window in which failures count.
    #[serde(with = "millis")]
    pub lockout_ms: Duration,
    /// The issuer shown by authenticator apps.
    pub totp_issuer: String,
    /// How email verification codes of self-registration reach citizens:
    /// `none` (registration on the login pages is unavailable), `log`
    /// (development only: the code is printed), or `notifications` (sent
    /// through the notifications service with the settings below).
    pub email_codes: EmailCodeDelivery,
    /// The notifications service's gRPC endpoint, e.g.
    /// `http://atiende-notifications:50051`.
    pub notifications_url: String,
    /// An email template of the sending agency with the placeholders
    /// `((code))` (and optionally `((language))`: `es` or `en`).
    pub email_code_template_id: String,
    /// A client of that agency holding `notifications.send`.
    pub email_code_client_id: String,
    pub email_code_client_secret: Option<SecretString>,
}

/// Where email verification codes go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailCodeDelivery {
    #[default]
    None,
    Log,
    Notifications,
}

impl Default for CitizenConfig {
    fn default() -> Self {
        Self {
            lockout_threshold: 10,
            lockout_ms: Duration::from_secs(600),
            totp_issuer: "Atiende".to_owned(),
            email_codes: EmailCodeDelivery::None,
            notifications_url: String::new(),
            email_code_template_id: String::new(),
            email_code_client_id: String::new(),
            email_code_client_secret: None,
        }
    }
}

/// Who may perform platform-wide acts (create agencies, rotate keys, read
/// other agencies).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OperatorConfig {
    /// Let sandbox clients of operator agencies act as operators. Off in
    /// production, where only live operator clients may; `atiende dev`
    /// turns it on for its sandbox development agency.
    #[serde(deserialize_with = "atiende_platform::config::lenient::deserialize")]
    pub allow_sandbox: bool,
}

/// How access tokens are issued and signed.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenConfig {
    /// The `iss` of every token; defaults to `http.public_url`.
    pub issuer: Option<String>,
    /// The `aud` of every token.
    pub audience: String,
    /// Lifetime of an access token.
    #[serde(with = "millis")]
    pub access_token_ttl_ms: Duration,
    /// 32 bytes, base64: encrypts signing keys at rest. Required on
    /// PostgreSQL; on SQLite it is generated into the data directory when
    /// unset.
    pub key_encryption_key: Option<SecretString>,
    /// How long a new signing key is published before it signs: at least one
    /// JWKS cache lifetime of every verifier.
    #[serde(with = "millis")]
    pub next_key_lead_ms: Duration,
    /// `Cache-Control: max-age` of the JWKS document.
    #[serde(with = "millis")]
    pub jwks_max_age_ms: Duration,
    /// How often an instance re-reads signing keys (rotations made by other
    /// instances). Must be well below `next_key_lead_ms`.
    #[serde(with = "millis")]
    pub key_reload_interval_ms: Duration,
    /// How long clients and their credentials read from the database are
    /// reused (by the token endpoints and the login pages); a secret rotated
    /// or a client disabled on another instance takes effect here within
    /// this time, and a client created on another instance may be unknown
    /// here for as long. Keep it short (1 s by default); 0 disables the
    /// cache.
    #[serde(with = "millis")]
    pub credential_cache_ttl_ms: Duration,
    /// How often an instance reads revocations made by other instances.
    #[serde(with = "millis")]
    pub revocation_poll_interval_ms: Duration,
}

impl Default for TokenConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            audience: "atiende".to_owned(),
            access_token_ttl_ms: Duration::from_secs(600),
            key_encryption_key: None,
            next_key_lead_ms: Duration::from_secs(15 * 60),
            jwks_max_age_ms: Duration::from_secs(300),
            key_reload_interval_ms: Duration::from_secs(30),
            revocation_poll_interval_ms: Duration::from_secs(1),
            credential_cache_ttl_ms: Duration::from_secs(1),
        }
    }
}

impl IdentityConfig {
    /// Refuses settings that would break the token and key invariants.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.tokens;
        let ttl = t.access_token_ttl_ms;
        if ttl < Duration::from_secs(60) || ttl > Duration::from_secs(24 * 3600) {
            return Err("tokens.access_token_ttl_ms must be between 1 minute and 24 hours".into());
        }
        if t.key_reload_interval_ms >= t.next_key_lead_ms {
            return Err("tokens.key_reload_interval_ms must be shorter than tokens.next_key_lead_ms, so every instance knows a key before it signs".into());
        }
        if t.next_key_lead_ms > Duration::from_secs(7 * 24 * 3600) {
            return Err("tokens.next_key_lead_ms must be at most 7 days".into());
        }
        let c = &self.citizens;
        if c.email_codes == EmailCodeDelivery::Notifications
            && (c.notifications_url.is_empty()
                || c.email_code_template_id.is_empty()
                || c.email_code_client_id.is_empty()
                || c.email_code_client_secret.is_none())
        {
            return Err(
                "citizens.email_codes = \"notifications\" needs citizens.notifications_url, \
                        email_code_template_id, email_code_client_id and email_code_client_secret"
                    .into(),
            );
        }
        if self.citizens.lockout_threshold == 0 || self.citizens.lockout_ms.is_zero() {
            return Err(
                "citizens.lockout_threshold and citizens.lockout_ms must be above zero".into(),
            );
        }
        Ok(())
    }

    pub fn issuer(&self) -> String {
        self.tokens
            .issuer
            .clone()
            .unwrap_or_else(|| self.http.public_url.trim_end_matches('/').to_owned())
    }
}
