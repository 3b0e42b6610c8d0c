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

use secrecy::SecretString;

use super::citizens::{NewCitizen, PasswordAttempt, SignInOutcome, audit, email_code_hash};
use super::{ClientAuth, IdentityService};
use crate::domain::audit::AuditEventType;
use crate::domain::citizen::{
    AssuranceLevel, Citizen, CitizenState, EmailAddress, PersonName, PhoneNumber,
};
use crate::domain::national_id::{NationalId, NationalIdScheme};
use crate::domain::oidc::{
    is_s256_challenge, pairwise_subject, parse_redirect_uri, pkce_s256_matches, random_token,
    token_hash,
};
use crate::domain::password::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS, Password};
use crate::domain::totp::RecoveryCode;
use crate::domain::{CLIENT_ID_PREFIX, Client, ClientState, IdentityError};
use crate::store;
use crate::store::citizens::SignInRecord;
use crate::store::oidc::{
    AuthorizationCodeRow, AuthorizationRequestRow, CitizenAccessTokenRow, SessionRow,
};

const REQUEST_TTL_MICROS: i64 = 10 * 60 * 1_000_000;
const CODE_TTL_MICROS: i64 = 60 * 1_000_000;
const TOKEN_TTL_SECONDS: i64 = 600;
/// How long a used or expired code is remembered, so that a replay still
/// revokes the token it gave.
pub const KEEP_CODES_MICROS: i64 = TOKEN_TTL_SECONDS * 1_000_000;
/// A refresh-token family lasts this long from its code, however often it
/// is refreshed.
const REFRESH_LIFETIME_MICROS: i64 = 12 * 3600 * 1_000_000;

/// How long a sign-on session lasts without use, and at most.
const SESSION_IDLE_MICROS: i64 = 30 * 60 * 1_000_000;
const SESSION_MAX_MICROS: i64 = 8 * 3600 * 1_000_000;
/// How recent the password must be to add a second factor.
const ENROL_AFTER_SIGN_IN_MICROS: i64 = 5 * 60 * 1_000_000;
/// Tries of an email verification code.
const EMAIL_CODE_ATTEMPTS: i64 = 5;

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
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub acr_values: Option<String>,
    pub ui_locales: Option<String>,
}

/// The language of the pages: Spanish, or English when `ui_locales` asks
/// for it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locale {
    #[default]
    Es,
    En,
}

impl Locale {
    /// The first supported tag of a `ui_locales` list (`en-GB` is `en`).
    pub fn from_ui_locales(raw: Option<&str>) -> Self {
        raw.unwrap_or_default()
            .split(' ')
            .find_map(|tag| match tag.split('-').next().unwrap_or_default() {
                t if t.eq_ignore_ascii_case("es") => Some(Self::Es),
                t if t.eq_ignore_ascii_case("en") => Some(Self::En),
                _ => None,
            })
            .unwrap_or_default()
    }

    pub fn parse(raw: &str) -> Self {
        if raw == "en" { Self::En } else { Self::Es }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es => "es",
            Self::En => "en",
        }
    }
}

/// Why the browser cannot be sent back to the client: shown on a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageError {
    UnknownClient,
    UnregisteredRedirect,
    /// The request expired, was answered, or its CSRF token is wrong.
    Expired,
    Unavailable,
    InvalidReturn,
}

/// Why an authorization cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown on a page: the client or the redirect URI cannot be trusted,
    /// so the browser is not sent anywhere (RFC 6749 4.1.2.1).
    Page(PageError, Locale),
    /// Sent back to the client's registered redirect URI.
    Redirect {
        redirect_uri: String,
        error: &'static str,
        description: &'static str,
        state: String,
    },
}

/// A message on a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    WrongCredentials,
    SecondFactorNeeded,
    /// The agency asks for a second factor that this session lacks.
    StepUp,
    LockedOut,
    WrongCode,
    EmailCodeSent,
}

/// What a consent page lists, by scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    Subject,
    Profile,
    Email,
    Phone,
    OfflineAccess,
}

/// A registration form field, for errors tied to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrationField {
    NationalId,
    GivenNames,
    FamilyNames,
    Email,
    Phone,
    Password,
}

/// What is wrong with a registration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldProblem {
    Invalid,
    PasswordTooShort,
    PasswordTooLong,
    PasswordCommon,
}

/// The page the citizen sees next.
pub enum Screen {
    /// RUN and password; `second_factor` adds the code field.
    SignIn {
        second_factor: bool,
    },
    Register {
        problems: Vec<(RegistrationField, FieldProblem)>,
    },
    VerifyEmail,
    /// A new TOTP secret to scan (the URI) or type (base32).
    EnrolTotp {
        secret_base32: SecretString,
        otpauth_uri: SecretString,
    },
    /// Shown once, after enrolment.
    RecoveryCodes {
        codes: Vec<RecoveryCode>,
    },
    Consent {
        attributes: Vec<Attribute>,
    },
}

/// A page of one authorization request.
pub struct Page {
    pub request_id: String,
    /// Goes into every form and a cookie (double submit).
    pub csrf_token: String,
    pub client_name: String,
    pub locale: Locale,
    pub screen: Screen,
    pub notice: Option<Notice>,
}

/// What an authorization step leads to.
pub enum Step {
    Show(Box<Page>),
    /// Back to the client, with a code or an error.
    Redirect(String),
}

/// What to do with the session cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCookie {
    Keep,
    /// A new session: set the cookie to this token.
    Set(String),
    Clear,
}

/// A step and the session cookie that goes with it.
pub struct Answer {
    pub step: Step,
    pub session: SessionCookie,
}

impl Answer {
    fn keep(step: Step) -> Self {
        Self {
            step,
            session: SessionCookie::Keep,
        }
    }
}

