//! The OpenID Connect endpoints: `/oauth2/authorize` (the sign-in page,
//! server-rendered, and its form), the `authorization_code` grant of the
//! token endpoint, and `/oauth2/userinfo`.
//!
//! The form is protected by a double-submit CSRF token (a cookie and a
//! hidden field, both matching the digest kept with the request). The
//! citizen's address for the per-source lockout is the first
//! `X-Forwarded-For` entry, which the ingress must set; without one only
//! the account is throttled.

use std::collections::HashMap;

use atiende_platform::storage::now_micros;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::json;

use super::{HttpState, OAuthError, no_store};
use crate::service::oidc::{
    AuthorizeError, AuthorizeParams, PendingSignIn, SignInForm, SignInStep, TokenError,
};

pub const AUTHORIZE_PATH: &str = "/oauth2/authorize";
pub const USERINFO_PATH: &str = "/oauth2/userinfo";
const CSRF_COOKIE: &str = "atiende_oidc_csrf";

fn escape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"es\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Atiende</title></head><body><main><h1>{title}</h1>{body}</main></body></html>",
        title = escape(title)
    );
    let mut response = (status, no_store(), Html(html)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

fn sign_in_page(
    request_id: &str,
    csrf_token: &str,
    client_name: &str,
    message: Option<&str>,
    second_factor: bool,
) -> String {
    let alert = message
        .map(|m| format!("<p role=\"alert\">{}</p>", escape(m)))
        .unwrap_or_default();
    let code_field = if second_factor {
        "<p><label for=\"second_factor\">Código de verificación</label>\
         <input id=\"second_factor\" name=\"second_factor\" autocomplete=\"one-time-code\" \
         inputmode=\"numeric\" required></p>"
    } else {
        ""
    };
    format!(
        "<p>Para continuar en <strong>{client}</strong>, ingrese con su RUN.</p>{alert}\
         <form method=\"post\" action=\"{AUTHORIZE_PATH}\">\
         <input type=\"hidden\" name=\"request_id\" value=\"{request}\">\
         <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
         <p><label for=\"national_id\">RUN</label>\
         <input id=\"national_id\" name=\"national_id\" autocomplete=\"username\" required \
         placeholder=\"12.345.678-5\"></p>\
         <p><label for=\"password\">Contraseña</label>\
         <input id=\"password\" name=\"password\" type=\"password\" \
         autocomplete=\"current-password\" required></p>{code_field}\
         <p><button type=\"submit\">Ingresar</button></p></form>",
        client = escape(client_name),
        request = escape(request_id),
        csrf = escape(csrf_token),
    )
}

fn with_csrf_cookie(mut response: Response, token: &str, secure: bool) -> Response {
    let cookie = format!(
        "{CSRF_COOKIE}={token}; Path={AUTHORIZE_PATH}; HttpOnly; SameSite=Lax; Max-Age=600{}",
        if secure { "; Secure" } else { "" }
    );
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut response = (StatusCode::SEE_OTHER, no_store()).into_response();
            response.headers_mut().insert(header::LOCATION, value);
            response
        }
        Err(_) => error_page("La dirección de retorno no es válida."),
    }
}

fn error_page(message: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "No se puede continuar",
        &format!("<p role=\"alert\">{}</p>", escape(message)),
    )
}

fn authorize_error(error: AuthorizeError) -> Response {
    match error {
        AuthorizeError::Page(message) => error_page(message),
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
                see_other(url.as_str())
            }
            Err(_) => error_page("La dirección de retorno no es válida."),
        },
    }
}

pub(super) async fn authorize(
    State(state): State<HttpState>,
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
    };
    match state.service.begin_authorization(params).await {
        Ok(PendingSignIn {
            request_id,
            csrf_token,
            client_name,
        }) => {
            let body = sign_in_page(&request_id, &csrf_token, &client_name, None, false);
            let response = page(StatusCode::OK, "Ingresar con Atiende", &body);
            with_csrf_cookie(
                response,
                &csrf_token,
                state.service.issuer.starts_with("https://"),
            )
        }
        Err(error) => authorize_error(error),
    }
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

