//! Citizens: who they are (national id, names), how to reach them, how far
//! their identity is assured, and whether their account may be used.

use atiende_platform::auth::Environment;

use crate::domain::national_id::NationalId;

pub const CITIZEN_ID_PREFIX: &str = "ctz";
const MAX_NAME_CHARS: usize = 100;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_EVIDENCE_CHARS: usize = 200;

/// Levels of assurance, in order: `Low` (password), `Substantial`
/// (password and a second factor), `High` (substantial, and the identity
/// proofed by an agency).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AssuranceLevel {
    Low,
    Substantial,
    High,
}

impl AssuranceLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Substantial => "substantial",
            Self::High => "high",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "low" => Some(Self::Low),
            "substantial" => Some(Self::Substantial),
            "high" => Some(Self::High),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CitizenState {
    Active,
    Disabled,
}

impl CitizenState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Disabled => "disabled",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(Self::Active),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// Given or family names: 1 to 100 characters, no control characters.
#[derive(Clone, PartialEq, Eq)]
pub struct PersonName(String);

impl PersonName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("is required".to_owned());
        }
        if trimmed.chars().count() > MAX_NAME_CHARS {
            return Err(format!("must be at most {MAX_NAME_CHARS} characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PersonName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PersonName(..)")
    }
}

/// An email address: one `@`, a non-empty local part, a domain with a dot,
/// no white space; the domain is lower-cased. Deliverability is proved by
/// the verification code, not by parsing.
#[derive(Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        const FORM: &str = "must be an email address such as nombre@ejemplo.cl";
        let trimmed = raw.trim();
        if trimmed.chars().count() > MAX_EMAIL_CHARS {
            return Err(format!("must be at most {MAX_EMAIL_CHARS} characters"));
        }
        let (local, domain) = trimmed.rsplit_once('@').ok_or_else(|| FORM.to_owned())?;
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty()
            || !domain_ok
            || trimmed
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
            || local.contains('@')
        {
            return Err(FORM.to_owned());
        }
        Ok(Self(format!("{local}@{}", domain.to_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for EmailAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EmailAddress(..)")
    }
}

/// A phone number in E.164: `+`, then 8 to 15 digits, the first not 0.
/// Spaces, dashes and brackets typed between digits are dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    pub fn parse(raw: &str) -> Result<Self, String> {
        const FORM: &str = "must be an E.164 number such as +56912345678";
        let compact: String = raw
            .trim()
            .chars()
            .filter(|c| !matches!(c, ' ' | '-' | '(' | ')'))
            .collect();
        let digits = compact.strip_prefix('+').ok_or_else(|| FORM.to_owned())?;
        let valid = (8..=15).contains(&digits.len())
            && digits.bytes().all(|b| b.is_ascii_digit())
            && !digits.starts_with('0');
        if !valid {
            return Err(FORM.to_owned());
        }
        Ok(Self(compact))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for PhoneNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PhoneNumber(..)")
    }
}

/// A reference to proofing evidence held by the agency (a case number, a
/// document id): 1 to 200 printable characters. Not the evidence itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceReference(String);

impl EvidenceReference {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("is required".to_owned());
        }
        if trimmed.chars().count() > MAX_EVIDENCE_CHARS {
            return Err(format!("must be at most {MAX_EVIDENCE_CHARS} characters"));
        }
        if trimmed.chars().any(char::is_control) {
            return Err("must not contain control characters".to_owned());
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who attested a level of assurance, and on what evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proofing {
    pub agency_id: String,
    pub evidence: EvidenceReference,
    pub time: i64,
}

/// A citizen's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Citizen {
    pub citizen_id: String,
    /// Sandbox citizens are test data of sandbox clients; live callers
    /// never see them, nor sandbox callers live ones.
    pub environment: Environment,
    pub national_id: NationalId,
    pub given_names: PersonName,
    pub family_names: PersonName,
    pub email: EmailAddress,
    pub email_verified: bool,
    pub phone: Option<PhoneNumber>,
    pub assurance_level: AssuranceLevel,
    pub proofing: Option<Proofing>,
    pub state: CitizenState,
    /// The agency that registered the citizen: it alone sees and changes
    /// the contact details.
    pub registered_by: String,
    pub has_password: bool,
    pub has_second_factor: bool,
    pub create_time: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(
            PersonName::parse("  María José ").unwrap().as_str(),
            "María José"
        );
        assert!(PersonName::parse(" ").is_err());
        assert!(PersonName::parse(&"a".repeat(101)).is_err());
        assert!(PersonName::parse("a\u{7}b").is_err());
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        assert_eq!(
            EmailAddress::parse(" Ana.Perez@Ejemplo.CL ")
                .unwrap()
                .as_str(),
            "Ana.Perez@ejemplo.cl"
        );
        for bad in [
            "",
            "ana",
            "ana@",
            "@ejemplo.cl",
            "ana@ejemplo",
            "ana @ejemplo.cl",
            "ana@.cl",
            "ana@ejemplo..cl",
            "a@b@c.cl",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn phone_numbers_are_e164() {
        assert_eq!(
            PhoneNumber::parse("+56 9 1234 5678").unwrap().as_str(),
            "+56912345678"
        );
        for bad in [
            "56912345678",
            "+0912345678",
            "+569",
            "+5691234567890123",
            "+56-9-abc",
        ] {
            assert!(PhoneNumber::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn levels_are_ordered() {
        assert!(AssuranceLevel::Low < AssuranceLevel::Substantial);
        assert!(AssuranceLevel::Substantial < AssuranceLevel::High);
        assert_eq!(AssuranceLevel::parse("high"), Some(AssuranceLevel::High));
        assert!(EvidenceReference::parse("").is_err());
        assert_eq!(
            EvidenceReference::parse(" exp-2026/113 ").unwrap().as_str(),
            "exp-2026/113"
        );
    }
}
