//! TemplateService over gRPC.

use atiende_platform::auth::Scope;
use atiende_proto::notifications::v1 as pb;
use tonic::Code;

use crate::support::{Engine, TestApp, agency_token, authed, email, sms, text, violated_fields};

const EDITOR: &[Scope] = &[Scope::NotificationsTemplates];

async fn create(app: &TestApp, token: &str, request: pb::CreateTemplateRequest) -> pb::Template {
    app.templates()
        .create_template(authed(request, token))
        .await
        .unwrap()
        .into_inner()
        .template
        .unwrap()
}

fn update(t: &pb::Template, body: &str) -> pb::UpdateTemplateRequest {
    pb::UpdateTemplateRequest {
        template_id: t.template_id.clone(),
        version: t.version,
        name: t.name.clone(),
        description: t.description.clone(),
        subject: t.subject.clone(),
        body: body.into(),
    }
}

pub async fn templates_are_versioned_and_old_versions_stay_readable(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(EDITOR);
    let v1 = create(
        &app,
        &token,
        email("Pago", "Pago de ((name))", "Hola ((name)), ((amount))"),
    )
    .await;
    assert_eq!(v1.version, 1);
    assert!(v1.template_id.starts_with("tpl_"));
    assert_eq!(v1.placeholders, ["name", "amount"]);

    let v2 = app
        .templates()
        .update_template(authed(update(&v1, "Hola ((name))"), &token))
        .await?
        .into_inner()
        .template
        .unwrap();
    assert_eq!(
        (v2.template_id.as_str(), v2.version),
        (v1.template_id.as_str(), 2)
    );
    // Unchanged content makes no new version.
    let same = app
        .templates()
        .update_template(authed(update(&v2, "Hola ((name))"), &token))
        .await?
        .into_inner()
        .template
        .unwrap();
    assert_eq!(same.version, 2);
    // Editing from a stale version is refused.
    let stale = app
        .templates()
        .update_template(authed(update(&v1, "otra"), &token))
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::FailedPrecondition);

    let get = |version: i32| pb::GetTemplateRequest {
        template_id: v1.template_id.clone(),
        version,
    };
    let latest = app
        .templates()
        .get_template(authed(get(0), &token))
        .await?
        .into_inner()
        .template
        .unwrap();
    assert_eq!((latest.version, latest.body.as_str()), (2, "Hola ((name))"));
    let first = app
        .templates()
        .get_template(authed(get(1), &token))
        .await?
        .into_inner()
        .template
        .unwrap();
    assert_eq!(first.body, "Hola ((name)), ((amount))");
    let missing = app
        .templates()
        .get_template(authed(get(3), &token))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

pub async fn concurrent_updates_from_one_version_create_one_version(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(EDITOR);
    let v1 = create(&app, &token, sms("Aviso", "Hola")).await;
    let mut edits = Vec::new();
    for i in 0..8 {
        let mut client = app.templates();
        let request = authed(update(&v1, &format!("Hola {i}")), &token);
        edits.push(tokio::spawn(async move {
            client.update_template(request).await
        }));
    }
    let mut won = 0;
    for edit in edits {
        match edit.await? {
            Ok(response) => {
                assert_eq!(response.into_inner().template.unwrap().version, 2);
                won += 1;
            }
            Err(status) => assert_eq!(status.code(), Code::FailedPrecondition),
        }
    }
    assert_eq!(won, 1, "exactly one edit from version 1 becomes version 2");
    Ok(())
}

