//! SMS out, through providers: each one is an [`SmsProvider`]; a
//! [`ProviderChain`] tries them in order and moves to the next when one is
//! unavailable.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::{constant_time, hmac};
use secrecy::{ExposeSecret, SecretString};

use super::Outcome;
use crate::config::SmsProviderConfig;
use crate::domain::notifications::Status;

/// One SMS, rendered.
pub struct OutgoingSms<'a> {
    pub notification_id: &'a str,
    pub to: &'a str,
    pub sender_id: &'a str,
    pub body: &'a str,
}

/// What a provider answered.
pub enum SmsResult {
    /// Accepted as `reference`; a receipt will follow when `receipts`.
    Accepted { reference: String, receipts: bool },
    /// The provider refuses this message for good (an invalid number, an
    /// opted-out recipient): the next provider would too.
    Rejected(String),
    /// The provider failed or could not be reached: try another, or later.
    Unavailable(String),
}

#[tonic::async_trait]
pub trait SmsProvider: Send + Sync {
    /// Names the provider in logs and in its receipts' URL path.
    fn name(&self) -> &str;
    async fn send(&self, sms: &OutgoingSms<'_>) -> SmsResult;
    /// Checks and reads a delivery receipt POSTed by the provider to
    /// `url` (the full public URL it was sent to) with form fields
    /// `params`: the provider's reference and the final status, or `None`
    /// for receipts that are not about a final status. `Err` when the
    /// receipt is not authentic.
    fn receipt(
        &self,
        url: &str,
        signature: Option<&str>,
        params: &[(String, String)],
    ) -> Result<Option<(String, Status)>, ReceiptRefused>;
}

#[derive(Debug)]
pub struct ReceiptRefused;

/// Providers in order of preference.
#[derive(Clone, Default)]
pub struct ProviderChain {
    providers: Vec<Arc<dyn SmsProvider>>,
}

impl ProviderChain {
    pub fn new(providers: Vec<Arc<dyn SmsProvider>>) -> Self {
        Self { providers }
    }

    pub fn from_config(
        configs: &[SmsProviderConfig],
        receipts_base_url: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let mut providers: Vec<Arc<dyn SmsProvider>> = Vec::new();
        for config in configs {
            providers.push(match config {
                SmsProviderConfig::Twilio {
                    name,
                    account_sid,
                    auth_token,
                    api_base_url,
                    from,
                } => Arc::new(Twilio::new(
                    name,
                    account_sid,
                    auth_token.clone(),
                    api_base_url.as_deref().unwrap_or("https://api.twilio.com"),
                    from,
                    &receipts_url(receipts_base_url, name),
                    timeout,
                )?),
                SmsProviderConfig::Log { name } => Arc::new(LogProvider { name: name.clone() }),
            });
        }
        let mut names: Vec<&str> = providers.iter().map(|p| p.name()).collect();
        names.sort_unstable();
        names.dedup();
        anyhow::ensure!(
            names.len() == providers.len(),
            "sms.providers: names must be unique"
        );
        Ok(Self { providers })
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn SmsProvider>> {
        self.providers.iter().find(|p| p.name() == name)
    }

    /// Sends through the first provider that is available.
    pub async fn send(&self, sms: &OutgoingSms<'_>) -> Outcome {
        let mut last = "no SMS provider is configured".to_owned();
        for provider in &self.providers {
            match provider.send(sms).await {
                SmsResult::Accepted {
                    reference,
                    receipts,
                } => {
                    return Outcome::Accepted {
                        provider: provider.name().to_owned(),
                        reference,
                        receipts,
                    };
                }
                SmsResult::Rejected(reason) => return Outcome::PermanentFailure(reason),
                SmsResult::Unavailable(reason) => {
                    tracing::warn!(
                        provider = provider.name(),
                        notification_id = sms.notification_id,
                        reason = %reason,
                        "SMS provider unavailable; trying the next"
                    );
                    last = format!("{}: {reason}", provider.name());
                }
            }
        }
        Outcome::Retry(last, true)
    }
}

/// The URL a provider posts its receipts to.
pub fn receipts_url(base: &str, provider: &str) -> String {
    format!(
        "{}/notifications/v1/sms-receipts/{provider}",
        base.trim_end_matches('/')
    )
}

/// Logs that an SMS would be sent (never its text or number): development.
struct LogProvider {
    name: String,
}

#[tonic::async_trait]
impl SmsProvider for LogProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, sms: &OutgoingSms<'_>) -> SmsResult {
        tracing::info!(
            provider = %self.name,
            notification_id = sms.notification_id,
            "SMS handed to the log provider (not sent)"
        );
        SmsResult::Accepted {
            reference: sms.notification_id.to_owned(),
            receipts: false,
        }
    }

