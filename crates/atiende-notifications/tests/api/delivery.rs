//! Delivery through real peers: an SMTP server over TCP, Twilio-speaking
//! HTTP providers, restarts and two instances on one database.

use std::collections::HashMap;
use std::time::Duration;

use atiende_notifications::delivery::sms::Twilio;
use atiende_platform::auth::Environment;
use atiende_proto::notifications::v1 as pb;
use pb::NotificationStatus as S;

use crate::support::{
    ALL, Engine, HttpPeer, Options, SmtpServer, TestApp, agency_token_in, authed, email, form,
    send_email, send_sms, sms,
};

fn smtp_options(addr: std::net::SocketAddr) -> Options {
    let mut options = Options::default();
    options.config.email.smtp_url = Some(SmtpServer::url(addr).into());
    options.config.email.from_address = "avisos@muni.test".into();
    // The test server serves 64 sessions; two instances stay below.
    options.config.email.max_connections = 8;
    options
}

/// The message's header value, unfolded.
fn header(message: &mail_parser::Message<'_>, name: &str) -> String {
    message
        .header_raw(name)
        .map(|v| v.replace("\r\n", "").trim().to_owned())
        .unwrap_or_default()
}

pub async fn email_arrives_over_smtp_with_subject_bodies_and_headers(
    engine: Engine,
) -> anyhow::Result<()> {
    let smtp = SmtpServer::start()?;
    let app = TestApp::spawn_with(engine, smtp_options(smtp.addr)).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let template = app
        .template(
            &token,
            email(
                "Permiso",
                "Su permiso ((numero)) está listo",
                "# Hola ((nombre))\n\nSu permiso está listo.\n\n* Retire en ((oficina))\n\n[Ver estado](https://muni.test/estado)",
            ),
        )
        .await;
    let request = pb::SendEmailRequest {
        reference: "exp-42".into(),
        email_reply_to: "oficina@muni.test".into(),
        unsubscribe_url: "https://muni.test/baja?id=7".into(),
        ..send_email(
            &template,
            "vecina@correo.test",
            &[
                ("nombre", "Ana <script>alert(1)</script>"),
                ("numero", "P-77"),
                ("oficina", "[clic](https://evil.test)"),
            ],
        )
    };
    let sent = app.sent_email(&token, request).await;
    assert_eq!(sent.status(), S::Created);
    assert_eq!(sent.reference, "exp-42");
    let done = app.wait_final(&token, &sent.notification_id).await;
    assert_eq!(done.status(), S::Delivered);
    assert!(done.send_time.is_some() && done.complete_time.is_some());

    let messages = smtp.wait_for(1).await;
    assert_eq!(messages.len(), 1);
    let received = &messages[0];
    assert_eq!(received.from, "avisos@muni.test");
    assert_eq!(received.to, ["vecina@correo.test"]);
    let message = mail_parser::MessageParser::default()
        .parse(&received.data)
        .expect("a MIME message");
    assert_eq!(message.subject(), Some("Su permiso P-77 está listo"));
    assert_eq!(
        message.message_id(),
        Some(format!("{}@muni.test", sent.notification_id).as_str())
    );
    assert_eq!(
        header(&message, "List-Unsubscribe"),
        "<https://muni.test/baja?id=7>"
    );
    assert_eq!(
        header(&message, "List-Unsubscribe-Post"),
        "List-Unsubscribe=One-Click"
    );
    assert!(header(&message, "Reply-To").contains("oficina@muni.test"));
    let text = message.body_text(0).expect("text part");
    assert!(
        text.contains("Hola Ana <script>alert(1)</script>"),
        "{text}"
    );
    assert!(
        text.contains("Retire en [clic](https://evil.test)"),
        "{text}"
    );
    let html = message.body_html(0).expect("html part");
    assert!(
        html.contains("Ana &lt;script&gt;alert(1)&lt;/script&gt;"),
        "{html}"
    );
    assert!(!html.contains("<script>"), "{html}");
    assert!(html.contains("href=\"https://muni.test/estado\""), "{html}");
    assert!(!html.contains("href=\"https://evil.test"), "{html}");
    Ok(())
}

