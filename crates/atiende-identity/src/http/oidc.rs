//! The OpenID Connect endpoints: `/oauth2/authorize` and the pages of the
//! flow (sign in, registration and email code, TOTP enrolment, recovery
//! codes, consent), the `authorization_code` and `refresh_token` grants of
//! the token endpoint, userinfo, revocation, introspection and
//! RP-initiated logout.
//!
//! Every form is protected by a double-submit CSRF token (a cookie and a
//! hidden field, both matching the digest kept with the request). The
//! single sign-on session is an HttpOnly cookie (its digest is kept). Over
//! https both cookies carry the `__Host-` prefix (Secure, Path=/, no
//! Domain). The citizen's address for the per-source lockout is the last
//! `X-Forwarded-For` entry (the one the nearest proxy wrote).

use std::collections::HashMap;

use atiende_platform::storage::now_micros;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::pages::{self, LOGOUT_PATH, escape, page_error_text, texts};
use super::{HttpState, OAuthError, no_store};
use crate::domain::oidc::random_token;
use crate::service::ClientAuth;
use crate::service::oidc::{
    Answer, AuthorizeError, AuthorizeParams, FormContext, Locale, LogoutError, LogoutRequest,
    PageError, RegistrationForm, SessionCookie, SignInForm, Step, TokenError,
};

pub const USERINFO_PATH: &str = "/oauth2/userinfo";
pub const REVOKE_PATH: &str = "/oauth2/revoke";
pub const INTROSPECT_PATH: &str = "/oauth2/introspect";

/// Cookie names: `__Host-` prefixed over https.
struct Cookies {
    csrf: &'static str,
    session: &'static str,
    secure: bool,
}

fn cookies(state: &HttpState) -> Cookies {
    if state.service.issuer.starts_with("https://") {
        Cookies {
            csrf: "__Host-atiende_csrf",
            session: "__Host-atiende_session",
            secure: true,
        }
    } else {
        Cookies {
            csrf: "atiende_csrf",
            session: "atiende_session",
            secure: false,
        }
    }
}

