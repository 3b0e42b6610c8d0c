//! What the payments service does, in domain terms. The gRPC adapter
//! parses requests into these calls and renders their results. Every call
//! is scoped to the caller's agency and environment ([`Tenant`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use atiende_platform::auth::Environment;
use atiende_platform::error::{ApiError, FieldViolation};
use atiende_platform::ids::new_id;
use atiende_platform::paging::{Page, PageSize};
use atiende_platform::server::Shutdown;
use atiende_platform::storage::{Database, now_micros};
use aws_lc_rs::digest;
use tokio::sync::{mpsc, watch};

use crate::config::{PaymentSettings, TermsConfig};
use crate::domain::card::{CardSubmission, CardSummary};
use crate::domain::fees::FeeSchedule;
use crate::domain::ledger::{LedgerEntry, capture_postings, complete_transactions};
use crate::domain::money::{Currency, Money};
use crate::domain::payment::{
    CAPTURE_WINDOW_MICROS, NewPayment, PAYMENT_ID_PREFIX, PAYMENT_LIFETIME_MICROS, Payment,
    PaymentEvent, REFUND_ID_PREFIX, Refund, RefundState, Tenant, Violation,
};
use crate::domain::state::{self, EventType, FailureReason, IllegalTransition, PaymentState};
use crate::domain::webhook::{
    DELIVERY_WINDOW_MICROS, WEBHOOK_ENDPOINT_ID_PREFIX, WebhookEndpoint, new_signing_secret,
    retry_delay_micros,
};
use crate::gateway::{Authorisation, CardGateway, RefundOutcome, SandboxGateway, VoidOutcome};
use crate::store::{
    self, AccountBalance, EndpointInsert, ExportCursor, PaymentFilter, RefundFilter, RefundInsert,
    StateChange, VoidFor, Write, Written,
};
use crate::webhook::{self, DeliveryOutcome};

/// What can go wrong in the payments service.
#[derive(Debug, thiserror::Error)]
pub enum PaymentsError {
    #[error("payment not found")]
    PaymentNotFound,
    #[error("refund not found")]
    RefundNotFound,
    #[error("the request has invalid fields")]
    Invalid(Vec<Violation>),
    #[error(transparent)]
    IllegalTransition(#[from] IllegalTransition),
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error(
        "refund_amount_available is not the current value (another refund happened): \
         read the payment again and decide again"
    )]
    RefundAmountChanged,
    #[error("only a payment in state success can be refunded")]
    NotRefundable,
    #[error("only sandbox callers can simulate the card step")]
    SandboxOnly,
    #[error("the payment has expired: its card step is closed")]
    PaymentExpired,
    #[error("no card gateway is configured for live payments")]
    NoGateway,
    #[error("the payment is being cancelled: its authorisation is being released")]
    BeingVoided,
    #[error("the card gateway did not answer")]
    GatewayUnavailable,
    #[error(
        "the cursor is older than the events kept: start again without a cursor \
         (and read the payments' current state)"
    )]
    CursorTooOld,
    #[error("webhook endpoint not found")]
    WebhookEndpointNotFound,
    #[error("an agency has at most 16 webhook endpoints in each environment")]
    TooManyWebhookEndpoints,
    #[error("stored data does not parse: {0}")]
    Corrupt(&'static str),
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<PaymentsError> for ApiError {
    fn from(error: PaymentsError) -> Self {
        match error {
            PaymentsError::PaymentNotFound => ApiError::NotFound("payment"),
            PaymentsError::RefundNotFound => ApiError::NotFound("refund"),
            PaymentsError::WebhookEndpointNotFound => ApiError::NotFound("webhook endpoint"),
            PaymentsError::Invalid(violations) => ApiError::InvalidArgument(
                violations
                    .into_iter()
                    .map(|(field, description)| FieldViolation::new(field, description))
                    .collect(),
            ),
            PaymentsError::IllegalTransition(_)
            | PaymentsError::IdempotencyKeyReused
            | PaymentsError::RefundAmountChanged
            | PaymentsError::NotRefundable
            | PaymentsError::PaymentExpired
            | PaymentsError::NoGateway
            | PaymentsError::BeingVoided
            | PaymentsError::TooManyWebhookEndpoints => {
                ApiError::FailedPrecondition(error.to_string())
            }
            PaymentsError::SandboxOnly => ApiError::PermissionDenied(error.to_string()),
            PaymentsError::GatewayUnavailable => ApiError::Unavailable,
            PaymentsError::CursorTooOld => ApiError::OutOfRange(error.to_string()),
            PaymentsError::Storage(e) => ApiError::from(e),
            PaymentsError::Corrupt(_) => ApiError::internal(error),
        }
    }
}

fn invalid(field: &str, description: impl Into<String>) -> PaymentsError {
    PaymentsError::Invalid(vec![(field.to_owned(), description.into())])
}

/// What an agency pays and may charge: its fee schedule, and the
/// currencies it accepts with the largest payment in each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms {
    pub fees: FeeSchedule,
    pub max_amount_minor: BTreeMap<Currency, i64>,
}

