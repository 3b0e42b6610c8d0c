//! The browser- and library-facing HTTP endpoints: a standard OAuth 2.0
//! token endpoint (RFC 6749, client credentials and — see [`oidc`] —
//! authorization codes, with `client_secret_basic` or `client_secret_post`),
//! the authorization server metadata, the JWKS, and the OpenID Connect
//! sign-in page and userinfo. Errors follow RFC 6749 section 5.2.

mod oidc;
mod pages;

use std::collections::HashMap;
use std::sync::Arc;

use atiende_platform::auth::ScopeSet;
use axum::Router;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::json;

use crate::domain::IdentityError;
use crate::service::{ClientAuth, IdentityService};

pub const TOKEN_PATH: &str = "/oauth2/token";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

#[derive(Clone)]
struct HttpState {
    service: Arc<IdentityService>,
    jwks_max_age_secs: u64,
}

pub fn router(service: Arc<IdentityService>, jwks_max_age_secs: u64) -> Router {
    Router::new()
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route(JWKS_PATH, get(jwks))
        .route(TOKEN_PATH, post(token))
        .route(
            pages::AUTHORIZE_PATH,
            get(oidc::authorize).post(oidc::sign_in),
        )
        .route(
            pages::REGISTER_PATH,
            get(oidc::registration_page).post(oidc::register),
        )
        .route(pages::VERIFY_EMAIL_PATH, post(oidc::verify_email))
        .route(pages::ENROL_PATH, post(oidc::enrol))
        .route(pages::CONTINUE_PATH, post(oidc::continue_flow))
        .route(pages::CONSENT_PATH, post(oidc::consent))
        .route(
            pages::LOGOUT_PATH,
            get(oidc::logout_get).post(oidc::logout_post),
        )
        .route(
            oidc::USERINFO_PATH,
            get(oidc::userinfo).post(oidc::userinfo),
        )
        .route(oidc::REVOKE_PATH, post(oidc::revoke))
        .route(oidc::INTROSPECT_PATH, post(oidc::introspect))
        .with_state(HttpState {
            service,
            jwks_max_age_secs,
        })
}

async fn metadata(State(state): State<HttpState>) -> Response {
    let issuer = &state.service.issuer;
    let body = json!({
        "issuer": issuer,
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "authorization_endpoint": format!("{issuer}{}", pages::AUTHORIZE_PATH),
        "end_session_endpoint": format!("{issuer}{}", pages::LOGOUT_PATH),
        "introspection_endpoint": format!("{issuer}{}", oidc::INTROSPECT_PATH),
        "userinfo_endpoint": format!("{issuer}{}", oidc::USERINFO_PATH),
        "revocation_endpoint": format!("{issuer}{}", oidc::REVOKE_PATH),
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "grant_types_supported": ["client_credentials", "authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported":
            ["ES256", "ES384", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "introspection_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "scopes_supported": atiende_platform::auth::Scope::ALL
            .map(|s| s.as_str())
            .into_iter()
            .chain(["openid", "profile", "email", "phone", "offline_access"])
            .collect::<Vec<_>>(),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "acr_values_supported": ["low", "substantial", "high"],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "ui_locales_supported": ["es", "en"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "claims_supported": ["sub", "acr", "amr", "auth_time", "nonce", "sid", "given_name",
            "family_name", "national_id", "email", "email_verified", "phone_number"],
        "authorization_response_iss_parameter_supported": true,
    });
    axum::Json(body).into_response()
}

async fn jwks(State(state): State<HttpState>) -> Response {
    let mut response = axum::Json(state.service.keys.jwks_json()).into_response();
    if let Ok(value) =
        HeaderValue::from_str(&format!("public, max-age={}", state.jwks_max_age_secs))
    {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
    response
}

/// An RFC 6749 error response.
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: &'static str,
    basic_challenge: bool,
}

impl OAuthError {
    fn bad_request(code: &'static str, description: &'static str) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code,
            description,
            basic_challenge: false,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut response = (self.status, no_store(), axum::Json(body)).into_response();
        if self.basic_challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"atiende\""),
            );
        }
        response
    }
}

fn no_store() -> [(header::HeaderName, HeaderValue); 2] {
    [
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (header::PRAGMA, HeaderValue::from_static("no-cache")),
    ]
}

