//! OpenID Connect state: redirect URIs, pending authorization requests,
//! one-time authorization codes, citizens' opaque access tokens and the
//! pairwise salt. Secrets are stored as SHA-256 digests.

use atiende_platform::on_db;
use atiende_platform::storage::Database;
use sqlx::AssertSqlSafe;

use super::citizens::{SignInRecord, append_audit, write_sign_in};
use crate::domain::IdentityError;

pub async fn insert_redirect_uri(
    db: &Database,
    client_id: &str,
    redirect_uri: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO client_redirect_uris (client_id, redirect_uri) VALUES ($1, $2) \
             ON CONFLICT (client_id, redirect_uri) DO NOTHING",
        )
        .bind(client_id)
        .bind(redirect_uri)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Replaces the client's redirect URIs; returns them sorted.
pub async fn replace_redirect_uris(
    db: &Database,
    client_id: &str,
    redirect_uris: &[String],
) -> Result<Vec<String>, IdentityError> {
    let uris: Vec<String> = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM client_redirect_uris WHERE client_id = $1")
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        for uri in redirect_uris {
            sqlx::query(
                "INSERT INTO client_redirect_uris (client_id, redirect_uri) VALUES ($1, $2) \
                 ON CONFLICT (client_id, redirect_uri) DO NOTHING",
            )
            .bind(client_id)
            .bind(uri)
            .execute(&mut *tx)
            .await?;
        }
        let uris = sqlx::query_scalar(
            "SELECT redirect_uri FROM client_redirect_uris WHERE client_id = $1 ORDER BY redirect_uri",
        )
        .bind(client_id)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        uris
    });
    Ok(uris)
}

/// Whether `redirect_uri` is registered, exactly, for the client.
pub async fn redirect_uri_registered(
    db: &Database,
    client_id: &str,
    redirect_uri: &str,
) -> Result<bool, IdentityError> {
    let found: i64 = on_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM client_redirect_uris WHERE client_id = $1 AND redirect_uri = $2",
        )
        .bind(client_id)
        .bind(redirect_uri)
        .fetch_one(pool)
        .await?
    });
    Ok(found > 0)
}

/// An authorization request waiting for the citizen to sign in.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuthorizationRequestRow {
    pub request_id: String,
    pub client_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub state: String,
    pub nonce: String,
    pub code_challenge: String,
    pub csrf_hash: String,
    pub expire_time: i64,
    /// Set once the citizen has signed in; consent comes next.
    pub citizen_id: Option<String>,
    pub methods: Option<String>,
    pub auth_time: Option<i64>,
    /// `low`, `substantial` or `high`: the least the client accepts.
    pub acr_required: String,
    /// `es` or `en`.
    pub locale: String,
    /// `prompt=consent`: ask even if consent was remembered.
    pub force_consent: bool,
    /// The session the sign-in came from or created.
    pub session_hash: Option<String>,
}

impl AuthorizationRequestRow {
    /// The citizen who registered from this request and has not signed in
    /// yet (waiting for the email code).
    pub fn registering_citizen(&self) -> Option<&str> {
        match (&self.citizen_id, &self.methods) {
            (Some(citizen_id), None) => Some(citizen_id),
            _ => None,
        }
    }
}

pub async fn insert_authorization_request(
    db: &Database,
    row: &AuthorizationRequestRow,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO authorization_requests (request_id, client_id, redirect_uri, scope, state, \
             nonce, code_challenge, csrf_hash, expire_time, citizen_id, methods, auth_time, \
             acr_required, locale, force_consent, session_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&row.request_id)
        .bind(&row.client_id)
        .bind(&row.redirect_uri)
        .bind(&row.scope)
        .bind(&row.state)
        .bind(&row.nonce)
        .bind(&row.code_challenge)
        .bind(&row.csrf_hash)
        .bind(row.expire_time)
        .bind(&row.citizen_id)
        .bind(&row.methods)
        .bind(row.auth_time)
        .bind(&row.acr_required)
        .bind(&row.locale)
        .bind(row.force_consent)
        .bind(&row.session_hash)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// The request, unless it expired.
pub async fn get_authorization_request(
    db: &Database,
    request_id: &str,
    now: i64,
) -> Result<Option<AuthorizationRequestRow>, IdentityError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT request_id, client_id, redirect_uri, scope, state, nonce, code_challenge, \
             csrf_hash, expire_time, citizen_id, methods, auth_time, acr_required, locale, \
             force_consent, session_hash FROM authorization_requests \
             WHERE request_id = $1 AND expire_time > $2",
        )
        .bind(request_id)
        .bind(now)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Records who signed in for the request, how, and in which session.
