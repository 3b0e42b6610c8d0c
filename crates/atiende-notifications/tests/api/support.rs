//! `TestApp`: a notifications server on port 0 with a fresh database; and
//! the real peers it talks to: an SMTP server (mailin), a Twilio-speaking
//! HTTP server, an agency's callback endpoint.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use atiende_notifications::Notifications;
use atiende_notifications::config::NotificationsConfig;
use atiende_notifications::delivery::sms::{ProviderChain, SmsProvider, Twilio};
use atiende_platform::auth::{Environment, Scope};
use atiende_platform::config::HttpConfig;
use atiende_platform::server::{
    GrpcServices, ShutdownTrigger, serve_grpc, serve_http, shutdown_channel,
};
use atiende_platform::storage::Database;
use atiende_platform::testing;
use atiende_proto::notifications::v1 as pb;
use pb::callback_service_client::CallbackServiceClient;
use pb::notification_service_client::NotificationServiceClient;
use pb::template_service_client::TemplateServiceClient;
use tonic::transport::Channel;

pub use atiende_platform::harness::{Engine, authed, violated_fields};

pub const PG_PREFIX: &str = "atiende_test_notifications";

pub struct TestApp {
    pub channel: Channel,
    pub notifications: Notifications,
    pub database_url: String,
    pub http_url: String,
    trigger: ShutdownTrigger,
    delivery: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

/// How a test wants its instance.
pub struct Options {
    /// An existing database (a restart, a second instance); else a new one.
    pub database_url: Option<String>,
    pub config: NotificationsConfig,
    pub sms: Vec<Arc<dyn SmsProvider>>,
    /// Run the delivery workers.
    pub deliver: bool,
}

impl Default for Options {
    fn default() -> Self {
        let mut config = NotificationsConfig::default();
        config.delivery.poll_interval_ms = Duration::from_millis(50);
        config.delivery.retry_base_delay_ms = Duration::from_millis(100);
        config.delivery.retry_max_delay_ms = Duration::from_millis(400);
        config.email.timeout_ms = Duration::from_secs(5);
        config.limits.sends_per_minute = 0;
        Self {
            database_url: None,
            config,
            sms: Vec::new(),
            deliver: true,
        }
    }
}

impl TestApp {
    pub async fn spawn(engine: Engine) -> anyhow::Result<Self> {
        Self::spawn_with(engine, Options::default()).await
    }

    pub async fn spawn_with(engine: Engine, options: Options) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("atiende-ntf-{:032x}", rand::random::<u128>()));
        let url = match options.database_url {
            Some(url) => url,
            None => engine.database_url(PG_PREFIX, &dir).await?,
        };
        let db = Database::connect(&url, 8).await?;
        db.migrate(&atiende_notifications::store::MIGRATIONS)
            .await?;
        let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let http_url = format!("http://{}", http_listener.local_addr()?);
        let mut config = options.config;
        config.storage.data_dir = dir;
        config.http.public_url = http_url.clone();
        let service = Notifications::with_parts(db, &config, ProviderChain::new(options.sms))?;
        let mut services = GrpcServices::new();
        service.register(&mut services);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (trigger, shutdown) = shutdown_channel();
        let grpc = config.grpc.clone();
        let grpc_shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_grpc(
                listener,
                services,
                testing::verifier(),
                &grpc,
                grpc_shutdown,
            )
            .await
        });
        let router = service.http_router();
        let http_shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_http(
                http_listener,
                router,
                &HttpConfig::default(),
                Duration::ZERO,
                http_shutdown,
            )
            .await
        });
        let delivery = options
            .deliver
            .then(|| service.start_delivery(shutdown.clone()));
        let channel = Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(Self {
            channel,
            notifications: service,
            database_url: url,
            http_url,
            trigger,
            delivery,
        })
    }

    /// Stops the instance and waits for its delivery workers to finish.
    pub async fn stop(mut self) {
        self.trigger.trigger();
        if let Some(delivery) = self.delivery.take() {
            let _ = delivery.await;
        }
    }

    pub fn templates(&self) -> TemplateServiceClient<Channel> {
        TemplateServiceClient::new(self.channel.clone())
    }

    pub fn notifications(&self) -> NotificationServiceClient<Channel> {
        NotificationServiceClient::new(self.channel.clone())
            .max_encoding_message_size(64 << 20)
            .max_decoding_message_size(64 << 20)
    }

    pub fn callbacks(&self) -> CallbackServiceClient<Channel> {
        CallbackServiceClient::new(self.channel.clone())
    }

    /// Creates a template and returns its id.
    pub async fn template(&self, token: &str, request: pb::CreateTemplateRequest) -> String {
        self.templates()
            .create_template(authed(request, token))
            .await
            .expect("create template")
            .into_inner()
            .template
            .expect("template")
            .template_id
    }

    /// Sends an email that must be accepted.
    pub async fn sent_email(&self, token: &str, request: pb::SendEmailRequest) -> pb::Notification {
        self.notifications()
            .send_email(authed(request, token))
            .await
            .expect("email accepted")
            .into_inner()
            .notification
            .expect("notification")
    }

    /// Sends an SMS that must be accepted.
    pub async fn sent_sms(&self, token: &str, request: pb::SendSmsRequest) -> pb::Notification {
        self.notifications()
            .send_sms(authed(request, token))
            .await
            .expect("SMS accepted")
            .into_inner()
            .notification
            .expect("notification")
    }

    pub async fn get(&self, token: &str, id: &str) -> pb::Notification {
        self.notifications()
            .get_notification(authed(
                pb::GetNotificationRequest {
                    notification_id: id.into(),
                },
                token,
            ))
            .await
            .expect("get notification")
            .into_inner()
            .notification
            .expect("notification")
    }

    /// Polls until the notification has a final status (at most 30 s).
    pub async fn wait_final(&self, token: &str, id: &str) -> pb::Notification {
        for _ in 0..600 {
            let n = self.get(token, id).await;
            let status = n.status();
            if !matches!(
                status,
                pb::NotificationStatus::Created | pb::NotificationStatus::Sending
            ) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("notification {id} did not finish");
    }
}

