//! The OpenID Connect provider's logic (authorization code flow with PKCE
//! S256 only): starting an authorization, the sign-in that ends in a code,
//! the code exchange (ID token and an opaque access token), and userinfo.
//!
//! Subjects are pairwise per agency; the agency's clients share one. The
//! citizen environment is the client's (a sandbox client signs in sandbox
//! citizens). Refresh tokens (with `offline_access`) rotate, and a reused
//! one revokes its family. Not here yet: consent, sessions,
//! `acr_values`, `private_key_jwt`, logout.

use atiende_platform::auth::Environment;
use atiende_platform::ids::parse_id;
use atiende_platform::storage::now_micros;

use super::IdentityService;
use super::citizens::{PasswordAttempt, SignInOutcome};
use crate::domain::audit::AuditEventType;
use crate::domain::citizen::{AssuranceLevel, CitizenState};
use crate::domain::national_id::{NationalId, NationalIdScheme};
use crate::domain::oidc::{
    is_s256_challenge, pairwise_subject, parse_redirect_uri, pkce_s256_matches, random_token,
    token_hash,
};
use crate::domain::{CLIENT_ID_PREFIX, Client, ClientState, IdentityError};
use crate::store;
use crate::store::oidc::{AuthorizationCodeRow, AuthorizationRequestRow, CitizenAccessTokenRow};

const REQUEST_TTL_MICROS: i64 = 10 * 60 * 1_000_000;
const CODE_TTL_MICROS: i64 = 60 * 1_000_000;
const TOKEN_TTL_SECONDS: i64 = 600;
/// How long a used or expired code is remembered, so that a replay still
/// revokes the token it gave.
pub const KEEP_CODES_MICROS: i64 = TOKEN_TTL_SECONDS * 1_000_000;
/// A refresh-token family lasts this long from its code, however often it
/// is refreshed.
const REFRESH_LIFETIME_MICROS: i64 = 12 * 3600 * 1_000_000;

/// The parameters of `/authorize`, as received.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeParams {
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub response_type: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

/// Why an authorization cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown on a page: the client or the redirect URI cannot be trusted,
    /// so the browser is not sent anywhere (RFC 6749 4.1.2.1).
    Page(&'static str),
    /// Sent back to the client's registered redirect URI.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: &'static str,
        state: String,
    },
}

/// A request waiting for the citizen: the page shows the sign-in form.
#[derive(Debug, Clone)]
pub struct PendingSignIn {
    pub request_id: String,
    /// Goes into the form and a cookie (double submit).
    pub csrf_token: String,
    pub client_name: String,
}

/// What the sign-in form leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignInStep {
    /// Signed in: the citizen is asked whether the client may have these
    /// attributes.
    Consent {
        client_name: String,
        attributes: Vec<&'static str>,
    },
    /// The form again, with a message; `second_factor` asks for a code.
    Retry {
        message: &'static str,
        second_factor: bool,
        client_name: String,
    },
}

/// The form as submitted.
pub struct SignInForm<'a> {
    pub request_id: &'a str,
    pub csrf_form: &'a str,
    pub csrf_cookie: &'a str,
    pub national_id: &'a str,
    pub password: &'a str,
    pub second_factor: Option<&'a str>,
    pub source: &'a str,
}

/// RFC 6749 token errors of the code exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    InvalidClient,
    InvalidGrant,
    InvalidRequest,
    Unavailable,
}

/// What the token endpoint returns for a code or a refresh token.
pub struct TokenSet {
    pub access_token: String,
    /// For a code; a refresh returns none.
    pub id_token: Option<String>,
    /// With the `offline_access` scope.
    pub refresh_token: Option<String>,
    pub expires_in: i64,
    pub scope: String,
}

fn redirect_error(
    redirect_uri: &str,
    state: &str,
    error: &'static str,
    description: &'static str,
) -> AuthorizeError {
    AuthorizeError::Redirect {
        redirect_uri: redirect_uri.to_owned(),
        error,
        description,
        state: state.to_owned(),
    }
}

const WRONG: &str = "El RUN o la contraseña no son correctos.";

