//! The wall between sandbox and live, and operator acts.

use atiende_identity::domain::DisplayName;
use atiende_platform::auth::{Environment, Scope};
use atiende_proto::identity::v1 as pb;
use tonic::Code;

use crate::support::{Credentials, Engine, TestApp, authed};

/// A client of the operator agency in the given environment.
async fn operator_client(app: &TestApp, environment: Environment) -> anyhow::Result<Credentials> {
    let (client, secret) = app
        .identity
        .service()
        .bootstrap_client(
            &app.operator.agency_id,
            DisplayName::parse("Operator helper").unwrap(),
            [Scope::IdentityAdmin].into_iter().collect(),
            environment,
        )
        .await?;
    Ok(Credentials {
        agency_id: app.operator.agency_id.clone(),
        client_id: client.client_id,
        client_secret: secret.expose().to_owned(),
    })
}

pub async fn sandbox_clients_of_operators_cannot_act_as_operators(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let sandbox = operator_client(&app, Environment::Sandbox).await?;
    let token = app.token(&sandbox).await?;
    let other = app
        .agency_with_client(&[Scope::PaymentsRead], Environment::Live)
        .await?;

    let status = app
        .agencies()
        .create_agency(authed(
            pb::CreateAgencyRequest {
                display_name: "X".into(),
                operator: true,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .tokens()
        .rotate_signing_keys(authed(pb::RotateSigningKeysRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .agencies()
        .get_agency(authed(
            pb::GetAgencyRequest {
                agency_id: other.agency_id.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // The live operator client may.
    let live = app.token(&app.operator).await?;
    app.agencies()
        .get_agency(authed(
            pb::GetAgencyRequest {
                agency_id: other.agency_id,
            },
            &live,
        ))
        .await?;
    Ok(())
}

pub async fn sandbox_callers_neither_see_nor_revoke_live_tokens(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let sandbox = operator_client(&app, Environment::Sandbox).await?;
    let sandbox_token = app.token(&sandbox).await?;
    let live_token = app.token(&app.operator).await?;

    let seen = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: live_token.clone(),
            },
            &sandbox_token,
        ))
        .await?
        .into_inner();
    assert!(!seen.active);
    app.tokens()
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                token: live_token.clone(),
            },
            &sandbox_token,
        ))
        .await?;
    // Still active: the sandbox caller changed nothing.
    let still = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: live_token.clone(),
            },
            &live_token,
        ))
        .await?
        .into_inner();
    assert!(still.active);

    // And a sandbox admin lists only sandbox clients.
    let listed = app
        .agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &sandbox_token))
        .await?
        .into_inner();
    assert!(!listed.clients.is_empty());
    let sandbox_env = i32::from(atiende_proto::common::v1::Environment::Sandbox);
    assert!(listed.clients.iter().all(|c| c.environment == sandbox_env));
    Ok(())
}

/// Another instance whose clock is far behind records a revocation: this
/// instance still picks it up (no clock-based watermark can skip it).
pub async fn revocation_from_an_instance_with_a_skewed_clock_is_seen(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let token = app.token(&app.operator).await?;
    let admin = app.token(&app.operator).await?;
    let jti = jsonwebtoken::dangerous::insecure_decode::<serde_json::Value>(&token)?.claims["jti"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_instance = atiende_platform::storage::Database::connect(&app.database_url, 2).await?;
    let far_future = atiende_platform::storage::now_micros() + 3_600_000_000;
    atiende_identity::store::insert_token_revocation(
        &other_instance,
        &jti,
        &app.operator.agency_id,
        far_future,
        1,
    )
    .await?;
    let started = std::time::Instant::now();
    loop {
        let seen = app
            .tokens()
            .introspect_token(authed(
                pb::IntrospectTokenRequest {
                    token: token.clone(),
                },
                &admin,
            ))
            .await?
            .into_inner();
        if !seen.active {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "revocation never seen"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Many made-up client ids at once: each gets the one answer for bad
/// credentials, and a real client still gets its token meanwhile.
pub async fn unknown_client_ids_in_bulk_do_not_block_real_clients(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let mut attempts = Vec::new();
    for _ in 0..100 {
        let mut tokens = app.tokens();
        attempts.push(tokio::spawn(async move {
            tokens
                .issue_token(pb::IssueTokenRequest {
                    client_id: atiende_platform::ids::new_id("cli"),
                    client_secret: "ats_guess".into(),
                    scopes: vec![],
                })
                .await
        }));
    }
    let real = app.token(&app.operator).await?;
    assert!(!real.is_empty());
    for attempt in attempts {
        let status = attempt.await?.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    Ok(())
}

/// An operator gives a new agency its first client; nobody else can create
/// clients in another agency.
pub async fn operators_create_the_first_client_of_a_new_agency(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let operator = app.token(&app.operator).await?;
    let created = app
        .agencies()
        .create_agency(authed(
            pb::CreateAgencyRequest {
                display_name: "Municipalidad".into(),
                operator: false,
            },
            &operator,
        ))
        .await?
        .into_inner()
        .agency
        .unwrap();
    let request = pb::CreateClientRequest {
        display_name: "Municipalidad admin".into(),
        scopes: vec![pb::Scope::IdentityAdmin.into()],
        environment: atiende_proto::common::v1::Environment::Live.into(),
        agency_id: created.agency_id.clone(),
    };
    let client = app
        .agencies()
        .create_client(authed(request.clone(), &operator))
        .await?
        .into_inner();
    let first = Credentials {
        agency_id: created.agency_id.clone(),
        client_id: client.client.unwrap().client_id,
        client_secret: client.client_secret,
    };
    // The new agency's admin works in its own agency...
    let own = app.token(&first).await?;
    let listed = app
        .agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &own))
        .await?
        .into_inner();
    assert_eq!(listed.clients.len(), 1);
    // ...and cannot create clients elsewhere.
    let elsewhere = pb::CreateClientRequest {
        agency_id: app.operator.agency_id.clone(),
        ..request
    };
    let status = app
        .agencies()
        .create_client(authed(elsewhere, &own))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    Ok(())
}

/// Rotating while a next key waits returns that key instead of piling up
/// keys.
pub async fn rotation_is_idempotent_while_a_key_waits(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let operator = app.token(&app.operator).await?;
    let first = app
        .tokens()
        .rotate_signing_keys(authed(pb::RotateSigningKeysRequest {}, &operator))
        .await?
        .into_inner();
    let second = app
        .tokens()
        .rotate_signing_keys(authed(pb::RotateSigningKeysRequest {}, &operator))
        .await?
        .into_inner();
    assert_eq!(first.next_kid, second.next_kid);
    assert_eq!(second.published_keys.len(), 2);
    Ok(())
}