    fn receipt(
        &self,
        _: &str,
        _: Option<&str>,
        _: &[(String, String)],
    ) -> Result<Option<(String, Status)>, ReceiptRefused> {
        Err(ReceiptRefused)
    }
}

/// Twilio's Programmable Messaging API: `POST
/// /2010-04-01/Accounts/{sid}/Messages.json` with HTTP Basic auth (account
/// sid, auth token), form fields `To`, `From`, `Body`, `StatusCallback`;
/// receipts are form POSTs to `StatusCallback` with `MessageSid` and
/// `MessageStatus`, signed in `X-Twilio-Signature` (base64 HMAC-SHA1, under
/// the auth token, of the URL followed by every field name and value in
/// name order).
pub struct Twilio {
    name: String,
    account_sid: String,
    auth_token: SecretString,
    messages_url: String,
    from: String,
    status_callback: String,
    http: reqwest::Client,
}

impl Twilio {
    pub fn new(
        name: &str,
        account_sid: &str,
        auth_token: SecretString,
        api_base_url: &str,
        from: &str,
        status_callback: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            account_sid: account_sid.to_owned(),
            auth_token,
            messages_url: format!(
                "{}/2010-04-01/Accounts/{account_sid}/Messages.json",
                api_base_url.trim_end_matches('/')
            ),
            from: from.to_owned(),
            status_callback: status_callback.to_owned(),
            http: reqwest::Client::builder().timeout(timeout).build()?,
        })
    }

    /// The signature Twilio puts on a request to `url` with `params`.
    pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
        let mut sorted: Vec<&(String, String)> = params.iter().collect();
        sorted.sort();
        let mut data = url.to_owned();
        for (k, v) in sorted {
            data.push_str(k);
            data.push_str(v);
        }
        let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
        base64_encode(hmac::sign(&key, data.as_bytes()).as_ref())
    }
}

#[derive(serde::Deserialize)]
struct TwilioMessage {
    sid: String,
}

#[derive(serde::Deserialize)]
struct TwilioError {
    #[serde(default)]
    code: Option<i64>,
}

#[tonic::async_trait]
impl SmsProvider for Twilio {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, sms: &OutgoingSms<'_>) -> SmsResult {
        let from = if sms.sender_id.is_empty() {
            self.from.as_str()
        } else {
            sms.sender_id
        };
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(self.auth_token.expose_secret()))
            .form(&[
                ("To", sms.to),
                ("From", from),
                ("Body", sms.body),
                ("StatusCallback", self.status_callback.as_str()),
            ])
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(e) if e.is_timeout() => return SmsResult::Unavailable("timeout".to_owned()),
            Err(_) => return SmsResult::Unavailable("unreachable".to_owned()),
        };
        let status = response.status();
        if status.is_success() {
            return match response.json::<TwilioMessage>().await {
                Ok(message) => SmsResult::Accepted {
                    reference: message.sid,
                    receipts: true,
                },
                Err(_) => SmsResult::Unavailable("unreadable answer".to_owned()),
            };
        }
        if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 401 {
            return SmsResult::Unavailable(format!("HTTP {}", status.as_u16()));
        }
        // 4xx: Twilio refuses the message itself (invalid or unreachable
        // number, opted out, ...), with its error code.
        let code = response
            .json::<TwilioError>()
            .await
            .ok()
            .and_then(|e| e.code)
            .map(|c| format!(", error {c}"))
            .unwrap_or_default();
        SmsResult::Rejected(format!(
            "refused by the provider (HTTP {}{code})",
            status.as_u16()
        ))
    }

    fn receipt(
        &self,
        url: &str,
        signature: Option<&str>,
        params: &[(String, String)],
    ) -> Result<Option<(String, Status)>, ReceiptRefused> {
        let expected = Self::signature(self.auth_token.expose_secret(), url, params);
        let given = signature.ok_or(ReceiptRefused)?;
        constant_time::verify_slices_are_equal(expected.as_bytes(), given.as_bytes())
            .map_err(|_| ReceiptRefused)?;
        let field = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let sid = field("MessageSid").ok_or(ReceiptRefused)?;
        let status = match field("MessageStatus") {
            Some("delivered") => Status::Delivered,
            // The carrier could not deliver (phone off, out of coverage).
            Some("undelivered") => Status::TemporaryFailure,
            // Twilio could not send it (unknown or unreachable number).
            Some("failed") => Status::PermanentFailure,
            _ => return Ok(None),
        };
        Ok(Some((sid.to_owned(), status)))
    }
}

fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = usize::try_from((n >> (18 - 6 * i)) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET[index]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64_encode(input.as_bytes()), expected);
        }
    }

    #[test]
    fn twilio_signature_matches_its_documented_example() {
        // The parameters of Twilio's "Validating Requests" example; the
        // expected value was computed with Python's hmac and base64 modules.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        assert_eq!(
            Twilio::signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }
}
