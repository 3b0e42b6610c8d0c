//! The platform end to end: all three services in one process as
//! `atiende dev` runs them, and a standalone service that verifies tokens
//! against the identity service's JWKS over gRPC.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use atiende::dev::{DevOptions, DevPlatform};
use atiende_platform::auth::TokenVerifier;
use atiende_platform::config::{AuthConfig, GrpcConfig};
use atiende_platform::server::{GrpcServices, ShutdownTrigger, shutdown_channel};
use atiende_proto::identity::v1 as identity;
use atiende_proto::notifications::v1 as notifications;
use atiende_proto::payments::v1 as payments;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVICES: [&str; 10] = [
    "atiende.identity.v1.AgencyService",
    "atiende.identity.v1.TokenService",
    "atiende.identity.v1.CitizenService",
    "atiende.notifications.v1.TemplateService",
    "atiende.notifications.v1.NotificationService",
    "atiende.notifications.v1.CallbackService",
    "atiende.payments.v1.PaymentService",
    "atiende.payments.v1.RefundService",
    "atiende.payments.v1.LedgerService",
    "atiende.payments.v1.WebhookService",
];

struct Dev {
    platform: DevPlatform,
    trigger: ShutdownTrigger,
    channel: Channel,
    data_dir: std::path::PathBuf,
}

fn scratch_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("atiende-e2e-{}", uuid_like()))
}

fn uuid_like() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!(
        "{:016x}{:016x}",
        RandomState::new().hash_one(1),
        RandomState::new().hash_one(2)
    )
}

async fn start_dev(data_dir: std::path::PathBuf) -> Dev {
    start_dev_on(
        data_dir,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
}

async fn start_dev_on(
    data_dir: std::path::PathBuf,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
) -> Dev {
    let (trigger, shutdown) = shutdown_channel();
    let platform = DevPlatform::start(
        DevOptions {
            data_dir: data_dir.clone(),
            grpc_addr,
            http_addr,
            smtp_url: None,
        },
        shutdown,
    )
    .await
    .unwrap();
    let channel = Channel::from_shared(format!("http://{}", platform.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    Dev {
        platform,
        trigger,
        channel,
        data_dir,
    }
}

fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn dev_platform_serves_health_and_reflection_for_all_three_services() {
    let dev = start_dev(scratch_dir()).await;
    let mut health = HealthClient::new(dev.channel.clone());
    for service in SERVICES.iter().copied().chain([""]) {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, i32::from(ServingStatus::Serving), "{service}");
    }

    // Reflection answers both v1 and v1alpha clients (grpcurl uses either).
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    let mut v1 = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        dev.channel.clone(),
    );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    let mut responses = v1
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(V1Response::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("expected a service list");
    };
    let listed: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for service in SERVICES {
        assert!(listed.iter().any(|l| l == service), "{service} listed");
    }

    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;
    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(
            dev.channel.clone(),
        );
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::FileContainingSymbol(
            "atiende.payments.v1.PaymentService".into(),
        )),
    };
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(AlphaResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty())
    );
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}

