//! The hosted payment page in a real headless Chromium, driven through
//! chromedriver with the W3C WebDriver protocol (plain HTTP and JSON, so
//! no WebDriver crate is needed). Debian: `apt-get install chromium
//! chromium-driver`.

use atiende_proto::payments::v1 as pb;
use pb::PaymentState as S;
use serde_json::Value;

use crate::support::{ALL, DECLINED, Engine, TestApp, agency_token, payment_request};
use atiende_platform::webdriver::Browser;
pub use atiende_platform::webdriver::available;

/// Types a card (expiry 12/2099, CVC 123) into the payment page.
async fn fill_card(browser: &Browser, number: &str) -> anyhow::Result<()> {
    browser.type_into("#card_number", number).await?;
    browser.type_into("#expiry_month", "12").await?;
    browser.type_into("#expiry_year", "2099").await?;
    browser.type_into("#cvc", "123").await?;
    browser.type_into("#cardholder_name", "Ana Pérez").await
}

/// The agency's site the payer returns to.
async fn agency_site() -> anyhow::Result<String> {
    let router = axum::Router::new().route(
        "/vuelta",
        axum::routing::get(|| async {
            axum::response::Html("<!doctype html><title>Municipio</title><h1>Gracias</h1>")
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://127.0.0.1:{}/vuelta", listener.local_addr()?.port());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(url)
}

pub async fn payer_pays_and_is_declined_in_a_real_browser(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let return_url = agency_site().await?;
    let browser = Browser::start().await?;
    let request = |amount| pb::CreatePaymentRequest {
        return_url: return_url.clone(),
        ..payment_request(amount, "CLP")
    };

    // Success, after correcting a mistyped number.
    let payment = app.create(&token, request(15_000)).await;
    browser.go(&payment.next_url).await?;
    let page = browser
        .wait_for_page(|p| p.contains("Número de la tarjeta"))
        .await?;
    assert!(page.contains("CLP 15.000"));
    fill_card(&browser, "4242 4242 4242 4241").await?;
    browser.click("button[value=pay]").await?;
    // The error summary shows, and the error is tied to its field.
    let page = browser
        .wait_for_page(|p| p.contains("Hay un problema"))
        .await?;
    assert!(page.contains("card_number-error"));
    fill_card(&browser, "4242 4242 4242 4242").await?;
    browser.click("button[value=pay]").await?;
    browser.wait_for_page(|p| p.contains("Gracias")).await?;
    assert_eq!(browser.url().await?, return_url);
    assert_eq!(
        app.get(&token, &payment.payment_id).await.state(),
        S::Success
    );

    // Declined: the payer is sent back all the same.
    let payment = app.create(&token, request(2_000)).await;
    browser.go(&payment.next_url).await?;
    browser
        .wait_for_page(|p| p.contains("Número de la tarjeta"))
        .await?;
    fill_card(&browser, DECLINED).await?;
    browser.click("button[value=pay]").await?;
    browser.wait_for_page(|p| p.contains("Gracias")).await?;
    assert_eq!(browser.url().await?, return_url);
    let declined = app.get(&token, &payment.payment_id).await;
    assert_eq!(
        (declined.state(), declined.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Rejected)
    );
    browser.call("DELETE", "", Value::Null).await?;
    Ok(())
}
