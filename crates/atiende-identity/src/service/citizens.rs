//! Citizens in domain terms: registration, reads with what an agency may
//! see, contact and state changes, levels of assurance, TOTP enrolment,
//! the password sign-in check with its lockout, and the audit trail.
//!
//! Visibility rules (kept deliberately simple):
//! - Citizens live in the caller's environment: a sandbox client's
//!   citizens are test data that live callers never see, and back.
//! - Any agency holding `identity.citizens.read` sees a citizen's id,
//!   national id, names, level of assurance and state; only the agency that
//!   registered the citizen also sees the email address and phone number.
//! - Contact details and the state change only by the registering agency
//!   (or an operator); a level of assurance is recorded by any agency
//!   holding `identity.citizens.write`, which becomes its attester.
//! - Audit events are listed per caller agency (events it caused);
//!   operators may list every agency's, and sign-in events (which no agency
//!   causes).

use std::collections::BTreeMap;

use atiende_platform::auth::{Caller, Environment};
use atiende_platform::ids::new_id;
use atiende_platform::paging::{Page, PageSize};
use atiende_platform::storage::now_micros;
use aws_lc_rs::digest;
use secrecy::{ExposeSecret, SecretString};

use super::{IdentityService, micros};
use crate::domain::audit::{AUDIT_EVENT_ID_PREFIX, AuditEvent, AuditEventType, NewAuditEvent};
use crate::domain::citizen::{
    AssuranceLevel, CITIZEN_ID_PREFIX, Citizen, CitizenState, EmailAddress, EvidenceReference,
    PersonName, PhoneNumber, Proofing,
};
use crate::domain::national_id::NationalId;
use crate::domain::password::{Password, dummy_hash, hash_password, verify_password};
use crate::domain::totp::{
    RECOVERY_CODES, RecoveryCode, TotpSecret, looks_like_recovery_code, recovery_code_hash,
};
use crate::domain::{IdentityError, hex};
use crate::store::citizens::{self as store, AuditFilter, CitizenCredentials, SignInRecord};

/// A registration request, parsed.
pub struct NewCitizen {
    pub national_id: NationalId,
    pub given_names: PersonName,
    pub family_names: PersonName,
    pub email: EmailAddress,
    pub phone: Option<PhoneNumber>,
    pub password: Option<Password>,
}

/// A citizen as one agency may see them.
#[derive(Debug, Clone)]
pub struct CitizenView {
    pub citizen: Citizen,
    /// Whether the email address and phone number may be shown.
    pub contact_visible: bool,
}

/// A pending TOTP enrolment, shown to the citizen once.
pub struct TotpEnrolment {
    pub secret_base32: SecretString,
    pub otpauth_uri: SecretString,
}

/// One password sign-in attempt.
pub struct PasswordAttempt<'a> {
    pub environment: Environment,
    pub national_id: &'a NationalId,
    pub password: &'a str,
    /// A TOTP code or a recovery code, when the citizen has a second factor.
    pub second_factor: Option<&'a str>,
    /// Where the attempt comes from (the client's address, as the login
    /// front end sees it); only its digest is kept. Empty when unknown: then
    /// only the account is throttled.
    pub source: &'a str,
}

/// What a sign-in attempt gets. `Refused` is the one answer for an unknown
/// account, a wrong password, a disabled account and a wrong second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInOutcome {
    Accepted {
        /// The account, as read for the check (active).
        citizen: Box<Citizen>,
        /// Authentication methods (RFC 8176): `pwd`, and `otp` with a second
        /// factor.
        methods: Vec<&'static str>,
    },
    /// The password was right; a second factor is needed.
    SecondFactorRequired,
    Refused,
    /// The account or the source is locked until then (µs).
    LockedOut {
        until: i64,
    },
}

/// Filters of ListAuditEvents, parsed.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub citizen_id: Option<String>,
    /// Operators only; others always get their own agency.
    pub agency_id: Option<String>,
    pub types: Vec<AuditEventType>,
    pub occur_from: Option<i64>,
    pub occur_before: Option<i64>,
}

