//! Tokens an attacker might present: every one is UNAUTHENTICATED.

use atiende_platform::auth::{AccessTokenClaims, Environment, Scope, unix_now};
use atiende_proto::identity::v1 as pb;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::Code;

use crate::support::{Engine, TestApp, authed};

fn claims(app: &TestApp, client_id: &str, agency_id: &str) -> AccessTokenClaims {
    let now = unix_now();
    AccessTokenClaims {
        iss: app.identity.service().issuer().to_owned(),
        aud: app.identity.service().audience().to_owned(),
        sub: client_id.to_owned(),
        agency: agency_id.to_owned(),
        scope: "identity.admin".to_owned(),
        env: "live".to_owned(),
        iat: now,
        nbf: now,
        exp: now + 300,
        jti: "attack".to_owned(),
    }
}

pub async fn forged_and_misaddressed_tokens_are_unauthenticated(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let op = &app.operator;
    let service = app.identity.service();
    let valid = app.token(op).await?;
    let header = jsonwebtoken::decode_header(&valid)?;
    let kid = header.kid.clone().unwrap();
    let base = claims(&app, &op.client_id, &op.agency_id);
    // The control: correctly signed claims are accepted.
    let control = service.sign_claims(&base)?;
    app.agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &control))
        .await?;

    let mut attacks: Vec<(&str, String)> = vec![(
        "wrong issuer",
        service.sign_claims(&AccessTokenClaims {
            iss: "https://evil.example".into(),
            ..base.clone()
        })?,
    )];
    attacks.push((
        "wrong audience",
        service.sign_claims(&AccessTokenClaims {
            aud: "other-api".into(),
            ..base.clone()
        })?,
    ));
    attacks.push((
        "expired",
        service.sign_claims(&AccessTokenClaims {
            exp: unix_now() - 3600,
            iat: unix_now() - 4000,
            nbf: unix_now() - 4000,
            ..base.clone()
        })?,
    ));
    attacks.push((
        "not yet valid",
        service.sign_claims(&AccessTokenClaims {
            nbf: unix_now() + 3600,
            ..base.clone()
        })?,
    ));

    let segments: Vec<&str> = valid.split('.').collect();
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&base)?);
    let none_header =
        URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#));
    attacks.push(("alg none", format!("{none_header}.{payload}.")));
    attacks.push(("alg none without dot", format!("{none_header}.{payload}")));
    // HMAC signed with the published public key as the secret (algorithm confusion).
    let jwks = app
        .tokens()
        .get_jwks(pb::GetJwksRequest {})
        .await?
        .into_inner();
    let public_x = jwks.keys[0].x.clone();
    let mut hs_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs_header.kid = Some(kid.clone());
    attacks.push((
        "HS256",
        jsonwebtoken::encode(
            &hs_header,
            &base,
            &jsonwebtoken::EncodingKey::from_secret(public_x.as_bytes()),
        )?,
    ));
    // Claims swapped under a genuine signature.
    attacks.push((
        "tampered payload",
        format!("{}.{payload}.{}", segments[0], segments[2]),
    ));
    // A key id nobody published.
    let unknown_kid =
        URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"at+jwt","kid":"unknown-key"}"#);
    attacks.push((
        "unknown kid",
        format!("{unknown_kid}.{}.{}", segments[1], segments[2]),
    ));
    attacks.push((
        "truncated signature",
        format!("{}.{}.{}", segments[0], segments[1], &segments[2][..20]),
    ));
    attacks.push(("garbage", "definitely-not-a-jwt".into()));
    attacks.push(("empty", String::new()));

    for (name, token) in &attacks {
        let status = app
            .agencies()
            .list_clients(authed(pb::ListClientsRequest::default(), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{name}: {status:?}");
    }

    // No header, or another scheme.
    let status = app
        .agencies()
        .list_clients(pb::ListClientsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut request = tonic::Request::new(pb::ListClientsRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Basic {valid}").parse()?);
    let status = app.agencies().list_clients(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    Ok(())
}

pub async fn valid_token_without_the_scope_is_permission_denied(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let reader = app
        .agency_with_client(&[Scope::PaymentsRead], Environment::Live)
        .await?;
    let token = app.token(&reader).await?;
    let status = app
        .agencies()
        .list_clients(authed(pb::ListClientsRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("identity.admin"));
    Ok(())
}
