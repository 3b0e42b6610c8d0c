//! `atiende`: run the whole platform for development, or operate it.

use std::net::SocketAddr;
use std::path::PathBuf;

use atiende::dev::{DevOptions, DevPlatform};
use atiende_platform::auth::Environment;
use atiende_platform::telemetry::TelemetryConfig;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    version,
    about = "Atiende: identity, notifications and payments for government agencies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run identity, notifications and payments in one process, on SQLite.
    Dev {
        /// Where the SQLite files, keys and dev credentials live.
        #[arg(long, env = "ATIENDE_DATA_DIR", default_value = ".atiende")]
        data_dir: PathBuf,
        /// The gRPC address of all three services.
        #[arg(long, env = "ATIENDE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
        grpc_addr: SocketAddr,
        /// The HTTP address (OAuth token endpoint, JWKS, pages).
        #[arg(long, env = "ATIENDE_HTTP_ADDR", default_value = "127.0.0.1:8080")]
        http_addr: SocketAddr,
        /// Send live email to this SMTP server (e.g. smtp://127.0.0.1:1025);
        /// unset, live email is written to files like sandbox email.
        #[arg(long, env = "ATIENDE_SMTP_URL")]
        smtp_url: Option<String>,
    },
    /// Create an agency and its administrator client; prints the client
    /// secret once. Use it to bootstrap the first (operator) agency.
    CreateAgency {
        /// The agency's display name.
        #[arg(long)]
        name: String,
        /// Operator agencies may create agencies and rotate signing keys.
        #[arg(long)]
        operator: bool,
        /// The admin client's environment: sandbox or live.
        #[arg(long, default_value = "live")]
        environment: String,
        /// The identity service's configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Ask a server's gRPC health service; exits non-zero unless SERVING.
    /// For container healthchecks (Kubernetes has native gRPC probes).
    Healthcheck {
        /// The server's gRPC address.
        #[arg(long, default_value = "http://127.0.0.1:50051")]
        addr: String,
        /// The service to ask about; empty means the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// The identity service's audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Apply a service's database migrations.
    Migrate {
        /// identity, notifications or payments.
        #[arg(long)]
        service: String,
        /// The service's configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check the hash chain of the audit log from its first entry; exits
    /// non-zero and names the first broken link if an entry was altered,
    /// inserted or removed.
    Verify {
        /// The identity service's configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Dev {
            data_dir,
            grpc_addr,
            http_addr,
            smtp_url,
        } => {
            let _telemetry = atiende_platform::telemetry::init(
                "atiende",
                &TelemetryConfig::default(),
                std::io::stdout,
            )?;
            let (trigger, shutdown) = atiende_platform::server::shutdown_channel();
            trigger.trigger_on_signals();
            let platform = DevPlatform::start(
                DevOptions {
                    data_dir: data_dir.clone(),
                    grpc_addr,
                    http_addr,
                    smtp_url,
                },
                shutdown,
            )
            .await?;
            print_banner(&platform, &data_dir);
            platform.wait().await
        }
        Command::CreateAgency {
            name,
            operator,
            environment,
            config,
        } => {
            let environment = Environment::parse(&environment)
                .ok_or_else(|| anyhow::anyhow!("--environment must be sandbox or live"))?;
            let config = atiende_platform::config::load(config.as_deref())?;
            let created = atiende::ops::create_agency(config, &name, operator, environment).await?;
            println!("agency_id:     {}", created.agency_id);
            println!("client_id:     {}", created.client_id);
            println!("client_secret: {}", created.client_secret);
            println!("environment:   {}", created.environment.as_str());
            println!("\nThe secret is shown only now and stored only as a hash: keep it safe.");
            Ok(())
        }
        Command::Healthcheck { addr, service } => {
            let serving = atiende::ops::healthcheck(&addr, &service).await?;
            println!("{}", if serving { "SERVING" } else { "NOT_SERVING" });
            if serving {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => {
            let report = atiende::ops::verify_audit(config.as_deref()).await?;
            match report.broken {
                None => {
                    println!("audit chain verified: {} entries", report.verified);
                    Ok(())
                }
                Some(broken) => {
                    println!(
                        "audit chain broken at {broken} ({} entries verified before it)",
                        report.verified
                    );
                    std::process::exit(1)
                }
            }
        }
        Command::Migrate { service, config } => {
            atiende::ops::migrate(&service, config.as_deref()).await?;
            println!("{service}: migrations applied");
            Ok(())
        }
    }
}

fn print_banner(platform: &DevPlatform, data_dir: &std::path::Path) {
    let grpc = platform.grpc_addr;
    let http = platform.http_addr;
    let c = &platform.credentials;
    println!(
        r#"
Atiende dev is running (sandbox; SQLite files in {data_dir})

  gRPC   {grpc}   identity, notifications, payments (+ health, reflection)
  HTTP   http://{http}   OAuth token endpoint, JWKS, discovery, SMS receipts

Email: sandbox email is simulated and also written to {outbox}/<id>.eml;
       live email goes to {email}. SMS goes to the log.

Development agency (operator, sandbox):
  agency_id      {agency}
  client_id      {client}
  client_secret  {secret}

A token, valid for 10 minutes:
  export ATIENDE_TOKEN={token}

Try it:
  grpcurl -plaintext {grpc} list
  grpcurl -plaintext -H "authorization: Bearer $ATIENDE_TOKEN" {grpc} atiende.identity.v1.AgencyService/GetAgency
  grpcurl -plaintext -H "authorization: Bearer $ATIENDE_TOKEN" -d '{{"token": "'$ATIENDE_TOKEN'"}}' {grpc} atiende.identity.v1.TokenService/IntrospectToken
  buf curl --protocol grpc --http2-prior-knowledge -H "authorization: Bearer $ATIENDE_TOKEN" http://{grpc}/atiende.identity.v1.AgencyService/ListClients

A fresh token:
  curl -s -u {client}:{secret} -d grant_type=client_credentials http://{http}/oauth2/token

Stop with Ctrl-C.
"#,
        data_dir = data_dir.display(),
        agency = c.agency_id,
        client = c.client_id,
        secret = c.client_secret,
        token = platform.access_token,
        outbox = platform.outbox.display(),
        email = platform.email_destination,
    );
}
