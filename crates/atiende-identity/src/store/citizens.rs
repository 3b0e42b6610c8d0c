//! Citizens, their second factors, sign-in throttles and the audit trail.
//!
//! Every change to a citizen is written in one transaction with its audit
//! entry. An append first bumps the single `audit_head` row, which takes
//! that row's lock (PostgreSQL) or the write lock (SQLite), so appends are
//! serialised and each reads the hash it chains to after the previous
//! append committed: the chain cannot fork, on any number of instances.

use std::collections::BTreeMap;

use atiende_platform::auth::Environment;
use atiende_platform::on_db;
use atiende_platform::storage::Database;
// Dynamic SQL here is built from constant column lists and numbered
// placeholders only; every value is bound.
use sqlx::AssertSqlSafe;

use super::corrupt;
use crate::domain::IdentityError;
use crate::domain::audit::{
    AuditEvent, AuditEventType, BrokenLink, BrokenReason, ChainVerifier, NewAuditEvent,
};
use crate::domain::citizen::{
    AssuranceLevel, Citizen, CitizenState, EmailAddress, EvidenceReference, PersonName,
    PhoneNumber, Proofing,
};
use crate::domain::national_id::{NationalId, NationalIdScheme};
use crate::domain::password::PasswordHash;

/// Appends `$new` (a [`NewAuditEvent`]) inside the transaction `$tx` and
/// evaluates to the chained [`AuditEvent`]. A macro because the two
/// engines' transactions are different types.
macro_rules! append_audit {
    ($tx:expr, $new:expr) => {{
        let (seq, previous_hash): (i64, String) =
            sqlx::query_as("UPDATE audit_head SET seq = seq + 1 WHERE id = 1 RETURNING seq, hash")
                .fetch_one(&mut *$tx)
                .await?;
        let event = $new.chained(seq, previous_hash);
        let attributes =
            serde_json::to_string(&event.attributes).map_err($crate::store::corrupt)?;
        sqlx::query(
            "INSERT INTO audit_events (seq, audit_event_id, event_type, environment, citizen_id, \
             agency_id, occur_time, attributes, previous_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(event.seq)
        .bind(&event.audit_event_id)
        .bind(event.event_type.as_str())
        .bind(&event.environment)
        .bind(&event.citizen_id)
        .bind(&event.agency_id)
        .bind(event.occur_time)
        .bind(attributes)
        .bind(&event.previous_hash)
        .bind(&event.hash)
        .execute(&mut *$tx)
        .await?;
        sqlx::query("UPDATE audit_head SET hash = $1 WHERE id = 1")
            .bind(&event.hash)
            .execute(&mut *$tx)
            .await?;
        event
    }};
}

pub(crate) use append_audit;

/// What a successful password check leaves to write: the account's
/// failures forgotten, the source's reserved attempt (if any) taken back
/// (its other failures stand), and the audit entry.
pub struct SignInRecord {
    pub account_key: String,
    pub source_key: Option<String>,
    pub audit: NewAuditEvent,
}

/// Writes `$record` (a [`SignInRecord`]) inside the transaction `$tx`.
macro_rules! write_sign_in {
    ($tx:expr, $record:expr) => {{
        let record: $crate::store::citizens::SignInRecord = $record;
        sqlx::query("DELETE FROM sign_in_throttles WHERE throttle_key = $1")
            .bind(&record.account_key)
            .execute(&mut *$tx)
            .await?;
        if let Some(source_key) = &record.source_key {
            sqlx::query(
                "UPDATE sign_in_throttles SET failures = failures - 1 \
                 WHERE throttle_key = $1 AND failures > 0",
            )
            .bind(source_key)
            .execute(&mut *$tx)
            .await?;
        }
        append_audit!($tx, record.audit);
    }};
}
pub(crate) use write_sign_in;

const CITIZEN_COLUMNS: &str = "citizen_id, environment, national_id_scheme, national_id, \
     given_names, family_names, email, email_verified, phone_number, password_hash, state, \
     assurance_level, proofing_agency_id, proofing_evidence, proofing_time, registered_by, \
     totp_secret_sealed, totp_confirmed, totp_last_step, create_time";

#[derive(sqlx::FromRow)]
struct CitizenRow {
    citizen_id: String,
    environment: String,
    national_id_scheme: String,
    national_id: String,
    given_names: String,
    family_names: String,
    email: String,
    email_verified: bool,
    phone_number: Option<String>,
    password_hash: Option<String>,
    state: String,
    assurance_level: String,
    proofing_agency_id: Option<String>,
    proofing_evidence: Option<String>,
    proofing_time: Option<i64>,
    registered_by: String,
    totp_secret_sealed: Option<Vec<u8>>,
    totp_confirmed: bool,
    totp_last_step: i64,
    create_time: i64,
}

/// A citizen with what authenticates them.
pub struct CitizenCredentials {
    pub citizen: Citizen,
    pub password_hash: Option<PasswordHash>,
    /// Sealed; confirmed or pending (see `citizen.has_second_factor`).
    pub totp_sealed: Option<Vec<u8>>,
    pub totp_last_step: i64,
}

impl TryFrom<CitizenRow> for CitizenCredentials {
    type Error = IdentityError;

    fn try_from(row: CitizenRow) -> Result<Self, Self::Error> {
        let scheme =
            NationalIdScheme::parse(&row.national_id_scheme).ok_or_else(|| corrupt("scheme"))?;
        let proofing = match (
            row.proofing_agency_id,
            row.proofing_evidence,
            row.proofing_time,
        ) {
            (Some(agency_id), Some(evidence), Some(time)) => Some(Proofing {
                agency_id,
                evidence: EvidenceReference::parse(&evidence).map_err(corrupt)?,
                time,
            }),
            _ => None,
        };
        let citizen = Citizen {
            citizen_id: row.citizen_id,
            environment: Environment::parse(&row.environment).ok_or_else(|| corrupt("env"))?,
            national_id: NationalId::parse(scheme, &row.national_id).map_err(corrupt)?,
            given_names: PersonName::parse(&row.given_names).map_err(corrupt)?,
            family_names: PersonName::parse(&row.family_names).map_err(corrupt)?,
            email: EmailAddress::parse(&row.email).map_err(corrupt)?,
            email_verified: row.email_verified,
            phone: row
                .phone_number
                .as_deref()
                .map(PhoneNumber::parse)
                .transpose()
                .map_err(corrupt)?,
            assurance_level: AssuranceLevel::parse(&row.assurance_level)
                .ok_or_else(|| corrupt("assurance level"))?,
            proofing,
            state: CitizenState::parse(&row.state).ok_or_else(|| corrupt("state"))?,
            registered_by: row.registered_by,
            has_password: row.password_hash.is_some(),
            has_second_factor: row.totp_confirmed,
            create_time: row.create_time,
        };
        Ok(Self {
            citizen,
            password_hash: row.password_hash.map(PasswordHash),
            totp_sealed: row.totp_secret_sealed,
            totp_last_step: row.totp_last_step,
        })
    }
}

fn already_exists(error: sqlx::Error) -> IdentityError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            IdentityError::CitizenAlreadyExists
        }
        _ => IdentityError::Storage(error),
    }
}

