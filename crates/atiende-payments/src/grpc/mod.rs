//! The gRPC adapter: the only module that knows prost types. It checks
//! scopes, parses requests into domain values (collecting every field
//! violation), calls [`PaymentsService`] and renders the result. Every call
//! is scoped to the caller's agency and environment.
//!
//! Every RPC of the contract is implemented.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use atiende_platform::auth::{Caller, Environment, Scope, caller};
use atiende_platform::error::{ApiError, Violations};
use atiende_platform::ids::parse_id;
use atiende_platform::paging::{PageSize, decode_id_cursor, decode_page_token, encode_page_token};
use atiende_proto::common::v1 as common;
use atiende_proto::payments::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::domain::card::{
    CardBrand, CardNumber, CardSubmission, CardSummary, Cvc, Expiry, parse_cardholder_name,
};
use crate::domain::ledger::{Account, LedgerEntry, TransactionType};
use crate::domain::money::{Currency, Money};
use crate::domain::payment::{
    Language, NewPayment, PAYMENT_ID_PREFIX, Payment, PaymentEvent, REFUND_ID_PREFIX, Refund,
    RefundState, Tenant, Violation, parse_return_url, parse_text,
};
use crate::domain::state::{EventType, FailureReason, PaymentState};
use crate::domain::webhook::{WEBHOOK_ENDPOINT_ID_PREFIX, WebhookEndpoint};
use crate::gateway::SandboxGateway;
use crate::service::PaymentsService;
use crate::store::{PaymentFilter, RefundFilter};

type Reply<T> = Result<Response<T>, Status>;
type ServerStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

#[derive(Clone)]
pub struct PaymentApi(pub Arc<PaymentsService>);
#[derive(Clone)]
pub struct RefundApi(pub Arc<PaymentsService>);
#[derive(Clone)]
pub struct LedgerApi(pub Arc<PaymentsService>);
#[derive(Clone)]
pub struct WebhookApi(pub Arc<PaymentsService>);

/// The caller's tenant, if it holds `scope`.
fn authorised(request: &Request<impl Sized>, scope: Scope) -> Result<Tenant, ApiError> {
    let caller: Caller = caller(request)?;
    caller.require(scope)?;
    Ok(Tenant {
        agency_id: caller.agency_id,
        environment: caller.environment,
    })
}

fn add_all(v: &mut Violations, prefix: &str, problems: Vec<Violation>) {
    for (field, description) in problems {
        v.add(format!("{prefix}{field}"), description);
    }
}

mod ledger;
mod payments;
mod refunds;
mod webhooks;

fn endpoint_to_pb(e: &WebhookEndpoint) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        webhook_endpoint_id: e.webhook_endpoint_id.clone(),
        url: e.url.clone(),
        event_types: e
            .event_types
            .iter()
            .map(|t| event_type_to_pb(*t).into())
            .collect(),
        description: e.description.clone(),
        create_time: Some(timestamp(e.create_time)),
    }
}

/// A WatchPaymentEvents cursor: an event's sequence number.
fn parse_event_cursor(raw: &str) -> Result<i64, String> {
    raw.parse::<i64>()
        .ok()
        .filter(|c| *c >= 0 && raw.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| "is not a cursor from an event".to_owned())
}

fn event_type_from_pb(raw: i32) -> Option<EventType> {
    use pb::PaymentEventType as P;
    Some(match P::try_from(raw).ok()? {
        P::Unspecified => return None,
        P::PaymentCreated => EventType::PaymentCreated,
        P::PaymentStarted => EventType::PaymentStarted,
        P::PaymentSubmitted => EventType::PaymentSubmitted,
        P::PaymentCapturable => EventType::PaymentCapturable,
        P::PaymentSucceeded => EventType::PaymentSucceeded,
        P::PaymentFailed => EventType::PaymentFailed,
        P::PaymentCancelled => EventType::PaymentCancelled,
        P::PaymentErrored => EventType::PaymentErrored,
        P::RefundSubmitted => EventType::RefundSubmitted,
        P::RefundSucceeded => EventType::RefundSucceeded,
        P::RefundErrored => EventType::RefundErrored,
    })
}

