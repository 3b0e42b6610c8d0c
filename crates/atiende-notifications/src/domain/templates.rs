//! Stored templates: their content, validated, and how a version renders.

use super::email::{self, RenderedEmail};
use super::sms::SmsSize;
use super::template::{Personalisation, Problems, TemplateText, fill, to_plain};

pub const TEMPLATE_ID_PREFIX: &str = "tpl";
const MAX_NAME_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 1000;
const MAX_SUBJECT_CHARS: usize = 200;
const MAX_EMAIL_BODY_CHARS: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Email,
    Sms,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "email" => Some(Self::Email),
            "sms" => Some(Self::Sms),
            _ => None,
        }
    }
}

/// A field of a draft that is not acceptable, and why.
pub type DraftViolation = (&'static str, String);

/// Template content, validated: what a create or update stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateDraft {
    pub channel: Channel,
    pub name: String,
    pub description: String,
    pub subject: String,
    pub body: String,
}

impl TemplateDraft {
    /// Validates every field; the error lists every violation.
    pub fn parse(
        channel: Channel,
        name: &str,
        description: &str,
        subject: &str,
        body: &str,
    ) -> Result<Self, Vec<DraftViolation>> {
        let mut violations = Vec::new();
        let name = name.trim();
        if name.is_empty() {
            violations.push(("name", "must not be empty".to_owned()));
        } else if name.chars().count() > MAX_NAME_CHARS || name.chars().any(char::is_control) {
            violations.push((
                "name",
                format!("must be at most {MAX_NAME_CHARS} characters, without control characters"),
            ));
        }
        if description.chars().count() > MAX_DESCRIPTION_CHARS || has_stray_controls(description) {
            violations.push((
                "description",
                format!(
                    "must be at most {MAX_DESCRIPTION_CHARS} characters, without control characters"
                ),
            ));
        }
        violations.extend(Self::content_violations(channel, subject, body));
        if violations.is_empty() {
            Ok(Self {
                channel,
                name: name.to_owned(),
                description: description.to_owned(),
                subject: subject.trim().to_owned(),
                body: body.to_owned(),
            })
        } else {
            Err(violations)
        }
    }

    /// The checks on subject and body alone (also for previews of unsaved
    /// content).
    pub fn content_violations(channel: Channel, subject: &str, body: &str) -> Vec<DraftViolation> {
        let mut violations = Vec::new();
        if has_stray_controls(body) {
            violations.push((
                "body",
                "must not contain control characters other than line breaks and tabs".to_owned(),
            ));
            if channel == Channel::Sms && !subject.is_empty() {
                violations.push(("subject", "must be empty for SMS templates".to_owned()));
            }
            return violations;
        }
        match channel {
            Channel::Email => {
                let subject = subject.trim();
                if subject.is_empty() {
                    violations.push(("subject", "is required for email templates".to_owned()));
                } else if subject.chars().count() > MAX_SUBJECT_CHARS
                    || subject.chars().any(char::is_control)
                {
                    violations.push((
                        "subject",
                        format!("must be one line of at most {MAX_SUBJECT_CHARS} characters"),
                    ));
                }
                if body.trim().is_empty() {
                    violations.push(("body", "must not be empty".to_owned()));
                } else if body.chars().count() > MAX_EMAIL_BODY_CHARS {
                    violations.push((
                        "body",
                        format!("must be at most {MAX_EMAIL_BODY_CHARS} characters"),
                    ));
                }
            }
            Channel::Sms => {
                if !subject.is_empty() {
                    violations.push(("subject", "must be empty for SMS templates".to_owned()));
                }
                if body.trim().is_empty() {
                    violations.push(("body", "must not be empty".to_owned()));
                } else if SmsSize::of(body).is_too_long() {
                    violations.push((
                        "body",
                        format!(
                            "must fit in {} SMS characters",
                            super::sms::MAX_SMS_CHARACTERS
                        ),
                    ));
                }
            }
        }
        violations
    }

    /// The placeholder names of subject and body, in order of first use.
    pub fn placeholders(&self) -> Vec<String> {
        let text = TemplateText::parse(&format!("{}\n{}", self.subject, self.body));
        text.placeholders()
    }
}

/// Control characters other than line breaks and tabs (NUL above all,
/// which PostgreSQL refuses to store).
fn has_stray_controls(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
}

/// One version of a stored template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub template_id: String,
    pub version: i32,
    pub agency_id: String,
    pub draft: TemplateDraft,
    /// When version 1 was created (µs).
    pub create_time: i64,
    /// When this version was created (µs).
    pub update_time: i64,
}

/// A template rendered with personalisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendering {
    Email(RenderedEmail),
    Sms { body: String, size: SmsSize },
}

/// Renders content; `problems` says what personalisation lacked (a send
/// refuses them; a preview reports them).
pub fn render(
    channel: Channel,
    subject: &str,
    body: &str,
    values: &Personalisation,
) -> (Rendering, Problems) {
    let mut problems = Problems::default();
    let rendering = match channel {
        Channel::Email => Rendering::Email(email::render(subject, body, values, &mut problems)),
        Channel::Sms => {
            let text = TemplateText::parse(body);
            let body = to_plain(&fill(text.segments(), values, true, &mut problems));
            let size = SmsSize::of(&body);
            Rendering::Sms { body, size }
        }
    };
    (rendering, problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drafts_report_every_violation() {
        let errors =
            TemplateDraft::parse(Channel::Email, " ", &"d".repeat(1001), "", "").unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["name", "description", "subject", "body"]);
        let errors =
            TemplateDraft::parse(Channel::Sms, "n", "", "Asunto", &"a".repeat(919)).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| *f).collect();
        assert_eq!(fields, ["subject", "body"]);
        assert!(TemplateDraft::parse(Channel::Sms, "n", "", "", "Hola ((nombre))").is_ok());
    }
}