pub async fn list_is_newest_first_filtered_and_paged(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(EDITOR);
    for name in ["a", "b", "c"] {
        create(&app, &token, sms(name, "x")).await;
    }
    let mail = create(&app, &token, email("d", "s", "b")).await;
    app.templates()
        .update_template(authed(update(&mail, "b2"), &token))
        .await?;

    let mut names = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .templates()
            .list_templates(authed(
                pb::ListTemplatesRequest {
                    channel: 0,
                    page_size: 2,
                    page_token,
                },
                &token,
            ))
            .await?
            .into_inner();
        names.extend(page.templates.iter().map(|t| (t.name.clone(), t.version)));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(
        names,
        [
            ("d".into(), 2),
            ("c".into(), 1),
            ("b".into(), 1),
            ("a".into(), 1)
        ]
    );

    let only_sms = app
        .templates()
        .list_templates(authed(
            pb::ListTemplatesRequest {
                channel: pb::Channel::Sms.into(),
                page_size: 0,
                page_token: String::new(),
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(only_sms.templates.len(), 3);
    Ok(())
}

pub async fn preview_renders_email_and_sms_and_reports_missing_values(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(EDITOR);
    let mail = create(
        &app,
        &token,
        email(
            "Pago",
            "Pago de ((name))",
            "# Recibo\n\nHola ((name)), ((note))\n\nVea https://pagos.example.gob.cl",
        ),
    )
    .await;
    let preview = app
        .templates()
        .preview_template(authed(
            pb::PreviewTemplateRequest {
                source: Some(pb::preview_template_request::Source::TemplateId(
                    mail.template_id.clone(),
                )),
                template_version: 0,
                personalisation: [("NAME".to_owned(), text("<b>Ana</b>"))].into(),
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(preview.template_version, 1);
    assert_eq!(preview.missing_placeholders, ["note"]);
    let Some(pb::preview_template_response::Rendering::Email(rendered)) = preview.rendering else {
        panic!("an email preview");
    };
    assert_eq!(rendered.subject, "Pago de <b>Ana</b>");
    assert!(
        rendered
            .text_body
            .starts_with("Recibo\n\nHola <b>Ana</b>, ((note))")
    );
    assert!(rendered.html_body.contains("<h2>Recibo</h2>"));
    assert!(rendered.html_body.contains("Hola &lt;b&gt;Ana&lt;/b&gt;"));
    assert!(
        rendered
            .html_body
            .contains("<a href=\"https://pagos.example.gob.cl\">")
    );

    // Unsaved SMS content: encoding and fragments.
    let preview = app
        .templates()
        .preview_template(authed(
            pb::PreviewTemplateRequest {
                source: Some(pb::preview_template_request::Source::Content(
                    pb::TemplateContent {
                        channel: pb::Channel::Sms.into(),
                        subject: String::new(),
                        body: "Su código es ((code)). ".repeat(8),
                    },
                )),
                template_version: 0,
                personalisation: [("code".to_owned(), text("1234"))].into(),
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(preview.template_version, 0);
    let Some(pb::preview_template_response::Rendering::Sms(sms)) = preview.rendering else {
        panic!("an SMS preview");
    };
    assert_eq!(
        sms.encoding,
        i32::from(pb::SmsEncoding::Ucs2),
        "ó is not GSM-7"
    );
    assert_eq!(
        sms.character_count,
        8 * 19,
        "\"Su código es 1234. \" is 19 characters"
    );
    assert_eq!(sms.fragment_count, 3);
    Ok(())
}

pub async fn create_is_idempotent_and_refuses_a_reused_key(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(EDITOR);
    let keyed = |body: &str| pb::CreateTemplateRequest {
        idempotency_key: "plantilla-1".into(),
        ..sms("Aviso", body)
    };
    let first = create(&app, &token, keyed("Hola")).await;
    let replay = create(&app, &token, keyed("Hola")).await;
    assert_eq!(first.template_id, replay.template_id);
    let reused = app
        .templates()
        .create_template(authed(keyed("Chao"), &token))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);

    // Concurrent creates with one key make one template.
    let mut creates = Vec::new();
    for _ in 0..8 {
        let mut client = app.templates();
        let request = authed(
            pb::CreateTemplateRequest {
                idempotency_key: "plantilla-2".into(),
                ..sms("B", "x")
            },
            &token,
        );
        creates.push(tokio::spawn(async move {
            client.create_template(request).await
        }));
    }
    let mut ids = Vec::new();
    for create in creates {
        ids.push(create.await??.into_inner().template.unwrap().template_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1);
    Ok(())
}

pub async fn bad_input_gets_field_violations(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(EDITOR);
    let status = app
        .templates()
        .create_template(authed(
            pb::CreateTemplateRequest {
                name: " ".into(),
                subject: String::new(),
                body: String::new(),
                ..email("", "", "")
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["name", "subject", "body"]);
    let status = app
        .templates()
        .create_template(authed(sms("x", &"a".repeat(919)), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["body"]);
    let status = app
        .templates()
        .create_template(authed(
            pb::CreateTemplateRequest {
                channel: 9,
                idempotency_key: "k".repeat(256),
                ..sms("x", "y")
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["channel", "idempotency_key"]);
    let status = app
        .templates()
        .get_template(authed(
            pb::GetTemplateRequest {
                template_id: "tpl_nope".into(),
                version: -1,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["template_id", "version"]);
    let status = app
        .templates()
        .preview_template(authed(pb::PreviewTemplateRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["source"]);
    let status = app
        .templates()
        .list_templates(authed(
            pb::ListTemplatesRequest {
                channel: 0,
                page_size: 2000,
                page_token: "zz".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);

    // NUL (which PostgreSQL cannot store) is bad input on both engines.
    let status = app
        .templates()
        .create_template(authed(sms("x", "a\u{0}b"), &token))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), violated_fields(&status)),
        (Code::InvalidArgument, vec!["body".to_owned()])
    );

    // Two keys for one placeholder, and personalisation over 1 MiB.
    let content = Some(pb::preview_template_request::Source::Content(
        pb::TemplateContent {
            channel: pb::Channel::Sms.into(),
            subject: String::new(),
            body: "((first name))".into(),
        },
    ));
    let preview = |personalisation| pb::PreviewTemplateRequest {
        source: content.clone(),
        template_version: 0,
        personalisation,
    };
    let status = app
        .templates()
        .preview_template(authed(
            preview(
                [
                    ("First Name".to_owned(), text("a")),
                    ("firstname".to_owned(), text("b")),
                ]
                .into(),
            ),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .templates()
        .preview_template(authed(
            preview([("first name".to_owned(), text(&"x".repeat(1024 * 1024 + 1)))].into()),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["personalisation"]);
    Ok(())
}

pub async fn agency_cannot_see_or_change_another_agencys_templates(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, a) = agency_token(EDITOR);
    let (_, b) = agency_token(EDITOR);
    let mine = create(&app, &a, sms("A", "hola")).await;
    let id = mine.template_id.clone();
    let get = app
        .templates()
        .get_template(authed(
            pb::GetTemplateRequest {
                template_id: id.clone(),
                version: 0,
            },
            &b,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let upd = app
        .templates()
        .update_template(authed(update(&mine, "mío"), &b))
        .await
        .unwrap_err();
    assert_eq!(upd.code(), Code::NotFound);
    let preview = app
        .templates()
        .preview_template(authed(
            pb::PreviewTemplateRequest {
                source: Some(pb::preview_template_request::Source::TemplateId(id)),
                ..Default::default()
            },
            &b,
        ))
        .await
        .unwrap_err();
    assert_eq!(preview.code(), Code::NotFound);
    let listed = app
        .templates()
        .list_templates(authed(pb::ListTemplatesRequest::default(), &b))
        .await?
        .into_inner();
    assert!(listed.templates.is_empty());
    Ok(())
}

pub async fn scopes_are_enforced(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (agency, editor) = agency_token(EDITOR);
    let reader = atiende_platform::testing::token(
        &agency,
        &[Scope::NotificationsRead],
        atiende_platform::auth::Environment::Sandbox,
    );
    let payer = atiende_platform::testing::token(
        &agency,
        &[Scope::PaymentsCreate],
        atiende_platform::auth::Environment::Sandbox,
    );
    let t = create(&app, &editor, sms("A", "hola")).await;
    // Readers read, but do not write.
    app.templates()
        .get_template(authed(
            pb::GetTemplateRequest {
                template_id: t.template_id.clone(),
                version: 0,
            },
            &reader,
        ))
        .await?;
    let status = app
        .templates()
        .create_template(authed(sms("B", "x"), &reader))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // Without a notifications scope, nothing.
    let status = app
        .templates()
        .list_templates(authed(pb::ListTemplatesRequest::default(), &payer))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .templates()
        .list_templates(pb::ListTemplatesRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    Ok(())
}