async fn token(
    State(state): State<HttpState>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    match issue(&state, &headers, form).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn issue(
    state: &HttpState,
    headers: &HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Result<Response, OAuthError> {
    let Form(pairs) = form.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            OAuthError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                code: "invalid_request",
                description: "the request body is too large",
                basic_challenge: false,
            }
        } else {
            OAuthError::bad_request(
                "invalid_request",
                "the body must be application/x-www-form-urlencoded",
            )
        }
    })?;
    // RFC 6749 3.2: no parameter may be sent twice.
    let mut form = HashMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if form.insert(name, value).is_some() {
            return Err(OAuthError::bad_request(
                "invalid_request",
                "a parameter is repeated",
            ));
        }
    }
    let grant = match form.get("grant_type").map(String::as_str) {
        Some(grant @ ("client_credentials" | "authorization_code" | "refresh_token")) => {
            grant.to_owned()
        }
        Some(_) => {
            return Err(OAuthError::bad_request(
                "unsupported_grant_type",
                "only client_credentials, authorization_code and refresh_token are supported",
            ));
        }
        None => {
            return Err(OAuthError::bad_request(
                "invalid_request",
                "grant_type is required",
            ));
        }
    };
    let (auth, used_basic) = client_auth(headers, &form)?;
    let invalid_client = OAuthError {
        status: StatusCode::UNAUTHORIZED,
        code: "invalid_client",
        description: "invalid client credentials",
        basic_challenge: used_basic,
    };
    // A malformed client id cannot be a client: answer without a query.
    if let ClientAuth::Secret { client_id, .. } = &auth
        && atiende_platform::ids::parse_id(crate::domain::CLIENT_ID_PREFIX, client_id).is_err()
    {
        return Err(invalid_client);
    }
    match grant.as_str() {
        "authorization_code" => {
            return oidc::exchange(state, &form, &auth, invalid_client).await;
        }
        "refresh_token" => {
            return oidc::refresh(state, &form, &auth, invalid_client).await;
        }
        _ => {}
    }
    let requested = match form.get("scope") {
        Some(scope) => Some(ScopeSet::parse_list(scope).map_err(|_| {
            OAuthError::bad_request("invalid_scope", "the scope names an unknown scope")
        })?),
        None => None,
    };
    let issued = state
        .service
        .issue_token_as(&auth, requested)
        .await
        .map_err(|error| match error {
            IdentityError::InvalidClientCredentials => invalid_client,
            IdentityError::ScopeNotGranted(_) => {
                OAuthError::bad_request("invalid_scope", "the client may not request that scope")
            }
            other => {
                tracing::error!(error = %other, "token endpoint failed");
                OAuthError {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    code: "temporarily_unavailable",
                    description: "try again later",
                    basic_challenge: false,
                }
            }
        })?;
    let body = json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
        "scope": issued.scopes.to_string(),
    });
    Ok((StatusCode::OK, no_store(), axum::Json(body)).into_response())
}

/// `Authorization: Basic` credentials (RFC 6749 2.3.1: each part is
/// form-urlencoded before base64). `None` without such a header.
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client's authentication: `client_secret_basic`,
/// `client_secret_post` or `private_key_jwt` (exactly one); and whether
/// it was Basic (for the `WWW-Authenticate` challenge).
fn client_auth(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(ClientAuth, bool), OAuthError> {
    let basic = basic_credentials(headers);
    let posted = form.get("client_id").zip(form.get("client_secret"));
    let assertion = form.get("client_assertion_type").map(|kind| {
        (
            kind.as_str(),
            form.get("client_assertion").cloned().unwrap_or_default(),
        )
    });
    let one_method =
        || OAuthError::bad_request("invalid_request", "use one client authentication method");
    match (basic, posted, assertion) {
        (None, None, Some((JWT_BEARER, assertion))) if !assertion.is_empty() => {
            if form.contains_key("client_secret") {
                return Err(one_method());
            }
            Ok((
                ClientAuth::Assertion {
                    client_id: form.get("client_id").cloned(),
                    assertion,
                },
                false,
            ))
        }
        (None, None, Some(_)) => Err(OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: "client_assertion_type must be jwt-bearer, with a client_assertion",
            basic_challenge: false,
        }),
        (Some(Ok((client_id, secret))), None, None) => {
            Ok((ClientAuth::Secret { client_id, secret }, true))
        }
        (None, Some((id, secret)), None) => Ok((
            ClientAuth::Secret {
                client_id: id.clone(),
                secret: secret.clone(),
            },
            false,
        )),
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => Err(one_method()),
        (Some(Err(())), None, None) | (None, None, None) => Err(OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: "client authentication is required",
            basic_challenge: true,
        }),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<Result<(String, String), ()>> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let parsed = STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            let (id, secret) = text.split_once(':')?;
            Some((form_decode(id)?, form_decode(secret)?))
        });
    Some(parsed.ok_or(()))
}

fn form_decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_form_decoded() {
        let mut headers = HeaderMap::new();
        let encoded = STANDARD.encode("cli_1:a%2Bb+c");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {encoded}").parse().unwrap(),
        );
        let (id, secret) = basic_credentials(&headers).unwrap().unwrap();
        assert_eq!((id.as_str(), secret.as_str()), ("cli_1", "a+b c"));
        headers.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(basic_credentials(&headers).unwrap().is_err());
    }
}
