//! The payment lifecycle over gRPC: create, read, list, the sandbox card
//! step, capture, cancel and events.

use atiende_platform::auth::{Environment, Scope};
use atiende_platform::testing;
use atiende_proto::payments::v1 as pb;
use pb::PaymentState as S;
use tonic::Code;

use crate::support::{
    ALL, DECLINED, EXPIRED_CARD, Engine, PROVIDER_ERROR, TestApp, VISA_OK, WRONG_CVC, agency_token,
    authed, minor, payment_request,
};

pub async fn created_payments_can_be_read_and_listed_with_filters_and_pages(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let created = app.create(&token, payment_request(15_000, "CLP")).await;
    assert!(created.payment_id.starts_with("pay_"));
    assert_eq!(created.state(), S::Created);
    assert_eq!(minor(&created.amount), 15_000);
    assert!(
        created
            .next_url
            .starts_with(&format!("{}/pay/{}/", app.public_url, created.payment_id)),
        "{}",
        created.next_url
    );
    let create_time = created.create_time.unwrap();
    let expire_time = created.expire_time.unwrap();
    assert_eq!(expire_time.seconds - create_time.seconds, 90 * 60);
    assert_eq!(minor(&created.refund_amount_available), 0);
    assert!(created.fee.is_none());

    let read = app.get(&token, &created.payment_id).await;
    assert_eq!(read, created);

    // Four more, one with another reference, one paid by card.
    let mut other = payment_request(2_500, "USD");
    other.reference = "OTRA".into();
    let other = app.create(&token, other).await;
    let paid = app.paid(&token, 990, "CLP").await;
    app.create(&token, payment_request(1, "CLP")).await;
    app.create(&token, payment_request(2, "CLP")).await;

    let list = |request: pb::ListPaymentsRequest| {
        let mut client = app.payments();
        let token = token.clone();
        async move {
            client
                .list_payments(authed(request, &token))
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Paged, newest first.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = list(pb::ListPaymentsRequest {
            page_size: 2,
            page_token,
            ..Default::default()
        })
        .await;
        assert!(page.payments.len() <= 2);
        seen.extend(
            page.payments
                .into_iter()
                .map(|p| p.amount.unwrap().amount_minor),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, [2, 1, 990, 2_500, 15_000]);

    let by_reference = list(pb::ListPaymentsRequest {
        reference: "OTRA".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_reference.payments, [other]);
    let by_state = list(pb::ListPaymentsRequest {
        states: vec![S::Success.into()],
        ..Default::default()
    })
    .await;
    assert_eq!(by_state.payments, [paid]);
    let by_card = list(pb::ListPaymentsRequest {
        card_last_four_digits: "4242".into(),
        ..Default::default()
    })
    .await;
    assert_eq!(by_card.payments.len(), 1);
    let none_before = list(pb::ListPaymentsRequest {
        create_time_range: Some(atiende_proto::common::v1::TimeRange {
            start_time: None,
            end_time: Some(create_time),
        }),
        ..Default::default()
    })
    .await;
    assert!(none_before.payments.is_empty());

    // A page token is bound to its filters.
    let first = list(pb::ListPaymentsRequest {
        page_size: 1,
        ..Default::default()
    })
    .await;
    let misuse = app
        .payments()
        .list_payments(authed(
            pb::ListPaymentsRequest {
                page_size: 1,
                reference: "OTRA".into(),
                page_token: first.next_page_token,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(misuse.code(), Code::InvalidArgument);

    let missing = app
        .payments()
        .get_payment(authed(
            pb::GetPaymentRequest {
                payment_id: atiende_platform::ids::new_id("pay"),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

pub async fn sandbox_test_cards_drive_the_state_machine(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);

    let paid = app.paid(&token, 10_000, "CLP").await;
    assert_eq!(paid.next_url, "", "the page is single-use");
    let card = paid.card_details.clone().unwrap();
    assert_eq!(card.brand(), pb::CardBrand::Visa);
    assert_eq!(
        (
            card.first_six_digits.as_str(),
            card.last_four_digits.as_str()
        ),
        ("424242", "4242")
    );
    assert_eq!((card.expiry_month, card.expiry_year), (12, 2099));
    // 1.5 % of 10,000 plus 100.
    assert_eq!(minor(&paid.fee), 250);
    assert_eq!(minor(&paid.net_amount), 9_750);
    assert_eq!(minor(&paid.refund_amount_available), 10_000);

    for (number, state, reason) in [
        (DECLINED, S::Failed, pb::PaymentFailureReason::Rejected),
        (EXPIRED_CARD, S::Failed, pb::PaymentFailureReason::Rejected),
        (WRONG_CVC, S::Failed, pb::PaymentFailureReason::Rejected),
        (
            PROVIDER_ERROR,
            S::Error,
            pb::PaymentFailureReason::ProviderError,
        ),
    ] {
        let payment = app.create(&token, payment_request(5_000, "CLP")).await;
        let done = app
            .simulate(&token, &payment.payment_id, number)
            .await
            .unwrap();
        assert_eq!(
            (done.state(), done.failure_reason()),
            (state, reason),
            "{number}"
        );
        assert!(!done.failure_message.is_empty());
        assert!(done.fee.is_none());
        assert_eq!(minor(&done.refund_amount_available), 0);
        // A final payment takes no second card.
        let again = app
            .simulate(&token, &payment.payment_id, VISA_OK)
            .await
            .unwrap_err();
        assert_eq!(again.code(), Code::FailedPrecondition);
    }

    // American Express and Mastercard test cards succeed too.
    for number in ["3782 822463 10005", "5555 5555 5555 4444"] {
        let payment = app.create(&token, payment_request(700, "USD")).await;
        let done = app
            .simulate(&token, &payment.payment_id, number)
            .await
            .unwrap();
        assert_eq!(done.state(), S::Success, "{number}");
        // 1.5 % of 7.00 USD is 10.5 cents → 11, plus 30.
        assert_eq!(minor(&done.fee), 41);
    }
    Ok(())
}

pub async fn delayed_capture_waits_for_capture_and_captures_once(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let mut request = payment_request(20_000, "CLP");
    request.delayed_capture = true;
    let payment = app.create(&token, request).await;
    let capture = |id: &str| {
        let mut client = app.payments();
        let request = authed(
            pb::CapturePaymentRequest {
                payment_id: id.into(),
            },
            &token,
        );
        async move {
            client
                .capture_payment(request)
                .await
                .map(|r| r.into_inner().payment.unwrap())
        }
    };
    // Not authorised yet: nothing to capture.
    let early = capture(&payment.payment_id).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition);

    let authorised = app
        .simulate(&token, &payment.payment_id, VISA_OK)
        .await
        .unwrap();
    assert_eq!(authorised.state(), S::Capturable);
    assert!(authorised.fee.is_none());
    assert!(
        app.balances(&token).await.is_empty(),
        "nothing posted before capture"
    );

    // Concurrent captures: all succeed, one capture is posted.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        tasks.push(tokio::spawn(capture(&payment.payment_id)));
    }
    for task in tasks {
        let captured = task.await?.unwrap();
        assert_eq!(captured.state(), S::Success);
        assert_eq!(minor(&captured.fee), 400);
    }
    let balances = app.balances(&token).await;
    assert_eq!(
        balances[&("CLP".into(), pb::LedgerAccount::Collections.into())],
        -20_000
    );
    let events = list_events(&app, &token, &payment.payment_id).await;
    let succeeded = events
        .iter()
        .filter(|e| e.r#type() == pb::PaymentEventType::PaymentSucceeded)
        .count();
    assert_eq!(succeeded, 1);
    Ok(())
}

pub async fn cancel_releases_unfinished_payments_only(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let cancel = |id: String| {
        let mut client = app.payments();
        let request = authed(pb::CancelPaymentRequest { payment_id: id }, &token);
        async move {
            client
                .cancel_payment(request)
                .await
                .map(|r| r.into_inner().payment.unwrap())
        }
    };
    let fresh = app.create(&token, payment_request(1_000, "CLP")).await;
    let cancelled = cancel(fresh.payment_id.clone()).await.unwrap();
    assert_eq!(cancelled.state(), S::Cancelled);
    assert_eq!(
        cancelled.failure_reason(),
        pb::PaymentFailureReason::CancelledByAgency
    );
    assert_eq!(cancelled.next_url, "");
    // Cancelling again returns it unchanged.
    assert_eq!(cancel(fresh.payment_id.clone()).await.unwrap(), cancelled);
    // A cancelled payment takes no card.
    let card = app
        .simulate(&token, &fresh.payment_id, VISA_OK)
        .await
        .unwrap_err();
    assert_eq!(card.code(), Code::FailedPrecondition);

    let mut delayed = payment_request(1_000, "CLP");
    delayed.delayed_capture = true;
    let delayed = app.create(&token, delayed).await;
    app.simulate(&token, &delayed.payment_id, VISA_OK)
        .await
        .unwrap();
    assert_eq!(
        cancel(delayed.payment_id.clone()).await.unwrap().state(),
        S::Cancelled
    );

    let paid = app.paid(&token, 1_000, "CLP").await;
    let refused = cancel(paid.payment_id.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(app.get(&token, &paid.payment_id).await.state(), S::Success);
    Ok(())
}

pub async fn list_events(app: &TestApp, token: &str, payment_id: &str) -> Vec<pb::PaymentEvent> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .payments()
            .list_payment_events(authed(
                pb::ListPaymentEventsRequest {
                    payment_id: payment_id.into(),
                    page_size: 2,
                    page_token,
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        events.extend(page.events);
        if page.next_page_token.is_empty() {
            return events;
        }
        page_token = page.next_page_token;
    }
}

pub async fn events_record_every_change_in_order(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let paid = app.paid(&token, 10_000, "CLP").await;
    app.refund(&token, &paid.payment_id, 2_000, 10_000, "CLP")
        .await
        .unwrap();
    let events = list_events(&app, &token, &paid.payment_id).await;
    use pb::PaymentEventType as E;
    let types: Vec<E> = events.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        types,
        [
            E::PaymentCreated,
            E::PaymentStarted,
            E::PaymentSubmitted,
            E::PaymentSucceeded,
            E::RefundSubmitted,
            E::RefundSucceeded
        ]
    );
    // Each event carries the payment as it was right after it.
    let states: Vec<S> = events
        .iter()
        .map(|e| e.payment.as_ref().unwrap().state())
        .collect();
    assert_eq!(
        states,
        [
            S::Created,
            S::Started,
            S::Submitted,
            S::Success,
            S::Success,
            S::Success
        ]
    );
    assert!(events[0].payment.as_ref().unwrap().card_details.is_none());
    // The card step opened the page and took the card in one write: the
    // STARTED event still shows no card.
    assert!(events[1].payment.as_ref().unwrap().card_details.is_none());
    assert!(events[2].payment.as_ref().unwrap().card_details.is_some());
    assert!(
        events
            .iter()
            .all(|e| e.payment.as_ref().unwrap().next_url.is_empty())
    );
    assert_eq!(
        minor(&events[3].payment.as_ref().unwrap().refund_amount_available),
        10_000
    );
    assert_eq!(
        minor(&events[4].payment.as_ref().unwrap().refund_amount_available),
        8_000
    );
    let refund = events[5].refund.as_ref().unwrap();
    assert_eq!(refund.state(), pb::RefundState::Success);
    assert_eq!(
        events[4].refund.as_ref().unwrap().state(),
        pb::RefundState::Submitted
    );
    let mut ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);
    assert!(ids.iter().all(|id| id.starts_with("evt_")));
    Ok(())
}

/// What an event shows of the payment: (type, state, card kept, failure
/// reason, fee).
type Seen = (
    pb::PaymentEventType,
    S,
    bool,
    pb::PaymentFailureReason,
    Option<i64>,
);

pub async fn card_step_records_the_same_events_on_either_gateway_path(
    engine: Engine,
) -> anyhow::Result<()> {
    use pb::PaymentEventType as E;
    use pb::PaymentFailureReason as R;
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let gateway = app.payments.service().sandbox_gateway();
    let seen = |events: Vec<pb::PaymentEvent>| -> Vec<Seen> {
        events
            .iter()
            .map(|e| {
                let p = e.payment.as_ref().unwrap();
                (
                    e.r#type(),
                    p.state(),
                    p.card_details.is_some(),
                    p.failure_reason(),
                    p.fee.as_ref().map(|_| minor(&p.fee)),
                )
            })
            .collect()
    };
    let opened = [
        (E::PaymentCreated, S::Created, false, R::Unspecified, None),
        (E::PaymentStarted, S::Started, false, R::Unspecified, None),
        (
            E::PaymentSubmitted,
            S::Submitted,
            true,
            R::Unspecified,
            None,
        ),
    ];
    let cases: [(&str, bool, Seen); 4] = [
        (
            VISA_OK,
            false,
            (
                E::PaymentSucceeded,
                S::Success,
                true,
                R::Unspecified,
                Some(250),
            ),
        ),
        (
            VISA_OK,
            true,
            (
                E::PaymentCapturable,
                S::Capturable,
                true,
                R::Unspecified,
                None,
            ),
        ),
        (
            DECLINED,
            false,
            (E::PaymentFailed, S::Failed, true, R::Rejected, None),
        ),
        (
            PROVIDER_ERROR,
            false,
            (E::PaymentErrored, S::Error, true, R::ProviderError, None),
        ),
    ];
    // The sandbox answers in process, so its card step is one write; a
    // gateway outside the process has the submission written first. The
    // events, and what each shows, are the same.
    for as_if_remote in [false, true] {
        gateway.set_as_if_remote(as_if_remote);
        for (number, delayed, last) in &cases {
            let mut request = payment_request(10_000, "CLP");
            request.delayed_capture = *delayed;
            let payment = app.create(&token, request).await;
            let done = app
                .simulate(&token, &payment.payment_id, number)
                .await
                .unwrap();
            let expected: Vec<Seen> = opened.iter().chain([last]).cloned().collect();
            assert_eq!(
                seen(list_events(&app, &token, &payment.payment_id).await),
                expected,
                "{number}, remote: {as_if_remote}"
            );
            assert_eq!(done.state(), last.1);
        }
    }
    gateway.set_as_if_remote(false);
    Ok(())
}

pub async fn simulate_card_submission_is_sandbox_only(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = atiende_platform::ids::new_id("agy");
    let live = testing::token(&agency, ALL, Environment::Live);
    let payment = app.create(&live, payment_request(1_000, "CLP")).await;
    assert_eq!(
        payment.environment(),
        atiende_proto::common::v1::Environment::Live
    );
    let refused = app
        .simulate(&live, &payment.payment_id, VISA_OK)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(
        app.get(&live, &payment.payment_id).await.state(),
        S::Created
    );
    // Whatever the scopes.
    let only_create = testing::token(&agency, &[Scope::PaymentsCreate], Environment::Live);
    let refused = app
        .simulate(&only_create, &payment.payment_id, VISA_OK)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    Ok(())
}
