//! What the identity service does, in domain terms. The gRPC and HTTP
//! adapters parse requests into these calls and render their results.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use atiende_platform::auth::{
    AccessTokenClaims, AuthError, Caller, Environment, Scope, ScopeSet, TokenVerifier, unix_now,
};
use atiende_platform::ids::new_id;
use atiende_platform::paging::{Page, PageSize};
use atiende_platform::storage::{Database, now_micros};

use crate::domain::{
    AGENCY_ID_PREFIX, Agency, CLIENT_ID_PREFIX, Client, ClientSecret, ClientState, DisplayName,
    IdentityError, SecretHash,
};
use crate::keys::{Keys, PublicKey};
use crate::revocation::Revocations;
use crate::store;

pub mod citizens;
pub mod email_codes;
pub mod oidc;

/// How a client authenticates at the token, revocation and introspection
/// endpoints.
#[derive(Debug, Clone)]
pub enum ClientAuth {
    /// `client_secret_basic` or `client_secret_post`.
    Secret { client_id: String, secret: String },
    /// `private_key_jwt`; `client_id`, if sent, must match the assertion.
    Assertion {
        client_id: Option<String>,
        assertion: String,
    },
}

/// An access token just issued.
pub struct IssuedToken {
    pub access_token: String,
    pub scopes: ScopeSet,
    pub expires_in: i64,
    pub expire_time: i64,
}

/// Client credentials recently read from the database, so that a client
/// asking for tokens again and again costs no query each time. Entries live
/// `ttl` (1 s by default), unknown client ids too (so a flood of made-up ids
/// costs one query per id per TTL); this instance forgets a client at once
/// when it rotates its secret or disables it, other instances within the
/// TTL — the same bound as revocations.
pub(crate) struct CredentialCache {
    ttl: Duration,
    entries: RwLock<Entries>,
    /// One database read per client id at a time: when an entry expires
    /// under load, the first caller reads it and the others wait for that
    /// read. Different ids never wait for each other.
    loading: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Known clients, and ids known not to exist, apart: a flood of made-up ids
/// fills only the second map, never evicting real clients.
#[derive(Default)]
struct Entries {
    clients: HashMap<String, (Instant, Arc<Credentials>)>,
    unknown: HashMap<String, Instant>,
    /// When a client was last forgotten (rotated or disabled here): a load
    /// that started before that must not put its older read back.
    forgotten: HashMap<String, Instant>,
}

/// A client and the hash of its secret.
type Credentials = (Client, SecretHash);

/// What a lookup found: the credentials, or that there is no such client.
type Lookup = Option<Arc<Credentials>>;

const CREDENTIAL_CACHE_CAPACITY: usize = 10_000;
const UNKNOWN_CACHE_CAPACITY: usize = 1_000;

/// Drops expired entries of a full map, then half of the rest if needed.
fn make_room<V>(map: &mut HashMap<String, V>, capacity: usize, fresh: impl Fn(&V) -> bool) {
    if map.len() < capacity {
        return;
    }
    map.retain(|_, v| fresh(v));
    if map.len() >= capacity {
        let evicted: Vec<String> = map.keys().take(map.len() / 2).cloned().collect();
        for key in evicted {
            map.remove(&key);
        }
    }
}

impl CredentialCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: RwLock::new(Entries::default()),
            loading: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// `Some(None)`: known not to exist; `None`: not cached.
    fn get(&self, client_id: &str) -> Option<Lookup> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        if let Some((at, credentials)) = entries.clients.get(client_id)
            && at.elapsed() < self.ttl
        {
            return Some(Some(credentials.clone()));
        }
        entries
            .unknown
            .get(client_id)
            .filter(|at| at.elapsed() < self.ttl)
            .map(|_| None)
    }

    /// Caches what a load that started at `started` read, unless the client
    /// was forgotten since.
    fn put(&self, client_id: &str, lookup: Lookup, started: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let ttl = self.ttl;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries
            .forgotten
            .get(client_id)
            .is_some_and(|at| *at >= started)
        {
            return;
        }
        let now = Instant::now();
        match lookup {
            Some(credentials) => {
                make_room(
                    &mut entries.clients,
                    CREDENTIAL_CACHE_CAPACITY,
                    |(at, _)| at.elapsed() < ttl,
                );
                entries
                    .clients
                    .insert(client_id.to_owned(), (now, credentials));
            }
            None => {
                make_room(&mut entries.unknown, UNKNOWN_CACHE_CAPACITY, |at| {
                    at.elapsed() < ttl
                });
                entries.unknown.insert(client_id.to_owned(), now);
            }
        }
    }

    fn forget(&self, client_id: &str) {
        let ttl = self.ttl;
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.clients.remove(client_id);
        entries.unknown.remove(client_id);
        make_room(&mut entries.forgotten, CREDENTIAL_CACHE_CAPACITY, |at| {
            at.elapsed() < ttl
        });
        entries
            .forgotten
            .insert(client_id.to_owned(), Instant::now());
    }

    fn load_lock(&self, client_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        loading.entry(client_id.to_owned()).or_default().clone()
    }

    /// Called by each holder of a load lock as it lets go. The handle is
    /// dropped while the map is locked, so the last one out — when only the
    /// map still holds the lock — reliably removes it.
    fn release(&self, client_id: &str, held: Arc<tokio::sync::Mutex<()>>) {
        let mut loading = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        drop(held);
        if loading
            .get(client_id)
            .is_some_and(|lock| Arc::strong_count(lock) <= 1)
        {
            loading.remove(client_id);
        }
    }
}

