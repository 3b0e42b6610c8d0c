//! `atiende-bench`: Atiende's load generator.
//!
//! N connections × M requests in flight for a fixed duration, against a
//! running server; latencies in an HDR histogram. Scenarios:
//! - `health`: `grpc.health.v1.Health/Check`, the gRPC ceiling of the server;
//! - `identity.issue-token`: `TokenService/IssueToken` (client credentials);
//! - `identity.introspect`: `TokenService/IntrospectToken`;
//! - `all`: each of the above at full speed, then each again paced at half
//!   its measured maximum, with ratios against `health` from the same run;
//! - `notifications.send-email`: `NotificationService/SendEmail`, answered
//!   once committed;
//! - `notifications.delivery`: sends as `send-email` does, to live
//!   recipients, and an SMTP server inside the bench (`--smtp-sink`)
//!   receives them: delivered per second and accept-to-SMTP latency.
//!
//! - `payments.create`: `PaymentService/CreatePayment` (sandbox);
//! - `payments.lifecycle`: create (delayed capture) → the sandbox card step
//!   (`SimulateCardSubmission`) → `CapturePayment` → `ListPaymentEvents`
//!   shows the capture, as one timed unit; below its line, each step's
//!   p50 and p99, timed from the end of the step before.
//!
//! - `identity.password-login`, `identity.code-exchange`,
//!   `identity.argon2-raw`: the citizen sign-in over the HTTP login pages
//!   (`--http-target`); see `login.rs`.
//!
//! Credentials come from `--credentials` (the `dev-credentials.json` that
//! `atiende dev` writes) or `--client-id`/`--client-secret`. Notification
//! scenarios sign their own live token with the platform's public test key
//! (`--test-key`): the notifications server under test must trust only that
//! key's JWKS (`--write-test-jwks`), so never point them at a deployment.

mod login;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use atiende_proto::identity::v1 as pb;
use atiende_proto::notifications::v1 as notifications;
use atiende_proto::payments::v1 as payments;
use clap::Parser;
use hdrhistogram::Histogram;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[derive(Parser, Clone)]
#[command(version, about = "Atiende load generator")]
struct Args {
    /// health, identity.issue-token, identity.introspect, or all.
    #[arg(long, default_value = "all")]
    scenario: String,
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    target: String,
    /// HTTP/2 connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Measured seconds per run.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Unmeasured seconds before each run.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Pace the run to this many requests per second in total (0: as fast
    /// as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// A dev-credentials.json written by `atiende dev`.
    #[arg(long)]
    credentials: Option<PathBuf>,
    #[arg(long, env = "ATIENDE_CLIENT_ID")]
    client_id: Option<String>,
    #[arg(long, env = "ATIENDE_CLIENT_SECRET")]
    client_secret: Option<String>,
    /// Write the JWKS of the platform's test key to this file and exit.
    #[arg(long)]
    write_test_jwks: Option<PathBuf>,
    /// Notification scenarios: sign a live token with the test key.
    #[arg(long)]
    test_key: bool,
    /// The identity service's HTTP address (its issuer), for the login
    /// scenarios.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    http_target: String,
    /// `notifications.delivery`: where the bench's SMTP server listens.
    #[arg(long, default_value = "127.0.0.1:2525")]
    smtp_sink: String,
}

#[derive(serde::Deserialize)]
struct DevCredentials {
    client_id: String,
    client_secret: String,
}

