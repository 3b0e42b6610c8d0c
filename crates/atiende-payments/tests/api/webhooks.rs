//! WebhookService and the webhook job, with a real HTTP receiver.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use atiende_platform::auth::Environment;
use atiende_platform::storage::now_micros;
use atiende_platform::testing;
use atiende_proto::payments::v1 as pb;
use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use pb::webhook_service_client::WebhookServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{ALL, Engine, TestApp, agency_token, authed};

const SECOND: i64 = 1_000_000;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    signature: String,
    body: Vec<u8>,
}

#[derive(Clone, Default)]
struct Receiver {
    received: Arc<Mutex<Vec<Received>>>,
    /// Answer 500 to this many requests first.
    failures_left: Arc<Mutex<usize>>,
}

async fn hook(
    State(receiver): State<Receiver>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    receiver.received.lock().unwrap().push(Received {
        path: uri.path().to_owned(),
        signature: headers
            .get("atiende-signature")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        body: body.to_vec(),
    });
    let mut failures = receiver.failures_left.lock().unwrap();
    if *failures > 0 {
        *failures -= 1;
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

impl Receiver {
    /// A receiver on a local port; its base URL.
    async fn start(failures: usize) -> (Self, String) {
        let receiver = Receiver {
            failures_left: Arc::new(Mutex::new(failures)),
            ..Default::default()
        };
        let router = axum::Router::new()
            .fallback(axum::routing::post(hook))
            .with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move { axum::serve(listener, router).await });
        (receiver, url)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn webhooks(app: &TestApp) -> WebhookServiceClient<Channel> {
    WebhookServiceClient::new(app.channel.clone())
}

fn endpoint(url: &str, types: &[pb::PaymentEventType]) -> pb::CreateWebhookEndpointRequest {
    pb::CreateWebhookEndpointRequest {
        url: url.into(),
        event_types: types.iter().map(|t| (*t).into()).collect(),
        description: "finanzas".into(),
        idempotency_key: String::new(),
    }
}

/// Verifies a request as the contract tells receivers to: HMAC-SHA256
/// under the secret over "<t>.<body>", compared in constant time.
fn verify(secret: &str, received: &Received) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in received.signature.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = Some(value.to_owned()),
            Some(("v1", value)) => v1.push(value.to_owned()),
            _ => {}
        }
    }
    let Some(t) = t else { return false };
    let age = now_micros() / SECOND - t.parse::<i64>().unwrap();
    if age.abs() > 300 {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut message = format!("{t}.").into_bytes();
    message.extend_from_slice(&received.body);
    v1.iter().any(|hex| {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
            .collect();
        hmac::verify(&key, &message, &bytes).is_ok()
    })
}

pub async fn webhooks_are_signed_retried_and_verifiable(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let (_, other) = agency_token(ALL);
    let (receiver, base) = Receiver::start(2).await;
    let request = pb::CreateWebhookEndpointRequest {
        idempotency_key: "hook-1".into(),
        ..endpoint(&format!("{base}/hook"), &[])
    };
    let created = webhooks(&app)
        .create_webhook_endpoint(authed(request.clone(), &token))
        .await?
        .into_inner();
    assert!(created.signing_secret.starts_with("whsec_"));
    let secret = created.signing_secret.clone();
    // A replay returns the same endpoint and secret.
    let replay = webhooks(&app)
        .create_webhook_endpoint(authed(request, &token))
        .await?
        .into_inner();
    assert_eq!(replay, created);

    app.paid(&other, 500, "CLP").await;
    let paid = app.paid(&token, 10_000, "CLP").await;
    let job = app.payments.service();
    let now = now_micros();
    // Four events; the receiver fails the first two requests.
    assert_eq!(job.deliver_due_webhooks(now).await?, 2);
    assert_eq!(job.deliver_due_webhooks(now).await?, 0, "retries wait");
    assert_eq!(job.deliver_due_webhooks(now + 11 * SECOND).await?, 2);
    assert_eq!(job.deliver_due_webhooks(now + 86_400 * SECOND).await?, 0);

    let received = receiver.received();
    assert_eq!(received.len(), 6);
    for r in &received {
        assert!(verify(&secret, r), "signature of {r:?}");
        assert!(!verify("whsec_wrong", r));
        let mut tampered = r.clone();
        tampered.body.push(b' ');
        assert!(!verify(&secret, &tampered));
    }
    let bodies: Vec<serde_json::Value> = received
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let ids: BTreeSet<&str> = bodies
        .iter()
        .map(|b| b["eventId"].as_str().unwrap())
        .collect();
    let events = crate::lifecycle::list_events(&app, &token, &paid.payment_id).await;
    let expected: BTreeSet<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        ids, expected,
        "each event delivered, none of the other agency's"
    );
    let succeeded = bodies
        .iter()
        .find(|b| b["type"] == "PAYMENT_EVENT_TYPE_PAYMENT_SUCCEEDED")
        .unwrap();
    let payment = &succeeded["payment"];
    assert_eq!(payment["paymentId"], paid.payment_id.as_str());
    assert_eq!(payment["state"], "PAYMENT_STATE_SUCCESS");
    assert_eq!(payment["amount"]["amountMinor"], "10000");
    assert_eq!(payment["amount"]["currencyCode"], "CLP");
    assert_eq!(payment["fee"]["amountMinor"], "250");
    assert_eq!(payment["cardDetails"]["lastFourDigits"], "4242");
    assert!(payment.get("nextUrl").is_none());
    assert!(succeeded["occurTime"].as_str().unwrap().ends_with('Z'));
    Ok(())
}