pub async fn mark_signed_in(
    db: &Database,
    request_id: &str,
    citizen_id: &str,
    methods: &str,
    auth_time: i64,
    session_hash: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "UPDATE authorization_requests SET citizen_id = $1, methods = $2, auth_time = $3, \
             session_hash = $4 WHERE request_id = $5",
        )
        .bind(citizen_id)
        .bind(methods)
        .bind(auth_time)
        .bind(session_hash)
        .bind(request_id)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// A citizen registered from the request's page and waits for the email
/// code: the citizen is known, not yet signed in (no methods).
pub async fn mark_registering(
    db: &Database,
    request_id: &str,
    citizen_id: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "UPDATE authorization_requests SET citizen_id = $1, methods = NULL, auth_time = NULL, \
             session_hash = NULL WHERE request_id = $2",
        )
        .bind(citizen_id)
        .bind(request_id)
        .execute(pool)
        .await?;
    });
    Ok(())
}

pub async fn delete_authorization_request(
    db: &Database,
    request_id: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query("DELETE FROM authorization_requests WHERE request_id = $1")
            .bind(request_id)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A code, issued when the citizen signed in and consented.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AuthorizationCodeRow {
    pub code_hash: String,
    pub client_id: String,
    pub citizen_id: String,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: String,
    pub code_challenge: String,
    pub auth_time: i64,
    pub methods: String,
    pub expire_time: i64,
    pub session_hash: Option<String>,
}

/// Stores the code and forgets the request it answers, in one
/// transaction: false (and nothing stored) if the request was already
/// answered, so one request never gives two codes.
pub async fn insert_authorization_code(
    db: &Database,
    code: &AuthorizationCodeRow,
    request_id: &str,
) -> Result<bool, IdentityError> {
    let stored = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let answered = sqlx::query("DELETE FROM authorization_requests WHERE request_id = $1")
            .bind(request_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if answered != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, client_id, citizen_id, redirect_uri, scope, \
             nonce, code_challenge, auth_time, methods, expire_time, session_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&code.code_hash)
        .bind(&code.client_id)
        .bind(&code.citizen_id)
        .bind(&code.redirect_uri)
        .bind(&code.scope)
        .bind(&code.nonce)
        .bind(&code.code_challenge)
        .bind(code.auth_time)
        .bind(&code.methods)
        .bind(code.expire_time)
        .bind(&code.session_hash)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        true
    });
    Ok(stored)
}

/// Marks the code used and returns it, if it was unused and unexpired:
/// of two exchanges of one code, one wins.
pub async fn use_authorization_code(
    db: &Database,
    code_hash: &str,
    client_id: &str,
    now: i64,
) -> Result<Option<AuthorizationCodeRow>, IdentityError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "UPDATE authorization_codes SET use_time = $1 \
             WHERE code_hash = $2 AND client_id = $3 AND use_time IS NULL AND expire_time > $1 \
             RETURNING code_hash, client_id, citizen_id, redirect_uri, scope, nonce, \
             code_challenge, auth_time, methods, expire_time, session_hash",
        )
        .bind(now)
        .bind(code_hash)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// The client a code was issued to, used or not.
pub async fn authorization_code_client(
    db: &Database,
    code_hash: &str,
) -> Result<Option<String>, IdentityError> {
    let client = on_db!(db, pool => {
        sqlx::query_scalar("SELECT client_id FROM authorization_codes WHERE code_hash = $1")
            .bind(code_hash)
            .fetch_optional(pool)
            .await?
    });
    Ok(client)
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CitizenAccessTokenRow {
    pub token_hash: String,
    pub citizen_id: String,
    pub client_id: String,
    pub agency_id: String,
    pub scope: String,
    pub code_hash: String,
    pub expire_time: i64,
}

pub async fn insert_access_token(
    db: &Database,
    row: &CitizenAccessTokenRow,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO citizen_access_tokens (token_hash, citizen_id, client_id, agency_id, scope, \
             code_hash, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.token_hash)
        .bind(&row.citizen_id)
        .bind(&row.client_id)
        .bind(&row.agency_id)
        .bind(&row.scope)
        .bind(&row.code_hash)
        .bind(row.expire_time)
        .execute(pool)
        .await?;
    });
    Ok(())
}