/// One kind of request.
#[derive(Clone)]
enum Scenario {
    Health,
    IssueToken {
        client_id: String,
        client_secret: String,
    },
    Introspect {
        token: String,
    },
    CreatePayment {
        token: String,
    },
    PaymentLifecycle {
        token: String,
    },
    PasswordLogin(Arc<login::Login>),
    CodeExchange(Arc<login::Login>),
    SendEmail {
        token: String,
        template_id: String,
        /// Accept times by notification id, for delivery latency.
        accepted: Option<Arc<std::sync::Mutex<std::collections::HashMap<String, Instant>>>>,
    },
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Self::Health => "health",
            Self::IssueToken { .. } => "identity.issue-token",
            Self::Introspect { .. } => "identity.introspect",
            Self::CreatePayment { .. } => "payments.create",
            Self::PaymentLifecycle { .. } => "payments.lifecycle",
            Self::PasswordLogin(_) => "identity.password-login",
            Self::CodeExchange(_) => "identity.code-exchange",
            Self::SendEmail { accepted: None, .. } => "notifications.send-email",
            Self::SendEmail { .. } => "notifications.delivery",
        }
    }

    async fn call(&self, channel: &Channel) -> Result<(), tonic::Status> {
        match self {
            Self::Health => {
                HealthClient::new(channel.clone())
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
            }
            Self::IssueToken {
                client_id,
                client_secret,
            } => {
                pb::token_service_client::TokenServiceClient::new(channel.clone())
                    .issue_token(pb::IssueTokenRequest {
                        client_id: client_id.clone(),
                        client_secret: client_secret.clone(),
                        scopes: vec![],
                    })
                    .await?;
            }
            Self::Introspect { token } => {
                let mut request = tonic::Request::new(pb::IntrospectTokenRequest {
                    token: token.clone(),
                });
                let bearer = format!("Bearer {token}")
                    .parse()
                    .map_err(|_| tonic::Status::internal("token is not a header value"))?;
                request.metadata_mut().insert("authorization", bearer);
                let response = pb::token_service_client::TokenServiceClient::new(channel.clone())
                    .introspect_token(request)
                    .await?;
                if !response.get_ref().active {
                    return Err(tonic::Status::failed_precondition(
                        "token reported inactive",
                    ));
                }
            }
            Self::CreatePayment { token } => {
                create_payment(channel, token, false).await?;
            }
            Self::PasswordLogin(login) => login.password_login().await?,
            Self::CodeExchange(login) => login.code_exchange().await?,
            Self::PaymentLifecycle { token } => {
                let mut step = LifecycleStep::start();
                let payment_id = create_payment(channel, token, true).await?;
                step.done(0);
                let mut client =
                    payments::payment_service_client::PaymentServiceClient::new(channel.clone());
                let mut request = tonic::Request::new(payments::SimulateCardSubmissionRequest {
                    payment_id: payment_id.clone(),
                    card_number: "4242424242424242".into(),
                    expiry_month: 12,
                    expiry_year: 2035,
                    cvc: "123".into(),
                    cardholder_name: "Ana Pérez".into(),
                });
                bearer(&mut request, token)?;
                client.simulate_card_submission(request).await?;
                step.done(1);
                let mut request = tonic::Request::new(payments::CapturePaymentRequest {
                    payment_id: payment_id.clone(),
                });
                bearer(&mut request, token)?;
                client.capture_payment(request).await?;
                step.done(2);
                let mut request = tonic::Request::new(payments::ListPaymentEventsRequest {
                    payment_id,
                    page_size: 50,
                    page_token: String::new(),
                });
                bearer(&mut request, token)?;
                let events = client
                    .list_payment_events(request)
                    .await?
                    .into_inner()
                    .events;
                step.done(3);
                let captured = events
                    .iter()
                    .any(|e| e.r#type() == payments::PaymentEventType::PaymentSucceeded);
                if !captured {
                    return Err(tonic::Status::failed_precondition(
                        "no SUCCESS event after capture",
                    ));
                }
            }
            Self::SendEmail {
                token,
                template_id,
                accepted,
            } => {
                let n = SENT.fetch_add(1, Ordering::Relaxed);
                let mut request = tonic::Request::new(notifications::SendEmailRequest {
                    template_id: template_id.clone(),
                    email_address: format!("vecino{n}@bench.test"),
                    personalisation: [(
                        "nombre".to_owned(),
                        notifications::PersonalisationValue {
                            kind: Some(notifications::personalisation_value::Kind::Text(format!(
                                "Vecino {n}"
                            ))),
                        },
                    )]
                    .into(),
                    reference: format!("bench-{n}"),
                    ..Default::default()
                });
                bearer(&mut request, token)?;
                let started = Instant::now();
                let response =
                    notifications::notification_service_client::NotificationServiceClient::new(
                        channel.clone(),
                    )
                    .send_email(request)
                    .await?;
                if let (Some(accepted), Some(n)) = (accepted, &response.get_ref().notification) {
                    accepted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(n.notification_id.clone(), started);
                }
            }
        }
        Ok(())
    }
}

