//! The audit trail: an append-only log of security events in which every
//! entry carries the SHA-256 of the previous entry's canonical bytes, so
//! that altering, inserting or removing an entry breaks the chain from
//! there on. Entries never carry passwords, codes or tokens: attributes are
//! written by the service from fixed keys and non-secret values.

use std::collections::BTreeMap;

use aws_lc_rs::digest;

use crate::domain::hex;

pub const AUDIT_EVENT_ID_PREFIX: &str = "aud";
/// The `previous_hash` of the first entry.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditEventType {
    Registration,
    SignInSuccess,
    SignInFailure,
    MfaChange,
    Lockout,
    Consent,
    TokenIssue,
    TokenRevoke,
    AssuranceChange,
    AdminAction,
}

impl AuditEventType {
    pub const ALL: [Self; 10] = [
        Self::Registration,
        Self::SignInSuccess,
        Self::SignInFailure,
        Self::MfaChange,
        Self::Lockout,
        Self::Consent,
        Self::TokenIssue,
        Self::TokenRevoke,
        Self::AssuranceChange,
        Self::AdminAction,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registration => "registration",
            Self::SignInSuccess => "sign_in_success",
            Self::SignInFailure => "sign_in_failure",
            Self::MfaChange => "mfa_change",
            Self::Lockout => "lockout",
            Self::Consent => "consent",
            Self::TokenIssue => "token_issue",
            Self::TokenRevoke => "token_revoke",
            Self::AssuranceChange => "assurance_change",
            Self::AdminAction => "admin_action",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }
}

/// An event about to be appended: the store gives it its place in the
/// chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAuditEvent {
    pub audit_event_id: String,
    pub event_type: AuditEventType,
    pub environment: String,
    pub citizen_id: Option<String>,
    pub agency_id: Option<String>,
    pub occur_time: i64,
    pub attributes: BTreeMap<String, String>,
}

impl NewAuditEvent {
    /// This event as entry `seq`, after an entry whose hash is
    /// `previous_hash`.
    pub fn chained(self, seq: i64, previous_hash: String) -> AuditEvent {
        let mut event = AuditEvent {
            seq,
            audit_event_id: self.audit_event_id,
            event_type: self.event_type,
            environment: self.environment,
            citizen_id: self.citizen_id,
            agency_id: self.agency_id,
            occur_time: self.occur_time,
            attributes: self.attributes,
            previous_hash,
            hash: String::new(),
        };
        event.hash = event.computed_hash();
        event
    }
}

/// One entry of the chain, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// 1, 2, 3, ... without gaps.
    pub seq: i64,
    pub audit_event_id: String,
    pub event_type: AuditEventType,
    pub environment: String,
    pub citizen_id: Option<String>,
    pub agency_id: Option<String>,
    pub occur_time: i64,
    pub attributes: BTreeMap<String, String>,
    pub previous_hash: String,
    pub hash: String,
}

impl AuditEvent {
    /// Every field but `hash`, each length-prefixed so that no two
    /// different entries share their bytes; attributes in key order.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = b"atiende-audit-v1".to_vec();
        let mut field = |bytes: &[u8]| {
            out.extend_from_slice(&u64::try_from(bytes.len()).unwrap_or(u64::MAX).to_be_bytes());
            out.extend_from_slice(bytes);
        };
        field(&self.seq.to_be_bytes());
        field(self.audit_event_id.as_bytes());
        field(self.event_type.as_str().as_bytes());
        field(self.environment.as_bytes());
        field(self.citizen_id.as_deref().unwrap_or("").as_bytes());
        field(self.agency_id.as_deref().unwrap_or("").as_bytes());
        field(&self.occur_time.to_be_bytes());
        field(
            &u64::try_from(self.attributes.len())
                .unwrap_or(u64::MAX)
                .to_be_bytes(),
        );
        for (key, value) in &self.attributes {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        field(self.previous_hash.as_bytes());
        out
    }

    /// Hex SHA-256 of the canonical bytes.
    pub fn computed_hash(&self) -> String {
        hex(digest::digest(&digest::SHA256, &self.canonical_bytes()).as_ref())
    }
}

/// Why the chain breaks at an entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokenReason {
    /// The entry's content does not hash to its stored hash.
    Altered,
    /// The entry does not point at the hash of the entry before it.
    PreviousHashMismatch,
    /// Entries are missing before this one (expected `expected_seq`).
    Gap { expected_seq: i64 },
}