/// A new agency's token with the given scopes, in `environment`.
pub fn agency_token_in(scopes: &[Scope], environment: Environment) -> (String, String) {
    let agency = atiende_platform::ids::new_id("agy");
    let token = testing::token(&agency, scopes, environment);
    (agency, token)
}

/// A new sandbox agency's token with the given scopes.
pub fn agency_token(scopes: &[Scope]) -> (String, String) {
    agency_token_in(scopes, Environment::Sandbox)
}

pub const ALL: &[Scope] = &[
    Scope::NotificationsTemplates,
    Scope::NotificationsSend,
    Scope::NotificationsRead,
];

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

pub fn values(
    pairs: &[(&str, &str)],
) -> std::collections::HashMap<String, pb::PersonalisationValue> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), text(v)))
        .collect()
}

pub fn send_email(template_id: &str, to: &str, pairs: &[(&str, &str)]) -> pb::SendEmailRequest {
    pb::SendEmailRequest {
        template_id: template_id.into(),
        email_address: to.into(),
        personalisation: values(pairs),
        ..Default::default()
    }
}

pub fn send_sms(template_id: &str, to: &str, pairs: &[(&str, &str)]) -> pb::SendSmsRequest {
    pb::SendSmsRequest {
        template_id: template_id.into(),
        phone_number: to.into(),
        personalisation: values(pairs),
        ..Default::default()
    }
}

/// A message the SMTP server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub from: String,
    pub to: Vec<String>,
    pub data: Vec<u8>,
}

/// A real SMTP server over TCP (mailin's protocol engine) that keeps what
/// it accepts. Recipients starting with `bounce` get 550 (permanent),
/// `busy` 451 (temporary), `authfail` 535 (a refusal of the sender).
#[derive(Clone)]
pub struct SmtpServer {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
}

#[derive(Clone)]
struct SmtpHandler {
    received: Arc<Mutex<Vec<Received>>>,
    from: String,
    to: Vec<String>,
    data: Vec<u8>,
}

impl mailin_embedded::Handler for SmtpHandler {
    fn rcpt(&mut self, to: &str) -> mailin_embedded::Response {
        if to.starts_with("bounce") {
            mailin_embedded::response::NO_MAILBOX
        } else if to.starts_with("authfail") {
            mailin_embedded::Response::custom(535, "Authentication credentials invalid".to_owned())
        } else if to.starts_with("busy") {
            mailin_embedded::response::INTERNAL_ERROR
        } else {
            mailin_embedded::response::OK
        }
    }

    fn data_start(
        &mut self,
        _domain: &str,
        from: &str,
        _is8bit: bool,
        to: &[String],
    ) -> mailin_embedded::Response {
        self.from = from.to_owned();
        self.to = to.to_vec();
        self.data.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.data.extend_from_slice(buf);
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let message = Received {
            from: std::mem::take(&mut self.from),
            to: std::mem::take(&mut self.to),
            data: std::mem::take(&mut self.data),
        };
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(message);
        mailin_embedded::response::OK
    }
}