impl IdentityService {
    /// Checks an authorization request and keeps it while the citizen
    /// signs in.
    pub async fn begin_authorization(
        &self,
        params: AuthorizeParams,
    ) -> Result<PendingSignIn, AuthorizeError> {
        let unavailable =
            AuthorizeError::Page("El servicio no está disponible. Intente más tarde.");
        let client_id = params
            .client_id
            .as_deref()
            .and_then(|id| parse_id(CLIENT_ID_PREFIX, id).ok())
            .ok_or(AuthorizeError::Page(
                "La aplicación que lo envió no es conocida.",
            ))?;
        let client = match store::get_client_credentials(&self.db, &client_id).await {
            Ok(Some((client, _))) if client.state == ClientState::Active => client,
            Ok(_) => {
                return Err(AuthorizeError::Page(
                    "La aplicación que lo envió no es conocida.",
                ));
            }
            Err(_) => return Err(unavailable),
        };
        let redirect_uri = params.redirect_uri.unwrap_or_default();
        let registered = store::oidc::redirect_uri_registered(&self.db, &client_id, &redirect_uri)
            .await
            .map_err(|error| {
                tracing::error!(%error, "authorization request failed");
                unavailable.clone()
            })?;
        if !registered {
            return Err(AuthorizeError::Page(
                "La dirección de retorno no está registrada para esta aplicación.",
            ));
        }
        let state = params.state.unwrap_or_default();
        if params.response_type.as_deref() != Some("code") {
            return Err(redirect_error(
                &redirect_uri,
                &state,
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let scope = params.scope.unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(redirect_error(
                &redirect_uri,
                &state,
                "invalid_scope",
                "the scope must include openid",
            ));
        }
        let challenge = params.code_challenge.unwrap_or_default();
        if params.code_challenge_method.as_deref() != Some("S256") || !is_s256_challenge(&challenge)
        {
            return Err(redirect_error(
                &redirect_uri,
                &state,
                "invalid_request",
                "PKCE with code_challenge_method=S256 is required",
            ));
        }
        let csrf_token = random_token().map_err(|_| unavailable.clone())?;
        let request = AuthorizationRequestRow {
            request_id: random_token().map_err(|_| unavailable.clone())?,
            client_id,
            redirect_uri,
            scope,
            state,
            nonce: params.nonce.unwrap_or_default(),
            code_challenge: challenge,
            csrf_hash: token_hash(&csrf_token),
            expire_time: now_micros().saturating_add(REQUEST_TTL_MICROS),
            citizen_id: None,
            methods: None,
            auth_time: None,
        };
        store::oidc::insert_authorization_request(&self.db, &request)
            .await
            .map_err(|_| unavailable)?;
        Ok(PendingSignIn {
            request_id: request.request_id,
            csrf_token,
            client_name: client.display_name.as_str().to_owned(),
        })
    }

    /// The sign-in form: checks the CSRF token, then the credentials; on
    /// success a one-time code goes back to the client.
    pub async fn complete_sign_in(
        &self,
        form: SignInForm<'_>,
        now: i64,
    ) -> Result<SignInStep, AuthorizeError> {
        let expired =
            AuthorizeError::Page("La solicitud expiró. Vuelva a la aplicación e intente de nuevo.");
        let unavailable =
            AuthorizeError::Page("El servicio no está disponible. Intente más tarde.");
        let same_token: bool =
            subtle::ConstantTimeEq::ct_eq(form.csrf_form.as_bytes(), form.csrf_cookie.as_bytes())
                .into();
        let request = store::oidc::get_authorization_request(&self.db, form.request_id, now)
            .await
            .map_err(|_| unavailable.clone())?
            .ok_or(expired.clone())?;
        if !same_token
            || form.csrf_form.is_empty()
            || token_hash(form.csrf_form) != request.csrf_hash
        {
            return Err(expired);
        }
        let client = match store::get_client_credentials(&self.db, &request.client_id).await {
            Ok(Some((client, _))) if client.state == ClientState::Active => client,
            Ok(_) => return Err(expired),
            Err(_) => return Err(unavailable),
        };
        let Ok(national_id) = NationalId::parse(NationalIdScheme::ClRun, form.national_id) else {
            return Ok(SignInStep::Retry {
                client_name: client.display_name.as_str().to_owned(),
                message: WRONG,
                second_factor: false,
            });
        };
        let outcome = self
            .check_password_at(
                PasswordAttempt {
                    environment: client.environment,
                    national_id: &national_id,
                    password: form.password,
                    second_factor: form.second_factor.filter(|c| !c.trim().is_empty()),
                    source: form.source,
                },
                now,
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "sign-in check failed");
                unavailable.clone()
            })?;
        let (citizen_id, methods) = match outcome {
            SignInOutcome::Accepted {
                citizen_id,
                methods,
            } => (citizen_id, methods),
            SignInOutcome::SecondFactorRequired => {
                return Ok(SignInStep::Retry {
                    client_name: client.display_name.as_str().to_owned(),
                    message: "Ingrese el código de su aplicación de autenticación o un código de recuperación.",
                    second_factor: true,
                });
            }
            SignInOutcome::Refused => {
                return Ok(SignInStep::Retry {
                    client_name: client.display_name.as_str().to_owned(),
                    message: WRONG,
                    second_factor: form.second_factor.is_some(),
                });
            }
            SignInOutcome::LockedOut { .. } => {
                return Ok(SignInStep::Retry {
                    client_name: client.display_name.as_str().to_owned(),
                    message: "Demasiados intentos fallidos. Espere unos minutos e intente de nuevo.",
                    second_factor: false,
                });
            }
        };
        store::oidc::mark_signed_in(
            &self.db,
            &request.request_id,
            &citizen_id,
            &methods.join(" "),
            now,
        )
        .await
        .map_err(|_| unavailable)?;
        Ok(SignInStep::Consent {
            client_name: client.display_name.as_str().to_owned(),
            attributes: consent_attributes(&request.scope),
        })
    }