pub(crate) fn audit(
    event_type: AuditEventType,
    environment: Environment,
    citizen_id: Option<&str>,
    agency_id: Option<&str>,
    attributes: &[(&str, &str)],
    now: i64,
) -> NewAuditEvent {
    NewAuditEvent {
        audit_event_id: new_id(AUDIT_EVENT_ID_PREFIX),
        event_type,
        environment: environment.as_str().to_owned(),
        citizen_id: citizen_id.map(str::to_owned),
        agency_id: agency_id.map(str::to_owned),
        occur_time: now,
        attributes: attributes
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// Argon2 on tokio's blocking pool: ~15 ms of CPU must not stall a runtime
/// thread. At most one hash per core runs at once (the rest queue): more
/// would only share the cores and the caches, and hold more 19 MiB buffers.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, IdentityError> {
    static HASHING: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    let permits = HASHING.get_or_init(|| {
        tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, usize::from))
    });
    let _permit = permits.acquire().await.map_err(|_| IdentityError::Crypto)?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| IdentityError::Crypto)
}

fn throttle_key(kind: &str, parts: &[&str]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(kind.as_bytes());
    for part in parts {
        ctx.update(b"\0");
        ctx.update(part.as_bytes());
    }
    hex(ctx.finish().as_ref())
}

/// How long an email verification code works.
const EMAIL_CODE_TTL_MICROS: i64 = 15 * 60 * 1_000_000;

/// Six random digits.
fn email_code() -> Result<String, IdentityError> {
    let mut bytes = [0u8; 4];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| IdentityError::Crypto)?;
    Ok(format!("{:06}", u32::from_le_bytes(bytes) % 1_000_000))
}

/// The digest kept for an email code, bound to its citizen.
pub fn email_code_hash(citizen_id: &str, code: &str) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"email-code\0");
    ctx.update(citizen_id.as_bytes());
    ctx.update(b"\0");
    ctx.update(code.as_bytes());
    hex(ctx.finish().as_ref())
}

fn totp_context(citizen_id: &str) -> String {
    format!("totp:{citizen_id}")
}

impl IdentityService {
    /// Registers a citizen in the caller's environment, on behalf of the
    /// caller's agency.
    pub async fn register_citizen(
        &self,
        caller: &Caller,
        new: NewCitizen,
    ) -> Result<CitizenView, IdentityError> {
        let citizen = self
            .insert_new_citizen(
                caller.environment,
                &caller.agency_id,
                &caller.client_id,
                "agency",
                new,
                now_micros(),
            )
            .await?;
        Ok(CitizenView {
            citizen,
            contact_visible: true,
        })
    }

    /// Self-registration on the login pages of a client: the citizen is
    /// registered in the client's environment, by the client's agency
    /// (whose sign-in the citizen came from). Returns the citizen id.
    pub async fn register_self(
        &self,
        client: &crate::domain::Client,
        new: NewCitizen,
        now: i64,
    ) -> Result<String, IdentityError> {
        let citizen = self
            .insert_new_citizen(
                client.environment,
                &client.agency_id,
                &client.client_id,
                "self",
                new,
                now,
            )
            .await?;
        Ok(citizen.citizen_id)
    }

