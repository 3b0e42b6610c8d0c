//! Fee schedules: a percentage of the amount plus a fixed amount per
//! currency.
//!
//! Rounding, documented for agencies in `docs/payments.md`: the percentage
//! part is computed exactly with `rust_decimal` in minor units and rounded
//! to a whole minor unit half away from zero (0.5 rounds up), then the
//! fixed part is added; the fee is never more than the amount, so the net
//! amount is never negative.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};

use crate::domain::money::{Currency, Money};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeSchedule {
    /// Percent of the amount: `1.5` is 1.5 %.
    percent: Decimal,
    /// Fixed fee in minor units, by currency code; absent means zero.
    fixed_minor: BTreeMap<String, i64>,
}

impl FeeSchedule {
    pub fn free() -> Self {
        Self {
            percent: Decimal::ZERO,
            fixed_minor: BTreeMap::new(),
        }
    }

    /// A percentage from 0 to 100 written as a decimal string ("1.5"), and
    /// non-negative fixed fees in known currencies.
    pub fn parse(percent: &str, fixed_minor: &BTreeMap<String, i64>) -> Result<Self, String> {
        let percent = Decimal::from_str(percent.trim())
            .map_err(|_| format!("fee percent {percent:?} is not a decimal number"))?;
        if percent < Decimal::ZERO || percent > Decimal::ONE_HUNDRED {
            return Err("fee percent must be from 0 to 100".to_owned());
        }
        for (code, fixed) in fixed_minor {
            Currency::parse(code).map_err(|e| format!("fixed fee currency {code:?} {e}"))?;
            if *fixed < 0 {
                return Err(format!("fixed fee in {code} must not be negative"));
            }
        }
        Ok(Self {
            percent,
            fixed_minor: fixed_minor.clone(),
        })
    }

    /// The fee of a (positive) amount, in its currency.
    pub fn fee(&self, amount: Money) -> Money {
        let proportional = (Decimal::from(amount.minor) * self.percent / Decimal::ONE_HUNDRED)
            .round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero);
        let proportional = i64::try_from(proportional).unwrap_or(amount.minor);
        let fixed = self
            .fixed_minor
            .get(amount.currency.code())
            .copied()
            .unwrap_or(0);
        let fee = proportional
            .saturating_add(fixed)
            .clamp(0, amount.minor.max(0));
        Money::new(amount.currency, fee)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(percent: &str, fixed: &[(&str, i64)]) -> FeeSchedule {
        let fixed = fixed.iter().map(|(c, m)| ((*c).to_owned(), *m)).collect();
        FeeSchedule::parse(percent, &fixed).unwrap()
    }

    fn money(code: &str, minor: i64) -> Money {
        Money::new(Currency::parse(code).unwrap(), minor)
    }

    #[test]
    fn percentage_rounds_half_away_from_zero_then_adds_the_fixed_part() {
        let s = schedule("1.5", &[("CLP", 100)]);
        // 10,000 CLP × 1.5 % = 150, + 100.
        assert_eq!(s.fee(money("CLP", 10_000)).minor, 250);
        // 1,234 CLP × 1.5 % = 18.51 → 19, + 100.
        assert_eq!(s.fee(money("CLP", 1_234)).minor, 119);
        // 100 CLP × 1.5 % = 1.5 → 2 (midpoint rounds up), + 100, capped at 100.
        assert_eq!(s.fee(money("CLP", 100)).minor, 100);
        // No fixed part in USD: 1,000 × 1.5 % = 15.
        assert_eq!(s.fee(money("USD", 1_000)).minor, 15);
        let half = schedule("2.5", &[]);
        assert_eq!(half.fee(money("USD", 100)).minor, 3); // 2.5 → 3
        assert_eq!(half.fee(money("USD", 140)).minor, 4); // 3.5 → 4
        assert_eq!(half.fee(money("USD", 120)).minor, 3); // 3.0
        assert_eq!(half.fee(money("USD", 1)).minor, 0); // 0.025 → 0
    }

    #[test]
    fn the_fee_never_exceeds_the_amount_even_at_the_largest_amounts() {
        let s = schedule("100", &[("USD", 50)]);
        assert_eq!(s.fee(money("USD", 30)).minor, 30);
        let max = schedule("3", &[("USD", i64::MAX)]);
        assert_eq!(max.fee(money("USD", i64::MAX)).minor, i64::MAX);
        assert_eq!(FeeSchedule::free().fee(money("CLF", 12_345)).minor, 0);
    }

    #[test]
    fn bad_schedules_are_refused() {
        let none = BTreeMap::new();
        assert!(FeeSchedule::parse("abc", &none).is_err());
        assert!(FeeSchedule::parse("-1", &none).is_err());
        assert!(FeeSchedule::parse("100.1", &none).is_err());
        let neg = BTreeMap::from([("CLP".to_owned(), -1)]);
        assert!(FeeSchedule::parse("1", &neg).is_err());
        let unknown = BTreeMap::from([("XYZ".to_owned(), 1)]);
        assert!(FeeSchedule::parse("1", &unknown).is_err());
    }
}