/// Registers a citizen and appends its audit entry, in one transaction.
pub async fn insert_citizen(
    db: &Database,
    citizen: &Citizen,
    password_hash: Option<&PasswordHash>,
    audit: NewAuditEvent,
) -> Result<AuditEvent, IdentityError> {
    let event = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO citizens (citizen_id, environment, national_id_scheme, national_id, \
             given_names, family_names, email, email_verified, phone_number, password_hash, state, \
             assurance_level, registered_by, totp_confirmed, totp_last_step, create_time, \
             update_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
        )
        .bind(&citizen.citizen_id)
        .bind(citizen.environment.as_str())
        .bind(citizen.national_id.scheme().as_str())
        .bind(citizen.national_id.value())
        .bind(citizen.given_names.as_str())
        .bind(citizen.family_names.as_str())
        .bind(citizen.email.as_str())
        .bind(citizen.email_verified)
        .bind(citizen.phone.as_ref().map(PhoneNumber::as_str))
        .bind(password_hash.map(|h| h.0.as_str()))
        .bind(citizen.state.as_str())
        .bind(citizen.assurance_level.as_str())
        .bind(&citizen.registered_by)
        .bind(false)
        .bind(0i64)
        .bind(citizen.create_time)
        .bind(citizen.create_time)
        .execute(&mut *tx)
        .await
        .map_err(already_exists)?;
        let event = append_audit!(tx, audit);
        tx.commit().await?;
        event
    });
    Ok(event)
}

pub async fn get_citizen(
    db: &Database,
    environment: Environment,
    citizen_id: &str,
) -> Result<Option<CitizenCredentials>, IdentityError> {
    let sql = format!(
        "SELECT {CITIZEN_COLUMNS} FROM citizens WHERE citizen_id = $1 AND environment = $2"
    );
    let row: Option<CitizenRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(citizen_id)
            .bind(environment.as_str())
            .fetch_optional(pool)
            .await?
    });
    row.map(CitizenCredentials::try_from).transpose()
}