pub async fn smtp_down_then_up_is_retried_and_delivered(engine: Engine) -> anyhow::Result<()> {
    let addr = SmtpServer::reserve()?;
    let app = TestApp::spawn_with(engine, smtp_options(addr)).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let template = app.template(&token, email("t", "Asunto", "Cuerpo")).await;
    let sent = app
        .sent_email(&token, send_email(&template, "a@correo.test", &[]))
        .await;
    // Nothing listens: the attempts fail and are retried.
    let mut sending = false;
    for _ in 0..100 {
        let n = app.get(&token, &sent.notification_id).await;
        assert!(
            matches!(n.status(), S::Created | S::Sending),
            "{:?}",
            n.status()
        );
        if n.status() == S::Sending {
            sending = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sending, "the first attempt was made");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get(&token, &sent.notification_id).await.status(),
        S::Sending
    );

    let smtp = SmtpServer::start_at(addr)?;
    let done = app.wait_final(&token, &sent.notification_id).await;
    assert_eq!(done.status(), S::Delivered);
    assert_eq!(smtp.wait_for(1).await.len(), 1);
    Ok(())
}

pub async fn retries_end_in_temporary_or_technical_failure_after_the_window(
    engine: Engine,
) -> anyhow::Result<()> {
    let smtp = SmtpServer::start()?;
    let mut options = smtp_options(smtp.addr);
    options.config.delivery.retry_window_ms = Duration::from_millis(600);
    let app = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let template = app.template(&token, email("t", "Asunto", "Cuerpo")).await;
    // 451 for this recipient on every attempt.
    let busy = app
        .sent_email(&token, send_email(&template, "busy@correo.test", &[]))
        .await;
    // 535 refuses us, not the recipient: retried, then ours to fix.
    let refused = app
        .sent_email(&token, send_email(&template, "authfail@correo.test", &[]))
        .await;
    assert_eq!(
        app.wait_final(&token, &busy.notification_id).await.status(),
        S::TemporaryFailure
    );
    assert_eq!(
        app.wait_final(&token, &refused.notification_id)
            .await
            .status(),
        S::TechnicalFailure
    );
    drop(app);

    // Nothing listens at all: our side's failure.
    let mut options = smtp_options(SmtpServer::reserve()?);
    options.config.delivery.retry_window_ms = Duration::from_millis(600);
    let app = TestApp::spawn_with(engine, options).await?;
    let template = app.template(&token, email("t", "Asunto", "Cuerpo")).await;
    let down = app
        .sent_email(&token, send_email(&template, "a@correo.test", &[]))
        .await;
    assert_eq!(
        app.wait_final(&token, &down.notification_id).await.status(),
        S::TechnicalFailure
    );
    Ok(())
}