pub async fn get_access_token(
    db: &Database,
    token_hash: &str,
    now: i64,
) -> Result<Option<CitizenAccessTokenRow>, IdentityError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT token_hash, citizen_id, client_id, agency_id, scope, code_hash, expire_time \
             FROM citizen_access_tokens WHERE token_hash = $1 AND expire_time > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// An unused, unexpired refresh token.
pub async fn get_refresh_token(
    db: &Database,
    token_hash: &str,
    now: i64,
) -> Result<Option<RefreshTokenRow>, IdentityError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT token_hash, family, citizen_id, client_id, agency_id, scope, expire_time \
             FROM refresh_tokens WHERE token_hash = $1 AND use_time IS NULL AND expire_time > $2",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RefreshTokenRow {
    pub token_hash: String,
    pub family: String,
    pub citizen_id: String,
    pub client_id: String,
    pub agency_id: String,
    pub scope: String,
    pub expire_time: i64,
}

/// What presenting a refresh token found.
pub enum RefreshLookup {
    /// Unused and unexpired: now marked used.
    Fresh(RefreshTokenRow),
    /// Used before: a replay (of a token its family has moved past).
    Replayed {
        family: String,
    },
    Unknown,
}

/// Starts a family with its first refresh token.
pub async fn start_refresh_family(
    db: &Database,
    first: &RefreshTokenRow,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (family, expire_time) VALUES ($1, $2) \
             ON CONFLICT (family) DO NOTHING",
        )
        .bind(&first.family)
        .bind(first.expire_time)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family, citizen_id, client_id, agency_id, scope, \
             expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&first.token_hash)
        .bind(&first.family)
        .bind(&first.citizen_id)
        .bind(&first.client_id)
        .bind(&first.agency_id)
        .bind(&first.scope)
        .bind(first.expire_time)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// The new tokens a refresh issues (digests), with the access token's end.
pub struct Rotation<'a> {
    pub presented_hash: &'a str,
    pub client_id: &'a str,
    pub new_refresh_hash: &'a str,
    pub new_access_hash: &'a str,
    pub access_expire_time: i64,
    pub now: i64,
}

/// A refresh, in one transaction that first locks the token's family row:
/// a fresh token is marked used and replaced by a new one of its family,
/// with an access token; a used one revokes the family. A revocation of
/// the family (which takes the same row lock) therefore either happens
/// before, and the refresh finds the family revoked, or after, and also
/// removes what the refresh issued.
pub async fn rotate_refresh_token(
    db: &Database,
    rotation: &Rotation<'_>,
) -> Result<RefreshLookup, IdentityError> {
    const COLUMNS: &str =
        "token_hash, family, citizen_id, client_id, agency_id, scope, expire_time";
    let lookup = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let family: Option<String> = sqlx::query_scalar(
            "SELECT family FROM refresh_tokens WHERE token_hash = $1 AND client_id = $2",
        )
        .bind(rotation.presented_hash)
        .bind(rotation.client_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(family) = family else {
            return Ok(RefreshLookup::Unknown);
        };
        let revoked: Option<Option<i64>> = sqlx::query_scalar(
            "UPDATE refresh_families SET expire_time = expire_time WHERE family = $1 \
             RETURNING revoke_time",
        )
        .bind(&family)
        .fetch_optional(&mut *tx)
        .await?;
        if !matches!(revoked, Some(None)) {
            return Ok(RefreshLookup::Unknown);
        }
        let fresh: Option<RefreshTokenRow> = sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE refresh_tokens SET use_time = $1 \
             WHERE token_hash = $2 AND client_id = $3 AND use_time IS NULL AND expire_time > $1 \
             RETURNING {COLUMNS}"
        )))
        .bind(rotation.now)
        .bind(rotation.presented_hash)
        .bind(rotation.client_id)
        .fetch_optional(&mut *tx)
        .await?;
        match fresh {
            Some(row) => {
                sqlx::query(
                    "INSERT INTO refresh_tokens (token_hash, family, citizen_id, client_id, \
                     agency_id, scope, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(rotation.new_refresh_hash)
                .bind(&row.family)
                .bind(&row.citizen_id)
                .bind(&row.client_id)
                .bind(&row.agency_id)
                .bind(&row.scope)
                .bind(row.expire_time)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "INSERT INTO citizen_access_tokens (token_hash, citizen_id, client_id, \
                     agency_id, scope, code_hash, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(rotation.new_access_hash)
                .bind(&row.citizen_id)
                .bind(&row.client_id)
                .bind(&row.agency_id)
                .bind(&row.scope)
                .bind(&row.family)
                .bind(rotation.access_expire_time)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                RefreshLookup::Fresh(row)
            }
            None => {
                // Used before (or expired): someone holds a copy.
                let _ = revoke_family_in!(tx, &family, rotation.now);
                tx.commit().await?;
                RefreshLookup::Replayed { family }
            }
        }
    });
    Ok(lookup)
}