fn entry_to_pb(e: &LedgerEntry) -> pb::LedgerEntry {
    pb::LedgerEntry {
        transaction_id: e.transaction_id.clone(),
        entry_id: e.entry_id.clone(),
        transaction_type: match e.kind {
            TransactionType::Payment => pb::LedgerTransactionType::Payment,
            TransactionType::Fee => pb::LedgerTransactionType::Fee,
            TransactionType::Refund => pb::LedgerTransactionType::Refund,
            TransactionType::RefundReversal => pb::LedgerTransactionType::RefundReversal,
        }
        .into(),
        account: account_to_pb(e.account).into(),
        amount: Some(money_to_pb(e.amount)),
        payment_id: e.payment_id.clone(),
        refund_id: e.refund_id.clone().unwrap_or_default(),
        posting_time: Some(timestamp(e.posting_time)),
    }
}

fn parse_payment_id(raw: &str) -> Result<String, ApiError> {
    parse_id(PAYMENT_ID_PREFIX, raw).map_err(|e| ApiError::invalid("payment_id", e))
}

fn parse_idempotency_key(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        Ok(None)
    } else if raw.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || raw.chars().any(char::is_control) {
        Err(format!(
            "must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters, without control characters"
        ))
    } else {
        Ok(Some(raw.to_owned()))
    }
}

/// A Money field: required, in a known currency, positive (or, when
/// `positive` is false, not negative). Violations name `field.sub_field`.
fn parse_money(
    raw: Option<&common::Money>,
    field: &str,
    positive: bool,
) -> Result<Money, Vec<Violation>> {
    let Some(raw) = raw else {
        return Err(vec![(field.to_owned(), "is required".to_owned())]);
    };
    let prefixed = |problems: Vec<(&str, String)>| {
        problems
            .into_iter()
            .map(|(sub, d)| (format!("{field}.{sub}"), d))
            .collect::<Vec<_>>()
    };
    if positive {
        Money::parse_positive(&raw.currency_code, raw.amount_minor).map_err(prefixed)
    } else {
        let currency = Currency::parse(&raw.currency_code);
        match currency {
            Ok(c) if raw.amount_minor >= 0 => Ok(Money::new(c, raw.amount_minor)),
            Ok(_) => Err(prefixed(vec![(
                "amount_minor",
                "must not be negative".to_owned(),
            )])),
            Err(e) => Err(prefixed(vec![("currency_code", e)])),
        }
    }
}

fn parse_enum_list<T>(raw: &[i32], parse: fn(i32) -> Option<T>) -> Result<Vec<T>, String> {
    raw.iter()
        .map(|v| parse(*v).ok_or_else(|| "has an unknown or unspecified value".to_owned()))
        .collect()
}

fn timestamp_to_micros(t: &prost_types::Timestamp) -> Result<i64, String> {
    let invalid = || "must be a valid timestamp".to_owned();
    if !(0..1_000_000_000).contains(&t.nanos) {
        return Err(invalid());
    }
    t.seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(i64::from(t.nanos / 1000)))
        .ok_or_else(invalid)
}

type Range = (Option<i64>, Option<i64>);

fn parse_time_range(raw: Option<&common::TimeRange>) -> Result<Range, String> {
    let Some(raw) = raw else {
        return Ok((None, None));
    };
    let start = raw
        .start_time
        .as_ref()
        .map(timestamp_to_micros)
        .transpose()?;
    let end = raw.end_time.as_ref().map(timestamp_to_micros).transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s > e
    {
        return Err("start_time must not be after end_time".to_owned());
    }
    Ok((start, end))
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    let nanos = i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos,
    }
}

fn money_to_pb(money: Money) -> common::Money {
    common::Money {
        currency_code: money.currency.code().to_owned(),
        amount_minor: money.minor,
    }
}

