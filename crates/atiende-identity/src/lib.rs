//! Atiende identity: agencies as OAuth clients, short-lived access tokens,
//! JWKS and key rotation; citizen accounts (national id, password, TOTP,
//! levels of assurance, lockout) and the hash-chained audit trail. (The
//! OpenID Connect login pages come with their own release.)
//!
//! # Layout
//! - [`domain`]: agencies, clients, secrets, citizens, national ids,
//!   passwords, TOTP, the audit chain, [`domain::IdentityError`].
//! - [`service`]: what the service does, in domain terms
//!   ([`service::citizens`]: citizens, the sign-in check, audit listing).
//! - [`keys`]: signing keys, sealed at rest, rotation policy.
//! - [`revocation`]: revoked tokens and disabled clients, shared by instances.
//! - [`store`]: the tables, on SQLite or PostgreSQL ([`store::citizens`]:
//!   citizens, throttles, the serialised audit append and chain check).
//! - [`grpc`]: the gRPC adapter (the only module that knows prost types).
//! - [`http`]: the OAuth token endpoint, metadata and JWKS over HTTP.
//!
//! [`Identity::open`] wires these together; [`Identity::register`] adds the
//! gRPC services to a server, [`Identity::http_router`] gives the HTTP routes.

pub mod config;
pub mod domain;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod revocation;
pub mod service;
pub mod store;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use atiende_platform::auth::{TokenVerifier, VerifierSettings};
use atiende_platform::server::{GrpcServices, Shutdown};
use atiende_platform::storage::{Database, Engine};
use atiende_proto::identity::v1 as pb;
use secrecy::{ExposeSecret, SecretString};

use crate::config::IdentityConfig;
use crate::domain::IdentityError;
use crate::keys::{KeyEncryptionKey, Keys, LocalJwks};
use crate::revocation::Revocations;
use crate::service::IdentityService;

pub const SERVICE_NAME: &str = "identity";

/// The email code sender the configuration names.
fn email_code_sender(
    citizens: &config::CitizenConfig,
) -> anyhow::Result<Arc<dyn service::email_codes::EmailCodeSender>> {
    use grpc::notifications::NotificationsEmailCodes;
    use service::email_codes::{LogEmailCodes, NoEmailCodes};
    Ok(match citizens.email_codes {
        config::EmailCodeDelivery::None => Arc::new(NoEmailCodes),
        config::EmailCodeDelivery::Log => {
            tracing::warn!(
                "citizens.email_codes = \"log\": email verification codes are printed to the \
                 log; use it only in development"
            );
            Arc::new(LogEmailCodes)
        }
        config::EmailCodeDelivery::Notifications => Arc::new(
            NotificationsEmailCodes::new(
                &citizens.notifications_url,
                citizens.email_code_client_id.clone(),
                citizens.email_code_client_secret.clone().ok_or_else(|| {
                    anyhow::anyhow!("citizens.email_code_client_secret is missing")
                })?,
                citizens.email_code_template_id.clone(),
            )
            .map_err(anyhow::Error::msg)?,
        ),
    })
}

/// A running identity service: its state and background tasks.
#[derive(Clone)]
pub struct Identity {
    service: Arc<IdentityService>,
    config: Arc<IdentityConfig>,
}

impl Identity {
    /// Connects to the database, migrates, loads keys and revocations, and
    /// starts the background refreshers (which stop on `shutdown`).
    pub async fn open(config: IdentityConfig, shutdown: Shutdown) -> anyhow::Result<Self> {
        let db = Database::for_service(&config.storage, SERVICE_NAME).await?;
        db.migrate(&store::MIGRATIONS).await?;
        Self::open_with(db, config, shutdown).await
    }

