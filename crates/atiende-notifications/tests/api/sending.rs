//! NotificationService and CallbackService over gRPC (sandbox agencies:
//! delivery is simulated).

use std::time::Duration;

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::notifications::v1 as pb;
use pb::NotificationStatus as S;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{
    ALL, Engine, HttpPeer, Options, TestApp, agency_token, agency_token_in, authed, email,
    send_email, send_sms, sms, values, violated_fields,
};

fn in_an_hour() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: i64::try_from(now.as_secs()).unwrap() + 3600,
        nanos: 0,
    }
}

pub async fn bad_sends_get_every_field_violation_and_store_nothing(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let email_t = app
        .template(
            &token,
            email("t", "Hola ((nombre))", "((saludo)) ((nombre))"),
        )
        .await;
    let sms_t = app.template(&token, sms("s", "((texto))")).await;

    // Missing placeholders are named one by one; extra keys are ignored.
    let err = app
        .notifications()
        .send_email(authed(
            send_email(&email_t, "ana@correo.test", &[("extra", "x")]),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        ["personalisation[nombre]", "personalisation[saludo]"]
    );

    // Every field at once.
    let err = app
        .notifications()
        .send_email(authed(
            pb::SendEmailRequest {
                template_id: "nope".into(),
                template_version: -1,
                email_address: "not an address".into(),
                reference: "r".repeat(256),
                idempotency_key: "k".repeat(256),
                email_reply_to: "x".into(),
                unsubscribe_url: "javascript:alert(1)".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        [
            "email_address",
            "email_reply_to",
            "idempotency_key",
            "reference",
            "template_id",
            "template_version",
            "unsubscribe_url"
        ]
    );

    // An SMS template is not an email template, and the reverse.
    let err = app
        .notifications()
        .send_email(authed(send_email(&sms_t, "ana@correo.test", &[]), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["template_id"]);
    let err = app
        .notifications()
        .send_sms(authed(send_sms(&sms_t, "12345", &[("texto", "x")]), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["phone_number"]);

    // Only the agency's configured sender ids may be used.
    let err = app
        .notifications()
        .send_sms(authed(
            pb::SendSmsRequest {
                sender_id: "SII".into(),
                ..send_sms(&sms_t, "+56912345678", &[("texto", "x")])
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["sender_id"]);

    // A rendered SMS over 918 characters is refused.
    let err = app
        .notifications()
        .send_sms(authed(
            send_sms(&sms_t, "+56912345678", &[("texto", &"a".repeat(919))]),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["personalisation"]);

    // Over 1 MiB of personalisation.
    let err = app
        .notifications()
        .send_sms(authed(
            send_sms(&sms_t, "+56912345678", &[("texto", &"a".repeat(1_100_000))]),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["personalisation"]);

    // Scheduled more than 7 days ahead.
    let mut far = in_an_hour();
    far.seconds += 8 * 24 * 3600;
    let err = app
        .notifications()
        .send_sms(authed(
            pb::SendSmsRequest {
                scheduled_time: Some(far),
                ..send_sms(&sms_t, "+56912345678", &[("texto", "x")])
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["scheduled_time"]);

    let listed = app
        .notifications()
        .list_notifications(authed(pb::ListNotificationsRequest::default(), &token))
        .await?
        .into_inner();
    assert!(listed.notifications.is_empty(), "nothing was stored");
    Ok(())
}

pub async fn sends_are_idempotent_and_a_reused_key_is_refused(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let t = app.template(&token, sms("s", "Hola ((n))")).await;
    let request = pb::SendSmsRequest {
        idempotency_key: "pago-123".into(),
        ..send_sms(&t, "+56912345678", &[("n", "Ana")])
    };
    let mut handles = Vec::new();
    for _ in 0..8 {
        let client = app.notifications();
        let (request, token) = (request.clone(), token.clone());
        handles.push(tokio::spawn(async move {
            let mut client = client;
            client.send_sms(authed(request, &token)).await
        }));
    }
    let mut ids = Vec::new();
    for handle in handles {
        ids.push(
            handle
                .await??
                .into_inner()
                .notification
                .unwrap()
                .notification_id,
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "eight concurrent sends with one key made one");
    let listed = app
        .notifications()
        .list_notifications(authed(pb::ListNotificationsRequest::default(), &token))
        .await?
        .into_inner();
    assert_eq!(listed.notifications.len(), 1);

    let err = app
        .notifications()
        .send_sms(authed(
            pb::SendSmsRequest {
                idempotency_key: "pago-123".into(),
                ..send_sms(&t, "+56912345678", &[("n", "Beto")])
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Keys are per agency.
    let (_, other) = agency_token(ALL);
    let t2 = app.template(&other, sms("s", "Hola ((n))")).await;
    let theirs = app
        .sent_sms(
            &other,
            pb::SendSmsRequest {
                idempotency_key: "pago-123".into(),
                ..send_sms(&t2, "+56912345678", &[("n", "Ana")])
            },
        )
        .await;
    assert_ne!(theirs.notification_id, ids[0]);
    Ok(())
}

pub async fn batches_are_validated_whole_and_report_progress(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let t = app
        .template(&token, email("t", "Aviso", "Hola ((nombre))"))
        .await;
    let row = |to: &str, name: Option<&str>| pb::BatchRecipient {
        recipient: to.into(),
        personalisation: name.map(|n| values(&[("nombre", n)])).unwrap_or_default(),
        reference: String::new(),
        unsubscribe_url: String::new(),
    };
    let err = app
        .notifications()
        .send_batch(authed(
            pb::SendBatchRequest {
                template_id: t.clone(),
                channel: pb::Channel::Email.into(),
                recipients: vec![
                    row("a@correo.test", Some("A")),
                    row("not-an-address", Some("B")),
                    row("c@correo.test", None),
                    row("d@correo.test", Some("D")),
                ],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&err),
        [
            "recipients[1].recipient",
            "recipients[2].personalisation[nombre]"
        ]
    );
    let listed = app
        .notifications()
        .list_notifications(authed(pb::ListNotificationsRequest::default(), &token))
        .await?
        .into_inner();
    assert!(
        listed.notifications.is_empty(),
        "no row of a bad batch is sent"
    );

    let rows: Vec<pb::BatchRecipient> = (0..300)
        .map(|i| row(&format!("v{i}@correo.test"), Some(&format!("V{i}"))))
        .collect();
    let batch = app
        .notifications()
        .send_batch(authed(
            pb::SendBatchRequest {
                template_id: t.clone(),
                channel: pb::Channel::Email.into(),
                recipients: rows,
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(batch.recipient_count, 300);
    assert!(batch.batch_id.starts_with("bat_"));
    let mut done = None;
    for _ in 0..400 {
        let b = app
            .notifications()
            .get_batch(authed(
                pb::GetBatchRequest {
                    batch_id: batch.batch_id.clone(),
                },
                &token,
            ))
            .await?
            .into_inner()
            .batch
            .unwrap();
        assert_eq!(b.status_counts.iter().map(|c| c.count).sum::<i32>(), 300);
        if b.complete_time.is_some() {
            done = Some(b);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done = done.expect("the batch completes");
    assert_eq!(done.status_counts.len(), 1);
    assert_eq!(done.status_counts[0].status(), S::Delivered);

    // Its notifications are listed by batch, paged.
    let mut seen = 0;
    let mut page_token = String::new();
    loop {
        let page = app
            .notifications()
            .list_notifications(authed(
                pb::ListNotificationsRequest {
                    batch_id: batch.batch_id.clone(),
                    page_size: 128,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await?
            .into_inner();
        seen += page.notifications.len();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, 300);

    // Oversize batches are refused whole.
    let err = app
        .notifications()
        .send_batch(authed(
            pb::SendBatchRequest {
                template_id: t,
                channel: pb::Channel::Email.into(),
                recipients: vec![],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["recipients"]);
    Ok(())
}

pub async fn scheduled_notifications_and_batches_can_be_cancelled(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let t = app.template(&token, sms("s", "Recordatorio")).await;
    let scheduled = app
        .sent_sms(
            &token,
            pb::SendSmsRequest {
                scheduled_time: Some(in_an_hour()),
                ..send_sms(&t, "+56912345678", &[])
            },
        )
        .await;
    assert!(scheduled.scheduled_time.is_some());
    let now = app
        .sent_sms(&token, send_sms(&t, "+56912345679", &[]))
        .await;
    assert_eq!(
        app.wait_final(&token, &now.notification_id).await.status(),
        S::Delivered
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.get(&token, &scheduled.notification_id).await.status(),
        S::Created,
        "a scheduled notification waits"
    );
    let cancel = |id: String| pb::CancelNotificationRequest {
        notification_id: id,
    };
    let cancelled = app
        .notifications()
        .cancel_notification(authed(cancel(scheduled.notification_id.clone()), &token))
        .await?
        .into_inner()
        .notification
        .unwrap();
    assert_eq!(cancelled.status(), S::Cancelled);
    assert!(cancelled.cancel_time.is_some());
    // Again: unchanged. A delivered one: FAILED_PRECONDITION.
    let again = app
        .notifications()
        .cancel_notification(authed(cancel(scheduled.notification_id.clone()), &token))
        .await?
        .into_inner()
        .notification
        .unwrap();
    assert_eq!(again.status(), S::Cancelled);
    let err = app
        .notifications()
        .cancel_notification(authed(cancel(now.notification_id.clone()), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let batch = app
        .notifications()
        .send_batch(authed(
            pb::SendBatchRequest {
                template_id: t,
                channel: pb::Channel::Sms.into(),
                scheduled_time: Some(in_an_hour()),
                recipients: (0..5)
                    .map(|i| pb::BatchRecipient {
                        recipient: format!("+5691234560{i}"),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .batch
        .unwrap();
    let cancelled = app
        .notifications()
        .cancel_batch(authed(
            pb::CancelBatchRequest {
                batch_id: batch.batch_id.clone(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .batch
        .unwrap();
    assert!(cancelled.cancel_time.is_some());
    assert_eq!(cancelled.status_counts.len(), 1);
    assert_eq!(cancelled.status_counts[0].status(), S::Cancelled);
    assert_eq!(cancelled.status_counts[0].count, 5);
    Ok(())
}

pub async fn list_filters_by_status_template_reference_and_time(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let a = app.template(&token, sms("a", "A")).await;
    let b = app.template(&token, email("b", "B", "B")).await;
    let mut ids = Vec::new();
    for (i, to) in ["+56912345678", "+56900000002", "+56912345670"]
        .iter()
        .enumerate()
    {
        let n = app
            .sent_sms(
                &token,
                pb::SendSmsRequest {
                    reference: format!("ref-{}", i % 2),
                    ..send_sms(&a, to, &[])
                },
            )
            .await;
        ids.push(n.notification_id);
    }
    let e = app
        .sent_email(&token, send_email(&b, "x@correo.test", &[]))
        .await;
    for id in ids.iter().chain([&e.notification_id]) {
        app.wait_final(&token, id).await;
    }
    let list = |request: pb::ListNotificationsRequest| {
        let app = &app;
        let token = &token;
        async move {
            app.notifications()
                .list_notifications(authed(request, token))
                .await
                .unwrap()
                .into_inner()
                .notifications
                .into_iter()
                .map(|n| n.notification_id)
                .collect::<Vec<_>>()
        }
    };
    let all = list(pb::ListNotificationsRequest::default()).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[0], e.notification_id, "newest first");
    assert_eq!(
        list(pb::ListNotificationsRequest {
            statuses: vec![S::PermanentFailure.into()],
            ..Default::default()
        })
        .await,
        [ids[1].clone()]
    );
    assert_eq!(
        list(pb::ListNotificationsRequest {
            template_id: b.clone(),
            ..Default::default()
        })
        .await,
        std::slice::from_ref(&e.notification_id)
    );
    assert_eq!(
        list(pb::ListNotificationsRequest {
            reference: "ref-0".into(),
            ..Default::default()
        })
        .await,
        [ids[2].clone(), ids[0].clone()]
    );
    assert_eq!(
        list(pb::ListNotificationsRequest {
            channel: pb::Channel::Email.into(),
            ..Default::default()
        })
        .await,
        std::slice::from_ref(&e.notification_id)
    );
    let future = in_an_hour();
    assert!(
        list(pb::ListNotificationsRequest {
            create_time_range: Some(atiende_proto::common::v1::TimeRange {
                start_time: Some(future),
                end_time: None,
            }),
            ..Default::default()
        })
        .await
        .is_empty()
    );
    // A page token belongs to its filters.
    let page = app
        .notifications()
        .list_notifications(authed(
            pb::ListNotificationsRequest {
                page_size: 1,
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner();
    let err = app
        .notifications()
        .list_notifications(authed(
            pb::ListNotificationsRequest {
                page_size: 1,
                reference: "ref-0".into(),
                page_token: page.next_page_token,
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["page_token"]);
    Ok(())
}

pub async fn callbacks_post_final_statuses_with_the_bearer_token_and_retry(
    engine: Engine,
) -> anyhow::Result<()> {
    let receiver = HttpPeer::start(&[500, 503]).await?;
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let set = app
        .callbacks()
        .set_delivery_callback(authed(
            pb::SetDeliveryCallbackRequest {
                url: format!("{}/callback", receiver.url),
                bearer_token: "secreto-de-la-agencia".into(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .callback
        .unwrap();
    assert!(set.url.ends_with("/callback"));
    let got = app
        .callbacks()
        .get_delivery_callback(authed(pb::GetDeliveryCallbackRequest {}, &token))
        .await?
        .into_inner()
        .callback
        .unwrap();
    assert_eq!(got.url, set.url);

    let t = app.template(&token, sms("s", "Hola")).await;
    let n = app
        .sent_sms(
            &token,
            pb::SendSmsRequest {
                reference: "exp-1".into(),
                ..send_sms(&t, "+56900000002", &[])
            },
        )
        .await;
    // Two failures, then a 2xx: three POSTs of the same event.
    let hits = receiver.wait_for(3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.hits().len(), 3, "acknowledged: no more retries");
    let bodies: Vec<serde_json::Value> = hits
        .iter()
        .map(|h| serde_json::from_str(&h.body).unwrap())
        .collect();
    for (hit, body) in hits.iter().zip(&bodies) {
        assert_eq!(hit.authorization, "Bearer secreto-de-la-agencia");
        assert_eq!(body["eventId"], bodies[0]["eventId"]);
        assert_eq!(
            body["notification"]["notificationId"],
            n.notification_id.as_str()
        );
        assert_eq!(
            body["notification"]["status"],
            "NOTIFICATION_STATUS_PERMANENT_FAILURE"
        );
        assert_eq!(body["notification"]["reference"], "exp-1");
    }

    // Live callbacks must be https and public.
    let (_, live) = agency_token_in(ALL, Environment::Live);
    let err = app
        .callbacks()
        .set_delivery_callback(authed(
            pb::SetDeliveryCallbackRequest {
                url: format!("{}/callback", receiver.url),
                bearer_token: "short".into(),
            },
            &live,
        ))
        .await
        .unwrap_err();
    let mut fields = violated_fields(&err);
    fields.dedup();
    assert_eq!(fields, ["url", "bearer_token"]);

    app.callbacks()
        .delete_delivery_callback(authed(pb::DeleteDeliveryCallbackRequest {}, &token))
        .await?;
    let err = app
        .callbacks()
        .get_delivery_callback(authed(pb::GetDeliveryCallbackRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    Ok(())
}

pub async fn event_stream_follows_changes_and_resumes_from_a_cursor(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let (_, other) = agency_token(ALL);
    let t = app.template(&token, sms("s", "Hola")).await;
    let t_other = app.template(&other, sms("s", "Hola")).await;
    let mut stream = app
        .notifications()
        .watch_notification_events(authed(
            pb::WatchNotificationEventsRequest::default(),
            &token,
        ))
        .await?
        .into_inner();
    let n = app
        .sent_sms(&token, send_sms(&t, "+56912345678", &[]))
        .await;
    // Another agency's traffic never shows.
    app.notifications()
        .send_sms(authed(send_sms(&t_other, "+56912345678", &[]), &other))
        .await?;
    let mut statuses = Vec::new();
    let mut cursors = Vec::new();
    while statuses.len() < 3 {
        let event = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await?
            .expect("stream open")?
            .event
            .unwrap();
        let notification = event.notification.unwrap();
        assert_eq!(notification.notification_id, n.notification_id);
        assert!(event.event_id.starts_with("evt_"));
        statuses.push(notification.status());
        cursors.push(event.cursor);
    }
    assert_eq!(statuses, [S::Created, S::Sending, S::Delivered]);
    drop(stream);

    // Resume after the first event: the rest again.
    let mut resumed = app
        .notifications()
        .watch_notification_events(authed(
            pb::WatchNotificationEventsRequest {
                cursor: cursors[0].clone(),
                statuses: vec![],
            },
            &token,
        ))
        .await?
        .into_inner();
    let mut again = Vec::new();
    while again.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(20), resumed.next())
            .await?
            .expect("stream open")?
            .event
            .unwrap();
        again.push(event.notification.unwrap().status());
    }
    assert_eq!(again, [S::Sending, S::Delivered]);

    let err = app
        .notifications()
        .watch_notification_events(authed(
            pb::WatchNotificationEventsRequest {
                cursor: "garbage".into(),
                statuses: vec![],
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["cursor"]);
    Ok(())
}

pub async fn over_the_rate_limit_is_resource_exhausted_with_retry_info(
    engine: Engine,
) -> anyhow::Result<()> {
    let mut options = Options::default();
    options.config.limits.sends_per_minute = 3;
    let app = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token(ALL);
    let t = app.template(&token, sms("s", "Hola")).await;
    for _ in 0..3 {
        app.notifications()
            .send_sms(authed(send_sms(&t, "+56912345678", &[]), &token))
            .await?;
    }
    let err = app
        .notifications()
        .send_sms(authed(send_sms(&t, "+56912345678", &[]), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let retry = err.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("delay");
    assert!(
        delay > Duration::from_secs(15) && delay <= Duration::from_secs(20),
        "{delay:?}"
    );
    // Another agency has its own bucket.
    let (_, other) = agency_token(ALL);
    let t2 = app.template(&other, sms("s", "Hola")).await;
    app.notifications()
        .send_sms(authed(send_sms(&t2, "+56912345678", &[]), &other))
        .await?;

    // The daily limit per channel.
    let mut options = Options::default();
    options.config.limits.daily_sms = 2;
    let app = TestApp::spawn_with(engine, options).await?;
    let t = app.template(&token, sms("s", "Hola")).await;
    for _ in 0..2 {
        app.notifications()
            .send_sms(authed(send_sms(&t, "+56912345678", &[]), &token))
            .await?;
    }
    let err = app
        .notifications()
        .send_sms(authed(send_sms(&t, "+56912345678", &[]), &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.get_details_retry_info().is_some());
    // A refused send leaves no idempotency key behind: its retry is refused
    // for the limit again, not answered with a notification that never was.
    for _ in 0..2 {
        let err = app
            .notifications()
            .send_sms(authed(
                pb::SendSmsRequest {
                    idempotency_key: "over-the-limit".into(),
                    ..send_sms(&t, "+56912345678", &[])
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }
    Ok(())
}

pub async fn retention_erases_recipient_and_content_but_keeps_status(
    engine: Engine,
) -> anyhow::Result<()> {
    let mut options = Options::default();
    options.config.delivery.retention_ms = Duration::ZERO;
    let app = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token(ALL);
    let t = app.template(&token, sms("s", "Clave ((clave))")).await;
    let n = app
        .sent_sms(
            &token,
            send_sms(&t, "+56987654321", &[("clave", "SECRETO-77")]),
        )
        .await;
    assert_eq!(n.body, "Clave SECRETO-77");
    app.wait_final(&token, &n.notification_id).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let purged = app.notifications.deliverer().purge_now().await?;
    assert!(purged >= 1);
    let after = app.get(&token, &n.notification_id).await;
    assert_eq!(after.status(), S::Delivered);
    assert!(after.recipient.is_empty() && after.body.is_empty());
    let raw = atiende_notifications::store::queue::raw_row_text(
        app.notifications.database(),
        &n.notification_id,
    )
    .await?
    .unwrap();
    assert!(
        !raw.contains("SECRETO") && !raw.contains("987654321"),
        "{raw}"
    );
    Ok(())
}

pub async fn agencies_cannot_reach_each_others_notifications_and_scopes_hold(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (owner_agency, owner) = agency_token(ALL);
    let (_, stranger) = agency_token(ALL);
    let t = app.template(&owner, sms("s", "Hola")).await;
    let n = app
        .sent_sms(
            &owner,
            pb::SendSmsRequest {
                scheduled_time: Some(in_an_hour()),
                ..send_sms(&t, "+56912345678", &[])
            },
        )
        .await;
    let batch = app
        .notifications()
        .send_batch(authed(
            pb::SendBatchRequest {
                template_id: t.clone(),
                channel: pb::Channel::Sms.into(),
                scheduled_time: Some(in_an_hour()),
                recipients: vec![pb::BatchRecipient {
                    recipient: "+56912345678".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &owner,
        ))
        .await?
        .into_inner()
        .batch
        .unwrap();
    let id = n.notification_id.clone();
    let mut client = app.notifications();
    let get = client
        .get_notification(authed(
            pb::GetNotificationRequest {
                notification_id: id.clone(),
            },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let cancel = client
        .cancel_notification(authed(
            pb::CancelNotificationRequest {
                notification_id: id.clone(),
            },
            &stranger,
        ))
        .await
        .unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound);
    for result in [
        client
            .get_batch(authed(
                pb::GetBatchRequest {
                    batch_id: batch.batch_id.clone(),
                },
                &stranger,
            ))
            .await
            .map(|_| ()),
        client
            .cancel_batch(authed(
                pb::CancelBatchRequest {
                    batch_id: batch.batch_id.clone(),
                },
                &stranger,
            ))
            .await
            .map(|_| ()),
    ] {
        assert_eq!(result.unwrap_err().code(), Code::NotFound);
    }
    // Sending from another agency's template.
    let err = client
        .send_sms(authed(send_sms(&t, "+56912345678", &[]), &stranger))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), ["template_id"]);
    let listed = client
        .list_notifications(authed(pb::ListNotificationsRequest::default(), &stranger))
        .await?
        .into_inner();
    assert!(listed.notifications.is_empty());
    // The owner's live token sees none of its sandbox notifications.
    let live = atiende_platform::testing::token(&owner_agency, ALL, Environment::Live);
    let err = client
        .get_notification(authed(
            pb::GetNotificationRequest {
                notification_id: id.clone(),
            },
            &live,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    // The owner still can.
    assert_eq!(app.get(&owner, &id).await.status(), S::Created);

    // Scopes: reading needs notifications.read; sending notifications.send.
    let (_, reader) = agency_token(&[Scope::NotificationsRead]);
    let err = client
        .send_sms(authed(send_sms(&t, "+56912345678", &[]), &reader))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = app
        .callbacks()
        .set_delivery_callback(authed(
            pb::SetDeliveryCallbackRequest {
                url: "https://agencia.test/cb".into(),
                bearer_token: "0123456789abc".into(),
            },
            &reader,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let (_, sender_only) = agency_token(&[Scope::NotificationsSend]);
    let err = client
        .list_notifications(authed(
            pb::ListNotificationsRequest::default(),
            &sender_only,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .watch_notification_events(authed(
            pb::WatchNotificationEventsRequest::default(),
            &sender_only,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .get_notification(authed(
            pb::GetNotificationRequest {
                notification_id: id,
            },
            "not-a-token",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    Ok(())
}

pub async fn a_batch_of_fifty_thousand_rows_is_accepted_in_one_request(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let t = app
        .template(
            &token,
            email("t", "Aviso ((n))", "Hola ((nombre)), su número es ((n))."),
        )
        .await;
    let recipients: Vec<pb::BatchRecipient> = (0..50_000)
        .map(|i| pb::BatchRecipient {
            recipient: format!("vecino{i}@correo.test"),
            personalisation: values(&[
                (
                    "nombre",
                    "Vecina o vecino de la comuna de Quinta Normal, Región Metropolitana",
                ),
                ("n", &i.to_string()),
            ]),
            reference: format!("fila-{i}"),
            unsubscribe_url: String::new(),
        })
        .collect();
    let request = pb::SendBatchRequest {
        template_id: t,
        channel: pb::Channel::Email.into(),
        recipients,
        ..Default::default()
    };
    assert!(
        prost::Message::encoded_len(&request) > 4 * 1024 * 1024,
        "bigger than gRPC's usual limit"
    );
    let batch = app
        .notifications()
        .send_batch(authed(request, &token))
        .await?
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(batch.recipient_count, 50_000);
    let got = app
        .notifications()
        .get_batch(authed(
            pb::GetBatchRequest {
                batch_id: batch.batch_id,
            },
            &token,
        ))
        .await?
        .into_inner()
        .batch
        .unwrap();
    assert_eq!(
        got.status_counts.iter().map(|c| c.count).sum::<i32>(),
        50_000
    );
    let found = app
        .notifications()
        .list_notifications(authed(
            pb::ListNotificationsRequest {
                reference: "fila-49999".into(),
                ..Default::default()
            },
            &token,
        ))
        .await?
        .into_inner()
        .notifications;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].subject, "Aviso 49999");
    Ok(())
}
