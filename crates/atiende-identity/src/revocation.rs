//! Revoked tokens and disabled clients, as every verifier of this service
//! sees them.
//!
//! Revocations are rows in the database; each instance keeps the unexpired
//! ones in memory and re-reads all of them every `revocation_poll_interval`.
//! The set is small — a row lives only until the tokens it covers expire —
//! and reading it whole depends on no clock but the expiry, so a row
//! committed late or by an instance with a skewed clock is never skipped. A
//! revocation made on an instance applies there at once, and on the others
//! within one poll interval.
//!
//! Other services verify tokens locally and do not see revocations: what
//! bounds their exposure is the short token lifetime.

use std::collections::HashMap;
use std::sync::RwLock;

use atiende_platform::auth::{Caller, RevocationCheck};
use atiende_platform::storage::{Database, now_micros};

use crate::domain::IdentityError;
use crate::store;

#[derive(Default)]
struct Revoked {
    /// Token id -> when the token expires (µs).
    tokens: HashMap<String, i64>,
    /// Client id -> until when its tokens may still be around (µs).
    clients: HashMap<String, i64>,
}

#[derive(Default)]
pub struct Revocations {
    revoked: RwLock<Revoked>,
}

impl Revocations {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record_token(&self, token_id: &str, expire_time: i64) {
        self.write().tokens.insert(token_id.to_owned(), expire_time);
    }

    pub fn record_client(&self, client_id: &str, until: i64) {
        self.write().clients.insert(client_id.to_owned(), until);
    }

    /// Whether the client was disabled (here or, within a poll interval, on
    /// another instance).
    pub fn client_revoked(&self, client_id: &str) -> bool {
        self.revoked
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clients
            .contains_key(client_id)
    }

    /// Reads every unexpired revocation, and forgets expired ones. Entries
    /// recorded here meanwhile are kept: they are in the database too.
    pub async fn poll(&self, db: &Database) -> Result<(), IdentityError> {
        let now = now_micros();
        let rows = store::unexpired_revocations(db, now).await?;
        let mut revoked = self.write();
        for row in rows {
            let map = match row.subject_kind.as_str() {
                "client" => &mut revoked.clients,
                _ => &mut revoked.tokens,
            };
            map.insert(row.subject, row.expire_time);
        }
        revoked.tokens.retain(|_, exp| *exp > now);
        revoked.clients.retain(|_, exp| *exp > now);
        Ok(())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Revoked> {
        self.revoked.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl RevocationCheck for Revocations {
    fn is_revoked(&self, caller: &Caller) -> bool {
        let revoked = self.revoked.read().unwrap_or_else(|e| e.into_inner());
        revoked.tokens.contains_key(&caller.token_id)
            || revoked.clients.contains_key(&caller.client_id)
    }
}
