//! Who is calling: bearer access tokens verified against a JWKS.
//!
//! Every service verifies tokens locally. Keys come from a [`JwksSource`]
//! (the identity service over gRPC, any URL such as an OpenID provider's
//! `jwks_uri`, or a file), are cached, re-fetched when they age and when a
//! token names an unknown `kid` (at most once per
//! `jwks_min_refresh_interval`). Only asymmetric algorithms are accepted:
//! `alg: none` and HMAC tokens are refused before any key is looked at.
//!
//! A verified token is cached until it expires, because signature checks
//! dominate the cost of a small RPC; a [`RevocationCheck`] (the identity
//! service installs one) still sees every call.
//!
//! [`AuthLayer`] puts the [`Caller`] into the request extensions; handlers
//! take it with [`caller`] and check scopes with [`Caller::require`].

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Sandbox callers get simulated delivery and payments; live callers real ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Environment {
    Sandbox,
    Live,
}

impl Environment {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Live => "live",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "sandbox" => Some(Self::Sandbox),
            "live" => Some(Self::Live),
            _ => None,
        }
    }
}

/// A permission a client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    NotificationsSend,
    NotificationsRead,
    NotificationsTemplates,
    PaymentsCreate,
    PaymentsRead,
    PaymentsRefund,
    IdentityCitizensRead,
    IdentityCitizensWrite,
    IdentityAdmin,
}

impl Scope {
    pub const ALL: [Scope; 9] = [
        Scope::NotificationsSend,
        Scope::NotificationsRead,
        Scope::NotificationsTemplates,
        Scope::PaymentsCreate,
        Scope::PaymentsRead,
        Scope::PaymentsRefund,
        Scope::IdentityCitizensRead,
        Scope::IdentityCitizensWrite,
        Scope::IdentityAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotificationsSend => "notifications.send",
            Self::NotificationsRead => "notifications.read",
            Self::NotificationsTemplates => "notifications.templates",
            Self::PaymentsCreate => "payments.create",
            Self::PaymentsRead => "payments.read",
            Self::PaymentsRefund => "payments.refund",
            Self::IdentityCitizensRead => "identity.citizens.read",
            Self::IdentityCitizensWrite => "identity.citizens.write",
            Self::IdentityAdmin => "identity.admin",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of scopes, written in tokens as a space-separated list.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ScopeSet(u16);

impl ScopeSet {
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    pub fn insert(&mut self, scope: Scope) {
        self.0 |= scope.bit();
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    /// Parses a space-separated list; `Err` names the first unknown scope.
    pub fn parse_list(raw: &str) -> Result<Self, String> {
        let mut set = Self::default();
        for word in raw.split_ascii_whitespace() {
            set.insert(Scope::parse(word).ok_or_else(|| word.to_owned())?);
        }
        Ok(set)
    }

    /// Parses a list, ignoring scopes Atiende does not know (tokens of other
    /// issuers may carry theirs).
    pub fn parse_known(raw: &str) -> Self {
        raw.split_ascii_whitespace()
            .filter_map(Scope::parse)
            .collect()
    }
}

impl FromIterator<Scope> for ScopeSet {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        let mut set = Self::default();
        for scope in iter {
            set.insert(scope);
        }
        set
    }
}

impl std::fmt::Display for ScopeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for scope in self.iter() {
            if !first {
                f.write_str(" ")?;
            }
            f.write_str(scope.as_str())?;
            first = false;
        }
        Ok(())
    }
}

/// The claims of an Atiende access token. The identity service signs them;
/// every service verifies them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    pub iss: String,
    pub aud: String,
    /// The client id.
    pub sub: String,
    /// The agency (tenant) id.
    pub agency: String,
    /// Space-separated scopes.
    pub scope: String,
    /// `sandbox` or `live`.
    pub env: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub jti: String,
}

/// The claims a verifier reads: Atiende's profile, lenient where other
/// issuers differ (`aud` may be a list — the validation checks it — and
/// `iat`, `nbf` and `jti` may be absent).
#[derive(Debug, Deserialize)]
struct IncomingClaims {
    sub: String,
    agency: String,
    #[serde(default)]
    scope: String,
    env: String,
    #[serde(default)]
    iat: Option<i64>,
    exp: i64,
    #[serde(default)]
    jti: Option<String>,
}