/// Releases a client's load lock however the load ends — finished, failed
/// or cancelled — so that the map of locks does not grow.
struct LoadGuard<'a> {
    cache: &'a CredentialCache,
    client_id: &'a str,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl Drop for LoadGuard<'_> {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.lock);
        self.cache.release(self.client_id, held);
    }
}

pub struct IdentityService {
    pub(crate) db: Database,
    pub(crate) keys: Arc<Keys>,
    pub(crate) revocations: Arc<Revocations>,
    pub(crate) credentials: CredentialCache,
    pub(crate) allow_sandbox_operators: bool,
    pub(crate) verifier: Arc<TokenVerifier>,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) token_ttl: Duration,
    pub(crate) citizen_policy: crate::config::CitizenConfig,
    /// How email verification codes reach citizens.
    pub(crate) email_codes: RwLock<Arc<dyn email_codes::EmailCodeSender>>,
}

impl IdentityService {
    /// Creates an agency on behalf of an operator.
    pub async fn create_agency(
        &self,
        caller: &Caller,
        display_name: DisplayName,
        operator: bool,
    ) -> Result<Agency, IdentityError> {
        self.require_operator(caller).await?;
        self.bootstrap_agency(display_name, operator).await
    }

    /// Creates an agency without a caller: for the operator's bootstrap
    /// command and `atiende dev`.
    pub async fn bootstrap_agency(
        &self,
        display_name: DisplayName,
        operator: bool,
    ) -> Result<Agency, IdentityError> {
        let agency = Agency {
            agency_id: new_id(AGENCY_ID_PREFIX),
            display_name,
            operator,
            create_time: now_micros(),
        };
        store::insert_agency(&self.db, &agency).await?;
        tracing::info!(agency_id = %agency.agency_id, operator, "agency created");
        Ok(agency)
    }

    /// The caller's agency, or another one for operators.
    pub async fn get_agency(
        &self,
        caller: &Caller,
        agency_id: Option<&str>,
    ) -> Result<Agency, IdentityError> {
        let wanted = agency_id.unwrap_or(&caller.agency_id);
        if wanted != caller.agency_id {
            // Other agencies are visible only to operator admins; to anyone
            // else they do not exist.
            let operator_admin = caller.scopes.contains(Scope::IdentityAdmin)
                && self.require_operator(caller).await.is_ok();
            if !operator_admin {
                return Err(IdentityError::AgencyNotFound);
            }
        }
        store::get_agency(&self.db, wanted)
            .await?
            .ok_or(IdentityError::AgencyNotFound)
    }

