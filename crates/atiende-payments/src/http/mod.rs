//! The service's HTTP: the hosted payment page (browser-facing, the only
//! place a payer types a card) and the ledger's CSV export ([`export`]).
//!
//! `GET /pay/{payment_id}/{secret}` shows the agency's description and the
//! amount and a card form, in the payment's language; the first visit
//! moves the payment to STARTED. `POST` to the same URL submits the card
//! (or cancels), and the payer is sent back to the agency's `return_url`
//! with a 303, whatever the outcome. The URL's secret is the payer's only
//! credential; the form also carries a CSRF token matched against a
//! `SameSite=Strict` cookie. Once the card step is done the page is gone
//! (410): single-use, and it expires with the payment.
//!
//! The card number and CVC live only in the request being handled: never
//! stored, logged or echoed back into the page.

mod export;

use std::sync::Arc;

use atiende_platform::auth::TokenVerifier;
use atiende_platform::html::escape;
use atiende_platform::storage::now_micros;
use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::domain::card::{CardNumber, CardSubmission, Cvc, Expiry, parse_cardholder_name};
use crate::domain::money::Money;
use crate::domain::payment::{Language, Payment};
use crate::domain::state::PaymentState;
use crate::gateway::SandboxGateway;
use crate::service::{PaymentsError, PaymentsService};

const CSRF_COOKIE: &str = "atiende_csrf";

/// The page's routes, and the CSV export (which `verifier` authenticates).
pub fn router(service: Arc<PaymentsService>, verifier: Arc<TokenVerifier>) -> Router {
    let export = Router::new()
        .route(
            "/payments/v1/ledger/transactions.csv",
            axum::routing::get(export::transactions_csv),
        )
        .with_state(export::ExportState {
            service: service.clone(),
            verifier,
        });
    Router::new()
        .route(
            "/pay/{payment_id}/{secret}",
            axum::routing::get(show).post(submit),
        )
        .with_state(service)
        .merge(export)
}

/// The form as posted. Every field is optional so that a malformed post
/// gets the form back with errors instead of a bare 422.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct PageForm {
    action: String,
    csrf_token: String,
    card_number: String,
    expiry_month: String,
    expiry_year: String,
    cvc: String,
    cardholder_name: String,
}

// The card number and CVC never print.
impl std::fmt::Debug for PageForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageForm(REDACTED)")
    }
}

