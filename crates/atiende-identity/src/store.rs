//! The identity service's tables, on SQLite or PostgreSQL. Speaks domain
//! types; every query that reads a client is scoped by agency where the
//! caller is an agency.

use atiende_platform::auth::{Environment, ScopeSet};
use atiende_platform::on_db;
use atiende_platform::storage::{Database, Migrations};

use crate::domain::{Agency, Client, ClientState, DisplayName, IdentityError, SecretHash};

pub mod citizens;
pub mod oidc;

pub const MIGRATIONS: Migrations = Migrations {
    service: "identity",
    sqlite: &[
        (
            1,
            "agencies clients keys",
            include_str!("../migrations/sqlite/0001_agencies_clients_keys.sql"),
        ),
        (
            2,
            "revocations by expiry",
            include_str!("../migrations/sqlite/0002_revocations_by_expiry.sql"),
        ),
        (
            3,
            "citizens audit",
            include_str!("../migrations/sqlite/0003_citizens_audit.sql"),
        ),
        (
            4,
            "oidc",
            include_str!("../migrations/sqlite/0004_oidc.sql"),
        ),
        (
            5,
            "refresh tokens",
            include_str!("../migrations/sqlite/0005_refresh_tokens.sql"),
        ),
        (
            6,
            "consent",
            include_str!("../migrations/sqlite/0006_consent.sql"),
        ),
        (
            7,
            "sessions",
            include_str!("../migrations/sqlite/0007_sessions.sql"),
        ),
        (
            8,
            "client keys",
            include_str!("../migrations/sqlite/0008_client_keys.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "agencies clients keys",
            include_str!("../migrations/postgres/0001_agencies_clients_keys.sql"),
        ),
        (
            2,
            "revocations by expiry",
            include_str!("../migrations/postgres/0002_revocations_by_expiry.sql"),
        ),
        (
            3,
            "citizens audit",
            include_str!("../migrations/postgres/0003_citizens_audit.sql"),
        ),
        (
            4,
            "oidc",
            include_str!("../migrations/postgres/0004_oidc.sql"),
        ),
        (
            5,
            "refresh tokens",
            include_str!("../migrations/postgres/0005_refresh_tokens.sql"),
        ),
        (
            6,
            "consent",
            include_str!("../migrations/postgres/0006_consent.sql"),
        ),
        (
            7,
            "sessions",
            include_str!("../migrations/postgres/0007_sessions.sql"),
        ),
        (
            8,
            "client keys",
            include_str!("../migrations/postgres/0008_client_keys.sql"),
        ),
    ],
};

#[derive(sqlx::FromRow)]
struct AgencyRow {
    agency_id: String,
    display_name: String,
    operator: bool,
    create_time: i64,
}

impl TryFrom<AgencyRow> for Agency {
    type Error = IdentityError;

    fn try_from(row: AgencyRow) -> Result<Self, Self::Error> {
        Ok(Agency {
            agency_id: row.agency_id,
            display_name: DisplayName::parse(&row.display_name).map_err(corrupt)?,
            operator: row.operator,
            create_time: row.create_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct ClientRow {
    client_id: String,
    agency_id: String,
    display_name: String,
    scopes: String,
    environment: String,
    state: String,
    create_time: i64,
    secret_rotate_time: i64,
}

impl TryFrom<ClientRow> for Client {
    type Error = IdentityError;

    fn try_from(row: ClientRow) -> Result<Self, Self::Error> {
        Ok(Client {
            client_id: row.client_id,
            agency_id: row.agency_id,
            display_name: DisplayName::parse(&row.display_name).map_err(corrupt)?,
            scopes: ScopeSet::parse_list(&row.scopes).map_err(corrupt)?,
            environment: Environment::parse(&row.environment).ok_or_else(|| corrupt("env"))?,
            state: ClientState::parse(&row.state).ok_or_else(|| corrupt("state"))?,
            create_time: row.create_time,
            secret_rotate_time: row.secret_rotate_time,
        })
    }
}

pub(crate) fn corrupt(what: impl std::fmt::Display) -> IdentityError {
    IdentityError::Keys(format!("stored row does not parse: {what}"))
}

pub async fn insert_agency(db: &Database, agency: &Agency) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO agencies (agency_id, display_name, operator, create_time) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&agency.agency_id)
        .bind(agency.display_name.as_str())
        .bind(agency.operator)
        .bind(agency.create_time)
        .execute(pool)
        .await?;
    });
    Ok(())
}

pub async fn get_agency(db: &Database, agency_id: &str) -> Result<Option<Agency>, IdentityError> {
    let row: Option<AgencyRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT agency_id, display_name, operator, create_time FROM agencies \
             WHERE agency_id = $1",
        )
        .bind(agency_id)
        .fetch_optional(pool)
        .await?
    });
    row.map(Agency::try_from).transpose()
}

pub async fn insert_client(
    db: &Database,
    client: &Client,
    secret_hash: &SecretHash,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO clients (client_id, agency_id, display_name, scopes, environment, state, \
             secret_hash, create_time, secret_rotate_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&client.client_id)
        .bind(&client.agency_id)
        .bind(client.display_name.as_str())
        .bind(client.scopes.to_string())
        .bind(client.environment.as_str())
        .bind(client.state.as_str())
        .bind(&secret_hash.0)
        .bind(client.create_time)
        .bind(client.secret_rotate_time)
        .execute(pool)
        .await?;
    });
    Ok(())
}