    /// Creates a client in the caller's agency, or — for operators — in
    /// `agency_id`.
    pub async fn create_client(
        &self,
        caller: &Caller,
        agency_id: Option<&str>,
        display_name: DisplayName,
        scopes: ScopeSet,
        environment: Environment,
    ) -> Result<(Client, ClientSecret), IdentityError> {
        if caller.environment == Environment::Sandbox && environment == Environment::Live {
            return Err(IdentityError::SandboxCannotManageLive);
        }
        let agency_id = match agency_id {
            Some(other) if other != caller.agency_id => {
                if self.require_operator(caller).await.is_err() {
                    return Err(IdentityError::AgencyNotFound);
                }
                store::get_agency(&self.db, other)
                    .await?
                    .ok_or(IdentityError::AgencyNotFound)?
                    .agency_id
            }
            _ => caller.agency_id.clone(),
        };
        self.bootstrap_client(&agency_id, display_name, scopes, environment)
            .await
    }

    /// Creates a client without a caller (bootstrap).
    pub async fn bootstrap_client(
        &self,
        agency_id: &str,
        display_name: DisplayName,
        scopes: ScopeSet,
        environment: Environment,
    ) -> Result<(Client, ClientSecret), IdentityError> {
        let now = now_micros();
        let client = Client {
            client_id: new_id(CLIENT_ID_PREFIX),
            agency_id: agency_id.to_owned(),
            display_name,
            scopes,
            environment,
            state: ClientState::Active,
            create_time: now,
            secret_rotate_time: now,
        };
        let secret = ClientSecret::generate()?;
        store::insert_client(&self.db, &client, &secret.hash()).await?;
        tracing::info!(client_id = %client.client_id, agency_id = %client.agency_id, "client created");
        Ok((client, secret))
    }

    pub async fn list_clients(
        &self,
        caller: &Caller,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Client>, IdentityError> {
        // A sandbox caller sees only sandbox clients.
        let environment =
            (caller.environment == Environment::Sandbox).then_some(Environment::Sandbox);
        let items = store::list_clients(
            &self.db,
            &caller.agency_id,
            environment,
            cursor,
            page_size.fetch_limit(),
        )
        .await?;
        Ok(Page::from_overfetch(items, page_size, |c| {
            c.client_id.clone()
        }))
    }

    pub async fn rotate_client_secret(
        &self,
        caller: &Caller,
        client_id: &str,
    ) -> Result<(Client, ClientSecret), IdentityError> {
        let mut client = self.managed_client(caller, client_id).await?;
        if client.state == ClientState::Disabled {
            return Err(IdentityError::ClientDisabled);
        }
        let secret = ClientSecret::generate()?;
        let now = now_micros();
        if !store::update_client_secret(&self.db, &client, &secret.hash(), now).await? {
            // Disabled (or gone) since it was read.
            return Err(IdentityError::ClientDisabled);
        }
        self.credentials.forget(&client.client_id);
        client.secret_rotate_time = now;
        tracing::info!(client_id = %client.client_id, "client secret rotated");
        Ok((client, secret))
    }

    /// Disables the client; its tokens stop working here at once.
    pub async fn disable_client(
        &self,
        caller: &Caller,
        client_id: &str,
    ) -> Result<Client, IdentityError> {
        let mut client = self.managed_client(caller, client_id).await?;
        if client.state == ClientState::Active {
            let now = now_micros();
            let until = now
                .saturating_add(micros(self.token_ttl))
                .saturating_add(60_000_000);
            store::disable_client(&self.db, &client, until, now).await?;
            self.revocations.record_client(&client.client_id, until);
            self.credentials.forget(&client.client_id);
            client.state = ClientState::Disabled;
            tracing::info!(client_id = %client.client_id, "client disabled");
        }
        Ok(client)
    }

    /// Client credentials grant: authenticates the client and signs a token.
    pub async fn issue_token(
        &self,
        client_id: &str,
        client_secret: &str,
        requested: Option<ScopeSet>,
    ) -> Result<IssuedToken, IdentityError> {
        let client = self.authenticate_client(client_id, client_secret).await?;
        self.issue_token_for(&client, requested)
    }

    /// The client credentials grant for a client authenticated either way
    /// (secret or `private_key_jwt`).
    pub async fn issue_token_as(
        &self,
        auth: &ClientAuth,
        requested: Option<ScopeSet>,
    ) -> Result<IssuedToken, IdentityError> {
        let client = self.authenticate(auth).await?;
        self.issue_token_for(&client, requested)
    }

    fn issue_token_for(
        &self,
        client: &Client,
        requested: Option<ScopeSet>,
    ) -> Result<IssuedToken, IdentityError> {
        let scopes = match requested {
            Some(wanted) if !wanted.is_empty() => {
                if let Some(missing) = wanted.iter().find(|s| !client.scopes.contains(*s)) {
                    return Err(IdentityError::ScopeNotGranted(missing));
                }
                wanted
            }
            _ => client.scopes,
        };
        let now = unix_now();
        let ttl = i64::try_from(self.token_ttl.as_secs()).unwrap_or(600);
        let claims = AccessTokenClaims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: client.client_id.clone(),
            agency: client.agency_id.clone(),
            scope: scopes.to_string(),
            env: client.environment.as_str().to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl,
            // 128 random bits from the thread's userspace CSPRNG: no system
            // call per token (uuid's v4 asks the kernel every time).
            jti: format!("{:032x}", rand::random::<u128>()),
        };
        let access_token = self.keys.sign(&claims)?;
        Ok(IssuedToken {
            access_token,
            scopes,
            expires_in: ttl,
            expire_time: claims.exp,
        })
    }

