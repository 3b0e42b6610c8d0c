//! `atiende-identity`: the identity service on its own (gRPC and HTTP).

use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Atiende identity service")]
struct Args {
    /// A TOML configuration file (also `ATIENDE_CONFIG`); `ATIENDE_*`
    /// variables override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config: atiende_identity::config::IdentityConfig =
        atiende_platform::config::load(args.config.as_deref())?;
    let _telemetry =
        atiende_platform::telemetry::init("atiende-identity", &config.telemetry, std::io::stdout)?;
    let (trigger, shutdown) = atiende_platform::server::shutdown_channel();
    trigger.trigger_on_signals();

    let identity = atiende_identity::Identity::open(config.clone(), shutdown.clone()).await?;
    let mut services = atiende_platform::server::GrpcServices::new();
    identity.register(&mut services);

    let grpc_listener = tokio::net::TcpListener::bind(config.grpc.listen_addr).await?;
    let http_listener = tokio::net::TcpListener::bind(config.http.listen_addr).await?;
    tracing::info!(grpc = %grpc_listener.local_addr()?, http = %http_listener.local_addr()?, "atiende-identity serving");
    let grpc = atiende_platform::server::serve_grpc(
        grpc_listener,
        services,
        identity.verifier(),
        &config.grpc,
        shutdown.clone(),
    );
    let http = atiende_platform::server::serve_http(
        http_listener,
        identity.http_router(),
        &config.http,
        config.grpc.drain_delay_ms,
        shutdown,
    );
    let (grpc, http) = tokio::join!(grpc, http);
    identity.close().await;
    grpc?;
    http?;
    Ok(())
}