/// Creates a sandbox payment of CLP 12.500; its id.
async fn create_payment(
    channel: &Channel,
    token: &str,
    delayed_capture: bool,
) -> Result<String, tonic::Status> {
    let n = SENT.fetch_add(1, Ordering::Relaxed);
    let mut request = tonic::Request::new(payments::CreatePaymentRequest {
        amount: Some(atiende_proto::common::v1::Money {
            currency_code: "CLP".into(),
            amount_minor: 12_500,
        }),
        reference: format!("permiso-{n}"),
        description: "Permiso de circulación".into(),
        return_url: "https://municipalidad.example/volver".into(),
        delayed_capture,
        ..Default::default()
    });
    bearer(&mut request, token)?;
    let payment = payments::payment_service_client::PaymentServiceClient::new(channel.clone())
        .create_payment(request)
        .await?
        .into_inner()
        .payment
        .ok_or_else(|| tonic::Status::internal("no payment in the answer"))?;
    Ok(payment.payment_id)
}

/// The lifecycle's steps, timed one by one while a run is measured.
const LIFECYCLE_STEPS: [&str; 4] = [
    "CreatePayment",
    "SimulateCardSubmission",
    "CapturePayment",
    "ListPaymentEvents",
];

/// Whether the run under way is being measured (after its warm-up):
/// read by its workers and by the lifecycle's step timer.
static MEASURING: AtomicBool = AtomicBool::new(false);

static STEP_LATENCIES: std::sync::Mutex<Vec<Histogram<u64>>> = std::sync::Mutex::new(Vec::new());

/// Times the steps of one lifecycle, each from the end of the one before.
struct LifecycleStep(Instant);

impl LifecycleStep {
    fn start() -> Self {
        Self(Instant::now())
    }

    fn done(&mut self, step: usize) {
        let now = Instant::now();
        if MEASURING.load(Ordering::Relaxed) {
            let micros = u64::try_from((now - self.0).as_micros()).unwrap_or(u64::MAX);
            let mut latencies = STEP_LATENCIES
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if latencies.is_empty() {
                latencies.extend(
                    LIFECYCLE_STEPS
                        .iter()
                        .filter_map(|_| Histogram::new_with_bounds(1, 60_000_000, 3).ok()),
                );
            }
            if let Some(histogram) = latencies.get_mut(step) {
                histogram.saturating_record(micros.max(1));
            }
        }
        self.0 = now;
    }

    /// Prints each step's p50 and p99 of the run just measured, and forgets them.
    fn report() {
        let mut latencies = STEP_LATENCIES
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (name, histogram) in LIFECYCLE_STEPS.iter().zip(latencies.iter()) {
            println!(
                "  step {name:<24} p50 {:>6.2} ms  p99 {:>6.2} ms",
                histogram.value_at_quantile(0.5) as f64 / 1000.0,
                histogram.value_at_quantile(0.99) as f64 / 1000.0,
            );
        }
        latencies.clear();
    }
}

static SENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn bearer<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), tonic::Status> {
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| tonic::Status::internal("token is not a header value"))?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}

/// Arrival times of messages at the bench's SMTP server, by Message-ID.
#[derive(Clone, Default)]
struct Sink {
    arrivals: Arc<std::sync::Mutex<Vec<(String, Instant)>>>,
}

#[derive(Clone)]
struct SinkHandler {
    sink: Sink,
    message_id: Option<String>,
    head: Vec<u8>,
}

impl mailin_embedded::Handler for SinkHandler {
    fn data_start(&mut self, _: &str, _: &str, _: bool, _: &[String]) -> mailin_embedded::Response {
        self.message_id = None;
        self.head.clear();
        mailin_embedded::response::OK
    }

    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.message_id.is_none() && self.head.len() < 64 * 1024 {
            self.head.extend_from_slice(buf);
            let text = String::from_utf8_lossy(&self.head);
            if let Some(start) = text.find("Message-ID: <") {
                let rest = &text[start + 13..];
                if let Some(end) = rest.find('@') {
                    self.message_id = Some(rest[..end].to_owned());
                }
            }
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        if let Some(id) = self.message_id.take() {
            self.sink
                .arrivals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((id, Instant::now()));
        }
        mailin_embedded::response::OK
    }
}

fn start_sink(addr: &str) -> anyhow::Result<Sink> {
    let sink = Sink::default();
    let listener = std::net::TcpListener::bind(addr)
        .with_context(|| format!("the SMTP sink cannot listen on {addr}"))?;
    let mut server = mailin_embedded::Server::new(SinkHandler {
        sink: sink.clone(),
        message_id: None,
        head: Vec::new(),
    });
    server
        .with_name("sink.bench")
        .with_num_threads(256)
        .with_tcp_listener(listener);
    std::thread::spawn(move || {
        let _ = server.serve();
    });
    Ok(sink)
}

