//! "Sign in with Atiende" in a real headless Chromium, driven through
//! chromedriver with the W3C WebDriver protocol over plain HTTP. The
//! agency asks for `substantial`: the citizen registers on the pages,
//! confirms the email code, enrols TOTP from the page's key, keeps the
//! recovery codes, consents, and lands on the relying party with a code.
//! Then the citizen signs in again (`prompt=login`) with password and TOTP,
//! and consent is remembered. Debian: `apt-get install chromium
//! chromium-driver`.

use anyhow::Context as _;
use atiende_identity::domain::totp::{TotpSecret, hotp};
use atiende_platform::storage::now_micros;
use serde_json::{Value, json};

use atiende_platform::webdriver::Browser;
pub use atiende_platform::webdriver::available;

use crate::oidc::{Flow, pkce, query};
use crate::support::{Engine, TestApp};

const PASSPHRASE: &str = "un largo paseo junto al mar";

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

fn totp(secret: &TotpSecret, steps_ahead: i64) -> String {
    let step = u64::try_from(now_micros() / 30_000_000 + steps_ahead).unwrap();
    format!("{:06}", hotp(secret.expose(), step, 6))
}

pub async fn a_citizen_registers_enrols_totp_consents_and_signs_in_again_in_a_real_browser(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let redirect = relying_party_site().await?;
    let flow = Flow::new(&app);
    let rp = flow.rp_with(&redirect).await?;
    let (verifier, challenge) = pkce();
    let authorize = |extra: &[(&str, &str)]| {
        let mut url = url::Url::parse(&format!("{}/oauth2/authorize", flow.base)).unwrap();
        url.query_pairs_mut().extend_pairs([
            ("response_type", "code"),
            ("client_id", rp.client.client_id.as_str()),
            ("redirect_uri", redirect.as_str()),
            ("scope", "openid profile email"),
            ("state", "browser-state"),
            ("nonce", "browser-nonce"),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
            ("acr_values", "substantial"),
        ]);
        url.query_pairs_mut().extend_pairs(extra);
        url.to_string()
    };

    let browser = Browser::start().await?;
    browser
        .call("POST", "/url", json!({ "url": authorize(&[]) }))
        .await?;
    browser
        .wait_for_page(|p| p.contains("Ingresar con Atiende"))
        .await
        .context("waiting for page 1")?;
    // Registration, from the sign-in page's link.
    browser.click("a[href^='/oauth2/register']").await?;
    browser
        .wait_for_page(|p| p.contains("id=\"given_names\""))
        .await
        .context("waiting for page 2")?;
    browser.type_into("#national_id", "12.345.678-5").await?;
    browser.type_into("#given_names", "María José").await?;
    browser.type_into("#family_names", "Pérez Soto").await?;
    browser
        .type_into("#email", "maria.perez@ejemplo.cl")
        .await?;
    browser.type_into("#password", PASSPHRASE).await?;
    browser.click("button[type=submit]").await?;
    browser
        .wait_for_page(|p| p.contains("id=\"email_code\""))
        .await
        .context("waiting for page 3")?;
    let code = app.mailbox.code_for("maria.perez@ejemplo.cl").unwrap();
    browser.type_into("#email_code", &code).await?;
    browser.click("button[type=submit]").await?;
    // The agency asked for substantial: enrol TOTP from the page's key.
    let page = browser
        .wait_for_page(|p| p.contains("id=\"totp_secret\""))
        .await
        .context("waiting for page 4")?;
    assert!(page.contains("<svg"), "a QR code");
    let start = page.find("id=\"totp_secret\">").unwrap() + 17;
    let key = page[start..].split('<').next().unwrap().replace(' ', "");
    let secret = TotpSecret::from_base32(&key).unwrap();
    browser.type_into("#totp_code", &totp(&secret, 0)).await?;
    browser.click("button[type=submit]").await?;
    let page = browser
        .wait_for_page(|p| p.contains("id=\"recovery_codes\""))
        .await
        .context("waiting for page 5")?;
    assert_eq!(page.matches("<li><code>").count(), 10);
    browser.click("button[type=submit]").await?;
    // Consent: what the agency asked for, then "Autorizar".
    let consent = browser
        .wait_for_page(|p| p.contains("value=\"allow\""))
        .await
        .context("waiting for page 6")?;
    assert!(consent.contains("Su nombre y su RUN"));
    browser.click("button[value=allow]").await?;
    browser
        .wait_for_page(|p| p.contains("Volvió a Trámites"))
        .await
        .context("waiting for page 7")?;
    let landed = browser.call("GET", "/url", Value::Null).await?;
    let landed = landed.as_str().unwrap_or_default().to_owned();
    assert!(landed.starts_with(&redirect), "{landed}");
    let params = query(&landed);
    assert_eq!(params["state"], "browser-state");
    let (status, tokens) = flow
        .exchange(&rp, &params["code"], &verifier, &redirect)
        .await?;
    assert_eq!(status, reqwest::StatusCode::OK, "{tokens}");
    let claims = flow
        .verify_id_token(&rp, tokens["id_token"].as_str().unwrap())
        .await?;
    assert_eq!(claims["acr"], "substantial");
    assert_eq!(claims["nonce"], "browser-nonce");

    // Signing in again, with password and TOTP: consent is remembered.
    browser
        .call(
            "POST",
            "/url",
            json!({ "url": authorize(&[("prompt", "login")]) }),
        )
        .await?;
    browser
        .wait_for_page(|p| p.contains("Ingresar con Atiende"))
        .await
        .context("waiting for page 8")?;
    browser.type_into("#national_id", "12345678-5").await?;
    browser.type_into("#password", PASSPHRASE).await?;
    browser.click("button[type=submit]").await?;
    browser
        .wait_for_page(|p| p.contains("id=\"second_factor\""))
        .await
        .context("waiting for page 9")?;
    browser.type_into("#password", PASSPHRASE).await?;
    // The enrolment used this time step's code: the next one.
    browser
        .type_into("#second_factor", &totp(&secret, 1))
        .await?;
    browser.click("button[type=submit]").await?;
    browser
        .wait_for_page(|p| p.contains("Volvió a Trámites"))
        .await
        .context("waiting for page 10")?;
    let landed = browser.call("GET", "/url", Value::Null).await?;
    let params = query(landed.as_str().unwrap_or_default());
    let (status, tokens) = flow
        .exchange(&rp, &params["code"], &verifier, &redirect)
        .await?;
    assert_eq!(status, reqwest::StatusCode::OK, "{tokens}");
    let claims = flow
        .verify_id_token(&rp, tokens["id_token"].as_str().unwrap())
        .await?;
    assert_eq!(claims["amr"], json!(["pwd", "otp"]));
    browser.call("DELETE", "", Value::Null).await?;
    Ok(())
}