    async fn load_credentials(&self, client_id: &str) -> Result<Lookup, IdentityError> {
        let guard = LoadGuard {
            cache: &self.credentials,
            client_id,
            lock: self.credentials.load_lock(client_id),
        };
        let _single_flight = guard.lock.lock().await;
        if let Some(cached) = self.credentials.get(client_id) {
            return Ok(cached);
        }
        let started = Instant::now();
        let loaded = store::get_client_credentials(&self.db, client_id)
            .await?
            .map(Arc::new);
        self.credentials.put(client_id, loaded.clone(), started);
        Ok(loaded)
    }

    /// Authenticates a client by its secret (for the authorization code
    /// grant): the one answer `InvalidClientCredentials` for every failure.
    pub(crate) async fn authenticate_client(
        &self,
        client_id: &str,
        client_secret: &str,
    ) -> Result<Client, IdentityError> {
        let credentials = match self.credentials.get(client_id) {
            Some(cached) => cached,
            None => self.load_credentials(client_id).await?,
        }
        .ok_or(IdentityError::InvalidClientCredentials)?;
        let (client, hash) = (&credentials.0, &credentials.1);
        let usable = client.state == ClientState::Active
            && !self.revocations.client_revoked(&client.client_id);
        if !hash.matches(client_secret) || !usable {
            return Err(IdentityError::InvalidClientCredentials);
        }
        Ok(client.clone())
    }

    /// A client authenticated by its secret or by a `private_key_jwt`
    /// assertion.
    pub(crate) async fn authenticate(&self, auth: &ClientAuth) -> Result<Client, IdentityError> {
        match auth {
            ClientAuth::Secret { client_id, secret } => {
                self.authenticate_client(client_id, secret).await
            }
            ClientAuth::Assertion {
                client_id,
                assertion,
            } => {
                self.verify_client_assertion(client_id.as_deref(), assertion)
                    .await
            }
        }
    }

