//! What the service writes to its logs and error messages.

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::identity::v1 as pb;

use crate::support::{Engine, TestApp, authed, captured_logs};

pub async fn secrets_and_tokens_never_appear_in_logs_or_errors(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(&[Scope::IdentityAdmin], Environment::Live)
        .await?;
    let mut secrets = vec![
        agency.client_secret.clone(),
        app.operator.client_secret.clone(),
    ];
    let token = app.token(&agency).await?;
    secrets.push(token.clone());

    let created = app
        .agencies()
        .create_client(authed(
            pb::CreateClientRequest {
                display_name: "Logged".into(),
                scopes: vec![pb::Scope::PaymentsRead.into()],
                environment: atiende_proto::common::v1::Environment::Live.into(),
                agency_id: String::new(),
            },
            &token,
        ))
        .await?
        .into_inner();
    secrets.push(created.client_secret.clone());
    let client_id = created.client.as_ref().unwrap().client_id.clone();
    let rotated = app
        .agencies()
        .rotate_client_secret(authed(
            pb::RotateClientSecretRequest {
                client_id: client_id.clone(),
            },
            &token,
        ))
        .await?
        .into_inner();
    secrets.push(rotated.client_secret.clone());
    // A request's Debug form, as a handler might log it, hides the secret.
    assert!(!format!("{rotated:?}").contains(&rotated.client_secret));

    // Failures: wrong secret, a garbage token, a revoked token, the HTTP endpoint.
    let wrong = format!("{}x", agency.client_secret);
    secrets.push(wrong.clone());
    let status = app
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            client_id: agency.client_id.clone(),
            client_secret: wrong.clone(),
            scopes: vec![],
        })
        .await
        .unwrap_err();
    let mut messages = vec![status.message().to_owned()];
    let garbage = "eyJhbGciOiJIUzI1NiJ9.eyJzZWNyZXQiOiJ4In0.c2VjcmV0LXNpZ25hdHVyZQ".to_owned();
    secrets.push(garbage.clone());
    let status = app
        .agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &garbage))
        .await
        .unwrap_err();
    messages.push(status.message().to_owned());
    app.tokens()
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                token: token.clone(),
            },
            &token,
        ))
        .await?;
    let status = app
        .agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &token))
        .await
        .unwrap_err();
    messages.push(status.message().to_owned());
    let http_body = reqwest::Client::new()
        .post(format!("http://{}/oauth2/token", app.http_addr))
        .basic_auth(&agency.client_id, Some(&wrong))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?
        .text()
        .await?;
    messages.push(http_body);

    let logs = captured_logs();
    assert!(
        logs.contains(&client_id),
        "the capture works: ids are logged"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret or token was logged"
        );
        // Also no recognisable part of it (the signature of a token, say).
        let tail = &secret[secret.len().saturating_sub(24)..];
        assert!(!logs.contains(tail), "part of a secret or token was logged");
        for message in &messages {
            assert!(
                !message.contains(tail),
                "an error message carries a secret: {message}"
            );
        }
    }
    Ok(())
}