    async fn insert_new_citizen(
        &self,
        environment: Environment,
        agency_id: &str,
        client_id: &str,
        via: &str,
        new: NewCitizen,
        now: i64,
    ) -> Result<Citizen, IdentityError> {
        let password_hash = match new.password {
            Some(password) => Some(blocking(move || hash_password(password.expose())).await??),
            None => None,
        };
        let citizen = Citizen {
            citizen_id: new_id(CITIZEN_ID_PREFIX),
            environment,
            national_id: new.national_id,
            given_names: new.given_names,
            family_names: new.family_names,
            email: new.email,
            email_verified: false,
            phone: new.phone,
            assurance_level: AssuranceLevel::Low,
            proofing: None,
            state: CitizenState::Active,
            registered_by: agency_id.to_owned(),
            has_password: password_hash.is_some(),
            has_second_factor: false,
            create_time: now,
        };
        let event = audit(
            AuditEventType::Registration,
            environment,
            Some(&citizen.citizen_id),
            Some(agency_id),
            &[
                ("client_id", client_id),
                ("scheme", citizen.national_id.scheme().as_str()),
                ("via", via),
            ],
            now,
        );
        store::insert_citizen(&self.db, &citizen, password_hash.as_ref(), event).await?;
        tracing::info!(citizen_id = %citizen.citizen_id, agency_id, via, "citizen registered");
        Ok(citizen)
    }

    /// A new 6-digit code for the citizen's email address, kept as a
    /// digest and sent through the configured sender.
    pub async fn send_email_code(
        &self,
        citizen_id: &str,
        email: &EmailAddress,
        waiting_password: Option<Password>,
        locale: crate::service::oidc::Locale,
        now: i64,
    ) -> Result<(), IdentityError> {
        let code = email_code()?;
        let password_hash = match waiting_password {
            Some(password) => Some(blocking(move || hash_password(password.expose())).await??),
            None => None,
        };
        crate::store::oidc::put_email_code(
            &self.db,
            citizen_id,
            &email_code_hash(citizen_id, &code),
            password_hash.as_ref().map(|h| h.0.as_str()),
            now.saturating_add(EMAIL_CODE_TTL_MICROS),
        )
        .await?;
        let sender = self
            .email_codes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        sender
            .send(
                self,
                crate::service::email_codes::EmailCode {
                    to: email,
                    code: &code,
                    locale,
                },
            )
            .await
            .map_err(IdentityError::Delivery)
    }

    pub async fn get_citizen(
        &self,
        caller: &Caller,
        citizen_id: &str,
    ) -> Result<CitizenView, IdentityError> {
        let found = store::get_citizen(&self.db, caller.environment, citizen_id)
            .await?
            .ok_or(IdentityError::CitizenNotFound)?;
        Ok(view(caller, found.citizen))
    }

    pub async fn find_citizen(
        &self,
        caller: &Caller,
        national_id: &NationalId,
    ) -> Result<CitizenView, IdentityError> {
        let found = store::find_citizen(&self.db, caller.environment, national_id)
            .await?
            .ok_or(IdentityError::CitizenNotFound)?;
        Ok(view(caller, found.citizen))
    }

    /// Replaces the email address and/or phone number (registering agency
    /// only). A changed email address is unverified again.
    pub async fn update_contact(
        &self,
        caller: &Caller,
        citizen_id: &str,
        email: Option<EmailAddress>,
        phone: Option<PhoneNumber>,
    ) -> Result<CitizenView, IdentityError> {
        let citizen = self.managed_citizen(caller, citizen_id, false).await?;
        let mut fields = Vec::new();
        if email.is_some() {
            fields.push("email");
        }
        if phone.is_some() {
            fields.push("phone_number");
        }
        let now = now_micros();
        let event = audit(
            AuditEventType::AdminAction,
            caller.environment,
            Some(citizen_id),
            Some(&caller.agency_id),
            &[("action", "update_contact"), ("fields", &fields.join(","))],
            now,
        );
        store::update_contact(
            &self.db,
            &citizen.citizen_id,
            email.as_ref(),
            phone.as_ref(),
            now,
            event,
        )
        .await?;
        tracing::info!(citizen_id, agency_id = %caller.agency_id, "citizen contact updated");
        self.get_citizen(caller, citizen_id).await
    }