/// The authenticated caller of an RPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub agency_id: String,
    pub client_id: String,
    pub scopes: ScopeSet,
    pub environment: Environment,
    pub token_id: String,
    pub issued_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
}

impl Caller {
    /// `PERMISSION_DENIED` unless the caller holds `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::PermissionDenied(format!(
                "the token lacks the scope {}",
                scope.as_str()
            )))
        }
    }
}

impl Caller {
    /// `PERMISSION_DENIED` unless the caller holds one of `scopes`.
    pub fn require_any(&self, scopes: &[Scope]) -> Result<(), ApiError> {
        if scopes.iter().any(|s| self.scopes.contains(*s)) {
            return Ok(());
        }
        let names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        Err(ApiError::PermissionDenied(format!(
            "the token needs one of the scopes {}",
            names.join(", ")
        )))
    }
}

/// The caller that [`AuthLayer`] put in the request.
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, ApiError> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or(ApiError::Unauthenticated(
            "a bearer access token is required",
        ))
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.reason())]
pub enum AuthError {
    Missing,
    Malformed,
    Algorithm,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Revoked,
    KeysUnavailable,
}

impl AuthError {
    /// What the caller is told: what is wrong, never the token itself.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Missing => "a bearer access token is required",
            Self::Malformed => "the access token is malformed",
            Self::Algorithm => "the token's signing algorithm is not accepted",
            Self::UnknownKey => "the token was signed by an unknown key",
            Self::Signature => "the token's signature is invalid",
            Self::Expired => "the token has expired",
            Self::NotYetValid => "the token is not valid yet",
            Self::Issuer => "the token was issued by another issuer",
            Self::Audience => "the token is meant for another audience",
            Self::Revoked => "the token has been revoked",
            Self::KeysUnavailable => "the signing keys cannot be fetched",
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::KeysUnavailable => ApiError::Unavailable,
            other => ApiError::Unauthenticated(other.reason()),
        }
    }
}

/// Where the public signing keys come from.
pub trait JwksSource: Send + Sync + 'static {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>>;
}

#[derive(Debug, thiserror::Error)]
#[error("cannot fetch the JWKS: {0}")]
pub struct JwksError(pub String);

/// Keys from a URL, such as an OpenID provider's `jwks_uri`.
pub struct HttpJwks {
    url: String,
    client: reqwest::Client,
}

impl HttpJwks {
    pub fn new(url: impl Into<String>) -> Result<Self, JwksError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| JwksError(e.to_string()))?;
        Ok(Self {
            url: url.into(),
            client,
        })
    }
}

impl JwksSource for HttpJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
        Box::pin(async move {
            let response = self
                .client
                .get(&self.url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .map_err(|e| JwksError(e.to_string()))?;
            response
                .json::<JwkSet>()
                .await
                .map_err(|e| JwksError(e.to_string()))
        })
    }
}

/// Keys from a JSON file, re-read on every fetch.
pub struct FileJwks(pub PathBuf);

impl JwksSource for FileJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
        Box::pin(async move {
            let text = tokio::fs::read_to_string(&self.0)
                .await
                .map_err(|e| JwksError(e.to_string()))?;
            serde_json::from_str(&text).map_err(|e| JwksError(e.to_string()))
        })
    }
}

/// Keys from the identity service's `TokenService.GetJwks`.
pub struct IdentityJwks {
    client: atiende_proto::identity::v1::token_service_client::TokenServiceClient<
        tonic::transport::Channel,
    >,
}

impl IdentityJwks {
    /// Connects lazily: the identity service may start after this one.
    pub fn new(endpoint: &str) -> Result<Self, JwksError> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| JwksError(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            client: atiende_proto::identity::v1::token_service_client::TokenServiceClient::new(
                channel,
            ),
        })
    }
}