pub(super) async fn sign_in(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let csrf_cookie = cookie(&headers, CSRF_COOKIE);
    // The consent page posts here too (the CSRF cookie's path), with its
    // decision.
    if let Some(decision) = form.get("decision") {
        let decided = state
            .service
            .decide_consent(
                field("request_id"),
                field("csrf_token"),
                &csrf_cookie,
                decision == "allow",
                now_micros(),
            )
            .await;
        return match decided {
            Ok(location) => see_other(&location),
            Err(error) => authorize_error(error),
        };
    }
    let source = forwarded_source(&headers);
    let step = state
        .service
        .complete_sign_in(
            SignInForm {
                request_id: field("request_id"),
                csrf_form: field("csrf_token"),
                csrf_cookie: &csrf_cookie,
                national_id: field("national_id"),
                password: field("password"),
                second_factor: form.get("second_factor").map(String::as_str),
                source: &source,
            },
            now_micros(),
        )
        .await;
    match step {
        Ok(SignInStep::Consent {
            client_name,
            attributes,
        }) => {
            let items: String = attributes
                .iter()
                .map(|a| format!("<li>{}</li>", escape(a)))
                .collect();
            let body = format!(
                "<p><strong>{client}</strong> solicita acceso a:</p><ul>{items}</ul>\
                 <form method=\"post\" action=\"{AUTHORIZE_PATH}\">\
                 <input type=\"hidden\" name=\"request_id\" value=\"{request}\">\
                 <input type=\"hidden\" name=\"csrf_token\" value=\"{csrf}\">\
                 <p><button type=\"submit\" name=\"decision\" value=\"allow\">Autorizar</button> \
                 <button type=\"submit\" name=\"decision\" value=\"deny\">Cancelar</button></p></form>",
                client = escape(&client_name),
                request = escape(field("request_id")),
                csrf = escape(field("csrf_token")),
            );
            page(StatusCode::OK, "Autorizar el acceso", &body)
        }
        Ok(SignInStep::Retry {
            message,
            second_factor,
            client_name,
        }) => {
            let body = sign_in_page(
                field("request_id"),
                field("csrf_token"),
                &client_name,
                Some(message),
                second_factor,
            );
            page(StatusCode::OK, "Ingresar con Atiende", &body)
        }
        Err(error) => authorize_error(error),
    }
}

/// The `authorization_code` grant, once the client has been identified.
pub(super) async fn exchange(
    state: &HttpState,
    form: &HashMap<String, String>,
    client_id: &str,
    client_secret: &str,
    invalid_client: OAuthError,
) -> Result<Response, OAuthError> {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or("");
    let tokens = state
        .service
        .exchange_code(
            client_id,
            client_secret,
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
    client_id: &str,
    client_secret: &str,
    invalid_client: OAuthError,
) -> Result<Response, OAuthError> {
    let token = form.get("refresh_token").map(String::as_str).unwrap_or("");
    let tokens = state
        .service
        .refresh(client_id, client_secret, token)
        .await
        .map_err(|error| token_error(error, invalid_client))?;
    Ok(token_response(tokens))
}

pub const REVOKE_PATH: &str = "/oauth2/revoke";

/// RFC 7009: revokes one of the client's citizen tokens; 200 whether or
/// not there was such a token.
pub(super) async fn revoke(
    State(state): State<HttpState>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let invalid_client = || OAuthError {
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_client",
        description: "client authentication failed",
        basic_challenge: true,
    };
    let posted = form.get("client_id").zip(form.get("client_secret"));
    let (client_id, client_secret) = match (super::basic_credentials(&headers), posted) {
        (Some(Ok(credentials)), None) => credentials,
        (None, Some((id, secret))) => (id.clone(), secret.clone()),
        _ => return invalid_client().into_response(),
    };
    let token = form.get("token").map(String::as_str).unwrap_or("");
    match state
        .service
        .revoke_citizen_token(&client_id, &client_secret, token)
        .await
    {
        Ok(()) => (StatusCode::OK, no_store()).into_response(),
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
