//! Every read and write is scoped to the caller's agency and environment,
//! and each RPC needs its scope.

use atiende_platform::auth::{Environment, Scope};
use atiende_platform::testing;
use atiende_proto::payments::v1 as pb;
use tonic::Code;

use crate::support::{
    ALL, Engine, TestApp, VISA_OK, agency_token, authed, card, payment_request, refund_request,
};

/// Every RPC that names a payment or refund, as `token` calls it: the
/// status codes, in a fixed order.
async fn touch_everything(
    app: &TestApp,
    token: &str,
    payment_id: &str,
    refund_id: &str,
) -> Vec<(&'static str, Code)> {
    let id = || payment_id.to_owned();
    let code = |r: Result<(), tonic::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut p = app.payments();
    let mut r = app.refunds();
    vec![
        (
            "GetPayment",
            code(
                p.get_payment(authed(pb::GetPaymentRequest { payment_id: id() }, token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "CapturePayment",
            code(
                p.capture_payment(authed(
                    pb::CapturePaymentRequest { payment_id: id() },
                    token,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "CancelPayment",
            code(
                p.cancel_payment(authed(pb::CancelPaymentRequest { payment_id: id() }, token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "ListPaymentEvents",
            code(
                p.list_payment_events(authed(
                    pb::ListPaymentEventsRequest {
                        payment_id: id(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(drop),
            ),
        ),
        (
            "SimulateCardSubmission",
            code(
                p.simulate_card_submission(authed(card(payment_id, VISA_OK), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "CreateRefund",
            code(
                r.create_refund(authed(refund_request(payment_id, 100, 900, "CLP"), token))
                    .await
                    .map(drop),
            ),
        ),
        (
            "GetRefund",
            code(
                r.get_refund(authed(
                    pb::GetRefundRequest {
                        refund_id: refund_id.into(),
                    },
                    token,
                ))
                .await
                .map(drop),
            ),
        ),
    ]
}

async fn lists_are_empty(app: &TestApp, token: &str) {
    let payments = app
        .payments()
        .list_payments(authed(pb::ListPaymentsRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .payments;
    assert!(payments.is_empty());
    let refunds = app
        .refunds()
        .list_refunds(authed(pb::ListRefundsRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
        .refunds;
    assert!(refunds.is_empty());
    assert!(app.balances(token).await.is_empty());
}

pub async fn agency_cannot_read_or_change_another_agencys_payments(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, owner) = agency_token(ALL);
    let (_, intruder) = agency_token(ALL);
    let paid = app.paid(&owner, 1_000, "CLP").await;
    let refund = app
        .refund(&owner, &paid.payment_id, 100, 1_000, "CLP")
        .await
        .unwrap();
    let before = app.get(&owner, &paid.payment_id).await;

    for (rpc, code) in touch_everything(&app, &intruder, &paid.payment_id, &refund.refund_id).await
    {
        assert_eq!(code, Code::NotFound, "{rpc}");
    }
    lists_are_empty(&app, &intruder).await;
    // Nothing changed for the owner.
    assert_eq!(app.get(&owner, &paid.payment_id).await, before);

    // An unpaid payment can neither be paid nor cancelled by the intruder.
    let open = app.create(&owner, payment_request(500, "CLP")).await;
    for (rpc, code) in touch_everything(&app, &intruder, &open.payment_id, &refund.refund_id).await
    {
        assert_eq!(code, Code::NotFound, "{rpc}");
    }
    assert_eq!(
        app.get(&owner, &open.payment_id).await.state(),
        pb::PaymentState::Created
    );
    Ok(())
}

pub async fn sandbox_and_live_never_see_each_other(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = atiende_platform::ids::new_id("agy");
    let sandbox = testing::token(&agency, ALL, Environment::Sandbox);
    let live = testing::token(&agency, ALL, Environment::Live);
    let paid = app.paid(&sandbox, 1_000, "CLP").await;
    let refund = app
        .refund(&sandbox, &paid.payment_id, 100, 1_000, "CLP")
        .await
        .unwrap();
    for (rpc, code) in touch_everything(&app, &live, &paid.payment_id, &refund.refund_id).await {
        let expected = if rpc == "SimulateCardSubmission" {
            Code::PermissionDenied
        } else {
            Code::NotFound
        };
        assert_eq!(code, expected, "{rpc}");
    }
    lists_are_empty(&app, &live).await;
    let live_payment = app.create(&live, payment_request(700, "CLP")).await;
    let from_sandbox = app
        .payments()
        .get_payment(authed(
            pb::GetPaymentRequest {
                payment_id: live_payment.payment_id,
            },
            &sandbox,
        ))
        .await
        .unwrap_err();
    assert_eq!(from_sandbox.code(), Code::NotFound);
    Ok(())
}

pub async fn scopes_are_enforced(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (agency, owner) = agency_token(ALL);
    let paid = app.paid(&owner, 1_000, "CLP").await;
    let refund = app
        .refund(&owner, &paid.payment_id, 100, 1_000, "CLP")
        .await
        .unwrap();
    let token = |scopes: &[Scope]| testing::token(&agency, scopes, Environment::Sandbox);

    // Read only: every write refused.
    let reader = token(&[Scope::PaymentsRead]);
    for (rpc, code) in touch_everything(&app, &reader, &paid.payment_id, &refund.refund_id).await {
        let expected = match rpc {
            "GetPayment" | "ListPaymentEvents" | "GetRefund" => Code::Ok,
            _ => Code::PermissionDenied,
        };
        assert_eq!(code, expected, "{rpc} as a reader");
    }
    let create = app
        .payments()
        .create_payment(authed(payment_request(1, "CLP"), &reader))
        .await
        .unwrap_err();
    assert_eq!(create.code(), Code::PermissionDenied);

    // Create only: no reads, no refunds.
    let creator = token(&[Scope::PaymentsCreate]);
    for (rpc, code) in touch_everything(&app, &creator, &paid.payment_id, &refund.refund_id).await {
        let expected = match rpc {
            // Allowed: capturing a captured payment returns it unchanged.
            "CapturePayment" => Code::Ok,
            // Allowed, and refused by the state machine (paid already).
            "CancelPayment" | "SimulateCardSubmission" => Code::FailedPrecondition,
            _ => Code::PermissionDenied,
        };
        assert_eq!(code, expected, "{rpc} as a creator");
    }
    for denied in [
        app.ledger()
            .get_balance(authed(pb::GetBalanceRequest::default(), &creator))
            .await
            .map(drop),
        app.payments()
            .list_payments(authed(pb::ListPaymentsRequest::default(), &creator))
            .await
            .map(drop),
        app.refunds()
            .list_refunds(authed(pb::ListRefundsRequest::default(), &creator))
            .await
            .map(drop),
    ] {
        assert_eq!(denied.unwrap_err().code(), Code::PermissionDenied);
    }

    // Refund only: refunds (with the current amount), nothing else.
    let refunder = token(&[Scope::PaymentsRefund]);
    let made = app
        .refund(&refunder, &paid.payment_id, 100, 900, "CLP")
        .await;
    assert!(made.is_ok(), "{made:?}");
    let get = app
        .payments()
        .get_payment(authed(
            pb::GetPaymentRequest {
                payment_id: paid.payment_id.clone(),
            },
            &refunder,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::PermissionDenied);

    // No token at all.
    let anonymous = app
        .payments()
        .get_payment(pb::GetPaymentRequest {
            payment_id: paid.payment_id,
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    Ok(())
}
