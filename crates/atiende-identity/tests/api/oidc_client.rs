//! An independent OpenID Connect client library (`openidconnect`, as an
//! agency's web app would use it) against the provider over real HTTP:
//! discovery, the authorization URL with PKCE and nonce, the code
//! exchange, ID token validation against the discovered JWKS, and
//! userinfo. Only the citizen's part (the pages) is played by hand.

use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreProviderMetadata, CoreUserInfoClaims,
};
use openidconnect::{
    AuthenticationContextClass, AuthorizationCode, ClientId, ClientSecret, CsrfToken, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, RedirectUrl, Scope, TokenResponse,
};
use reqwest::StatusCode;

use crate::citizens::PASSWORD;
use crate::oidc::{Flow, citizen, hidden, query};
use crate::support::{Engine, TestApp};

const REDIRECT: &str = "http://127.0.0.1:4000/callback";

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct HttpError(String);

/// The library's HTTP client, on the workspace's reqwest.
async fn send(
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, HttpError> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| HttpError(e.to_string()))?;
    let (parts, body) = request.into_parts();
    let response = client
        .request(parts.method, parts.uri.to_string())
        .headers(parts.headers)
        .body(body)
        .send()
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    let mut builder = http::Response::builder().status(response.status());
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| HttpError(e.to_string()))?;
    builder
        .body(bytes.to_vec())
        .map_err(|e| HttpError(e.to_string()))
}

pub async fn a_standard_oidc_client_library_signs_a_citizen_in(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    citizen(&app).await?;
    let flow = Flow::new(&app);
    let rp = flow.rp().await?;
    let issuer = IssuerUrl::new(app.identity.service().issuer().to_owned())?;

    let metadata = CoreProviderMetadata::discover_async(issuer, &send).await?;
    let client = CoreClient::from_provider_metadata(
        metadata,
        ClientId::new(rp.client.client_id.clone()),
        Some(ClientSecret::new(rp.client.client_secret.clone())),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.to_owned())?);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (authorize_url, csrf_state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("profile".to_owned()))
        .add_scope(Scope::new("email".to_owned()))
        .set_pkce_challenge(challenge)
        .url();

    // The citizen: the sign-in page, then consent.
    let page = flow.http.get(authorize_url.as_str()).send().await?;
    assert_eq!(page.status(), StatusCode::OK);
    let cookie = page.headers()["set-cookie"]
        .to_str()?
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let html = page.text().await?;
    let hidden_fields = [
        ("request_id", hidden(&html, "request_id")),
        ("csrf_token", hidden(&html, "csrf_token")),
    ];
    let post = |path: &str, fields: Vec<(&str, String)>| {
        let mut body: Vec<(&str, String)> = hidden_fields.to_vec();
        body.extend(fields);
        flow.http
            .post(format!("{}{path}", flow.base))
            .header("cookie", &cookie)
            .form(&body)
            .send()
    };
    let consent = post(
        "/oauth2/authorize",
        vec![
            ("national_id", "12.345.678-5".to_owned()),
            ("password", PASSWORD.to_owned()),
        ],
    )
    .await?;
    assert!(consent.text().await?.contains("name=\"decision\""));
    let back = post("/oauth2/consent", vec![("decision", "allow".to_owned())]).await?;
    assert_eq!(back.status(), StatusCode::SEE_OTHER);
    let params = query(back.headers()["location"].to_str()?);
    assert_eq!(&params["state"], csrf_state.secret());

    // The agency's app: exchange and validate with the library.
    let tokens = client
        .exchange_code(AuthorizationCode::new(params["code"].clone()))?
        .set_pkce_verifier(verifier)
        .request_async(&send)
        .await?;
    let id_token = tokens.id_token().expect("an ID token");
    let claims = id_token.claims(&client.id_token_verifier(), &nonce)?;
    assert_eq!(
        claims.auth_context_ref(),
        Some(&AuthenticationContextClass::new("low".to_owned()))
    );
    assert!(claims.auth_time().is_some());
    let subject = claims.subject().clone();

    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), Some(subject.clone()))?
        .request_async(&send)
        .await?;
    assert_eq!(info.subject(), &subject);
    assert_eq!(
        info.email().map(|e| e.as_str().to_owned()),
        Some("maria.perez@ejemplo.cl".to_owned())
    );
    let given = info
        .given_name()
        .and_then(|names| names.get(None))
        .map(|name| name.as_str().to_owned());
    assert_eq!(given.as_deref(), Some("María José"));

    // The library refuses an ID token checked with another client's
    // verifier (wrong audience) or a different nonce.
    let other = CoreClient::from_provider_metadata(
        CoreProviderMetadata::discover_async(
            IssuerUrl::new(app.identity.service().issuer().to_owned())?,
            &send,
        )
        .await?,
        ClientId::new("cli_someone_else".to_owned()),
        None,
    );
    assert!(id_token.claims(&other.id_token_verifier(), &nonce).is_err());
    assert!(
        id_token
            .claims(&client.id_token_verifier(), &Nonce::new("other".to_owned()))
            .is_err()
    );
    Ok(())
}
