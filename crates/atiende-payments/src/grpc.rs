//! The gRPC adapter. The payments RPCs land with the payments issue (lifecycle, hosted page, refunds, ledger, webhooks);
//! until then every RPC answers UNIMPLEMENTED, after authentication, so
//! callers can already obtain tokens and wire their clients.

use atiende_proto::payments::v1 as pb;

#[derive(Clone)]
pub struct PaymentApi;
#[derive(Clone)]
pub struct RefundApi;
#[derive(Clone)]
pub struct LedgerApi;
#[derive(Clone)]
pub struct WebhookApi;

impl pb::payment_service_server::PaymentService for PaymentApi {}
impl pb::refund_service_server::RefundService for RefundApi {}
impl pb::ledger_service_server::LedgerService for LedgerApi {}
impl pb::webhook_service_server::WebhookService for WebhookApi {}
