//! Atiende notifications service.
//!
//! # Layout
//! - [`config`]: the service's configuration.
//! - [`domain`]: templates, personalisation, email and SMS rendering,
//!   notification statuses and recipients.
//! - [`service`] and [`sending`]: what the service does, in domain terms.
//! - [`delivery`]: the queue workers, SMTP and SMS providers, callbacks,
//!   retention.
//! - [`grpc`]: the gRPC adapter (the only module that knows prost types).
//! - [`http`]: SMS providers' delivery receipts.
//! - [`store`]: the service's own database and migrations.
//!
//! Architecture invariant: this crate depends on no other service's crate;
//! it shares only `atiende-proto` and `atiende-platform`.

pub mod config;
pub mod delivery;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod sending;
pub mod service;
pub mod store;

use std::sync::Arc;

use atiende_platform::server::{GrpcServices, Shutdown};
use atiende_platform::storage::Database;
use atiende_proto::notifications::v1 as pb;

use crate::config::NotificationsConfig;
use crate::delivery::sms::ProviderChain;
use crate::delivery::{Deliverer, Signals};

pub const SERVICE_NAME: &str = "notifications";

/// A running notifications service.
#[derive(Clone)]
pub struct Notifications {
    service: Arc<service::NotificationsService>,
    deliverer: Arc<Deliverer>,
    max_message_bytes: usize,
    allow_insecure_callbacks: bool,
}

impl Notifications {
    /// Connects to the service's database and applies its migrations.
    pub async fn open(config: &NotificationsConfig) -> anyhow::Result<Self> {
        let db = Database::for_service(&config.storage, SERVICE_NAME).await?;
        db.migrate(&store::MIGRATIONS).await?;
        Self::with_database(db, config)
    }

    /// The service on an open, migrated database.
    pub fn with_database(db: Database, config: &NotificationsConfig) -> anyhow::Result<Self> {
        let sms = ProviderChain::from_config(
            &config.sms.providers,
            &config.http.public_url,
            config.email.timeout_ms,
        )?;
        Self::with_parts(db, config, sms)
    }

    /// As [`Notifications::with_database`], with SMS providers given as
    /// code (tests, custom providers).
    pub fn with_parts(
        db: Database,
        config: &NotificationsConfig,
        sms: ProviderChain,
    ) -> anyhow::Result<Self> {
        let signals = Arc::new(Signals::default());
        let email =
            delivery::email::EmailSender::from_config(&config.email, &config.storage.data_dir)?;
        let service = Arc::new(service::NotificationsService {
            db: db.clone(),
            signals: signals.clone(),
            limits: config.limits.clone(),
            limiter: sending::RateLimiter::new(config.limits.sends_per_minute),
            default_sender_id: config.sms.default_sender_id.clone(),
            sender_ids: config.sms.sender_ids.clone(),
            writer: sending::SendWriter::start(db.clone()),
            template_cache: sending::TemplateCache::default(),
        });
        let deliverer = Arc::new(Deliverer {
            finisher: delivery::Finisher::start(db.clone()),
            db,
            email,
            sms,
            config: config.delivery.clone(),
            signals,
            http: atiende_platform::net::endpoint_client(
                config.delivery.callback_timeout_ms,
                true,
            )?,
            sandbox_http: atiende_platform::net::endpoint_client(
                config.delivery.callback_timeout_ms,
                false,
            )?,
            public_url: config.http.public_url.clone(),
        });
        Ok(Self {
            service,
            deliverer,
            max_message_bytes: config.grpc.max_message_bytes,
            allow_insecure_callbacks: config.delivery.allow_insecure_callbacks,
        })
    }

    pub fn database(&self) -> &Database {
        &self.service.db
    }

    /// Where live email goes, for start-up banners.
    pub fn email_destination(&self) -> String {
        self.deliverer.email.describe()
    }

    /// Where `.eml` files are written.
    pub fn outbox(&self) -> &std::path::Path {
        self.deliverer.email.outbox()
    }

    /// Starts the delivery workers, callbacks and retention; they stop, after
    /// finishing what they hold, on shutdown.
    pub fn start_delivery(&self, shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.deliverer.clone().run(shutdown))
    }

    /// The delivery side, for tests that drive it directly.
    pub fn deliverer(&self) -> &Arc<Deliverer> {
        &self.deliverer
    }

    /// HTTP routes: SMS providers' delivery receipts.
    pub fn http_router(&self) -> axum::Router {
        http::router(self.deliverer.clone())
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
                    grpc::NotificationApi {
                        service: self.service.clone(),
                        poll_interval: self.deliverer.config.poll_interval_ms,
                    },
                )
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::callback_service_server::CallbackServiceServer::new(grpc::CallbackApi {
                    service: self.service.clone(),
                    allow_insecure: self.allow_insecure_callbacks,
                })
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            );
    }
}
