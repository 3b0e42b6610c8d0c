//! OpenID Connect state: redirect URIs, pending authorization requests,
//! one-time authorization codes, citizens' opaque access tokens and the
//! pairwise salt. Secrets are stored as SHA-256 digests.

use atiende_platform::on_db;
use atiende_platform::storage::Database;
use sqlx::AssertSqlSafe;

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
}

pub async fn insert_authorization_request(
    db: &Database,
    row: &AuthorizationRequestRow,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO authorization_requests (request_id, client_id, redirect_uri, scope, state, \
             nonce, code_challenge, csrf_hash, expire_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
             csrf_hash, expire_time, citizen_id, methods, auth_time FROM authorization_requests \
             WHERE request_id = $1 AND expire_time > $2",
        )
        .bind(request_id)
        .bind(now)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Records who signed in for the request, and how.
pub async fn mark_signed_in(
    db: &Database,
    request_id: &str,
    citizen_id: &str,
    methods: &str,
    auth_time: i64,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "UPDATE authorization_requests SET citizen_id = $1, methods = $2, auth_time = $3 \
             WHERE request_id = $4",
        )
        .bind(citizen_id)
        .bind(methods)
        .bind(auth_time)
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
}

/// Stores the code and forgets the request it answers, in one transaction.
pub async fn insert_authorization_code(
    db: &Database,
    code: &AuthorizationCodeRow,
    request_id: &str,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO authorization_codes (code_hash, client_id, citizen_id, redirect_uri, scope, \
             nonce, code_challenge, auth_time, methods, expire_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM authorization_requests WHERE request_id = $1")
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    });
    Ok(())
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
             code_challenge, auth_time, methods, expire_time",
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

pub async fn insert_refresh_token(
    db: &Database,
    row: &RefreshTokenRow,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family, citizen_id, client_id, agency_id, scope, \
             expire_time) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&row.token_hash)
        .bind(&row.family)
        .bind(&row.citizen_id)
        .bind(&row.client_id)
        .bind(&row.agency_id)
        .bind(&row.scope)
        .bind(row.expire_time)
        .execute(pool)
        .await?;
    });
    Ok(())
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

/// Marks the token used if it is fresh (compare and set: of two refreshes
/// with one token, one wins and the other is a replay).
pub async fn use_refresh_token(
    db: &Database,
    token_hash: &str,
    client_id: &str,
    now: i64,
) -> Result<RefreshLookup, IdentityError> {
    const COLUMNS: &str =
        "token_hash, family, citizen_id, client_id, agency_id, scope, expire_time";
    let fresh: Option<RefreshTokenRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(format!(
            "UPDATE refresh_tokens SET use_time = $1 \
             WHERE token_hash = $2 AND client_id = $3 AND use_time IS NULL AND expire_time > $1 \
             RETURNING {COLUMNS}"
        )))
        .bind(now)
        .bind(token_hash)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    if let Some(row) = fresh {
        return Ok(RefreshLookup::Fresh(row));
    }
    let used: Option<String> = on_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT family FROM refresh_tokens WHERE token_hash = $1 AND client_id = $2 \
             AND use_time IS NOT NULL",
        )
        .bind(token_hash)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    Ok(match used {
        Some(family) => RefreshLookup::Replayed { family },
        None => RefreshLookup::Unknown,
    })
}

/// Revokes a whole family: its refresh tokens and its access tokens.
pub async fn revoke_family(db: &Database, family: &str) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE family = $1")
            .bind(family)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM citizen_access_tokens WHERE code_hash = $1")
            .bind(family)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    });
    Ok(())
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

/// Revokes the access tokens issued for a code (when the code is replayed).
pub async fn revoke_tokens_of_code(db: &Database, code_hash: &str) -> Result<u64, IdentityError> {
    let done = on_db!(db, pool => {
        sqlx::query("DELETE FROM citizen_access_tokens WHERE code_hash = $1")
            .bind(code_hash)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(done)
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