impl Terms {
    fn parse(config: &TermsConfig) -> Result<Self, String> {
        let fees = FeeSchedule::parse(&config.fee_percent, &config.fee_fixed_minor)?;
        let mut max_amount_minor = BTreeMap::new();
        for (code, max) in &config.max_amount_minor {
            let currency =
                Currency::parse(code).map_err(|e| format!("max_amount_minor {code:?} {e}"))?;
            if *max <= 0 {
                return Err(format!("max_amount_minor for {code} must be positive"));
            }
            max_amount_minor.insert(currency, *max);
        }
        Ok(Self {
            fees,
            max_amount_minor,
        })
    }

    /// Violations of the agency's limits by an amount.
    fn check(&self, amount: Money) -> Result<(), PaymentsError> {
        match self.max_amount_minor.get(&amount.currency) {
            None => Err(invalid(
                "amount.currency_code",
                "is not a currency the agency accepts",
            )),
            Some(max) if amount.minor > *max => Err(invalid(
                "amount.amount_minor",
                format!(
                    "must be at most the agency's limit of {max} minor units of {}",
                    amount.currency.code()
                ),
            )),
            Some(_) => Ok(()),
        }
    }
}

/// The default terms and each agency's own.
#[derive(Debug, Clone)]
pub struct TermsBook {
    default: Terms,
    agencies: HashMap<String, Terms>,
}

impl TermsBook {
    pub fn from_settings(settings: &PaymentSettings) -> Result<Self, String> {
        let default = Terms::parse(&settings.terms)?;
        let mut agencies = HashMap::new();
        for (agency_id, own) in &settings.agencies {
            let merged = TermsConfig {
                fee_percent: own
                    .fee_percent
                    .clone()
                    .unwrap_or_else(|| settings.terms.fee_percent.clone()),
                fee_fixed_minor: own
                    .fee_fixed_minor
                    .clone()
                    .unwrap_or_else(|| settings.terms.fee_fixed_minor.clone()),
                max_amount_minor: own
                    .max_amount_minor
                    .clone()
                    .unwrap_or_else(|| settings.terms.max_amount_minor.clone()),
            };
            let terms = Terms::parse(&merged).map_err(|e| format!("agency {agency_id}: {e}"))?;
            agencies.insert(agency_id.clone(), terms);
        }
        Ok(Self { default, agencies })
    }

    pub fn for_agency(&self, agency_id: &str) -> &Terms {
        self.agencies.get(agency_id).unwrap_or(&self.default)
    }
}

/// How long idempotency keys and events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub idempotency_key_micros: i64,
    pub event_micros: i64,
}

impl Retention {
    pub fn from_settings(settings: &PaymentSettings) -> Result<Self, String> {
        const HOUR: i64 = 3_600_000_000;
        if settings.idempotency_key_retention_hours < 24 {
            return Err("idempotency_key_retention_hours must be at least 24".into());
        }
        if settings.event_retention_days < 4 {
            return Err("event_retention_days must be at least 4".into());
        }
        let hours = |h: u64| i64::try_from(h).unwrap_or(i64::MAX).saturating_mul(HOUR);
        Ok(Self {
            idempotency_key_micros: hours(settings.idempotency_key_retention_hours),
            event_micros: hours(settings.event_retention_days.saturating_mul(24)),
        })
    }
}