async fn show(
    State(service): State<Arc<PaymentsService>>,
    Path((payment_id, secret)): Path<(String, String)>,
) -> Response {
    let payment = match open_payment(&service, &payment_id, &secret).await {
        Ok(payment) => payment,
        Err(response) => return response,
    };
    let payment = match service.open_page(payment).await {
        Ok(payment) => payment,
        Err(error) => return failure(error),
    };
    if payment.state != PaymentState::Started {
        return gone(&payment);
    }
    let csrf = format!("{:032x}", rand::random::<u128>());
    let mut response = page(
        StatusCode::OK,
        payment.new.language,
        &form_html(&payment, &csrf, &[], ""),
    );
    let secure = if service.public_url().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{CSRF_COOKIE}={csrf}; Path=/pay/{}; HttpOnly; SameSite=Strict{secure}",
        payment.payment_id
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn submit(
    State(service): State<Arc<PaymentsService>>,
    Path((payment_id, secret)): Path<(String, String)>,
    headers: HeaderMap,
    Form(form): Form<PageForm>,
) -> Response {
    let payment = match open_payment(&service, &payment_id, &secret).await {
        Ok(payment) => payment,
        Err(response) => return response,
    };
    if !matches!(payment.state, PaymentState::Created | PaymentState::Started) {
        return gone(&payment);
    }
    let language = payment.new.language;
    let cookie = csrf_cookie(&headers).unwrap_or_default();
    if form.csrf_token.is_empty()
        || !bool::from(cookie.as_bytes().ct_eq(form.csrf_token.as_bytes()))
    {
        let text = t(
            language,
            "El formulario caducó. Vuelva a cargar la página e inténtelo de nuevo.",
            "The form has expired. Reload the page and try again.",
        );
        return page(StatusCode::FORBIDDEN, language, &format!("<p>{text}</p>"));
    }
    let return_url = payment.new.return_url.clone();
    if form.action == "cancel" {
        return match service.cancel_on_page(payment).await {
            Ok(_) => redirect(&return_url),
            Err(error) => failure(error),
        };
    }
    let (card, errors) = parse_card(&form, &payment);
    let Some(card) = card else {
        return page(
            StatusCode::UNPROCESSABLE_ENTITY,
            language,
            &form_html(&payment, &form.csrf_token, &errors, &form.cardholder_name),
        );
    };
    match service.submit_card_on_page(payment, &card).await {
        Ok(_) => redirect(&return_url),
        Err(error) => failure(error),
    }
}

/// The payment behind the URL, if it is one and has not expired.
async fn open_payment(
    service: &PaymentsService,
    payment_id: &str,
    secret: &str,
) -> Result<Payment, Response> {
    match service.payment_for_page(payment_id, secret).await {
        Ok(Some(payment)) if now_micros() >= payment.expire_time => Err(gone(&payment)),
        Ok(Some(payment)) => Ok(payment),
        Ok(None) => Err(page(
            StatusCode::NOT_FOUND,
            Language::Es,
            "<p>Este pago no existe. / This payment does not exist.</p>",
        )),
        Err(error) => Err(failure(error)),
    }
}

/// Which fields are wrong, as (field, message in the page's language).
type FieldErrors = Vec<(&'static str, &'static str)>;

fn parse_card(form: &PageForm, payment: &Payment) -> (Option<CardSubmission>, FieldErrors) {
    let language = payment.new.language;
    let mut errors: FieldErrors = Vec::new();
    let number = CardNumber::parse(&form.card_number).ok().filter(|n| {
        // The sandbox takes the documented test cards only.
        payment.tenant.environment != atiende_platform::auth::Environment::Sandbox
            || SandboxGateway::is_test_number(n.expose_digits())
    });
    if number.is_none() {
        errors.push((
            "card_number",
            t(
                language,
                "Revise el número de la tarjeta.",
                "Check the card number.",
            ),
        ));
    }
    let month = form.expiry_month.trim().parse::<i32>().unwrap_or(0);
    let year = form.expiry_year.trim().parse::<i32>().unwrap_or(0);
    let expiry = Expiry::parse(month, year, now_micros()).ok();
    if expiry.is_none() {
        errors.push((
            "expiry_month",
            t(
                language,
                "Revise la fecha de vencimiento (mes y año, no vencida).",
                "Check the expiry date (month and year, not in the past).",
            ),
        ));
    }
    let cvc = number
        .as_ref()
        .and_then(|n| Cvc::parse(form.cvc.trim(), n.brand()).ok());
    if cvc.is_none() {
        errors.push((
            "cvc",
            t(
                language,
                "Revise el código de seguridad (3 dígitos; 4 en American Express).",
                "Check the security code (3 digits; 4 for American Express).",
            ),
        ));
    }
    let name = parse_cardholder_name(&form.cardholder_name).ok();
    if name.is_none() {
        errors.push((
            "cardholder_name",
            t(
                language,
                "Escriba el nombre como aparece en la tarjeta.",
                "Enter the name as it appears on the card.",
            ),
        ));
    }
    let card =
        number
            .zip(cvc)
            .zip(expiry)
            .zip(name)
            .map(
                |(((number, cvc), expiry), cardholder_name)| CardSubmission {
                    number,
                    cvc,
                    expiry,
                    cardholder_name,
                },
            );
    (card, errors)
}

fn csrf_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == CSRF_COOKIE)
        .map(|(_, value)| value.to_owned())
}