    /// Disables or re-enables an account (registering agency or operator).
    /// Setting the state it already has changes nothing.
    pub async fn set_citizen_state(
        &self,
        caller: &Caller,
        citizen_id: &str,
        state: CitizenState,
    ) -> Result<CitizenView, IdentityError> {
        let citizen = self.managed_citizen(caller, citizen_id, true).await?;
        let action = match state {
            CitizenState::Active => "enable",
            CitizenState::Disabled => "disable",
        };
        let now = now_micros();
        let event = audit(
            AuditEventType::AdminAction,
            caller.environment,
            Some(citizen_id),
            Some(&caller.agency_id),
            &[("action", action)],
            now,
        );
        if store::set_state(&self.db, &citizen.citizen_id, state, now, event).await? {
            tracing::info!(citizen_id, agency_id = %caller.agency_id, action, "citizen state changed");
        }
        self.get_citizen(caller, citizen_id).await
    }

    /// Records the level of assurance an agency attests, with a reference
    /// to its evidence. Substantial and high need an enrolled second factor.
    pub async fn set_assurance_level(
        &self,
        caller: &Caller,
        citizen_id: &str,
        level: AssuranceLevel,
        evidence: EvidenceReference,
    ) -> Result<CitizenView, IdentityError> {
        let citizen = store::get_citizen(&self.db, caller.environment, citizen_id)
            .await?
            .ok_or(IdentityError::CitizenNotFound)?
            .citizen;
        if level > AssuranceLevel::Low && !citizen.has_second_factor {
            return Err(IdentityError::SecondFactorNeeded);
        }
        let now = now_micros();
        let event = audit(
            AuditEventType::AssuranceChange,
            caller.environment,
            Some(citizen_id),
            Some(&caller.agency_id),
            &[
                ("from", citizen.assurance_level.as_str()),
                ("to", level.as_str()),
                ("evidence_reference", evidence.as_str()),
            ],
            now,
        );
        let proofing = Proofing {
            agency_id: caller.agency_id.clone(),
            evidence,
            time: now,
        };
        if !store::set_assurance(&self.db, citizen_id, level, &proofing, event).await? {
            return Err(IdentityError::SecondFactorNeeded);
        }
        tracing::info!(citizen_id, agency_id = %caller.agency_id, level = level.as_str(), "assurance level set");
        self.get_citizen(caller, citizen_id).await
    }

    /// Starts a TOTP enrolment: a new secret, sealed at rest, pending until
    /// a first code confirms it. (The login pages call this; there is no
    /// agency RPC for it.)
    pub async fn begin_totp_enrolment(
        &self,
        environment: Environment,
        citizen_id: &str,
    ) -> Result<TotpEnrolment, IdentityError> {
        let citizen = store::get_citizen(&self.db, environment, citizen_id)
            .await?
            .ok_or(IdentityError::CitizenNotFound)?
            .citizen;
        let secret = TotpSecret::generate()?;
        let sealed = self
            .keys
            .seal_secret(&totp_context(citizen_id), secret.expose())?;
        if !store::begin_totp(&self.db, citizen_id, &sealed, now_micros()).await? {
            return Err(IdentityError::SecondFactorAlreadyEnrolled);
        }
        Ok(TotpEnrolment {
            secret_base32: secret.base32(),
            otpauth_uri: secret.otpauth_uri(&self.citizen_policy.totp_issuer, &citizen.citizen_id),
        })
    }

