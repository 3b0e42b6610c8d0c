//! Webhook deliveries over HTTP: the body is the canonical proto3 JSON of
//! a `PaymentEvent` (lowerCamelCase names, enums by name, int64 as strings,
//! RFC 3339 timestamps, default values omitted), rendered here from domain
//! types, and the request is signed (see [`crate::domain::webhook`]).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::domain::card::CardBrand;
use crate::domain::money::Money;
use crate::domain::payment::{Payment, PaymentEvent, Refund};
use crate::domain::state::PaymentState;
use crate::domain::webhook::{SIGNATURE_HEADER, signature_header};
use atiende_platform::net::PublicOnly;
pub use atiende_platform::net::is_public_url;

/// How long a receiver has to answer.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// What a delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// A 2xx answer.
    Delivered,
    /// Anything else, described for the agency's support (never a body).
    Failed(String),
}

/// POSTs `body` to `url`, signed with `secret` at `unix_seconds`.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    unix_seconds: i64,
    body: Vec<u8>,
) -> DeliveryOutcome {
    let signature = signature_header(secret, unix_seconds, &body);
    let sent = client
        .post(url)
        .header("content-type", "application/json")
        .header(SIGNATURE_HEADER, signature)
        .body(body)
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => DeliveryOutcome::Delivered,
        Ok(response) => DeliveryOutcome::Failed(format!("HTTP {}", response.status().as_u16())),
        Err(error) if error.is_timeout() => DeliveryOutcome::Failed("timed out".to_owned()),
        Err(error) if error.is_connect() => DeliveryOutcome::Failed("could not connect".to_owned()),
        Err(_) => DeliveryOutcome::Failed("request failed".to_owned()),
    }
}

/// The client sandbox deliveries use: a timeout, and no redirects (a
/// redirect could point a signed event anywhere).
pub fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The client live deliveries use: as [`client`], and it connects only to
/// public addresses, whatever a name resolves to when it is sent (so a
/// name re-pointed at an internal address after registration is refused).
pub fn live_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(DELIVERY_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(PublicOnly)
        .build()
}

/// The event's JSON body.
pub fn event_json(event: &PaymentEvent) -> Vec<u8> {
    let mut out = Map::new();
    put(&mut out, "eventId", &event.event_id);
    put_enum(
        &mut out,
        "type",
        "PAYMENT_EVENT_TYPE_",
        event.event_type.as_str(),
    );
    put(&mut out, "cursor", &event.sequence.to_string());
    out.insert("occurTime".into(), json!(rfc3339(event.occur_time)));
    out.insert("payment".into(), payment_json(&event.payment));
    if let Some(refund) = &event.refund {
        out.insert("refund".into(), refund_json(refund));
    }
    Value::Object(out).to_string().into_bytes()
}

fn put(out: &mut Map<String, Value>, name: &str, value: &str) {
    if !value.is_empty() {
        out.insert(name.into(), json!(value));
    }
}

fn put_enum(out: &mut Map<String, Value>, name: &str, prefix: &str, value: &str) {
    out.insert(
        name.into(),
        json!(format!("{prefix}{}", value.to_ascii_uppercase())),
    );
}

fn money_json(money: Money) -> Value {
    let mut out = Map::new();
    put(&mut out, "currencyCode", money.currency.code());
    if money.minor != 0 {
        out.insert("amountMinor".into(), json!(money.minor.to_string()));
    }
    Value::Object(out)
}