fn t(language: Language, es: &'static str, en: &'static str) -> &'static str {
    match language {
        Language::Es => es,
        Language::En => en,
    }
}

fn redirect(url: &str) -> Response {
    match HeaderValue::from_str(url) {
        Ok(location) => (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// The page of a payment that can no longer take a card.
fn gone(payment: &Payment) -> Response {
    let language = payment.new.language;
    let text = t(
        language,
        "Este pago ya no está disponible.",
        "This payment is no longer available.",
    );
    let back = t(
        language,
        "Volver al sitio del servicio",
        "Back to the service",
    );
    page(
        StatusCode::GONE,
        language,
        &format!(
            "<p>{text}</p><p><a href=\"{}\">{back}</a></p>",
            escape(&payment.new.return_url)
        ),
    )
}

fn failure(error: PaymentsError) -> Response {
    let status = match error {
        PaymentsError::IllegalTransition(_) => StatusCode::CONFLICT,
        PaymentsError::NoGateway => StatusCode::SERVICE_UNAVAILABLE,
        _ => {
            tracing::error!(%error, "payment page failed");
            StatusCode::INTERNAL_SERVER_ERROR
        }
    };
    page(
        status,
        Language::Es,
        "<p>No pudimos procesar el pago; no se hizo ningún cargo. / We could not process \
         the payment; nothing was charged.</p>",
    )
}

fn page(status: StatusCode, language: Language, body: &str) -> Response {
    let (lang, title) = match language {
        Language::Es => ("es", "Pago"),
        Language::En => ("en", "Payment"),
    };
    let html = format!(
        "<!doctype html><html lang=\"{lang}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} — Atiende</title><style>{STYLE}</style></head>\
         <body><main>{body}</main></body></html>"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // The URL carries a secret: never sent on to another site.
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;padding:1rem;color:#0b0c0c}\
main{max-width:32rem;margin:auto}label{display:block;font-weight:600;margin-top:1rem}\
input{font-size:1.1rem;padding:.4rem;width:100%;box-sizing:border-box;border:2px solid #0b0c0c}\
input[aria-invalid=true]{border-color:#d4351c}.error{color:#d4351c;font-weight:600}\
.summary{border:4px solid #d4351c;padding:1rem}button{font-size:1.1rem;margin-top:1.5rem;\
padding:.5rem 1rem}:focus{outline:3px solid #fd0;outline-offset:0}.amount{font-size:2rem}";

/// The card form, with errors tied to their fields (`aria-describedby`,
/// `aria-invalid`) and a summary linking to each.
fn form_html(
    payment: &Payment,
    csrf: &str,
    errors: &[(&'static str, &'static str)],
    name: &str,
) -> String {
    let language = payment.new.language;
    let error_of = |field: &str| errors.iter().find(|(f, _)| *f == field).map(|(_, m)| *m);
    let mut html = String::new();
    if !errors.is_empty() {
        html.push_str(&format!(
            "<div class=\"summary\" role=\"alert\" tabindex=\"-1\"><h2>{}</h2><ul>",
            t(language, "Hay un problema", "There is a problem")
        ));
        for (field, message) in errors {
            html.push_str(&format!("<li><a href=\"#{field}\">{message}</a></li>"));
        }
        html.push_str("</ul></div>");
    }
    html.push_str(&format!(
        "<h1>{}</h1><p>{}</p><p class=\"amount\">{}</p><p>{}: {}</p>",
        t(language, "Pagar", "Pay"),
        escape(&payment.new.description),
        escape(&format_amount(payment.amount(), language)),
        t(language, "Referencia", "Reference"),
        escape(&payment.new.reference),
    ));
    html.push_str(&format!(
        "<form method=\"post\" novalidate><input type=\"hidden\" name=\"csrf_token\" value=\"{}\">",
        escape(csrf)
    ));
    let fields: [(&str, &str, &str, &str, &str); 5] = [
        (
            "card_number",
            t(language, "Número de la tarjeta", "Card number"),
            "cc-number",
            "numeric",
            "",
        ),
        (
            "expiry_month",
            t(language, "Mes de vencimiento (MM)", "Expiry month (MM)"),
            "cc-exp-month",
            "numeric",
            "",
        ),
        (
            "expiry_year",
            t(language, "Año de vencimiento (AAAA)", "Expiry year (YYYY)"),
            "cc-exp-year",
            "numeric",
            "",
        ),
        (
            "cvc",
            t(language, "Código de seguridad", "Security code"),
            "cc-csc",
            "numeric",
            "",
        ),
        (
            "cardholder_name",
            t(language, "Nombre en la tarjeta", "Name on the card"),
            "cc-name",
            "text",
            name,
        ),
    ];
    for (field, label, autocomplete, mode, value) in fields {
        let error = error_of(field);
        html.push_str(&format!("<label for=\"{field}\">{label}</label>"));
        if let Some(message) = error {
            html.push_str(&format!(
                "<p class=\"error\" id=\"{field}-error\">{message}</p>"
            ));
        }
        html.push_str(&format!(
            "<input id=\"{field}\" name=\"{field}\" autocomplete=\"{autocomplete}\" \
             inputmode=\"{mode}\" value=\"{}\"{}>",
            escape(value),
            if error.is_some() {
                format!(" aria-invalid=\"true\" aria-describedby=\"{field}-error\"")
            } else {
                String::new()
            }
        ));
    }
    html.push_str(&format!(
        "<button type=\"submit\" name=\"action\" value=\"pay\">{}</button> \
         <button type=\"submit\" name=\"action\" value=\"cancel\">{}</button></form>",
        t(language, "Pagar", "Pay"),
        t(language, "Cancelar el pago", "Cancel the payment"),
    ));
    html
}

/// `CLP 15.000`, `USD 1.234,56` in Spanish; `CLP 15,000`, `USD 1,234.56`
/// in English.
pub fn format_amount(amount: Money, language: Language) -> String {
    let (thousands, decimal) = match language {
        Language::Es => ('.', ','),
        Language::En => (',', '.'),
    };
    let exponent = usize::try_from(amount.currency.exponent()).unwrap_or(0);
    let digits = format!(
        "{:0>width$}",
        amount.minor.unsigned_abs(),
        width = exponent + 1
    );
    let (whole, fraction) = digits.split_at(digits.len() - exponent);
    let mut grouped = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            grouped.push(thousands);
        }
        grouped.push(c);
    }
    let sign = if amount.minor < 0 { "-" } else { "" };
    if fraction.is_empty() {
        format!("{} {sign}{grouped}", amount.currency.code())
    } else {
        format!(
            "{} {sign}{grouped}{decimal}{fraction}",
            amount.currency.code()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::money::Currency;

    #[test]
    fn amounts_are_formatted_for_the_currency_and_language() {
        let m = |code: &str, minor| Money::new(Currency::parse(code).unwrap(), minor);
        assert_eq!(format_amount(m("CLP", 15_000), Language::Es), "CLP 15.000");
        assert_eq!(format_amount(m("CLP", 15_000), Language::En), "CLP 15,000");
        assert_eq!(
            format_amount(m("USD", 123_456), Language::Es),
            "USD 1.234,56"
        );
        assert_eq!(format_amount(m("USD", 5), Language::En), "USD 0.05");
        assert_eq!(format_amount(m("CLF", 12_345), Language::Es), "CLF 1,2345");
        assert_eq!(format_amount(m("CLP", 100), Language::Es), "CLP 100");
    }

    #[test]
    fn agency_text_is_escaped() {
        assert_eq!(
            escape("<b>\"x\" & 'y'</b>"),
            "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;"
        );
    }
}
