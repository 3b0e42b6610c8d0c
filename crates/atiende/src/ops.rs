//! Operator subcommands: migrations, bootstrapping the first agency, and
//! verifying the audit chain.

use atiende_identity::config::IdentityConfig;
use atiende_identity::domain::DisplayName;
use atiende_platform::auth::{Environment, Scope, ScopeSet};
use atiende_platform::server::shutdown_channel;
use atiende_platform::storage::Database;

/// A new agency and its administrator client; the secret is shown only here.
pub struct BootstrappedAgency {
    pub agency_id: String,
    pub client_id: String,
    pub client_secret: String,
    pub environment: Environment,
}

/// Creates an agency with an admin client holding every scope.
pub async fn create_agency(
    config: IdentityConfig,
    name: &str,
    operator: bool,
    environment: Environment,
) -> anyhow::Result<BootstrappedAgency> {
    let display_name = DisplayName::parse(name).map_err(|e| anyhow::anyhow!("--name {e}"))?;
    let (trigger, shutdown) = shutdown_channel();
    let identity = atiende_identity::Identity::open(config, shutdown).await?;
    let service = identity.service();
    let agency = service
        .bootstrap_agency(display_name.clone(), operator)
        .await?;
    let client_name =
        DisplayName::parse(&format!("{} admin", display_name.as_str())).unwrap_or(display_name);
    let (client, secret) = service
        .bootstrap_client(
            &agency.agency_id,
            client_name,
            Scope::ALL.into_iter().collect::<ScopeSet>(),
            environment,
        )
        .await?;
    trigger.trigger();
    Ok(BootstrappedAgency {
        agency_id: agency.agency_id,
        client_id: client.client_id,
        client_secret: secret.expose().to_owned(),
        environment,
    })
}

/// Applies one service's migrations to its configured database.
pub async fn migrate(service: &str, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (storage, migrations) = match service {
        "identity" => (
            atiende_platform::config::load::<IdentityConfig>(config)?.storage,
            atiende_identity::store::MIGRATIONS,
        ),
        "notifications" => (
            atiende_platform::config::load::<atiende_notifications::config::NotificationsConfig>(
                config,
            )?
            .storage,
            atiende_notifications::store::MIGRATIONS,
        ),
        "payments" => (
            atiende_platform::config::load::<atiende_payments::config::PaymentsConfig>(config)?
                .storage,
            atiende_payments::store::MIGRATIONS,
        ),
        other => anyhow::bail!("unknown service {other}: use identity, notifications or payments"),
    };
    let db = Database::for_service(&storage, service).await?;
    db.migrate(&migrations).await?;
    db.close().await;
    Ok(())
}

/// Verifies the identity service's audit chain in its configured database.
pub async fn verify_audit(
    config: Option<&std::path::Path>,
) -> anyhow::Result<atiende_identity::store::citizens::ChainReport> {
    let storage = atiende_platform::config::load::<IdentityConfig>(config)?.storage;
    let db = Database::for_service(&storage, atiende_identity::SERVICE_NAME).await?;
    let report = atiende_identity::store::citizens::verify_audit_chain(&db).await;
    db.close().await;
    Ok(report?)
}

/// Whether the gRPC health service at `addr` reports `service` as SERVING.
pub async fn healthcheck(addr: &str, service: &str) -> anyhow::Result<bool> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Endpoint::from_shared(addr.to_owned())?
        .connect_timeout(std::time::Duration::from_secs(3))
        .timeout(std::time::Duration::from_secs(3))
        .connect()
        .await?;
    let response = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?
        .into_inner();
    Ok(response.status == i32::from(ServingStatus::Serving))
}
