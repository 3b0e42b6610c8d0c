//! Voids of authorisations that will not be captured, the retention of
//! idempotency keys and events, and the webhook endpoint limit under
//! concurrency. Jobs are driven directly with a chosen "now".

use atiende_platform::storage::now_micros;
use atiende_proto::payments::v1 as pb;
use pb::PaymentState as S;
use pb::webhook_service_client::WebhookServiceClient;
use tonic::Code;

use crate::support::{ALL, Engine, TestApp, VISA_OK, agency_token, authed, payment_request};

const MINUTE: i64 = 60 * 1_000_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// A delayed-capture payment, authorised (CAPTURABLE).
async fn authorised(app: &TestApp, token: &str) -> pb::Payment {
    let mut request = payment_request(5_000, "CLP");
    request.delayed_capture = true;
    let payment = app.create(token, request).await;
    let authorised = app
        .simulate(token, &payment.payment_id, VISA_OK)
        .await
        .unwrap();
    assert_eq!(authorised.state(), S::Capturable);
    authorised
}

async fn cancel(
    app: &TestApp,
    token: &str,
    payment_id: &str,
) -> Result<pb::Payment, tonic::Status> {
    app.payments()
        .cancel_payment(authed(
            pb::CancelPaymentRequest {
                payment_id: payment_id.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().payment.unwrap())
}

async fn capture(
    app: &TestApp,
    token: &str,
    payment_id: &str,
) -> Result<pb::Payment, tonic::Status> {
    app.payments()
        .capture_payment(authed(
            pb::CapturePaymentRequest {
                payment_id: payment_id.into(),
            },
            token,
        ))
        .await
        .map(|r| r.into_inner().payment.unwrap())
}

pub async fn cancelling_or_expiring_an_authorised_payment_voids_its_hold(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let gateway = app.payments.service().sandbox_gateway();

    // Cancelled: the hold is voided, then the payment is CANCELLED.
    let held = authorised(&app, &token).await;
    let cancelled = cancel(&app, &token, &held.payment_id).await?;
    assert_eq!(cancelled.state(), S::Cancelled);
    assert!(gateway.was_voided(&held.payment_id));
    let events = crate::lifecycle::list_events(&app, &token, &held.payment_id).await;
    assert_eq!(
        events.last().unwrap().r#type(),
        pb::PaymentEventType::PaymentCancelled
    );

    // The gateway fails the void: nothing is acknowledged, the payment
    // stays CAPTURABLE but can no longer be captured; the recovery job
    // voids it and cancels it once the gateway is back.
    let held = authorised(&app, &token).await;
    gateway.set_voids_fail(true);
    let unavailable = cancel(&app, &token, &held.payment_id).await.unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable);
    assert!(!gateway.was_voided(&held.payment_id));
    assert_eq!(
        app.get(&token, &held.payment_id).await.state(),
        S::Capturable
    );
    let refused = capture(&app, &token, &held.payment_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let job = app.payments.service();
    // Still failing: still CAPTURABLE.
    assert_eq!(
        job.recover_interrupted_voids(now_micros() + 2 * MINUTE)
            .await?,
        0
    );
    gateway.set_voids_fail(false);
    // Not before a minute (a cancel may be under way).
    assert_eq!(job.recover_interrupted_voids(now_micros()).await?, 0);
    assert_eq!(
        job.recover_interrupted_voids(now_micros() + 2 * MINUTE)
            .await?,
        1
    );
    assert!(gateway.was_voided(&held.payment_id));
    let recovered = app.get(&token, &held.payment_id).await;
    assert_eq!(
        (recovered.state(), recovered.failure_reason()),
        (S::Cancelled, pb::PaymentFailureReason::CancelledByAgency)
    );
    // A retried cancel now returns the cancelled payment.
    assert_eq!(cancel(&app, &token, &held.payment_id).await?, recovered);

    // Not captured in 7 days: voided, then FAILED (EXPIRED).
    let lapsing = authorised(&app, &token).await;
    assert_eq!(job.expire_stale_payments(now_micros() + 8 * DAY).await?, 1);
    assert!(gateway.was_voided(&lapsing.payment_id));
    let lapsed = app.get(&token, &lapsing.payment_id).await;
    assert_eq!(
        (lapsed.state(), lapsed.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Expired)
    );

    // A captured payment is never voided, and cannot be cancelled.
    let captured = authorised(&app, &token).await;
    capture(&app, &token, &captured.payment_id).await?;
    let late = cancel(&app, &token, &captured.payment_id)
        .await
        .unwrap_err();
    assert_eq!(late.code(), Code::FailedPrecondition);
    assert!(!gateway.was_voided(&captured.payment_id));
    Ok(())
}

/// Two instances on one database. Each may start the card step and the
/// capture from a payment as it has just written it; what the other
/// instance did to the payment since must still decide.
pub async fn instances_act_on_what_another_instance_changed(engine: Engine) -> anyhow::Result<()> {
    let a = TestApp::spawn(engine).await?;
    let b = a.another_instance().await?;
    let (_, token) = agency_token(ALL);

    // Created on A, cancelled on B: A takes no card for it.
    let created = a.create(&token, payment_request(1_000, "CLP")).await;
    let cancelled = cancel(&b, &token, &created.payment_id).await?;
    assert_eq!(cancelled.state(), S::Cancelled);
    let refused = a
        .simulate(&token, &created.payment_id, VISA_OK)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(a.get(&token, &created.payment_id).await, cancelled);

    // Authorised on A; B is asked to cancel it and its gateway fails the
    // void: the payment stays CAPTURABLE, and A never captures it.
    let held = authorised(&a, &token).await;
    let b_gateway = b.payments.service().sandbox_gateway();
    b_gateway.set_voids_fail(true);
    let unavailable = cancel(&b, &token, &held.payment_id).await.unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable);
    let refused = capture(&a, &token, &held.payment_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("being cancelled"),
        "{}",
        refused.message()
    );
    assert_eq!(a.get(&token, &held.payment_id).await.state(), S::Capturable);
    b_gateway.set_voids_fail(false);

    // Authorised on A, cancelled on B: A does not capture it.
    let held = authorised(&a, &token).await;
    let cancelled = cancel(&b, &token, &held.payment_id).await?;
    assert_eq!(cancelled.state(), S::Cancelled);
    let refused = capture(&a, &token, &held.payment_id).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(a.get(&token, &held.payment_id).await, cancelled);

    // Authorised on A, captured on B: A answers the payment as captured,
    // and nothing is captured twice.
    let held = authorised(&a, &token).await;
    let captured = capture(&b, &token, &held.payment_id).await?;
    assert_eq!(captured.state(), S::Success);
    let balances = a.balances(&token).await;
    assert_eq!(capture(&a, &token, &held.payment_id).await?, captured);
    assert_eq!(a.balances(&token).await, balances);
    let events = crate::lifecycle::list_events(&a, &token, &held.payment_id).await;
    let successes = events
        .iter()
        .filter(|e| e.r#type() == pb::PaymentEventType::PaymentSucceeded)
        .count();
    assert_eq!(successes, 1);
    Ok(())
}

pub async fn idempotency_keys_are_kept_a_day_then_pruned(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let job = app.payments.service();
    let now = now_micros();
    let mut request = payment_request(1_000, "CLP");
    request.idempotency_key = "order-24h".into();
    let original = app.create(&token, request.clone()).await;

    // 23 hours on, the key is kept: a replay returns the original, and
    // other parameters are refused.
    assert_eq!(job.prune_expired_records(now + 23 * HOUR).await?.0, 0);
    assert_eq!(
        app.create(&token, request.clone()).await.payment_id,
        original.payment_id
    );
    let mut other = request.clone();
    other.reference = "another".into();
    let reused = app
        .payments()
        .create_payment(authed(other.clone(), &token))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);

    // 25 hours on, it is pruned: the key is free again.
    assert_eq!(job.prune_expired_records(now + 25 * HOUR).await?.0, 1);
    let fresh = app.create(&token, other).await;
    assert_ne!(fresh.payment_id, original.payment_id);
    // The original payment itself is untouched.
    assert_eq!(
        app.get(&token, &original.payment_id).await.state(),
        S::Created
    );
    Ok(())
}

pub async fn cursors_older_than_the_kept_events_are_out_of_range(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let job = app.payments.service();
    let old = app.paid(&token, 1_000, "CLP").await;
    let old_events = crate::lifecycle::list_events(&app, &token, &old.payment_id).await;
    assert!(old_events.len() >= 3);
    let first_cursor = old_events[0].cursor.clone();
    let old_page_token = app
        .payments()
        .list_payment_events(authed(
            pb::ListPaymentEventsRequest {
                payment_id: old.payment_id.clone(),
                page_size: 1,
                page_token: String::new(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .next_page_token;
    assert!(!old_page_token.is_empty());

    // Nothing is old enough yet: every cursor works.
    assert_eq!(job.prune_expired_records(now_micros() + DAY).await?.1, 0);
    watch_from(&app, &token, &first_cursor).await?;

    // The old payment's events age past the retention (90 days); a newer
    // payment's are recorded meanwhile.
    let db = app.payments.database();
    date_events_back(db, &old.payment_id).await?;
    let new = app.paid(&token, 2_000, "CLP").await;
    let pruned = job.prune_expired_records(now_micros()).await?.1;
    assert_eq!(pruned, u64::try_from(old_events.len())?);

    // Resuming from a pruned event is OUT_OF_RANGE, for the stream and the
    // list, rather than silently skipping what was pruned.
    let refused = watch_from(&app, &token, &first_cursor).await.unwrap_err();
    assert_eq!(refused.code(), Code::OutOfRange);
    let stale_page = app
        .payments()
        .list_payment_events(authed(
            pb::ListPaymentEventsRequest {
                payment_id: old.payment_id.clone(),
                page_size: 1,
                page_token: old_page_token,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(stale_page.code(), Code::OutOfRange);
    // The new payment's events are all there; the old one's are gone.
    let new_events = crate::lifecycle::list_events(&app, &token, &new.payment_id).await;
    assert_eq!(new_events.len(), old_events.len());
    assert!(
        crate::lifecycle::list_events(&app, &token, &old.payment_id)
            .await
            .is_empty()
    );
    // A cursor among the kept events still resumes.
    watch_from(&app, &token, &new_events[0].cursor).await?;

    // Events are pruned in recording order, up to the first one kept: a
    // later payment's events dated back (another instance's clock) wait
    // for the new payment's, recorded before them, so that the mark never
    // passes a kept event.
    let later = app.paid(&token, 3_000, "CLP").await;
    date_events_back(db, &later.payment_id).await?;
    assert_eq!(job.prune_expired_records(now_micros()).await?.1, 0);
    let later_events = crate::lifecycle::list_events(&app, &token, &later.payment_id).await;
    assert_eq!(later_events.len(), old_events.len());
    watch_from(&app, &token, &new_events[0].cursor).await?;
    Ok(())
}

/// Dates a payment's events back 100 days, past the retention (90).
async fn date_events_back(
    db: &atiende_platform::storage::Database,
    payment_id: &str,
) -> anyhow::Result<()> {
    atiende_platform::on_db!(db, pool => {
        sqlx::query("UPDATE payment_events SET occur_time = occur_time - $1 WHERE payment_id = $2")
            .bind(100 * DAY)
            .bind(payment_id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

async fn watch_from(app: &TestApp, token: &str, cursor: &str) -> Result<(), tonic::Status> {
    app.payments()
        .watch_payment_events(authed(
            pb::WatchPaymentEventsRequest {
                cursor: cursor.into(),
                types: vec![],
            },
            token,
        ))
        .await
        .map(|_| ())
}

pub async fn concurrent_webhook_endpoint_creates_never_pass_the_limit(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let attempts: Vec<_> = (0..40)
        .map(|i| {
            let mut client = WebhookServiceClient::new(app.channel.clone());
            let token = token.clone();
            tokio::spawn(async move {
                client
                    .create_webhook_endpoint(authed(
                        pb::CreateWebhookEndpointRequest {
                            url: format!("http://127.0.0.1:9/hook/{i}"),
                            event_types: vec![],
                            description: "finanzas".into(),
                            idempotency_key: String::new(),
                        },
                        &token,
                    ))
                    .await
            })
        })
        .collect();
    let mut results = Vec::new();
    for attempt in attempts {
        results.push(attempt.await?);
    }
    let created = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(created, 16);
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition);
    }
    let listed = WebhookServiceClient::new(app.channel.clone())
        .list_webhook_endpoints(authed(
            pb::ListWebhookEndpointsRequest {
                page_size: 100,
                page_token: String::new(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .webhook_endpoints;
    assert_eq!(listed.len(), 16);
    // Deleting one makes room for exactly one more.
    WebhookServiceClient::new(app.channel.clone())
        .delete_webhook_endpoint(authed(
            pb::DeleteWebhookEndpointRequest {
                webhook_endpoint_id: listed[0].webhook_endpoint_id.clone(),
            },
            &token,
        ))
        .await?;
    let create = |i: usize| {
        let mut client = WebhookServiceClient::new(app.channel.clone());
        let token = token.clone();
        async move {
            client
                .create_webhook_endpoint(authed(
                    pb::CreateWebhookEndpointRequest {
                        url: format!("http://127.0.0.1:9/again/{i}"),
                        event_types: vec![],
                        description: String::new(),
                        idempotency_key: String::new(),
                    },
                    &token,
                ))
                .await
        }
    };
    create(1).await?;
    assert_eq!(
        create(2).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    Ok(())
}

/// Group commit at the store: two changes of one payment in a group are
/// applied in order (PostgreSQL's path for groups that change a payment
/// twice), a change that opens a payment records both events or neither,
/// and two creates with one key in a group create one payment.
pub async fn a_group_applies_changes_in_order_and_claims_each_key_once(
    engine: Engine,
) -> anyhow::Result<()> {
    use atiende_payments::domain::payment::Tenant;
    use atiende_payments::domain::state::{EventType, FailureReason, PaymentState};
    use atiende_payments::store::{self, StateChange, Write, Written};

    let app = TestApp::spawn(engine).await?;
    let (agency, token) = agency_token(ALL);
    let tenant = Tenant {
        agency_id: agency,
        environment: atiende_platform::auth::Environment::Sandbox,
    };
    let db = app.payments.database();
    let payment = app.create(&token, payment_request(1_000, "CLP")).await;
    let change_of = |payment_id: &str, from, to: PaymentState, event, passed| Write::Change {
        tenant: tenant.clone(),
        payment_id: payment_id.to_owned(),
        change: StateChange {
            from,
            to,
            event,
            reason: (to == PaymentState::Cancelled).then_some(FailureReason::CancelledByAgency),
            message: String::new(),
            card: None,
            fee_minor: None,
            postings: Vec::new(),
            now: now_micros(),
            passed,
        },
    };
    let change = |from, to, event| change_of(&payment.payment_id, from, to, event, Vec::new());
    let written = store::write_group(
        db,
        &[
            change(
                PaymentState::Created,
                PaymentState::Started,
                EventType::PaymentStarted,
            ),
            change(
                PaymentState::Started,
                PaymentState::Cancelled,
                EventType::PaymentCancelled,
            ),
            // Its condition no longer holds: skipped, the others kept.
            change(
                PaymentState::Started,
                PaymentState::Cancelled,
                EventType::PaymentCancelled,
            ),
        ],
    )
    .await?;
    assert!(matches!(
        written.as_slice(),
        [Written::Done(_), Written::Done(_), Written::Skipped]
    ));
    assert_eq!(
        app.get(&token, &payment.payment_id).await.state(),
        S::Cancelled
    );
    let types: Vec<_> = crate::lifecycle::list_events(&app, &token, &payment.payment_id)
        .await
        .iter()
        .map(|e| e.r#type())
        .collect();
    assert_eq!(
        types,
        [
            pb::PaymentEventType::PaymentCreated,
            pb::PaymentEventType::PaymentStarted,
            pb::PaymentEventType::PaymentCancelled
        ]
    );

    // A change that opens the payment on its way (the card step from
    // CREATED) records STARTED then its own event, or neither: here on a
    // payment no longer CREATED (skipped) and on a new one (written), in
    // one group.
    let fresh = app.create(&token, payment_request(2_000, "CLP")).await;
    let open_and_submit = |payment_id: &str| {
        change_of(
            payment_id,
            PaymentState::Created,
            PaymentState::Submitted,
            EventType::PaymentSubmitted,
            vec![(PaymentState::Started, EventType::PaymentStarted)],
        )
    };
    let written = store::write_group(
        db,
        &[
            open_and_submit(&payment.payment_id),
            open_and_submit(&fresh.payment_id),
        ],
    )
    .await?;
    assert!(matches!(
        written.as_slice(),
        [Written::Skipped, Written::Done(_)]
    ));
    let events = crate::lifecycle::list_events(&app, &token, &fresh.payment_id).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| (e.r#type(), e.payment.as_ref().unwrap().state()))
        .collect();
    assert_eq!(
        seen,
        [
            (pb::PaymentEventType::PaymentCreated, S::Created),
            (pb::PaymentEventType::PaymentStarted, S::Started),
            (pb::PaymentEventType::PaymentSubmitted, S::Submitted)
        ]
    );
    assert_eq!(
        crate::lifecycle::list_events(&app, &token, &payment.payment_id)
            .await
            .len(),
        3,
        "nothing recorded for the payment that was no longer CREATED"
    );

    // A way off the state machine is refused whole, before anything is
    // written: here CREATED straight to SUBMITTED, and STARTED passed
    // through from STARTED.
    let other = app.create(&token, payment_request(3_000, "CLP")).await;
    for off in [
        change_of(
            &other.payment_id,
            PaymentState::Created,
            PaymentState::Submitted,
            EventType::PaymentSubmitted,
            Vec::new(),
        ),
        change_of(
            &other.payment_id,
            PaymentState::Started,
            PaymentState::Submitted,
            EventType::PaymentSubmitted,
            vec![(PaymentState::Started, EventType::PaymentStarted)],
        ),
    ] {
        assert!(
            store::write_group(db, &[open_and_submit(&fresh.payment_id), off])
                .await
                .is_err()
        );
    }
    assert_eq!(app.get(&token, &other.payment_id).await.state(), S::Created);

    // Two creates with one key: one is written, the other skipped.
    let service = app.payments.service();
    let mut first = service.get_payment(&tenant, &payment.payment_id).await?;
    first.payment_id = atiende_platform::ids::new_id("pay");
    first.state = PaymentState::Created;
    let mut second = first.clone();
    second.payment_id = atiende_platform::ids::new_id("pay");
    let create = |p: &atiende_payments::domain::payment::Payment| Write::Create {
        payment: p.clone(),
        idempotency: Some(("group-key".into(), "hash".into())),
    };
    let written = store::write_group(db, &[create(&first), create(&second)]).await?;
    assert!(matches!(
        written.as_slice(),
        [Written::Done(_), Written::Skipped]
    ));
    assert_eq!(app.get(&token, &first.payment_id).await.state(), S::Created);
    let missing = app
        .payments()
        .get_payment(authed(
            pb::GetPaymentRequest {
                payment_id: second.payment_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

/// The statements that change payments look each one up by its primary
/// key, even as planned on an empty table that was never analysed: on
/// PostgreSQL a connection keeps that plan while the table grows (until it
/// is analysed), and one that joined by scanning `payments` would read
/// every payment to change a few.
pub async fn state_changes_look_payments_up_by_key_on_a_small_table(
    engine: Engine,
) -> anyhow::Result<()> {
    use atiende_payments::store;

    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    // Empty, then a few rows: the sizes at which a plan that scans the
    // table looks cheapest, and a plan made then is kept as it grows.
    let mut plans = store::change_plans(app.payments.database()).await?;
    for _ in 0..3 {
        app.create(&token, payment_request(1_000, "CLP")).await;
    }
    plans.extend(store::change_plans(app.payments.database()).await?);
    assert!(!plans.is_empty());
    for plan in plans {
        match engine {
            Engine::Sqlite => {
                assert!(
                    plan.contains("SEARCH payments USING INDEX"),
                    "not by key:\n{plan}"
                );
                assert!(!plan.contains("SCAN payments"), "scans payments:\n{plan}");
            }
            Engine::Postgres => {
                assert!(
                    plan.contains("Index Scan using payments_pkey on payments"),
                    "not by key:\n{plan}"
                );
                assert!(
                    !plan.contains("Seq Scan on payments"),
                    "scans payments:\n{plan}"
                );
            }
        }
    }
    Ok(())
}

/// Migration 0005 on a database in use: a delivery recorded before it
/// still finds its event (now by sequence), and no new event takes the
/// number of a pruned one (SQLite rebuilds the events' table).
pub async fn upgrading_keeps_event_numbers_and_links_deliveries(
    engine: Engine,
) -> anyhow::Result<()> {
    use atiende_payments::store::MIGRATIONS;
    use atiende_platform::storage::{Database, Migrations};

    let dir = std::env::temp_dir().join(format!("atiende-pay-{:032x}", rand::random::<u128>()));
    let url = engine.database_url(crate::support::PG_PREFIX, &dir).await?;
    let db = Database::connect(&url, 2).await?;
    let before = Migrations {
        service: MIGRATIONS.service,
        sqlite: &MIGRATIONS.sqlite[..4],
        postgres: &MIGRATIONS.postgres[..4],
    };
    db.migrate(&before).await?;
    atiende_platform::on_db!(&db, pool => {
        sqlx::query(
            "INSERT INTO payments (payment_id, agency_id, environment, amount_minor, currency, \
             reference, description, return_url, metadata, language, delayed_capture, state, \
             failure_message, refund_submitted_minor, page_secret, expire_time, create_time, \
             update_time) VALUES ('pay_1', 'agency', 'sandbox', 1000, 'CLP', 'r', 'd', \
             'https://example.test/', '{}', 'es', 0, 'created', '', 0, 's', 2, 1, 1)",
        )
        .execute(pool)
        .await?;
        for event in ["evt_1", "evt_2", "evt_3"] {
            sqlx::query(
                "INSERT INTO payment_events (event_id, agency_id, environment, payment_id, \
                 event_type, occur_time, state, failure_message, refund_submitted_minor, \
                 has_card) VALUES ($1, 'agency', 'sandbox', 'pay_1', 'payment_created', 1, \
                 'created', '', 0, 0)",
            )
            .bind(event)
            .execute(pool)
            .await?;
        }
        sqlx::query(
            "INSERT INTO webhook_deliveries (event_id, webhook_endpoint_id, agency_id, \
             environment, state, attempts, next_attempt_time, last_response, create_time, \
             update_time) VALUES ('evt_2', 'whe_1', 'agency', 'sandbox', 'pending', 0, 1, '', 1, 1)",
        )
        .execute(pool)
        .await?;
        // The newest event is gone (pruned): its number must not come back.
        sqlx::query("DELETE FROM payment_events WHERE event_id = 'evt_3'")
            .execute(pool)
            .await?;
    });

    db.migrate(&MIGRATIONS).await?;
    let (linked, next): (Option<i64>, i64) = atiende_platform::on_db!(&db, pool => {
        let linked = sqlx::query_scalar(
            "SELECT d.event_sequence FROM webhook_deliveries d WHERE d.event_id = 'evt_2'",
        )
        .fetch_one(pool)
        .await?;
        let next = sqlx::query_scalar(
            "INSERT INTO payment_events (event_id, agency_id, environment, payment_id, \
             event_type, occur_time, state, failure_message, refund_submitted_minor, has_card) \
             VALUES ('evt_4', 'agency', 'sandbox', 'pay_1', 'payment_started', 2, 'started', \
             '', 0, 0) RETURNING sequence",
        )
        .fetch_one(pool)
        .await?;
        (linked, next)
    });
    let evt_2: i64 = atiende_platform::on_db!(&db, pool => {
        sqlx::query_scalar("SELECT sequence FROM payment_events WHERE event_id = 'evt_2'")
            .fetch_one(pool)
            .await?
    });
    assert_eq!(linked, Some(evt_2));
    assert!(
        next > evt_2 + 1,
        "event {next} reuses a pruned event's number"
    );
    db.close().await;
    Ok(())
}
