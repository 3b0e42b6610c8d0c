//! Atiende payments service.
//!
//! # Layout
//! - [`config`]: the service's configuration (fees, limits, job interval).
//! - [`domain`]: money and currencies, the payment state machine (as a
//!   table), cards, fees, ledger postings, payments and refunds.
//! - [`gateway`]: the card gateway trait and the sandbox gateway.
//! - [`service`]: what the service does, in domain terms.
//! - [`grpc`]: the gRPC adapter (the only module that knows prost types).
//! - [`http`]: the hosted payment page and the ledger's CSV export.
//! - [`store`]: the service's own database and migrations.
//! - [`webhook`]: webhook deliveries (the event's JSON, signing, HTTP).
//! - [`worker`]: background jobs (payment expiry, webhook deliveries).
//!
//! Architecture invariant: this crate depends on no other service's crate;
//! it shares only `atiende-proto` and `atiende-platform`.

pub mod config;
pub mod domain;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod service;
pub mod store;
pub mod webhook;
pub mod worker;

use std::sync::Arc;

use atiende_platform::auth::TokenVerifier;
use atiende_platform::server::{GrpcServices, Shutdown};
use atiende_platform::storage::Database;
use atiende_proto::payments::v1 as pb;

use crate::config::PaymentsConfig;
use crate::service::{PaymentsService, Retention, TermsBook};

pub const SERVICE_NAME: &str = "payments";

/// A running payments service.
#[derive(Clone)]
pub struct Payments {
    service: Arc<PaymentsService>,
    max_message_bytes: usize,
}

impl Payments {
    /// Connects to the service's database, applies its migrations and
    /// starts the expiry job. `shutdown` ends event streams (so that a
    /// draining server is not held open by them) and the job.
    pub async fn open(config: &PaymentsConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        let db = Database::for_service(&config.storage, SERVICE_NAME).await?;
        db.migrate(&store::MIGRATIONS).await?;
        let payments = Self::with_database(db, config, shutdown.clone())?;
        worker::spawn_expiry_job(
            payments.service.clone(),
            config.payments.expiry_interval_ms,
            shutdown.clone(),
        );
        worker::spawn_webhook_job(
            payments.service.clone(),
            config.payments.webhook_interval_ms,
            shutdown,
        );
        Ok(payments)
    }

    /// The service on an open, migrated database, without background jobs
    /// (tests drive them directly).
    pub fn with_database(
        db: Database,
        config: &PaymentsConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        let terms = TermsBook::from_settings(&config.payments)
            .map_err(|e| anyhow::anyhow!("invalid [payments] configuration: {e}"))?;
        let retention = Retention::from_settings(&config.payments)
            .map_err(|e| anyhow::anyhow!("invalid [payments] configuration: {e}"))?;
        Ok(Self {
            service: Arc::new(PaymentsService::new(
                db,
                terms,
                config.http.public_url.clone(),
                retention,
                shutdown,
            )?),
            max_message_bytes: config.grpc.max_message_bytes,
        })
    }

    pub fn service(&self) -> &Arc<PaymentsService> {
        &self.service
    }

    pub fn database(&self) -> &Database {
        &self.service.db
    }

    /// The HTTP routes, to serve at `http.public_url`: the hosted payment
    /// page, and the ledger's CSV export (authenticated by `verifier`).
    pub fn http_router(&self, verifier: Arc<TokenVerifier>) -> axum::Router {
        http::router(self.service.clone(), verifier)
    }

    /// Adds the service's gRPC services to a server.
    pub fn register(&self, services: &mut GrpcServices) {
        let limit = self.max_message_bytes;
        services
            .add(
                pb::payment_service_server::PaymentServiceServer::new(grpc::PaymentApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::refund_service_server::RefundServiceServer::new(grpc::RefundApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::ledger_service_server::LedgerServiceServer::new(grpc::LedgerApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::webhook_service_server::WebhookServiceServer::new(grpc::WebhookApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            );
    }
}
