//! Atiende payments service.
//!
//! # Layout
//! - [`config`]: the service's configuration.
//! - [`domain`]: money and currencies, the payment state machine (as a
//!   table), cards, fees, ledger postings, payments and refunds.
//! - [`grpc`]: the gRPC adapter (the only module that knows prost types).
//! - [`store`]: the service's own database and migrations.
//!
//! Architecture invariant: this crate depends on no other service's crate;
//! it shares only `atiende-proto` and `atiende-platform`.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod store;

use atiende_platform::server::GrpcServices;
use atiende_platform::storage::Database;
use atiende_proto::payments::v1 as pb;

use crate::config::PaymentsConfig;

pub const SERVICE_NAME: &str = "payments";

/// A running payments service.
#[derive(Clone)]
pub struct Payments {
    db: Database,
    max_message_bytes: usize,
}

impl Payments {
    /// Connects to the service's database and applies its migrations.
    pub async fn open(config: &PaymentsConfig) -> anyhow::Result<Self> {
        let db = Database::for_service(&config.storage, SERVICE_NAME).await?;
        db.migrate(&store::MIGRATIONS).await?;
        Ok(Self {
            db,
            max_message_bytes: config.grpc.max_message_bytes,
        })
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Adds the service's gRPC services to a server.
    pub fn register(&self, services: &mut GrpcServices) {
        let limit = self.max_message_bytes;
        services
            .add(
                pb::payment_service_server::PaymentServiceServer::new(grpc::PaymentApi)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add(
                pb::refund_service_server::RefundServiceServer::new(grpc::RefundApi)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add(
                pb::ledger_service_server::LedgerServiceServer::new(grpc::LedgerApi)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            )
            .add(
                pb::webhook_service_server::WebhookServiceServer::new(grpc::WebhookApi)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            );
    }
}
