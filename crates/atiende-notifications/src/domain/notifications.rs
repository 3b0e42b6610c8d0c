//! Notifications: their statuses, recipients and the simulator that stands
//! in for every recipient of a sandbox agency.

use atiende_platform::auth::Environment;

use super::templates::{Channel, Rendering, Template};

pub const NOTIFICATION_ID_PREFIX: &str = "ntf";
pub const BATCH_ID_PREFIX: &str = "bat";
pub const EVENT_ID_PREFIX: &str = "evt";

/// Where a notification is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Status {
    Created,
    Sending,
    Delivered,
    PermanentFailure,
    TemporaryFailure,
    TechnicalFailure,
    Sent,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 8] = [
        Self::Created,
        Self::Sending,
        Self::Delivered,
        Self::PermanentFailure,
        Self::TemporaryFailure,
        Self::TechnicalFailure,
        Self::Sent,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Sending => "sending",
            Self::Delivered => "delivered",
            Self::PermanentFailure => "permanent-failure",
            Self::TemporaryFailure => "temporary-failure",
            Self::TechnicalFailure => "technical-failure",
            Self::Sent => "sent",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Every status but CREATED and SENDING is final.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Created | Self::Sending)
    }

    /// An email that ends so sends its SMS fallback.
    pub fn triggers_fallback(self) -> bool {
        matches!(self, Self::PermanentFailure | Self::TemporaryFailure)
    }
}

/// A notification as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub notification_id: String,
    pub agency_id: String,
    pub environment: Environment,
    pub channel: Channel,
    pub status: Status,
    pub template_id: String,
    pub template_version: i32,
    /// Empty once purged.
    pub recipient: String,
    pub reference: String,
    pub batch_id: Option<String>,
    /// Email only; empty once purged.
    pub subject: String,
    /// Plain text; empty once purged.
    pub body: String,
    /// Email only; empty once purged.
    pub html_body: String,
    pub fragment_count: i32,
    pub email_reply_to: String,
    pub unsubscribe_url: String,
    pub sender_id: String,
    pub fallback: Option<Fallback>,
    pub fallback_notification_id: Option<String>,
    pub fallback_for_notification_id: Option<String>,
    pub create_time: i64,
    pub scheduled_time: Option<i64>,
    pub send_time: Option<i64>,
    pub complete_time: Option<i64>,
    pub cancel_time: Option<i64>,
    pub update_time: i64,
}

impl Notification {
    /// A notification accepted at `now`, in status CREATED, with the
    /// rendered content; options (reference, batch, schedule, ...) are set
    /// by the caller.
    pub fn accepted(
        agency_id: &str,
        environment: Environment,
        template: &Template,
        recipient: String,
        rendering: Rendering,
        now: i64,
    ) -> Self {
        let (subject, body, html_body, fragment_count) = match rendering {
            Rendering::Email(email) => (email.subject, email.text, email.html, 0),
            Rendering::Sms { body, size } => (
                String::new(),
                body,
                String::new(),
                i32::try_from(size.fragments).unwrap_or(i32::MAX),
            ),
        };
        Self {
            notification_id: atiende_platform::ids::new_id(NOTIFICATION_ID_PREFIX),
            agency_id: agency_id.to_owned(),
            environment,
            channel: template.draft.channel,
            status: Status::Created,
            template_id: template.template_id.clone(),
            template_version: template.version,
            recipient,
            reference: String::new(),
            batch_id: None,
            subject,
            body,
            html_body,
            fragment_count,
            email_reply_to: String::new(),
            unsubscribe_url: String::new(),
            sender_id: String::new(),
            fallback: None,
            fallback_notification_id: None,
            fallback_for_notification_id: None,
            create_time: now,
            scheduled_time: None,
            send_time: None,
            complete_time: None,
            cancel_time: None,
            update_time: now,
        }
    }
}

/// The SMS an email stands to send if it fails, rendered when the email is
/// accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    pub template_id: String,
    pub template_version: i32,
    pub phone_number: String,
    pub body: String,
    pub fragment_count: i32,
}

/// A status change, as the stream and callbacks report it.
#[derive(Debug, Clone)]
pub struct Event {
    pub seq: i64,
    pub event_id: String,
    pub status: Status,
    pub occur_time: i64,
    pub notification: Notification,
}