pub async fn webhook_endpoints_filter_list_delete_and_are_scoped(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (agency, token) = agency_token(ALL);
    let (_, other) = agency_token(ALL);
    let (receiver, base) = Receiver::start(0).await;
    let only_success = webhooks(&app)
        .create_webhook_endpoint(authed(
            endpoint(
                &format!("{base}/success"),
                &[pb::PaymentEventType::PaymentSucceeded],
            ),
            &token,
        ))
        .await?
        .into_inner()
        .webhook_endpoint
        .unwrap();
    let everything = webhooks(&app)
        .create_webhook_endpoint(authed(endpoint(&format!("{base}/all"), &[]), &token))
        .await?
        .into_inner()
        .webhook_endpoint
        .unwrap();
    app.paid(&token, 1_000, "CLP").await;
    let job = app.payments.service();
    assert_eq!(job.deliver_due_webhooks(now_micros()).await?, 5);
    let paths =
        |r: &Receiver| -> Vec<String> { r.received().into_iter().map(|r| r.path).collect() };
    assert_eq!(
        paths(&receiver).iter().filter(|p| *p == "/success").count(),
        1
    );
    assert_eq!(paths(&receiver).iter().filter(|p| *p == "/all").count(), 4);

    // Another agency can neither see nor delete them.
    let list = |token: String| {
        let mut client = webhooks(&app);
        async move {
            client
                .list_webhook_endpoints(authed(pb::ListWebhookEndpointsRequest::default(), &token))
                .await
                .unwrap()
                .into_inner()
                .webhook_endpoints
        }
    };
    assert!(list(other.clone()).await.is_empty());
    let delete = |id: &str, token: &str| {
        let mut client = webhooks(&app);
        let request = authed(
            pb::DeleteWebhookEndpointRequest {
                webhook_endpoint_id: id.into(),
            },
            token,
        );
        async move { client.delete_webhook_endpoint(request).await }
    };
    let foreign = delete(&everything.webhook_endpoint_id, &other)
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
    delete(&everything.webhook_endpoint_id, &token).await?;
    assert_eq!(list(token.clone()).await, [only_success]);

    app.paid(&token, 1_000, "CLP").await;
    assert_eq!(job.deliver_due_webhooks(now_micros()).await?, 1);
    assert_eq!(paths(&receiver).iter().filter(|p| *p == "/all").count(), 4);

    // Bad URLs; sandbox-only local URLs; at most 16 endpoints.
    let create = |request: pb::CreateWebhookEndpointRequest, token: String| {
        let mut client = webhooks(&app);
        async move {
            client
                .create_webhook_endpoint(authed(request, &token))
                .await
        }
    };
    let insecure = create(endpoint("http://example.com/hook", &[]), token.clone())
        .await
        .unwrap_err();
    assert_eq!(crate::support::violated_fields(&insecure), ["url"]);
    let live = testing::token(&agency, ALL, Environment::Live);
    // Live endpoints: https, on the public internet only.
    for url in [
        format!("{base}/x"),
        "https://localhost/hook".to_owned(),
        "https://10.1.2.3/hook".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
    ] {
        let refused = create(endpoint(&url, &[]), live.clone()).await.unwrap_err();
        assert_eq!(crate::support::violated_fields(&refused), ["url"], "{url}");
    }
    create(
        endpoint("https://hooks.municipio.example/atiende", &[]),
        live,
    )
    .await?;
    for i in 1..16 {
        create(endpoint(&format!("{base}/{i}"), &[]), token.clone()).await?;
    }
    let too_many = create(endpoint(&format!("{base}/17"), &[]), token.clone())
        .await
        .unwrap_err();
    assert_eq!(too_many.code(), Code::FailedPrecondition);
    let reader = testing::token(
        &agency,
        &[atiende_platform::auth::Scope::PaymentsRead],
        Environment::Sandbox,
    );
    let denied = create(endpoint(&format!("{base}/r"), &[]), reader)
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    Ok(())
}