fn payment_state_from_pb(raw: i32) -> Option<PaymentState> {
    Some(match pb::PaymentState::try_from(raw).ok()? {
        pb::PaymentState::Unspecified => return None,
        pb::PaymentState::Created => PaymentState::Created,
        pb::PaymentState::Started => PaymentState::Started,
        pb::PaymentState::Submitted => PaymentState::Submitted,
        pb::PaymentState::Capturable => PaymentState::Capturable,
        pb::PaymentState::Success => PaymentState::Success,
        pb::PaymentState::Failed => PaymentState::Failed,
        pb::PaymentState::Cancelled => PaymentState::Cancelled,
        pb::PaymentState::Error => PaymentState::Error,
    })
}

fn payment_state_to_pb(state: PaymentState) -> pb::PaymentState {
    match state {
        PaymentState::Created => pb::PaymentState::Created,
        PaymentState::Started => pb::PaymentState::Started,
        PaymentState::Submitted => pb::PaymentState::Submitted,
        PaymentState::Capturable => pb::PaymentState::Capturable,
        PaymentState::Success => pb::PaymentState::Success,
        PaymentState::Failed => pb::PaymentState::Failed,
        PaymentState::Cancelled => pb::PaymentState::Cancelled,
        PaymentState::Error => pb::PaymentState::Error,
    }
}

fn failure_reason_to_pb(reason: Option<FailureReason>) -> pb::PaymentFailureReason {
    match reason {
        None => pb::PaymentFailureReason::Unspecified,
        Some(FailureReason::Rejected) => pb::PaymentFailureReason::Rejected,
        Some(FailureReason::Expired) => pb::PaymentFailureReason::Expired,
        Some(FailureReason::CancelledByUser) => pb::PaymentFailureReason::CancelledByUser,
        Some(FailureReason::CancelledByAgency) => pb::PaymentFailureReason::CancelledByAgency,
        Some(FailureReason::ProviderError) => pb::PaymentFailureReason::ProviderError,
    }
}

fn refund_state_from_pb(raw: i32) -> Option<RefundState> {
    Some(match pb::RefundState::try_from(raw).ok()? {
        pb::RefundState::Unspecified => return None,
        pb::RefundState::Submitted => RefundState::Submitted,
        pb::RefundState::Success => RefundState::Success,
        pb::RefundState::Error => RefundState::Error,
    })
}

fn refund_state_to_pb(state: RefundState) -> pb::RefundState {
    match state {
        RefundState::Submitted => pb::RefundState::Submitted,
        RefundState::Success => pb::RefundState::Success,
        RefundState::Error => pb::RefundState::Error,
    }
}

fn event_type_to_pb(event: EventType) -> pb::PaymentEventType {
    use pb::PaymentEventType as P;
    match event {
        EventType::PaymentCreated => P::PaymentCreated,
        EventType::PaymentStarted => P::PaymentStarted,
        EventType::PaymentSubmitted => P::PaymentSubmitted,
        EventType::PaymentCapturable => P::PaymentCapturable,
        EventType::PaymentSucceeded => P::PaymentSucceeded,
        EventType::PaymentFailed => P::PaymentFailed,
        EventType::PaymentCancelled => P::PaymentCancelled,
        EventType::PaymentErrored => P::PaymentErrored,
        EventType::RefundSubmitted => P::RefundSubmitted,
        EventType::RefundSucceeded => P::RefundSucceeded,
        EventType::RefundErrored => P::RefundErrored,
    }
}

fn account_to_pb(account: Account) -> pb::LedgerAccount {
    match account {
        Account::Collections => pb::LedgerAccount::Collections,
        Account::AgencyReceivable => pb::LedgerAccount::AgencyReceivable,
        Account::Fees => pb::LedgerAccount::Fees,
        Account::Refunds => pb::LedgerAccount::Refunds,
    }
}