/// What one run measured.
struct Report {
    scenario: &'static str,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency_us: Histogram<u64>,
    first_error: Option<String>,
    /// The share of the machine's CPU time that was busy while the run
    /// was measured, every process counted (Linux only).
    machine_busy: Option<f64>,
}

/// The machine's CPU time since boot, in clock ticks, from `/proc/stat`.
struct MachineCpu {
    busy: u64,
    total: u64,
}

impl MachineCpu {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields = stat.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user and nice).
        let ticks: Vec<u64> = fields
            .split_whitespace()
            .take(8)
            .map(str::parse)
            .collect::<Result<_, _>>()
            .ok()?;
        let total: u64 = ticks.iter().sum();
        let idle = ticks.get(3)? + ticks.get(4)?;
        Some(Self {
            busy: total - idle,
            total,
        })
    }

    fn busy_since(&self, before: &Self) -> Option<f64> {
        let total = self.total.checked_sub(before.total).filter(|t| *t > 0)?;
        let busy = self.busy.checked_sub(before.busy)?;
        Some(busy as f64 / total as f64)
    }
}

impl Report {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    fn print(&self, label: &str) {
        println!(
            "{:<22} {:<10} {:>10.1} req/s  p50 {:>6.2} ms  p90 {:>6.2} ms  p99 {:>6.2} ms  p99.9 {:>6.2} ms  max {:>7.2} ms  errors {}",
            self.scenario,
            label,
            self.rate(),
            self.quantile_ms(0.50),
            self.quantile_ms(0.90),
            self.quantile_ms(0.99),
            self.quantile_ms(0.999),
            self.latency_us.max() as f64 / 1000.0,
            self.errors,
        );
        if let Some(busy) = self.machine_busy {
            println!(
                "  machine CPU busy: {:.0} % (every process, all cores)",
                busy * 100.0
            );
        }
        if let Some(error) = &self.first_error {
            println!("  first error: {error}");
        }
    }
}

async fn connect(target: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let channel = Endpoint::from_shared(target.to_owned())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}"))?;
        channels.push(channel);
    }
    Ok(channels)
}

/// Runs `scenario` on every connection with `in_flight` workers each, for
/// warm-up plus duration; `rate` > 0 paces the workers.
async fn run(
    args: &Args,
    channels: &[Channel],
    scenario: &Scenario,
    rate: u64,
) -> anyhow::Result<Report> {
    let workers = channels.len() * args.in_flight.max(1);
    let stop = Arc::new(AtomicBool::new(false));
    let interval = (rate > 0).then(|| Duration::from_secs_f64(workers as f64 / rate as f64));
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let channel = channels[worker % channels.len()].clone();
        let scenario = scenario.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut requests, mut errors, mut first_error) = (0u64, 0u64, None);
            // Workers start spread over one interval, so that a paced run
            // is a steady stream, not bursts of every worker at once.
            let mut ticker = interval.map(|every| {
                let offset = every.mul_f64(worker as f64 / workers as f64);
                let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, every);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t
            });
            while !stop.load(Ordering::Relaxed) {
                if let Some(ticker) = ticker.as_mut() {
                    ticker.tick().await;
                }
                let started = Instant::now();
                let result = scenario.call(&channel).await;
                if MEASURING.load(Ordering::Relaxed) {
                    let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    histogram.saturating_record(micros.max(1));
                    requests += 1;
                    if let Err(status) = result {
                        errors += 1;
                        first_error.get_or_insert_with(|| {
                            format!("{:?}: {}", status.code(), status.message())
                        });
                    }
                }
            }
            anyhow::Ok((histogram, requests, errors, first_error))
        }));
    }
    tokio::time::sleep(Duration::from_secs(args.warmup)).await;
    MEASURING.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = MachineCpu::read();
    tokio::time::sleep(Duration::from_secs(args.duration)).await;
    MEASURING.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let machine_busy = cpu_before
        .zip(MachineCpu::read())
        .and_then(|(before, after)| after.busy_since(&before));
    stop.store(true, Ordering::Relaxed);

    let mut report = Report {
        scenario: scenario.name(),
        requests: 0,
        errors: 0,
        elapsed,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        first_error: None,
        machine_busy,
    };
    for task in tasks {
        let (histogram, requests, errors, first_error) = task.await??;
        report.latency_us.add(histogram)?;
        report.requests += requests;
        report.errors += errors;
        if report.first_error.is_none() {
            report.first_error = first_error;
        }
    }
    Ok(report)
}

