//! `TestApp`: a notifications server on port 0 with a fresh database.

use atiende_notifications::Notifications;
use atiende_platform::auth::{Environment, Scope};
use atiende_platform::config::GrpcConfig;
use atiende_platform::server::{GrpcServices, ShutdownTrigger, serve_grpc, shutdown_channel};
use atiende_platform::storage::Database;
use atiende_platform::testing;
use atiende_proto::notifications::v1 as pb;
use pb::template_service_client::TemplateServiceClient;
use tonic::transport::Channel;

pub use atiende_platform::harness::{Engine, authed, violated_fields};

pub const PG_PREFIX: &str = "atiende_test_notifications";

pub struct TestApp {
    pub channel: Channel,
    trigger: ShutdownTrigger,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("atiende-ntf-{:032x}", rand::random::<u128>()));
        let url = engine.database_url(PG_PREFIX, &dir).await?;
        let db = Database::connect(&url, 8).await?;
        db.migrate(&atiende_notifications::store::MIGRATIONS)
            .await?;
        let config = GrpcConfig::default();
        let service = Notifications::with_database(db, config.max_message_bytes);
        let mut services = GrpcServices::new();
        service.register(&mut services);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (trigger, shutdown) = shutdown_channel();
        tokio::spawn(async move {
            serve_grpc(listener, services, testing::verifier(), &config, shutdown).await
        });
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self { channel, trigger })
    }

    pub fn templates(&self) -> TemplateServiceClient<Channel> {
        TemplateServiceClient::new(self.channel.clone())
    }
}

/// A new agency's token with the given scopes.
pub fn agency_token(scopes: &[Scope]) -> (String, String) {
    let agency = atiende_platform::ids::new_id("agy");
    let token = testing::token(&agency, scopes, Environment::Sandbox);
    (agency, token)
}

pub fn email(name: &str, subject: &str, body: &str) -> pb::CreateTemplateRequest {
    pb::CreateTemplateRequest {
        name: name.into(),
        description: String::new(),
        channel: pb::Channel::Email.into(),
        subject: subject.into(),
        body: body.into(),
        idempotency_key: String::new(),
    }
}

pub fn sms(name: &str, body: &str) -> pb::CreateTemplateRequest {
    pb::CreateTemplateRequest {
        channel: pb::Channel::Sms.into(),
        subject: String::new(),
        ..email(name, "", body)
    }
}

pub fn text(value: &str) -> pb::PersonalisationValue {
    pb::PersonalisationValue {
        kind: Some(pb::personalisation_value::Kind::Text(value.into())),
    }
}
