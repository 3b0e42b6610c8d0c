//! `TestApp`: an identity server on port 0 with a fresh database, an
//! operator agency, and typed helpers.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use atiende_identity::Identity;
use atiende_identity::config::{CitizenConfig, IdentityConfig, TokenConfig};
use atiende_identity::domain::DisplayName;
use atiende_identity::keys::KeyEncryptionKey;
use atiende_platform::auth::{Environment, Scope, ScopeSet};
use atiende_platform::config::{GrpcConfig, HttpConfig, StorageConfig};
use atiende_platform::server::{
    GrpcServices, ShutdownTrigger, serve_grpc, serve_http, shutdown_channel,
};
use atiende_platform::storage::Database;
use atiende_proto::identity::v1 as pb;
use pb::agency_service_client::AgencyServiceClient;
use pb::citizen_service_client::CitizenServiceClient;
use pb::token_service_client::TokenServiceClient;
use tonic::transport::Channel;

pub use atiende_platform::harness::{Engine, authed, violated_fields};

pub const PG_PREFIX: &str = "atiende_test_identity";

/// Everything every server in this binary logs, at debug level.
pub fn captured_logs() -> String {
    let buffer = log_buffer().lock().unwrap();
    String::from_utf8_lossy(&buffer).into_owned()
}

fn log_buffer() -> &'static Arc<Mutex<Vec<u8>>> {
    static BUFFER: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUFFER.get_or_init(|| Arc::new(Mutex::new(Vec::new())))
}

#[derive(Clone)]
struct CaptureWriter {
    echo: bool,
}

impl Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        log_buffer().lock().unwrap().extend_from_slice(buf);
        if self.echo {
            std::io::stderr().write_all(buf)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the global subscriber: debug level, JSON lines, into the
/// capture buffer (and stderr with `TEST_LOG`).
pub fn install_log_capture() {
    let echo = std::env::var_os("TEST_LOG").is_some();
    let config = atiende_platform::telemetry::TelemetryConfig {
        log_format: atiende_platform::telemetry::LogFormat::Json,
        log_filter: "debug,h2=info,hyper=info,hyper_util=info,tower=info,sqlx=debug".to_owned(),
    };
    let guard = atiende_platform::telemetry::init("identity-tests", &config, move || {
        CaptureWriter { echo }
    })
    .unwrap();
    std::mem::forget(guard);
}

/// A client's credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub agency_id: String,
    pub client_id: String,
    pub client_secret: String,
}

pub struct TestApp {
    pub http_addr: SocketAddr,
    /// The app's database, for tests that play another instance.
    pub database_url: String,
    pub identity: Identity,
    pub operator: Credentials,
    pub channel: Channel,
    /// Email verification codes "sent" by the login pages.
    pub mailbox: Arc<Mailbox>,
    trigger: ShutdownTrigger,
}

/// The test's stand-in for the email channel: codes by address.
#[derive(Default)]
pub struct Mailbox(Mutex<Vec<(String, String)>>);

