//! Webhook endpoints, their signing secrets, the signature of a delivery
//! and the retry schedule.
//!
//! A delivery is signed as `Atiende-Signature: t=<unix seconds>,v1=<hex>`
//! where the hex is HMAC-SHA256, keyed with the whole `whsec_...` secret,
//! over `<t>.<body>`.

use aws_lc_rs::hmac;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::domain::payment::Tenant;
use crate::domain::state::EventType;

pub const WEBHOOK_ENDPOINT_ID_PREFIX: &str = "whe";
pub const MAX_ENDPOINTS_PER_ENVIRONMENT: i64 = 16;
pub const SIGNATURE_HEADER: &str = "Atiende-Signature";
/// Deliveries are retried for this long after the event.
pub const DELIVERY_WINDOW_MICROS: i64 = 3 * 24 * 3600 * 1_000_000;
/// The first retry waits this long; each next one twice as long.
const FIRST_RETRY_MICROS: i64 = 10 * 1_000_000;
/// No retry waits longer than this.
const MAX_RETRY_MICROS: i64 = 6 * 3600 * 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub webhook_endpoint_id: String,
    pub tenant: Tenant,
    pub url: String,
    /// Empty means every type.
    pub event_types: Vec<EventType>,
    pub description: String,
    pub create_time: i64,
}

/// A new signing secret: `whsec_` and 256 random bits in base64url.
pub fn new_signing_secret() -> String {
    format!(
        "whsec_{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// The hex HMAC-SHA256 of `<t>.<body>` under `secret`.
pub fn signature(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(unix_seconds.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    ctx.sign()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The value of the signature header.
pub fn signature_header(secret: &str, unix_seconds: i64, body: &[u8]) -> String {
    format!(
        "t={unix_seconds},v1={}",
        signature(secret, unix_seconds, body)
    )
}

/// When to try again after `attempts` failed attempts (1 or more):
/// 10 s, 20 s, 40 s, ... capped at 6 hours.
pub fn retry_delay_micros(attempts: i64) -> i64 {
    let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
    FIRST_RETRY_MICROS
        .saturating_mul(1_i64 << doublings)
        .min(MAX_RETRY_MICROS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha256_of_time_dot_body() {
        // Computed independently (Python's hmac module).
        assert_eq!(
            signature("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert!(signature_header("whsec_test", 5, b"x").starts_with("t=5,v1="));
        assert_ne!(signature("whsec_a", 5, b"x"), signature("whsec_b", 5, b"x"));
    }

    #[test]
    fn secrets_are_256_random_bits() {
        let secret = new_signing_secret();
        let bits = URL_SAFE_NO_PAD
            .decode(secret.strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(bits.len(), 32);
        assert_ne!(secret, new_signing_secret());
    }

    #[test]
    fn retries_back_off_exponentially_up_to_a_cap() {
        assert_eq!(retry_delay_micros(1), 10_000_000);
        assert_eq!(retry_delay_micros(2), 20_000_000);
        assert_eq!(retry_delay_micros(4), 80_000_000);
        assert_eq!(retry_delay_micros(40), MAX_RETRY_MICROS);
        assert_eq!(retry_delay_micros(i64::MAX), MAX_RETRY_MICROS);
        let mut total = 0;
        let mut attempts = 0;
        while total < DELIVERY_WINDOW_MICROS {
            attempts += 1;
            total += retry_delay_micros(attempts);
        }
        // About 20 attempts in the 3-day window.
        assert!((15..30).contains(&attempts), "{attempts}");
    }
}