/// The sign-in form as submitted.
pub struct SignInForm<'a> {
    pub national_id: &'a str,
    pub password: &'a str,
    pub second_factor: Option<&'a str>,
    pub source: &'a str,
}

/// The registration form as submitted.
pub struct RegistrationForm<'a> {
    pub national_id: &'a str,
    pub given_names: &'a str,
    pub family_names: &'a str,
    pub email: &'a str,
    pub phone: &'a str,
    pub password: &'a str,
}

/// What every form of a pending request carries.
pub struct FormContext<'a> {
    pub request_id: &'a str,
    pub csrf_form: &'a str,
    pub csrf_cookie: &'a str,
    /// The session cookie, empty when there is none.
    pub session_cookie: &'a str,
    /// The page language the form was shown in.
    pub locale: Locale,
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

/// An RP-initiated logout request.
pub struct LogoutRequest<'a> {
    pub id_token_hint: &'a str,
    pub client_id: &'a str,
    pub post_logout_redirect_uri: &'a str,
    pub state: &'a str,
    pub session_cookie: &'a str,
    /// The citizen confirmed on Atiende's page.
    pub confirmed: bool,
}

/// Why a logout cannot be done as asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogoutError {
    /// Not an ID token of this provider, or not for `client_id`.
    InvalidHint,
    /// Not registered for the client (or no client named).
    UnregisteredRedirect,
    /// Without a hint, the citizen confirms on a page first.
    ConfirmationNeeded,
    Unavailable,
}

struct IdTokenHint {
    aud: String,
    sid: Option<String>,
}

/// What a logout request resolves to.
pub struct Logout {
    /// Where to send the browser (a registered URI with `state`), if given.
    pub redirect: Option<String>,
    /// Whether a session was ended.
    pub ended: bool,
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

/// The least level the client asks for: the lowest known value of
/// `acr_values` (a list of acceptable levels); `low` when none is known.
fn required_level(acr_values: Option<&str>) -> AssuranceLevel {
    acr_values
        .unwrap_or_default()
        .split(' ')
        .filter_map(AssuranceLevel::parse)
        .min_by_key(|level| level_rank(*level))
        .unwrap_or(AssuranceLevel::Low)
}

fn level_rank(level: AssuranceLevel) -> u8 {
    match level {
        AssuranceLevel::Low => 0,
        AssuranceLevel::Substantial => 1,
        AssuranceLevel::High => 2,
    }
}

/// `prompt` (OpenID Connect Core 3.1.2.1): `none` alone, or any of
/// `login`, `consent`, `select_account`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Prompt {
    none: bool,
    login: bool,
    consent: bool,
}

fn parse_prompt(raw: Option<&str>) -> Result<Prompt, ()> {
    let mut prompt = Prompt::default();
    let values: Vec<&str> = raw
        .unwrap_or_default()
        .split(' ')
        .filter(|v| !v.is_empty())
        .collect();
    for value in &values {
        match *value {
            "none" => prompt.none = true,
            "login" => prompt.login = true,
            "consent" => prompt.consent = true,
            "select_account" => {}
            _ => return Err(()),
        }
    }
    if prompt.none && values.len() > 1 {
        return Err(());
    }
    Ok(prompt)
}

fn scope_covered(granted: &str, asked: &str) -> bool {
    let granted: Vec<&str> = granted.split(' ').collect();
    asked
        .split(' ')
        .filter(|s| !s.is_empty())
        .all(|s| granted.contains(&s))
}

/// The level a pending request asks for.
fn required_of(request: &AuthorizationRequestRow) -> AssuranceLevel {
    AssuranceLevel::parse(&request.acr_required).unwrap_or(AssuranceLevel::Low)
}

/// Whether a sign-in (its methods) of an account (its attested level)
/// meets the level asked for.
fn level_met(required: AssuranceLevel, methods: &str, account: AssuranceLevel) -> bool {
    (level_rank(required) == 0 || has_otp(methods))
        && (required != AssuranceLevel::High || account == AssuranceLevel::High)
}

fn has_otp(methods: &str) -> bool {
    methods.split(' ').any(|m| m == "otp")
}

impl IdentityService {
    async fn active_client(&self, client_id: &str) -> Result<Option<Client>, IdentityError> {
        // Through the credential cache, as the token endpoints: a client
        // disabled here is forgotten at once, elsewhere within its TTL.
        let credentials = match self.credentials.get(client_id) {
            Some(cached) => cached,
            None => self.load_credentials(client_id).await?,
        };
        Ok(credentials
            .map(|credentials| credentials.0.clone())
            .filter(|client| client.state == ClientState::Active))
    }

    /// The session behind a cookie, if it is live and of this environment;
    /// using it moves its idle expiry.
    async fn live_session(
        &self,
        cookie: &str,
        environment: Environment,
        now: i64,
    ) -> Result<Option<SessionRow>, IdentityError> {
        if cookie.is_empty() {
            return Ok(None);
        }
        let session = store::oidc::touch_session(
            &self.db,
            &token_hash(cookie),
            now,
            now.saturating_add(SESSION_IDLE_MICROS),
        )
        .await?;
        Ok(session.filter(|s| s.environment == environment.as_str()))
    }

