//! Payments, refunds and their events, and the parsing of a new payment's
//! fields.

use std::collections::BTreeMap;

use atiende_platform::auth::Environment;

use crate::domain::card::CardSummary;
use crate::domain::money::Money;
use crate::domain::state::{EventType, FailureReason, PaymentState};

pub const PAYMENT_ID_PREFIX: &str = "pay";
pub const REFUND_ID_PREFIX: &str = "rfd";
pub const EVENT_ID_PREFIX: &str = "evt";
pub const LEDGER_TRANSACTION_ID_PREFIX: &str = "ltx";
pub const LEDGER_ENTRY_ID_PREFIX: &str = "len";

pub const MAX_TEXT_CHARS: usize = 255;
pub const MAX_URL_CHARS: usize = 2000;
pub const MAX_METADATA_KEYS: usize = 15;
pub const MAX_METADATA_KEY_CHARS: usize = 40;
pub const MAX_METADATA_VALUE_CHARS: usize = 500;
/// How long a payer has to finish: 90 minutes.
pub const PAYMENT_LIFETIME_MICROS: i64 = 90 * 60 * 1_000_000;
/// How long an authorisation waits for CapturePayment: 7 days.
pub const CAPTURE_WINDOW_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

/// Whose data a call touches: every read and write is scoped to one
/// agency in one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub agency_id: String,
    pub environment: Environment,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Es,
    En,
}

impl Language {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es => "es",
            Self::En => "en",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "es" => Some(Self::Es),
            "en" => Some(Self::En),
            _ => None,
        }
    }
}

/// A create request's fields, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    pub amount: Money,
    pub reference: String,
    pub description: String,
    pub return_url: String,
    pub metadata: BTreeMap<String, String>,
    pub language: Language,
    pub delayed_capture: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub payment_id: String,
    pub tenant: Tenant,
    pub new: NewPayment,
    pub state: PaymentState,
    pub failure_reason: Option<FailureReason>,
    pub failure_message: String,
    pub card: Option<CardSummary>,
    /// The sum of refunds in SUBMITTED or SUCCESS.
    pub refund_submitted_minor: i64,
    /// Set when SUCCESS.
    pub fee_minor: Option<i64>,
    /// The secret part of the hosted page's URL.
    pub page_secret: String,
    pub expire_time: i64,
    pub create_time: i64,
    pub update_time: i64,
    /// A CAPTURABLE payment whose authorisation is being voided (it is
    /// being cancelled or expired): it can no longer be captured.
    pub void_requested: bool,
}

impl Payment {
    pub fn amount(&self) -> Money {
        self.new.amount
    }

    /// What can still be refunded: zero unless SUCCESS.
    pub fn refund_available(&self) -> Money {
        let minor = if self.state == PaymentState::Success {
            self.amount()
                .minor
                .saturating_sub(self.refund_submitted_minor)
                .max(0)
        } else {
            0
        };
        Money::new(self.amount().currency, minor)
    }