    /// Confirms a pending enrolment with a current code; returns the
    /// recovery codes, shown once (only their hashes are kept).
    pub async fn confirm_totp_enrolment(
        &self,
        environment: Environment,
        citizen_id: &str,
        code: &str,
        now: i64,
    ) -> Result<Vec<RecoveryCode>, IdentityError> {
        let found = store::get_citizen(&self.db, environment, citizen_id)
            .await?
            .ok_or(IdentityError::CitizenNotFound)?;
        let sealed = match (&found.totp_sealed, found.citizen.has_second_factor) {
            (Some(sealed), false) => sealed,
            _ => return Err(IdentityError::NoPendingEnrolment),
        };
        let secret =
            TotpSecret::from_bytes(self.keys.open_secret(&totp_context(citizen_id), sealed)?);
        let step = secret
            .verify(code, now.div_euclid(1_000_000), found.totp_last_step)
            .ok_or(IdentityError::WrongCode)?;
        let codes = (0..RECOVERY_CODES)
            .map(|_| RecoveryCode::generate())
            .collect::<Result<Vec<_>, _>>()?;
        let hashes: Vec<String> = codes.iter().map(RecoveryCode::hash).collect();
        let event = audit(
            AuditEventType::MfaChange,
            environment,
            Some(citizen_id),
            None,
            &[("action", "totp_enrolled")],
            now,
        );
        if !store::confirm_totp(&self.db, citizen_id, step, &hashes, now, event).await? {
            return Err(IdentityError::NoPendingEnrolment);
        }
        tracing::info!(citizen_id, "second factor enrolled");
        Ok(codes)
    }

    /// Unused recovery codes left.
    pub async fn recovery_codes_left(&self, citizen_id: &str) -> Result<i64, IdentityError> {
        store::count_recovery_codes(&self.db, citizen_id).await
    }

    /// The credential check behind the login page, now.
    pub async fn check_password(
        &self,
        attempt: PasswordAttempt<'_>,
    ) -> Result<SignInOutcome, IdentityError> {
        self.check_password_at(attempt, now_micros()).await
    }

    /// The credential check at `now` (µs): lockout per account and per
    /// source, the same answer and the same work (one argon2 verification)
    /// for an unknown account as for a wrong password, every attempt
    /// audited.
    pub async fn check_password_at(
        &self,
        attempt: PasswordAttempt<'_>,
        now: i64,
    ) -> Result<SignInOutcome, IdentityError> {
        let (outcome, record) = self.check_password_unrecorded(attempt, now).await?;
        if let Some(record) = record {
            store::record_sign_in(&self.db, record).await?;
        }
        Ok(outcome)
    }