pub async fn find_citizen(
    db: &Database,
    environment: Environment,
    national_id: &NationalId,
) -> Result<Option<CitizenCredentials>, IdentityError> {
    let sql = format!(
        "SELECT {CITIZEN_COLUMNS} FROM citizens \
         WHERE environment = $1 AND national_id_scheme = $2 AND national_id = $3"
    );
    let row: Option<CitizenRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(environment.as_str())
            .bind(national_id.scheme().as_str())
            .bind(national_id.value())
            .fetch_optional(pool)
            .await?
    });
    row.map(CitizenCredentials::try_from).transpose()
}

/// Replaces the given contact details (a new email is unverified again).
pub async fn update_contact(
    db: &Database,
    citizen_id: &str,
    email: Option<&EmailAddress>,
    phone: Option<&PhoneNumber>,
    now: i64,
    audit: NewAuditEvent,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "UPDATE citizens SET \
             email_verified = CASE WHEN $1 IS NULL OR $1 = email THEN email_verified ELSE FALSE END, \
             email = COALESCE($1, email), phone_number = COALESCE($2, phone_number), \
             update_time = $3 WHERE citizen_id = $4",
        )
        .bind(email.map(EmailAddress::as_str))
        .bind(phone.map(PhoneNumber::as_str))
        .bind(now)
        .bind(citizen_id)
        .execute(&mut *tx)
        .await?;
        append_audit!(tx, audit);
        tx.commit().await?;
    });
    Ok(())
}

/// Sets the state; `false` (and nothing written) when it already was.
pub async fn set_state(
    db: &Database,
    citizen_id: &str,
    state: CitizenState,
    now: i64,
    audit: NewAuditEvent,
) -> Result<bool, IdentityError> {
    let changed = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE citizens SET state = $1, update_time = $2 WHERE citizen_id = $3 AND state <> $1",
        )
        .bind(state.as_str())
        .bind(now)
        .bind(citizen_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            append_audit!(tx, audit);
            tx.commit().await?;
        }
        changed
    });
    Ok(changed)
}

/// Records a level of assurance; levels above low only while a second
/// factor is enrolled (`false` otherwise).
pub async fn set_assurance(
    db: &Database,
    citizen_id: &str,
    level: AssuranceLevel,
    proofing: &Proofing,
    audit: NewAuditEvent,
) -> Result<bool, IdentityError> {
    let done = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let done = sqlx::query(
            "UPDATE citizens SET assurance_level = $1, proofing_agency_id = $2, \
             proofing_evidence = $3, proofing_time = $4, update_time = $4 \
             WHERE citizen_id = $5 AND ($1 = 'low' OR totp_confirmed)",
        )
        .bind(level.as_str())
        .bind(&proofing.agency_id)
        .bind(proofing.evidence.as_str())
        .bind(proofing.time)
        .bind(citizen_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            append_audit!(tx, audit);
            tx.commit().await?;
        }
        done
    });
    Ok(done)
}

