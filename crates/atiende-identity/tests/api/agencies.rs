//! Agencies and their clients: lifecycle, tenancy, permissions, bad input.

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::common::v1::Environment as PbEnvironment;
use atiende_proto::identity::v1 as pb;
use tonic::Code;

use crate::support::{Credentials, Engine, TestApp, authed, violated_fields};

fn create_client_request(name: &str, environment: PbEnvironment) -> pb::CreateClientRequest {
    pb::CreateClientRequest {
        display_name: name.into(),
        scopes: vec![
            pb::Scope::NotificationsSend.into(),
            pb::Scope::NotificationsRead.into(),
        ],
        environment: environment.into(),
        agency_id: String::new(),
    }
}

pub async fn client_lifecycle_secret_rotation_disable_and_paging(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let admin = app.token(&app.operator).await?;

    // Created: the secret is returned once and works.
    let created = app
        .agencies()
        .create_client(authed(
            create_client_request("Mailer", PbEnvironment::Live),
            &admin,
        ))
        .await?
        .into_inner();
    let client = created.client.unwrap();
    assert_eq!(client.agency_id, app.operator.agency_id);
    assert_eq!(client.state, i32::from(pb::ClientState::Active));
    assert!(created.client_secret.starts_with("ats_"));
    let mailer = Credentials {
        agency_id: client.agency_id.clone(),
        client_id: client.client_id.clone(),
        client_secret: created.client_secret.clone(),
    };
    let mailer_token = app.token(&mailer).await?;

    // Paging: 3 more clients, pages of 2, newest first, no duplicates.
    for name in ["A", "B", "C"] {
        app.agencies()
            .create_client(authed(
                create_client_request(name, PbEnvironment::Sandbox),
                &admin,
            ))
            .await?;
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .agencies()
            .list_clients(authed(
                pb::ListClientsRequest {
                    page_size: 2,
                    page_token: page_token.clone(),
                },
                &admin,
            ))
            .await?
            .into_inner();
        assert!(page.clients.len() <= 2);
        seen.extend(page.clients.into_iter().map(|c| c.display_name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["C", "B", "A", "Mailer", "Operator admin"]);

    // Rotated: the old secret stops working, the new one works.
    let rotated = app
        .agencies()
        .rotate_client_secret(authed(
            pb::RotateClientSecretRequest {
                client_id: mailer.client_id.clone(),
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert_ne!(rotated.client_secret, mailer.client_secret);
    let refused = app.token(&mailer).await.unwrap_err().to_string();
    assert!(refused.contains("invalid client credentials"), "{refused}");
    let renewed = Credentials {
        client_secret: rotated.client_secret,
        ..mailer.clone()
    };
    app.token(&renewed).await?;

    // Disabled: no new tokens, and its existing token is inactive.
    let disabled = app
        .agencies()
        .disable_client(authed(
            pb::DisableClientRequest {
                client_id: mailer.client_id.clone(),
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert_eq!(
        disabled.client.unwrap().state,
        i32::from(pb::ClientState::Disabled)
    );
    let status = app
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            client_id: renewed.client_id.clone(),
            client_secret: renewed.client_secret.clone(),
            scopes: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let introspected = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: mailer_token,
            },
            &admin,
        ))
        .await?
        .into_inner();
    assert!(!introspected.active);
    // Disabling twice is harmless; rotating a disabled client is refused.
    app.agencies()
        .disable_client(authed(
            pb::DisableClientRequest {
                client_id: mailer.client_id.clone(),
            },
            &admin,
        ))
        .await?;
    let status = app
        .agencies()
        .rotate_client_secret(authed(
            pb::RotateClientSecretRequest {
                client_id: mailer.client_id,
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    Ok(())
}

pub async fn agency_cannot_see_or_change_another_agencys_clients(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let a = app
        .agency_with_client(
            &[Scope::IdentityAdmin, Scope::PaymentsRead],
            Environment::Live,
        )
        .await?;
    let b = app
        .agency_with_client(&[Scope::IdentityAdmin], Environment::Live)
        .await?;
    let a_token = app.token(&a).await?;
    let b_token = app.token(&b).await?;

    let listed = app
        .agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &b_token))
        .await?
        .into_inner();
    assert_eq!(listed.clients.len(), 1);
    assert_eq!(listed.clients[0].client_id, b.client_id);

    let rotate = app
        .agencies()
        .rotate_client_secret(authed(
            pb::RotateClientSecretRequest {
                client_id: a.client_id.clone(),
            },
            &b_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(rotate.code(), Code::NotFound);
    let disable = app
        .agencies()
        .disable_client(authed(
            pb::DisableClientRequest {
                client_id: a.client_id.clone(),
            },
            &b_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(disable.code(), Code::NotFound);
    let get = app
        .agencies()
        .get_agency(authed(
            pb::GetAgencyRequest {
                agency_id: a.agency_id.clone(),
            },
            &b_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let own = app
        .agencies()
        .get_agency(authed(pb::GetAgencyRequest::default(), &b_token))
        .await?
        .into_inner();
    assert_eq!(own.agency.unwrap().agency_id, b.agency_id);

    // B neither sees A's token as active nor can revoke it.
    let introspected = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: a_token.clone(),
            },
            &b_token,
        ))
        .await?
        .into_inner();
    assert!(!introspected.active);
    app.tokens()
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                token: a_token.clone(),
            },
            &b_token,
        ))
        .await?;
    let still = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: a_token.clone(),
            },
            &a_token,
        ))
        .await?
        .into_inner();
    assert!(still.active);
    // A's secret still works: B changed nothing.
    app.token(&a).await?;
    Ok(())
}

pub async fn sandbox_admin_cannot_create_or_manage_live_clients(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let sandbox = app
        .agency_with_client(&[Scope::IdentityAdmin], Environment::Sandbox)
        .await?;
    let token = app.token(&sandbox).await?;
    let status = app
        .agencies()
        .create_client(authed(
            create_client_request("Live one", PbEnvironment::Live),
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    app.agencies()
        .create_client(authed(
            create_client_request("Sandbox one", PbEnvironment::Sandbox),
            &token,
        ))
        .await?;
    // A live client of the same agency, made out of band, is off limits too.
    let (live, _) = app
        .identity
        .service()
        .bootstrap_client(
            &sandbox.agency_id,
            atiende_identity::domain::DisplayName::parse("Live").unwrap(),
            [Scope::PaymentsCreate].into_iter().collect(),
            Environment::Live,
        )
        .await?;
    let status = app
        .agencies()
        .disable_client(authed(
            pb::DisableClientRequest {
                client_id: live.client_id,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    Ok(())
}

pub async fn only_operators_create_agencies_and_rotate_keys(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(&[Scope::IdentityAdmin], Environment::Live)
        .await?;
    let token = app.token(&agency).await?;
    let create = pb::CreateAgencyRequest {
        display_name: "Servicio".into(),
        operator: false,
    };
    let status = app
        .agencies()
        .create_agency(authed(create.clone(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .tokens()
        .rotate_signing_keys(authed(pb::RotateSigningKeysRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let operator = app.token(&app.operator).await?;
    let created = app
        .agencies()
        .create_agency(authed(create, &operator))
        .await?
        .into_inner();
    let created = created.agency.unwrap();
    assert_eq!(created.display_name, "Servicio");
    assert!(!created.operator);
    // Operators may read any agency.
    let read = app
        .agencies()
        .get_agency(authed(
            pb::GetAgencyRequest {
                agency_id: created.agency_id.clone(),
            },
            &operator,
        ))
        .await?
        .into_inner();
    assert_eq!(read.agency.unwrap().agency_id, created.agency_id);
    Ok(())
}

pub async fn bad_input_gets_invalid_argument_with_field_violations(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let admin = app.token(&app.operator).await?;

    let status = app
        .agencies()
        .create_client(authed(
            pb::CreateClientRequest {
                display_name: "  ".into(),
                scopes: vec![0, 99],
                environment: 7,
                agency_id: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        ["display_name", "scopes", "environment"]
    );

    let status = app
        .agencies()
        .create_client(authed(
            pb::CreateClientRequest {
                display_name: "ok".into(),
                scopes: vec![],
                environment: PbEnvironment::Live.into(),
                agency_id: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["scopes"]);

    let status = app
        .agencies()
        .create_agency(authed(
            pb::CreateAgencyRequest {
                display_name: "x".repeat(201),
                operator: false,
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["display_name"]);

    let status = app
        .agencies()
        .list_clients(authed(
            pb::ListClientsRequest {
                page_size: 5000,
                page_token: "%%%".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);
    let status = app
        .agencies()
        .list_clients(authed(
            pb::ListClientsRequest {
                page_size: -1,
                page_token: String::new(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_size"]);

    for bad_id in [
        "",
        "cli_123",
        "agy_0190c6a3b2f47c1e9d1a2b3c4d5e6f70",
        "cli_0190C6A3B2F47C1E9D1A2B3C4D5E6F70",
    ] {
        let status = app
            .agencies()
            .rotate_client_secret(authed(
                pb::RotateClientSecretRequest {
                    client_id: bad_id.into(),
                },
                &admin,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{bad_id}");
        assert_eq!(violated_fields(&status), ["client_id"]);
    }
    let status = app
        .agencies()
        .get_agency(authed(
            pb::GetAgencyRequest {
                agency_id: "nope".into(),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["agency_id"]);

    let status = app
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            client_id: "x".into(),
            client_secret: String::new(),
            scopes: vec![42],
        })
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["client_id", "client_secret", "scopes"]
    );

    // A well-formed id that does not exist is NOT_FOUND.
    let status = app
        .agencies()
        .disable_client(authed(
            pb::DisableClientRequest {
                client_id: atiende_platform::ids::new_id("cli"),
            },
            &admin,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    Ok(())
}

/// Seeded random input to every RPC: each answer is a status, never a
/// dropped connection, and the server still reports SERVING afterwards.
pub async fn arbitrary_input_never_takes_the_server_down(engine: Engine) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    let app = TestApp::spawn(engine).await?;
    let admin = app.token(&app.operator).await?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let random_text = |rng: &mut rand::rngs::StdRng| -> String {
        let len = rng.random_range(0..300);
        (0..len)
            .map(|_| char::from_u32(rng.random_range(0..0x3000)).unwrap_or('?'))
            .collect()
    };
    for _ in 0..60 {
        let text = random_text(&mut rng);
        let number: i32 = rng.random();
        let results = [
            app.agencies()
                .create_agency(authed(
                    pb::CreateAgencyRequest {
                        display_name: text.clone(),
                        operator: rng.random(),
                    },
                    &admin,
                ))
                .await
                .err(),
            app.agencies()
                .create_client(authed(
                    pb::CreateClientRequest {
                        display_name: text.clone(),
                        scopes: vec![number, rng.random()],
                        environment: number,
                        agency_id: String::new(),
                    },
                    &admin,
                ))
                .await
                .err(),
            app.agencies()
                .list_clients(authed(
                    pb::ListClientsRequest {
                        page_size: number,
                        page_token: text.clone(),
                    },
                    &admin,
                ))
                .await
                .err(),
            app.agencies()
                .rotate_client_secret(authed(
                    pb::RotateClientSecretRequest {
                        client_id: text.clone(),
                    },
                    &admin,
                ))
                .await
                .err(),
            app.agencies()
                .get_agency(authed(
                    pb::GetAgencyRequest {
                        agency_id: text.clone(),
                    },
                    &admin,
                ))
                .await
                .err(),
            app.tokens()
                .issue_token(pb::IssueTokenRequest {
                    client_id: text.clone(),
                    client_secret: text.clone(),
                    scopes: vec![number],
                })
                .await
                .err(),
            app.tokens()
                .introspect_token(authed(
                    pb::IntrospectTokenRequest {
                        token: text.clone(),
                    },
                    &admin,
                ))
                .await
                .err(),
            app.tokens()
                .revoke_token(authed(
                    pb::RevokeTokenRequest {
                        token: text.clone(),
                    },
                    &admin,
                ))
                .await
                .err(),
        ];
        for status in results.into_iter().flatten() {
            assert!(
                matches!(
                    status.code(),
                    Code::InvalidArgument
                        | Code::NotFound
                        | Code::Unauthenticated
                        | Code::PermissionDenied
                ),
                "unexpected {status:?}"
            );
        }
    }
    let mut health = tonic_health::pb::health_client::HealthClient::new(app.channel.clone());
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "atiende.identity.v1.TokenService".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        serving.status,
        i32::from(tonic_health::pb::health_check_response::ServingStatus::Serving)
    );
    Ok(())
}

/// A request over the configured maximum message size (8 MiB) is refused
/// before it is parsed, and the server keeps serving.
pub async fn oversized_request_is_refused_and_the_server_keeps_serving(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let admin = app.token(&app.operator).await?;
    let huge = pb::CreateAgencyRequest {
        display_name: "x".repeat(9 * 1024 * 1024),
        operator: false,
    };
    let status = app
        .agencies()
        .create_agency(authed(huge, &admin))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    app.agencies()
        .get_agency(authed(pb::GetAgencyRequest::default(), &admin))
        .await?;
    Ok(())
}