fn html(status: StatusCode, locale: Locale, title: &str, body: &str) -> Response {
    let mut response = (
        status,
        no_store(),
        Html(pages::document(locale, title, body)),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            // No form-action: browsers apply it to the redirect that
            // follows a form, which goes to the client's site.
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; \
             base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn set_cookie(
    response: &mut Response,
    name: &str,
    value: &str,
    max_age: Option<u32>,
    secure: bool,
) {
    let cookie = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Lax{}{}",
        max_age
            .map(|s| format!("; Max-Age={s}"))
            .unwrap_or_default(),
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

fn see_other(location: &str, locale: Locale) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = (StatusCode::SEE_OTHER, no_store()).into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => error_page(PageError::InvalidReturn, locale),
    }
}

fn error_page(error: PageError, locale: Locale) -> Response {
    let status = match error {
        PageError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    html(
        status,
        locale,
        texts(locale).error_title,
        &format!(
            "<p role=\"alert\">{}</p>",
            escape(page_error_text(locale, error))
        ),
    )
}

fn authorize_error(error: AuthorizeError, locale: Locale) -> Response {
    match error {
        AuthorizeError::Page(error, locale) => error_page(error, locale),
        AuthorizeError::Redirect {
            redirect_uri,
            error,
            description,
            state,
        } => match url::Url::parse(&redirect_uri) {
            Ok(mut url) => {
                url.query_pairs_mut()
                    .append_pair("error", error)
                    .append_pair("error_description", description)
                    .append_pair("state", &state);
                see_other(url.as_str(), locale)
            }
            Err(_) => error_page(PageError::InvalidReturn, locale),
        },
    }
}

/// Renders an answer: a page (with the CSRF cookie) or a redirect, and
/// the session cookie it sets or clears.
fn respond(
    state: &HttpState,
    answer: Result<Answer, AuthorizeError>,
    form: &HashMap<String, String>,
    locale: Locale,
) -> Response {
    let names = cookies(state);
    let answer = match answer {
        Ok(answer) => answer,
        Err(error) => return authorize_error(error, locale),
    };
    let mut response = match answer.step {
        Step::Redirect(location) => see_other(&location, locale),
        Step::Show(page) => {
            let field = |name: &str| form.get(name).cloned().unwrap_or_default();
            let (title, body) = pages::render(&page, &field);
            let mut response = html(StatusCode::OK, page.locale, &title, &body);
            set_cookie(
                &mut response,
                names.csrf,
                &page.csrf_token,
                Some(600),
                names.secure,
            );
            response
        }
    };
    match answer.session {
        SessionCookie::Keep => {}
        SessionCookie::Set(token) => {
            set_cookie(&mut response, names.session, &token, None, names.secure);
        }
        SessionCookie::Clear => {
            set_cookie(&mut response, names.session, "", Some(0), names.secure);
        }
    }
    response
}

pub(super) async fn authorize(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let param = |name: &str| query.get(name).cloned();
    let params = AuthorizeParams {
        client_id: param("client_id"),
        redirect_uri: param("redirect_uri"),
        response_type: param("response_type"),
        scope: param("scope"),
        state: param("state"),
        nonce: param("nonce"),
        code_challenge: param("code_challenge"),
        code_challenge_method: param("code_challenge_method"),
        prompt: param("prompt"),
        max_age: param("max_age"),
        acr_values: param("acr_values"),
        ui_locales: param("ui_locales"),
    };
    let locale = Locale::from_ui_locales(params.ui_locales.as_deref());
    let session = cookie(&headers, cookies(&state).session);
    let answer = state
        .service
        .begin_authorization(params, &session, now_micros())
        .await;
    respond(&state, answer, &HashMap::new(), locale)
}

fn cookie(headers: &HeaderMap, name: &str) -> String {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// The address the nearest proxy saw: the last `X-Forwarded-For` entry
/// (earlier ones are whatever the client wrote). Behind no proxy a client
/// can set it, so deploy the login pages behind one.
fn forwarded_source(headers: &HeaderMap) -> String {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// A posted form of the flow, with its request, CSRF token and cookies.
struct Posted {
    form: HashMap<String, String>,
    csrf_cookie: String,
    session_cookie: String,
    locale: Locale,
}

impl Posted {
    fn new(state: &HttpState, headers: &HeaderMap, form: HashMap<String, String>) -> Self {
        let names = cookies(state);
        let locale = Locale::parse(form.get("locale").map(String::as_str).unwrap_or_default());
        Self {
            csrf_cookie: cookie(headers, names.csrf),
            session_cookie: cookie(headers, names.session),
            form,
            locale,
        }
    }

    fn field(&self, name: &str) -> &str {
        self.form.get(name).map(String::as_str).unwrap_or_default()
    }

    fn context(&self) -> FormContext<'_> {
        FormContext {
            request_id: self.field("request_id"),
            csrf_form: self.field("csrf_token"),
            csrf_cookie: &self.csrf_cookie,
            session_cookie: &self.session_cookie,
            locale: self.locale,
        }
    }
}

pub(super) async fn sign_in(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = Posted::new(&state, &headers, form);
    let source = forwarded_source(&headers);
    let answer = state
        .service
        .complete_sign_in(
            posted.context(),
            SignInForm {
                national_id: posted.field("national_id"),
                password: posted.field("password"),
                second_factor: posted.form.get("second_factor").map(String::as_str),
                source: &source,
            },
            now_micros(),
        )
        .await;
    // The RUN typed is kept in the form; nothing else is echoed.
    let mut echo = HashMap::new();
    echo.insert(
        "national_id".to_owned(),
        posted.field("national_id").to_owned(),
    );
    respond(&state, answer, &echo, posted.locale)
}

pub(super) async fn registration_page(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let locale = Locale::parse(query.get("locale").map(String::as_str).unwrap_or_default());
    let csrf = cookie(&headers, cookies(&state).csrf);
    let request_id = query
        .get("request_id")
        .map(String::as_str)
        .unwrap_or_default();
    let page = state
        .service
        .registration_page(request_id, &csrf, locale, now_micros())
        .await
        .map(|page| Answer {
            step: Step::Show(Box::new(page)),
            session: SessionCookie::Keep,
        });
    respond(&state, page, &HashMap::new(), locale)
}

pub(super) async fn register(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = Posted::new(&state, &headers, form);
    let answer = state
        .service
        .register_from_page(
            posted.context(),
            RegistrationForm {
                national_id: posted.field("national_id"),
                given_names: posted.field("given_names"),
                family_names: posted.field("family_names"),
                email: posted.field("email"),
                phone: posted.field("phone"),
                password: posted.field("password"),
            },
            now_micros(),
        )
        .await;
    let mut echo = posted.form.clone();
    echo.remove("password");
    respond(&state, answer, &echo, posted.locale)
}

pub(super) async fn verify_email(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = Posted::new(&state, &headers, form);
    let answer = state
        .service
        .verify_email_from_page(posted.context(), posted.field("email_code"), now_micros())
        .await;
    respond(&state, answer, &HashMap::new(), posted.locale)
}

pub(super) async fn enrol(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = Posted::new(&state, &headers, form);
    let answer = state
        .service
        .enrol_from_page(posted.context(), posted.field("totp_code"), now_micros())
        .await;
    respond(&state, answer, &HashMap::new(), posted.locale)
}

pub(super) async fn continue_flow(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = Posted::new(&state, &headers, form);
    let answer = state
        .service
        .continue_from_page(posted.context(), now_micros())
        .await;
    respond(&state, answer, &HashMap::new(), posted.locale)
}

pub(super) async fn consent(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let posted = Posted::new(&state, &headers, form);
    let allow = posted.field("decision") == "allow";
    let answer = state
        .service
        .decide_consent(posted.context(), allow, now_micros())
        .await;
    respond(&state, answer, &HashMap::new(), posted.locale)
}

/// RP-initiated logout by GET (the parameters in the query).
pub(super) async fn logout_get(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    logout(&state, &headers, &query).await
}

/// RP-initiated logout by POST (also the confirmation form).
pub(super) async fn logout_post(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    logout(&state, &headers, &form).await
}

async fn logout(
    state: &HttpState,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Response {
    let names = cookies(state);
    let field = |name: &str| params.get(name).map(String::as_str).unwrap_or_default();
    let locale = Locale::from_ui_locales(Some(field("ui_locales")));
    let t = texts(locale);
    // The confirmation is a double-submit form: its token must equal the
    // cookie the confirmation page set.
    let csrf_cookie = cookie(headers, names.csrf);
    let confirmed = field("confirm") == "yes"
        && !csrf_cookie.is_empty()
        && bool::from(subtle::ConstantTimeEq::ct_eq(
            field("csrf_token").as_bytes(),
            csrf_cookie.as_bytes(),
        ));
    let session = cookie(headers, names.session);
    let outcome = state
        .service
        .end_session(
            LogoutRequest {
                id_token_hint: field("id_token_hint"),
                client_id: field("client_id"),
                post_logout_redirect_uri: field("post_logout_redirect_uri"),
                state: field("state"),
                session_cookie: &session,
                confirmed,
            },
            now_micros(),
        )
        .await;
    let mut response = match outcome {
        Ok(done) => match done.redirect {
            Some(location) => see_other(&location, locale),
            None => html(
                StatusCode::OK,
                locale,
                t.logout_title,
                &format!("<p>{}</p>", t.logged_out),
            ),
        },
        Err(LogoutError::ConfirmationNeeded) => {
            let Ok(token) = random_token() else {
                return error_page(PageError::Unavailable, locale);
            };
            let keep: String = [
                "id_token_hint",
                "client_id",
                "post_logout_redirect_uri",
                "state",
                "ui_locales",
            ]
            .iter()
            .map(|name| {
                format!(
                    "<input type=\"hidden\" name=\"{name}\" value=\"{}\">",
                    escape(field(name))
                )
            })
            .collect();
            let mut response = html(
                StatusCode::OK,
                locale,
                t.logout_title,
                &format!(
                    "<p>{confirm}</p><form method=\"post\" action=\"{LOGOUT_PATH}\">{keep}\
                     <input type=\"hidden\" name=\"csrf_token\" value=\"{token}\">\
                     <input type=\"hidden\" name=\"confirm\" value=\"yes\">\
                     <p><button type=\"submit\">{button}</button></p></form>",
                    confirm = t.logout_confirm,
                    token = escape(&token),
                    button = t.logout_button,
                ),
            );
            set_cookie(&mut response, names.csrf, &token, Some(600), names.secure);
            return response;
        }
        Err(LogoutError::InvalidHint | LogoutError::UnregisteredRedirect) => {
            return error_page(PageError::InvalidReturn, locale);
        }
        Err(LogoutError::Unavailable) => return error_page(PageError::Unavailable, locale),
    };
    set_cookie(&mut response, names.session, "", Some(0), names.secure);
    response
}

/// The `authorization_code` grant, once the client has been identified.
pub(super) async fn exchange(
    state: &HttpState,
    form: &HashMap<String, String>,
    auth: &ClientAuth,
    invalid_client: OAuthError,
) -> Result<Response, OAuthError> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let tokens = state
        .service
        .exchange_code(
            auth,
            field("code"),
            field("redirect_uri"),
            field("code_verifier"),
        )
        .await
        .map_err(|error| match error {
            TokenError::InvalidClient => invalid_client,
            TokenError::InvalidGrant => OAuthError::bad_request(
                "invalid_grant",
                "the code is invalid, expired, used, or not for this client, redirect_uri or code_verifier",
            ),
            TokenError::InvalidRequest => OAuthError::bad_request(
                "invalid_request",
                "code, redirect_uri and code_verifier are required",
            ),
            TokenError::Unavailable => OAuthError {
                status: StatusCode::SERVICE_UNAVAILABLE,
                code: "temporarily_unavailable",
                description: "try again later",
                basic_challenge: false,
            },
        })?;
    Ok(token_response(tokens))
}

fn token_response(tokens: crate::service::oidc::TokenSet) -> Response {
    let mut body = json!({
        "access_token": tokens.access_token,
        "token_type": "Bearer",
        "expires_in": tokens.expires_in,
        "scope": tokens.scope,
    });
    if let Some(id_token) = tokens.id_token {
        body["id_token"] = id_token.into();
    }
    if let Some(refresh_token) = tokens.refresh_token {
        body["refresh_token"] = refresh_token.into();
    }
    (StatusCode::OK, no_store(), axum::Json(body)).into_response()
}

fn token_error(error: TokenError, invalid_client: OAuthError) -> OAuthError {
    match error {
        TokenError::InvalidClient => invalid_client,
        TokenError::InvalidGrant => OAuthError::bad_request(
            "invalid_grant",
            "the grant is invalid, expired, used, or not for this client",
        ),
        TokenError::InvalidRequest => {
            OAuthError::bad_request("invalid_request", "a required parameter is missing")
        }
        TokenError::Unavailable => OAuthError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "temporarily_unavailable",
            description: "try again later",
            basic_challenge: false,
        },
    }
}

/// The `refresh_token` grant, once the client has been identified.
pub(super) async fn refresh(
    state: &HttpState,
    form: &HashMap<String, String>,
    auth: &ClientAuth,
    invalid_client: OAuthError,
) -> Result<Response, OAuthError> {
    let token = form.get("refresh_token").map(String::as_str).unwrap_or("");
    let tokens = state
        .service
        .refresh(auth, token)
        .await
        .map_err(|error| token_error(error, invalid_client))?;
    Ok(token_response(tokens))
}

/// RFC 7009: revokes one of the client's citizen tokens; 200 whether or
/// not there was such a token.
pub(super) async fn revoke(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let auth = match super::client_auth(&headers, &form) {
        Ok((auth, _)) => auth,
        Err(error) => return error.into_response(),
    };
    let token = form.get("token").map(String::as_str).unwrap_or("");
    match state.service.revoke_citizen_token(&auth, token).await {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
        Err(error) => token_error(error, invalid_client()).into_response(),
    }
}

fn invalid_client() -> OAuthError {
    OAuthError {
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_client",
        description: "client authentication failed",
        basic_challenge: true,
    }
}

/// RFC 7662 introspection of the client's own citizen tokens.
pub(super) async fn introspect(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let auth = match super::client_auth(&headers, &form) {
        Ok((auth, _)) => auth,
        Err(error) => return error.into_response(),
    };
    let token = form.get("token").map(String::as_str).unwrap_or("");
    match state.service.introspect_citizen_token(&auth, token).await {
        Ok(body) => (StatusCode::OK, no_store(), axum::Json(body)).into_response(),
        Err(error) => token_error(error, invalid_client()).into_response(),
    }
}

pub(super) async fn userinfo(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned())
        .unwrap_or_default();
    let unauthorized = |error: &str| {
        let mut response = (StatusCode::UNAUTHORIZED, no_store()).into_response();
        if let Ok(value) = HeaderValue::from_str(&format!("Bearer error=\"{error}\"")) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, value);
        }
        response
    };
    if token.is_empty() {
        return unauthorized("invalid_request");
    }
    match state.service.userinfo(&token).await {
        Ok(Some(claims)) => (StatusCode::OK, no_store(), axum::Json(claims)).into_response(),
        Ok(None) => unauthorized("invalid_token"),
        Err(error) => {
            tracing::error!(%error, "userinfo failed");
            (StatusCode::SERVICE_UNAVAILABLE, no_store()).into_response()
        }
    }
}
