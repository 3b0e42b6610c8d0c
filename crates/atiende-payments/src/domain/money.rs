//! Currencies (ISO 4217, with their exponents) and amounts in integer minor
//! units. Floats never appear: major-unit display goes through
//! `rust_decimal`.

use rust_decimal::Decimal;

/// A currency Atiende accepts, with its ISO 4217 exponent: the number of
/// minor units per major unit is `10^exponent` (CLP 0, USD 2, CLF 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

/// The currencies the service knows. ISO 4217 lists many more; adding one
/// is adding a line, with the exponent ISO 4217 gives it.
const CURRENCIES: &[(&str, u32)] = &[
    ("ARS", 2),
    ("BHD", 3),
    ("BOB", 2),
    ("BRL", 2),
    ("CAD", 2),
    ("CLF", 4),
    ("CLP", 0),
    ("COP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("JPY", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("PEN", 2),
    ("PYG", 0),
    ("USD", 2),
    ("UYU", 2),
];

impl Currency {
    /// A known ISO 4217 code, upper case.
    pub fn parse(code: &str) -> Result<Self, String> {
        if code.is_empty() {
            return Err("is required: a three-letter ISO 4217 code".to_owned());
        }
        CURRENCIES
            .iter()
            .find(|(known, _)| *known == code)
            .map(|&(code, exponent)| Self { code, exponent })
            .ok_or_else(|| "must be a supported ISO 4217 currency code in upper case".to_owned())
    }

    pub fn code(self) -> &'static str {
        self.code
    }

    pub fn exponent(self) -> u32 {
        self.exponent
    }
}

/// An amount: integer minor units of a currency. Signed, because ledger
/// entries are; payment and refund amounts are checked positive where they
/// are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub currency: Currency,
    pub minor: i64,
}

impl Money {
    pub fn new(currency: Currency, minor: i64) -> Self {
        Self { currency, minor }
    }

    /// A positive amount in a known currency. Violations are reported per
    /// sub-field (`currency_code`, `amount_minor`).
    pub fn parse_positive(code: &str, minor: i64) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let currency = Currency::parse(code).map_err(|e| problems.push(("currency_code", e)));
        if minor <= 0 {
            problems.push((
                "amount_minor",
                "must be positive, in minor units of the currency".to_owned(),
            ));
        }
        match currency {
            Ok(currency) if problems.is_empty() => Ok(Self { currency, minor }),
            _ => Err(problems),
        }
    }

    /// The amount in major units, exact: 1500 USD minor is 15.00.
    pub fn major(self) -> Decimal {
        Decimal::new(self.minor, self.currency.exponent)
    }

    /// The amount from major units when it has no more decimals than the
    /// currency allows: 15.5 USD is 1550; 1.5 CLP is refused.
    pub fn from_major(currency: Currency, major: Decimal) -> Option<Self> {
        let scaled = major.checked_mul(Decimal::from(10_i64.checked_pow(currency.exponent)?))?;
        if !scaled.fract().is_zero() {
            return None;
        }
        let minor = i64::try_from(scaled.trunc()).ok()?;
        Some(Self { currency, minor })
    }
}

impl std::fmt::Display for Money {
    /// `15.00 USD`, `1500 CLP`, `1.2345 CLF`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.major(), self.currency.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponents_follow_iso_4217() {
        for (code, exponent) in [("CLP", 0), ("USD", 2), ("EUR", 2), ("CLF", 4), ("KWD", 3)] {
            assert_eq!(
                Currency::parse(code).unwrap().exponent(),
                exponent,
                "{code}"
            );
        }
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("XXX").is_err());
        assert!(Currency::parse("").is_err());
    }

    #[test]
    fn major_units_are_exact() {
        let usd = Currency::parse("USD").unwrap();
        let clp = Currency::parse("CLP").unwrap();
        let clf = Currency::parse("CLF").unwrap();
        assert_eq!(Money::new(usd, 1500).to_string(), "15.00 USD");
        assert_eq!(Money::new(clp, 1500).to_string(), "1500 CLP");
        assert_eq!(Money::new(clf, 12345).to_string(), "1.2345 CLF");
        assert_eq!(
            Money::from_major(usd, Decimal::new(155, 1)),
            Some(Money::new(usd, 1550))
        );
        // More decimals than the currency has: refused, never rounded.
        assert_eq!(Money::from_major(clp, Decimal::new(15, 1)), None);
        assert_eq!(Money::from_major(usd, Decimal::new(1001, 3)), None);
    }

    #[test]
    fn positive_amounts_in_known_currencies_only() {
        assert!(Money::parse_positive("CLP", 1).is_ok());
        let fields = |r: Result<Money, Vec<(&'static str, String)>>| -> Vec<&'static str> {
            r.unwrap_err().into_iter().map(|(f, _)| f).collect()
        };
        assert_eq!(fields(Money::parse_positive("CLP", 0)), ["amount_minor"]);
        assert_eq!(fields(Money::parse_positive("CLP", -5)), ["amount_minor"]);
        assert_eq!(
            fields(Money::parse_positive("ZZZ", -5)),
            ["currency_code", "amount_minor"]
        );
    }
}
