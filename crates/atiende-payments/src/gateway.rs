//! Card gateways: the provider that authorises a card and returns money.
//!
//! [`CardGateway`] is what a connector to a real acquirer implements (see
//! `docs/payments.md`, "Adding a gateway"). The only one today is
//! [`SandboxGateway`], which sandbox payments always use and which decides
//! by the documented test card numbers. A gateway gets the full card
//! number and CVC for the duration of one call, and must not keep or log
//! them.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use atiende_platform::auth::BoxFuture;

use crate::domain::card::{CardSubmission, CardSummary};
use crate::domain::money::Money;

/// What the provider answered to an authorisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authorisation {
    Authorised,
    /// The issuer declined; the message is for support, never personal.
    Declined(&'static str),
    /// The provider failed; no money was taken.
    ProviderError(&'static str),
}

/// What the provider answered to a refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundOutcome {
    Succeeded,
    Failed,
}

/// What the provider answered to a void (the release of an
/// authorisation that will not be captured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidOutcome {
    /// The hold is released (also when it already was): the payer is not
    /// charged.
    Voided,
    /// The provider could not be reached or failed; the hold may still be
    /// there, and the void must be tried again.
    Failed,
}

pub trait CardGateway: Send + Sync {
    /// Authorises `amount` on the card (and captures it, unless the
    /// payment captures later).
    fn authorise<'a>(
        &'a self,
        payment_id: &'a str,
        card: &'a CardSubmission,
        amount: Money,
    ) -> BoxFuture<'a, Authorisation>;

    /// What became of the authorisation of `payment_id`, asked when the
    /// process that submitted the card stopped before the answer was
    /// recorded.
    fn authorisation<'a>(
        &'a self,
        payment_id: &'a str,
        card: &'a CardSummary,
        amount: Money,
    ) -> BoxFuture<'a, Authorisation>;

    /// Returns `amount` of a captured payment to the card it was paid
    /// with (what is kept of it).
    fn refund<'a>(
        &'a self,
        payment_id: &'a str,
        card: Option<&'a CardSummary>,
        refund_id: &'a str,
        amount: Money,
    ) -> BoxFuture<'a, RefundOutcome>;

    /// Releases the authorisation of `payment_id` (a payment authorised
    /// for a delayed capture that is cancelled or expires). Must be
    /// idempotent: voiding a voided authorisation answers `Voided`.
    fn void<'a>(&'a self, payment_id: &'a str, amount: Money) -> BoxFuture<'a, VoidOutcome>;

    /// Whether an authorisation touches nothing outside this process, so
    /// that a process stopping during the call leaves nothing anywhere to
    /// recover. The card's submission and the answer are then recorded in
    /// one write. Otherwise (the default, and the only right answer for a
    /// connector to an acquirer) the submission is recorded before the
    /// gateway is asked, so that the recovery job can ask it what became
    /// of an authorisation whose answer was never recorded.
    fn authorises_in_process(&self) -> bool {
        false
    }
}

/// The documented sandbox test cards and what they do.
pub const SANDBOX_TEST_CARDS: &[(&str, Authorisation)] = &[
    ("4242424242424242", Authorisation::Authorised),
    ("5555555555554444", Authorisation::Authorised),
    ("378282246310005", Authorisation::Authorised),
    (
        "4000000000000002",
        Authorisation::Declined("the card was declined"),
    ),
    (
        "4000000000000069",
        Authorisation::Declined("the card has expired"),
    ),
    (
        "4000000000000127",
        Authorisation::Declined("the card's security code is incorrect"),
    ),
    (
        "4000000000000119",
        Authorisation::ProviderError("the card provider failed"),
    ),
    // Pays, but its refunds fail (see REFUNDS_FAIL).
    ("4000000000005126", Authorisation::Authorised),
];

/// The test card whose refunds end in ERROR, by what is kept of it.
const REFUNDS_FAIL: (&str, &str) = ("400000", "5126");

/// Simulated money: decides by test card number; refunds succeed except
/// for the one test card whose refunds fail. Voids succeed (unless
/// [`SandboxGateway::set_voids_fail`] says otherwise) and are remembered,
/// so that tests can check that a hold was released.
///
/// Its answers are computed in process ([`CardGateway::authorises_in_process`]),
/// unless [`SandboxGateway::set_as_if_remote`] makes it behave as a
/// connector to an acquirer would, for the tests of that path.
#[derive(Debug, Default)]
pub struct SandboxGateway {
    voided: Mutex<HashSet<String>>,
    voids_fail: AtomicBool,
    as_if_remote: AtomicBool,
}

