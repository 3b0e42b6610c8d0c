//! Card data as the payer types it, and what of it may be kept.
//!
//! PCI DSS: the full number (PAN) and the CVC are never stored or logged.
//! [`CardNumber`] and [`Cvc`] have no `Display` and a redacting `Debug`, so
//! a stray `{:?}` in a log line prints nothing sensitive; only
//! [`CardSummary`] (brand, first six, last four, expiry, name) is persisted.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CardBrand {
    Visa,
    Mastercard,
    AmericanExpress,
    DinersClub,
    Discover,
    Jcb,
    UnionPay,
    Maestro,
    Unknown,
}

impl CardBrand {
    pub const ALL: [CardBrand; 9] = [
        Self::Visa,
        Self::Mastercard,
        Self::AmericanExpress,
        Self::DinersClub,
        Self::Discover,
        Self::Jcb,
        Self::UnionPay,
        Self::Maestro,
        Self::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Visa => "visa",
            Self::Mastercard => "mastercard",
            Self::AmericanExpress => "american_express",
            Self::DinersClub => "diners_club",
            Self::Discover => "discover",
            Self::Jcb => "jcb",
            Self::UnionPay => "unionpay",
            Self::Maestro => "maestro",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.as_str() == raw)
    }

    /// The brand from the number's leading digits (issuer identification
    /// number ranges), checked most specific first.
    fn of(digits: &str) -> Self {
        let prefix =
            |n: usize| -> u32 { digits.get(..n).and_then(|p| p.parse().ok()).unwrap_or(0) };
        let (p1, p2, p3, p4) = (prefix(1), prefix(2), prefix(3), prefix(4));
        if matches!(p2, 34 | 37) {
            Self::AmericanExpress
        } else if (300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39) {
            Self::DinersClub
        } else if (3528..=3589).contains(&p4) {
            Self::Jcb
        } else if p1 == 4 {
            Self::Visa
        } else if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) {
            Self::Mastercard
        } else if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 {
            Self::Discover
        } else if p2 == 62 {
            Self::UnionPay
        } else if matches!(p2, 50 | 56..=58) || p1 == 6 {
            Self::Maestro
        } else {
            Self::Unknown
        }
    }
}

/// A card number that passed the Luhn check: 12 to 19 digits.
#[derive(Clone, PartialEq, Eq)]
pub struct CardNumber(String);

impl fmt::Debug for CardNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CardNumber(REDACTED)")
    }
}

impl CardNumber {
    /// Digits, with spaces allowed between them. The error never echoes
    /// the input.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let digits: String = raw.chars().filter(|c| *c != ' ').collect();
        if digits.is_empty() {
            return Err("is required".to_owned());
        }
        if !(12..=19).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err("must be 12 to 19 digits".to_owned());
        }
        if !luhn_valid(&digits) {
            return Err("is not a valid card number (check digit)".to_owned());
        }
        Ok(Self(digits))
    }

    pub fn brand(&self) -> CardBrand {
        CardBrand::of(&self.0)
    }

    pub fn first_six(&self) -> &str {
        self.0.get(..6).unwrap_or_default()
    }

    pub fn last_four(&self) -> &str {
        self.0
            .get(self.0.len().saturating_sub(4)..)
            .unwrap_or_default()
    }

    /// For a card gateway only: the full number. Greppable on purpose.
    pub fn expose_digits(&self) -> &str {
        &self.0
    }
}

/// The Luhn (mod 10) check digit test.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0_u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        let Some(d) = char::from(b).to_digit(10) else {
            return false;
        };
        sum += if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 { doubled - 9 } else { doubled }
        } else {
            d
        };
    }
    sum.is_multiple_of(10)
}

/// A card verification code: 3 digits, 4 for American Express.
#[derive(Clone, PartialEq, Eq)]
pub struct Cvc(String);

impl fmt::Debug for Cvc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Cvc(REDACTED)")
    }
}

impl Cvc {
    pub fn parse(raw: &str, brand: CardBrand) -> Result<Self, String> {
        let len = if brand == CardBrand::AmericanExpress {
            4
        } else {
            3
        };
        if raw.len() == len && raw.bytes().all(|b| b.is_ascii_digit()) {
            Ok(Self(raw.to_owned()))
        } else {
            Err(format!("must be {len} digits for this card"))
        }
    }

    pub fn expose_digits(&self) -> &str {
        &self.0
    }
}

/// A card's expiry month, not in the past.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    pub month: u32,
    pub year: i32,
}

impl Expiry {
    /// Valid through the end of `month`/`year`; `now_micros` says which
    /// month it is (UTC).
    pub fn parse(month: i32, year: i32, now_micros: i64) -> Result<Self, (&'static str, String)> {
        let month = u32::try_from(month)
            .ok()
            .filter(|m| (1..=12).contains(m))
            .ok_or(("expiry_month", "must be 1 to 12".to_owned()))?;
        if !(1000..=9999).contains(&year) {
            return Err(("expiry_year", "must be four digits".to_owned()));
        }
        let (this_year, this_month) = year_month(now_micros);
        if (year, month) < (this_year, this_month) {
            return Err(("expiry_year", "the card has expired".to_owned()));
        }
        Ok(Self { month, year })
    }
}

