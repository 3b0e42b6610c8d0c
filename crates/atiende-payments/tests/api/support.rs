//! `TestApp`: a payments server on port 0 with a fresh database.

use std::collections::BTreeMap;
use std::time::Duration;

use atiende_payments::Payments;
use atiende_payments::config::PaymentsConfig;
use atiende_platform::auth::{Environment, Scope};

use atiende_platform::server::{
    GrpcServices, ShutdownTrigger, serve_grpc, serve_http, shutdown_channel,
};
use atiende_platform::storage::Database;
use atiende_platform::testing;
use atiende_proto::common::v1 as common;
use atiende_proto::payments::v1 as pb;
use pb::ledger_service_client::LedgerServiceClient;
use pb::payment_service_client::PaymentServiceClient;
use pb::refund_service_client::RefundServiceClient;
use tonic::transport::Channel;

pub use atiende_platform::harness::{Engine, authed, violated_fields};

pub const PG_PREFIX: &str = "atiende_test_payments";

pub const ALL: &[Scope] = &[
    Scope::PaymentsCreate,
    Scope::PaymentsRead,
    Scope::PaymentsRefund,
];

pub const VISA_OK: &str = "4242 4242 4242 4242";
pub const DECLINED: &str = "4000 0000 0000 0002";
pub const EXPIRED_CARD: &str = "4000 0000 0000 0069";
pub const WRONG_CVC: &str = "4000 0000 0000 0127";
pub const PROVIDER_ERROR: &str = "4000 0000 0000 0119";
pub const REFUNDS_FAIL: &str = "4000 0000 0000 5126";

