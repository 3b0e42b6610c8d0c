//! Webhook endpoints, their signing secrets, the signature of a delivery
//! and the retry schedule.
//!
//! A delivery is signed as `Atiende-Signature: t=<unix seconds>,v1=<hex>`
//! where the hex is HMAC-SHA256, keyed with the whole `whsec_...` secret,
//! over `<t>.<body>`.

use std::net::IpAddr;

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

/// Whether an address is on the public internet: live webhooks are never
/// sent to loopback, private, link-local, shared (CGNAT), multicast,
/// documentation or unspecified addresses, so that an endpoint cannot
/// point Atiende at its own network.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_unspecified()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_ip(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8
                || first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
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
    fn only_public_addresses_are_public() {
        let public = |s: &str| is_public_ip(s.parse().unwrap());
        for ip in ["8.8.8.8", "200.1.2.3", "2800:3f0::1"] {
            assert!(public(ip), "{ip}");
        }
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
        ] {
            assert!(!public(ip), "{ip}");
        }
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
