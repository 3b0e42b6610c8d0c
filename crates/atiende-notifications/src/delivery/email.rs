//! Email out: a lettre SMTP transport with a connection pool, or `.eml`
//! files in a directory (development).

use std::path::PathBuf;

use lettre::message::header::{ContentType, Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::PoolConfig;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use secrecy::ExposeSecret;

use super::Outcome;
use crate::config::EmailConfig;

/// One email, rendered.
pub struct OutgoingEmail<'a> {
    pub notification_id: &'a str,
    pub to: &'a str,
    pub subject: &'a str,
    pub text: &'a str,
    pub html: &'a str,
    pub reply_to: &'a str,
    pub unsubscribe_url: &'a str,
}

pub enum Mailer {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    Files,
}

pub struct EmailSender {
    mailer: Mailer,
    /// Where `.eml` files go: live email without an SMTP server, and
    /// sandbox email when the sandbox outbox is on.
    outbox: PathBuf,
    /// Caps concurrent SMTP conversations at `max_connections` (lettre's
    /// pool bounds idle connections only).
    slots: tokio::sync::Semaphore,
    /// Bounds a whole conversation, greeting included.
    timeout: std::time::Duration,
    from: Mailbox,
    /// The right-hand side of Message-IDs: the From address's domain.
    id_domain: String,
}

impl EmailSender {
    pub fn from_config(config: &EmailConfig, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let from: Mailbox = format!("{} <{}>", config.from_name, config.from_address)
            .parse()
            .map_err(|e| anyhow::anyhow!("email.from_address / email.from_name: {e}"))?;
        let id_domain = from.email.domain().to_owned();
        let mailer = match &config.smtp_url {
            Some(url) => Mailer::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url.expose_secret())
                    .map_err(|_| anyhow::anyhow!("email.smtp_url is not a valid SMTP URL"))?
                    .timeout(Some(config.timeout_ms))
                    .pool_config(PoolConfig::new().max_size(config.max_connections))
                    .build(),
            ),
            None => Mailer::Files,
        };
        Ok(Self {
            mailer,
            outbox: config
                .outbox_dir
                .clone()
                .unwrap_or_else(|| data_dir.join("outbox")),
            slots: tokio::sync::Semaphore::new(
                usize::try_from(config.max_connections.max(1)).unwrap_or(1),
            ),
            timeout: config.timeout_ms,
            from,
            id_domain,
        })
    }

    /// Where email goes, for the start-up banner.
    pub fn describe(&self) -> String {
        match &self.mailer {
            Mailer::Smtp(_) => "an SMTP server (email.smtp_url)".to_owned(),
            Mailer::Files => format!("files in {}", self.outbox.display()),
        }
    }

    pub async fn send(&self, email: &OutgoingEmail<'_>) -> Outcome {
        let message = match self.message(email) {
            Ok(message) => message,
            // The address passed validation but lettre refuses it.
            Err(reason) => return Outcome::PermanentFailure(reason),
        };
        match &self.mailer {
            Mailer::Smtp(transport) => {
                let Ok(_slot) = self.slots.acquire().await else {
                    return Outcome::Retry("shutting down".to_owned(), true);
                };
                let sent = tokio::time::timeout(self.timeout, transport.send(message)).await;
                let Ok(sent) = sent else {
                    return Outcome::Retry("mail server timed out".to_owned(), true);
                };
                match sent {
                    Ok(_) => Outcome::Delivered,
                    // Refusals of us, not of the recipient (authentication,
                    // TLS required): our configuration, retried as technical.
                    Err(e)
                        if e.status()
                            .is_some_and(|code| is_our_refusal(&code.to_string())) =>
                    {
                        Outcome::Retry(smtp_reason(&e, "the mail server refused our session"), true)
                    }
                    Err(e) if e.is_permanent() => {
                        Outcome::PermanentFailure(smtp_reason(&e, "refused by the mail server"))
                    }
                    Err(e) if e.is_transient() => {
                        Outcome::Retry(smtp_reason(&e, "deferred by the mail server"), false)
                    }
                    Err(e) => Outcome::Retry(smtp_reason(&e, "mail server unreachable"), true),
                }
            }
            Mailer::Files => self.write(email.notification_id, &message).await,
        }
    }

    /// Writes the email to `<outbox>/<notification id>.eml`.
    pub async fn write_to_outbox(&self, email: &OutgoingEmail<'_>) -> Outcome {
        match self.message(email) {
            Ok(message) => self.write(email.notification_id, &message).await,
            Err(reason) => Outcome::PermanentFailure(reason),
        }
    }

    pub fn outbox(&self) -> &std::path::Path {
        &self.outbox
    }

    async fn write(&self, notification_id: &str, message: &Message) -> Outcome {
        let path = self.outbox.join(format!("{notification_id}.eml"));
        let written = async {
            tokio::fs::create_dir_all(&self.outbox).await?;
            tokio::fs::write(&path, message.formatted()).await
        };
        match written.await {
            Ok(()) => Outcome::Delivered,
            Err(e) => Outcome::Retry(format!("outbox not writable: {}", e.kind()), true),
        }
    }

    fn message(&self, email: &OutgoingEmail<'_>) -> Result<Message, String> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|_| "recipient address refused".to_owned())?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject)
            .message_id(Some(format!(
                "<{}@{}>",
                email.notification_id, self.id_domain
            )));
        if !email.reply_to.is_empty() {
            let reply_to: Mailbox = email
                .reply_to
                .parse()
                .map_err(|_| "reply-to address refused".to_owned())?;
            builder = builder.reply_to(reply_to);
        }
        if !email.unsubscribe_url.is_empty() {
            builder = builder
                .header(ListUnsubscribe(format!("<{}>", email.unsubscribe_url)))
                .header(ListUnsubscribePost);
        }
        builder
            .multipart(
                MultiPart::alternative()
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(email.text.to_owned()),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(email.html.to_owned()),
                    ),
            )
            .map_err(|_| "message could not be built".to_owned())
    }
}

/// 530 (authentication or STARTTLS required), 534 (mechanism too weak),
/// 535 (credentials refused), 538 (encryption required).
fn is_our_refusal(code: &str) -> bool {
    matches!(code, "530" | "534" | "535" | "538")
}

/// The SMTP reply code, never the server's text (it may quote the address).
fn smtp_reason(error: &lettre::transport::smtp::Error, what: &str) -> String {
    match error.status() {
        Some(code) => format!("{what} ({code})"),
        None if error.is_timeout() => format!("{what} (timeout)"),
        None => what.to_owned(),
    }
}

/// RFC 2369 `List-Unsubscribe: <https://...>`.
#[derive(Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// RFC 8058 one-click unsubscribe.
#[derive(Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}
