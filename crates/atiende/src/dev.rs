//! `atiende dev`: identity, notifications and payments in one process, on
//! one gRPC address and one HTTP address, with SQLite files in a data
//! directory. On first start it creates a sandbox development agency and
//! client and keeps their credentials in the data directory, so that every
//! later start prints the same ones.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use atiende_identity::config::IdentityConfig;
use atiende_identity::domain::DisplayName;
use atiende_notifications::config::NotificationsConfig;
use atiende_payments::config::PaymentsConfig;
use atiende_platform::auth::{Environment, Scope, ScopeSet};
use atiende_platform::config::{GrpcConfig, HttpConfig, StorageConfig};
use atiende_platform::server::{GrpcServices, Shutdown, serve_grpc, serve_http};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const CREDENTIALS_FILE: &str = "dev-credentials.json";

/// Where `atiende dev` listens and keeps its files.
#[derive(Debug, Clone)]
pub struct DevOptions {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Live email goes to this SMTP server; unset, to files.
    pub smtp_url: Option<String>,
}

/// The development agency's client, as kept in the data directory.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevCredentials {
    pub agency_id: String,
    pub client_id: String,
    pub client_secret: String,
}

impl std::fmt::Debug for DevCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevCredentials")
            .field("agency_id", &self.agency_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// The running platform.
pub struct DevPlatform {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub issuer: String,
    pub credentials: DevCredentials,
    /// A token for the development client, ready to paste.
    pub access_token: String,
    pub identity: atiende_identity::Identity,
    /// Where sandbox email (and live email without an SMTP server) is
    /// written.
    pub outbox: PathBuf,
    /// Where live email goes, in words.
    pub email_destination: String,
    tasks: JoinHandle<anyhow::Result<()>>,
}

impl DevPlatform {
    /// Binds the listeners, opens the three services and starts serving.
    pub async fn start(options: DevOptions, shutdown: Shutdown) -> anyhow::Result<Self> {
        let grpc_listener = TcpListener::bind(options.grpc_addr)
            .await
            .with_context(|| format!("cannot listen on {}", options.grpc_addr))?;
        let http_listener = TcpListener::bind(options.http_addr)
            .await
            .with_context(|| format!("cannot listen on {}", options.http_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let public_url = format!("http://{http_addr}");

        let storage = StorageConfig {
            data_dir: options.data_dir.clone(),
            ..StorageConfig::default()
        };
        let grpc = GrpcConfig {
            listen_addr: grpc_addr,
            ..GrpcConfig::default()
        };
        let http_config = HttpConfig {
            listen_addr: http_addr,
            public_url,
            ..HttpConfig::default()
        };
        let identity_config = IdentityConfig {
            storage: storage.clone(),
            grpc: grpc.clone(),
            http: http_config.clone(),
            // The development agency is a sandbox operator.
            operators: atiende_identity::config::OperatorConfig {
                allow_sandbox: true,
            },
            ..IdentityConfig::default()
        };
        let issuer = identity_config.issuer();
        let identity = atiende_identity::Identity::open(identity_config, shutdown.clone()).await?;
        let mut notifications_config = NotificationsConfig {
            storage: storage.clone(),
            grpc: GrpcConfig {
                max_message_bytes: atiende_notifications::config::MAX_MESSAGE_BYTES,
                ..grpc.clone()
            },
            http: http_config.clone(),
            ..NotificationsConfig::default()
        };
        notifications_config.email.smtp_url = options.smtp_url.clone().map(Into::into);
        // Sandbox email is simulated; in development it is also written to
        // files, so it can be read. SMS goes to the log.
        notifications_config.delivery.sandbox_outbox = true;
        notifications_config.delivery.allow_insecure_callbacks = true;
        notifications_config.sms.providers =
            vec![atiende_notifications::config::SmsProviderConfig::Log { name: "log".into() }];
        let notifications =
            atiende_notifications::Notifications::open(&notifications_config).await?;
        let outbox = notifications.outbox().to_owned();
        let email_destination = notifications.email_destination();
        let payments = atiende_payments::Payments::open(
            &PaymentsConfig {
                storage,
                grpc: grpc.clone(),
                // The payment page is served on the same HTTP address.
                http: http_config.clone(),
                ..PaymentsConfig::default()
            },
            shutdown.clone(),
        )
        .await?;

        let credentials = dev_credentials(&identity, &options.data_dir).await?;
        // Email verification codes of self-registration: printed to the
        // log at once, and, once the servers answer, also sent through the
        // notifications API like any agency's email (the sandbox outbox).
        identity.set_email_codes(std::sync::Arc::new(
            atiende_identity::service::email_codes::LogEmailCodes,
        ));
        tokio::spawn(email_codes_through_notifications(
            identity.clone(),
            grpc_addr,
            credentials.clone(),
        ));
        let access_token = identity
            .service()
            .issue_token(&credentials.client_id, &credentials.client_secret, None)
            .await?
            .access_token;

        let mut services = GrpcServices::new();
        identity.register(&mut services);
        notifications.register(&mut services);
        payments.register(&mut services);
        let verifier = identity.verifier();
        let router = identity
            .http_router()
            .merge(notifications.http_router())
            .merge(payments.http_router(verifier.clone()));
        let delivery = notifications.start_delivery(shutdown.clone());
        let closing = identity.clone();
        let tasks = tokio::spawn(async move {
            let drain_delay = grpc.drain_delay_ms;
            let grpc = serve_grpc(grpc_listener, services, verifier, &grpc, shutdown.clone());
            let http = serve_http(http_listener, router, &http_config, drain_delay, shutdown);
            let (grpc, http) = tokio::join!(grpc, http);
            let _ = delivery.await;
            closing.close().await;
            notifications.database().close().await;
            payments.database().close().await;
            grpc?;
            http?;
            Ok(())
        });
        Ok(Self {
            grpc_addr,
            http_addr,
            issuer,
            credentials,
            access_token,
            identity,
            outbox,
            email_destination,
            tasks,
        })
    }

    /// Waits until the servers have stopped (after shutdown is triggered).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.tasks.await?
    }
}

/// Creates (idempotently) the development agency's email template for
/// verification codes, then sends codes through notifications as well as
/// to the log.
async fn email_codes_through_notifications(
    identity: atiende_identity::Identity,
    grpc_addr: SocketAddr,
    credentials: DevCredentials,
) {
    use atiende_identity::grpc::notifications::NotificationsEmailCodes;
    use atiende_identity::service::email_codes::{
        EmailCode, EmailCodeSender, LogEmailCodes, SendFuture,
    };
    use atiende_proto::notifications::v1 as notify;

    /// Both: the log, then notifications.
    struct Tee(NotificationsEmailCodes);
    impl EmailCodeSender for Tee {
        fn send<'a>(
            &'a self,
            service: &'a atiende_identity::service::IdentityService,
            code: EmailCode<'a>,
        ) -> SendFuture<'a> {
            Box::pin(async move {
                let logged = EmailCode {
                    to: code.to,
                    code: code.code,
                    locale: code.locale,
                };
                LogEmailCodes.send(service, logged).await?;
                self.0.send(service, code).await
            })
        }
    }

    let endpoint = format!("http://{grpc_addr}");
    let create = || async {
        let token = identity
            .service()
            .issue_token(&credentials.client_id, &credentials.client_secret, None)
            .await?
            .access_token;
        let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())?
            .connect()
            .await?;
        let mut request = tonic::Request::new(notify::CreateTemplateRequest {
            name: "Código de verificación".into(),
            description: "Email verification codes of self-registration (atiende dev)".into(),
            channel: notify::Channel::Email.into(),
            subject: "Su código de verificación / Your verification code".into(),
            body: "Su código de verificación de Atiende es ((code)). Vence en 15 minutos.\n\n\
                   Your Atiende verification code is ((code)). It expires in 15 minutes."
                .into(),
            idempotency_key: "atiende-dev-email-verification-code".into(),
        });
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let template = notify::template_service_client::TemplateServiceClient::new(channel)
            .create_template(request)
            .await?
            .into_inner()
            .template
            .context("no template")?;
        anyhow::Ok(template.template_id)
    };
    let mut attempts = 0;
    let template_id = loop {
        match create().await {
            Ok(id) => break id,
            Err(error) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(%error, "email code template not created yet");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(error) => {
                tracing::warn!(%error, "email codes go to the log only");
                return;
            }
        }
    };
    match NotificationsEmailCodes::new(
        &endpoint,
        credentials.client_id.clone(),
        credentials.client_secret.clone().into(),
        template_id,
    ) {
        Ok(sender) => identity.set_email_codes(std::sync::Arc::new(Tee(sender))),
        Err(error) => tracing::warn!(%error, "email codes go to the log only"),
    }
}

