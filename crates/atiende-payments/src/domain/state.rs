//! The payment state machine, kept as data: [`TRANSITIONS`] lists every
//! allowed change of state and the event it emits; anything not listed is
//! refused. The reasons a payment may end without success are stable codes
//! ([`FailureReason`]), each allowed only with the final state it explains.

/// Where a payment is in its life. The string forms are what the database
/// stores; never change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PaymentState {
    Created,
    Started,
    Submitted,
    Capturable,
    Success,
    Failed,
    Cancelled,
    Error,
}

impl PaymentState {
    pub const ALL: [PaymentState; 8] = [
        Self::Created,
        Self::Started,
        Self::Submitted,
        Self::Capturable,
        Self::Success,
        Self::Failed,
        Self::Cancelled,
        Self::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Started => "started",
            Self::Submitted => "submitted",
            Self::Capturable => "capturable",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Final states never change again.
    pub fn is_final(self) -> bool {
        !TRANSITIONS.iter().any(|t| t.from == self)
    }
}

/// Why a payment ended without success. Stable codes: never renumbered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    Rejected,
    Expired,
    CancelledByUser,
    CancelledByAgency,
    ProviderError,
}

impl FailureReason {
    pub const ALL: [FailureReason; 5] = [
        Self::Rejected,
        Self::Expired,
        Self::CancelledByUser,
        Self::CancelledByAgency,
        Self::ProviderError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::CancelledByUser => "cancelled_by_user",
            Self::CancelledByAgency => "cancelled_by_agency",
            Self::ProviderError => "provider_error",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// The one final state this reason explains.
    pub fn state(self) -> PaymentState {
        match self {
            Self::Rejected | Self::Expired | Self::CancelledByUser => PaymentState::Failed,
            Self::CancelledByAgency => PaymentState::Cancelled,
            Self::ProviderError => PaymentState::Error,
        }
    }
}

/// What happened to a payment or to one of its refunds. Also the webhook
/// event types. The string forms are stored; never change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    PaymentCreated,
    PaymentStarted,
    PaymentSubmitted,
    PaymentCapturable,
    PaymentSucceeded,
    PaymentFailed,
    PaymentCancelled,
    PaymentErrored,
    RefundSubmitted,
    RefundSucceeded,
    RefundErrored,
}

impl EventType {
    pub const ALL: [EventType; 11] = [
        Self::PaymentCreated,
        Self::PaymentStarted,
        Self::PaymentSubmitted,
        Self::PaymentCapturable,
        Self::PaymentSucceeded,
        Self::PaymentFailed,
        Self::PaymentCancelled,
        Self::PaymentErrored,
        Self::RefundSubmitted,
        Self::RefundSucceeded,
        Self::RefundErrored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentCreated => "payment_created",
            Self::PaymentStarted => "payment_started",
            Self::PaymentSubmitted => "payment_submitted",
            Self::PaymentCapturable => "payment_capturable",
            Self::PaymentSucceeded => "payment_succeeded",
            Self::PaymentFailed => "payment_failed",
            Self::PaymentCancelled => "payment_cancelled",
            Self::PaymentErrored => "payment_errored",
            Self::RefundSubmitted => "refund_submitted",
            Self::RefundSucceeded => "refund_succeeded",
            Self::RefundErrored => "refund_errored",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }
}

/// One allowed change of state and the event it records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: PaymentState,
    pub to: PaymentState,
    pub event: EventType,
}

const fn t(from: PaymentState, to: PaymentState, event: EventType) -> Transition {
    Transition { from, to, event }
}

use EventType as E;
use PaymentState as S;

/// Every allowed transition. GOV.UK Pay's lifecycle: the payer opens the
/// page (started), submits a card (submitted), the provider authorises
/// (capturable when the agency captures later, else success) or declines
/// (failed), or fails (error). Until success the agency may cancel, and
/// the payer may abandon or let the payment expire (failed).
pub const TRANSITIONS: &[Transition] = &[
    t(S::Created, S::Started, E::PaymentStarted),
    t(S::Created, S::Failed, E::PaymentFailed),
    t(S::Created, S::Cancelled, E::PaymentCancelled),
    t(S::Started, S::Submitted, E::PaymentSubmitted),
    t(S::Started, S::Failed, E::PaymentFailed),
    t(S::Started, S::Cancelled, E::PaymentCancelled),
    t(S::Submitted, S::Capturable, E::PaymentCapturable),
    t(S::Submitted, S::Success, E::PaymentSucceeded),
    t(S::Submitted, S::Failed, E::PaymentFailed),
    t(S::Submitted, S::Error, E::PaymentErrored),
    t(S::Capturable, S::Success, E::PaymentSucceeded),
    t(S::Capturable, S::Failed, E::PaymentFailed),
    t(S::Capturable, S::Cancelled, E::PaymentCancelled),
];

