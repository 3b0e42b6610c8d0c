//! The OAuth 2.0 token endpoint, discovery and JWKS over plain HTTP.

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::identity::v1 as pb;
use reqwest::StatusCode;

use crate::support::{Engine, TestApp, authed};

pub async fn token_endpoint_accepts_basic_and_post_client_auth(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(
            &[Scope::PaymentsRead, Scope::PaymentsCreate],
            Environment::Sandbox,
        )
        .await?;
    let url = format!("http://{}/oauth2/token", app.http_addr);
    let http = reqwest::Client::new();

    let basic = http
        .post(&url)
        .basic_auth(&agency.client_id, Some(&agency.client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await?;
    assert_eq!(basic.status(), StatusCode::OK);
    assert_eq!(basic.headers()["cache-control"], "no-store");
    let body: serde_json::Value = basic.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert_eq!(body["scope"], "payments.create payments.read");
    let token = body["access_token"].as_str().unwrap().to_owned();

    let posted: serde_json::Value = http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", agency.client_id.as_str()),
            ("client_secret", agency.client_secret.as_str()),
            ("scope", "payments.read"),
        ])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(posted["scope"], "payments.read");

    // The HTTP token is the same kind of token: the gRPC API accepts it.
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
    Ok(())
}

/// What an erroneous token request sends and expects: a label, Basic
/// credentials, the form, the status, the `error` code.
type Case<'a> = (
    &'a str,
    Option<(&'a str, &'a str)>,
    Vec<(&'a str, &'a str)>,
    StatusCode,
    &'a str,
);

pub async fn token_endpoint_errors_follow_rfc_6749(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let agency = app
        .agency_with_client(&[Scope::PaymentsRead], Environment::Live)
        .await?;
    let url = format!("http://{}/oauth2/token", app.http_addr);
    let (id, secret) = (agency.client_id.as_str(), agency.client_secret.as_str());
    let grant = ("grant_type", "client_credentials");
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            Some((id, "ats_wrong")),
            vec![grant],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "no credentials",
            None,
            vec![grant],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "password grant",
            Some((id, secret)),
            vec![("grant_type", "password")],
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            "no grant",
            Some((id, secret)),
            vec![],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "scope not granted",
            Some((id, secret)),
            vec![grant, ("scope", "identity.admin")],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "unknown scope",
            Some((id, secret)),
            vec![grant, ("scope", "bogus")],
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        ),
        (
            "malformed client id",
            Some(("not-a-client", secret)),
            vec![grant],
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            "repeated parameter",
            Some((id, secret)),
            vec![grant, grant],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "two authentication methods",
            Some((id, secret)),
            vec![grant, ("client_id", id), ("client_secret", secret)],
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    let http = reqwest::Client::new();
    for (what, basic, form, status, error) in cases {
        let mut request = http.post(&url).form(&form);
        if let Some((id, secret)) = basic {
            request = request.basic_auth(id, Some(secret));
        }
        let response = request.send().await?;
        assert_eq!(response.status(), status, "{what}");
        assert_eq!(response.headers()["cache-control"], "no-store", "{what}");
        let challenged = response.headers().contains_key("www-authenticate");
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["error"], error, "{what}");
        // RFC 6749 5.2: a failed Basic authentication is challenged.
        assert_eq!(challenged, status == StatusCode::UNAUTHORIZED, "{what}");
    }

    let response = http
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = response.json().await?;
    assert_eq!(body["error"], "invalid_request");

    // A body over the HTTP limit (64 KiB) is refused before it is parsed.
    let huge = "a".repeat(100 * 1024);
    let response = http
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", huge.as_str()),
        ])
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    Ok(())
}

pub async fn discovery_and_jwks_are_served(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let base = format!("http://{}", app.http_addr);
    let discovery: serde_json::Value =
        reqwest::get(format!("{base}/.well-known/openid-configuration"))
            .await?
            .json()
            .await?;
    assert_eq!(discovery["issuer"], base.as_str());
    assert_eq!(
        discovery["token_endpoint"],
        format!("{base}/oauth2/token").as_str()
    );
    assert_eq!(
        discovery["jwks_uri"],
        format!("{base}/.well-known/jwks.json").as_str()
    );
    let response = reqwest::get(format!("{base}/.well-known/jwks.json")).await?;
    assert!(
        response.headers()["cache-control"]
            .to_str()?
            .contains("max-age=300")
    );
    let jwks: serde_json::Value = response.json().await?;
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["alg"].as_str()
        ),
        (Some("EC"), Some("P-256"), Some("ES256"))
    );
    assert!(key.get("d").is_none(), "no private part is ever published");
    Ok(())
}