pub struct TestApp {
    pub channel: Channel,
    pub payments: Payments,
    /// The database, to start another server on it (a restart).
    pub database_url: String,
    /// Where the payment page is served.
    pub public_url: String,
    trigger: ShutdownTrigger,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

/// The fee schedule of every test: 1.5 % plus 100 CLP or 0.30 USD.
pub fn test_config() -> PaymentsConfig {
    let mut config = PaymentsConfig::default();
    config.payments.terms.fee_percent = "1.5".to_owned();
    config.payments.terms.fee_fixed_minor =
        BTreeMap::from([("CLP".to_owned(), 100), ("USD".to_owned(), 30)]);
    config
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("atiende-pay-{:032x}", rand::random::<u128>()));
        let url = engine.database_url(PG_PREFIX, &dir).await?;
        Self::on_database(url).await
    }

    /// Stops this server and its pool, and starts a new one on the same
    /// database, as a restarted process would.
    pub async fn restart(self) -> anyhow::Result<Self> {
        let url = self.database_url.clone();
        self.trigger.trigger();
        self.payments.database().close().await;
        drop(self);
        Self::on_database(url).await
    }

    /// A second server on this one's database, as a deployment scaled out
    /// to two instances runs.
    pub async fn another_instance(&self) -> anyhow::Result<Self> {
        Self::on_database(self.database_url.clone()).await
    }

    async fn on_database(url: String) -> anyhow::Result<Self> {
        let db = Database::connect(&url, 8).await?;
        db.migrate(&atiende_payments::store::MIGRATIONS).await?;
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let mut config = test_config();
        config.http.public_url = format!("http://{}", http_listener.local_addr()?);
        let (trigger, shutdown) = shutdown_channel();
        let payments = Payments::with_database(db, &config, shutdown.clone())?;
        let mut services = GrpcServices::new();
        payments.register(&mut services);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let grpc = config.grpc.clone();
        let router = payments.http_router(testing::verifier());
        let http = config.http.clone();
        let http_shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_http(http_listener, router, &http, Duration::ZERO, http_shutdown).await
        });
        tokio::spawn(async move {
            serve_grpc(listener, services, testing::verifier(), &grpc, shutdown).await
        });
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            channel,
            payments,
            database_url: url,
            public_url: config.http.public_url.clone(),
            trigger,
        })
    }

    pub fn payments(&self) -> PaymentServiceClient<Channel> {
        PaymentServiceClient::new(self.channel.clone())
    }

    pub fn refunds(&self) -> RefundServiceClient<Channel> {
        RefundServiceClient::new(self.channel.clone())
    }

    pub fn ledger(&self) -> LedgerServiceClient<Channel> {
        LedgerServiceClient::new(self.channel.clone())
    }

    pub async fn create(&self, token: &str, request: pb::CreatePaymentRequest) -> pb::Payment {
        self.payments()
            .create_payment(authed(request, token))
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
    }

    pub async fn get(&self, token: &str, payment_id: &str) -> pb::Payment {
        self.payments()
            .get_payment(authed(
                pb::GetPaymentRequest {
                    payment_id: payment_id.into(),
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner()
            .payment
            .unwrap()
    }

    pub async fn simulate(
        &self,
        token: &str,
        payment_id: &str,
        card_number: &str,
    ) -> Result<pb::Payment, tonic::Status> {
        self.payments()
            .simulate_card_submission(authed(card(payment_id, card_number), token))
            .await
            .map(|r| r.into_inner().payment.unwrap())
    }

    /// A new payment taken to SUCCESS with the Visa test card.
    pub async fn paid(&self, token: &str, amount: i64, currency: &str) -> pb::Payment {
        let payment = self.create(token, payment_request(amount, currency)).await;
        let paid = self
            .simulate(token, &payment.payment_id, VISA_OK)
            .await
            .unwrap();
        assert_eq!(paid.state(), pb::PaymentState::Success);
        paid
    }

    pub async fn refund(
        &self,
        token: &str,
        payment_id: &str,
        amount: i64,
        available: i64,
        currency: &str,
    ) -> Result<pb::Refund, tonic::Status> {
        self.refunds()
            .create_refund(authed(
                refund_request(payment_id, amount, available, currency),
                token,
            ))
            .await
            .map(|r| r.into_inner().refund.unwrap())
    }

    /// The agency's balances as (currency, account) → minor units.
    pub async fn balances(&self, token: &str) -> BTreeMap<(String, i32), i64> {
        self.ledger()
            .get_balance(authed(pb::GetBalanceRequest::default(), token))
            .await
            .unwrap()
            .into_inner()
            .balances
            .into_iter()
            .map(|b| {
                let money = b.balance.unwrap();
                ((money.currency_code, b.account), money.amount_minor)
            })
            .collect()
    }
}

/// A new sandbox agency's token with the given scopes.
pub fn agency_token(scopes: &[Scope]) -> (String, String) {
    let agency = atiende_platform::ids::new_id("agy");
    let token = testing::token(&agency, scopes, Environment::Sandbox);
    (agency, token)
}

pub fn money(amount_minor: i64, currency: &str) -> common::Money {
    common::Money {
        currency_code: currency.into(),
        amount_minor,
    }
}

pub fn payment_request(amount: i64, currency: &str) -> pb::CreatePaymentRequest {
    pb::CreatePaymentRequest {
        amount: Some(money(amount, currency)),
        reference: "EXP-2026-0001".into(),
        description: "Permiso de circulación".into(),
        return_url: "https://municipio.example.cl/pagos/vuelta".into(),
        metadata: [("tramite".to_owned(), "permiso".to_owned())].into(),
        language: pb::Language::Es.into(),
        delayed_capture: false,
        idempotency_key: String::new(),
    }
}

pub fn card(payment_id: &str, number: &str) -> pb::SimulateCardSubmissionRequest {
    let amex = number.replace(' ', "").starts_with("37");
    pb::SimulateCardSubmissionRequest {
        payment_id: payment_id.into(),
        card_number: number.into(),
        expiry_month: 12,
        expiry_year: 2099,
        cvc: if amex { "1234" } else { "123" }.into(),
        cardholder_name: "Ana Pérez".into(),
    }
}

pub fn refund_request(
    payment_id: &str,
    amount: i64,
    available: i64,
    currency: &str,
) -> pb::CreateRefundRequest {
    pb::CreateRefundRequest {
        payment_id: payment_id.into(),
        amount: Some(money(amount, currency)),
        refund_amount_available: Some(money(available, currency)),
        reason: "duplicate payment".into(),
        idempotency_key: String::new(),
    }
}

pub fn minor(money: &Option<common::Money>) -> i64 {
    money.as_ref().map_or(0, |m| m.amount_minor)
}