    /// RFC 7523 client authentication: a JWT signed with one of the
    /// client's registered keys, `iss` = `sub` = the client id, `aud` the
    /// token endpoint (or the issuer), an `exp` at most an hour ahead and a
    /// `jti` used once.
    async fn verify_client_assertion(
        &self,
        claimed: Option<&str>,
        assertion: &str,
    ) -> Result<Client, IdentityError> {
        use jsonwebtoken::Algorithm;
        let invalid = || IdentityError::InvalidClientCredentials;
        let header = jsonwebtoken::decode_header(assertion).map_err(|_| invalid())?;
        if !matches!(
            header.alg,
            Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::EdDSA
        ) {
            return Err(invalid());
        }
        // Whose keys to try: the unverified subject, checked below.
        let client_id = assertion
            .split('.')
            .nth(1)
            .and_then(|payload| {
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                    .ok()
            })
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .and_then(|claims| claims.get("sub")?.as_str().map(str::to_owned))
            .ok_or(invalid())?;
        if claimed.is_some_and(|c| c != client_id)
            || atiende_platform::ids::parse_id(CLIENT_ID_PREFIX, &client_id).is_err()
        {
            return Err(invalid());
        }
        let client = match self.credentials.get(&client_id) {
            Some(cached) => cached,
            None => self.load_credentials(&client_id).await?,
        }
        .map(|found| found.0.clone())
        .filter(|c| {
            c.state == ClientState::Active && !self.revocations.client_revoked(&c.client_id)
        })
        .ok_or(invalid())?;
        let jwks = store::oidc::client_jwks(&self.db, &client_id)
            .await?
            .ok_or(invalid())?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_str(&jwks).map_err(|_| invalid())?;
        let token_endpoint = format!("{}{}", self.issuer, crate::http::TOKEN_PATH);
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[&client_id]);
        validation.set_audience(&[token_endpoint.as_str(), self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.sub = Some(client_id.clone());
        let claims = set
            .keys
            .iter()
            .filter(|jwk| header.kid.is_none() || jwk.common.key_id == header.kid)
            .filter_map(|jwk| jsonwebtoken::DecodingKey::from_jwk(jwk).ok())
            .find_map(|key| {
                jsonwebtoken::decode::<serde_json::Value>(assertion, &key, &validation).ok()
            })
            .ok_or(invalid())?
            .claims;
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .ok_or(invalid())?;
        let jti = claims
            .get("jti")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if jti.is_empty() || exp > unix_now() + 3600 {
            return Err(invalid());
        }
        let jti_hash = crate::domain::oidc::token_hash(&format!("{client_id}\0{jti}"));
        // Kept past `exp` by the validation's leeway (60 s), during which the
        // assertion would still verify.
        let keep_until = exp.saturating_add(60).saturating_mul(1_000_000);
        if !store::oidc::use_assertion_id(&self.db, &jti_hash, keep_until).await? {
            tracing::warn!(client_id, "client assertion replayed");
            return Err(invalid());
        }
        Ok(client)
    }

    /// Replaces one of the caller's clients' `private_key_jwt` keys
    /// (already checked with `parse_client_jwks`; `None` removes them).
    pub async fn set_client_jwks(
        &self,
        caller: &Caller,
        client_id: &str,
        jwks: Option<&str>,
    ) -> Result<(), IdentityError> {
        let client = self.managed_client(caller, client_id).await?;
        store::oidc::set_client_jwks(&self.db, &client.client_id, jwks).await?;
        tracing::info!(client_id, "client keys set");
        Ok(())
    }

    /// RFC 7662: the token's claims if it is active and of the caller's
    /// agency (and, for a sandbox caller, a sandbox token); `None`
    /// otherwise, whatever the reason. Introspection reveals nothing the
    /// token itself does not carry, so any client of the agency may ask.
    pub async fn introspect(&self, caller: &Caller, token: &str) -> Option<Caller> {
        match self.verifier.verify(token).await {
            Ok(subject) if may_see(caller, &subject) => Some(subject),
            _ => None,
        }
    }

    /// RFC 7009: revokes a token of the caller's own client, or any token
    /// of its agency for `identity.admin`. Unknown, invalid, expired or
    /// foreign tokens are ignored, as the RFC asks.
    pub async fn revoke(&self, caller: &Caller, token: &str) -> Result<(), IdentityError> {
        let subject = match self.verifier.verify(token).await {
            Ok(subject) => subject,
            Err(AuthError::KeysUnavailable) => {
                return Err(IdentityError::Keys("keys unavailable".into()));
            }
            Err(_) => return Ok(()),
        };
        let allowed = may_see(caller, &subject)
            && (subject.client_id == caller.client_id
                || caller.scopes.contains(Scope::IdentityAdmin));
        if !allowed {
            return Ok(());
        }
        let expire_time = subject.expires_at.saturating_mul(1_000_000);
        store::insert_token_revocation(
            &self.db,
            &subject.token_id,
            &subject.agency_id,
            expire_time,
            now_micros(),
        )
        .await?;
        self.revocations
            .record_token(&subject.token_id, expire_time);
        tracing::info!(client_id = %subject.client_id, "token revoked");
        Ok(())
    }

    /// Publishes the next signing key; it signs after the lead time.
    pub async fn rotate_signing_keys(
        &self,
        caller: &Caller,
    ) -> Result<(PublicKey, i64), IdentityError> {
        self.require_operator(caller).await?;
        let next = self.keys.rotate().await?;
        let activate_time = self.keys.activate_time(&next.kid).unwrap_or_default();
        tracing::info!(kid = %next.kid, "signing key rotation scheduled");
        Ok((next, activate_time))
    }

    /// Signs arbitrary claims with the current key. For in-process callers
    /// only (tests and tooling); no RPC exposes it.
    pub fn sign_claims(&self, claims: &AccessTokenClaims) -> Result<String, IdentityError> {
        self.keys.sign(claims)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn published_keys(&self) -> Vec<PublicKey> {
        self.keys.published()
    }

    /// Operator acts need a live client of an operator agency (sandbox ones
    /// too when `operators.allow_sandbox` is set, as in `atiende dev`).
    async fn require_operator(&self, caller: &Caller) -> Result<(), IdentityError> {
        if caller.environment == Environment::Sandbox && !self.allow_sandbox_operators {
            return Err(IdentityError::NotOperator);
        }
        let agency = store::get_agency(&self.db, &caller.agency_id).await?;
        if agency.is_some_and(|a| a.operator) {
            Ok(())
        } else {
            Err(IdentityError::NotOperator)
        }
    }

    /// A client the caller may manage: same agency, and a sandbox caller
    /// only manages sandbox clients.
    async fn managed_client(
        &self,
        caller: &Caller,
        client_id: &str,
    ) -> Result<Client, IdentityError> {
        let client = store::get_client(&self.db, &caller.agency_id, client_id)
            .await?
            .ok_or(IdentityError::ClientNotFound)?;
        // To a sandbox caller a live client does not exist.
        if caller.environment == Environment::Sandbox && client.environment == Environment::Live {
            return Err(IdentityError::ClientNotFound);
        }
        Ok(client)
    }
}

/// Whether `caller` may learn about (or revoke) a token of `subject`: same
/// agency, and a sandbox caller only sandbox tokens.
fn may_see(caller: &Caller, subject: &Caller) -> bool {
    subject.agency_id == caller.agency_id
        && !(caller.environment == Environment::Sandbox && subject.environment == Environment::Live)
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(cache: &CredentialCache) -> usize {
        cache.loading.lock().unwrap().len()
    }

    #[tokio::test]
    async fn load_locks_go_when_the_last_holder_lets_go_even_if_cancelled() {
        let cache = CredentialCache::new(Duration::from_secs(1));
        let first = LoadGuard {
            cache: &cache,
            client_id: "cli_a",
            lock: cache.load_lock("cli_a"),
        };
        let held = first.lock.clone().lock_owned().await;
        // A second caller waits for the first one's load, then is cancelled.
        let waiting = async {
            let second = LoadGuard {
                cache: &cache,
                client_id: "cli_a",
                lock: cache.load_lock("cli_a"),
            };
            let _turn = second.lock.lock().await;
        };
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err()
        );
        assert_eq!(pending(&cache), 1);
        drop(held);
        drop(first);
        assert_eq!(pending(&cache), 0);
    }

    fn credentials(secret: &str) -> Arc<Credentials> {
        let client = Client {
            client_id: "cli_a".into(),
            agency_id: "agy_a".into(),
            display_name: DisplayName::parse("a").unwrap(),
            scopes: ScopeSet::default(),
            environment: Environment::Live,
            state: ClientState::Active,
            create_time: 0,
            secret_rotate_time: 0,
        };
        Arc::new((client, SecretHash::of(secret)))
    }

    #[test]
    fn a_load_that_raced_a_rotation_does_not_put_the_old_secret_back() {
        let cache = CredentialCache::new(Duration::from_secs(60));
        let started = Instant::now();
        cache.forget("cli_a"); // the rotation, after the load began
        cache.put("cli_a", Some(credentials("old")), started);
        assert!(cache.get("cli_a").is_none());
        cache.put("cli_a", Some(credentials("new")), Instant::now());
        assert!(cache.get("cli_a").is_some());
    }

    #[test]
    fn made_up_ids_never_evict_real_clients() {
        let cache = CredentialCache::new(Duration::from_secs(60));
        cache.put("cli_a", Some(credentials("s")), Instant::now());
        for i in 0..(UNKNOWN_CACHE_CAPACITY * 3) {
            cache.put(&format!("cli_{i}"), None, Instant::now());
        }
        assert!(matches!(cache.get("cli_a"), Some(Some(_))));
    }
}