    pub async fn open_with(
        db: Database,
        config: IdentityConfig,
        shutdown: Shutdown,
    ) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        if config.tokens.next_key_lead_ms < config.tokens.jwks_max_age_ms {
            tracing::warn!(
                "tokens.next_key_lead_ms is shorter than tokens.jwks_max_age_ms: after a \
                 rotation, verifiers with a cached JWKS may meet the new key before they \
                 have fetched it"
            );
        }
        let kek = key_encryption_key(&config, db.engine())?;
        let keys = Arc::new(
            Keys::load(
                db.clone(),
                kek,
                config.tokens.access_token_ttl_ms,
                config.tokens.next_key_lead_ms,
            )
            .await?,
        );
        let revocations = Arc::new(Revocations::new());
        revocations.poll(&db).await?;
        let issuer = config.issuer();
        let verifier = Arc::new(
            TokenVerifier::new(
                VerifierSettings {
                    issuer: issuer.clone(),
                    audience: config.tokens.audience.clone(),
                    // Keys come from this process and its database: re-read
                    // every reload interval, and on an unknown kid at most
                    // once a second.
                    max_age: config.tokens.key_reload_interval_ms,
                    min_refresh_interval: Duration::from_secs(1),
                },
                LocalJwks(keys.clone()),
            )
            .with_revocation(revocations.clone()),
        );
        let service = Arc::new(IdentityService {
            db: db.clone(),
            keys: keys.clone(),
            revocations: revocations.clone(),
            credentials: service::CredentialCache::new(config.tokens.credential_cache_ttl_ms),
            allow_sandbox_operators: config.operators.allow_sandbox,
            verifier,
            issuer,
            audience: config.tokens.audience.clone(),
            token_ttl: config.tokens.access_token_ttl_ms,
            citizen_policy: config.citizens.clone(),
            email_codes: std::sync::RwLock::new(email_code_sender(&config.citizens)?),
        });
        spawn_refreshers(&db, &keys, &revocations, &config, shutdown);
        Ok(Self {
            service,
            config: Arc::new(config),
        })
    }

    /// The verifier for every service in this process: the identity
    /// service's own keys, and its revocations.
    pub fn verifier(&self) -> Arc<TokenVerifier> {
        self.service.verifier.clone()
    }

    /// Sets how email verification codes are delivered (none by default:
    /// registration from the login pages is then unavailable).
    pub fn set_email_codes(&self, sender: Arc<dyn service::email_codes::EmailCodeSender>) {
        *self
            .service
            .email_codes
            .write()
            .unwrap_or_else(|e| e.into_inner()) = sender;
    }

    pub fn service(&self) -> &Arc<IdentityService> {
        &self.service
    }

    /// Adds the identity gRPC services; IssueToken and GetJwks are public.
    pub fn register(&self, services: &mut GrpcServices) {
        let limit = self.config.grpc.max_message_bytes;
        services
            .add(
                pb::agency_service_server::AgencyServiceServer::new(grpc::AgencyApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::token_service_server::TokenServiceServer::new(grpc::TokenApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .add(
                pb::citizen_service_server::CitizenServiceServer::new(grpc::CitizenApi(
                    self.service.clone(),
                ))
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            )
            .public_method("/atiende.identity.v1.TokenService/IssueToken")
            .public_method("/atiende.identity.v1.TokenService/GetJwks");
    }

    /// Closes the database pool (after the servers have stopped).
    pub async fn close(&self) {
        self.service.db.close().await;
    }

    pub fn http_router(&self) -> axum::Router {
        http::router(
            self.service.clone(),
            self.config.tokens.jwks_max_age_ms.as_secs(),
        )
    }
}

fn spawn_refreshers(
    db: &Database,
    keys: &Arc<Keys>,
    revocations: &Arc<Revocations>,
    config: &IdentityConfig,
    shutdown: Shutdown,
) {
    let (db, keys, revocations) = (db.clone(), keys.clone(), revocations.clone());
    let key_every = config
        .tokens
        .key_reload_interval_ms
        .max(Duration::from_millis(100));
    let revocation_every = config
        .tokens
        .revocation_poll_interval_ms
        .max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut key_tick = tokio::time::interval(key_every);
        let mut revocation_tick = tokio::time::interval(revocation_every);
        let mut prune_tick = tokio::time::interval(Duration::from_secs(600));
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            let result = tokio::select! {
                () = &mut stop => break,
                _ = key_tick.tick() => keys.reload().await,
                _ = revocation_tick.tick() => revocations.poll(&db).await,
                _ = prune_tick.tick() => prune(&db, &keys).await,
            };
            if let Err(error) = result {
                tracing::warn!(%error, "identity background refresh failed");
            }
        }
    });
}

async fn prune(db: &Database, keys: &Keys) -> Result<(), IdentityError> {
    let now = atiende_platform::storage::now_micros();
    store::prune_revocations(db, now).await?;
    store::oidc::prune(db, now, service::oidc::KEEP_CODES_MICROS).await?;
    keys.prune().await?;
    Ok(())
}

/// The configured key encryption key; on SQLite without one, a key kept in
/// the data directory (created on first start).
fn key_encryption_key(
    config: &IdentityConfig,
    engine: Engine,
) -> Result<KeyEncryptionKey, IdentityError> {
    if let Some(secret) = &config.tokens.key_encryption_key {
        return KeyEncryptionKey::from_base64(secret);
    }
    if engine == Engine::Postgres {
        return Err(IdentityError::Keys(
            "set tokens.key_encryption_key (ATIENDE_TOKENS__KEY_ENCRYPTION_KEY) on PostgreSQL"
                .into(),
        ));
    }
    let path = config.storage.data_dir.join("identity-key-encryption-key");
    let secret = read_or_create_secret(&path)?;
    KeyEncryptionKey::from_base64(&secret)
}

fn read_or_create_secret(path: &Path) -> Result<SecretString, IdentityError> {
    let io = |e: std::io::Error| IdentityError::Keys(format!("key encryption key file: {e}"));
    if let Ok(text) = std::fs::read_to_string(path) {
        return Ok(SecretString::from(text.trim().to_owned()));
    }
    let secret = KeyEncryptionKey::generate_base64()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    std::io::Write::write_all(&mut file, secret.expose_secret().as_bytes()).map_err(io)?;
    tracing::warn!(
        "generated a key encryption key in the data directory; set tokens.key_encryption_key in production"
    );
    Ok(secret)
}
