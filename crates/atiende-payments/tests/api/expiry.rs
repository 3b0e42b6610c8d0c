//! The expiry job, driven directly with a chosen "now".

use atiende_platform::storage::now_micros;
use atiende_proto::payments::v1 as pb;
use pb::PaymentState as S;

use crate::support::{ALL, Engine, TestApp, VISA_OK, agency_token, payment_request};

const MINUTE: i64 = 60 * 1_000_000;

pub async fn expiry_job_fails_stale_payments_with_the_expired_code(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let now = now_micros();
    let abandoned = app.create(&token, payment_request(1_000, "CLP")).await;
    let paid = app.paid(&token, 1_000, "CLP").await;
    let mut delayed = payment_request(1_000, "CLP");
    delayed.delayed_capture = true;
    let authorised = app.create(&token, delayed).await;
    app.simulate(&token, &authorised.payment_id, VISA_OK)
        .await
        .unwrap();
    let job = app.payments.service();

    // 89 minutes on: nothing is due.
    assert_eq!(job.expire_stale_payments(now + 89 * MINUTE).await?, 0);
    assert_eq!(
        app.get(&token, &abandoned.payment_id).await.state(),
        S::Created
    );

    // 91 minutes on: the abandoned payment fails, EXPIRED; the paid one
    // and the authorised one (7 days to capture) stay.
    assert_eq!(job.expire_stale_payments(now + 91 * MINUTE).await?, 1);
    let expired = app.get(&token, &abandoned.payment_id).await;
    assert_eq!(
        (expired.state(), expired.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Expired)
    );
    assert_eq!(expired.next_url, "");
    assert_eq!(app.get(&token, &paid.payment_id).await.state(), S::Success);
    assert_eq!(
        app.get(&token, &authorised.payment_id).await.state(),
        S::Capturable
    );
    // Running again changes nothing.
    assert_eq!(job.expire_stale_payments(now + 92 * MINUTE).await?, 0);

    // Eight days on, the uncaptured authorisation lapses.
    assert_eq!(
        job.expire_stale_payments(now + 8 * 24 * 60 * MINUTE)
            .await?,
        1
    );
    let lapsed = app.get(&token, &authorised.payment_id).await;
    assert_eq!(
        (lapsed.state(), lapsed.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Expired)
    );
    let events = crate::lifecycle::list_events(&app, &token, &abandoned.payment_id).await;
    assert_eq!(
        events.last().unwrap().r#type(),
        pb::PaymentEventType::PaymentFailed
    );

    // Past its expiry, before the job has run, the sandbox card step is
    // closed, as the page is. The payment is created by another instance:
    // an instance takes the card step from a payment as it has just
    // written it, and this test moves the expiry time in the database
    // instead of waiting 90 minutes.
    let late = app
        .another_instance()
        .await?
        .create(&token, payment_request(1_000, "CLP"))
        .await;
    let db = app.payments.database();
    atiende_platform::on_db!(db, pool => {
        sqlx::query("UPDATE payments SET expire_time = 1 WHERE payment_id = $1")
            .bind(&late.payment_id)
            .execute(pool)
            .await?;
    });
    let refused = app
        .simulate(&token, &late.payment_id, VISA_OK)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(app.get(&token, &late.payment_id).await.state(), S::Created);
    Ok(())
}

/// A refund whose process stopped after it was recorded and before the
/// gateway answered (written here straight to the store, as such a crash
/// leaves it) is finished by the recovery job, once.
pub async fn recovery_job_finishes_refunds_interrupted_before_the_gateway_answered(
    engine: Engine,
) -> anyhow::Result<()> {
    use atiende_payments::domain::money::{Currency, Money};
    use atiende_payments::domain::payment::{Refund, RefundState, Tenant};
    use atiende_payments::store::{self, RefundInsert};

    let app = TestApp::spawn(engine).await?;
    let (agency, token) = agency_token(ALL);
    let paid = app.paid(&token, 10_000, "CLP").await;
    let now = now_micros();
    let refund = Refund {
        refund_id: atiende_platform::ids::new_id("rfd"),
        payment_id: paid.payment_id.clone(),
        tenant: Tenant {
            agency_id: agency,
            environment: atiende_platform::auth::Environment::Sandbox,
        },
        amount: Money::new(Currency::parse("CLP").unwrap(), 3_000),
        reason: String::new(),
        state: RefundState::Submitted,
        create_time: now,
        update_time: now,
    };
    let inserted = store::create_refund(app.payments.database(), &refund, 10_000, None).await?;
    assert!(matches!(inserted, RefundInsert::Created(_)));
    let get = || {
        let mut client = app.refunds();
        let request = crate::support::authed(
            pb::GetRefundRequest {
                refund_id: refund.refund_id.clone(),
            },
            &token,
        );
        async move {
            client
                .get_refund(request)
                .await
                .unwrap()
                .into_inner()
                .refund
                .unwrap()
        }
    };
    assert_eq!(get().await.state(), pb::RefundState::Submitted);

    let job = app.payments.service();
    assert_eq!(job.finish_stale_refunds(now + MINUTE).await?, 0, "not yet");
    assert_eq!(job.finish_stale_refunds(now + 6 * MINUTE).await?, 1);
    assert_eq!(get().await.state(), pb::RefundState::Success);
    assert_eq!(job.finish_stale_refunds(now + 7 * MINUTE).await?, 0, "once");
    let payment = app.get(&token, &paid.payment_id).await;
    assert_eq!(
        crate::support::minor(&payment.refund_amount_available),
        7_000
    );
    let events = crate::lifecycle::list_events(&app, &token, &paid.payment_id).await;
    assert_eq!(
        events.last().unwrap().r#type(),
        pb::PaymentEventType::RefundSucceeded
    );
    Ok(())
}

