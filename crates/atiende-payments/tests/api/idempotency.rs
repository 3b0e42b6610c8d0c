//! Idempotency keys on CreatePayment.

use atiende_proto::payments::v1 as pb;
use tonic::Code;

use crate::support::{ALL, Engine, TestApp, agency_token, authed, payment_request};

fn keyed(key: &str) -> pb::CreatePaymentRequest {
    pb::CreatePaymentRequest {
        idempotency_key: key.into(),
        ..payment_request(12_345, "CLP")
    }
}

async fn count_payments(app: &TestApp, token: &str) -> usize {
    app.payments()
        .list_payments(authed(pb::ListPaymentsRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .payments
        .len()
}

pub async fn replayed_idempotency_key_returns_original_payment(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let original = app.create(&token, keyed("order-1")).await;
    let replay = app.create(&token, keyed("order-1")).await;
    assert_eq!(replay, original);
    // Another key is another payment.
    let other = app.create(&token, keyed("order-2")).await;
    assert_ne!(other.payment_id, original.payment_id);
    // The replay returns the payment as it now is.
    app.simulate(&token, &original.payment_id, crate::support::VISA_OK)
        .await
        .unwrap();
    let later = app.create(&token, keyed("order-1")).await;
    assert_eq!(later.payment_id, original.payment_id);
    assert_eq!(later.state(), pb::PaymentState::Success);
    // Keys belong to the agency: another agency's same key is its own.
    let (_, other_token) = agency_token(ALL);
    let theirs = app.create(&other_token, keyed("order-1")).await;
    assert_ne!(theirs.payment_id, original.payment_id);
    assert_eq!(count_payments(&app, &token).await, 2);
    Ok(())
}

pub async fn idempotency_key_reused_with_different_parameters_is_refused(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    app.create(&token, keyed("k")).await;
    let changes: [fn(&mut pb::CreatePaymentRequest); 5] = [
        |r| r.amount.as_mut().unwrap().amount_minor += 1,
        |r| r.reference.push('x'),
        |r| r.return_url.push('x'),
        |r| {
            r.metadata.insert("otro".into(), "valor".into());
        },
        |r| r.delayed_capture = true,
    ];
    for change in changes {
        let mut request = keyed("k");
        change(&mut request);
        let status = app
            .payments()
            .create_payment(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("idempotency key"),
            "{}",
            status.message()
        );
    }
    assert_eq!(count_payments(&app, &token).await, 1);
    Ok(())
}

pub async fn concurrent_creates_with_one_key_create_one_payment(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let mut client = app.payments();
        let request = authed(keyed("concurrent"), &token);
        tasks.push(tokio::spawn(
            async move { client.create_payment(request).await },
        ));
    }
    let mut ids = Vec::new();
    for task in tasks {
        ids.push(task.await??.into_inner().payment.unwrap().payment_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every request answers with the one payment");
    assert_eq!(count_payments(&app, &token).await, 1);
    Ok(())
}