fn payment_json(p: &Payment) -> Value {
    let mut out = Map::new();
    put(&mut out, "paymentId", &p.payment_id);
    out.insert("amount".into(), money_json(p.amount()));
    put(&mut out, "reference", &p.new.reference);
    put(&mut out, "description", &p.new.description);
    put(&mut out, "returnUrl", &p.new.return_url);
    if !p.new.metadata.is_empty() {
        out.insert("metadata".into(), json!(p.new.metadata));
    }
    put_enum(&mut out, "language", "LANGUAGE_", p.new.language.as_str());
    if p.new.delayed_capture {
        out.insert("delayedCapture".into(), json!(true));
    }
    put_enum(&mut out, "state", "PAYMENT_STATE_", p.state.as_str());
    if let Some(reason) = p.failure_reason {
        put_enum(
            &mut out,
            "failureReason",
            "PAYMENT_FAILURE_REASON_",
            reason.as_str(),
        );
    }
    put(&mut out, "failureMessage", &p.failure_message);
    out.insert("expireTime".into(), json!(rfc3339(p.expire_time)));
    if let Some(card) = &p.card {
        let mut c = Map::new();
        if card.brand != CardBrand::Unknown {
            put_enum(&mut c, "brand", "CARD_BRAND_", card.brand.as_str());
        }
        put(&mut c, "firstSixDigits", &card.first_six);
        put(&mut c, "lastFourDigits", &card.last_four);
        c.insert("expiryMonth".into(), json!(card.expiry.month));
        c.insert("expiryYear".into(), json!(card.expiry.year));
        put(&mut c, "cardholderName", &card.cardholder_name);
        out.insert("cardDetails".into(), Value::Object(c));
    }
    let currency = p.amount().currency;
    out.insert(
        "refundAmountAvailable".into(),
        money_json(p.refund_available()),
    );
    out.insert(
        "refundAmountSubmitted".into(),
        money_json(Money::new(currency, p.refund_submitted_minor)),
    );
    if let Some(fee) = p.fee_minor.filter(|_| p.state == PaymentState::Success) {
        out.insert("fee".into(), money_json(Money::new(currency, fee)));
        out.insert(
            "netAmount".into(),
            money_json(Money::new(currency, p.amount().minor.saturating_sub(fee))),
        );
    }
    put_enum(
        &mut out,
        "environment",
        "ENVIRONMENT_",
        p.tenant.environment.as_str(),
    );
    out.insert("createTime".into(), json!(rfc3339(p.create_time)));
    out.insert("updateTime".into(), json!(rfc3339(p.update_time)));
    Value::Object(out)
}

fn refund_json(r: &Refund) -> Value {
    let mut out = Map::new();
    put(&mut out, "refundId", &r.refund_id);
    put(&mut out, "paymentId", &r.payment_id);
    out.insert("amount".into(), money_json(r.amount));
    put(&mut out, "reason", &r.reason);
    put_enum(&mut out, "state", "REFUND_STATE_", r.state.as_str());
    out.insert("createTime".into(), json!(rfc3339(r.create_time)));
    out.insert("updateTime".into(), json!(rfc3339(r.update_time)));
    Value::Object(out)
}

/// `2026-11-22T18:00:00Z`, or with six fractional digits when the time
/// has microseconds.
pub fn rfc3339(micros: i64) -> String {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000);
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (hour, minute, second) = (of_day / 3600, of_day % 3600 / 60, of_day % 60);
    if fraction == 0 {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    } else {
        format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{fraction:06}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_urls_must_name_public_hosts() {
        assert!(is_public_url("https://hooks.municipio.cl/atiende"));
        assert!(is_public_url("https://8.8.8.8/x"));
        for url in [
            "https://localhost/x",
            "https://api.localhost/x",
            "https://127.0.0.1/x",
            "https://10.1.2.3:8443/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "not a url",
        ] {
            assert!(!is_public_url(url), "{url}");
        }
    }

    #[tokio::test]
    async fn the_live_resolver_refuses_names_of_internal_addresses() {
        use reqwest::dns::Resolve;
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(PublicOnly.resolve(name).await.is_err());
    }

    #[test]
    fn timestamps_are_rfc_3339_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_348_800_000_000), "2026-11-22T12:00:00Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(rfc3339(-1_000_000), "1969-12-31T23:59:59Z");
    }
}
