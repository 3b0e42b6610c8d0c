//! `atiende-payments`: the payments service on its own.

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Atiende payments service")]
struct Args {
    /// A TOML configuration file (also `ATIENDE_CONFIG`); `ATIENDE_*`
    /// variables override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: atiende_payments::config::PaymentsConfig =
        atiende_platform::config::load(args.config.as_deref())?;
    let _telemetry =
        atiende_platform::telemetry::init("atiende-payments", &config.telemetry, std::io::stdout)?;
    let verifier = std::sync::Arc::new(atiende_platform::auth::TokenVerifier::from_config(
        &config.auth,
    )?);
    let (trigger, shutdown) = atiende_platform::server::shutdown_channel();
    trigger.trigger_on_signals();
    let service = atiende_payments::Payments::open(&config, shutdown.clone()).await?;
    let mut services = atiende_platform::server::GrpcServices::new();
    service.register(&mut services);

    let listener = tokio::net::TcpListener::bind(config.grpc.listen_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "atiende-payments serving gRPC");
    tracing::info!(
        addr = %http_listener.local_addr()?,
        public_url = %config.http.public_url,
        "atiende-payments serving the payment page"
    );
    let router = service.http_router(verifier.clone());
    let grpc = atiende_platform::server::serve_grpc(
        listener,
        services,
        verifier,
        &config.grpc,
        shutdown.clone(),
    );
    let http = atiende_platform::server::serve_http(
        http_listener,
        router,
        &config.http,
        config.grpc.drain_delay_ms,
        shutdown,
    );
    let (grpc, http) = tokio::join!(grpc, http);
    service.database().close().await;
    grpc?;
    Ok(http?)
}