impl JwksSource for IdentityJwks {
    fn fetch(&self) -> BoxFuture<'_, Result<JwkSet, JwksError>> {
        Box::pin(async move {
            let mut client = self.client.clone();
            let mut request = tonic::Request::new(atiende_proto::identity::v1::GetJwksRequest {});
            crate::telemetry::inject_trace_context(request.metadata_mut());
            let response = client
                .get_jwks(request)
                .await
                .map_err(|status| JwksError(status.message().to_owned()))?
                .into_inner();
            let keys: Vec<serde_json::Value> = response
                .keys
                .into_iter()
                .map(|k| {
                    serde_json::json!({
                        "kty": k.kty, "crv": k.crv, "x": k.x, "y": k.y,
                        "kid": k.kid, "alg": k.alg, "use": k.r#use,
                    })
                })
                .collect();
            serde_json::from_value(serde_json::json!({ "keys": keys }))
                .map_err(|e| JwksError(e.to_string()))
        })
    }
}

/// Lets the token issuer refuse tokens it revoked, or whose client it
/// disabled, before they expire.
pub trait RevocationCheck: Send + Sync + 'static {
    fn is_revoked(&self, caller: &Caller) -> bool;
}

/// Algorithms a verifier accepts: asymmetric only.
const ACCEPTED_ALGORITHMS: &[Algorithm] = &[
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Upper bound on cached verified tokens; beyond it expired ones are dropped,
/// and if that is not enough, half of the rest.
const VERIFIED_CACHE_CAPACITY: usize = 100_000;
/// Tokens longer than this are refused unparsed.
const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// A published key and the algorithm its JWK pins, if it names one.
struct PublishedKey {
    decoding: DecodingKey,
    alg: Option<Algorithm>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<PublishedKey>>,
    fetched_at: Option<Instant>,
    attempted_at: Option<Instant>,
}

/// The keys of a verifier and how they are refreshed. Shared with the
/// background refreshes it starts.
struct KeyStore {
    source: Box<dyn JwksSource>,
    cache: RwLock<KeyCache>,
    refresh: Arc<tokio::sync::Mutex<()>>,
    max_age: Duration,
    min_refresh_interval: Duration,
}

/// How long a request with an unknown `kid` waits for the keys to be fetched.
const UNKNOWN_KID_WAIT: Duration = Duration::from_secs(5);

/// Settings of a [`TokenVerifier`].
#[derive(Debug, Clone)]
pub struct VerifierSettings {
    pub issuer: String,
    pub audience: String,
    pub max_age: Duration,
    pub min_refresh_interval: Duration,
}

/// Verifies access tokens; cheap to share behind an `Arc`.
pub struct TokenVerifier {
    settings: VerifierSettings,
    keys: Arc<KeyStore>,
    verified: Mutex<HashMap<Box<str>, Caller>>,
    revocation: Option<Arc<dyn RevocationCheck>>,
}

impl TokenVerifier {
    pub fn new(settings: VerifierSettings, source: impl JwksSource) -> Self {
        let keys = Arc::new(KeyStore {
            source: Box::new(source),
            cache: RwLock::new(KeyCache::default()),
            refresh: Arc::new(tokio::sync::Mutex::new(())),
            max_age: settings.max_age,
            min_refresh_interval: settings.min_refresh_interval,
        });
        Self {
            settings,
            keys,
            verified: Mutex::new(HashMap::new()),
            revocation: None,
        }
    }

    pub fn with_revocation(mut self, check: Arc<dyn RevocationCheck>) -> Self {
        self.revocation = Some(check);
        self
    }

    /// Builds the verifier that `config` describes: the first of
    /// `jwks_grpc_endpoint`, `jwks_url`, `jwks_file` that is set.
    pub fn from_config(config: &crate::config::AuthConfig) -> Result<Self, JwksError> {
        let settings = VerifierSettings {
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_age: config.jwks_max_age_ms,
            min_refresh_interval: config.jwks_min_refresh_interval_ms,
        };
        if let Some(endpoint) = &config.jwks_grpc_endpoint {
            Ok(Self::new(settings, IdentityJwks::new(endpoint)?))
        } else if let Some(url) = &config.jwks_url {
            Ok(Self::new(settings, HttpJwks::new(url.clone())?))
        } else if let Some(path) = &config.jwks_file {
            Ok(Self::new(settings, FileJwks(path.clone())))
        } else {
            Err(JwksError(
                "set auth.jwks_grpc_endpoint, auth.jwks_url or auth.jwks_file".to_owned(),
            ))
        }
    }

    /// Verifies `token` and returns its caller.
    pub async fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        let now = unix_now();
        let cached = self.lock_verified().get(token).cloned();
        let caller = match cached {
            Some(caller) if caller.expires_at > now => caller,
            _ => {
                let caller = self.verify_uncached(token).await?;
                self.remember(token, &caller, now);
                caller
            }
        };
        if self
            .revocation
            .as_ref()
            .is_some_and(|r| r.is_revoked(&caller))
        {
            return Err(AuthError::Revoked);
        }
        Ok(caller)
    }

    /// Verifies the token without the cache of verified tokens.
    async fn verify_uncached(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(AuthError::Algorithm);
        }
        let kid = header.kid.ok_or(AuthError::UnknownKey)?;
        let key = self.key(&kid).await?;
        // A key whose JWK names an algorithm verifies only that algorithm.
        if key.alg.is_some_and(|alg| alg != header.alg) {
            return Err(AuthError::Algorithm);
        }

        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&[&self.settings.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECONDS;
        let data = jsonwebtoken::decode::<IncomingClaims>(token, &key.decoding, &validation)
            .map_err(classify_jwt_error)?;
        let claims = data.claims;
        let environment = Environment::parse(&claims.env).ok_or(AuthError::Malformed)?;
        if claims.agency.is_empty() || claims.sub.is_empty() {
            return Err(AuthError::Malformed);
        }
        Ok(Caller {
            agency_id: claims.agency,
            client_id: claims.sub,
            scopes: ScopeSet::parse_known(&claims.scope),
            environment,
            token_id: claims.jti.unwrap_or_default(),
            issued_at: claims.iat.unwrap_or_default(),
            expires_at: claims.exp,
        })
    }

    /// The key named `kid`. A known key is used even when the cache is
    /// stale — a refresh then runs in the background — so that a slow or
    /// unreachable JWKS never holds up requests signed with known keys. An
    /// unknown `kid` waits (a bounded time) for one fetch.
    async fn key(&self, kid: &str) -> Result<Arc<PublishedKey>, AuthError> {
        let (found, fresh) = {
            let cache = self.keys.read();
            let fresh = cache
                .fetched_at
                .is_some_and(|t| t.elapsed() < self.keys.max_age);
            (cache.keys.get(kid).cloned(), fresh)
        };
        if let Some(key) = found {
            if !fresh {
                KeyStore::refresh_in_background(&self.keys);
            }
            return Ok(key);
        }
        // The fetch runs in its own task, so a waiter that gives up (or is
        // cancelled) never aborts it; waiters wait for the refresh lock,
        // which the task holds until the fetch is done.
        KeyStore::refresh_in_background(&self.keys);
        if tokio::time::timeout(UNKNOWN_KID_WAIT, self.keys.refresh.lock())
            .await
            .is_err()
        {
            return Err(AuthError::KeysUnavailable);
        }
        let cache = self.keys.read();
        match cache.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if cache.keys.is_empty() => Err(AuthError::KeysUnavailable),
            None => Err(AuthError::UnknownKey),
        }
    }

    fn remember(&self, token: &str, caller: &Caller, now: i64) {
        let mut verified = self.lock_verified();
        if verified.len() >= VERIFIED_CACHE_CAPACITY {
            verified.retain(|_, c| c.expires_at > now);
            if verified.len() >= VERIFIED_CACHE_CAPACITY {
                // Still full of live tokens: forget an arbitrary half (hash
                // order), not everything, so one client minting tokens in
                // bulk cannot flush every other caller's entry at once.
                let evicted: Vec<Box<str>> =
                    verified.keys().take(verified.len() / 2).cloned().collect();
                for token in evicted {
                    verified.remove(&token);
                }
            }
        }
        verified.insert(token.into(), caller.clone());
    }

    fn lock_verified(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Caller>> {
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl KeyStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyCache> {
        self.cache.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, KeyCache> {
        self.cache.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a fetch was tried within the minimum interval (a second while
    /// no key was ever fetched).
    fn tried_recently(&self) -> bool {
        let cache = self.read();
        let interval = if cache.fetched_at.is_some() {
            self.min_refresh_interval
        } else {
            self.min_refresh_interval.min(Duration::from_secs(1))
        };
        cache.attempted_at.is_some_and(|t| t.elapsed() < interval)
    }

    /// Starts a refresh unless one is running or one was tried within the
    /// minimum interval.
    fn refresh_in_background(store: &Arc<Self>) {
        if store.tried_recently() {
            return;
        }
        let Ok(guard) = store.refresh.clone().try_lock_owned() else {
            return;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _single_flight = guard;
            let _ = store.fetch_unless_recent().await;
        });
    }

    /// Fetches the keys, at most once per `min_refresh_interval` (once a
    /// second while none was ever fetched). A failed fetch keeps the keys
    /// already known. Call with the refresh lock held.
    async fn fetch_unless_recent(&self) -> Result<(), AuthError> {
        if self.tried_recently() {
            return if self.read().fetched_at.is_some() {
                Ok(())
            } else {
                Err(AuthError::KeysUnavailable)
            };
        }
        self.write().attempted_at = Some(Instant::now());
        let set = match self.source.fetch().await {
            Ok(set) => set,
            Err(error) => {
                tracing::warn!(%error, "JWKS refresh failed");
                return if self.read().keys.is_empty() {
                    Err(AuthError::KeysUnavailable)
                } else {
                    Ok(())
                };
            }
        };
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let for_signatures = jwk
                .common
                .public_key_use
                .as_ref()
                .is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature);
            if !for_signatures {
                continue;
            }
            let alg = match jwk.common.key_algorithm {
                Some(declared) => match Algorithm::try_from(declared) {
                    Ok(alg) => Some(alg),
                    Err(_) => continue,
                },
                None => None,
            };
            match DecodingKey::from_jwk(jwk) {
                Ok(decoding) => {
                    keys.insert(kid, Arc::new(PublishedKey { decoding, alg }));
                }
                Err(error) => tracing::warn!(%kid, %error, "skipping unusable JWK"),
            }
        }
        let mut cache = self.write();
        cache.keys = keys;
        cache.fetched_at = Some(Instant::now());
        Ok(())
    }
}

fn classify_jwt_error(error: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidIssuer => AuthError::Issuer,
        ErrorKind::InvalidAudience => AuthError::Audience,
        ErrorKind::InvalidSignature => AuthError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => AuthError::Algorithm,
        _ => AuthError::Malformed,
    }
}