impl SandboxGateway {
    /// Whether a card number (digits only) is one of the test cards.
    pub fn is_test_number(digits: &str) -> bool {
        SANDBOX_TEST_CARDS
            .iter()
            .any(|(number, _)| *number == digits)
    }

    /// What a test card does; `None` for any other number.
    pub fn outcome(card: &CardSubmission) -> Option<Authorisation> {
        SANDBOX_TEST_CARDS
            .iter()
            .find(|(number, _)| *number == card.number.expose_digits())
            .map(|(_, outcome)| *outcome)
    }

    /// Whether the authorisation of `payment_id` was voided.
    pub fn was_voided(&self, payment_id: &str) -> bool {
        self.voided
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(payment_id)
    }

    /// Makes every void fail (`true`) or succeed again: the simulated
    /// provider outage that the recovery of voids is tested with.
    pub fn set_voids_fail(&self, fail: bool) {
        self.voids_fail.store(fail, Ordering::SeqCst);
    }

    /// Makes the card step treat this gateway as one outside the process
    /// (`true`): the card's submission is recorded before it is asked.
    pub fn set_as_if_remote(&self, remote: bool) {
        self.as_if_remote.store(remote, Ordering::SeqCst);
    }
}

impl CardGateway for SandboxGateway {
    fn authorise<'a>(
        &'a self,
        _payment_id: &'a str,
        card: &'a CardSubmission,
        _amount: Money,
    ) -> BoxFuture<'a, Authorisation> {
        let outcome =
            Self::outcome(card).unwrap_or(Authorisation::Declined("not a sandbox test card"));
        Box::pin(async move { outcome })
    }

    fn authorisation<'a>(
        &'a self,
        _payment_id: &'a str,
        card: &'a CardSummary,
        _amount: Money,
    ) -> BoxFuture<'a, Authorisation> {
        // The test cards differ in what is kept of them.
        let outcome = SANDBOX_TEST_CARDS
            .iter()
            .find(|(number, _)| {
                number.get(..6) == Some(card.first_six.as_str())
                    && number.get(number.len().saturating_sub(4)..) == Some(card.last_four.as_str())
            })
            .map_or(
                Authorisation::Declined("not a sandbox test card"),
                |(_, outcome)| *outcome,
            );
        Box::pin(async move { outcome })
    }

    fn refund<'a>(
        &'a self,
        _payment_id: &'a str,
        card: Option<&'a CardSummary>,
        _refund_id: &'a str,
        _amount: Money,
    ) -> BoxFuture<'a, RefundOutcome> {
        let fails =
            card.is_some_and(|c| (c.first_six.as_str(), c.last_four.as_str()) == REFUNDS_FAIL);
        let outcome = if fails {
            RefundOutcome::Failed
        } else {
            RefundOutcome::Succeeded
        };
        Box::pin(async move { outcome })
    }

    fn void<'a>(&'a self, payment_id: &'a str, _amount: Money) -> BoxFuture<'a, VoidOutcome> {
        let outcome = if self.voids_fail.load(Ordering::SeqCst) {
            VoidOutcome::Failed
        } else {
            self.voided
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(payment_id.to_owned());
            VoidOutcome::Voided
        };
        Box::pin(async move { outcome })
    }

    fn authorises_in_process(&self) -> bool {
        !self.as_if_remote.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::card::{CardNumber, Cvc, Expiry};

    #[test]
    fn every_test_card_is_a_valid_card_number_and_others_are_unknown() {
        let submission = |n: &str| {
            let number = CardNumber::parse(n).unwrap();
            CardSubmission {
                cvc: Cvc::parse(
                    if number.brand() == crate::domain::card::CardBrand::AmericanExpress {
                        "1234"
                    } else {
                        "123"
                    },
                    number.brand(),
                )
                .unwrap(),
                number,
                expiry: Expiry {
                    month: 1,
                    year: 2099,
                },
                cardholder_name: "A".into(),
            }
        };
        for (number, outcome) in SANDBOX_TEST_CARDS {
            assert_eq!(SandboxGateway::outcome(&submission(number)), Some(*outcome));
            assert!(SandboxGateway::is_test_number(number));
        }
        assert!(!SandboxGateway::is_test_number("6011111111111117"));
        assert_eq!(
            SandboxGateway::outcome(&submission("6011111111111117")),
            None
        );
    }
}
