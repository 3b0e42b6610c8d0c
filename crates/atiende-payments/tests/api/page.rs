//! The hosted payment page over real HTTP, as a browser without
//! JavaScript uses it: GET the form, POST it back with the CSRF cookie.

use atiende_platform::auth::Environment;
use atiende_platform::testing;
use atiende_proto::payments::v1 as pb;
use pb::PaymentState as S;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};

use crate::support::{ALL, DECLINED, Engine, TestApp, agency_token, payment_request};

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The page, its CSRF cookie and the token in its form.
async fn open(url: &str) -> (StatusCode, String, String, String) {
    let response = browser().get(url).send().await.unwrap();
    let status = response.status();
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.text().await.unwrap();
    let token = body
        .split("name=\"csrf_token\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned();
    (status, body, cookie, token)
}

fn card_form<'a>(token: &'a str, number: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("csrf_token", token),
        ("action", "pay"),
        ("card_number", number),
        ("expiry_month", "12"),
        ("expiry_year", "2099"),
        ("cvc", "123"),
        ("cardholder_name", "Ana Pérez"),
    ]
}

async fn post(url: &str, cookie: &str, form: &[(&str, &str)]) -> reqwest::Response {
    browser()
        .post(url)
        .header(COOKIE, cookie)
        .form(form)
        .send()
        .await
        .unwrap()
}

pub async fn hosted_page_takes_a_card_and_sends_the_payer_back(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let mut request = payment_request(15_000, "CLP");
    request.description = "Permiso <b>2026</b>".into();
    let payment = app.create(&token, request).await;
    let url = payment.next_url.clone();

    let (status, body, cookie, csrf) = open(&url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("lang=\"es\""));
    assert!(
        body.contains("Permiso &lt;b&gt;2026&lt;/b&gt;"),
        "agency text is escaped"
    );
    assert!(body.contains("CLP 15.000"));
    assert!(body.contains("<label for=\"card_number\">Número de la tarjeta</label>"));
    assert!(cookie.starts_with("atiende_csrf=") && !csrf.is_empty());
    let started = app.get(&token, &payment.payment_id).await;
    assert_eq!(started.state(), S::Started);
    assert_eq!(started.next_url, "", "the page URL is single-use");

    // A wrong number comes back with the error tied to its field, and the
    // number is not echoed.
    let wrong = post(&url, &cookie, &card_form(&csrf, "4242 4242 4242 4241")).await;
    assert_eq!(wrong.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = wrong.text().await?;
    assert!(body.contains("aria-invalid=\"true\" aria-describedby=\"card_number-error\""));
    assert!(body.contains("href=\"#card_number\""));
    assert!(!body.contains("4241"));
    assert!(body.contains("value=\"Ana Pérez\""), "the name is kept");
    // Without the CSRF cookie: refused.
    let forged = post(&url, "", &card_form(&csrf, "4242424242424242")).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        app.get(&token, &payment.payment_id).await.state(),
        S::Started
    );

    let paid = post(&url, &cookie, &card_form(&csrf, "4242 4242 4242 4242")).await;
    assert_eq!(paid.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        paid.headers()[LOCATION].to_str()?,
        "https://municipio.example.cl/pagos/vuelta"
    );
    let done = app.get(&token, &payment.payment_id).await;
    assert_eq!(done.state(), S::Success);
    assert_eq!(done.card_details.unwrap().last_four_digits, "4242");

    // The page is gone; a wrong secret finds nothing.
    assert_eq!(open(&url).await.0, StatusCode::GONE);
    let again = post(&url, &cookie, &card_form(&csrf, "4242424242424242")).await;
    assert_eq!(again.status(), StatusCode::GONE);
    let guessed = format!("{}x", url.trim_end_matches(|c: char| c.is_ascii_hexdigit()));
    assert_eq!(open(&guessed).await.0, StatusCode::NOT_FOUND);
    Ok(())
}

pub async fn hosted_page_declines_cancels_and_speaks_english(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (agency, token) = agency_token(ALL);
    let english = |amount| {
        let mut request = payment_request(amount, "USD");
        request.language = pb::Language::En.into();
        request
    };

    let declined = app.create(&token, english(123_456)).await;
    let (status, body, cookie, csrf) = open(&declined.next_url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("lang=\"en\"") && body.contains("Card number"));
    assert!(body.contains("USD 1,234.56"));
    let response = post(&declined.next_url, &cookie, &card_form(&csrf, DECLINED)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let failed = app.get(&token, &declined.payment_id).await;
    assert_eq!(
        (failed.state(), failed.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::Rejected)
    );

    let cancelled = app.create(&token, english(100)).await;
    let (_, _, cookie, csrf) = open(&cancelled.next_url).await;
    let response = post(
        &cancelled.next_url,
        &cookie,
        &[("csrf_token", csrf.as_str()), ("action", "cancel")],
    )
    .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let by_payer = app.get(&token, &cancelled.payment_id).await;
    assert_eq!(
        (by_payer.state(), by_payer.failure_reason()),
        (S::Failed, pb::PaymentFailureReason::CancelledByUser)
    );

    // A live payment: no live gateway yet, so nothing is taken and the
    // payment stays open.
    let live = testing::token(&agency, ALL, Environment::Live);
    let payment = app.create(&live, payment_request(1_000, "CLP")).await;
    let (status, _, cookie, csrf) = open(&payment.next_url).await;
    assert_eq!(status, StatusCode::OK);
    let response = post(
        &payment.next_url,
        &cookie,
        &card_form(&csrf, "4242424242424242"),
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        app.get(&live, &payment.payment_id).await.state(),
        S::Started
    );
    Ok(())
}