pub async fn permanent_failure_sends_the_sms_fallback_through_twilio(
    engine: Engine,
) -> anyhow::Result<()> {
    let smtp = SmtpServer::start()?;
    let twilio = HttpPeer::start(&[]).await?;
    let mut options = smtp_options(smtp.addr);
    // What goes out as StatusCallback; receipts are checked against the
    // app's own public URL.
    options.sms = vec![twilio.twilio("twilio", "http://placeholder")];
    let app = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let email_template = app
        .template(&token, email("t", "Asunto", "Hola ((nombre))"))
        .await;
    let sms_template = app
        .template(&token, sms("s", "Hola ((nombre)), revise su correo"))
        .await;
    let request = pb::SendEmailRequest {
        reference: "caso-9".into(),
        fallback: Some(pb::SmsFallback {
            template_id: sms_template.clone(),
            template_version: 0,
            phone_number: "+56 9 1234 5678".into(),
            personalisation: crate::support::values(&[("nombre", "Ana")]),
        }),
        ..send_email(&email_template, "bounce@correo.test", &[("nombre", "Ana")])
    };
    let sent = app.sent_email(&token, request).await;
    let failed = app.wait_final(&token, &sent.notification_id).await;
    assert_eq!(failed.status(), S::PermanentFailure);
    assert!(
        smtp.messages().is_empty(),
        "a refused recipient gets nothing"
    );
    let fallback_id = failed.fallback_notification_id.clone();
    assert!(fallback_id.starts_with("ntf_"), "{failed:?}");

    // The SMS went to Twilio's API, with basic auth and the rendered text.
    let hits = twilio.wait_for(1).await;
    let fields: HashMap<String, String> = form(&hits[0].body).into_iter().collect();
    assert_eq!(fields["To"], "+56912345678");
    assert_eq!(fields["Body"], "Hola Ana, revise su correo");
    assert!(hits[0].authorization.starts_with("Basic "));
    let fallback = app.get(&token, &fallback_id).await;
    assert_eq!(fallback.fallback_for_notification_id, sent.notification_id);
    assert_eq!(fallback.reference, "caso-9");
    assert_eq!(fallback.channel(), pb::Channel::Sms);
    // Accepted by the provider: sending, until its receipt.
    for _ in 0..100 {
        if app.get(&token, &fallback_id).await.status() == S::Sending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(app.get(&token, &fallback_id).await.status(), S::Sending);

    // Twilio's receipt: a forged one is refused, a signed one is taken.
    let sid = provider_reference(&app).await;
    let receipt_url = format!("{}/notifications/v1/sms-receipts/twilio", app.http_url);
    let params = vec![
        ("MessageSid".to_owned(), sid.clone()),
        ("MessageStatus".to_owned(), "delivered".to_owned()),
    ];
    let http = reqwest::Client::new();
    let endpoint = format!("{}/notifications/v1/sms-receipts/twilio", app.http_url);
    let forged = http
        .post(&endpoint)
        .header("X-Twilio-Signature", "AAAA")
        .form(&params)
        .send()
        .await?;
    assert_eq!(forged.status(), 403);
    assert_eq!(app.get(&token, &fallback_id).await.status(), S::Sending);
    let signature = Twilio::signature("token-twilio", &receipt_url, &params);
    let genuine = http
        .post(&endpoint)
        .header("X-Twilio-Signature", signature)
        .form(&params)
        .send()
        .await?;
    assert_eq!(genuine.status(), 204);
    assert_eq!(app.get(&token, &fallback_id).await.status(), S::Delivered);
    Ok(())
}

/// The `sid` the provider answered for the only SMS sent, as stored.
async fn provider_reference(app: &TestApp) -> String {
    let db = app.notifications.database();
    let sid: String = atiende_platform::on_db!(db, pool => {
        sqlx::query_scalar("SELECT provider_reference FROM notifications WHERE provider_reference IS NOT NULL")
            .fetch_one(pool)
            .await
            .expect("provider reference")
    });
    sid
}

pub async fn sms_fails_over_to_the_second_provider(engine: Engine) -> anyhow::Result<()> {
    let first = HttpPeer::start(&[503, 503, 503, 503, 503, 503]).await?;
    let second = HttpPeer::start(&[]).await?;
    let options = Options {
        sms: vec![
            first.twilio("primary", "http://placeholder"),
            second.twilio("secondary", "http://placeholder"),
        ],
        ..Options::default()
    };
    let app = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let template = app.template(&token, sms("s", "Su hora: ((hora))")).await;
    let sent = app
        .sent_sms(
            &token,
            send_sms(&template, "+56912345678", &[("hora", "10:30")]),
        )
        .await;
    assert_eq!(sent.fragment_count, 1);
    let hits = second.wait_for(1).await;
    assert_eq!(first.hits().len(), 1, "the first provider was tried once");
    let fields: HashMap<String, String> = form(&hits[0].body).into_iter().collect();
    assert_eq!(fields["Body"], "Su hora: 10:30");
    assert!(fields["StatusCallback"].ends_with("/notifications/v1/sms-receipts/secondary"));

    // A provider refusing the number (4xx) is a permanent failure.
    let refusing = HttpPeer::start(&[400]).await?;
    let options = Options {
        sms: vec![refusing.twilio("only", "http://placeholder")],
        ..Options::default()
    };
    let app = TestApp::spawn_with(engine, options).await?;
    let template = app.template(&token, sms("s", "Hola")).await;
    let sent = app
        .sent_sms(&token, send_sms(&template, "+56912345678", &[]))
        .await;
    assert_eq!(
        app.wait_final(&token, &sent.notification_id).await.status(),
        S::PermanentFailure
    );
    Ok(())
}

pub async fn sandbox_is_simulated_and_never_reaches_a_recipient(
    engine: Engine,
) -> anyhow::Result<()> {
    let smtp = SmtpServer::start()?;
    let twilio = HttpPeer::start(&[]).await?;
    let mut options = smtp_options(smtp.addr);
    options.sms = vec![twilio.twilio("twilio", "http://placeholder")];
    let app = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token_in(ALL, Environment::Sandbox);
    let email_t = app.template(&token, email("t", "Asunto", "Cuerpo")).await;
    let sms_t = app.template(&token, sms("s", "Cuerpo")).await;
    let cases = [
        ("ana@correo.test", S::Delivered),
        ("perm-fail@simulator.invalid", S::PermanentFailure),
        ("temp-fail@simulator.invalid", S::TemporaryFailure),
        ("tech-fail@simulator.invalid", S::TechnicalFailure),
    ];
    for (to, expected) in cases {
        let n = app.sent_email(&token, send_email(&email_t, to, &[])).await;
        assert_eq!(
            app.wait_final(&token, &n.notification_id).await.status(),
            expected,
            "{to}"
        );
    }
    for (to, expected) in [
        ("+56912345678", S::Delivered),
        ("+56900000002", S::PermanentFailure),
        ("+56900000003", S::TemporaryFailure),
        ("+56900000004", S::TechnicalFailure),
    ] {
        let n = app.sent_sms(&token, send_sms(&sms_t, to, &[])).await;
        assert_eq!(
            app.wait_final(&token, &n.notification_id).await.status(),
            expected,
            "{to}"
        );
    }
    assert!(smtp.messages().is_empty());
    assert!(twilio.hits().is_empty());

    // Live clients may not use simulator recipients.
    let (_, live) = agency_token_in(ALL, Environment::Live);
    let live_t = app.template(&live, email("t", "Asunto", "Cuerpo")).await;
    let refused = app
        .notifications()
        .send_email(authed(
            send_email(&live_t, "perm-fail@simulator.invalid", &[]),
            &live,
        ))
        .await
        .unwrap_err();
    assert_eq!(crate::support::violated_fields(&refused), ["email_address"]);
    Ok(())
}

pub async fn notifications_committed_before_a_crash_are_delivered_after_restart(
    engine: Engine,
) -> anyhow::Result<()> {
    let smtp = SmtpServer::start()?;
    let mut options = smtp_options(smtp.addr);
    options.deliver = false; // the instance dies before delivering anything
    let first = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let template = first.template(&token, email("t", "Asunto", "Hola")).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let n = first
            .sent_email(
                &token,
                send_email(&template, &format!("v{i}@correo.test"), &[]),
            )
            .await;
        ids.push(n.notification_id);
    }
    // Some were even claimed by the dying instance (with a lease that ends
    // at once), never finished.
    let claimed = atiende_notifications::store::queue::claim_due(
        first.notifications.database(),
        atiende_platform::storage::now_micros(),
        0,
        5,
    )
    .await?;
    assert_eq!(claimed.len(), 5);
    let url = first.database_url.clone();
    first.stop().await;
    assert!(smtp.messages().is_empty());

    let mut options = smtp_options(smtp.addr);
    options.database_url = Some(url);
    let second = TestApp::spawn_with(engine, options).await?;
    for id in &ids {
        assert_eq!(second.wait_final(&token, id).await.status(), S::Delivered);
    }
    let messages = smtp.wait_for(20).await;
    assert_eq!(messages.len(), 20);
    Ok(())
}

