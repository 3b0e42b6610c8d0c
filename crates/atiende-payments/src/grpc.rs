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

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentApi {
    async fn create_payment(
        &self,
        request: Request<pb::CreatePaymentRequest>,
    ) -> Reply<pb::CreatePaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let language = match pb::Language::try_from(req.language) {
            Ok(pb::Language::Unspecified | pb::Language::Es) => Some(Language::Es),
            Ok(pb::Language::En) => Some(Language::En),
            Err(_) => None,
        };
        let new = match NewPayment::parse(
            parse_money(req.amount.as_ref(), "amount", true),
            &req.reference,
            &req.description,
            &req.return_url,
            &req.metadata,
            language,
            req.delayed_capture,
            tenant.environment,
        ) {
            Ok(new) => Some(new),
            Err(problems) => {
                add_all(&mut v, "", problems);
                None
            }
        };
        let (new, key) = v.finish_with(new.zip(key))?;
        let payment = self
            .0
            .create_payment(&tenant, new, key.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreatePaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Reply<pb::GetPaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let payment_id = parse_payment_id(&request.get_ref().payment_id)?;
        let payment = self
            .0
            .get_payment(&tenant, &payment_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Reply<pb::ListPaymentsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let states = v.check(
            "states",
            parse_enum_list(&req.states, payment_state_from_pb),
        );
        let range = v.check(
            "create_time_range",
            parse_time_range(req.create_time_range.as_ref()),
        );
        let reference = if req.reference.is_empty() {
            None
        } else {
            v.check("reference", parse_text(&req.reference))
        };
        let last_four = req.card_last_four_digits.as_str();
        let four_digits = last_four.len() == 4 && last_four.bytes().all(|b| b.is_ascii_digit());
        if !last_four.is_empty() && !four_digits {
            v.add("card_last_four_digits", "must be four digits");
        }
        let filters = format!(
            "states={:?};reference={};range={:?};last4={}",
            req.states, req.reference, range, last_four
        );
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, &filters, PAYMENT_ID_PREFIX),
        );
        let (((states, (created_from, created_before)), page_size), cursor) =
            v.finish_with(states.zip(range).zip(page_size).zip(cursor))?;
        let filter = PaymentFilter {
            states,
            reference,
            created_from,
            created_before,
            card_last_four: (!last_four.is_empty()).then(|| last_four.to_owned()),
        };
        let page = self
            .0
            .list_payments(&tenant, &filter, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: page.items.iter().map(|p| self.payment_to_pb(p)).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }

    async fn capture_payment(
        &self,
        request: Request<pb::CapturePaymentRequest>,
    ) -> Reply<pb::CapturePaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let payment_id = parse_payment_id(&request.get_ref().payment_id)?;
        let payment = self
            .0
            .capture_payment(&tenant, &payment_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CapturePaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Reply<pb::CancelPaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let payment_id = parse_payment_id(&request.get_ref().payment_id)?;
        let payment = self
            .0
            .cancel_payment(&tenant, &payment_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CancelPaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn list_payment_events(
        &self,
        request: Request<pb::ListPaymentEventsRequest>,
    ) -> Reply<pb::ListPaymentEventsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id));
        let filters = format!("payment={}", req.payment_id);
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_page_token(&req.page_token, &filters).and_then(|c| {
                c.map(|c| {
                    c.parse::<i64>()
                        .map_err(|_| "is not a page token from a previous call".to_owned())
                })
                .transpose()
            }),
        );
        let ((payment_id, page_size), cursor) =
            v.finish_with(payment_id.zip(page_size).zip(cursor))?;
        let page = self
            .0
            .list_payment_events(&tenant, &payment_id, page_size, cursor)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPaymentEventsResponse {
            events: page.items.iter().map(event_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }

    async fn watch_payment_events(
        &self,
        request: Request<pb::WatchPaymentEventsRequest>,
    ) -> Reply<ServerStream<pb::WatchPaymentEventsResponse>> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let cursor = if req.cursor.is_empty() {
            Some(None)
        } else {
            v.check("cursor", parse_event_cursor(&req.cursor)).map(Some)
        };
        let types = v.check("types", parse_enum_list(&req.types, event_type_from_pb));
        let (cursor, types) = v.finish_with(cursor.zip(types))?;
        // Resolved before answering: every event recorded after the call
        // returns is streamed.
        let cursor = match cursor {
            Some(cursor) => cursor,
            None => self
                .0
                .current_event_cursor()
                .await
                .map_err(ApiError::from)?,
        };
        let (sink, events) = mpsc::channel(64);
        let service = self.0.clone();
        tokio::spawn(async move { service.watch_events(tenant, cursor, types, sink).await });
        let stream = ReceiverStream::new(events).map(|item| match item {
            Ok(event) => Ok(pb::WatchPaymentEventsResponse {
                event: Some(event_to_pb(&event)),
            }),
            Err(error) => Err(Status::from(ApiError::from(error))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn simulate_card_submission(
        &self,
        request: Request<pb::SimulateCardSubmissionRequest>,
    ) -> Reply<pb::SimulateCardSubmissionResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        if tenant.environment != Environment::Sandbox {
            return Err(ApiError::PermissionDenied(
                "SimulateCardSubmission is for sandbox callers only".to_owned(),
            )
            .into());
        }
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id));
        let number = v.check("card_number", CardNumber::parse(&req.card_number));
        let cvc = number
            .as_ref()
            .and_then(|n| v.check("cvc", Cvc::parse(&req.cvc, n.brand())));
        let expiry = match Expiry::parse(
            req.expiry_month,
            req.expiry_year,
            atiende_platform::storage::now_micros(),
        ) {
            Ok(expiry) => Some(expiry),
            Err((field, description)) => {
                v.add(field, description);
                None
            }
        };
        let name = v.check(
            "cardholder_name",
            parse_cardholder_name(&req.cardholder_name),
        );
        let card = number.zip(cvc).zip(expiry).zip(name).map(
            |(((number, cvc), expiry), cardholder_name)| CardSubmission {
                number,
                cvc,
                expiry,
                cardholder_name,
            },
        );
        if let Some(card) = &card
            && SandboxGateway::outcome(card).is_none()
        {
            v.add(
                "card_number",
                "is not a sandbox test card (see the SimulateCardSubmission documentation)",
            );
        }
        let (payment_id, card) = v.finish_with(payment_id.zip(card))?;
        let payment = self
            .0
            .simulate_card_submission(&tenant, &payment_id, &card)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SimulateCardSubmissionResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }
}