/// How long a revoked family's row is kept (longer than any family lives).
const REFRESH_FAMILY_KEEP_MICROS: i64 = 13 * 3600 * 1_000_000;

/// The statements that revoke a family, inside the caller's transaction
/// (one text for both engines, as `on_db!` expands per engine).
macro_rules! revoke_family_in {
    ($tx:expr, $family:expr, $now:expr) => {{
        // An upsert: a family revoked before its first token was stored
        // (a code replayed during its own exchange) stays revoked.
        sqlx::query(
            "INSERT INTO refresh_families (family, revoke_time, expire_time) VALUES ($2, $1, $3) \
             ON CONFLICT (family) DO UPDATE SET revoke_time = EXCLUDED.revoke_time",
        )
        .bind($now)
        .bind($family)
        .bind($now.saturating_add(REFRESH_FAMILY_KEEP_MICROS))
        .execute(&mut *$tx)
        .await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE family = $1")
            .bind($family)
            .execute(&mut *$tx)
            .await?;
        sqlx::query("DELETE FROM citizen_access_tokens WHERE code_hash = $1")
            .bind($family)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
    }};
}
use revoke_family_in;

/// Revokes a whole family: its refresh tokens and its access tokens, and
/// no refresh can add to it afterwards.
pub async fn revoke_family(db: &Database, family: &str) -> Result<u64, IdentityError> {
    let now = atiende_platform::storage::now_micros();
    let access_tokens = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let revoked = revoke_family_in!(tx, family, now);
        tx.commit().await?;
        revoked
    });
    Ok(access_tokens)
}

/// RFC 7009 for a client's own citizen tokens: a refresh token revokes its
/// family, an access token itself. The citizen whose token it was, if any.
pub async fn revoke_client_token(
    db: &Database,
    token_hash: &str,
    client_id: &str,
) -> Result<Option<String>, IdentityError> {
    let refresh: Option<(String, String)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT family, citizen_id FROM refresh_tokens WHERE token_hash = $1 AND client_id = $2",
        )
        .bind(token_hash)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    if let Some((family, citizen_id)) = refresh {
        revoke_family(db, &family).await?;
        return Ok(Some(citizen_id));
    }
    let access: Option<String> = on_db!(db, pool => {
        sqlx::query_scalar(
            "DELETE FROM citizen_access_tokens WHERE token_hash = $1 AND client_id = $2 \
             RETURNING citizen_id",
        )
        .bind(token_hash)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    Ok(access)
}

/// The deployment's pairwise salt, created on first use (`candidate`).
pub async fn pairwise_salt(db: &Database, candidate: &str) -> Result<String, IdentityError> {
    let salt: String = on_db!(db, pool => {
        sqlx::query("INSERT INTO pairwise_salt (id, salt) VALUES (1, $1) ON CONFLICT (id) DO NOTHING")
            .bind(candidate)
            .execute(pool)
            .await?;
        sqlx::query_scalar("SELECT salt FROM pairwise_salt WHERE id = 1")
            .fetch_one(pool)
            .await?
    });
    Ok(salt)
}

/// A citizen's single sign-on session.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionRow {
    pub session_hash: String,
    pub citizen_id: String,
    pub environment: String,
    pub methods: String,
    pub auth_time: i64,
    pub idle_expire_time: i64,
    pub expire_time: i64,
}