/// Stores a new, unconfirmed TOTP secret; `false` when one is confirmed.
pub async fn begin_totp(
    db: &Database,
    citizen_id: &str,
    sealed: &[u8],
    now: i64,
) -> Result<bool, IdentityError> {
    let done = on_db!(db, pool => {
        sqlx::query(
            "UPDATE citizens SET totp_secret_sealed = $1, totp_last_step = 0, update_time = $2 \
             WHERE citizen_id = $3 AND NOT totp_confirmed",
        )
        .bind(sealed)
        .bind(now)
        .bind(citizen_id)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// Confirms the pending TOTP secret (its first code was at `step`) and
/// replaces the recovery codes; `false` when nothing was pending.
pub async fn confirm_totp(
    db: &Database,
    citizen_id: &str,
    step: i64,
    recovery_code_hashes: &[String],
    now: i64,
    audit: NewAuditEvent,
) -> Result<bool, IdentityError> {
    let done = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let done = sqlx::query(
            "UPDATE citizens SET totp_confirmed = TRUE, totp_last_step = $1, update_time = $2 \
             WHERE citizen_id = $3 AND NOT totp_confirmed AND totp_secret_sealed IS NOT NULL",
        )
        .bind(step)
        .bind(now)
        .bind(citizen_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if done {
            sqlx::query("DELETE FROM recovery_codes WHERE citizen_id = $1")
                .bind(citizen_id)
                .execute(&mut *tx)
                .await?;
            for hash in recovery_code_hashes {
                sqlx::query("INSERT INTO recovery_codes (citizen_id, code_hash) VALUES ($1, $2)")
                    .bind(citizen_id)
                    .bind(hash)
                    .execute(&mut *tx)
                    .await?;
            }
            append_audit!(tx, audit);
            tx.commit().await?;
        }
        done
    });
    Ok(done)
}

/// Records that the code of `step` was used; `false` if that step (or a
/// later one) already was: a replay.
pub async fn use_totp_step(
    db: &Database,
    citizen_id: &str,
    step: i64,
) -> Result<bool, IdentityError> {
    let done = on_db!(db, pool => {
        sqlx::query(
            "UPDATE citizens SET totp_last_step = $1 WHERE citizen_id = $2 AND totp_last_step < $1",
        )
        .bind(step)
        .bind(citizen_id)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done == 1)
}

/// Uses up a recovery code; `false` when there is no such unused code.
pub async fn use_recovery_code(
    db: &Database,
    citizen_id: &str,
    code_hash: &str,
) -> Result<bool, IdentityError> {
    let done = on_db!(db, pool => {
        sqlx::query("DELETE FROM recovery_codes WHERE citizen_id = $1 AND code_hash = $2")
            .bind(citizen_id)
            .bind(code_hash)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(done == 1)
}

pub async fn count_recovery_codes(db: &Database, citizen_id: &str) -> Result<i64, IdentityError> {
    let count: i64 = on_db!(db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM recovery_codes WHERE citizen_id = $1")
            .bind(citizen_id)
            .fetch_one(pool)
            .await?
    });
    Ok(count)
}

/// The latest `locked_until` of the two throttles (0 when neither exists).
pub async fn locked_until(
    db: &Database,
    account: &str,
    source: &str,
) -> Result<i64, IdentityError> {
    let until: i64 = on_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(locked_until), 0) FROM sign_in_throttles \
             WHERE throttle_key = $1 OR throttle_key = $2",
        )
        .bind(account)
        .bind(source)
        .fetch_one(pool)
        .await?
    });
    Ok(until)
}

/// Reserves one attempt against `key` before the password is checked, so
/// that concurrent guesses cannot overrun the limit: the attempt counts as
/// a failure until [`release_attempt`] takes it back. Failures are counted
/// in a window that starts with the first one and lasts `window`. Returns
/// the attempt's number in the window, or `None` while the key is locked.
pub async fn reserve_attempt(
    db: &Database,
    key: &str,
    now: i64,
    window: i64,
) -> Result<Option<i64>, IdentityError> {
    let window_opened_after = now.saturating_sub(window);
    let number = on_db!(db, pool => {
        sqlx::query_scalar(
            "INSERT INTO sign_in_throttles (throttle_key, failures, window_start, locked_until) \
             VALUES ($1, 1, $2, 0) \
             ON CONFLICT (throttle_key) DO UPDATE SET \
             failures = CASE WHEN sign_in_throttles.window_start <= $3 THEN 1 \
                        ELSE sign_in_throttles.failures + 1 END, \
             window_start = CASE WHEN sign_in_throttles.window_start <= $3 THEN $2 \
                        ELSE sign_in_throttles.window_start END \
             WHERE sign_in_throttles.locked_until <= $2 \
             RETURNING failures",
        )
        .bind(key)
        .bind(now)
        .bind(window_opened_after)
        .fetch_optional(pool)
        .await?
    });
    Ok(number)
}

/// Takes back a reserved attempt that was not a failure.
pub async fn release_attempt(db: &Database, key: &str) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "UPDATE sign_in_throttles SET failures = failures - 1 \
             WHERE throttle_key = $1 AND failures > 0",
        )
        .bind(key)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Locks `key` until `now + lockout`, starting a new window; whether this
/// call locked it (false if it already was).
pub async fn lock(db: &Database, key: &str, now: i64, lockout: i64) -> Result<bool, IdentityError> {
    let done = on_db!(db, pool => {
        sqlx::query(
            "UPDATE sign_in_throttles SET locked_until = $1, failures = 0, window_start = $2 \
             WHERE throttle_key = $3 AND locked_until <= $2",
        )
        .bind(now.saturating_add(lockout))
        .bind(now)
        .bind(key)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(done > 0)
}

/// A successful sign-in that opens no session, in one transaction.
pub async fn record_sign_in(db: &Database, record: SignInRecord) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        write_sign_in!(tx, record);
        tx.commit().await?;
    });
    Ok(())
}