    /// The hosted page, only while the payer has not opened it.
    pub fn next_url(&self, public_url: &str) -> Option<String> {
        (self.state == PaymentState::Created).then(|| {
            format!(
                "{}/pay/{}/{}",
                public_url.trim_end_matches('/'),
                self.payment_id,
                self.page_secret
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundState {
    Submitted,
    Success,
    Error,
}

impl RefundState {
    pub const ALL: [RefundState; 3] = [Self::Submitted, Self::Success, Self::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submitted => "submitted",
            Self::Success => "success",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refund {
    pub refund_id: String,
    pub payment_id: String,
    pub tenant: Tenant,
    pub amount: Money,
    pub reason: String,
    pub state: RefundState,
    pub create_time: i64,
    pub update_time: i64,
}

/// One recorded change, with the payment (and refund) as they were right
/// after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentEvent {
    pub event_id: String,
    /// Recording order within the database: the cursor.
    pub sequence: i64,
    pub event_type: EventType,
    pub occur_time: i64,
    pub payment: Payment,
    pub refund: Option<Refund>,
}

/// A field and what is wrong with it.
pub type Violation = (String, String);

impl NewPayment {
    /// Parses every field, reporting every violation. `environment` decides
    /// which return URLs are acceptable.
    #[allow(clippy::too_many_arguments)]
    pub fn parse(
        amount: Result<Money, Vec<Violation>>,
        reference: &str,
        description: &str,
        return_url: &str,
        metadata: &std::collections::HashMap<String, String>,
        language: Option<Language>,
        delayed_capture: bool,
        environment: Environment,
    ) -> Result<Self, Vec<Violation>> {
        let mut problems: Vec<Violation> = Vec::new();
        let amount = amount.map_err(|v| problems.extend(v)).ok();
        let mut text = |field: &str, raw: &str| match parse_text(raw) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push((field.to_owned(), e));
                None
            }
        };
        let reference = text("reference", reference);
        let description = text("description", description);
        let return_url = parse_return_url(return_url, environment)
            .map_err(|e| problems.push(("return_url".to_owned(), e)))
            .ok();
        let metadata = parse_metadata(metadata)
            .map_err(|v| problems.extend(v))
            .ok();
        if language.is_none() {
            problems.push((
                "language".to_owned(),
                "must be LANGUAGE_ES, LANGUAGE_EN or unspecified".to_owned(),
            ));
        }
        match (
            amount,
            reference,
            description,
            return_url,
            metadata,
            language,
        ) {
            (
                Some(amount),
                Some(reference),
                Some(description),
                Some(return_url),
                Some(metadata),
                Some(language),
            ) if problems.is_empty() => Ok(Self {
                amount,
                reference,
                description,
                return_url,
                metadata,
                language,
                delayed_capture,
            }),
            _ => Err(problems),
        }
    }
}

/// 1 to 255 characters, no control characters.
pub fn parse_text(raw: &str) -> Result<String, String> {
    if raw.trim().is_empty() {
        Err("is required".to_owned())
    } else if raw.chars().count() > MAX_TEXT_CHARS || raw.chars().any(char::is_control) {
        Err(format!(
            "must be at most {MAX_TEXT_CHARS} characters, without control characters"
        ))
    } else {
        Ok(raw.to_owned())
    }
}

/// An `https://` URL with a host; in the sandbox also
/// `http://localhost` and `http://127.0.0.1`, with any port and path. No
/// credentials in the URL, no spaces or control characters.
pub fn parse_return_url(raw: &str, environment: Environment) -> Result<String, String> {
    let expected = match environment {
        Environment::Live => "must be an https:// URL",
        Environment::Sandbox => {
            "must be an https:// URL (or http://localhost or http://127.0.0.1 in the sandbox)"
        }
    };
    if raw.is_empty() {
        return Err("is required".to_owned());
    }
    if raw.chars().count() > MAX_URL_CHARS
        || raw.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!("{expected}, at most {MAX_URL_CHARS} characters"));
    }
    let lower = raw.to_ascii_lowercase();
    let (rest, secure) = if let Some(rest) = lower.strip_prefix("https://") {
        (rest, true)
    } else if let Some(rest) = lower.strip_prefix("http://") {
        (rest, false)
    } else {
        return Err(expected.to_owned());
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err(format!("{expected}, without credentials"));
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) => {
            if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
                return Err(expected.to_owned());
            }
            host
        }
        None => authority,
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && !host.starts_with(['.', '-']);
    if !host_ok {
        return Err(expected.to_owned());
    }
    let local = matches!(host, "localhost" | "127.0.0.1");
    if secure || (environment == Environment::Sandbox && local) {
        Ok(raw.to_owned())
    } else {
        Err(expected.to_owned())
    }
}

fn parse_metadata(
    raw: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>, Vec<Violation>> {
    if raw.len() > MAX_METADATA_KEYS {
        return Err(vec![(
            "metadata".to_owned(),
            format!("must have at most {MAX_METADATA_KEYS} keys"),
        )]);
    }
    let mut problems = Vec::new();
    for (key, value) in raw {
        let key_ok = (1..=MAX_METADATA_KEY_CHARS).contains(&key.chars().count())
            && !key.chars().any(char::is_control);
        if !key_ok {
            // The key itself may be the problem: never echoed.
            problems.push((
                "metadata".to_owned(),
                format!(
                    "keys must be 1 to {MAX_METADATA_KEY_CHARS} characters, without control characters"
                ),
            ));
        } else if value.chars().count() > MAX_METADATA_VALUE_CHARS
            || value.chars().any(char::is_control)
        {
            problems.push((
                format!("metadata[{key}]"),
                format!(
                    "must be at most {MAX_METADATA_VALUE_CHARS} characters, without control characters"
                ),
            ));
        }
    }
    if problems.is_empty() {
        Ok(raw.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    } else {
        problems.sort();
        problems.dedup();
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_urls_are_https_or_local_http_in_the_sandbox() {
        let ok = |u: &str, e| parse_return_url(u, e).is_ok();
        assert!(ok("https://tramites.gob.cl/pago/1?x=2", Environment::Live));
        assert!(ok("https://example.cl:8443/", Environment::Live));
        assert!(ok("http://localhost:3000/back", Environment::Sandbox));
        assert!(ok("http://127.0.0.1/back", Environment::Sandbox));
        assert!(!ok("http://localhost:3000/back", Environment::Live));
        assert!(!ok("http://example.cl/", Environment::Sandbox));
        assert!(!ok("ftp://example.cl/", Environment::Sandbox));
        assert!(!ok("https://", Environment::Live));
        assert!(!ok("https://user:pw@example.cl/", Environment::Live));
        assert!(!ok("https://exa mple.cl/", Environment::Live));
        assert!(!ok("https://example.cl:80x/", Environment::Live));
        assert!(!ok("javascript:alert(1)", Environment::Sandbox));
        assert!(!ok("http://localhost.evil.com/", Environment::Sandbox));
        assert!(!ok("", Environment::Sandbox));
    }

    #[test]
    fn metadata_is_bounded() {
        let map = |n: usize, value: &str| -> std::collections::HashMap<String, String> {
            (0..n)
                .map(|i| (format!("k{i}"), value.to_owned()))
                .collect()
        };
        assert!(parse_metadata(&map(15, "v")).is_ok());
        assert!(parse_metadata(&map(16, "v")).is_err());
        assert!(parse_metadata(&map(1, &"x".repeat(501))).is_err());
        let long_key = std::collections::HashMap::from([("k".repeat(41), "v".to_owned())]);
        assert_eq!(parse_metadata(&long_key).unwrap_err()[0].0, "metadata");
    }
}