/// A citizen has just signed in for the request: in one transaction, the
/// password check's record (if the sign-in was one), the browser's previous
/// session (`replaced`, if any) ended, the new one stored, and the request's
/// record of who signed in, how, and in which session.
pub async fn start_session(
    db: &Database,
    sign_in: Option<SignInRecord>,
    replaced: Option<&str>,
    row: &SessionRow,
    request_id: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        if let Some(replaced) = replaced {
            sqlx::query("DELETE FROM citizen_sessions WHERE session_hash = $1")
                .bind(replaced)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO citizen_sessions (session_hash, citizen_id, environment, methods, \
             auth_time, idle_expire_time, expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.session_hash)
        .bind(&row.citizen_id)
        .bind(&row.environment)
        .bind(&row.methods)
        .bind(row.auth_time)
        .bind(row.idle_expire_time)
        .bind(row.expire_time)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE authorization_requests SET citizen_id = $1, methods = $2, auth_time = $3, \
             session_hash = $4 WHERE request_id = $5",
        )
        .bind(&row.citizen_id)
        .bind(&row.methods)
        .bind(row.auth_time)
        .bind(&row.session_hash)
        .bind(request_id)
        .execute(&mut *tx)
        .await?;
        // Last: the audit entry holds the chain's head until the commit.
        if let Some(sign_in) = sign_in {
            write_sign_in!(tx, sign_in);
        }
        tx.commit().await?;
    });
    Ok(())
}

/// The session, if it has expired neither way; its idle expiry moves to
/// `idle_until` (never past the absolute one).
pub async fn touch_session(
    db: &Database,
    session_hash: &str,
    now: i64,
    idle_until: i64,
) -> Result<Option<SessionRow>, IdentityError> {
    let least = match db.engine() {
        atiende_platform::storage::Engine::Sqlite => "MIN",
        atiende_platform::storage::Engine::Postgres => "LEAST",
    };
    let row = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE citizen_sessions SET idle_expire_time = {least}($1, expire_time) \
             WHERE session_hash = $2 AND idle_expire_time > $3 AND expire_time > $3 \
             RETURNING session_hash, citizen_id, environment, methods, auth_time, \
             idle_expire_time, expire_time"
        )))
        .bind(idle_until)
        .bind(session_hash)
        .bind(now)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Records a second factor proved within the session (step-up).
pub async fn upgrade_session(
    db: &Database,
    session_hash: &str,
    methods: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query("UPDATE citizen_sessions SET methods = $1 WHERE session_hash = $2")
            .bind(methods)
            .bind(session_hash)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Ends a session; the citizen it belonged to, if it existed.
pub async fn delete_session(
    db: &Database,
    session_hash: &str,
) -> Result<Option<String>, IdentityError> {
    let citizen = on_db!(db, pool => {
        sqlx::query_scalar(
            "DELETE FROM citizen_sessions WHERE session_hash = $1 RETURNING citizen_id",
        )
        .bind(session_hash)
        .fetch_optional(pool)
        .await?
    });
    Ok(citizen)
}

/// The scope a citizen allowed the client, if remembered.
pub async fn consent_grant(
    db: &Database,
    citizen_id: &str,
    client_id: &str,
) -> Result<Option<String>, IdentityError> {
    let scope = on_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT scope FROM consent_grants WHERE citizen_id = $1 AND client_id = $2",
        )
        .bind(citizen_id)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    Ok(scope)
}

/// Remembers what the citizen allowed (replacing what was remembered).
pub async fn remember_consent(
    db: &Database,
    citizen_id: &str,
    client_id: &str,
    scope: &str,
    now: i64,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO consent_grants (citizen_id, client_id, scope, grant_time) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (citizen_id, client_id) \
             DO UPDATE SET scope = EXCLUDED.scope, grant_time = EXCLUDED.grant_time",
        )
        .bind(citizen_id)
        .bind(client_id)
        .bind(scope)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Keeps a new email verification code (replacing any earlier one), with
