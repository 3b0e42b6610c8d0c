//! RefundService: compare-and-set refunds.

use atiende_proto::payments::v1 as pb;
use tonic::Code;

use crate::support::{
    ALL, Engine, REFUNDS_FAIL, TestApp, agency_token, authed, minor, payment_request,
    refund_request,
};

pub async fn refunds_are_compare_and_set_against_the_available_amount(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let paid = app.paid(&token, 10_000, "CLP").await;
    let id = paid.payment_id.as_str();

    let first = app.refund(&token, id, 3_000, 10_000, "CLP").await.unwrap();
    assert!(first.refund_id.starts_with("rfd_"));
    assert_eq!(first.state(), pb::RefundState::Success);
    assert_eq!(minor(&first.amount), 3_000);
    let after = app.get(&token, id).await;
    assert_eq!(minor(&after.refund_amount_available), 7_000);
    assert_eq!(minor(&after.refund_amount_submitted), 3_000);

    // A stale available amount: refused, nothing refunded.
    let stale = app
        .refund(&token, id, 1_000, 10_000, "CLP")
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);
    // More than is available: invalid.
    let too_much = app
        .refund(&token, id, 7_001, 7_000, "CLP")
        .await
        .unwrap_err();
    assert_eq!(too_much.code(), Code::InvalidArgument);
    assert_eq!(
        crate::support::violated_fields(&too_much),
        ["amount.amount_minor"]
    );
    // Another currency: invalid.
    let currency = app.refund(&token, id, 100, 7_000, "USD").await.unwrap_err();
    assert_eq!(currency.code(), Code::InvalidArgument);
    // The rest, in full.
    app.refund(&token, id, 7_000, 7_000, "CLP").await.unwrap();
    let done = app.get(&token, id).await;
    assert_eq!(minor(&done.refund_amount_available), 0);
    assert_eq!(minor(&done.refund_amount_submitted), 10_000);
    let nothing_left = app.refund(&token, id, 1, 0, "CLP").await.unwrap_err();
    assert_eq!(nothing_left.code(), Code::InvalidArgument);

    // Only SUCCESS payments are refundable.
    let unpaid = app.create(&token, payment_request(500, "CLP")).await;
    let refused = app
        .refund(&token, &unpaid.payment_id, 100, 0, "CLP")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);

    // Get and list.
    let got = app
        .refunds()
        .get_refund(authed(
            pb::GetRefundRequest {
                refund_id: first.refund_id.clone(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .refund
        .unwrap();
    assert_eq!(got, first);
    let listed = app
        .refunds()
        .list_refunds(authed(
            pb::ListRefundsRequest {
                payment_id: id.into(),
                page_size: 1,
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(listed.refunds.len(), 1);
    assert_eq!(minor(&listed.refunds[0].amount), 7_000, "newest first");
    assert!(!listed.next_page_token.is_empty());
    // By payment: that payment's refunds only, though the agency has more.
    let other = app.paid(&token, 2_000, "CLP").await;
    app.refund(&token, &other.payment_id, 500, 2_000, "CLP")
        .await
        .unwrap();
    let by_payment = |payment_id: &str| {
        let request = authed(
            pb::ListRefundsRequest {
                payment_id: payment_id.to_owned(),
                page_size: 50,
                ..Default::default()
            },
            &token,
        );
        let mut refunds = app.refunds();
        async move { refunds.list_refunds(request).await }
    };
    let amounts: Vec<i64> = by_payment(id)
        .await?
        .into_inner()
        .refunds
        .iter()
        .map(|r| minor(&r.amount))
        .collect();
    assert_eq!(amounts, [7_000, 3_000]);
    let others = by_payment(&other.payment_id).await?.into_inner().refunds;
    assert_eq!(others.len(), 1);
    assert_eq!(others[0].payment_id, other.payment_id);
    let only_success = app
        .refunds()
        .list_refunds(authed(
            pb::ListRefundsRequest {
                states: vec![pb::RefundState::Error.into()],
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    assert!(only_success.refunds.is_empty());
    Ok(())
}

pub async fn concurrent_refunds_never_exceed_the_captured_amount(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = std::sync::Arc::new(TestApp::spawn(engine).await?);
    let (_, token) = agency_token(ALL);
    let paid = app.paid(&token, 10_000, "CLP").await;

    // Everyone believes 10,000 is available: exactly one refund is made.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = app.refunds();
        let request = authed(
            refund_request(&paid.payment_id, 4_000, 10_000, "CLP"),
            &token,
        );
        tasks.push(tokio::spawn(
            async move { client.create_refund(request).await },
        ));
    }
    let mut made = 0;
    for task in tasks {
        match task.await? {
            Ok(_) => made += 1,
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition),
        }
    }
    assert_eq!(made, 1);

    // Workers that re-read and retry: together they refund what is left in
    // 1,500 steps, never more.
    let mut workers = Vec::new();
    for _ in 0..6 {
        let app = app.clone();
        let token = token.clone();
        let payment_id = paid.payment_id.clone();
        workers.push(tokio::spawn(async move {
            let mut refunded = 0;
            loop {
                let available = minor(&app.get(&token, &payment_id).await.refund_amount_available);
                if available < 1_500 {
                    return refunded;
                }
                match app
                    .refund(&token, &payment_id, 1_500, available, "CLP")
                    .await
                {
                    Ok(_) => refunded += 1_500,
                    Err(s) => assert!(
                        matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument),
                        "{s:?}"
                    ),
                }
            }
        }));
    }
    let mut refunded = 4_000;
    for worker in workers {
        refunded += worker.await?;
    }
    assert_eq!(refunded, 4_000 + 4 * 1_500);
    let payment = app.get(&token, &paid.payment_id).await;
    assert_eq!(minor(&payment.refund_amount_submitted), refunded);
    assert_eq!(minor(&payment.refund_amount_available), 10_000 - refunded);
    let refunds = app
        .refunds()
        .list_refunds(authed(
            pb::ListRefundsRequest {
                payment_id: paid.payment_id.clone(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .refunds;
    assert_eq!(
        refunds.iter().map(|r| minor(&r.amount)).sum::<i64>(),
        refunded
    );
    let balances = app.balances(&token).await;
    assert_eq!(
        balances[&("CLP".into(), pb::LedgerAccount::Refunds.into())],
        refunded
    );
    Ok(())
}

pub async fn refund_replay_returns_the_original_refund(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let paid = app.paid(&token, 5_000, "CLP").await;
    let keyed = |amount, available| pb::CreateRefundRequest {
        idempotency_key: "refund-1".into(),
        ..refund_request(&paid.payment_id, amount, available, "CLP")
    };
    let original = app
        .refunds()
        .create_refund(authed(keyed(1_000, 5_000), &token))
        .await?
        .into_inner()
        .refund
        .unwrap();
    // The available amount has changed since; the key is checked first.
    let replay = app
        .refunds()
        .create_refund(authed(keyed(1_000, 5_000), &token))
        .await?
        .into_inner()
        .refund
        .unwrap();
    assert_eq!(replay, original);
    let reused = app
        .refunds()
        .create_refund(authed(keyed(2_000, 4_000), &token))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert_eq!(
        minor(
            &app.get(&token, &paid.payment_id)
                .await
                .refund_amount_available
        ),
        4_000
    );
    Ok(())
}

/// The sandbox card whose refunds fail: the refund ends in ERROR, its
/// amount is available again, and the ledger reverses it.
pub async fn a_refund_the_provider_fails_is_reversed_and_its_amount_available_again(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let payment = app.create(&token, payment_request(10_000, "CLP")).await;
    let paid = app
        .simulate(&token, &payment.payment_id, REFUNDS_FAIL)
        .await
        .unwrap();
    assert_eq!(paid.state(), pb::PaymentState::Success);
    let refund = app
        .refund(&token, &paid.payment_id, 4_000, 10_000, "CLP")
        .await
        .unwrap();
    assert_eq!(refund.state(), pb::RefundState::Error);
    let after = app.get(&token, &paid.payment_id).await;
    assert_eq!(minor(&after.refund_amount_available), 10_000);
    assert_eq!(minor(&after.refund_amount_submitted), 0);

    let balances = app.balances(&token).await;
    let account = |a: pb::LedgerAccount| balances.get(&("CLP".into(), a.into())).copied();
    // Refunded and reversed: nothing left in REFUNDS.
    assert_eq!(account(pb::LedgerAccount::Refunds), Some(0));
    assert_eq!(
        account(pb::LedgerAccount::AgencyReceivable),
        Some(10_000 - 250)
    );
    let events = crate::lifecycle::list_events(&app, &token, &paid.payment_id).await;
    let types: Vec<_> = events.iter().rev().take(2).map(|e| e.r#type()).collect();
    assert_eq!(
        types,
        [
            pb::PaymentEventType::RefundErrored,
            pb::PaymentEventType::RefundSubmitted
        ]
    );
    // The whole amount can be refunded again (and fails again, safely).
    let again = app
        .refund(&token, &paid.payment_id, 10_000, 10_000, "CLP")
        .await
        .unwrap();
    assert_eq!(again.state(), pb::RefundState::Error);
    Ok(())
}