/// Waits for the sends accepted during the run to arrive at the sink, then
/// reports delivered per second and accept-to-SMTP latency.
async fn delivery_report(
    args: &Args,
    sink: &Sink,
    accepted: &std::sync::Mutex<std::collections::HashMap<String, Instant>>,
    report: &Report,
) -> anyhow::Result<()> {
    let expected = accepted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .len();
    let deadline = Instant::now() + Duration::from_secs(args.duration.max(10) * 3);
    loop {
        let arrived = sink
            .arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        if arrived >= expected || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let accepted = accepted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let arrivals = sink
        .arrivals
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let mut matched = 0u64;
    for (id, at) in arrivals.iter() {
        if let Some(sent) = accepted.get(id) {
            matched += 1;
            let micros = u64::try_from(at.duration_since(*sent).as_micros()).unwrap_or(u64::MAX);
            latency.saturating_record(micros.max(1));
            first = Some(first.map_or(*at, |f| f.min(*at)));
            last = Some(last.map_or(*at, |l| l.max(*at)));
        }
    }
    let span = match (first, last) {
        (Some(f), Some(l)) if l > f => l.duration_since(f).as_secs_f64(),
        _ => report.elapsed.as_secs_f64(),
    };
    println!(
        "notifications.delivery  accepted {expected} (warm-up included)  arrived {matched}  {:.0} emails/s at the SMTP server  accept→SMTP p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
        matched as f64 / span,
        latency.value_at_quantile(0.5) as f64 / 1000.0,
        latency.value_at_quantile(0.99) as f64 / 1000.0,
        latency.max() as f64 / 1000.0,
    );
    Ok(())
}

fn credentials(args: &Args) -> anyhow::Result<(String, String)> {
    if let Some(path) = &args.credentials {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let saved: DevCredentials = serde_json::from_str(&text)?;
        return Ok((saved.client_id, saved.client_secret));
    }
    match (&args.client_id, &args.client_secret) {
        (Some(id), Some(secret)) => Ok((id.clone(), secret.clone())),
        _ => anyhow::bail!(
            "identity scenarios need --credentials or --client-id and --client-secret"
        ),
    }
}

async fn scenarios(args: &Args, channels: &[Channel]) -> anyhow::Result<Vec<Scenario>> {
    let wanted: Vec<&str> = match args.scenario.as_str() {
        "all" => vec!["health", "identity.issue-token", "identity.introspect"],
        one => vec![one],
    };
    let mut out = Vec::new();
    for name in wanted {
        out.push(match name {
            "health" => Scenario::Health,
            "identity.issue-token" | "identity.introspect" => {
                let (client_id, client_secret) = credentials(args)?;
                if name == "identity.issue-token" {
                    Scenario::IssueToken {
                        client_id,
                        client_secret,
                    }
                } else {
                    let token =
                        pb::token_service_client::TokenServiceClient::new(channels[0].clone())
                            .issue_token(pb::IssueTokenRequest {
                                client_id,
                                client_secret,
                                scopes: vec![],
                            })
                            .await?
                            .into_inner()
                            .access_token;
                    Scenario::Introspect { token }
                }
            }
            "identity.password-login" | "identity.code-exchange" => {
                let (client_id, client_secret) = credentials(args)?;
                let exchange = name == "identity.code-exchange";
                let login = Arc::new(
                    login::Login::prepare(
                        &channels[0],
                        &args.http_target,
                        client_id,
                        client_secret,
                        exchange,
                        args.connections * args.in_flight,
                    )
                    .await?,
                );
                if exchange {
                    Scenario::CodeExchange(login)
                } else {
                    Scenario::PasswordLogin(login)
                }
            }
            "payments.create" | "payments.lifecycle" => {
                anyhow::ensure!(args.test_key, "payment scenarios need --test-key (see --help)");
                let token = atiende_platform::testing::token(
                    "agy_0000000000000000000000000000bec4",
                    &[
                        atiende_platform::auth::Scope::PaymentsCreate,
                        atiende_platform::auth::Scope::PaymentsRead,
                    ],
                    atiende_platform::auth::Environment::Sandbox,
                );
                if name == "payments.create" {
                    Scenario::CreatePayment { token }
                } else {
                    Scenario::PaymentLifecycle { token }
                }
            }
            "notifications.send-email" | "notifications.delivery" => {
                anyhow::ensure!(
                    args.test_key,
                    "notification scenarios need --test-key (see --help)"
                );
                let token = atiende_platform::testing::token(
                    &format!("agy_{:032x}", SENT.load(Ordering::Relaxed) + 0xbe4c),
                    &[
                        atiende_platform::auth::Scope::NotificationsTemplates,
                        atiende_platform::auth::Scope::NotificationsSend,
                    ],
                    atiende_platform::auth::Environment::Live,
                );
                let mut request = tonic::Request::new(notifications::CreateTemplateRequest {
                    name: "Bench".into(),
                    channel: notifications::Channel::Email.into(),
                    subject: "Aviso para ((nombre))".into(),
                    body: "# Hola ((nombre))\n\nSu trámite está listo.\n\n* Retire en la oficina\n* Traiga su cédula".into(),
                    ..Default::default()
                });
                bearer(&mut request, &token)?;
                let template_id =
                    notifications::template_service_client::TemplateServiceClient::new(
                        channels[0].clone(),
                    )
                    .create_template(request)
                    .await?
                    .into_inner()
                    .template
                    .context("no template")?
                    .template_id;
                Scenario::SendEmail {
                    token,
                    template_id,
                    accepted: (name == "notifications.delivery").then(Default::default),
                }
            }
            other => anyhow::bail!("unknown scenario {other}"),
        });
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.write_test_jwks {
        std::fs::write(path, atiende_platform::testing::jwks_json().to_string())?;
        println!(
            "wrote {}: trust it with ATIENDE_AUTH__JWKS_FILE, ATIENDE_AUTH__ISSUER={} and ATIENDE_AUTH__AUDIENCE={}",
            path.display(),
            atiende_platform::testing::TEST_ISSUER,
            atiende_platform::testing::TEST_AUDIENCE
        );
        return Ok(());
    }
    if args.scenario == "identity.argon2-raw" {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let _ = login::argon2_rate(threads, Duration::from_secs(args.warmup));
        let rate = login::argon2_rate(threads, Duration::from_secs(args.duration));
        println!(
            "identity.argon2-raw    {threads} threads {rate:>10.1} hashes/s  ({:.1} per core)",
            rate / threads as f64
        );
        return Ok(());
    }
    let sink = if args.scenario.starts_with("notifications.") {
        Some(start_sink(&args.smtp_sink)?)
    } else {
        None
    };
    let channels = connect(&args.target, args.connections).await?;
    let scenarios = scenarios(&args, &channels).await?;
    println!(
        "target {}  connections {}  in-flight/connection {}  duration {} s (+{} s warm-up)",
        args.target, args.connections, args.in_flight, args.duration, args.warmup
    );
    let mut maxima = Vec::new();
    for scenario in &scenarios {
        let report = run(&args, &channels, scenario, args.rate).await?;
        report.print(if args.rate > 0 { "paced" } else { "max" });
        LifecycleStep::report();
        if let (
            Some(sink),
            Scenario::SendEmail {
                accepted: Some(accepted),
                ..
            },
        ) = (&sink, scenario)
        {
            delivery_report(&args, sink, accepted, &report).await?;
        }
        maxima.push((scenario.clone(), report.rate()));
    }
    if args.scenario == "all" && args.rate == 0 {
        let ceiling = maxima.first().map(|(_, rate)| *rate).unwrap_or(1.0);
        println!("\nratios against the health ceiling of this run:");
        for (scenario, rate) in &maxima {
            println!(
                "  {:<22} {:>6.1} %",
                scenario.name(),
                100.0 * rate / ceiling
            );
        }
        println!("\nat half of each maximum rate:");
        for (scenario, rate) in &maxima {
            // Truncation to whole requests per second is intended.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let half = (rate / 2.0) as u64;
            let report = run(&args, &channels, scenario, half.max(1)).await?;
            report.print(&format!("@{half}/s"));
            LifecycleStep::report();
        }
    }
    Ok(())
}