#[tonic::async_trait]
impl pb::refund_service_server::RefundService for RefundApi {
    async fn create_refund(
        &self,
        request: Request<pb::CreateRefundRequest>,
    ) -> Reply<pb::CreateRefundResponse> {
        let tenant = authorised(&request, Scope::PaymentsRefund)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id));
        let amount = match parse_money(req.amount.as_ref(), "amount", true) {
            Ok(m) => Some(m),
            Err(problems) => {
                add_all(&mut v, "", problems);
                None
            }
        };
        let available = match parse_money(
            req.refund_amount_available.as_ref(),
            "refund_amount_available",
            false,
        ) {
            Ok(m) => Some(m),
            Err(problems) => {
                add_all(&mut v, "", problems);
                None
            }
        };
        if req.reason.chars().count() > 255 || req.reason.chars().any(char::is_control) {
            v.add(
                "reason",
                "must be at most 255 characters, without control characters",
            );
        }
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let (((payment_id, amount), available), key) =
            v.finish_with(payment_id.zip(amount).zip(available).zip(key))?;
        let refund = self
            .0
            .create_refund(
                &tenant,
                &payment_id,
                amount,
                available,
                &req.reason,
                key.as_deref(),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateRefundResponse {
            refund: Some(refund_to_pb(&refund)),
        }))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Reply<pb::GetRefundResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let refund_id = parse_id(REFUND_ID_PREFIX, &request.get_ref().refund_id)
            .map_err(|e| ApiError::invalid("refund_id", e))?;
        let refund = self
            .0
            .get_refund(&tenant, &refund_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetRefundResponse {
            refund: Some(refund_to_pb(&refund)),
        }))
    }

    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Reply<pb::ListRefundsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = if req.payment_id.is_empty() {
            Some(None)
        } else {
            v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id))
                .map(Some)
        };
        let states = v.check("states", parse_enum_list(&req.states, refund_state_from_pb));
        let range = v.check(
            "create_time_range",
            parse_time_range(req.create_time_range.as_ref()),
        );
        let filters = format!(
            "payment={};states={:?};range={:?}",
            req.payment_id, req.states, range
        );
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, &filters, REFUND_ID_PREFIX),
        );
        let ((((payment_id, states), (created_from, created_before)), page_size), cursor) =
            v.finish_with(payment_id.zip(states).zip(range).zip(page_size).zip(cursor))?;
        let filter = RefundFilter {
            payment_id,
            states,
            created_from,
            created_before,
        };
        let page = self
            .0
            .list_refunds(&tenant, &filter, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListRefundsResponse {
            refunds: page.items.iter().map(refund_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }
}

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for LedgerApi {
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Reply<pb::GetBalanceResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let currency = if req.currency_code.is_empty() {
            Some(None)
        } else {
            v.check("currency_code", Currency::parse(&req.currency_code))
                .map(Some)
        };
        let as_of = match req.as_of_time.as_ref() {
            None => Some(None),
            Some(t) => v.check("as_of_time", timestamp_to_micros(t)).map(Some),
        };
        let (currency, as_of) = v.finish_with(currency.zip(as_of))?;
        let (balances, as_of) = self
            .0
            .get_balance(&tenant, currency, as_of)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetBalanceResponse {
            balances: balances
                .iter()
                .map(|b| pb::AccountBalance {
                    account: account_to_pb(b.account).into(),
                    balance: Some(money_to_pb(b.balance)),
                })
                .collect(),
            as_of_time: Some(timestamp(as_of)),
        }))
    }

    async fn export_transactions(
        &self,
        request: Request<pb::ExportTransactionsRequest>,
    ) -> Reply<ServerStream<pb::ExportTransactionsResponse>> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let range = v.check(
            "posting_time_range",
            parse_time_range(req.posting_time_range.as_ref()),
        );
        let currency = if req.currency_code.is_empty() {
            Some(None)
        } else {
            v.check("currency_code", Currency::parse(&req.currency_code))
                .map(Some)
        };
        let ((from, end), currency) = v.finish_with(range.zip(currency))?;
        // Entries posted after the call started are not included.
        let before =
            end.unwrap_or_else(|| atiende_platform::storage::now_micros().saturating_add(1));
        let (sink, chunks) = mpsc::channel(4);
        let service = self.0.clone();
        tokio::spawn(async move {
            let mut cursor = None;
            loop {
                let chunk = service
                    .export_chunk(&tenant, currency, from, before, cursor.as_ref())
                    .await;
                let (entries, next) = match chunk {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        let _ = sink.send(Err(Status::from(ApiError::from(error)))).await;
                        return;
                    }
                };
                if !entries.is_empty() {
                    let response = pb::ExportTransactionsResponse {
                        entries: entries.iter().map(entry_to_pb).collect(),
                    };
                    if sink.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                match next {
                    Some(next) => cursor = Some(next),
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(chunks))))
    }
}

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookApi {
    async fn create_webhook_endpoint(
        &self,
        request: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Reply<pb::CreateWebhookEndpointResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let url = v.check("url", parse_return_url(&req.url, tenant.environment));
        let types = v.check(
            "event_types",
            parse_enum_list(&req.event_types, event_type_from_pb),
        );
        if req.description.chars().count() > 255 || req.description.chars().any(char::is_control) {
            v.add(
                "description",
                "must be at most 255 characters, without control characters",
            );
        }
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let ((url, mut types), key) = v.finish_with(url.zip(types).zip(key))?;
        types.sort_by_key(|t| t.as_str());
        types.dedup();
        let (endpoint, secret) = self
            .0
            .create_webhook_endpoint(&tenant, url, types, req.description, key.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateWebhookEndpointResponse {
            webhook_endpoint: Some(endpoint_to_pb(&endpoint)),
            signing_secret: secret,
        }))
    }

    async fn list_webhook_endpoints(
        &self,
        request: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Reply<pb::ListWebhookEndpointsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, "", WEBHOOK_ENDPOINT_ID_PREFIX),
        );
        let (page_size, cursor) = v.finish_with(page_size.zip(cursor))?;
        let page = self
            .0
            .list_webhook_endpoints(&tenant, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListWebhookEndpointsResponse {
            webhook_endpoints: page.items.iter().map(endpoint_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, ""))
                .unwrap_or_default(),
        }))
    }

    async fn delete_webhook_endpoint(
        &self,
        request: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Reply<pb::DeleteWebhookEndpointResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let id = parse_id(
            WEBHOOK_ENDPOINT_ID_PREFIX,
            &request.get_ref().webhook_endpoint_id,
        )
        .map_err(|e| ApiError::invalid("webhook_endpoint_id", e))?;
        self.0
            .delete_webhook_endpoint(&tenant, &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteWebhookEndpointResponse {}))
    }
}

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
