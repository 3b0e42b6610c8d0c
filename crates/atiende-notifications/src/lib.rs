//! Atiende notifications service.
//!
//! # Layout
//! - [`config`]: the service's configuration.
//! - [`domain`]: templates, personalisation, email and SMS rendering.
//! - [`service`]: what the service does, in domain terms.
//! - [`grpc`]: the gRPC adapter (the only module that knows prost types).
//! - [`store`]: the service's own database and migrations.
//!
//! Architecture invariant: this crate depends on no other service's crate;
//! it shares only `atiende-proto` and `atiende-platform`.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod service;
pub mod store;

use std::sync::Arc;

use atiende_platform::server::GrpcServices;
use atiende_platform::storage::Database;
use atiende_proto::notifications::v1 as pb;

use crate::config::NotificationsConfig;

pub const SERVICE_NAME: &str = "notifications";

/// A running notifications service.
#[derive(Clone)]
pub struct Notifications {
    service: Arc<service::NotificationsService>,
    max_message_bytes: usize,
}

impl Notifications {
    /// Connects to the service's database and applies its migrations.
    pub async fn open(config: &NotificationsConfig) -> anyhow::Result<Self> {
        let db = Database::for_service(&config.storage, SERVICE_NAME).await?;
        db.migrate(&store::MIGRATIONS).await?;
        Ok(Self::with_database(db, config.grpc.max_message_bytes))
    }

    /// The service on an open, migrated database.
    pub fn with_database(db: Database, max_message_bytes: usize) -> Self {
        Self {
            service: Arc::new(service::NotificationsService { db }),
            max_message_bytes,
        }
    }

    pub fn database(&self) -> &Database {
        &self.service.db
    }

    /// Adds the service's gRPC services to a server.
    pub fn register(&self, services: &mut GrpcServices) {
        let limit = self.max_message_bytes;
        services
            .add(
                pb::template_service_server::TemplateServiceServer::new(grpc::TemplateApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::notification_service_server::NotificationServiceServer::new(
                    grpc::NotificationApi,
                )
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::callback_service_server::CallbackServiceServer::new(grpc::CallbackApi)
                    .max_decoding_message_size(limit)
                    .max_encoding_message_size(limit),
            );
    }
}
