//! The notifications service's configuration.

use std::path::PathBuf;
use std::time::Duration;

use atiende_platform::config::{
    AuthConfig, GrpcConfig, HttpConfig, StorageConfig, lenient, millis,
};
use atiende_platform::telemetry::TelemetryConfig;
use secrecy::SecretString;
use serde::Deserialize;

/// Unknown sections are ignored (one environment may configure several
/// services); unknown keys inside a section are errors.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct NotificationsConfig {
    pub storage: StorageConfig,
    pub grpc: GrpcConfig,
    /// Serves SMS providers' delivery receipts.
    pub http: HttpConfig,
    pub telemetry: TelemetryConfig,
    /// Where access tokens are verified: set one of `jwks_grpc_endpoint`
    /// (the identity service), `jwks_url` or `jwks_file`.
    pub auth: AuthConfig,
    pub email: EmailConfig,
    pub sms: SmsConfig,
    pub delivery: DeliveryConfig,
    pub limits: LimitsConfig,
}

/// The most a request may carry: a 50,000-row batch needs more than the
/// platform's default.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            storage: StorageConfig::default(),
            grpc: GrpcConfig {
                max_message_bytes: MAX_MESSAGE_BYTES,
                ..GrpcConfig::default()
            },
            http: HttpConfig::default(),
            telemetry: TelemetryConfig::default(),
            auth: AuthConfig::default(),
            email: EmailConfig::default(),
            sms: SmsConfig::default(),
            delivery: DeliveryConfig::default(),
            limits: LimitsConfig::default(),
        }
    }
}

/// How live email leaves: through an SMTP server, or into files.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// `smtp://host:25` (plain, or STARTTLS when offered), `smtp://host:587?tls=required`
    /// (STARTTLS required), `smtps://host:465` (TLS); credentials as
    /// `smtps://user:password@host`. Unset: email is written to `outbox_dir`.
    pub smtp_url: Option<SecretString>,
    /// When `smtp_url` is unset: one `.eml` file per email here. Defaults
    /// to `<data_dir>/outbox`.
    pub outbox_dir: Option<PathBuf>,
    /// The From address of every email.
    pub from_address: String,
    /// The From display name.
    pub from_name: String,
    /// Most open SMTP connections (lettre's pool). Each carries about 20
    /// messages a second at most: lettre writes the end of a message
    /// separately and does not set TCP_NODELAY, so every message waits for
    /// the server's delayed ACK (~40 ms on Linux).
    #[serde(deserialize_with = "lenient::deserialize")]
    pub max_connections: u32,
    /// One SMTP conversation's timeout.
    #[serde(with = "millis")]
    pub timeout_ms: Duration,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_url: None,
            outbox_dir: None,
            from_address: "notificaciones@atiende.localhost".to_owned(),
            from_name: "Atiende".to_owned(),
            max_connections: 64,
            timeout_ms: Duration::from_secs(30),
        }
    }
}

/// SMS providers, tried in order: when one errors, the next is used.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmsConfig {
    /// The sender id used when a request gives none.
    pub default_sender_id: String,
    /// The sender ids each agency may choose, by agency id
    /// (`[sms.sender_ids] agy_… = ["MUNI", "+56…"]`). A request naming any
    /// other is refused.
    pub sender_ids: std::collections::HashMap<String, Vec<String>>,
    pub providers: Vec<SmsProviderConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SmsProviderConfig {
    /// Twilio's Programmable Messaging API (or anything that speaks it).
    Twilio {
        /// A name for logs and receipts' URL; unique among providers.
        name: String,
        account_sid: String,
        auth_token: SecretString,
        /// Defaults to `https://api.twilio.com`.
        #[serde(default)]
        api_base_url: Option<String>,
        /// Used when the message has no sender id.
        from: String,
    },
    /// Writes each SMS to the log (at info, without its text): for
    /// development machines only.
    Log { name: String },
}

/// The queue, retries and retention.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Run the delivery workers (and callbacks, retention) in this instance.
    /// Off makes an API-only instance that accepts and stores sends while
    /// other instances deliver them.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub enabled: bool,
    /// Concurrent deliveries per instance.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub concurrency: usize,
    /// How often the queue is polled for work committed by other instances
    /// and for scheduled notifications (work committed here wakes the
    /// workers at once).
    #[serde(with = "millis")]
    pub poll_interval_ms: Duration,
    /// How long a claimed notification is reserved for its claimant; if the
    /// instance dies, another takes it over after this.
    #[serde(with = "millis")]
    pub lease_ms: Duration,
    /// First retry delay after a temporary failure; doubled each time, with
    /// jitter, up to `retry_max_delay_ms`.
    #[serde(with = "millis")]
    pub retry_base_delay_ms: Duration,
    #[serde(with = "millis")]
    pub retry_max_delay_ms: Duration,
    /// How long temporary failures are retried before the notification ends
    /// in temporary-failure (or technical-failure).
    #[serde(with = "millis")]
    pub retry_window_ms: Duration,
    /// Delivery callback attempts before giving up (30, with the default
    /// backoff, is about 24 hours).
    #[serde(deserialize_with = "lenient::deserialize")]
    pub callback_attempts: u32,
    #[serde(with = "millis")]
    pub callback_timeout_ms: Duration,
    /// Write sandbox emails that the simulator delivers to the outbox
    /// directory too, so developers can read them (`atiende dev`). They
    /// never go to the SMTP server.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub sandbox_outbox: bool,
    /// Allow `http://` callback URLs (development only).
    #[serde(deserialize_with = "lenient::deserialize")]
    pub allow_insecure_callbacks: bool,
    /// Recipient and content are erased this long after a notification ends.
    #[serde(with = "millis")]
    pub retention_ms: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            concurrency: 128,
            poll_interval_ms: Duration::from_millis(250),
            lease_ms: Duration::from_secs(5 * 60),
            retry_base_delay_ms: Duration::from_secs(10),
            retry_max_delay_ms: Duration::from_secs(3600),
            retry_window_ms: Duration::from_secs(72 * 3600),
            callback_attempts: 30,
            callback_timeout_ms: Duration::from_secs(10),
            sandbox_outbox: false,
            allow_insecure_callbacks: false,
            retention_ms: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Per-agency limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sends per minute per agency (a token bucket per instance, refilled
    /// continuously). 0 disables it.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub sends_per_minute: u32,
    /// Emails per agency, environment and UTC day. 0 disables it.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub daily_emails: u32,
    /// SMS per agency, environment and UTC day. 0 disables it.
    #[serde(deserialize_with = "lenient::deserialize")]
    pub daily_sms: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            sends_per_minute: 3000,
            daily_emails: 250_000,
            daily_sms: 50_000,
        }
    }
}