    /// Checks an authorization request and keeps it while the citizen
    /// signs in. With a live session (and no `prompt=login`, a `max_age`
    /// it meets, and the level asked for), no sign-in is asked; with
    /// remembered consent too, the code goes back at once.
    pub async fn begin_authorization(
        &self,
        params: AuthorizeParams,
        session_cookie: &str,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let locale = Locale::from_ui_locales(params.ui_locales.as_deref());
        let page = |error| AuthorizeError::Page(error, locale);
        let client_id = params
            .client_id
            .as_deref()
            .and_then(|id| parse_id(CLIENT_ID_PREFIX, id).ok())
            .ok_or(page(PageError::UnknownClient))?;
        let client = self
            .active_client(&client_id)
            .await
            .map_err(|_| page(PageError::Unavailable))?
            .ok_or(page(PageError::UnknownClient))?;
        let redirect_uri = params.redirect_uri.unwrap_or_default();
        let registered = store::oidc::redirect_uri_registered(&self.db, &client_id, &redirect_uri)
            .await
            .map_err(|error| {
                tracing::error!(%error, "authorization request failed");
                page(PageError::Unavailable)
            })?;
        if !registered {
            return Err(page(PageError::UnregisteredRedirect));
        }
        let state = params.state.unwrap_or_default();
        let refuse = |error, description| redirect_error(&redirect_uri, &state, error, description);
        if params.response_type.as_deref() != Some("code") {
            return Err(refuse(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
        let scope = params.scope.unwrap_or_default();
        if !scope.split(' ').any(|s| s == "openid") {
            return Err(refuse("invalid_scope", "the scope must include openid"));
        }
        let challenge = params.code_challenge.unwrap_or_default();
        if params.code_challenge_method.as_deref() != Some("S256") || !is_s256_challenge(&challenge)
        {
            return Err(refuse(
                "invalid_request",
                "PKCE with code_challenge_method=S256 is required",
            ));
        }
        let prompt = parse_prompt(params.prompt.as_deref()).map_err(|()| {
            refuse(
                "invalid_request",
                "prompt is none alone, or of login, consent, select_account",
            )
        })?;
        let max_age =
            match params.max_age.as_deref() {
                None | Some("") => None,
                Some(raw) => Some(raw.parse::<u32>().map_err(|_| {
                    refuse("invalid_request", "max_age must be a number of seconds")
                })?),
            };
        let required = required_level(params.acr_values.as_deref());
        let unavailable = || page(PageError::Unavailable);

        // A live session answers for the sign-in, unless the client wants a
        // fresh one.
        let session = if prompt.login {
            None
        } else {
            self.live_session(session_cookie, client.environment, now)
                .await
                .map_err(|_| unavailable())?
                .filter(|s| {
                    max_age.is_none_or(|max| {
                        now.saturating_sub(s.auth_time) <= i64::from(max).saturating_mul(1_000_000)
                    })
                })
        };
        let csrf_token = random_token().map_err(|_| unavailable())?;
        let request = AuthorizationRequestRow {
            request_id: random_token().map_err(|_| unavailable())?,
            client_id,
            redirect_uri,
            scope,
            state,
            nonce: params.nonce.unwrap_or_default(),
            code_challenge: challenge,
            csrf_hash: token_hash(&csrf_token),
            expire_time: now.saturating_add(REQUEST_TTL_MICROS),
            citizen_id: session.as_ref().map(|s| s.citizen_id.clone()),
            methods: session.as_ref().map(|s| s.methods.clone()),
            auth_time: session.as_ref().map(|s| s.auth_time),
            acr_required: required.as_str().to_owned(),
            locale: locale.as_str().to_owned(),
            force_consent: prompt.consent,
            session_hash: session.as_ref().map(|s| s.session_hash.clone()),
        };
        store::oidc::insert_authorization_request(&self.db, &request)
            .await
            .map_err(|_| unavailable())?;
        let step = self
            .proceed(&request, &client, &csrf_token, !prompt.none, now, None)
            .await?;
        Ok(Answer::keep(step))
    }

    /// The next step of a request: sign in, a second factor, consent, or
    /// the code. Without `interactive` (prompt=none) any page is an error
    /// sent back to the client. `signed_in`: the request's citizen as the
    /// sign-in that checked it just read it (`None`: read it).
    async fn proceed(
        &self,
        request: &AuthorizationRequestRow,
        client: &Client,
        csrf_token: &str,
        interactive: bool,
        now: i64,
        signed_in: Option<Citizen>,
    ) -> Result<Step, AuthorizeError> {
        let locale = Locale::parse(&request.locale);
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, locale);
        let show = |screen, notice| {
            Step::Show(Box::new(Page {
                request_id: request.request_id.clone(),
                csrf_token: csrf_token.to_owned(),
                client_name: client.display_name.as_str().to_owned(),
                locale,
                screen,
                notice,
            }))
        };
        let interaction = |error, description| {
            redirect_error(&request.redirect_uri, &request.state, error, description)
        };
        let (Some(citizen_id), Some(methods)) = (&request.citizen_id, &request.methods) else {
            if !interactive {
                return Err(interaction("login_required", "the citizen must sign in"));
            }
            return Ok(show(
                Screen::SignIn {
                    second_factor: false,
                },
                None,
            ));
        };
        let citizen = match signed_in.filter(|c| &c.citizen_id == citizen_id) {
            Some(citizen) => Some(citizen),
            None => store::citizens::get_citizen(&self.db, client.environment, citizen_id)
                .await
                .map_err(|_| unavailable())?
                .map(|found| found.citizen),
        }
        .filter(|c| c.state == CitizenState::Active);
        let Some(citizen) = citizen else {
            if !interactive {
                return Err(interaction("login_required", "the citizen must sign in"));
            }
            return Ok(show(
                Screen::SignIn {
                    second_factor: false,
                },
                None,
            ));
        };
        let required = required_of(request);
        if level_rank(required) >= 1 && !has_otp(methods) {
            if !interactive {
                return Err(interaction(
                    "interaction_required",
                    "the level of assurance asked for needs a second factor",
                ));
            }
            if citizen.has_second_factor {
                return Ok(show(
                    Screen::SignIn {
                        second_factor: true,
                    },
                    Some(Notice::StepUp),
                ));
            }
            // Adding a second factor needs the password typed just now, not
            // an old session's.
            let recent = request
                .auth_time
                .is_some_and(|t| now.saturating_sub(t) <= ENROL_AFTER_SIGN_IN_MICROS);
            if !recent {
                return Ok(show(
                    Screen::SignIn {
                        second_factor: false,
                    },
                    Some(Notice::StepUp),
                ));
            }
            // A new secret every time the page is shown: a pending one is
            // never shown twice (someone who saw it cannot wait for the
            // citizen to confirm it).
            let enrolment = self
                .begin_totp_enrolment(client.environment, &citizen.citizen_id)
                .await
                .map_err(|_| unavailable())?;
            return Ok(show(
                Screen::EnrolTotp {
                    secret_base32: enrolment.secret_base32,
                    otpauth_uri: enrolment.otpauth_uri,
                },
                None,
            ));
        }
        if required == AssuranceLevel::High && citizen.assurance_level != AssuranceLevel::High {
            store::oidc::delete_authorization_request(&self.db, &request.request_id)
                .await
                .map_err(|_| unavailable())?;
            return Err(interaction(
                "unmet_authentication_requirements",
                "the citizen's identity has not been proofed to the level asked for",
            ));
        }
        let granted = if request.force_consent {
            None
        } else {
            store::oidc::consent_grant(&self.db, citizen_id, &client.client_id)
                .await
                .map_err(|_| unavailable())?
        };
        if granted.is_some_and(|g| scope_covered(&g, &request.scope)) {
            return self
                .issue_code(request, client, citizen.assurance_level, now)
                .await
                .map(Step::Redirect);
        }
        if !interactive {
            return Err(interaction("consent_required", "the citizen must consent"));
        }
        Ok(show(
            Screen::Consent {
                attributes: consent_attributes(&request.scope),
            },
            None,
        ))
    }

    /// Loads a pending request for one of its forms: it must be live, and
    /// the CSRF token of the form must match the cookie and the request.
    async fn form_request(
        &self,
        form: &FormContext<'_>,
        now: i64,
    ) -> Result<(AuthorizationRequestRow, Client), AuthorizeError> {
        let expired = AuthorizeError::Page(PageError::Expired, form.locale);
        let unavailable = AuthorizeError::Page(PageError::Unavailable, form.locale);
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
        let client = self
            .active_client(&request.client_id)
            .await
            .map_err(|_| unavailable)?
            .ok_or(expired)?;
        Ok((request, client))
    }

    /// The registration page of a request (reached from its sign-in page,
    /// whose CSRF cookie it reuses).
    pub async fn registration_page(
        &self,
        request_id: &str,
        csrf_cookie: &str,
        locale: Locale,
        now: i64,
    ) -> Result<Page, AuthorizeError> {
        let context = FormContext {
            request_id,
            csrf_form: csrf_cookie,
            csrf_cookie,
            session_cookie: "",
            locale,
        };
        let (request, client) = self.form_request(&context, now).await?;
        Ok(Page {
            request_id: request.request_id,
            csrf_token: csrf_cookie.to_owned(),
            client_name: client.display_name.as_str().to_owned(),
            locale: Locale::parse(&request.locale),
            screen: Screen::Register {
                problems: Vec::new(),
            },
            notice: None,
        })
    }

    fn page_of(
        request: &AuthorizationRequestRow,
        client: &Client,
        csrf_token: &str,
        screen: Screen,
        notice: Option<Notice>,
    ) -> Step {
        Step::Show(Box::new(Page {
            request_id: request.request_id.clone(),
            csrf_token: csrf_token.to_owned(),
            client_name: client.display_name.as_str().to_owned(),
            locale: Locale::parse(&request.locale),
            screen,
            notice,
        }))
    }

    /// The sign-in form: checks the credentials; on success a session
    /// starts and the request goes on.
    pub async fn complete_sign_in(
        &self,
        context: FormContext<'_>,
        form: SignInForm<'_>,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let (request, client) = self.form_request(&context, now).await?;
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, context.locale);
        let retry = |notice, second_factor| {
            Answer::keep(Self::page_of(
                &request,
                &client,
                context.csrf_form,
                Screen::SignIn { second_factor },
                Some(notice),
            ))
        };
        let Ok(national_id) = NationalId::parse(NationalIdScheme::ClRun, form.national_id) else {
            return Ok(retry(Notice::WrongCredentials, false));
        };
        let (outcome, sign_in) = self
            .check_password_unrecorded(
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
                unavailable()
            })?;
        let (citizen, methods) = match outcome {
            SignInOutcome::Accepted { citizen, methods } => (citizen, methods.join(" ")),
            SignInOutcome::SecondFactorRequired => {
                return Ok(retry(Notice::SecondFactorNeeded, true));
            }
            SignInOutcome::Refused => {
                return Ok(retry(
                    Notice::WrongCredentials,
                    form.second_factor.is_some(),
                ));
            }
            SignInOutcome::LockedOut { .. } => return Ok(retry(Notice::LockedOut, false)),
        };
        let citizen_id = citizen.citizen_id.clone();
        self.signed_in(
            request,
            &client,
            &context,
            (&citizen_id, Some(*citizen), sign_in),
            &methods,
            now,
        )
        .await
    }