pub async fn two_instances_on_one_database_deliver_each_notification_once(
    engine: Engine,
) -> anyhow::Result<()> {
    let rows = match engine {
        Engine::Postgres => 2000,
        Engine::Sqlite => 600,
    };
    let smtp = SmtpServer::start()?;
    let mut options = smtp_options(smtp.addr);
    options.deliver = false;
    let a = TestApp::spawn_with(engine, options).await?;
    let (_, token) = agency_token_in(ALL, Environment::Live);
    let template = a
        .template(&token, email("t", "Aviso ((n))", "Hola ((n))"))
        .await;
    // Both instances start delivering at once over the same queue.
    let url = a.database_url.clone();
    a.stop().await;
    let mut options = smtp_options(smtp.addr);
    options.database_url = Some(url.clone());
    options.config.delivery.concurrency = 16;
    let a = TestApp::spawn_with(engine, options).await?;
    let mut options = smtp_options(smtp.addr);
    options.database_url = Some(url);
    options.config.delivery.concurrency = 16;
    let b = TestApp::spawn_with(engine, options).await?;
    let recipients: Vec<pb::BatchRecipient> = (0..rows)
        .map(|i| pb::BatchRecipient {
            recipient: format!("r{i}@correo.test"),
            personalisation: crate::support::values(&[("n", &i.to_string())]),
            reference: format!("{i}"),
            unsubscribe_url: String::new(),
        })
        .collect();
    let (half_a, half_b) = recipients.split_at(rows / 2);
    for (app, part) in [(&a, half_a), (&b, half_b)] {
        app.notifications()
            .send_batch(authed(
                pb::SendBatchRequest {
                    template_id: template.clone(),
                    channel: pb::Channel::Email.into(),
                    recipients: part.to_vec(),
                    ..Default::default()
                },
                &token,
            ))
            .await?;
    }
    let messages = smtp.wait_for(rows).await;
    // Let any duplicate arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let messages = if smtp.messages().len() > messages.len() {
        smtp.messages()
    } else {
        messages
    };
    let mut seen = HashMap::new();
    for m in &messages {
        let parsed = mail_parser::MessageParser::default()
            .parse(&m.data)
            .expect("MIME");
        let id = parsed.message_id().unwrap_or_default().to_owned();
        *seen.entry(id).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), rows, "every notification arrived");
    assert!(seen.values().all(|&n| n == 1), "none arrived twice");
    Ok(())
}