/// Payments left SUBMITTED by a stopped process (their card recorded, the
/// gateway's answer not): the recovery job asks the gateway and records
/// the answer, once, with the ledger postings of a success.
pub async fn recovery_job_finishes_payments_interrupted_after_the_card_step(
    engine: Engine,
) -> anyhow::Result<()> {
    use atiende_payments::domain::card::{CardBrand, CardSummary, Expiry};
    use atiende_payments::domain::payment::Tenant;
    use atiende_payments::domain::state::{EventType, PaymentState};
    use atiende_payments::store::{self, StateChange};

    let app = TestApp::spawn(engine).await?;
    let (agency, token) = agency_token(ALL);
    let tenant = Tenant {
        agency_id: agency,
        environment: atiende_platform::auth::Environment::Sandbox,
    };
    let now = now_micros();
    let mut ids = Vec::new();
    for (first_six, last_four) in [("424242", "4242"), ("400000", "0002")] {
        let payment = app.create(&token, payment_request(10_000, "CLP")).await;
        let card = CardSummary {
            brand: CardBrand::Visa,
            first_six: first_six.into(),
            last_four: last_four.into(),
            expiry: Expiry {
                month: 12,
                year: 2099,
            },
            cardholder_name: "Ana".into(),
        };
        let steps = [
            (
                PaymentState::Created,
                PaymentState::Started,
                EventType::PaymentStarted,
                None,
            ),
            (
                PaymentState::Started,
                PaymentState::Submitted,
                EventType::PaymentSubmitted,
                Some(&card),
            ),
        ];
        for (from, to, event, card) in steps {
            let change = StateChange {
                from,
                to,
                event,
                reason: None,
                message: String::new(),
                card: card.cloned(),
                fee_minor: None,
                postings: Vec::new(),
                now,
                passed: Vec::new(),
            };
            store::change_state(
                app.payments.database(),
                &tenant,
                &payment.payment_id,
                &change,
            )
            .await?
            .unwrap();
        }
        ids.push(payment.payment_id);
    }
    let job = app.payments.service();
    // Past their expiry, SUBMITTED payments are not expired (their card may
    // be being charged), and the agency cannot cancel them.
    assert_eq!(job.expire_stale_payments(now + 91 * MINUTE).await?, 0);
    assert!(job.cancel_payment(&tenant, &ids[0]).await.is_err());
    assert_eq!(app.get(&token, &ids[0]).await.state(), S::Submitted);
    assert_eq!(
        job.recover_interrupted_payments(now + MINUTE).await?,
        0,
        "not yet"
    );
    assert_eq!(app.get(&token, &ids[0]).await.state(), S::Submitted);
    assert_eq!(job.recover_interrupted_payments(now + 6 * MINUTE).await?, 2);
    assert_eq!(
        job.recover_interrupted_payments(now + 7 * MINUTE).await?,
        0,
        "once"
    );
    let paid = app.get(&token, &ids[0]).await;
    assert_eq!(paid.state(), S::Success);
    assert_eq!(crate::support::minor(&paid.fee), 250);
    let declined = app.get(&token, &ids[1]).await;
    assert_eq!(
        (declined.state(), declined.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Rejected)
    );
    let balances = app.balances(&token).await;
    assert_eq!(
        balances[&("CLP".into(), pb::LedgerAccount::Collections.into())],
        -10_000
    );
    Ok(())
}