    /// A citizen has just authenticated for the request: a new session
    /// (replacing the browser's old one), recorded on the request in the
    /// same transaction, and the next step.
    async fn signed_in(
        &self,
        mut request: AuthorizationRequestRow,
        client: &Client,
        context: &FormContext<'_>,
        (citizen_id, citizen, sign_in): (&str, Option<Citizen>, Option<SignInRecord>),
        methods: &str,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, context.locale);
        let replaced =
            (!context.session_cookie.is_empty()).then(|| token_hash(context.session_cookie));
        let session_token = random_token().map_err(|_| unavailable())?;
        let session = SessionRow {
            session_hash: token_hash(&session_token),
            citizen_id: citizen_id.to_owned(),
            environment: client.environment.as_str().to_owned(),
            methods: methods.to_owned(),
            auth_time: now,
            idle_expire_time: now.saturating_add(SESSION_IDLE_MICROS),
            expire_time: now.saturating_add(SESSION_MAX_MICROS),
        };
        store::oidc::start_session(
            &self.db,
            sign_in,
            replaced.as_deref(),
            &session,
            &request.request_id,
        )
        .await
        .map_err(|error| {
            tracing::error!(%error, "could not start a session");
            unavailable()
        })?;
        let session_hash = session.session_hash;
        request.citizen_id = Some(citizen_id.to_owned());
        request.methods = Some(methods.to_owned());
        request.auth_time = Some(now);
        request.session_hash = Some(session_hash);
        let step = self
            .proceed(&request, client, context.csrf_form, true, now, citizen)
            .await?;
        Ok(Answer {
            step,
            session: SessionCookie::Set(session_token),
        })
    }

    /// Self-registration from the sign-in page of a request: every field
    /// checked (errors tied to fields), then a code to the email address.
    /// A national id that already has an account gets the same next page
    /// (and no code), so registration does not reveal who has one.
    pub async fn register_from_page(
        &self,
        context: FormContext<'_>,
        form: RegistrationForm<'_>,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let (request, client) = self.form_request(&context, now).await?;
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, context.locale);
        let mut problems = Vec::new();
        let national_id = NationalId::parse(NationalIdScheme::ClRun, form.national_id)
            .map_err(|_| problems.push((RegistrationField::NationalId, FieldProblem::Invalid)))
            .ok();
        let given_names = PersonName::parse(form.given_names)
            .map_err(|_| problems.push((RegistrationField::GivenNames, FieldProblem::Invalid)))
            .ok();
        let family_names = PersonName::parse(form.family_names)
            .map_err(|_| problems.push((RegistrationField::FamilyNames, FieldProblem::Invalid)))
            .ok();
        let email = EmailAddress::parse(form.email)
            .map_err(|_| problems.push((RegistrationField::Email, FieldProblem::Invalid)))
            .ok();
        let phone = if form.phone.trim().is_empty() {
            None
        } else {
            PhoneNumber::parse(form.phone)
                .map_err(|_| problems.push((RegistrationField::Phone, FieldProblem::Invalid)))
                .ok()
        };
        let password = match Password::parse(form.password) {
            Ok(password) => Some(password),
            Err(_) => {
                let chars = form.password.chars().count();
                let problem = if chars < MIN_PASSWORD_CHARS {
                    FieldProblem::PasswordTooShort
                } else if chars > MAX_PASSWORD_CHARS {
                    FieldProblem::PasswordTooLong
                } else {
                    FieldProblem::PasswordCommon
                };
                problems.push((RegistrationField::Password, problem));
                None
            }
        };
        let (Some(national_id), Some(given_names), Some(family_names), Some(email), Some(password)) =
            (national_id, given_names, family_names, email, password)
        else {
            return Ok(Answer::keep(Self::page_of(
                &request,
                &client,
                context.csrf_form,
                Screen::Register { problems },
                None,
            )));
        };
        if !problems.is_empty() {
            return Ok(Answer::keep(Self::page_of(
                &request,
                &client,
                context.csrf_form,
                Screen::Register { problems },
                None,
            )));
        }
        let new = NewCitizen {
            national_id,
            given_names,
            family_names,
            email: email.clone(),
            phone,
            // The password waits with the email code: until the code is
            // typed, the registration cannot sign in.
            password: None,
        };
        match self.register_self(&client, new, now).await {
            Ok(citizen_id) => {
                let code = self
                    .send_email_code(
                        &citizen_id,
                        &email,
                        Some(password),
                        Locale::parse(&request.locale),
                        now,
                    )
                    .await;
                if let Err(error) = code {
                    tracing::error!(%error, "email verification code not sent");
                    return Err(unavailable());
                }
                store::oidc::mark_registering(&self.db, &request.request_id, &citizen_id)
                    .await
                    .map_err(|_| unavailable())?;
            }
            Err(IdentityError::CitizenAlreadyExists) => {
                tracing::info!("registration for a national id that has an account");
            }
            Err(error) => {
                tracing::error!(%error, "registration failed");
                return Err(unavailable());
            }
        }
        Ok(Answer::keep(Self::page_of(
            &request,
            &client,
            context.csrf_form,
            Screen::VerifyEmail,
            Some(Notice::EmailCodeSent),
        )))
    }

    /// The code sent to a registering citizen's email: right, it verifies
    /// the address and signs the citizen in (with the password just set).
    pub async fn verify_email_from_page(
        &self,
        context: FormContext<'_>,
        code: &str,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let (request, client) = self.form_request(&context, now).await?;
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, context.locale);
        let wrong = Answer::keep(Self::page_of(
            &request,
            &client,
            context.csrf_form,
            Screen::VerifyEmail,
            Some(Notice::WrongCode),
        ));
        let Some(citizen_id) = request.registering_citizen() else {
            return Ok(wrong);
        };
        let citizen_id = citizen_id.to_owned();
        let code_hash = email_code_hash(&citizen_id, code.trim());
        let verified = store::oidc::verify_email_code(
            &self.db,
            &citizen_id,
            &code_hash,
            EMAIL_CODE_ATTEMPTS,
            now,
        )
        .await
        .map_err(|_| unavailable())?;
        if !verified {
            return Ok(wrong);
        }
        let event = audit(
            AuditEventType::SignInSuccess,
            client.environment,
            Some(&citizen_id),
            None,
            &[("methods", "pwd"), ("via", "registration")],
            now,
        );
        store::citizens::append_audit_event(&self.db, event)
            .await
            .map_err(|_| unavailable())?;
        self.signed_in(
            request,
            &client,
            &context,
            (&citizen_id, None, None),
            "pwd",
            now,
        )
        .await
    }

    /// The first TOTP code of an enrolment: right, the second factor is
    /// set, counts for this sign-in, and the recovery codes are shown once.
    pub async fn enrol_from_page(
        &self,
        context: FormContext<'_>,
        code: &str,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let (request, client) = self.form_request(&context, now).await?;
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, context.locale);
        let (Some(citizen_id), Some(session_hash)) = (&request.citizen_id, &request.session_hash)
        else {
            return Err(AuthorizeError::Page(PageError::Expired, context.locale));
        };
        match self
            .confirm_totp_enrolment(client.environment, citizen_id, code.trim(), now)
            .await
        {
            Ok(codes) => {
                let methods = "pwd otp";
                store::oidc::mark_signed_in(
                    &self.db,
                    &request.request_id,
                    citizen_id,
                    methods,
                    now,
                    session_hash,
                )
                .await
                .map_err(|_| unavailable())?;
                store::oidc::upgrade_session(&self.db, session_hash, methods)
                    .await
                    .map_err(|_| unavailable())?;
                Ok(Answer::keep(Self::page_of(
                    &request,
                    &client,
                    context.csrf_form,
                    Screen::RecoveryCodes { codes },
                    None,
                )))
            }
            Err(IdentityError::WrongCode) => {
                let enrolment = self
                    .begin_totp_enrolment(client.environment, citizen_id)
                    .await
                    .map_err(|_| unavailable())?;
                Ok(Answer::keep(Self::page_of(
                    &request,
                    &client,
                    context.csrf_form,
                    Screen::EnrolTotp {
                        secret_base32: enrolment.secret_base32,
                        otpauth_uri: enrolment.otpauth_uri,
                    },
                    Some(Notice::WrongCode),
                )))
            }
            Err(_) => Err(unavailable()),
        }
    }

    /// "Continue" after the recovery codes: the request goes on.
    pub async fn continue_from_page(
        &self,
        context: FormContext<'_>,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let (request, client) = self.form_request(&context, now).await?;
        let step = self
            .proceed(&request, &client, context.csrf_form, true, now, None)
            .await?;
        Ok(Answer::keep(step))
    }

    /// The citizen's answer on the consent page: a code for the client, or
    /// `access_denied`. Either way the decision is audited; an allowed
    /// scope is remembered for the next sign-in.
    pub async fn decide_consent(
        &self,
        context: FormContext<'_>,
        allow: bool,
        now: i64,
    ) -> Result<Answer, AuthorizeError> {
        let (request, client) = self.form_request(&context, now).await?;
        let expired = AuthorizeError::Page(PageError::Expired, context.locale);
        let unavailable = || AuthorizeError::Page(PageError::Unavailable, context.locale);
        let (Some(citizen_id), Some(_), Some(_)) =
            (&request.citizen_id, &request.methods, request.auth_time)
        else {
            return Err(expired);
        };
        let event = audit(
            AuditEventType::Consent,
            client.environment,
            Some(citizen_id),
            Some(&client.agency_id),
            &[
                ("client_id", &client.client_id),
                ("scope", &request.scope),
                ("decision", if allow { "granted" } else { "denied" }),
            ],
            now,
        );
        store::citizens::append_audit_event(&self.db, event)
            .await
            .map_err(|_| unavailable())?;
        if !allow {
            store::oidc::delete_authorization_request(&self.db, &request.request_id)
                .await
                .map_err(|_| unavailable())?;
            let mut url = url::Url::parse(&request.redirect_uri).map_err(|_| unavailable())?;
            url.query_pairs_mut()
                .append_pair("error", "access_denied")
                .append_pair("error_description", "the citizen did not consent")
                .append_pair("state", &request.state)
                .append_pair("iss", &self.issuer);
            return Ok(Answer::keep(Step::Redirect(url.into())));
        }
        store::oidc::remember_consent(&self.db, citizen_id, &client.client_id, &request.scope, now)
            .await
            .map_err(|_| unavailable())?;
        let account = store::citizens::get_citizen(&self.db, client.environment, citizen_id)
            .await
            .map_err(|_| unavailable())?
            .map(|found| found.citizen)
            .filter(|c| c.state == CitizenState::Active)
            .ok_or(expired)?
            .assurance_level;
        let location = self.issue_code(&request, &client, account, now).await?;
        Ok(Answer::keep(Step::Redirect(location)))
    }

    /// A code for a request whose citizen has signed in and consented, and
    /// the redirect that carries it; the request is answered.
    async fn issue_code(
        &self,
        request: &AuthorizationRequestRow,
        client: &Client,
        account: AssuranceLevel,
        now: i64,
    ) -> Result<String, AuthorizeError> {
        let unavailable =
            || AuthorizeError::Page(PageError::Unavailable, Locale::parse(&request.locale));
        let (Some(citizen_id), Some(methods), Some(auth_time)) =
            (&request.citizen_id, &request.methods, request.auth_time)
        else {
            return Err(AuthorizeError::Page(
                PageError::Expired,
                Locale::parse(&request.locale),
            ));
        };
        // Every code goes through here: the level the client asked for is
        // checked once more, whatever page the form came from.
        if client.client_id != request.client_id
            || !level_met(required_of(request), methods, account)
        {
            return Err(AuthorizeError::Page(
                PageError::Expired,
                Locale::parse(&request.locale),
            ));
        }
        let mut url = url::Url::parse(&request.redirect_uri).map_err(|_| unavailable())?;
        let code = random_token().map_err(|_| unavailable())?;
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
            session_hash: request.session_hash.clone(),
        };
        let stored = store::oidc::insert_authorization_code(&self.db, &row, &request.request_id)
            .await
            .map_err(|_| unavailable())?;
        if !stored {
            return Err(AuthorizeError::Page(
                PageError::Expired,
                Locale::parse(&request.locale),
            ));
        }
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
        auth: &ClientAuth,
        code: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<TokenSet, TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "code exchange failed");
            TokenError::Unavailable
        };
        let client = self.token_client(auth).await?;
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
            // The family is the code's digest: its refresh tokens and every
            // access token the code gave.
            let revoked = store::oidc::revoke_family(&self.db, &code_hash)
                .await
                .map_err(unavailable)?;
            if revoked > 0 {
                tracing::warn!(
                    client_id = %client.client_id,
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
        if let Some(session_hash) = &row.session_hash {
            claims["sid"] = serde_json::Value::String(session_id(session_hash));
        }
        let id_token = self.keys.sign_jwt(&claims).map_err(unavailable)?;
        let refresh_token = if row.scope.split(' ').any(|s| s == "offline_access") {
            let token = random_token().map_err(unavailable)?;
            store::oidc::start_refresh_family(
                &self.db,
                &store::oidc::RefreshTokenRow {
                    token_hash: token_hash(&token),
                    family: code_hash.clone(),
                    citizen_id: citizen.citizen_id.clone(),
                    client_id: client.client_id.clone(),
                    agency_id: client.agency_id.clone(),
                    scope: row.scope.clone(),
                    expire_time: now.saturating_add(REFRESH_LIFETIME_MICROS),
                },
            )
            .await
            .map_err(unavailable)?;
            Some(token)
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
        auth: &ClientAuth,
        refresh_token: &str,
    ) -> Result<TokenSet, TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "refresh failed");
            TokenError::Unavailable
        };
        let client = self.token_client(auth).await?;
        if refresh_token.is_empty() {
            return Err(TokenError::InvalidRequest);
        }
        let now = now_micros();
        let new_refresh = random_token().map_err(unavailable)?;
        let new_access = random_token().map_err(unavailable)?;
        let rotation = store::oidc::Rotation {
            presented_hash: &token_hash(refresh_token),
            client_id: &client.client_id,
            new_refresh_hash: &token_hash(&new_refresh),
            new_access_hash: &token_hash(&new_access),
            access_expire_time: now.saturating_add(TOKEN_TTL_SECONDS * 1_000_000),
            now,
        };
        let row = match store::oidc::rotate_refresh_token(&self.db, &rotation)
            .await
            .map_err(unavailable)?
        {
            store::oidc::RefreshLookup::Fresh(row) => row,
            store::oidc::RefreshLookup::Replayed { .. } => {
                tracing::warn!(client_id = %client.client_id, "refresh token reused; its family is revoked");
                return Err(TokenError::InvalidGrant);
            }
            store::oidc::RefreshLookup::Unknown => return Err(TokenError::InvalidGrant),
        };
        let active = store::citizens::get_citizen(&self.db, client.environment, &row.citizen_id)
            .await
            .map_err(unavailable)?
            .is_some_and(|found| found.citizen.state == CitizenState::Active);
        if !active {
            store::oidc::revoke_family(&self.db, &row.family)
                .await
                .map_err(unavailable)?;
            return Err(TokenError::InvalidGrant);
        }
        self.audit_token_issue(&client, &row.citizen_id, "refresh_token", now)
            .await
            .map_err(unavailable)?;
        Ok(TokenSet {
            access_token: new_access,
            id_token: None,
            refresh_token: Some(new_refresh),
            expires_in: TOKEN_TTL_SECONDS,
            scope: row.scope,
        })
    }

    /// RFC 7009 revocation of one of the client's citizen tokens (a
    /// refresh token takes its family with it). Unknown tokens, and other
    /// clients' tokens, are ignored, as the RFC asks.
    pub async fn revoke_citizen_token(
        &self,
        auth: &ClientAuth,
        token: &str,
    ) -> Result<(), TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "revocation failed");
            TokenError::Unavailable
        };
        let client = self.token_client(auth).await?;
        if token.is_empty() {
            return Err(TokenError::InvalidRequest);
        }
        let revoked =
            store::oidc::revoke_client_token(&self.db, &token_hash(token), &client.client_id)
                .await
                .map_err(unavailable)?;
        if let Some(citizen_id) = revoked {
            let event = audit(
                AuditEventType::TokenRevoke,
                client.environment,
                Some(&citizen_id),
                Some(&client.agency_id),
                &[("client_id", &client.client_id)],
                now_micros(),
            );
            store::citizens::append_audit_event(&self.db, event)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    /// The client of a token, revocation or introspection request.
    async fn token_client(&self, auth: &ClientAuth) -> Result<Client, TokenError> {
        self.authenticate(auth).await.map_err(|error| match error {
            IdentityError::InvalidClientCredentials => TokenError::InvalidClient,
            error => {
                tracing::error!(%error, "client authentication failed");
                TokenError::Unavailable
            }
        })
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

    async fn audit_token_issue(
        &self,
        client: &Client,
        citizen_id: &str,
        grant: &str,
        now: i64,
    ) -> Result<(), IdentityError> {
        let event = audit(
            AuditEventType::TokenIssue,
            client.environment,
            Some(citizen_id),
            Some(&client.agency_id),
            &[("client_id", &client.client_id), ("grant", grant)],
            now,
        );
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

    /// RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): ends
    /// the browser's session. `post_logout_redirect_uri` is followed only
    /// when it is registered for the client named by a valid
    /// `id_token_hint` (one this provider signed, expired or not) or by
    /// `client_id`; without a valid hint the citizen must have confirmed
    /// (`confirmed`).
    pub async fn end_session(
        &self,
        request: LogoutRequest<'_>,
        now: i64,
    ) -> Result<Logout, LogoutError> {
        let hint = if request.id_token_hint.is_empty() {
            None
        } else {
            Some(
                self.own_id_token(request.id_token_hint)
                    .ok_or(LogoutError::InvalidHint)?,
            )
        };
        let client_id = match (&hint, request.client_id) {
            (Some(hint), "") => Some(hint.aud.clone()),
            (Some(hint), id) if hint.aud == id => Some(hint.aud.clone()),
            (Some(_), _) => return Err(LogoutError::InvalidHint),
            (None, "") => None,
            (None, id) => Some(id.to_owned()),
        };
        // Without confirmation only when the hint is of this browser's
        // session: anyone's ID token must not end someone else's session.
        let hint_is_this_session = match (&hint, request.session_cookie) {
            (Some(_), "") => true,
            (Some(hint), cookie) => {
                hint.sid.as_deref() == Some(session_id(&token_hash(cookie)).as_str())
            }
            (None, _) => false,
        };
        if !hint_is_this_session && !request.confirmed {
            return Err(LogoutError::ConfirmationNeeded);
        }
        let redirect = if request.post_logout_redirect_uri.is_empty() {
            None
        } else {
            let registered = match &client_id {
                Some(client_id) => store::oidc::redirect_uri_registered(
                    &self.db,
                    client_id,
                    request.post_logout_redirect_uri,
                )
                .await
                .map_err(|_| LogoutError::Unavailable)?,
                None => false,
            };
            if !registered {
                return Err(LogoutError::UnregisteredRedirect);
            }
            let mut url = url::Url::parse(request.post_logout_redirect_uri)
                .map_err(|_| LogoutError::UnregisteredRedirect)?;
            if !request.state.is_empty() {
                url.query_pairs_mut().append_pair("state", request.state);
            }
            Some(String::from(url))
        };
        let mut ended = false;
        if !request.session_cookie.is_empty() {
            let citizen =
                store::oidc::delete_session(&self.db, &token_hash(request.session_cookie))
                    .await
                    .map_err(|_| LogoutError::Unavailable)?;
            ended = citizen.is_some();
        }
        if ended {
            tracing::info!(at = now, "citizen session ended by logout");
        }
        Ok(Logout { redirect, ended })
    }

    /// The audience and session of an ID token this provider signed (its
    /// expiry is not checked: a hint may be old).
    fn own_id_token(&self, token: &str) -> Option<IdTokenHint> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        if header.alg != jsonwebtoken::Algorithm::ES256 {
            return None;
        }
        let kid = header.kid?;
        let key = self.keys.published().into_iter().find(|k| k.kid == kid)?;
        let decoding = jsonwebtoken::DecodingKey::from_ec_components(&key.x, &key.y).ok()?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.set_issuer(&[&self.issuer]);
        let claims = jsonwebtoken::decode::<serde_json::Value>(token, &decoding, &validation)
            .ok()?
            .claims;
        Some(IdTokenHint {
            aud: claims.get("aud")?.as_str()?.to_owned(),
            sid: claims
                .get("sid")
                .and_then(|s| s.as_str())
                .map(str::to_owned),
        })
    }

    /// RFC 7662 introspection of a client's own citizen tokens (access or
    /// refresh): `{"active": false}` for anything else.
    pub async fn introspect_citizen_token(
        &self,
        auth: &ClientAuth,
        token: &str,
    ) -> Result<serde_json::Value, TokenError> {
        let unavailable = |error: IdentityError| {
            tracing::error!(%error, "introspection failed");
            TokenError::Unavailable
        };
        let client = self.token_client(auth).await?;
        if token.is_empty() {
            return Err(TokenError::InvalidRequest);
        }
        let now = now_micros();
        let hash = token_hash(token);
        let found = match store::oidc::get_access_token(&self.db, &hash, now)
            .await
            .map_err(unavailable)?
        {
            Some(a) => Some((a.client_id, a.citizen_id, a.scope, a.expire_time, "Bearer")),
            None => store::oidc::get_refresh_token(&self.db, &hash, now)
                .await
                .map_err(unavailable)?
                .map(|r| {
                    (
                        r.client_id,
                        r.citizen_id,
                        r.scope,
                        r.expire_time,
                        "refresh_token",
                    )
                }),
        };
        // Another client's token is not this client's to know about.
        let Some((_, citizen_id, scope, expire_time, token_type)) =
            found.filter(|(owner, ..)| *owner == client.client_id)
        else {
            return Ok(serde_json::json!({ "active": false }));
        };
        let salt = store::oidc::pairwise_salt(&self.db, &random_token().map_err(unavailable)?)
            .await
            .map_err(unavailable)?;
        Ok(serde_json::json!({
            "active": true,
            "scope": scope,
            "client_id": client.client_id,
            "token_type": token_type,
            "exp": expire_time.div_euclid(1_000_000),
            "sub": pairwise_subject(&salt, &client.agency_id, &citizen_id),
            "iss": self.issuer,
        }))
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
fn consent_attributes(scope: &str) -> Vec<Attribute> {
    let mut attributes = vec![Attribute::Subject];
    for s in scope.split(' ') {
        match s {
            "profile" => attributes.push(Attribute::Profile),
            "email" => attributes.push(Attribute::Email),
            "phone" => attributes.push(Attribute::Phone),
            "offline_access" => attributes.push(Attribute::OfflineAccess),
            _ => {}
        }
    }
    attributes
}

/// The `sid` of ID tokens from a session: a digest of the session's
/// digest, so the value in tokens cannot find the session row by itself.
fn session_id(session_hash: &str) -> String {
    token_hash(&format!("sid:{session_hash}"))
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