#[derive(sqlx::FromRow)]
struct ClientWithHashRow {
    #[sqlx(flatten)]
    client: ClientRow,
    secret_hash: String,
}

/// A client and its secret hash, for authenticating it.
pub async fn get_client_credentials(
    db: &Database,
    client_id: &str,
) -> Result<Option<(Client, SecretHash)>, IdentityError> {
    let row: Option<ClientWithHashRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT client_id, agency_id, display_name, scopes, environment, state, \
             create_time, secret_rotate_time, secret_hash FROM clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    row.map(|r| Ok((Client::try_from(r.client)?, SecretHash(r.secret_hash))))
        .transpose()
}

/// The client, if it belongs to `agency_id`.
pub async fn get_client(
    db: &Database,
    agency_id: &str,
    client_id: &str,
) -> Result<Option<Client>, IdentityError> {
    let row: Option<ClientRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT client_id, agency_id, display_name, scopes, environment, state, \
             create_time, secret_rotate_time FROM clients WHERE agency_id = $1 AND client_id = $2",
        )
        .bind(agency_id)
        .bind(client_id)
        .fetch_optional(pool)
        .await?
    });
    row.map(Client::try_from).transpose()
}

/// The agency's clients, newest first (ids are time-ordered), after the
/// cursor `before_client_id`; only those of `environment` when given.
pub async fn list_clients(
    db: &Database,
    agency_id: &str,
    environment: Option<Environment>,
    before_client_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Client>, IdentityError> {
    let rows: Vec<ClientRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT client_id, agency_id, display_name, scopes, environment, state, \
             create_time, secret_rotate_time FROM clients \
             WHERE agency_id = $1 AND ($2 IS NULL OR client_id < $2) \
             AND ($3 IS NULL OR environment = $3) \
             ORDER BY client_id DESC LIMIT $4",
        )
        .bind(agency_id)
        .bind(before_client_id)
        .bind(environment.map(Environment::as_str))
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(Client::try_from).collect()
}

/// Replaces the secret of an active client of the agency; `false` when no
/// such client (any more).
pub async fn update_client_secret(
    db: &Database,
    client: &Client,
    secret_hash: &SecretHash,
    now: i64,
) -> Result<bool, IdentityError> {
    let updated = on_db!(db, pool => {
        sqlx::query(
            "UPDATE clients SET secret_hash = $1, secret_rotate_time = $2 \
             WHERE client_id = $3 AND agency_id = $4 AND state = 'active'",
        )
        .bind(&secret_hash.0)
        .bind(now)
        .bind(&client.client_id)
        .bind(&client.agency_id)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(updated == 1)
}

/// Disables the client and records the revocation of its tokens, in one
/// transaction.
pub async fn disable_client(
    db: &Database,
    client: &Client,
    tokens_expire_before: i64,
    now: i64,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query("UPDATE clients SET state = 'disabled' WHERE client_id = $1 AND agency_id = $2")
            .bind(&client.client_id)
            .bind(&client.agency_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO revocations (subject_kind, subject, agency_id, expire_time, revoke_time) \
             VALUES ('client', $1, $2, $3, $4) ON CONFLICT (subject_kind, subject) DO NOTHING",
        )
        .bind(&client.client_id)
        .bind(&client.agency_id)
        .bind(tokens_expire_before)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(())
}

/// A sealed signing key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub private_key_sealed: Vec<u8>,
    pub public_x: String,
    pub public_y: String,
    pub create_time: i64,
    pub activate_time: i64,
}

pub async fn insert_signing_key(db: &Database, key: &SigningKeyRow) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO signing_keys (kid, private_key_sealed, public_x, public_y, create_time, \
             activate_time) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&key.kid)
        .bind(&key.private_key_sealed)
        .bind(&key.public_x)
        .bind(&key.public_y)
        .bind(key.create_time)
        .bind(key.activate_time)
        .execute(pool)
        .await?;
    });
    Ok(())
}

pub async fn delete_signing_key(db: &Database, kid: &str) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
            .bind(kid)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// Every signing key, oldest activation first.
pub async fn list_signing_keys(db: &Database) -> Result<Vec<SigningKeyRow>, IdentityError> {
    let rows = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT kid, private_key_sealed, public_x, public_y, create_time, activate_time \
             FROM signing_keys ORDER BY activate_time, kid",
        )
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevocationRow {
    pub subject_kind: String,
    pub subject: String,
    pub expire_time: i64,
    pub revoke_time: i64,
}

pub async fn insert_token_revocation(
    db: &Database,
    token_id: &str,
    agency_id: &str,
    expire_time: i64,
    now: i64,
) -> Result<(), IdentityError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO revocations (subject_kind, subject, agency_id, expire_time, revoke_time) \
             VALUES ('token', $1, $2, $3, $4) ON CONFLICT (subject_kind, subject) DO NOTHING",
        )
        .bind(token_id)
        .bind(agency_id)
        .bind(expire_time)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

/// Every revocation that has not expired.
pub async fn unexpired_revocations(
    db: &Database,
    now: i64,
) -> Result<Vec<RevocationRow>, IdentityError> {
    let rows = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT subject_kind, subject, expire_time, revoke_time FROM revocations \
             WHERE expire_time > $1",
        )
        .bind(now)
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

/// Forgets revocations of tokens that have expired anyway.
pub async fn prune_revocations(db: &Database, now: i64) -> Result<u64, IdentityError> {
    let done = on_db!(db, pool => {
        sqlx::query("DELETE FROM revocations WHERE expire_time <= $1")
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(done)
}