    /// The citizen's answer on the consent page: a code for the client, or
    /// `access_denied`. Either way the decision is audited.
    pub async fn decide_consent(
        &self,
        request_id: &str,
        csrf_form: &str,
        csrf_cookie: &str,
        allow: bool,
        now: i64,
    ) -> Result<String, AuthorizeError> {
        let expired =
            AuthorizeError::Page("La solicitud expiró. Vuelva a la aplicación e intente de nuevo.");
        let unavailable =
            AuthorizeError::Page("El servicio no está disponible. Intente más tarde.");
        let same_token: bool =
            subtle::ConstantTimeEq::ct_eq(csrf_form.as_bytes(), csrf_cookie.as_bytes()).into();
        let request = store::oidc::get_authorization_request(&self.db, request_id, now)
            .await
            .map_err(|_| unavailable.clone())?
            .ok_or(expired.clone())?;
        if !same_token || csrf_form.is_empty() || token_hash(csrf_form) != request.csrf_hash {
            return Err(expired);
        }
        let (Some(citizen_id), Some(methods), Some(auth_time)) =
            (&request.citizen_id, &request.methods, request.auth_time)
        else {
            return Err(expired);
        };
        let client = match store::get_client_credentials(&self.db, &request.client_id).await {
            Ok(Some((client, _))) => client,
            _ => return Err(unavailable),
        };
        let event = crate::domain::audit::NewAuditEvent {
            audit_event_id: atiende_platform::ids::new_id(
                crate::domain::audit::AUDIT_EVENT_ID_PREFIX,
            ),
            event_type: AuditEventType::Consent,
            environment: client.environment.as_str().to_owned(),
            citizen_id: Some(citizen_id.clone()),
            agency_id: Some(client.agency_id.clone()),
            occur_time: now,
            attributes: [
                ("client_id".to_owned(), client.client_id.clone()),
                ("scope".to_owned(), request.scope.clone()),
                (
                    "decision".to_owned(),
                    if allow { "granted" } else { "denied" }.to_owned(),
                ),
            ]
            .into(),
        };
        store::citizens::append_audit_event(&self.db, event)
            .await
            .map_err(|_| unavailable.clone())?;
        let mut url = url::Url::parse(&request.redirect_uri).map_err(|_| unavailable.clone())?;
        if !allow {
            store::oidc::delete_authorization_request(&self.db, &request.request_id)
                .await
                .map_err(|_| unavailable)?;
            url.query_pairs_mut()
                .append_pair("error", "access_denied")
                .append_pair("error_description", "the citizen did not consent")
                .append_pair("state", &request.state)
                .append_pair("iss", &self.issuer);
            return Ok(url.into());
        }
        let code = random_token().map_err(|_| unavailable.clone())?;
        let row = AuthorizationCodeRow {
            code_hash: token_hash(&code),
            client_id: request.client_id.clone(),
            citizen_id: citizen_id.clone(),
            redirect_uri: request.redirect_uri.clone(),
            scope: request.scope.clone(),
            nonce: request.nonce.clone(),
            code_challenge: request.code_challenge.clone(),
            auth_time,
            methods: methods.clone(),
            expire_time: now.saturating_add(CODE_TTL_MICROS),
        };
        store::oidc::insert_authorization_code(&self.db, &row, &request.request_id)
            .await
            .map_err(|_| unavailable)?;
        url.query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", &request.state)
            .append_pair("iss", &self.issuer);
        Ok(url.into())
    }

