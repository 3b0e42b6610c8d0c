//! The payments service's configuration.

use std::collections::BTreeMap;
use std::time::Duration;

use atiende_platform::config::{AuthConfig, GrpcConfig, HttpConfig, StorageConfig, millis};
use atiende_platform::telemetry::TelemetryConfig;
use serde::Deserialize;

/// Unknown sections are ignored (one environment may configure several
/// services); unknown keys inside a section are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PaymentsConfig {
    pub storage: StorageConfig,
    pub grpc: GrpcConfig,
    /// `public_url` is where payers reach the hosted payment page: the
    /// base of every `next_url`.
    pub http: HttpConfig,
    pub telemetry: TelemetryConfig,
    /// Where access tokens are verified: set one of `jwks_grpc_endpoint`
    /// (the identity service), `jwks_url` or `jwks_file`.
    pub auth: AuthConfig,
    pub payments: PaymentSettings,
}

/// Fees, limits and background work.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaymentSettings {
    /// The terms of every agency without its own entry in `agencies`
    /// (`[payments.terms]`).
    pub terms: TermsConfig,
    /// Per-agency terms, by agency id; unset keys fall back to the default.
    pub agencies: BTreeMap<String, AgencyTermsConfig>,
    /// How often the expiry job looks for payments not completed in time.
    #[serde(with = "millis")]
    pub expiry_interval_ms: Duration,
    /// How often the webhook job looks for due deliveries (it also wakes
    /// when this instance records events).
    #[serde(with = "millis")]
    pub webhook_interval_ms: Duration,
    /// How long idempotency keys are remembered (at least 24 hours); the
    /// expiry job prunes older ones.
    pub idempotency_key_retention_hours: u64,
    /// How long payment events are kept (at least 4 days: webhook
    /// deliveries are retried for 3); the expiry job prunes older ones,
    /// and a stream or list resumed from a cursor older than what is kept
    /// is answered `OUT_OF_RANGE`.
    pub event_retention_days: u64,
}

/// What an agency pays and may charge.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TermsConfig {
    /// Percent of each successful payment, as a decimal string ("1.5").
    #[serde(default = "zero_percent")]
    pub fee_percent: String,
    /// A fixed fee per successful payment, in minor units, by currency.
    #[serde(default)]
    pub fee_fixed_minor: BTreeMap<String, i64>,
    /// The currencies accepted and the largest payment in each, in minor
    /// units. A currency not listed is refused.
    #[serde(default = "default_max_amounts")]
    pub max_amount_minor: BTreeMap<String, i64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgencyTermsConfig {
    pub fee_percent: Option<String>,
    pub fee_fixed_minor: Option<BTreeMap<String, i64>>,
    pub max_amount_minor: Option<BTreeMap<String, i64>>,
}

fn zero_percent() -> String {
    "0".to_owned()
}

fn default_max_amounts() -> BTreeMap<String, i64> {
    [
        ("CLP", 100_000_000), // 100 million pesos
        ("CLF", 100_000_000), // 10,000 UF
        ("USD", 10_000_000),  // 100,000.00 dollars
        ("EUR", 10_000_000),  // 100,000.00 euros
    ]
    .into_iter()
    .map(|(c, m)| (c.to_owned(), m))
    .collect()
}

impl Default for TermsConfig {
    fn default() -> Self {
        Self {
            fee_percent: zero_percent(),
            fee_fixed_minor: BTreeMap::new(),
            max_amount_minor: default_max_amounts(),
        }
    }
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            terms: TermsConfig::default(),
            agencies: BTreeMap::new(),
            expiry_interval_ms: Duration::from_secs(60),
            webhook_interval_ms: Duration::from_secs(1),
            idempotency_key_retention_hours: 24,
            event_retention_days: 90,
        }
    }
}
