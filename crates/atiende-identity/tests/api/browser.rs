//! "Sign in with Atiende" in a real headless Chromium, driven through
//! chromedriver with the W3C WebDriver protocol over plain HTTP: the
//! citizen signs in with RUN, password and a TOTP code, consents, and lands
//! on the relying party's redirect URI with a code that exchanges for an ID
//! token. Debian: `apt-get install chromium chromium-driver`.

use atiende_identity::domain::totp::{TotpSecret, hotp};
use atiende_platform::auth::Environment;
use atiende_platform::storage::now_micros;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use atiende_platform::webdriver::Browser;
pub use atiende_platform::webdriver::available;

use crate::citizens::PASSWORD;
use crate::oidc::{Flow, citizen, pkce, query};
use crate::support::{Engine, TestApp};

/// The relying party's site: its callback page says it got the answer.
async fn relying_party_site() -> anyhow::Result<String> {
    let router = axum::Router::new().route(
        "/callback",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>Trámites</title><h1>Volvió a Trámites</h1>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

pub async fn citizen_signs_in_with_password_and_totp_in_a_real_browser(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let registered = citizen(&app).await?;
    let service = app.identity.service();
    let enrolment = service
        .begin_totp_enrolment(Environment::Live, &registered.citizen_id)
        .await?;
    let secret = TotpSecret::from_base32(enrolment.secret_base32.expose_secret()).unwrap();
    let code_at = |micros: i64| {
        let step = u64::try_from(micros / 30_000_000).unwrap();
        format!("{:06}", hotp(secret.expose(), step, 6))
    };
    let t0 = now_micros() - 60_000_000;
    service
        .confirm_totp_enrolment(Environment::Live, &registered.citizen_id, &code_at(t0), t0)
        .await?;

    let redirect = relying_party_site().await?;
    let flow = Flow::new(&app);
    let rp = flow.rp_with(&redirect).await?;
    let (verifier, challenge) = pkce();
    let mut authorize = url::Url::parse(&format!("{}/oauth2/authorize", flow.base))?;
    authorize.query_pairs_mut().extend_pairs([
        ("response_type", "code"),
        ("client_id", rp.client.client_id.as_str()),
        ("redirect_uri", redirect.as_str()),
        ("scope", "openid profile"),
        ("state", "browser-state"),
        ("nonce", "browser-nonce"),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ]);

    let browser = Browser::start().await?;
    browser
        .call("POST", "/url", json!({ "url": authorize.as_str() }))
        .await?;
    browser
        .wait_for_page(|p| p.contains("Ingresar con Atiende"))
        .await?;
    browser.type_into("#national_id", "12.345.678-5").await?;
    browser.type_into("#password", PASSWORD).await?;
    browser.click("button[type=submit]").await?;
    // The second factor is asked for; the form is filled again with it.
    browser
        .wait_for_page(|p| p.contains("id=\"second_factor\""))
        .await?;
    browser.type_into("#national_id", "12.345.678-5").await?;
    browser.type_into("#password", PASSWORD).await?;
    browser
        .type_into("#second_factor", &code_at(now_micros()))
        .await?;
    browser.click("button[type=submit]").await?;
    // Consent: what the agency asked for, then "Autorizar".
    let consent = browser.wait_for_page(|p| p.contains("Autorizar")).await?;
    assert!(consent.contains("Su nombre y su RUN"));
    browser.click("button[value=allow]").await?;
    browser
        .wait_for_page(|p| p.contains("Volvió a Trámites"))
        .await?;
    let landed = browser.call("GET", "/url", Value::Null).await?;
    let landed = landed.as_str().unwrap_or_default().to_owned();
    assert!(landed.starts_with(&redirect), "{landed}");
    let params = query(&landed);
    assert_eq!(params["state"], "browser-state");
    browser.call("DELETE", "", Value::Null).await?;

    let (status, tokens) = flow
        .exchange(&rp, &params["code"], &verifier, &redirect)
        .await?;
    assert_eq!(status, reqwest::StatusCode::OK, "{tokens}");
    let claims = flow
        .verify_id_token(&rp, tokens["id_token"].as_str().unwrap())
        .await?;
    assert_eq!(claims["acr"], "substantial");
    assert_eq!(claims["nonce"], "browser-nonce");
    Ok(())
}