#[tokio::test]
async fn dev_token_calls_identity_and_unlanded_rpcs_say_unimplemented() {
    let dev = start_dev(scratch_dir()).await;
    let token = dev.platform.access_token.clone();
    let agency = identity::agency_service_client::AgencyServiceClient::new(dev.channel.clone())
        .get_agency(authed(identity::GetAgencyRequest::default(), &token))
        .await
        .unwrap()
        .into_inner()
        .agency
        .unwrap();
    assert_eq!(agency.agency_id, dev.platform.credentials.agency_id);

    let mut sender = notifications::notification_service_client::NotificationServiceClient::new(
        dev.channel.clone(),
    );
    let mut pay = payments::payment_service_client::PaymentServiceClient::new(dev.channel.clone());
    // Auth comes first: without a token, UNAUTHENTICATED.
    let status = sender
        .send_email(notifications::SendEmailRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = pay
        .create_payment(payments::CreatePaymentRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    // With one, the honest answer for what has not landed yet.
    // Payments have landed: an empty request is refused field by field.
    let status = pay
        .create_payment(authed(payments::CreatePaymentRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}

#[tokio::test]
async fn dev_serves_the_payment_page_on_its_http_address() {
    let dev = start_dev(scratch_dir()).await;
    let token = dev.platform.access_token.clone();
    let mut pay = payments::payment_service_client::PaymentServiceClient::new(dev.channel.clone());
    let payment = pay
        .create_payment(authed(
            payments::CreatePaymentRequest {
                amount: Some(atiende_proto::common::v1::Money {
                    currency_code: "CLP".into(),
                    amount_minor: 15_000,
                }),
                reference: "EXP-1".into(),
                description: "Permiso de circulación".into(),
                return_url: "http://localhost:3000/vuelta".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .payment
        .unwrap();
    let page_base = format!("http://{}/pay/", dev.platform.http_addr);
    assert!(
        payment.next_url.starts_with(&page_base),
        "{}",
        payment.next_url
    );
    let page = reqwest::get(&payment.next_url).await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.text().await.unwrap().contains("CLP 15.000"));
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}

#[tokio::test]
async fn dev_writes_sandbox_email_to_the_outbox() {
    let dev = start_dev(scratch_dir()).await;
    let token = dev.platform.access_token.clone();
    let template =
        notifications::template_service_client::TemplateServiceClient::new(dev.channel.clone())
            .create_template(authed(
                notifications::CreateTemplateRequest {
                    name: "Bienvenida".into(),
                    channel: notifications::Channel::Email.into(),
                    subject: "Hola ((nombre))".into(),
                    body: "Bienvenida, ((nombre)).".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner()
            .template
            .unwrap();
    let mut sender = notifications::notification_service_client::NotificationServiceClient::new(
        dev.channel.clone(),
    );
    let sent = sender
        .send_email(authed(
            notifications::SendEmailRequest {
                template_id: template.template_id,
                email_address: "ana@example.cl".into(),
                personalisation: [(
                    "nombre".to_owned(),
                    notifications::PersonalisationValue {
                        kind: Some(notifications::personalisation_value::Kind::Text(
                            "Ana".into(),
                        )),
                    },
                )]
                .into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .notification
        .unwrap();
    let file = dev
        .platform
        .outbox
        .join(format!("{}.eml", sent.notification_id));
    let mut text = String::new();
    for _ in 0..200 {
        if let Ok(found) = std::fs::read_to_string(&file) {
            text = found;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("Subject: Hola Ana"), "{text}");
    assert!(text.contains("To: ana@example.cl"), "{text}");
    let done = sender
        .get_notification(authed(
            notifications::GetNotificationRequest {
                notification_id: sent.notification_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap()
        .into_inner()
        .notification
        .unwrap();
    assert!(matches!(
        done.status(),
        notifications::NotificationStatus::Sending | notifications::NotificationStatus::Delivered
    ));
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}

#[tokio::test]
async fn restart_keeps_dev_credentials_and_signing_keys() {
    let data_dir = scratch_dir();
    let first = start_dev(data_dir.clone()).await;
    let credentials = first.platform.credentials.clone();
    let old_token = first.platform.access_token.clone();
    // Same addresses, as `atiende dev` uses: the issuer is the HTTP address.
    let (grpc_addr, http_addr) = (first.platform.grpc_addr, first.platform.http_addr);
    first.trigger.trigger();
    first.platform.wait().await.unwrap();

    let second = start_dev_on(first.data_dir, grpc_addr, http_addr).await;
    assert_eq!(second.platform.credentials.client_id, credentials.client_id);
    assert_eq!(
        second.platform.credentials.client_secret,
        credentials.client_secret
    );
    // A token from before the restart still verifies: keys are kept, sealed.
    identity::agency_service_client::AgencyServiceClient::new(second.channel.clone())
        .get_agency(authed(identity::GetAgencyRequest::default(), &old_token))
        .await
        .unwrap();
    second.trigger.trigger();
    second.platform.wait().await.unwrap();
}

/// A notifications server of its own, verifying tokens with keys fetched
/// from identity's `GetJwks` over gRPC, with a drain delay.
async fn standalone_notifications(
    identity_addr: SocketAddr,
    issuer: &str,
    drain: Duration,
) -> (SocketAddr, ShutdownTrigger, tokio::task::JoinHandle<()>) {
    let auth = AuthConfig {
        issuer: issuer.to_owned(),
        jwks_grpc_endpoint: Some(format!("http://{identity_addr}")),
        ..AuthConfig::default()
    };
    let verifier = std::sync::Arc::new(TokenVerifier::from_config(&auth).unwrap());
    let config = atiende_notifications::config::NotificationsConfig {
        storage: atiende_platform::config::StorageConfig {
            data_dir: scratch_dir(),
            ..Default::default()
        },
        grpc: GrpcConfig {
            drain_delay_ms: drain,
            ..GrpcConfig::default()
        },
        auth,
        ..Default::default()
    };
    let service = atiende_notifications::Notifications::open(&config)
        .await
        .unwrap();
    let mut services = GrpcServices::new();
    service.register(&mut services);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (trigger, shutdown) = shutdown_channel();
    let task = tokio::spawn(async move {
        atiende_platform::server::serve_grpc(listener, services, verifier, &config.grpc, shutdown)
            .await
            .unwrap();
    });
    (addr, trigger, task)
}

#[tokio::test]
async fn standalone_service_verifies_identity_tokens_through_grpc_jwks() {
    let dev = start_dev(scratch_dir()).await;
    let (addr, trigger, task) =
        standalone_notifications(dev.platform.grpc_addr, &dev.platform.issuer, Duration::ZERO)
            .await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client =
        notifications::notification_service_client::NotificationServiceClient::new(channel);

    let status = client
        .get_notification(authed(
            notifications::GetNotificationRequest::default(),
            &dev.platform.access_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "the identity token is accepted: {status:?}"
    );
    let status = client
        .get_notification(authed(
            notifications::GetNotificationRequest::default(),
            "forged.token.value",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    trigger.trigger();
    task.await.unwrap();
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}

#[tokio::test]
async fn shutdown_reports_not_serving_while_draining_then_stops() {
    let dev = start_dev(scratch_dir()).await;
    let (addr, trigger, task) = standalone_notifications(
        dev.platform.grpc_addr,
        &dev.platform.issuer,
        Duration::from_secs(3),
    )
    .await;
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    let check = HealthCheckRequest {
        service: "atiende.notifications.v1.NotificationService".into(),
    };
    assert_eq!(
        health
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .status,
        i32::from(ServingStatus::Serving)
    );

    trigger.trigger();
    let started = Instant::now();
    loop {
        let status = health
            .check(check.clone())
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == i32::from(ServingStatus::NotServing) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "health never flipped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // After the drain delay the server stops on its own.
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap();
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}

/// Finds `name="…" value="…"` in a page.
fn hidden_value(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker).unwrap() + marker.len();
    html[start..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn dev_self_registration_sends_the_email_code_through_notifications() {
    let dev = start_dev(scratch_dir()).await;
    let token = dev.platform.access_token.clone();
    let client_id = dev.platform.credentials.client_id.clone();
    let redirect = "http://127.0.0.1:4000/callback";
    identity::agency_service_client::AgencyServiceClient::new(dev.channel.clone())
        .set_client_redirect_uris(authed(
            identity::SetClientRedirectUrisRequest {
                client_id: client_id.clone(),
                redirect_uris: vec![redirect.into()],
            },
            &token,
        ))
        .await
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let base = format!("http://{}", dev.platform.http_addr);
    let mut authorize = reqwest::Url::parse(&format!("{base}/oauth2/authorize")).unwrap();
    authorize.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", client_id.as_str()),
        ("redirect_uri", redirect),
        ("scope", "openid email"),
        ("state", "e2e"),
        // S256 of "e2e-verifier-e2e-verifier-e2e-verifier-e2e-verifier".
        (
            "code_challenge",
            "hKAziBtJFh_8a52ORTL6PsY5CrWAgF_49F4gPbk2t6U",
        ),
        ("code_challenge_method", "S256"),
    ]);
    let page = http.get(authorize).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await.unwrap();
    let fields = |extra: &[(&str, &str)]| {
        let mut form = vec![
            ("request_id".to_owned(), hidden_value(&html, "request_id")),
            ("csrf_token".to_owned(), hidden_value(&html, "csrf_token")),
        ];
        form.extend(
            extra
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        form
    };
    // The template may still be being created when the first page is
    // asked for: wait until codes go through notifications (the outbox).
    let outbox_before = std::fs::read_dir(&dev.platform.outbox)
        .map(|d| d.count())
        .unwrap_or(0);
    let registered = http
        .post(format!("{base}/oauth2/register"))
        .header("cookie", &cookie)
        .form(&fields(&[
            ("national_id", "12.345.678-5"),
            ("given_names", "Ana"),
            ("family_names", "Rojas"),
            ("email", "ana@example.cl"),
            ("password", "un largo paseo junto al mar"),
        ]))
        .send()
        .await
        .unwrap();
    let page = registered.text().await.unwrap();
    assert!(page.contains("name=\"email_code\""), "{page}");
    // The code arrives as a sandbox email in the outbox.
    let mut code = None;
    for _ in 0..200 {
        let emails: Vec<_> = std::fs::read_dir(&dev.platform.outbox)
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        if emails.len() > outbox_before {
            for email in emails {
                let raw = std::fs::read(&email).unwrap_or_default();
                let Some(message) = mail_parser::MessageParser::default().parse(&raw) else {
                    continue;
                };
                let to_ana = message
                    .to()
                    .and_then(|to| to.first())
                    .and_then(|a| a.address())
                    == Some("ana@example.cl");
                let body = message.body_text(0).unwrap_or_default().into_owned();
                let marker = "Your Atiende verification code is ";
                if to_ana && let Some(i) = body.find(marker) {
                    code = body
                        .get(i + marker.len()..i + marker.len() + 6)
                        .map(str::to_owned);
                }
            }
        }
        if code.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let code = code.expect("the code email in the outbox");
    assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
    let verified = http
        .post(format!("{base}/oauth2/verify-email"))
        .header("cookie", &cookie)
        .form(&fields(&[("email_code", &code)]))
        .send()
        .await
        .unwrap();
    assert!(
        verified
            .headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("atiende_session=")),
        "signed in"
    );
    assert!(verified.text().await.unwrap().contains("name=\"decision\""));
    dev.trigger.trigger();
    dev.platform.wait().await.unwrap();
}