impl SmtpServer {
    /// A free port where nothing listens yet.
    pub fn reserve() -> anyhow::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(listener.local_addr()?)
    }

    pub fn start() -> anyhow::Result<Self> {
        Self::start_on(std::net::TcpListener::bind("127.0.0.1:0")?)
    }

    pub fn start_at(addr: SocketAddr) -> anyhow::Result<Self> {
        Self::start_on(std::net::TcpListener::bind(addr)?)
    }

    fn start_on(listener: std::net::TcpListener) -> anyhow::Result<Self> {
        let addr = listener.local_addr()?;
        let received = Arc::new(Mutex::new(Vec::new()));
        let handler = SmtpHandler {
            received: received.clone(),
            from: String::new(),
            to: Vec::new(),
            data: Vec::new(),
        };
        let mut server = mailin_embedded::Server::new(handler);
        server
            .with_name("smtp.test")
            .with_num_threads(64)
            .with_tcp_listener(listener);
        std::thread::spawn(move || {
            let _ = server.serve();
        });
        Ok(Self { addr, received })
    }

    pub fn url(addr: SocketAddr) -> String {
        format!("smtp://{addr}")
    }

    pub fn messages(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until at least `n` messages arrived (at most 60 s).
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..1200 {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} messages, got {}", self.messages().len());
    }
}

/// A recorded HTTP request: headers of interest and the body.
#[derive(Debug, Clone)]
pub struct Hit {
    pub authorization: String,
    pub body: String,
}

/// An HTTP server for tests: answers the statuses queued (then 2xx) and
/// records what it gets. Speaks Twilio's Messages API at
/// `/2010-04-01/Accounts/{sid}/Messages.json` and takes callbacks at
/// `/callback`.
#[derive(Clone)]
pub struct HttpPeer {
    pub url: String,
    pub hits: Arc<Mutex<Vec<Hit>>>,
    answers: Arc<Mutex<VecDeque<u16>>>,
}

impl HttpPeer {
    pub async fn start(failures: &[u16]) -> anyhow::Result<Self> {
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let peer = Self {
            url,
            hits: Arc::new(Mutex::new(Vec::new())),
            answers: Arc::new(Mutex::new(failures.iter().copied().collect())),
        };
        let state = peer.clone();
        let router = axum::Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(twilio))
            .route("/callback", post(callback))
            .with_state(state);
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(peer)
    }

    fn record(&self, headers: &axum::http::HeaderMap, body: String) -> Option<u16> {
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Hit {
                authorization,
                body,
            });
        self.answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop_front()
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.hits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub async fn wait_for(&self, n: usize) -> Vec<Hit> {
        for _ in 0..600 {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("expected {n} requests, got {}", self.hits().len());
    }

    /// A Twilio provider pointed at this peer.
    pub fn twilio(&self, name: &str, public_url: &str) -> Arc<dyn SmsProvider> {
        Arc::new(
            Twilio::new(
                name,
                "AC0123",
                secrecy::SecretString::from(format!("token-{name}")),
                &self.url,
                "+15005550006",
                &atiende_notifications::delivery::sms::receipts_url(public_url, name),
                Duration::from_secs(5),
            )
            .expect("twilio"),
        )
    }
}

async fn twilio(
    axum::extract::State(peer): axum::extract::State<HttpPeer>,
    headers: axum::http::HeaderMap,
    body: String,
) -> (axum::http::StatusCode, String) {
    match peer.record(&headers, body) {
        Some(code) => (
            axum::http::StatusCode::from_u16(code)
                .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
            r#"{"code": 21211, "message": "invalid"}"#.to_owned(),
        ),
        None => {
            let sid = format!("SM{:032x}", rand::random::<u128>());
            (
                axum::http::StatusCode::CREATED,
                format!(r#"{{"sid": "{sid}", "status": "queued"}}"#),
            )
        }
    }
}

async fn callback(
    axum::extract::State(peer): axum::extract::State<HttpPeer>,
    headers: axum::http::HeaderMap,
    body: String,
) -> axum::http::StatusCode {
    match peer.record(&headers, body) {
        Some(code) => axum::http::StatusCode::from_u16(code)
            .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR),
        None => axum::http::StatusCode::NO_CONTENT,
    }
}

/// Parses a form body.
pub fn form(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}