/// The UTC year and month of a time in microseconds since the epoch
/// (Howard Hinnant's civil-from-days).
pub fn year_month(micros: i64) -> (i32, u32) {
    let days = micros.div_euclid(86_400_000_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u32::try_from(month).unwrap_or(1),
    )
}

/// What is kept of a card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CardSummary {
    pub brand: CardBrand,
    pub first_six: String,
    pub last_four: String,
    pub expiry: Expiry,
    pub cardholder_name: String,
}

/// The card step's input, parsed: what a gateway is given.
#[derive(Debug, Clone)]
pub struct CardSubmission {
    pub number: CardNumber,
    pub cvc: Cvc,
    pub expiry: Expiry,
    pub cardholder_name: String,
}

impl CardSubmission {
    pub fn summary(&self) -> CardSummary {
        CardSummary {
            brand: self.number.brand(),
            first_six: self.number.first_six().to_owned(),
            last_four: self.number.last_four().to_owned(),
            expiry: self.expiry,
            cardholder_name: self.cardholder_name.clone(),
        }
    }
}

/// The cardholder name as typed: 1 to 255 characters, no control
/// characters.
pub fn parse_cardholder_name(raw: &str) -> Result<String, String> {
    let trimmed = raw.trim();
    if trimmed.is_empty() || trimmed.chars().count() > 255 || trimmed.chars().any(char::is_control)
    {
        Err("must be 1 to 255 characters, without control characters".to_owned())
    } else {
        Ok(trimmed.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_cards_and_refuses_a_changed_digit() {
        for number in [
            "4242424242424242",
            "5555555555554444",
            "378282246310005",
            "4000000000000002",
            "6011111111111117",
        ] {
            assert!(luhn_valid(number), "{number}");
        }
        assert!(!luhn_valid("4242424242424241"));
        assert!(!luhn_valid("42424242x2424242"));
        assert!(CardNumber::parse("4242 4242 4242 4241").is_err());
        assert!(CardNumber::parse("4242").is_err());
        assert!(CardNumber::parse("").is_err());
    }

    #[test]
    fn brands_come_from_the_leading_digits() {
        let brand = |n: &str| CardNumber::parse(n).unwrap().brand();
        assert_eq!(brand("4242 4242 4242 4242"), CardBrand::Visa);
        assert_eq!(brand("5555555555554444"), CardBrand::Mastercard);
        assert_eq!(brand("2223003122003222"), CardBrand::Mastercard);
        assert_eq!(brand("378282246310005"), CardBrand::AmericanExpress);
        assert_eq!(brand("30569309025904"), CardBrand::DinersClub);
        assert_eq!(brand("6011111111111117"), CardBrand::Discover);
        assert_eq!(brand("3566002020360505"), CardBrand::Jcb);
        assert_eq!(brand("6200000000000005"), CardBrand::UnionPay);
        assert_eq!(brand("6759649826438453"), CardBrand::Maestro);
    }

    #[test]
    fn only_first_six_and_last_four_are_kept_and_nothing_leaks_in_debug() {
        let number = CardNumber::parse("4242 4242 4242 4242").unwrap();
        let submission = CardSubmission {
            cvc: Cvc::parse("123", number.brand()).unwrap(),
            number,
            expiry: Expiry {
                month: 12,
                year: 2099,
            },
            cardholder_name: "Ana Pérez".into(),
        };
        let summary = submission.summary();
        assert_eq!(
            (summary.first_six.as_str(), summary.last_four.as_str()),
            ("424242", "4242")
        );
        let debug = format!("{submission:?}");
        assert!(!debug.contains("4242424242424242"), "{debug}");
        assert!(!debug.contains("123"), "{debug}");
    }

    #[test]
    fn cvc_length_depends_on_the_brand() {
        assert!(Cvc::parse("123", CardBrand::Visa).is_ok());
        assert!(Cvc::parse("1234", CardBrand::Visa).is_err());
        assert!(Cvc::parse("1234", CardBrand::AmericanExpress).is_ok());
        assert!(Cvc::parse("12a", CardBrand::Visa).is_err());
    }

    #[test]
    fn expiry_is_checked_against_the_current_month() {
        // 2026-11-22T12:00:00Z
        let now = 1_795_348_800_000_000;
        assert_eq!(year_month(now), (2026, 11));
        assert_eq!(year_month(0), (1970, 1));
        assert!(Expiry::parse(11, 2026, now).is_ok());
        assert_eq!(Expiry::parse(10, 2026, now).unwrap_err().0, "expiry_year");
        assert_eq!(Expiry::parse(13, 2030, now).unwrap_err().0, "expiry_month");
        assert_eq!(Expiry::parse(1, 30, now).unwrap_err().0, "expiry_year");
    }
}
