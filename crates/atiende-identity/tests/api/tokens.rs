//! Issuing, verifying, introspecting and revoking access tokens over gRPC.

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::identity::v1 as pb;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use tonic::Code;

use crate::support::{Engine, TestApp, authed};

pub async fn issued_token_verifies_against_jwks_and_introspects_until_revoked(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(
            &[Scope::PaymentsRead, Scope::NotificationsSend],
            Environment::Sandbox,
        )
        .await?;
    let issued = app
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            client_id: agency.client_id.clone(),
            client_secret: agency.client_secret.clone(),
            scopes: vec![],
        })
        .await?
        .into_inner();
    assert_eq!(issued.token_type, "Bearer");
    assert_eq!(issued.expires_in, 600);
    assert_eq!(issued.scope, "notifications.send payments.read");
    let token = issued.access_token;

    // An independent check of the signature against the published JWKS.
    let jwks = app
        .tokens()
        .get_jwks(pb::GetJwksRequest {})
        .await?
        .into_inner();
    let keys: Vec<serde_json::Value> = jwks
        .keys
        .iter()
        .map(|k| serde_json::json!({"kty": k.kty, "crv": k.crv, "x": k.x, "y": k.y, "kid": k.kid, "alg": k.alg, "use": k.r#use}))
        .collect();
    let set: JwkSet = serde_json::from_value(serde_json::json!({ "keys": keys }))?;
    let header = jsonwebtoken::decode_header(&token)?;
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid is published");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["atiende"]);
    validation.set_issuer(&[app.identity.service().issuer()]);
    let claims = jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &DecodingKey::from_jwk(jwk)?,
        &validation,
    )?
    .claims;
    assert_eq!(claims["sub"], agency.client_id.as_str());
    assert_eq!(claims["agency"], agency.agency_id.as_str());
    assert_eq!(claims["env"], "sandbox");
    assert_eq!(claims["scope"], "notifications.send payments.read");
    for claim in ["iat", "exp", "nbf", "jti", "iss", "aud"] {
        assert!(claims.get(claim).is_some(), "claim {claim} present");
    }
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        600
    );

    // Introspection by the token's own client: active, with its claims.
    let introspected = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: token.clone(),
            },
            &token,
        ))
        .await?
        .into_inner();
    assert!(introspected.active);
    assert_eq!(introspected.client_id, agency.client_id);
    assert_eq!(introspected.agency_id, agency.agency_id);
    assert_eq!(introspected.scope, "notifications.send payments.read");
    assert_eq!(
        introspected.environment,
        i32::from(atiende_proto::common::v1::Environment::Sandbox)
    );
    assert_eq!(introspected.token_id, claims["jti"].as_str().unwrap());

    // Revoked: inactive, and refused as a credential.
    let other = app.token(&agency).await?;
    app.tokens()
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                token: token.clone(),
            },
            &other,
        ))
        .await?;
    let after = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: token.clone(),
            },
            &other,
        ))
        .await?
        .into_inner();
    assert_eq!(
        after,
        pb::IntrospectTokenResponse::default(),
        "inactive carries nothing else"
    );
    let refused = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: other.clone(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // Revoking again, or revoking garbage, succeeds as RFC 7009 asks.
    app.tokens()
        .revoke_token(authed(
            pb::RevokeTokenRequest {
                token: "not-a-token".into(),
            },
            &other,
        ))
        .await?;
    Ok(())
}

pub async fn token_for_a_subset_of_scopes_carries_only_those(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(
            &[Scope::PaymentsRead, Scope::PaymentsCreate],
            Environment::Live,
        )
        .await?;
    let issued = app
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            client_id: agency.client_id.clone(),
            client_secret: agency.client_secret.clone(),
            scopes: vec![pb::Scope::PaymentsRead.into()],
        })
        .await?
        .into_inner();
    assert_eq!(issued.scope, "payments.read");
    let introspected = app
        .tokens()
        .introspect_token(authed(
            pb::IntrospectTokenRequest {
                token: issued.access_token.clone(),
            },
            &issued.access_token,
        ))
        .await?
        .into_inner();
    assert_eq!(introspected.scope, "payments.read");
    assert_eq!(
        introspected.environment,
        i32::from(atiende_proto::common::v1::Environment::Live)
    );
    Ok(())
}

pub async fn scope_the_client_lacks_is_refused(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(&[Scope::PaymentsRead], Environment::Live)
        .await?;
    let status = app
        .tokens()
        .issue_token(pb::IssueTokenRequest {
            client_id: agency.client_id,
            client_secret: agency.client_secret,
            scopes: vec![pb::Scope::IdentityAdmin.into()],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("identity.admin"));
    Ok(())
}

pub async fn wrong_secret_unknown_client_and_disabled_client_get_one_answer(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(&[Scope::PaymentsRead], Environment::Live)
        .await?;
    let attempt = |client_id: String, client_secret: String| {
        let mut tokens = app.tokens();
        async move {
            tokens
                .issue_token(pb::IssueTokenRequest {
                    client_id,
                    client_secret,
                    scopes: vec![],
                })
                .await
                .unwrap_err()
        }
    };
    let wrong_secret = attempt(agency.client_id.clone(), "ats_wrong".into()).await;
    let unknown = attempt(
        atiende_platform::ids::new_id("cli"),
        agency.client_secret.clone(),
    )
    .await;
    for status in [&wrong_secret, &unknown] {
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "invalid client credentials");
    }
    Ok(())
}

pub async fn introspection_needs_a_token_and_reports_garbage_inactive(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let anonymous = app
        .tokens()
        .introspect_token(pb::IntrospectTokenRequest { token: "x".into() })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let token = app.token(&app.operator).await?;
    for garbage in ["x", "a.b.c", &"e".repeat(10_000)] {
        let response = app
            .tokens()
            .introspect_token(authed(
                pb::IntrospectTokenRequest {
                    token: garbage.into(),
                },
                &token,
            ))
            .await?
            .into_inner();
        assert!(!response.active);
    }
    Ok(())
}