/// the password that waits for it (self-registration).
pub async fn put_email_code(
    db: &Database,
    citizen_id: &str,
    code_hash: &str,
    password_hash: Option<&str>,
    expire_time: i64,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO email_verifications (citizen_id, code_hash, password_hash, attempts, \
             expire_time) VALUES ($1, $2, $3, 0, $4) ON CONFLICT (citizen_id) \
             DO UPDATE SET code_hash = EXCLUDED.code_hash, \
             password_hash = COALESCE(EXCLUDED.password_hash, email_verifications.password_hash), \
             attempts = 0, expire_time = EXCLUDED.expire_time",
        )
        .bind(citizen_id)
        .bind(code_hash)
        .bind(password_hash)
        .bind(expire_time)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Checks a typed code: one try is spent whatever the result; the right
/// code, unexpired and within `max_attempts`, verifies the email address,
/// sets the password that waited for it, and is forgotten.
pub async fn verify_email_code(
    db: &Database,
    citizen_id: &str,
    code_hash: &str,
    max_attempts: i64,
    now: i64,
) -> Result<bool, IdentityError> {
    let verified = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let spent: Option<(String, Option<String>)> = sqlx::query_as(
            "UPDATE email_verifications SET attempts = attempts + 1 \
             WHERE citizen_id = $1 AND attempts < $2 AND expire_time > $3 \
             RETURNING code_hash, password_hash",
        )
        .bind(citizen_id)
        .bind(max_attempts)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let (ok, password_hash) = match spent {
            Some((stored, password_hash)) => (
                bool::from(subtle::ConstantTimeEq::ct_eq(stored.as_bytes(), code_hash.as_bytes())),
                password_hash,
            ),
            None => (false, None),
        };
        if ok {
            sqlx::query("DELETE FROM email_verifications WHERE citizen_id = $1")
                .bind(citizen_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "UPDATE citizens SET email_verified = TRUE, \
                 password_hash = COALESCE($1, password_hash), update_time = $2 \
                 WHERE citizen_id = $3",
            )
            .bind(password_hash)
            .bind(now)
            .bind(citizen_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        ok
    });
    Ok(verified)
}

/// Replaces a client's `private_key_jwt` keys (none: removes them).
pub async fn set_client_jwks(
    db: &Database,
    client_id: &str,
    jwks: Option<&str>,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        match jwks {
            Some(jwks) => {
                sqlx::query(
                    "INSERT INTO client_jwks (client_id, jwks) VALUES ($1, $2) \
                     ON CONFLICT (client_id) DO UPDATE SET jwks = EXCLUDED.jwks",
                )
                .bind(client_id)
                .bind(jwks)
                .execute(pool)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM client_jwks WHERE client_id = $1")
                    .bind(client_id)
                    .execute(pool)
                    .await?;
            }
        }
    });
    Ok(())
}

pub async fn client_jwks(db: &Database, client_id: &str) -> Result<Option<String>, IdentityError> {
    let jwks = on_db!(db, pool => {
        sqlx::query_scalar("SELECT jwks FROM client_jwks WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(pool)
            .await?
    });
    Ok(jwks)
}

/// Records an assertion's id (digest) until it expires: false if it was
/// already used.
pub async fn use_assertion_id(
    db: &Database,
    jti_hash: &str,
    expire_time: i64,
) -> Result<bool, IdentityError> {
    let inserted = on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO client_assertion_ids (jti_hash, expire_time) VALUES ($1, $2) \
             ON CONFLICT (jti_hash) DO NOTHING",
        )
        .bind(jti_hash)
        .bind(expire_time)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(inserted == 1)
}

/// Forgets what has expired: pending requests, codes once their tokens
/// would have expired too (a replay must still find them until then),
/// access tokens, and sign-in throttles idle for a day.
pub async fn prune(db: &Database, now: i64, keep_codes_for: i64) -> Result<(), IdentityError> {
    const DAY: i64 = 24 * 3600 * 1_000_000;
    on_db!(db, pool => {
        sqlx::query("DELETE FROM authorization_requests WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM authorization_codes WHERE expire_time <= $1")
            .bind(now.saturating_sub(keep_codes_for))
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM citizen_access_tokens WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM refresh_families WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM citizen_sessions WHERE idle_expire_time <= $1 OR expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM client_assertion_ids WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM email_verifications WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?;
        sqlx::query(
            "DELETE FROM sign_in_throttles WHERE locked_until <= $1 AND window_start <= $2",
        )
        .bind(now)
        .bind(now.saturating_sub(DAY))
        .execute(pool)
        .await?;
    });
    Ok(())
}