impl Mailbox {
    /// The last code sent to the address.
    pub fn code_for(&self, email: &str) -> Option<String> {
        let sent = self.0.lock().unwrap();
        sent.iter()
            .rev()
            .find(|(to, _)| to == email)
            .map(|(_, code)| code.clone())
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

impl atiende_identity::service::email_codes::EmailCodeSender for Mailbox {
    fn send<'a>(
        &'a self,
        _service: &'a atiende_identity::service::IdentityService,
        code: atiende_identity::service::email_codes::EmailCode<'a>,
    ) -> atiende_identity::service::email_codes::SendFuture<'a> {
        self.0
            .lock()
            .unwrap()
            .push((code.to.as_str().to_owned(), code.code.to_owned()));
        Box::pin(async { Ok(()) })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

/// Options that tests vary.
pub struct AppOptions {
    pub next_key_lead: Duration,
    pub citizens: CitizenConfig,
}

impl Default for AppOptions {
    fn default() -> Self {
        Self {
            next_key_lead: Duration::from_secs(900),
            citizens: CitizenConfig::default(),
        }
    }
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> anyhow::Result<Self> {
        Self::spawn_with(engine, AppOptions::default()).await
    }

    pub async fn spawn_with(engine: Engine, options: AppOptions) -> anyhow::Result<Self> {
        let data_dir = std::env::temp_dir().join(format!("atiende-test-{}", uuid_like()));
        let database_url = engine.database_url(PG_PREFIX, &data_dir).await?;
        let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let grpc_addr = grpc_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let config = IdentityConfig {
            storage: StorageConfig {
                data_dir,
                database_url: Some(database_url.clone().into()),
                max_connections: 8,
            },
            grpc: GrpcConfig {
                listen_addr: grpc_addr,
                ..GrpcConfig::default()
            },
            http: HttpConfig {
                listen_addr: http_addr,
                public_url: format!("http://{http_addr}"),
                ..HttpConfig::default()
            },
            tokens: TokenConfig {
                key_encryption_key: Some(KeyEncryptionKey::generate_base64()?),
                next_key_lead_ms: options.next_key_lead,
                key_reload_interval_ms: Duration::from_millis(200),
                revocation_poll_interval_ms: Duration::from_millis(200),
                ..TokenConfig::default()
            },
            citizens: options.citizens,
            ..IdentityConfig::default()
        };
        let (trigger, shutdown) = shutdown_channel();
        let db = Database::connect(&database_url, 8).await?;
        db.migrate(&atiende_identity::store::MIGRATIONS).await?;
        let identity = Identity::open_with(db, config.clone(), shutdown.clone()).await?;
        let mailbox = Arc::new(Mailbox::default());
        identity.set_email_codes(mailbox.clone());
        let mut services = GrpcServices::new();
        identity.register(&mut services);
        let verifier = identity.verifier();
        let grpc_config = config.grpc.clone();
        let grpc_shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_grpc(
                grpc_listener,
                services,
                verifier,
                &grpc_config,
                grpc_shutdown,
            )
            .await
        });
        let (router, http_config) = (identity.http_router(), config.http.clone());
        tokio::spawn(async move {
            serve_http(
                http_listener,
                router,
                &http_config,
                Duration::ZERO,
                shutdown,
            )
            .await
        });

        let service = identity.service();
        let agency = service
            .bootstrap_agency(DisplayName::parse("Operator agency").unwrap(), true)
            .await?;
        let (client, secret) = service
            .bootstrap_client(
                &agency.agency_id,
                DisplayName::parse("Operator admin").unwrap(),
                Scope::ALL.into_iter().collect(),
                Environment::Live,
            )
            .await?;
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))?
            .connect()
            .await?;
        Ok(Self {
            http_addr,
            database_url: database_url.clone(),
            identity: identity.clone(),
            mailbox,
            operator: Credentials {
                agency_id: agency.agency_id,
                client_id: client.client_id,
                client_secret: secret.expose().to_owned(),
            },
            channel,
            trigger,
        })
    }

    pub fn agencies(&self) -> AgencyServiceClient<Channel> {
        AgencyServiceClient::new(self.channel.clone())
    }

    pub fn citizens(&self) -> CitizenServiceClient<Channel> {
        CitizenServiceClient::new(self.channel.clone())
    }

    /// A second connection to the app's database, for tests that look at
    /// or tamper with stored rows.
    pub async fn database(&self) -> anyhow::Result<Database> {
        Ok(Database::connect(&self.database_url, 2).await?)
    }

    pub fn tokens(&self) -> TokenServiceClient<Channel> {
        TokenServiceClient::new(self.channel.clone())
    }

    /// A token for the credentials, through the IssueToken RPC.
    pub async fn token(&self, credentials: &Credentials) -> anyhow::Result<String> {
        let response = self
            .tokens()
            .issue_token(pb::IssueTokenRequest {
                client_id: credentials.client_id.clone(),
                client_secret: credentials.client_secret.clone(),
                scopes: vec![],
            })
            .await?;
        Ok(response.into_inner().access_token)
    }

    /// A new agency (not an operator) with one client of the given scopes.
    pub async fn agency_with_client(
        &self,
        scopes: &[Scope],
        environment: Environment,
    ) -> anyhow::Result<Credentials> {
        let service = self.identity.service();
        let agency = service
            .bootstrap_agency(
                DisplayName::parse("Municipalidad de Prueba").unwrap(),
                false,
            )
            .await?;
        let (client, secret) = service
            .bootstrap_client(
                &agency.agency_id,
                DisplayName::parse("Backend").unwrap(),
                scopes.iter().copied().collect::<ScopeSet>(),
                environment,
            )
            .await?;
        Ok(Credentials {
            agency_id: agency.agency_id,
            client_id: client.client_id,
            client_secret: secret.expose().to_owned(),
        })
    }
}

fn uuid_like() -> String {
    format!("{:032x}", rand::random::<u128>())
}