    /// [`Self::check_password_at`], except that a success is not yet
    /// recorded: the caller writes the returned [`SignInRecord`] (with the
    /// session the sign-in opens, in one transaction). `Some` only with
    /// `Accepted`.
    pub(crate) async fn check_password_unrecorded(
        &self,
        attempt: PasswordAttempt<'_>,
        now: i64,
    ) -> Result<(SignInOutcome, Option<SignInRecord>), IdentityError> {
        let env = attempt.environment;
        let account_key = throttle_key(
            "account",
            &[
                env.as_str(),
                attempt.national_id.scheme().as_str(),
                attempt.national_id.value(),
            ],
        );
        let source_key = if attempt.source.is_empty() {
            String::new()
        } else {
            throttle_key("source", &[attempt.source])
        };
        let found = store::find_citizen(&self.db, env, attempt.national_id).await?;
        let citizen_id = found.as_ref().map(|f| f.citizen.citizen_id.clone());

        // Reserve the attempt on both keys before any work: concurrent
        // guesses each take a number, and only the first `threshold` get
        // to the password check.
        let policy = &self.citizen_policy;
        let window = micros(policy.lockout_ms);
        let threshold = i64::from(policy.lockout_threshold);
        let keys: Vec<(&str, &str)> = [
            ("account", account_key.as_str()),
            ("source", source_key.as_str()),
        ]
        .into_iter()
        .filter(|(_, key)| !key.is_empty())
        .collect();
        let mut reserved: Vec<(&str, &str, i64)> = Vec::new();
        let mut locked = false;
        for (scope, key) in &keys {
            match store::reserve_attempt(&self.db, key, now, window).await? {
                Some(number) if number <= threshold => reserved.push((scope, key, number)),
                Some(_) => {
                    // Over the limit with attempts still in flight: turned
                    // away, uncounted. (Whether those were failures decides
                    // the lock: the attempt that fails as the last one
                    // locks.)
                    store::release_attempt(&self.db, key).await?;
                    locked = true;
                }
                None => locked = true,
            }
        }
        if locked {
            for (_, key, _) in &reserved {
                store::release_attempt(&self.db, key).await?;
            }
            self.audit_failure(env, citizen_id.as_deref(), "locked_out", now)
                .await?;
            let until = store::locked_until(&self.db, &account_key, &source_key).await?;
            return Ok((SignInOutcome::LockedOut { until }, None));
        }

        let password = SecretString::from(attempt.password.to_owned());
        let hash = found.as_ref().and_then(|f| f.password_hash.clone());
        let password_ok = blocking(move || match hash {
            Some(hash) => verify_password(&hash, password.expose_secret()),
            None => {
                // Unknown account, or no password yet: the same work.
                let _ = dummy_hash().map(|dummy| verify_password(dummy, password.expose_secret()));
                false
            }
        })
        .await?;

        let Some(found) = found.filter(|_| password_ok) else {
            return self
                .refuse(
                    env,
                    citizen_id.as_deref(),
                    "bad_credentials",
                    &reserved,
                    now,
                )
                .await
                .map(|outcome| (outcome, None));
        };
        if found.citizen.state != CitizenState::Active {
            return self
                .refuse(
                    env,
                    citizen_id.as_deref(),
                    "account_disabled",
                    &reserved,
                    now,
                )
                .await
                .map(|outcome| (outcome, None));
        }
        let mut methods = vec!["pwd"];
        if found.citizen.has_second_factor {
            let Some(code) = attempt.second_factor else {
                // The password was right: not a failure.
                for (_, key, _) in &reserved {
                    store::release_attempt(&self.db, key).await?;
                }
                return Ok((SignInOutcome::SecondFactorRequired, None));
            };
            if !self.second_factor_ok(&found, code, now).await? {
                return self
                    .refuse(
                        env,
                        citizen_id.as_deref(),
                        "bad_second_factor",
                        &reserved,
                        now,
                    )
                    .await
                    .map(|outcome| (outcome, None));
            }
            methods.push("otp");
        }
        // Signed in: the account's failures are to be forgotten and the
        // source's reservation taken back (its other failures stand).
        let record = SignInRecord {
            account_key,
            source_key: (!source_key.is_empty()).then_some(source_key),
            audit: audit(
                AuditEventType::SignInSuccess,
                env,
                Some(&found.citizen.citizen_id),
                None,
                &[("methods", &methods.join(" "))],
                now,
            ),
        };
        tracing::info!(citizen_id = %found.citizen.citizen_id, "citizen's credentials accepted");
        Ok((
            SignInOutcome::Accepted {
                citizen: Box::new(found.citizen),
                methods,
            },
            Some(record),
        ))
    }

    async fn second_factor_ok(
        &self,
        found: &CitizenCredentials,
        code: &str,
        now: i64,
    ) -> Result<bool, IdentityError> {
        let citizen_id = &found.citizen.citizen_id;
        if looks_like_recovery_code(code) {
            let used =
                store::use_recovery_code(&self.db, citizen_id, &recovery_code_hash(code)).await?;
            if used {
                let event = audit(
                    AuditEventType::MfaChange,
                    found.citizen.environment,
                    Some(citizen_id),
                    None,
                    &[("action", "recovery_code_used")],
                    now,
                );
                store::append_audit_event(&self.db, event).await?;
            }
            return Ok(used);
        }
        let Some(sealed) = &found.totp_sealed else {
            return Ok(false);
        };
        let secret =
            TotpSecret::from_bytes(self.keys.open_secret(&totp_context(citizen_id), sealed)?);
        match secret.verify(code, now.div_euclid(1_000_000), found.totp_last_step) {
            // Compare-and-set: of two concurrent uses of one code, one wins.
            Some(step) => store::use_totp_step(&self.db, citizen_id, step).await,
            None => Ok(false),
        }
    }