pub struct PaymentsService {
    pub(crate) db: Database,
    retention: Retention,
    /// Bumped after every commit that recorded events, to wake this
    /// instance's event streams (other instances' events are polled).
    events_written: watch::Sender<u64>,
    /// Ends event streams, so that a draining server is not held open.
    shutdown: Shutdown,
    pub(crate) terms: TermsBook,
    /// The base of `next_url`.
    pub(crate) public_url: String,
    /// Sandbox payments always use the sandbox gateway.
    pub(crate) sandbox: Arc<dyn CardGateway>,
    /// The same, as itself (what it voided, for tests).
    sandbox_gateway: Arc<SandboxGateway>,
    /// No live gateway is built in yet.
    pub(crate) live: Option<Arc<dyn CardGateway>>,
    /// Delivers sandbox webhooks.
    http: reqwest::Client,
    /// Delivers live webhooks, to public addresses only.
    http_live: reqwest::Client,
    /// Group commit of creates and state changes.
    writer: writer::Writer,
}

/// Most ledger entries in one export chunk.
pub const EXPORT_CHUNK_ENTRIES: usize = 1000;
/// How often an event stream looks for events written by other instances.
const WATCH_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// How long a gap in event numbers is waited for (see
/// [`store::committed_event_sequence`]).
const EVENT_GAP_WAIT_MICROS: i64 = 2_000_000;
/// Events read per query while streaming.
const WATCH_BATCH: i64 = 100;

/// How many times a state change is retried when a concurrent change got
/// there first (each retry starts from the state it then finds).
const STATE_CHANGE_ATTEMPTS: usize = 3;

impl PaymentsService {
    pub fn new(
        db: Database,
        terms: TermsBook,
        public_url: String,
        retention: Retention,
        shutdown: Shutdown,
    ) -> Result<Self, reqwest::Error> {
        let sandbox_gateway = Arc::new(SandboxGateway::default());
        Ok(Self {
            db: db.clone(),
            retention,
            events_written: watch::channel(0).0,
            shutdown,
            terms,
            public_url,
            sandbox: sandbox_gateway.clone(),
            sandbox_gateway,
            live: None,
            http: webhook::client()?,
            http_live: webhook::live_client()?,
            writer: writer::Writer::start(store::group_database(&db)),
        })
    }

    /// Changes whenever this instance records events.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events_written.subscribe()
    }

    fn events_recorded(&self) {
        self.events_written.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The gateway of sandbox payments.
    pub fn sandbox_gateway(&self) -> &SandboxGateway {
        &self.sandbox_gateway
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    fn gateway(&self, environment: Environment) -> Result<&dyn CardGateway, PaymentsError> {
        match environment {
            Environment::Sandbox => Ok(self.sandbox.as_ref()),
            Environment::Live => self.live.as_deref().ok_or(PaymentsError::NoGateway),
        }
    }
}

/// SHA-256 of length-prefixed parts, in hex.
fn request_hash(parts: &[&str]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

mod events;
mod page;
mod payments;
mod refunds;
mod webhooks;
mod writer;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AgencyTermsConfig;

    #[test]
    fn agencies_get_their_own_terms_over_the_defaults() {
        let mut settings = PaymentSettings::default();
        settings.terms.fee_percent = "1.5".into();
        settings.agencies.insert(
            "agy_a".into(),
            AgencyTermsConfig {
                fee_percent: Some("0.5".into()),
                max_amount_minor: Some(BTreeMap::from([("USD".into(), 100)])),
                ..Default::default()
            },
        );
        let book = TermsBook::from_settings(&settings).unwrap();
        let usd = |minor| Money::new(Currency::parse("USD").unwrap(), minor);
        let clp = Money::new(Currency::parse("CLP").unwrap(), 1);
        assert_eq!(book.for_agency("agy_a").fees.fee(usd(1_000)).minor, 5);
        assert_eq!(book.for_agency("agy_b").fees.fee(usd(1_000)).minor, 15);
        assert!(book.for_agency("agy_a").check(usd(100)).is_ok());
        assert!(book.for_agency("agy_a").check(usd(101)).is_err());
        // Its own list of currencies replaces the default one.
        assert!(book.for_agency("agy_a").check(clp).is_err());
        assert!(book.for_agency("agy_b").check(clp).is_ok());

        settings.agencies.insert(
            "agy_c".into(),
            AgencyTermsConfig {
                fee_percent: Some("a lot".into()),
                ..Default::default()
            },
        );
        assert!(TermsBook::from_settings(&settings).is_err());
    }
}
