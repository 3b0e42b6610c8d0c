//! What the service writes to its logs and error messages.

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::identity::v1 as pb;

use atiende_identity::domain::national_id::{NationalId, NationalIdScheme};
use atiende_identity::domain::totp::{TotpSecret, hotp};
use atiende_identity::service::citizens::PasswordAttempt;
use atiende_platform::storage::now_micros;
use secrecy::ExposeSecret;

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

pub async fn passwords_codes_and_personal_data_never_appear_in_logs_or_errors(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(
            &[Scope::IdentityCitizensRead, Scope::IdentityCitizensWrite],
            Environment::Live,
        )
        .await?;
    let token = app.token(&agency).await?;
    let password = "una contraseña bastante larga 8472";
    let request = pb::RegisterCitizenRequest {
        national_id: Some(pb::NationalId {
            scheme: pb::NationalIdScheme::ClRun.into(),
            value: "11.111.111-1".into(),
        }),
        given_names: "Anacleta Logueada".into(),
        family_names: "Sinrastro".into(),
        email: "anacleta.sinrastro@ejemplo.cl".into(),
        phone_number: "+56 9 8765 4321".into(),
        password: password.into(),
    };
    assert!(!format!("{request:?}").contains(password));
    assert!(!format!("{request:?}").contains("Anacleta"));
    let citizen = app
        .citizens()
        .register_citizen(authed(request.clone(), &token))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    let mut secrets: Vec<String> = vec![
        password.into(),
        "11111111-1".into(),
        "11.111.111-1".into(),
        "Anacleta".into(),
        "Sinrastro".into(),
        "anacleta.sinrastro".into(),
        "987654321".into(),
    ];
    let mut messages = Vec::new();
    // A duplicate and a weak password: errors that must not echo them.
    let weak = "Sunshine";
    for req in [
        request.clone(),
        pb::RegisterCitizenRequest {
            password: weak.into(),
            ..request.clone()
        },
    ] {
        let status = app
            .citizens()
            .register_citizen(authed(req, &token))
            .await
            .unwrap_err();
        messages.push(format!("{} {:?}", status.message(), status.details()));
    }
    secrets.push(weak.into());

    let service = app.identity.service();
    let id = &citizen.citizen_id;
    let enrolment = service.begin_totp_enrolment(Environment::Live, id).await?;
    let base32 = enrolment.secret_base32.expose_secret().to_owned();
    let secret = TotpSecret::from_base32(&base32).unwrap();
    let now = now_micros();
    let code = |at: i64| {
        format!(
            "{:06}",
            hotp(secret.expose(), u64::try_from(at / 30_000_000).unwrap(), 6)
        )
    };
    let codes = service
        .confirm_totp_enrolment(Environment::Live, id, &code(now), now)
        .await?;
    secrets.push(base32);
    secrets.extend(codes.iter().map(|c| c.expose().to_owned()));
    let national_id = NationalId::parse(NationalIdScheme::ClRun, "11111111-1").unwrap();
    let wrong = "wrong-password-9931";
    secrets.push(wrong.into());
    for (password, second_factor) in [
        (wrong, None),
        (password, Some(code(now + 30_000_000))),
        (password, Some(codes[0].expose().to_owned())),
        (password, Some(codes[0].expose().to_owned())),
    ] {
        service
            .check_password(PasswordAttempt {
                environment: Environment::Live,
                national_id: &national_id,
                password,
                second_factor: second_factor.as_deref(),
                source: "203.0.113.77",
            })
            .await?;
    }

    let logs = captured_logs();
    assert!(
        logs.contains(id.as_str()),
        "the capture works: ids are logged"
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a password, code or personal datum was logged"
        );
        for message in &messages {
            assert!(
                !message.contains(secret.as_str()),
                "an error message carries it: {message}"
            );
        }
    }
    // Six-digit TOTP codes are too short to search for in a log without
    // false hits; they never reach a log line or an audit entry as such:
    // the sign-in audit entries carry only a reason or the methods.
    assert!(
        !logs.contains("203.0.113.77"),
        "the source address was logged"
    );
    Ok(())
}