/// Appends one audit entry on its own.
pub async fn append_audit_event(
    db: &Database,
    audit: NewAuditEvent,
) -> Result<AuditEvent, IdentityError> {
    let event = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let event = append_audit!(tx, audit);
        tx.commit().await?;
        event
    });
    Ok(event)
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    seq: i64,
    audit_event_id: String,
    event_type: String,
    environment: String,
    citizen_id: Option<String>,
    agency_id: Option<String>,
    occur_time: i64,
    attributes: String,
    previous_hash: String,
    hash: String,
}

const AUDIT_COLUMNS: &str = "seq, audit_event_id, event_type, environment, citizen_id, \
     agency_id, occur_time, attributes, previous_hash, hash";

impl TryFrom<AuditRow> for AuditEvent {
    type Error = IdentityError;

    fn try_from(row: AuditRow) -> Result<Self, Self::Error> {
        let attributes: BTreeMap<String, String> =
            serde_json::from_str(&row.attributes).map_err(corrupt)?;
        Ok(AuditEvent {
            seq: row.seq,
            audit_event_id: row.audit_event_id,
            event_type: AuditEventType::parse(&row.event_type)
                .ok_or_else(|| corrupt("audit event type"))?,
            environment: row.environment,
            citizen_id: row.citizen_id,
            agency_id: row.agency_id,
            occur_time: row.occur_time,
            attributes,
            previous_hash: row.previous_hash,
            hash: row.hash,
        })
    }
}

/// What ListAuditEvents selects; `None` means any.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub environment: Option<Environment>,
    pub citizen_id: Option<String>,
    pub agency_id: Option<String>,
    pub types: Vec<AuditEventType>,
    pub occur_from: Option<i64>,
    pub occur_before: Option<i64>,
}

/// Entries matching `filter`, newest first, before `before_seq`.
pub async fn list_audit_events(
    db: &Database,
    filter: &AuditFilter,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<AuditEvent>, IdentityError> {
    let mut sql = format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE ($1 IS NULL OR environment = $1) \
         AND ($2 IS NULL OR citizen_id = $2) AND ($3 IS NULL OR agency_id = $3) \
         AND ($4 IS NULL OR occur_time >= $4) AND ($5 IS NULL OR occur_time < $5) \
         AND ($6 IS NULL OR seq < $6)"
    );
    if !filter.types.is_empty() {
        let placeholders: Vec<String> = (0..filter.types.len())
            .map(|i| format!("${}", i + 8))
            .collect();
        sql.push_str(&format!(" AND event_type IN ({})", placeholders.join(", ")));
    }
    sql.push_str(" ORDER BY seq DESC LIMIT $7");
    let rows: Vec<AuditRow> = on_db!(db, pool => {
        let mut query = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(filter.environment.map(Environment::as_str))
            .bind(filter.citizen_id.as_deref())
            .bind(filter.agency_id.as_deref())
            .bind(filter.occur_from)
            .bind(filter.occur_before)
            .bind(before_seq)
            .bind(limit);
        for t in &filter.types {
            query = query.bind(t.as_str());
        }
        query.fetch_all(pool).await?
    });
    rows.into_iter().map(AuditEvent::try_from).collect()
}

/// The result of verifying the whole chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Entries that verified before the first broken link (or all).
    pub verified: u64,
    pub broken: Option<BrokenLink>,
}

/// Reads the chain from the first entry, in pages, and reports the first
/// broken link. An entry that no longer parses counts as altered.
pub async fn verify_audit_chain(db: &Database) -> Result<ChainReport, IdentityError> {
    const PAGE: i64 = 1000;
    let sql =
        format!("SELECT {AUDIT_COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2");
    let mut verifier = ChainVerifier::new();
    let mut after = 0i64;
    loop {
        let rows: Vec<AuditRow> = on_db!(db, pool => {
            sqlx::query_as(AssertSqlSafe(sql.as_str())).bind(after).bind(PAGE).fetch_all(pool).await?
        });
        let count = rows.len();
        for row in rows {
            let (seq, audit_event_id) = (row.seq, row.audit_event_id.clone());
            after = seq;
            let checked = match AuditEvent::try_from(row) {
                Ok(event) => verifier.check(&event),
                Err(_) => Err(BrokenLink {
                    seq,
                    audit_event_id,
                    reason: BrokenReason::Altered,
                }),
            };
            if let Err(broken) = checked {
                return Ok(ChainReport {
                    verified: verifier.checked(),
                    broken: Some(broken),
                });
            }
        }
        if i64::try_from(count).unwrap_or(0) < PAGE {
            return Ok(ChainReport {
                verified: verifier.checked(),
                broken: None,
            });
        }
    }
}
