//! National identity numbers. Chile's RUN first; the scheme is explicit so
//! that others fit beside it.

use std::fmt;

/// Which numbering a national id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NationalIdScheme {
    /// Chile's Rol Único Nacional.
    ClRun,
}

impl NationalIdScheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClRun => "cl-run",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "cl-run" => Some(Self::ClRun),
            _ => None,
        }
    }
}

/// A national id, valid for its scheme and normalised (a RUN is stored as
/// `12345678-5`, digits, a dash and an upper-case check digit).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NationalId {
    scheme: NationalIdScheme,
    value: String,
}

/// Personal data: the `Debug` form names the scheme only.
impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NationalId({}, ..)", self.scheme.as_str())
    }
}

impl NationalId {
    /// Parses `raw` as typed (surrounding white space allowed). Errors
    /// describe the expected form and never echo the input.
    pub fn parse(scheme: NationalIdScheme, raw: &str) -> Result<Self, String> {
        let value = match scheme {
            NationalIdScheme::ClRun => parse_run(raw.trim())?,
        };
        Ok(Self { scheme, value })
    }

    pub fn scheme(&self) -> NationalIdScheme {
        self.scheme
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

const RUN_FORM: &str = "must be a RUN such as 12.345.678-5 or 12345678-5";
/// RUNs are assigned below 100 million.
const MAX_RUN_DIGITS: usize = 8;

fn parse_run(raw: &str) -> Result<String, String> {
    let (body, check) = raw.rsplit_once('-').ok_or_else(|| RUN_FORM.to_owned())?;
    let check = match check {
        "k" | "K" => 'K',
        d if d.len() == 1 && d.bytes().all(|b| b.is_ascii_digit()) => char::from(d.as_bytes()[0]),
        _ => return Err(RUN_FORM.to_owned()),
    };
    let digits: String = body.chars().filter(|c| *c != '.').collect();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RUN_FORM.to_owned());
    }
    if digits.len() > MAX_RUN_DIGITS {
        return Err("is too long for a RUN".to_owned());
    }
    if digits.starts_with('0') {
        return Err(RUN_FORM.to_owned());
    }
    // Dots, when present, must group thousands exactly: 12.345.678.
    if body.contains('.') && body != group_thousands(&digits) {
        return Err(RUN_FORM.to_owned());
    }
    if run_check_digit(&digits) != Some(check) {
        return Err("has a wrong check digit".to_owned());
    }
    Ok(format!("{digits}-{check}"))
}

fn group_thousands(digits: &str) -> String {
    let mut out = String::with_capacity(digits.len() + 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// The modulo-11 check digit of a RUN's digits: weights 2..7 from the
/// right, `11 - sum % 11`, where 11 is `0` and 10 is `K`.
pub fn run_check_digit(digits: &str) -> Option<char> {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let digit = u32::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        let weight = u32::try_from(i % 6).ok()? + 2;
        sum += digit * weight;
    }
    Some(match 11 - sum % 11 {
        11 => '0',
        10 => 'K',
        d => char::from_digit(d, 10)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(raw: &str) -> Result<String, String> {
        NationalId::parse(NationalIdScheme::ClRun, raw).map(|id| id.value().to_owned())
    }

    #[test]
    fn runs_with_and_without_dots_normalise_alike() {
        assert_eq!(run("12.345.678-5").unwrap(), "12345678-5");
        assert_eq!(run("12345678-5").unwrap(), "12345678-5");
        assert_eq!(run("7.654.321-6").unwrap(), "7654321-6");
        assert_eq!(run("30686957-4").unwrap(), "30686957-4");
        assert_eq!(run("1-9").unwrap(), "1-9");
    }

    #[test]
    fn check_digit_k_in_either_case() {
        assert_eq!(run("10.000.013-K").unwrap(), "10000013-K");
        assert_eq!(run("10000013-k").unwrap(), "10000013-K");
        assert_eq!(run("12345670-k").unwrap(), "12345670-K");
        assert_eq!(run("6-K").unwrap(), "6-K");
    }

    #[test]
    fn wrong_check_digits_are_refused() {
        assert_eq!(run("12.345.678-6").unwrap_err(), "has a wrong check digit");
        assert!(run("12345678-K").is_err());
        assert!(run("10000013-0").is_err());
        assert!(run("7654321-5").is_err());
    }

    #[test]
    fn surrounding_white_space_is_trimmed_inner_is_refused() {
        assert_eq!(run("  12.345.678-5\t").unwrap(), "12345678-5");
        assert!(run("12 345 678-5").is_err());
        assert!(run("12345678 - 5").is_err());
    }

    #[test]
    fn malformed_runs_are_refused() {
        for bad in [
            "",
            "-",
            "12345678",
            "123456785",
            "12.345.678",
            "12,345,678-5",
            "1.2345.678-5",
            "12.345678-5",
            "12345.678-5",
            "012345678-5",
            "01-9",
            "12345678-55",
            "ABC-5",
            "12345678-X",
            "12.345.678--5",
            "+12345678-5",
            "１２３４５６７８-5",
        ] {
            assert!(run(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn too_long_runs_are_refused() {
        assert_eq!(run("123.456.789-2").unwrap_err(), "is too long for a RUN");
        assert!(run("1234567890123-1").is_err());
    }

    #[test]
    fn errors_never_echo_the_input() {
        for bad in ["98.765.432-1", "98765432"] {
            let error = run(bad).unwrap_err();
            assert!(!error.contains("98"), "{error}");
        }
    }

    #[test]
    fn debug_hides_the_number() {
        let id = NationalId::parse(NationalIdScheme::ClRun, "12.345.678-5").unwrap();
        assert!(!format!("{id:?}").contains("345"));
    }
}
