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
use crate::gateway::{Authorisation, CardGateway, RefundOutcome, SandboxGateway};
use crate::store::{
    self, AccountBalance, EndpointInsert, ExportCursor, PaymentFilter, RefundFilter, RefundInsert,
    StateChange,
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
    #[error("no card gateway is configured for live payments")]
    NoGateway,
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
            | PaymentsError::NoGateway
            | PaymentsError::TooManyWebhookEndpoints => {
                ApiError::FailedPrecondition(error.to_string())
            }
            PaymentsError::SandboxOnly => ApiError::PermissionDenied(error.to_string()),
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

pub struct PaymentsService {
    pub(crate) db: Database,
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
    /// No live gateway is built in yet.
    pub(crate) live: Option<Arc<dyn CardGateway>>,
    /// Delivers webhooks.
    http: reqwest::Client,
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
        shutdown: Shutdown,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            db,
            events_written: watch::channel(0).0,
            shutdown,
            terms,
            public_url,
            sandbox: Arc::new(SandboxGateway),
            live: None,
            http: webhook::client()?,
        })
    }

    /// Changes whenever this instance records events.
    pub fn subscribe_events(&self) -> watch::Receiver<u64> {
        self.events_written.subscribe()
    }

    fn events_recorded(&self) {
        self.events_written.send_modify(|n| *n = n.wrapping_add(1));
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

    /// Creates a payment in CREATED. With an idempotency key, a replay of
    /// the same request returns the payment it created, and the key with
    /// another request is refused.
    pub async fn create_payment(
        &self,
        tenant: &Tenant,
        new: NewPayment,
        idempotency_key: Option<&str>,
    ) -> Result<Payment, PaymentsError> {
        let hash = payment_request_hash(&new);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay_payment(tenant, key, hash).await?
        {
            return Ok(original);
        }
        self.terms.for_agency(&tenant.agency_id).check(new.amount)?;
        let now = now_micros();
        let payment = Payment {
            payment_id: new_id(PAYMENT_ID_PREFIX),
            tenant: tenant.clone(),
            new,
            state: PaymentState::Created,
            failure_reason: None,
            failure_message: String::new(),
            card: None,
            refund_submitted_minor: 0,
            fee_minor: None,
            page_secret: format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            ),
            expire_time: now.saturating_add(PAYMENT_LIFETIME_MICROS),
            create_time: now,
            update_time: now,
        };
        if store::create_payment(&self.db, &payment, idempotency).await? {
            self.events_recorded();
            tracing::info!(payment_id = %payment.payment_id, agency_id = %tenant.agency_id, "payment created");
            return Ok(payment);
        }
        // A concurrent request with the same key won: answer as a replay.
        let (key, hash) = idempotency.ok_or(PaymentsError::Corrupt("idempotency"))?;
        self.replay_payment(tenant, key, hash)
            .await?
            .ok_or(PaymentsError::Corrupt("idempotency record"))
    }

    async fn replay_payment(
        &self,
        tenant: &Tenant,
        key: &str,
        hash: &str,
    ) -> Result<Option<Payment>, PaymentsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, tenant, "CreatePayment", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        store::get_payment(&self.db, tenant, &record.resource_id).await
    }

    pub async fn get_payment(
        &self,
        tenant: &Tenant,
        payment_id: &str,
    ) -> Result<Payment, PaymentsError> {
        store::get_payment(&self.db, tenant, payment_id)
            .await?
            .ok_or(PaymentsError::PaymentNotFound)
    }

    pub async fn list_payments(
        &self,
        tenant: &Tenant,
        filter: &PaymentFilter,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Payment>, PaymentsError> {
        let items =
            store::list_payments(&self.db, tenant, filter, cursor, page_size.fetch_limit()).await?;
        Ok(Page::from_overfetch(items, page_size, |p| {
            p.payment_id.clone()
        }))
    }

    pub async fn list_payment_events(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        page_size: PageSize,
        after_sequence: Option<i64>,
    ) -> Result<Page<PaymentEvent>, PaymentsError> {
        // The payment itself must be the tenant's (an empty list would
        // not tell "none yet" from "not yours").
        self.get_payment(tenant, payment_id).await?;
        let items = store::list_payment_events(
            &self.db,
            tenant,
            payment_id,
            after_sequence.unwrap_or(0),
            page_size.fetch_limit(),
        )
        .await?;
        Ok(Page::from_overfetch(items, page_size, |e| {
            e.sequence.to_string()
        }))
    }

    /// Moves a payment to `to`, as the state machine allows from the state
    /// it is in, recording the event (and, on success, the fee and the
    /// ledger postings) atomically. A concurrent change is retried from the
    /// state it left.
    async fn move_to(
        &self,
        tenant: &Tenant,
        mut payment: Payment,
        to: PaymentState,
        reason: Option<FailureReason>,
        message: &str,
        card: Option<&CardSummary>,
    ) -> Result<Payment, PaymentsError> {
        for _ in 0..STATE_CHANGE_ATTEMPTS {
            let event = state::transition(payment.state, to, reason)?;
            let (fee_minor, postings) = if to == PaymentState::Success {
                let fee = self
                    .terms
                    .for_agency(&tenant.agency_id)
                    .fees
                    .fee(payment.amount());
                (Some(fee.minor), capture_postings(payment.amount(), fee))
            } else {
                (None, Vec::new())
            };
            let change = StateChange {
                from: payment.state,
                to,
                event,
                reason,
                message,
                card,
                fee_minor,
                postings,
                now: now_micros(),
            };
            if let Some(changed) =
                store::change_state(&self.db, tenant, &payment.payment_id, &change).await?
            {
                self.events_recorded();
                tracing::info!(
                    payment_id = %changed.payment_id,
                    from = change.from.as_str(),
                    to = to.as_str(),
                    "payment state changed"
                );
                return Ok(changed);
            }
            payment = self.get_payment(tenant, &payment.payment_id).await?;
        }
        Err(IllegalTransition {
            from: payment.state,
            to,
        }
        .into())
    }

    /// Captures a CAPTURABLE payment; a SUCCESS one is returned unchanged.
    pub async fn capture_payment(
        &self,
        tenant: &Tenant,
        payment_id: &str,
    ) -> Result<Payment, PaymentsError> {
        let payment = self.get_payment(tenant, payment_id).await?;
        if payment.state == PaymentState::Success {
            return Ok(payment);
        }
        if payment.state != PaymentState::Capturable {
            return Err(IllegalTransition {
                from: payment.state,
                to: PaymentState::Success,
            }
            .into());
        }
        match self
            .move_to(tenant, payment, PaymentState::Success, None, "", None)
            .await
        {
            // A concurrent capture won: the payment is captured, once.
            Err(PaymentsError::IllegalTransition(IllegalTransition {
                from: PaymentState::Success,
                ..
            })) => self.get_payment(tenant, payment_id).await,
            other => other,
        }
    }

    /// Cancels a payment that has not finished; a CANCELLED one is
    /// returned unchanged.
    pub async fn cancel_payment(
        &self,
        tenant: &Tenant,
        payment_id: &str,
    ) -> Result<Payment, PaymentsError> {
        let payment = self.get_payment(tenant, payment_id).await?;
        if payment.state == PaymentState::Cancelled {
            return Ok(payment);
        }
        match self
            .move_to(
                tenant,
                payment,
                PaymentState::Cancelled,
                Some(FailureReason::CancelledByAgency),
                "cancelled by the agency",
                None,
            )
            .await
        {
            Err(PaymentsError::IllegalTransition(IllegalTransition {
                from: PaymentState::Cancelled,
                ..
            })) => self.get_payment(tenant, payment_id).await,
            other => other,
        }
    }

    /// Plays the payer's card step (sandbox only): opens the page if it
    /// was not, submits the card, and records the gateway's answer.
    pub async fn simulate_card_submission(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        card: &CardSubmission,
    ) -> Result<Payment, PaymentsError> {
        if tenant.environment != Environment::Sandbox {
            return Err(PaymentsError::SandboxOnly);
        }
        let mut payment = self.get_payment(tenant, payment_id).await?;
        if payment.state == PaymentState::Created {
            payment = self
                .move_to(tenant, payment, PaymentState::Started, None, "", None)
                .await?;
        }
        let summary = card.summary();
        let payment = self
            .move_to(
                tenant,
                payment,
                PaymentState::Submitted,
                None,
                "",
                Some(&summary),
            )
            .await?;
        let gateway = self.gateway(tenant.environment)?;
        let outcome = gateway
            .authorise(&payment.payment_id, card, payment.amount())
            .await;
        let (to, reason, message) = match outcome {
            Authorisation::Authorised if payment.new.delayed_capture => {
                (PaymentState::Capturable, None, "")
            }
            Authorisation::Authorised => (PaymentState::Success, None, ""),
            Authorisation::Declined(message) => {
                (PaymentState::Failed, Some(FailureReason::Rejected), message)
            }
            Authorisation::ProviderError(message) => (
                PaymentState::Error,
                Some(FailureReason::ProviderError),
                message,
            ),
        };
        self.move_to(tenant, payment, to, reason, message, None)
            .await
    }

    /// Refunds (part of) a SUCCESS payment if `expected_available` is
    /// still what can be refunded (compare-and-set). With an idempotency
    /// key, a replay returns the original refund, checked before the
    /// amount.
    pub async fn create_refund(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        amount: Money,
        expected_available: Money,
        reason: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Refund, PaymentsError> {
        let hash = request_hash(&[
            payment_id,
            amount.currency.code(),
            &amount.minor.to_string(),
            expected_available.currency.code(),
            &expected_available.minor.to_string(),
            reason,
        ]);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay_refund(tenant, key, hash).await?
        {
            return Ok(original);
        }
        let now = now_micros();
        let refund = Refund {
            refund_id: new_id(REFUND_ID_PREFIX),
            payment_id: payment_id.to_owned(),
            tenant: tenant.clone(),
            amount,
            reason: reason.to_owned(),
            state: RefundState::Submitted,
            create_time: now,
            update_time: now,
        };
        let payment =
            match store::create_refund(&self.db, &refund, expected_available.minor, idempotency)
                .await?
            {
                RefundInsert::Created(payment) => *payment,
                RefundInsert::KeyTaken => {
                    let (key, hash) = idempotency.ok_or(PaymentsError::Corrupt("idempotency"))?;
                    return self
                        .replay_refund(tenant, key, hash)
                        .await?
                        .ok_or(PaymentsError::Corrupt("idempotency record"));
                }
                RefundInsert::NotApplied => {
                    return Err(self
                        .why_not_refundable(tenant, payment_id, amount, expected_available)
                        .await);
                }
            };
        self.events_recorded();
        tracing::info!(refund_id = %refund.refund_id, payment_id, "refund submitted");
        let outcome = match self.gateway(tenant.environment) {
            Ok(gateway) => {
                gateway
                    .refund(&payment.payment_id, &refund.refund_id, amount)
                    .await
            }
            Err(_) => RefundOutcome::Failed,
        };
        let finished = store::finish_refund(
            &self.db,
            &refund,
            outcome == RefundOutcome::Succeeded,
            now_micros(),
        )
        .await?;
        self.events_recorded();
        Ok(finished.unwrap_or(refund))
    }

    /// Why a refund's compare-and-set did not apply, as the caller should
    /// hear it.
    async fn why_not_refundable(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        amount: Money,
        expected_available: Money,
    ) -> PaymentsError {
        let payment = match self.get_payment(tenant, payment_id).await {
            Ok(payment) => payment,
            Err(error) => return error,
        };
        let currency = payment.amount().currency;
        let available = payment.refund_available();
        if payment.state != PaymentState::Success {
            PaymentsError::NotRefundable
        } else if amount.currency != currency {
            invalid("amount.currency_code", "must be the payment's currency")
        } else if expected_available.currency != currency {
            invalid(
                "refund_amount_available.currency_code",
                "must be the payment's currency",
            )
        } else if expected_available.minor != available.minor {
            PaymentsError::RefundAmountChanged
        } else if amount.minor > available.minor {
            invalid(
                "amount.amount_minor",
                "must be at most the payment's refund_amount_available",
            )
        } else {
            // Changed between the attempt and this read.
            PaymentsError::RefundAmountChanged
        }
    }

    async fn replay_refund(
        &self,
        tenant: &Tenant,
        key: &str,
        hash: &str,
    ) -> Result<Option<Refund>, PaymentsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, tenant, "CreateRefund", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        store::get_refund(&self.db, tenant, &record.resource_id).await
    }

    pub async fn get_refund(
        &self,
        tenant: &Tenant,
        refund_id: &str,
    ) -> Result<Refund, PaymentsError> {
        store::get_refund(&self.db, tenant, refund_id)
            .await?
            .ok_or(PaymentsError::RefundNotFound)
    }

    pub async fn list_refunds(
        &self,
        tenant: &Tenant,
        filter: &RefundFilter,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Refund>, PaymentsError> {
        let items =
            store::list_refunds(&self.db, tenant, filter, cursor, page_size.fetch_limit()).await?;
        Ok(Page::from_overfetch(items, page_size, |r| {
            r.refund_id.clone()
        }))
    }

    /// The tenant's balances at `as_of` (now when `None`), and that time.
    pub async fn get_balance(
        &self,
        tenant: &Tenant,
        currency: Option<Currency>,
        as_of: Option<i64>,
    ) -> Result<(Vec<AccountBalance>, i64), PaymentsError> {
        // Entries are posted with the time they were written; "now" is one
        // microsecond later so that the entries of this instant count.
        let as_of = as_of.unwrap_or_else(|| now_micros().saturating_add(1));
        Ok((
            store::balances(&self.db, tenant, currency, as_of).await?,
            as_of,
        ))
    }

    /// The cursor of the last event recorded so far: a stream started from
    /// it gets only events recorded from now on.
    pub async fn current_event_cursor(&self) -> Result<i64, PaymentsError> {
        store::last_event_sequence(&self.db).await
    }

    /// Streams the tenant's events after `cursor` into `sink`, in recording
    /// order, until the receiver goes away or the server shuts down. An
    /// error ends the stream after being sent.
    pub async fn watch_events(
        &self,
        tenant: Tenant,
        cursor: i64,
        types: Vec<EventType>,
        sink: mpsc::Sender<Result<PaymentEvent, PaymentsError>>,
    ) {
        if let Err(error) = self.stream_events(&tenant, cursor, &types, &sink).await {
            let _ = sink.send(Err(error)).await;
        }
    }

    async fn stream_events(
        &self,
        tenant: &Tenant,
        cursor: i64,
        types: &[EventType],
        sink: &mpsc::Sender<Result<PaymentEvent, PaymentsError>>,
    ) -> Result<(), PaymentsError> {
        let mut written = self.events_written.subscribe();
        let stop = self.shutdown.clone().wait();
        tokio::pin!(stop);
        let mut after = cursor;
        loop {
            loop {
                let high = store::committed_event_sequence(
                    &self.db,
                    after,
                    now_micros(),
                    EVENT_GAP_WAIT_MICROS,
                )
                .await?;
                if high == after {
                    break;
                }
                let events =
                    store::tenant_events(&self.db, tenant, after, high, types, WATCH_BATCH).await?;
                let full = events.len() == usize::try_from(WATCH_BATCH).unwrap_or(usize::MAX);
                for event in events {
                    after = event.sequence;
                    if sink.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                if !full {
                    // Nothing else of this tenant's up to `high`.
                    after = high;
                }
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = sink.closed() => return Ok(()),
                _ = written.changed() => {}
                () = tokio::time::sleep(WATCH_POLL) => {}
            }
        }
    }

    /// One chunk of the tenant's ledger entries posted in [`from`,
    /// `before`), after `cursor`: at most [`EXPORT_CHUNK_ENTRIES`], never
    /// splitting a transaction, and where the next chunk starts (`None`
    /// at the end).
    pub async fn export_chunk(
        &self,
        tenant: &Tenant,
        currency: Option<Currency>,
        from: Option<i64>,
        before: i64,
        cursor: Option<&ExportCursor>,
    ) -> Result<(Vec<LedgerEntry>, Option<ExportCursor>), PaymentsError> {
        let limit = i64::try_from(EXPORT_CHUNK_ENTRIES).unwrap_or(i64::MAX);
        let entries =
            store::ledger_entries(&self.db, tenant, currency, from, before, cursor, limit).await?;
        let (chunk, more) = complete_transactions(entries, EXPORT_CHUNK_ENTRIES);
        let next = chunk.last().filter(|_| more).map(|e| ExportCursor {
            posting_time: e.posting_time,
            transaction_id: e.transaction_id.clone(),
        });
        Ok((chunk, next))
    }

    /// Registers a webhook endpoint and returns it with its signing
    /// secret. With an idempotency key, a replay returns the same endpoint
    /// and secret.
    pub async fn create_webhook_endpoint(
        &self,
        tenant: &Tenant,
        url: String,
        event_types: Vec<EventType>,
        description: String,
        idempotency_key: Option<&str>,
    ) -> Result<(WebhookEndpoint, String), PaymentsError> {
        let mut parts: Vec<&str> = vec![&url, &description];
        parts.extend(event_types.iter().map(|t| t.as_str()));
        let hash = request_hash(&parts);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay_endpoint(tenant, key, hash).await?
        {
            return Ok(original);
        }
        let endpoint = WebhookEndpoint {
            webhook_endpoint_id: new_id(WEBHOOK_ENDPOINT_ID_PREFIX),
            tenant: tenant.clone(),
            url,
            event_types,
            description,
            create_time: now_micros(),
        };
        let secret = new_signing_secret();
        match store::create_webhook_endpoint(&self.db, &endpoint, &secret, idempotency).await? {
            EndpointInsert::Created => Ok((endpoint, secret)),
            EndpointInsert::TooMany => Err(PaymentsError::TooManyWebhookEndpoints),
            EndpointInsert::KeyTaken => {
                let (key, hash) = idempotency.ok_or(PaymentsError::Corrupt("idempotency"))?;
                self.replay_endpoint(tenant, key, hash)
                    .await?
                    .ok_or(PaymentsError::Corrupt("idempotency record"))
            }
        }
    }

    async fn replay_endpoint(
        &self,
        tenant: &Tenant,
        key: &str,
        hash: &str,
    ) -> Result<Option<(WebhookEndpoint, String)>, PaymentsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, tenant, "CreateWebhookEndpoint", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        // Deleted since: the key still may not be used for another.
        store::get_webhook_endpoint(&self.db, tenant, &record.resource_id)
            .await?
            .map(Some)
            .ok_or(PaymentsError::WebhookEndpointNotFound)
    }

    pub async fn list_webhook_endpoints(
        &self,
        tenant: &Tenant,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<WebhookEndpoint>, PaymentsError> {
        let items =
            store::list_webhook_endpoints(&self.db, tenant, cursor, page_size.fetch_limit())
                .await?;
        Ok(Page::from_overfetch(items, page_size, |e| {
            e.webhook_endpoint_id.clone()
        }))
    }

    pub async fn delete_webhook_endpoint(
        &self,
        tenant: &Tenant,
        webhook_endpoint_id: &str,
    ) -> Result<(), PaymentsError> {
        if store::delete_webhook_endpoint(&self.db, tenant, webhook_endpoint_id).await? {
            Ok(())
        } else {
            Err(PaymentsError::WebhookEndpointNotFound)
        }
    }

    /// The webhook job: attempts every delivery due at `now` once (each
    /// taken under a lease, so instances never send one twice at once) and
    /// schedules retries with exponential backoff for up to 3 days after
    /// the event. Returns how many were delivered. `now` is a parameter so
    /// tests can drive retries without waiting.
    pub async fn deliver_due_webhooks(&self, now: i64) -> Result<usize, PaymentsError> {
        const BATCH: i64 = 50;
        const LEASE_MICROS: i64 = 60 * 1_000_000;
        let mut delivered = 0;
        for due in store::due_deliveries(&self.db, now, BATCH).await? {
            if !store::claim_delivery(&self.db, &due, now.saturating_add(LEASE_MICROS), now).await?
            {
                continue;
            }
            let attempts = due.attempts.saturating_add(1);
            let Some((url, secret, event)) = store::delivery_target(&self.db, &due).await? else {
                store::finish_delivery(&self.db, &due, "failed", now, "endpoint deleted", now)
                    .await?;
                continue;
            };
            let signed_at = now_micros().div_euclid(1_000_000);
            let outcome = webhook::deliver(
                &self.http,
                &url,
                &secret,
                signed_at,
                webhook::event_json(&event),
            )
            .await;
            match outcome {
                DeliveryOutcome::Delivered => {
                    delivered += 1;
                    store::finish_delivery(&self.db, &due, "delivered", now, "delivered", now)
                        .await?;
                }
                DeliveryOutcome::Failed(why) => {
                    let next = now.saturating_add(retry_delay_micros(attempts));
                    let give_up = next > due.create_time.saturating_add(DELIVERY_WINDOW_MICROS);
                    let state = if give_up { "failed" } else { "pending" };
                    tracing::info!(
                        event_id = %due.event_id,
                        webhook_endpoint_id = %due.webhook_endpoint_id,
                        attempts,
                        outcome = %why,
                        "webhook delivery failed"
                    );
                    store::finish_delivery(&self.db, &due, state, next, &why, now).await?;
                }
            }
        }
        Ok(delivered)
    }

    /// The expiry job: payments whose payer did not finish by `now` (90
    /// minutes after creation) and authorisations not captured within 7
    /// days become FAILED with reason EXPIRED. Returns how many. `now` is
    /// a parameter so tests drive the job without waiting.
    pub async fn expire_stale_payments(&self, now: i64) -> Result<usize, PaymentsError> {
        const BATCH: i64 = 100;
        let mut expired = 0;
        loop {
            let stale = store::stale_payments(
                &self.db,
                now,
                now.saturating_sub(CAPTURE_WINDOW_MICROS),
                BATCH,
            )
            .await?;
            let mut progressed = false;
            for item in &stale {
                let message = if item.state == PaymentState::Capturable {
                    "the authorisation was not captured within 7 days"
                } else {
                    "the payer did not finish within 90 minutes"
                };
                let Some(payment) =
                    store::get_payment(&self.db, &item.tenant, &item.payment_id).await?
                else {
                    continue;
                };
                match self
                    .move_to(
                        &item.tenant,
                        payment,
                        PaymentState::Failed,
                        Some(FailureReason::Expired),
                        message,
                        None,
                    )
                    .await
                {
                    Ok(_) => {
                        expired += 1;
                        progressed = true;
                    }
                    // Finished meanwhile (paid, cancelled, or expired by
                    // another instance): nothing to do.
                    Err(PaymentsError::IllegalTransition(_)) => {}
                    Err(other) => return Err(other),
                }
            }
            if !progressed || stale.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                return Ok(expired);
            }
        }
    }
}

/// A digest of what a create request asks for, to tell a replay from a
/// reuse of its idempotency key.
fn payment_request_hash(new: &NewPayment) -> String {
    let amount = new.amount.minor.to_string();
    let mut parts: Vec<&str> = vec![
        new.amount.currency.code(),
        &amount,
        &new.reference,
        &new.description,
        &new.return_url,
        new.language.as_str(),
        if new.delayed_capture {
            "delayed"
        } else {
            "immediate"
        },
    ];
    for (key, value) in &new.metadata {
        parts.push(key);
        parts.push(value);
    }
    request_hash(&parts)
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