fn card_brand_to_pb(brand: CardBrand) -> pb::CardBrand {
    match brand {
        CardBrand::Visa => pb::CardBrand::Visa,
        CardBrand::Mastercard => pb::CardBrand::Mastercard,
        CardBrand::AmericanExpress => pb::CardBrand::AmericanExpress,
        CardBrand::DinersClub => pb::CardBrand::DinersClub,
        CardBrand::Discover => pb::CardBrand::Discover,
        CardBrand::Jcb => pb::CardBrand::Jcb,
        CardBrand::UnionPay => pb::CardBrand::Unionpay,
        CardBrand::Maestro => pb::CardBrand::Maestro,
        CardBrand::Unknown => pb::CardBrand::Unspecified,
    }
}

fn card_to_pb(card: &CardSummary) -> pb::CardDetails {
    pb::CardDetails {
        brand: card_brand_to_pb(card.brand).into(),
        first_six_digits: card.first_six.clone(),
        last_four_digits: card.last_four.clone(),
        expiry_month: i32::try_from(card.expiry.month).unwrap_or(0),
        expiry_year: card.expiry.year,
        cardholder_name: card.cardholder_name.clone(),
    }
}

fn environment_to_pb(environment: Environment) -> common::Environment {
    match environment {
        Environment::Sandbox => common::Environment::Sandbox,
        Environment::Live => common::Environment::Live,
    }
}

fn refund_to_pb(r: &Refund) -> pb::Refund {
    pb::Refund {
        refund_id: r.refund_id.clone(),
        payment_id: r.payment_id.clone(),
        amount: Some(money_to_pb(r.amount)),
        reason: r.reason.clone(),
        state: refund_state_to_pb(r.state).into(),
        create_time: Some(timestamp(r.create_time)),
        update_time: Some(timestamp(r.update_time)),
    }
}

impl PaymentApi {
    fn payment_to_pb(&self, p: &Payment) -> pb::Payment {
        payment_to_pb(p, p.next_url(self.0.public_url()))
    }
}

/// Events carry no next_url: they are delivered to more places than the
/// agency's own server (streams, webhooks, logs), and the URL is a secret.
fn event_to_pb(e: &PaymentEvent) -> pb::PaymentEvent {
    pb::PaymentEvent {
        event_id: e.event_id.clone(),
        r#type: event_type_to_pb(e.event_type).into(),
        cursor: e.sequence.to_string(),
        occur_time: Some(timestamp(e.occur_time)),
        payment: Some(payment_to_pb(&e.payment, None)),
        refund: e.refund.as_ref().map(refund_to_pb),
    }
}

fn payment_to_pb(p: &Payment, next_url: Option<String>) -> pb::Payment {
    let currency = p.amount().currency;
    let success = p.state == PaymentState::Success;
    let fee = p.fee_minor.filter(|_| success);
    pb::Payment {
        payment_id: p.payment_id.clone(),
        amount: Some(money_to_pb(p.amount())),
        reference: p.new.reference.clone(),
        description: p.new.description.clone(),
        return_url: p.new.return_url.clone(),
        metadata: p
            .new
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<HashMap<_, _>>(),
        language: match p.new.language {
            Language::Es => pb::Language::Es,
            Language::En => pb::Language::En,
        }
        .into(),
        delayed_capture: p.new.delayed_capture,
        state: payment_state_to_pb(p.state).into(),
        failure_reason: failure_reason_to_pb(p.failure_reason).into(),
        failure_message: p.failure_message.clone(),
        next_url: next_url.unwrap_or_default(),
        expire_time: Some(timestamp(p.expire_time)),
        card_details: p.card.as_ref().map(card_to_pb),
        refund_amount_available: Some(money_to_pb(p.refund_available())),
        refund_amount_submitted: Some(money_to_pb(Money::new(currency, p.refund_submitted_minor))),
        fee: fee.map(|f| money_to_pb(Money::new(currency, f))),
        net_amount: fee.map(|f| money_to_pb(Money::new(currency, p.amount().minor - f))),
        environment: environment_to_pb(p.tenant.environment).into(),
        create_time: Some(timestamp(p.create_time)),
        update_time: Some(timestamp(p.update_time)),
    }
}