/// An email address as sent to: `local@domain`, trimmed, at most 254
/// characters, no spaces, brackets or control characters, a dotted domain.
/// Deliverability is the mail server's to judge.
pub fn parse_email_address(raw: &str) -> Result<String, &'static str> {
    const MESSAGE: &str = "must be an email address such as name@example.cl";
    let address = raw.trim();
    if address.is_empty() || address.chars().count() > 254 {
        return Err(MESSAGE);
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Err(MESSAGE);
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"@".contains(c);
    if local.is_empty()
        || local.len() > 64
        || local.chars().any(bad_char)
        || local.starts_with('.')
        || local.ends_with('.')
        || local.contains("..")
    {
        return Err(MESSAGE);
    }
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_alphanumeric() || c == '-')
    };
    if labels.len() < 2 || !labels.iter().all(label_ok) {
        return Err(MESSAGE);
    }
    Ok(address.to_owned())
}

/// A phone number in E.164: `+`, then 8 to 15 digits, the first not 0.
/// Spaces, dashes, dots and parentheses are dropped first.
pub fn parse_phone_number(raw: &str) -> Result<String, &'static str> {
    const MESSAGE: &str = "must be a phone number in E.164 form, such as +56912345678";
    let compact: String = raw
        .trim()
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let Some(digits) = compact.strip_prefix('+') else {
        return Err(MESSAGE);
    };
    if !(8..=15).contains(&digits.len())
        || !digits.chars().all(|c| c.is_ascii_digit())
        || digits.starts_with('0')
    {
        return Err(MESSAGE);
    }
    Ok(compact)
}

/// What the simulator does with a sandbox notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulated {
    Delivered,
    PermanentFailure,
    TemporaryFailure,
    TechnicalFailure,
}

/// The documented simulator recipients (see notification.proto).
pub fn simulated_outcome(recipient: &str) -> Simulated {
    match recipient.to_ascii_lowercase().as_str() {
        "perm-fail@simulator.invalid" | "+56900000002" => Simulated::PermanentFailure,
        "temp-fail@simulator.invalid" | "+56900000003" => Simulated::TemporaryFailure,
        "tech-fail@simulator.invalid" | "+56900000004" => Simulated::TechnicalFailure,
        _ => Simulated::Delivered,
    }
}

/// Simulator recipients: live agencies may not send to them.
pub fn is_simulator_recipient(recipient: &str) -> bool {
    let lower = recipient.to_ascii_lowercase();
    lower.ends_with("@simulator.invalid") || lower.starts_with("+569000000")
}

/// The notification's status reached by a sandbox outcome.
impl From<Simulated> for Status {
    fn from(outcome: Simulated) -> Self {
        match outcome {
            Simulated::Delivered => Status::Delivered,
            Simulated::PermanentFailure => Status::PermanentFailure,
            Simulated::TemporaryFailure => Status::TemporaryFailure,
            Simulated::TechnicalFailure => Status::TechnicalFailure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_only_created_and_sending_are_in_progress() {
        for status in Status::ALL {
            assert_eq!(Status::parse(status.as_str()), Some(status));
            assert_eq!(
                status.is_final(),
                !matches!(status, Status::Created | Status::Sending)
            );
        }
        assert_eq!(Status::parse("nope"), None);
    }

    #[test]
    fn email_addresses() {
        for ok in [
            "a@b.cl",
            " ana.perez+tramite@municipalidad.cl ",
            "x@sub.example.com",
            "ñandú@correo.cl",
        ] {
            assert!(parse_email_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "a",
            "a@b",
            "@b.cl",
            "a@.cl",
            "a b@c.cl",
            "a@b..cl",
            "<a@b.cl>",
            "a@b.cl\r\nBcc: x@y.cl",
            ".a@b.cl",
            "a@-b.cl",
        ] {
            assert!(parse_email_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phone_numbers() {
        assert_eq!(
            parse_phone_number("+56 9 1234 5678"),
            Ok("+56912345678".into())
        );
        assert_eq!(
            parse_phone_number("+1 (555) 010-9999"),
            Ok("+15550109999".into())
        );
        for bad in [
            "",
            "56912345678",
            "+0123456789",
            "+5691234",
            "+56912345678901234",
            "+56a12345678",
        ] {
            assert!(parse_phone_number(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn simulator_recipients() {
        assert_eq!(simulated_outcome("someone@x.cl"), Simulated::Delivered);
        assert_eq!(
            simulated_outcome("Perm-Fail@simulator.invalid"),
            Simulated::PermanentFailure
        );
        assert_eq!(
            simulated_outcome("+56900000003"),
            Simulated::TemporaryFailure
        );
        assert!(is_simulator_recipient("tech-fail@simulator.invalid"));
        assert!(!is_simulator_recipient("+56912345678"));
    }
}
