//! `private_key_jwt` (RFC 7523): a client registers public keys with
//! `SetClientJwks` and authenticates at the token, revocation and
//! introspection endpoints with signed assertions instead of its secret.

use atiende_platform::auth::{Environment, Scope};
use atiende_proto::identity::v1 as pb;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::json;

use crate::oidc::{Flow, Rp, citizen, pkce};
use crate::support::{Engine, TestApp, authed, violated_fields};

const REDIRECT: &str = "http://127.0.0.1:4000/callback";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A client's key pair: its signing key and its public JWK.
struct ClientKey {
    encoding: jsonwebtoken::EncodingKey,
    jwk: serde_json::Value,
}

fn client_key(kid: &str) -> ClientKey {
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
    let point = pair.public_key().as_ref();
    ClientKey {
        encoding: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    }
}

fn assertion(key: &ClientKey, kid: &str, client_id: &str, aud: &str, jti: &str) -> String {
    let now = atiende_platform::auth::unix_now();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        &json!({
            "iss": client_id, "sub": client_id, "aud": aud,
            "jti": jti, "iat": now, "exp": now + 60,
        }),
        &key.encoding,
    )
    .unwrap()
}

async fn post(
    flow: &Flow<'_>,
    path: &str,
    form: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, serde_json::Value)> {
    let response = flow
        .http
        .post(format!("{}{path}", flow.base))
        .form(form)
        .send()
        .await?;
    let status = response.status();
    let body = response.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

pub async fn clients_authenticate_with_private_key_jwt(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let client = app
        .agency_with_client(
            &[Scope::IdentityAdmin, Scope::IdentityCitizensRead],
            Environment::Live,
        )
        .await?;
    app.identity
        .service()
        .register_redirect_uri(&client.client_id, REDIRECT)
        .await?;
    let token = app.token(&client).await?;
    let key = client_key("k1");
    let set = |jwks: String| {
        let mut agencies = app.agencies();
        let request = authed(
            pb::SetClientJwksRequest {
                client_id: client.client_id.clone(),
                jwks,
            },
            &token,
        );
        async move { agencies.set_client_jwks(request).await }
    };
    // Private keys and symmetric keys are refused.
    let mut private = key.jwk.clone();
    private["d"] = json!("c2VjcmV0");
    for bad in [
        json!({ "keys": [private] }).to_string(),
        json!({ "keys": [{ "kty": "oct", "k": "c2VjcmV0" }] }).to_string(),
        "not json".to_owned(),
    ] {
        let status = set(bad).await.unwrap_err();
        assert_eq!(violated_fields(&status), ["jwks"]);
    }
    let done = set(json!({ "keys": [key.jwk] }).to_string())
        .await?
        .into_inner();
    assert_eq!(done.key_count, 1);

    let issuer = app.identity.service().issuer().to_owned();
    let token_endpoint = format!("{issuer}/oauth2/token");
    let id = client.client_id.as_str();
    // The client credentials grant with an assertion.
    let first = assertion(&key, "k1", id, &token_endpoint, "jti-1");
    let grant = [
        ("grant_type", "client_credentials"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", first.as_str()),
    ];
    let (status, body) = post(&flow, "/oauth2/token", &grant).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["access_token"].is_string());
    // The same assertion again: refused (each works once).
    let (status, body) = post(&flow, "/oauth2/token", &grant).await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Another key, another audience, another subject, alg none: refused.
    let stranger = client_key("k1");
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(
            json!({"iss": id, "sub": id, "aud": token_endpoint, "jti": "n", "exp": 9_999_999_999_i64})
                .to_string()
        )
    );
    for bad in [
        assertion(&stranger, "k1", id, &token_endpoint, "jti-2"),
        assertion(&key, "k1", id, "https://elsewhere.example/token", "jti-3"),
        assertion(
            &key,
            "k1",
            "cli_00000000000000000000000000000000",
            &token_endpoint,
            "jti-4",
        ),
        none,
    ] {
        let (status, body) = post(
            &flow,
            "/oauth2/token",
            &[
                ("grant_type", "client_credentials"),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", bad.as_str()),
            ],
        )
        .await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    // An assertion together with a secret: one method only.
    let both = assertion(&key, "k1", id, &token_endpoint, "jti-5");
    let (status, body) = post(
        &flow,
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", id),
            ("client_secret", client.client_secret.as_str()),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", both.as_str()),
        ],
    )
    .await?;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );

    // The authorization code grant, and introspection, with assertions
    // (the issuer is an accepted audience too).
    let rp = Rp {
        client: client.clone(),
    };
    let (verifier, challenge) = pkce();
    let code = flow.code(&rp, &challenge, "openid").await?;
    let exchange = assertion(&key, "k1", id, &issuer, "jti-6");
    let (status, tokens) = post(
        &flow,
        "/oauth2/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code.as_str()),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier.as_str()),
            ("client_id", id),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", exchange.as_str()),
        ],
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let claims = flow
        .verify_id_token(&rp, tokens["id_token"].as_str().unwrap())
        .await?;
    assert_eq!(claims["aud"], id);
    let introspection = assertion(&key, "k1", id, &issuer, "jti-7");
    let (status, body) = post(
        &flow,
        "/oauth2/introspect",
        &[
            ("token", tokens["access_token"].as_str().unwrap()),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", introspection.as_str()),
        ],
    )
    .await?;
    assert_eq!(
        (status, body["active"].clone()),
        (StatusCode::OK, json!(true))
    );

    // Removing the keys turns private_key_jwt off.
    assert_eq!(set(String::new()).await?.into_inner().key_count, 0);
    let later = assertion(&key, "k1", id, &token_endpoint, "jti-8");
    let (status, _) = post(
        &flow,
        "/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", later.as_str()),
        ],
    )
    .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}