    /// The authorization code grant: one use per code (a replay revokes
    /// the access token the code gave), the same client and redirect URI,
    /// and the PKCE verifier.
    pub async fn exchange_code(
        &self,
        client_id: &str,
        client_secret: &str,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenSet, TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "code exchange failed");
            TokenError::Unavailable
        };
        let client = self
            .authenticate_client(client_id, client_secret)
            .await
            .map_err(|error| match error {
                IdentityError::InvalidClientCredentials => TokenError::InvalidClient,
                _ => TokenError::Unavailable,
            })?;
        if code.is_empty() || code_verifier.is_empty() || redirect_uri.is_empty() {
            return Err(TokenError::InvalidRequest);
        }
        let now = now_micros();
        let code_hash = token_hash(code);
        // Only the client the code was issued to can use it (or, by
        // replaying it, revoke what it gave): another client's attempt
        // changes nothing.
        let Some(row) =
            store::oidc::use_authorization_code(&self.db, &code_hash, &client.client_id, now)
                .await
                .map_err(unavailable)?
        else {
            let owner = store::oidc::authorization_code_client(&self.db, &code_hash)
                .await
                .map_err(unavailable)?;
            if owner.as_deref() != Some(client.client_id.as_str()) {
                return Err(TokenError::InvalidGrant);
            }
            // Used before (or expired) by its own client: whatever the code
            // gave is revoked.
            let revoked = store::oidc::revoke_tokens_of_code(&self.db, &code_hash)
                .await
                .map_err(unavailable)?;
            store::oidc::revoke_family(&self.db, &code_hash)
                .await
                .map_err(unavailable)?;
            if revoked > 0 {
                tracing::warn!(
                    client_id,
                    "authorization code replayed; its access token revoked"
                );
            }
            return Err(TokenError::InvalidGrant);
        };
        if row.client_id != client.client_id
            || row.redirect_uri != redirect_uri
            || !pkce_s256_matches(code_verifier, &row.code_challenge)
        {
            return Err(TokenError::InvalidGrant);
        }
        let citizen = store::citizens::get_citizen(&self.db, client.environment, &row.citizen_id)
            .await
            .map_err(unavailable)?
            .map(|found| found.citizen)
            .filter(|c| c.state == CitizenState::Active)
            .ok_or(TokenError::InvalidGrant)?;
        let salt = store::oidc::pairwise_salt(&self.db, &random_token().map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        let sub = pairwise_subject(&salt, &client.agency_id, &citizen.citizen_id);
        let methods: Vec<&str> = row.methods.split(' ').collect();
        let acr = achieved_level(citizen.assurance_level, methods.contains(&"otp"));
        let now_secs = now.div_euclid(1_000_000);
        let mut claims = serde_json::json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": client.client_id,
            "azp": client.client_id,
            "iat": now_secs,
            "exp": now_secs + TOKEN_TTL_SECONDS,
            "auth_time": row.auth_time.div_euclid(1_000_000),
            "acr": acr.as_str(),
            "amr": methods,
        });
        if !row.nonce.is_empty() {
            claims["nonce"] = serde_json::Value::String(row.nonce.clone());
        }
        let id_token = self.keys.sign_jwt(&claims).map_err(unavailable)?;
        let refresh_token = if row.scope.split(' ').any(|s| s == "offline_access") {
            Some(
                self.new_refresh_token(
                    &client,
                    &citizen.citizen_id,
                    &row.scope,
                    &code_hash,
                    now.saturating_add(REFRESH_LIFETIME_MICROS),
                )
                .await
                .map_err(unavailable)?,
            )
        } else {
            None
        };
        let access_token = self
            .new_access_token(&client, &citizen.citizen_id, &row.scope, &code_hash, now)
            .await
            .map_err(unavailable)?;
        self.audit_token_issue(&client, &citizen.citizen_id, "authorization_code", now)
            .await
            .map_err(unavailable)?;
        Ok(TokenSet {
            access_token,
            id_token: Some(id_token),
            refresh_token,
            expires_in: TOKEN_TTL_SECONDS,
            scope: row.scope,
        })
    }

    /// The refresh token grant with rotation: the token is replaced by a
    /// new one of its family; a replaced token presented again revokes the
    /// family and its access tokens (someone else holds a copy).
    pub async fn refresh(
        &self,
        client_id: &str,
        client_secret: &str,
        refresh_token: &str,
    ) -> Result<TokenSet, TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "refresh failed");
            TokenError::Unavailable
        };
        let client = self
            .authenticate_client(client_id, client_secret)
            .await
            .map_err(|error| match error {
                IdentityError::InvalidClientCredentials => TokenError::InvalidClient,
                _ => TokenError::Unavailable,
            })?;
        if refresh_token.is_empty() {
            return Err(TokenError::InvalidRequest);
        }
        let now = now_micros();
        let row = match store::oidc::use_refresh_token(
            &self.db,
            &token_hash(refresh_token),
            &client.client_id,
            now,
        )
        .await
        .map_err(unavailable)?
        {
            store::oidc::RefreshLookup::Fresh(row) => row,
            store::oidc::RefreshLookup::Replayed { family } => {
                store::oidc::revoke_family(&self.db, &family)
                    .await
                    .map_err(unavailable)?;
                tracing::warn!(client_id, "refresh token reused; its family is revoked");
                return Err(TokenError::InvalidGrant);
            }
            store::oidc::RefreshLookup::Unknown => return Err(TokenError::InvalidGrant),
        };
        if row.client_id != client.client_id {
            return Err(TokenError::InvalidGrant);
        }
        let active = store::citizens::get_citizen(&self.db, client.environment, &row.citizen_id)
            .await
            .map_err(unavailable)?
            .is_some_and(|found| found.citizen.state == CitizenState::Active);
        if !active {
            return Err(TokenError::InvalidGrant);
        }
        let refresh_token = self
            .new_refresh_token(
                &client,
                &row.citizen_id,
                &row.scope,
                &row.family,
                row.expire_time,
            )
            .await
            .map_err(unavailable)?;
        let access_token = self
            .new_access_token(&client, &row.citizen_id, &row.scope, &row.family, now)
            .await
            .map_err(unavailable)?;
        self.audit_token_issue(&client, &row.citizen_id, "refresh_token", now)
            .await
            .map_err(unavailable)?;
        Ok(TokenSet {
            access_token,
            id_token: None,
            refresh_token: Some(refresh_token),
            expires_in: TOKEN_TTL_SECONDS,
            scope: row.scope,
        })
    }

    /// RFC 7009 revocation of one of the client's citizen tokens (a
    /// refresh token takes its family with it). Unknown tokens, and other
    /// clients' tokens, are ignored, as the RFC asks.
    pub async fn revoke_citizen_token(
        &self,
        client_id: &str,
        client_secret: &str,
        token: &str,
    ) -> Result<(), TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "revocation failed");
            TokenError::Unavailable
        };
        let client = self
            .authenticate_client(client_id, client_secret)
            .await
            .map_err(|error| match error {
                IdentityError::InvalidClientCredentials => TokenError::InvalidClient,
                _ => TokenError::Unavailable,
            })?;
        if token.is_empty() {
            return Err(TokenError::InvalidRequest);
        }
        let revoked =
            store::oidc::revoke_client_token(&self.db, &token_hash(token), &client.client_id)
                .await
                .map_err(unavailable)?;
        if let Some(citizen_id) = revoked {
            let event = crate::domain::audit::NewAuditEvent {
                audit_event_id: atiende_platform::ids::new_id(
                    crate::domain::audit::AUDIT_EVENT_ID_PREFIX,
                ),
                event_type: AuditEventType::TokenRevoke,
                environment: client.environment.as_str().to_owned(),
                citizen_id: Some(citizen_id),
                agency_id: Some(client.agency_id.clone()),
                occur_time: now_micros(),
                attributes: [("client_id".to_owned(), client.client_id.clone())].into(),
            };
            store::citizens::append_audit_event(&self.db, event)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn new_access_token(
        &self,
        client: &Client,
        citizen_id: &str,
        scope: &str,
        family: &str,
        now: i64,
    ) -> Result<String, IdentityError> {
        let token = random_token()?;
        store::oidc::insert_access_token(
            &self.db,
            &CitizenAccessTokenRow {
                token_hash: token_hash(&token),
                citizen_id: citizen_id.to_owned(),
                client_id: client.client_id.clone(),
                agency_id: client.agency_id.clone(),
                scope: scope.to_owned(),
                code_hash: family.to_owned(),
                expire_time: now.saturating_add(TOKEN_TTL_SECONDS * 1_000_000),
            },
        )
        .await?;
        Ok(token)
    }

    async fn new_refresh_token(
        &self,
        client: &Client,
        citizen_id: &str,
        scope: &str,
        family: &str,
        expire_time: i64,
    ) -> Result<String, IdentityError> {
        let token = random_token()?;
        store::oidc::insert_refresh_token(
            &self.db,
            &store::oidc::RefreshTokenRow {
                token_hash: token_hash(&token),
                family: family.to_owned(),
                citizen_id: citizen_id.to_owned(),
                client_id: client.client_id.clone(),
                agency_id: client.agency_id.clone(),
                scope: scope.to_owned(),
                expire_time,
            },
        )
        .await?;
        Ok(token)
    }

    async fn audit_token_issue(
        &self,
        client: &Client,
        citizen_id: &str,
        grant: &str,
        now: i64,
    ) -> Result<(), IdentityError> {
        let event = crate::domain::audit::NewAuditEvent {
            audit_event_id: atiende_platform::ids::new_id(
                crate::domain::audit::AUDIT_EVENT_ID_PREFIX,
            ),
            event_type: AuditEventType::TokenIssue,
            environment: client.environment.as_str().to_owned(),
            citizen_id: Some(citizen_id.to_owned()),
            agency_id: Some(client.agency_id.clone()),
            occur_time: now,
            attributes: [
                ("client_id".to_owned(), client.client_id.clone()),
                ("grant".to_owned(), grant.to_owned()),
            ]
            .into(),
        };
        store::citizens::append_audit_event(&self.db, event).await?;
        Ok(())
    }

    /// The claims `/userinfo` returns for a citizen's access token, by the
    /// scopes it was granted; `None` for an unknown or expired token, or a
    /// citizen disabled since.
    pub async fn userinfo(
        &self,
        access_token: &str,
    ) -> Result<Option<serde_json::Value>, IdentityError> {
        let now = now_micros();
        let Some(token) =
            store::oidc::get_access_token(&self.db, &token_hash(access_token), now).await?
        else {
            return Ok(None);
        };
        let Some(client) = store::get_client_credentials(&self.db, &token.client_id)
            .await?
            .map(|(client, _)| client)
        else {
            return Ok(None);
        };
        let environment: Environment = client.environment;
        let Some(citizen) = store::citizens::get_citizen(&self.db, environment, &token.citizen_id)
            .await?
            .map(|found| found.citizen)
            .filter(|c| c.state == CitizenState::Active)
        else {
            return Ok(None);
        };
        let salt = store::oidc::pairwise_salt(&self.db, &random_token()?).await?;
        let scopes: Vec<&str> = token.scope.split(' ').collect();
        let mut claims = serde_json::json!({
            "sub": pairwise_subject(&salt, &token.agency_id, &citizen.citizen_id),
        });
        if scopes.contains(&"profile") {
            claims["given_name"] = citizen.given_names.as_str().into();
            claims["family_name"] = citizen.family_names.as_str().into();
            claims["national_id"] = citizen.national_id.value().into();
        }
        if scopes.contains(&"email") {
            claims["email"] = citizen.email.as_str().into();
            claims["email_verified"] = citizen.email_verified.into();
        }
        if scopes.contains(&"phone")
            && let Some(phone) = &citizen.phone
        {
            claims["phone_number"] = phone.as_str().into();
        }
        Ok(Some(claims))
    }

    /// Replaces the redirect URIs of one of the caller's clients (already
    /// parsed with [`parse_redirect_uri`]).
    pub async fn set_redirect_uris(
        &self,
        caller: &atiende_platform::auth::Caller,
        client_id: &str,
        redirect_uris: &[String],
    ) -> Result<Vec<String>, IdentityError> {
        let client = self.managed_client(caller, client_id).await?;
        let uris =
            store::oidc::replace_redirect_uris(&self.db, &client.client_id, redirect_uris).await?;
        tracing::info!(client_id, count = uris.len(), "redirect URIs set");
        Ok(uris)
    }

    /// Adds a redirect URI to a client without a caller (bootstrap and
    /// tests); agencies use `SetClientRedirectUris`.
    pub async fn register_redirect_uri(
        &self,
        client_id: &str,
        redirect_uri: &str,
    ) -> Result<(), IdentityError> {
        let uri =
            parse_redirect_uri(redirect_uri).map_err(|_| IdentityError::InvalidRedirectUri)?;
        if store::get_client_credentials(&self.db, client_id)
            .await?
            .is_none()
        {
            return Err(IdentityError::ClientNotFound);
        }
        store::oidc::insert_redirect_uri(&self.db, client_id, &uri).await
    }
}