/// A change of state the machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a payment in state {} cannot become {}", from.as_str(), to.as_str())]
pub struct IllegalTransition {
    pub from: PaymentState,
    pub to: PaymentState,
}

/// The event of moving `from` → `to` with `reason`, if the table allows it
/// and the reason fits the target state (a reason exactly for failed,
/// cancelled and error, none otherwise).
pub fn transition(
    from: PaymentState,
    to: PaymentState,
    reason: Option<FailureReason>,
) -> Result<EventType, IllegalTransition> {
    let reason_fits = match reason {
        Some(reason) => reason.state() == to,
        None => !matches!(to, S::Failed | S::Cancelled | S::Error),
    };
    TRANSITIONS
        .iter()
        .find(|t| t.from == from && t.to == to)
        .filter(|_| reason_fits)
        .map(|t| t.event)
        .ok_or(IllegalTransition { from, to })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_state_is_reachable_from_created() {
        let mut reached = BTreeSet::from([S::Created]);
        let mut frontier = vec![S::Created];
        while let Some(state) = frontier.pop() {
            for t in TRANSITIONS.iter().filter(|t| t.from == state) {
                if reached.insert(t.to) {
                    frontier.push(t.to);
                }
            }
        }
        assert_eq!(reached, BTreeSet::from(PaymentState::ALL));
    }

    #[test]
    fn every_transition_not_in_the_table_is_refused() {
        let reasons = std::iter::once(None).chain(FailureReason::ALL.map(Some));
        let mut allowed = 0;
        for from in PaymentState::ALL {
            for to in PaymentState::ALL {
                for reason in reasons.clone() {
                    let listed = TRANSITIONS.iter().any(|t| t.from == from && t.to == to);
                    let fits = reason
                        .map_or(!matches!(to, S::Failed | S::Cancelled | S::Error), |r| {
                            r.state() == to
                        });
                    let outcome = transition(from, to, reason);
                    if listed && fits {
                        allowed += 1;
                        assert!(outcome.is_ok(), "{from:?} -> {to:?} ({reason:?})");
                    } else {
                        assert_eq!(outcome, Err(IllegalTransition { from, to }));
                    }
                }
            }
        }
        // Each failed transition takes three reasons, the others one.
        let failed = TRANSITIONS.iter().filter(|t| t.to == S::Failed).count();
        assert_eq!(allowed, TRANSITIONS.len() + 2 * failed);
    }

    #[test]
    fn final_states_have_no_way_out_and_each_transition_emits_its_event() {
        let finals: Vec<_> = PaymentState::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(finals, [S::Success, S::Failed, S::Cancelled, S::Error]);
        assert_eq!(
            transition(S::Submitted, S::Capturable, None),
            Ok(E::PaymentCapturable)
        );
        assert_eq!(
            transition(
                S::Capturable,
                S::Cancelled,
                Some(FailureReason::CancelledByAgency)
            ),
            Ok(E::PaymentCancelled)
        );
        // Capturing twice: success is final.
        assert!(transition(S::Success, S::Success, None).is_err());
        // A reason that belongs to another state.
        assert!(transition(S::Created, S::Failed, Some(FailureReason::ProviderError)).is_err());
    }

    #[test]
    fn stored_names_round_trip() {
        for s in PaymentState::ALL {
            assert_eq!(PaymentState::parse(s.as_str()), Some(s));
        }
        for r in FailureReason::ALL {
            assert_eq!(FailureReason::parse(r.as_str()), Some(r));
        }
        for e in EventType::ALL {
            assert_eq!(EventType::parse(e.as_str()), Some(e));
        }
    }
}