    /// The failure is already counted (reserved); audits it, and locks
    /// each key whose reserved attempt was its last one: `LockedOut` when
    /// this failure locked, else `Refused`.
    async fn refuse(
        &self,
        env: Environment,
        citizen_id: Option<&str>,
        reason: &str,
        reserved: &[(&str, &str, i64)],
        now: i64,
    ) -> Result<SignInOutcome, IdentityError> {
        let threshold = i64::from(self.citizen_policy.lockout_threshold);
        self.audit_failure(env, citizen_id, reason, now).await?;
        let mut locked = false;
        for (scope, key, number) in reserved {
            if *number >= threshold {
                locked |= self.lock(env, citizen_id, scope, key, now).await?;
            }
        }
        Ok(if locked {
            SignInOutcome::LockedOut {
                until: now.saturating_add(micros(self.citizen_policy.lockout_ms)),
            }
        } else {
            SignInOutcome::Refused
        })
    }

    /// Locks a key for the lockout time, audited once.
    async fn lock(
        &self,
        env: Environment,
        citizen_id: Option<&str>,
        scope: &str,
        key: &str,
        now: i64,
    ) -> Result<bool, IdentityError> {
        let lockout = micros(self.citizen_policy.lockout_ms);
        if !store::lock(&self.db, key, now, lockout).await? {
            return Ok(false);
        }
        let event = audit(
            AuditEventType::Lockout,
            env,
            citizen_id,
            None,
            &[("scope", scope)],
            now,
        );
        store::append_audit_event(&self.db, event).await?;
        tracing::warn!(scope, "sign-in locked out after repeated failures");
        Ok(true)
    }

    async fn audit_failure(
        &self,
        env: Environment,
        citizen_id: Option<&str>,
        reason: &str,
        now: i64,
    ) -> Result<(), IdentityError> {
        let event = audit(
            AuditEventType::SignInFailure,
            env,
            citizen_id,
            None,
            &[("reason", reason)],
            now,
        );
        store::append_audit_event(&self.db, event).await?;
        Ok(())
    }

    /// Audit events the caller may see, newest first.
    pub async fn list_audit_events(
        &self,
        caller: &Caller,
        query: AuditQuery,
        page_size: PageSize,
        before_seq: Option<i64>,
    ) -> Result<Page<AuditEvent>, IdentityError> {
        let operator = self.require_operator(caller).await.is_ok();
        let agency_id = match query.agency_id {
            Some(other) if other != caller.agency_id && !operator => {
                return Err(IdentityError::NotOperator);
            }
            Some(agency) => Some(agency),
            None if operator => None,
            None => Some(caller.agency_id.clone()),
        };
        let filter = AuditFilter {
            environment: Some(caller.environment),
            citizen_id: query.citizen_id,
            agency_id,
            types: query.types,
            occur_from: query.occur_from,
            occur_before: query.occur_before,
        };
        let items =
            store::list_audit_events(&self.db, &filter, before_seq, page_size.fetch_limit())
                .await?;
        Ok(Page::from_overfetch(items, page_size, |e| {
            e.seq.to_string()
        }))
    }

    /// The citizen, if the caller may change its contact details or state:
    /// the registering agency, or (when `operators_too`) an operator.
    async fn managed_citizen(
        &self,
        caller: &Caller,
        citizen_id: &str,
        operators_too: bool,
    ) -> Result<Citizen, IdentityError> {
        let citizen = store::get_citizen(&self.db, caller.environment, citizen_id)
            .await?
            .ok_or(IdentityError::CitizenNotFound)?
            .citizen;
        if citizen.registered_by != caller.agency_id
            && !(operators_too && self.require_operator(caller).await.is_ok())
        {
            return Err(IdentityError::NotRegisteringAgency);
        }
        Ok(citizen)
    }
}

fn view(caller: &Caller, citizen: Citizen) -> CitizenView {
    CitizenView {
        contact_visible: citizen.registered_by == caller.agency_id,
        citizen,
    }
}