/// What the consent page lists for the scopes asked for.
fn consent_attributes(scope: &str) -> Vec<&'static str> {
    let mut attributes = vec!["Un identificador suyo propio de esta institución"];
    for s in scope.split(' ') {
        match s {
            "profile" => attributes.push("Su nombre y su RUN"),
            "email" => attributes.push("Su correo electrónico"),
            "phone" => attributes.push("Su número de teléfono"),
            "offline_access" => {
                attributes.push(
                    "Seguir accediendo a estos datos por 12 horas, sin que usted esté conectado",
                );
            }
            _ => {}
        }
    }
    attributes
}

/// The level a sign-in reached: a password alone is low; with a second
/// factor it is substantial, and high when an agency has proofed the
/// identity (attested `High`).
fn achieved_level(account: AssuranceLevel, second_factor: bool) -> AssuranceLevel {
    match (second_factor, account) {
        (false, _) => AssuranceLevel::Low,
        (true, AssuranceLevel::High) => AssuranceLevel::High,
        (true, _) => AssuranceLevel::Substantial,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_reached_is_capped_by_the_account_and_the_methods() {
        assert_eq!(
            achieved_level(AssuranceLevel::High, false),
            AssuranceLevel::Low
        );
        assert_eq!(
            achieved_level(AssuranceLevel::High, true),
            AssuranceLevel::High
        );
        assert_eq!(
            achieved_level(AssuranceLevel::Substantial, true),
            AssuranceLevel::Substantial
        );
        assert_eq!(
            achieved_level(AssuranceLevel::Low, true),
            AssuranceLevel::Substantial
        );
    }
}