/// The credentials kept in the data directory if they still work; otherwise
/// a new sandbox operator agency with a client holding every scope.
async fn dev_credentials(
    identity: &atiende_identity::Identity,
    data_dir: &Path,
) -> anyhow::Result<DevCredentials> {
    let path = data_dir.join(CREDENTIALS_FILE);
    let saved = std::fs::read_to_string(&path)
        .ok()
        .and_then(|text| serde_json::from_str::<DevCredentials>(&text).ok());
    if let Some(saved) = saved {
        let works = identity
            .service()
            .issue_token(&saved.client_id, &saved.client_secret, None)
            .await
            .is_ok();
        if works {
            return Ok(saved);
        }
    }
    let service = identity.service();
    let agency = service
        .bootstrap_agency(
            DisplayName::parse("Development agency").map_err(anyhow::Error::msg)?,
            true,
        )
        .await?;
    let (client, secret) = service
        .bootstrap_client(
            &agency.agency_id,
            DisplayName::parse("Development client").map_err(anyhow::Error::msg)?,
            Scope::ALL.into_iter().collect::<ScopeSet>(),
            Environment::Sandbox,
        )
        .await?;
    let credentials = DevCredentials {
        agency_id: agency.agency_id,
        client_id: client.client_id,
        client_secret: secret.expose().to_owned(),
    };
    write_private(&path, &serde_json::to_string_pretty(&credentials)?)?;
    Ok(credentials)
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    std::io::Write::write_all(&mut file, contents.as_bytes())
}
