//! Database pools for both engines, and each service's embedded migrations.
//!
//! SQLite (a file in the data directory) is the default so that one command
//! runs everything; PostgreSQL is the production engine. Repository code is
//! written once, with SQL both engines accept (`$1` placeholders, integer
//! timestamps in microseconds, text ids), and runs on either through
//! [`on_db!`](crate::on_db), which expands the same code for each pool type.
//! The `Any` driver is avoided on purpose: it loses types.

use std::borrow::Cow;
use std::str::FromStr;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlSafeStr, SqlitePool};

use crate::config::StorageConfig;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("unsupported database URL scheme (use sqlite:// or postgres://)")]
    UnsupportedUrl,
    #[error("cannot create the data directory: {0}")]
    DataDir(#[source] std::io::Error),
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migrations failed: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A pool on one of the two engines.
#[derive(Debug, Clone)]
pub enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of `$db`; the body is
/// compiled once per engine.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::storage::Database::Sqlite($pool) => $body,
            $crate::storage::Database::Postgres($pool) => $body,
        }
    };
}

/// One migration: its version, a short name, and its SQL.
pub type MigrationScript = (i64, &'static str, &'static str);

/// A service's schema history, written once per engine.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Names the table that records applied migrations
    /// (`<service>_schema_migrations`), so services can share a database.
    pub service: &'static str,
    pub sqlite: &'static [MigrationScript],
    pub postgres: &'static [MigrationScript],
}

impl Database {
    /// Connects to the service's database: the configured URL, or a SQLite
    /// file `<data_dir>/<service>.db`.
    pub async fn for_service(config: &StorageConfig, service: &str) -> Result<Self, StorageError> {
        match &config.database_url {
            Some(url) => Self::connect(url.expose_secret(), config.max_connections).await,
            None => {
                std::fs::create_dir_all(&config.data_dir).map_err(StorageError::DataDir)?;
                let path = config.data_dir.join(format!("{service}.db"));
                Self::connect(
                    &format!("sqlite://{}", path.display()),
                    config.max_connections,
                )
                .await
            }
        }
    }

    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StorageError> {
        if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(StorageError::Connect)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // Durable before acknowledged: a commit survives power loss.
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections.max(1))
                // See the PostgreSQL pool; here the ping would be a hop to
                // the connection's thread and back, for a file.
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .map_err(StorageError::Connect)?;
            Ok(Self::Sqlite(pool))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url).map_err(StorageError::Connect)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                // No ping before each use: it is a round trip and a wake of
                // a server process for every query. A connection the server
                // dropped (a restart) fails its next query, which answers
                // UNAVAILABLE (`ApiError`'s mapping of a lost connection)
                // without having written anything, and is closed; the next
                // request gets a fresh one.
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .map_err(StorageError::Connect)?;
            Ok(Self::Postgres(pool))
        } else {
            Err(StorageError::UnsupportedUrl)
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Self::Sqlite(_) => Engine::Sqlite,
            Self::Postgres(_) => Engine::Postgres,
        }
    }

    /// Applies the service's migrations for this engine. Safe to run from
    /// several instances at once: sqlx takes a lock on PostgreSQL.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StorageError> {
        let scripts = match self {
            Self::Sqlite(_) => migrations.sqlite,
            Self::Postgres(_) => migrations.postgres,
        };
        let mut migrator = Migrator::with_migrations(
            scripts
                .iter()
                .map(|(version, name, sql)| {
                    Migration::new(
                        *version,
                        Cow::Borrowed(*name),
                        MigrationType::Simple,
                        sql.into_sql_str(),
                        false,
                    )
                })
                .collect(),
        );
        migrator.dangerous_set_table_name(format!("{}_schema_migrations", migrations.service));
        match self {
            Self::Sqlite(pool) => migrator.run(pool).await,
            Self::Postgres(pool) => migrator.run(pool).await,
        }
        .map_err(StorageError::Migrate)
    }

    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// Microseconds since the Unix epoch: how every timestamp is stored.
pub fn now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_micros()).unwrap_or(i64::MAX)
}

/// Scratch PostgreSQL databases for tests.
pub mod testing {
    use super::*;

    /// Where tests find PostgreSQL: `ATIENDE_TEST_POSTGRES_URL`, by default
    /// the local server as the `postgres` user.
    pub fn postgres_admin_url() -> String {
        std::env::var("ATIENDE_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
    }

    /// Whether PostgreSQL answers at [`postgres_admin_url`].
    pub async fn postgres_reachable() -> bool {
        let Ok(options) = PgConnectOptions::from_str(&postgres_admin_url()) else {
            return false;
        };
        let connect = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(3))
            .connect_with(options);
        match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(Ok(pool)) => {
                pool.close().await;
                true
            }
            _ => false,
        }
    }

    /// Creates an empty database named `<prefix>_<random>` and returns its
    /// URL and name.
    pub async fn create_scratch_postgres(prefix: &str) -> Result<(String, String), sqlx::Error> {
        let admin_url = postgres_admin_url();
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        administer(&format!("CREATE DATABASE \"{name}\"")).await?;
        let base = admin_url
            .rsplit_once('/')
            .map(|(base, _)| base)
            .unwrap_or(&admin_url);
        Ok((format!("{base}/{name}"), name))
    }

    /// Drops one scratch database, closing the sessions still on it.
    pub async fn drop_scratch_database(name: &str) -> Result<(), sqlx::Error> {
        administer(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await
    }

    async fn administer(statement: &str) -> Result<(), sqlx::Error> {
        let options = PgConnectOptions::from_str(&postgres_admin_url())?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await?;
        let done = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
            .execute(&admin)
            .await;
        admin.close().await;
        done.map(drop)
    }

    /// Drops databases left behind by earlier runs whose name starts with
    /// `<prefix>_`. Call once when a test binary starts.
    pub async fn drop_scratch_postgres(prefix: &str) -> Result<(), sqlx::Error> {
        let options = PgConnectOptions::from_str(&postgres_admin_url())?;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await?;
        let names: Vec<String> =
            sqlx::query_scalar("SELECT datname FROM pg_database WHERE datname LIKE $1")
                .bind(format!("{prefix}\\_%"))
                .fetch_all(&admin)
                .await?;
        admin.close().await;
        for name in names {
            drop_scratch_database(&name).await?;
        }
        Ok(())
    }
}