/// The first entry at which the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    pub seq: i64,
    pub audit_event_id: String,
    pub reason: BrokenReason,
}

impl std::fmt::Display for BrokenLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let why = match &self.reason {
            BrokenReason::Altered => "its content does not match its hash".to_owned(),
            BrokenReason::PreviousHashMismatch => {
                "it does not carry the hash of the entry before it".to_owned()
            }
            BrokenReason::Gap { expected_seq } => {
                format!("entries are missing before it (expected entry {expected_seq})")
            }
        };
        write!(f, "entry {} ({}): {why}", self.seq, self.audit_event_id)
    }
}

/// Checks entries fed in `seq` order, from the first.
#[derive(Debug)]
pub struct ChainVerifier {
    next_seq: i64,
    previous_hash: String,
    checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            next_seq: 1,
            previous_hash: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }
}

impl ChainVerifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many entries have verified so far.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// The next entry: `Err` with the broken link when the chain breaks at it.
    pub fn check(&mut self, event: &AuditEvent) -> Result<(), BrokenLink> {
        let broken = |reason| BrokenLink {
            seq: event.seq,
            audit_event_id: event.audit_event_id.clone(),
            reason,
        };
        if event.seq != self.next_seq {
            return Err(broken(BrokenReason::Gap {
                expected_seq: self.next_seq,
            }));
        }
        if event.previous_hash != self.previous_hash {
            return Err(broken(BrokenReason::PreviousHashMismatch));
        }
        if event.computed_hash() != event.hash {
            return Err(broken(BrokenReason::Altered));
        }
        self.next_seq = event.seq.saturating_add(1);
        self.previous_hash.clone_from(&event.hash);
        self.checked += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<AuditEvent> {
        let mut previous = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let event = NewAuditEvent {
                    audit_event_id: format!("aud_{seq}"),
                    event_type: AuditEventType::SignInFailure,
                    environment: "live".into(),
                    citizen_id: Some("ctz_1".into()),
                    agency_id: None,
                    occur_time: 1_000 + seq,
                    attributes: BTreeMap::from([("reason".into(), "bad_credentials".into())]),
                }
                .chained(seq, previous.clone());
                previous.clone_from(&event.hash);
                event
            })
            .collect()
    }

    fn verify(events: &[AuditEvent]) -> Result<u64, BrokenLink> {
        let mut verifier = ChainVerifier::new();
        for event in events {
            verifier.check(event)?;
        }
        Ok(verifier.checked())
    }

    #[test]
    fn an_untouched_chain_verifies() {
        assert_eq!(verify(&chain(5)).unwrap(), 5);
        assert_eq!(verify(&[]).unwrap(), 0);
    }

    #[test]
    fn an_altered_entry_is_the_first_broken_link() {
        let mut events = chain(5);
        events[2]
            .attributes
            .insert("reason".into(), "locked".into());
        let broken = verify(&events).unwrap_err();
        assert_eq!((broken.seq, broken.reason), (3, BrokenReason::Altered));
    }

    #[test]
    fn a_recomputed_hash_breaks_the_next_link() {
        let mut events = chain(5);
        events[1].occur_time += 1;
        events[1].hash = events[1].computed_hash();
        let broken = verify(&events).unwrap_err();
        assert_eq!(
            (broken.seq, broken.reason),
            (3, BrokenReason::PreviousHashMismatch)
        );
    }

    #[test]
    fn a_removed_entry_is_a_gap() {
        let mut events = chain(5);
        events.remove(3);
        let broken = verify(&events).unwrap_err();
        assert!(broken.to_string().contains("entry 5 (aud_5)"));
        assert_eq!(
            (broken.seq, broken.reason),
            (5, BrokenReason::Gap { expected_seq: 4 })
        );
    }

    #[test]
    fn fields_cannot_be_shifted_between_each_other() {
        let a = chain(1).remove(0);
        let mut b = a.clone();
        b.citizen_id = None;
        b.agency_id = Some("ctz_1".into());
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        assert_eq!(
            AuditEventType::parse("lockout"),
            Some(AuditEventType::Lockout)
        );
        assert_eq!(AuditEventType::parse("nope"), None);
    }
}
