//! `atiende-notifications`: the notifications service on its own.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Atiende notifications service")]
struct Args {
    /// A TOML configuration file (also `ATIENDE_CONFIG`); `ATIENDE_*`
    /// variables override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: atiende_notifications::config::NotificationsConfig =
        atiende_platform::config::load(args.config.as_deref())?;
    let _telemetry = atiende_platform::telemetry::init(
        "atiende-notifications",
        &config.telemetry,
        std::io::stdout,
    )?;
    let verifier = std::sync::Arc::new(atiende_platform::auth::TokenVerifier::from_config(
        &config.auth,
    )?);
    let service = atiende_notifications::Notifications::open(&config).await?;
    let mut services = atiende_platform::server::GrpcServices::new();
    service.register(&mut services);

    let (trigger, shutdown) = atiende_platform::server::shutdown_channel();
    trigger.trigger_on_signals();
    let listener = tokio::net::TcpListener::bind(config.grpc.listen_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen_addr).await?;
    tracing::info!(
        grpc = %listener.local_addr()?,
        http = %http_listener.local_addr()?,
        email = %service.email_destination(),
        "atiende-notifications serving"
    );
    let delivery = service.start_delivery(shutdown.clone());
    let grpc = atiende_platform::server::serve_grpc(
        listener,
        services,
        verifier,
        &config.grpc,
        shutdown.clone(),
    );
    let http = atiende_platform::server::serve_http(
        http_listener,
        service.http_router(),
        &config.http,
        config.grpc.drain_delay_ms,
        shutdown,
    );
    let (grpc, http) = tokio::join!(grpc, http);
    let _ = delivery.await;
    service.database().close().await;
    grpc?;
    Ok(http?)
}