pub fn unix_now() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_secs()).unwrap_or(i64::MAX)
}

/// Tower layer that authenticates every gRPC call except the public methods.
#[derive(Clone)]
pub struct AuthLayer {
    verifier: Arc<TokenVerifier>,
    public_methods: Arc<[String]>,
}

impl AuthLayer {
    /// `public_methods` are full paths (`/pkg.Service/Method`) or prefixes
    /// ending in `/` that need no token. Health and reflection are always
    /// public.
    pub fn new(verifier: Arc<TokenVerifier>, public_methods: &[String]) -> Self {
        let mut public: Vec<String> = vec![
            "/grpc.health.v1.Health/".to_owned(),
            "/grpc.reflection.v1.ServerReflection/".to_owned(),
            "/grpc.reflection.v1alpha.ServerReflection/".to_owned(),
        ];
        public.extend(public_methods.iter().cloned());
        Self {
            verifier,
            public_methods: public.into(),
        }
    }

    fn is_public(&self, path: &str) -> bool {
        self.public_methods.iter().any(|p| {
            if p.ends_with('/') {
                path.starts_with(p.as_str())
            } else {
                path == p
            }
        })
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The clone is ready only after poll_ready; keep the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if self.layer.is_public(request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let verifier = self.layer.verifier.clone();
        Box::pin(async move {
            let token = bearer_token(request.headers());
            match verifier.verify(token.unwrap_or_default()).await {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(error) => Ok(tonic::Status::from(ApiError::from(error)).into_http()),
            }
        })
    }
}

/// The token of an `authorization: Bearer <token>` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets_parse_and_print_in_canonical_order() {
        let set = ScopeSet::parse_list("payments.read notifications.send").unwrap();
        assert_eq!(set.to_string(), "notifications.send payments.read");
        assert_eq!(
            ScopeSet::parse_list("payments.read bogus").unwrap_err(),
            "bogus"
        );
        assert!(ScopeSet::parse_known("openid payments.read").contains(Scope::PaymentsRead));
    }

    #[test]
    fn bearer_header_is_case_insensitive_in_the_scheme() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "bearer abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), Some("abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&headers), None);
    }
}
