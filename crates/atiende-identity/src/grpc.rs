//! The gRPC adapter: the only module that knows prost types. It parses
//! requests into domain values (collecting every field violation), checks
//! scopes, calls [`IdentityService`] and renders the result.

use std::sync::Arc;

use atiende_platform::auth::{Caller, Environment, Scope, ScopeSet, caller};
use atiende_platform::error::{ApiError, Violations};
use atiende_platform::ids::parse_id;
use atiende_platform::paging::{PageSize, decode_id_cursor, encode_page_token};
use atiende_proto::common::v1 as common;
use atiende_proto::identity::v1 as pb;
use tonic::{Request, Response, Status};

use crate::domain::{AGENCY_ID_PREFIX, Agency, CLIENT_ID_PREFIX, Client, ClientState, DisplayName};
use crate::keys::PublicKey;
use crate::service::IdentityService;

type Reply<T> = Result<Response<T>, Status>;

#[derive(Clone)]
pub struct AgencyApi(pub Arc<IdentityService>);

#[derive(Clone)]
pub struct TokenApi(pub Arc<IdentityService>);

/// Citizen accounts (see [`citizens`]).
#[derive(Clone)]
pub struct CitizenApi(pub Arc<IdentityService>);

mod citizens;
pub mod notifications;

fn admin(request: &Request<impl Sized>) -> Result<Caller, ApiError> {
    let caller = caller(request)?;
    caller.require(Scope::IdentityAdmin)?;
    Ok(caller)
}

#[tonic::async_trait]
impl pb::agency_service_server::AgencyService for AgencyApi {
    async fn create_agency(
        &self,
        request: Request<pb::CreateAgencyRequest>,
    ) -> Reply<pb::CreateAgencyResponse> {
        let caller = admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = v.check("display_name", DisplayName::parse(&req.display_name));
        let name = v.finish_with(name)?;
        let agency = self
            .0
            .create_agency(&caller, name, req.operator)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateAgencyResponse {
            agency: Some(agency_to_pb(&agency)),
        }))
    }

    async fn get_agency(
        &self,
        request: Request<pb::GetAgencyRequest>,
    ) -> Reply<pb::GetAgencyResponse> {
        let caller = caller(&request)?;
        let req = request.into_inner();
        let wanted =
            optional_agency_id(&req.agency_id).map_err(|d| ApiError::invalid("agency_id", d))?;
        let agency = self
            .0
            .get_agency(&caller, wanted.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetAgencyResponse {
            agency: Some(agency_to_pb(&agency)),
        }))
    }

    async fn create_client(
        &self,
        request: Request<pb::CreateClientRequest>,
    ) -> Reply<pb::CreateClientResponse> {
        let caller = admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let name = v.check("display_name", DisplayName::parse(&req.display_name));
        let scopes = v.check("scopes", parse_scopes(&req.scopes, true));
        let environment = v.check("environment", parse_environment(req.environment));
        let agency_id = v.check("agency_id", optional_agency_id(&req.agency_id));
        let (((name, scopes), environment), agency_id) =
            v.finish_with(name.zip(scopes).zip(environment).zip(agency_id))?;
        let (client, secret) = self
            .0
            .create_client(&caller, agency_id.as_deref(), name, scopes, environment)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateClientResponse {
            client: Some(client_to_pb(&client)),
            client_secret: secret.expose().to_owned(),
        }))
    }

    async fn list_clients(
        &self,
        request: Request<pb::ListClientsRequest>,
    ) -> Reply<pb::ListClientsResponse> {
        let caller = admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, "", CLIENT_ID_PREFIX),
        );
        let (page_size, cursor) = v.finish_with(page_size.zip(cursor))?;
        let page = self
            .0
            .list_clients(&caller, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListClientsResponse {
            clients: page.items.iter().map(client_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, ""))
                .unwrap_or_default(),
        }))
    }

    async fn rotate_client_secret(
        &self,
        request: Request<pb::RotateClientSecretRequest>,
    ) -> Reply<pb::RotateClientSecretResponse> {
        let caller = admin(&request)?;
        let client_id = parse_client_id(&request.get_ref().client_id)?;
        let (client, secret) = self
            .0
            .rotate_client_secret(&caller, &client_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateClientSecretResponse {
            client: Some(client_to_pb(&client)),
            client_secret: secret.expose().to_owned(),
        }))
    }

    async fn disable_client(
        &self,
        request: Request<pb::DisableClientRequest>,
    ) -> Reply<pb::DisableClientResponse> {
        let caller = admin(&request)?;
        let client_id = parse_client_id(&request.get_ref().client_id)?;
        let client = self
            .0
            .disable_client(&caller, &client_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DisableClientResponse {
            client: Some(client_to_pb(&client)),
        }))
    }

    async fn set_client_redirect_uris(
        &self,
        request: Request<pb::SetClientRedirectUrisRequest>,
    ) -> Reply<pb::SetClientRedirectUrisResponse> {
        let caller = admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client_id = v.check("client_id", parse_id(CLIENT_ID_PREFIX, &req.client_id));
        if req.redirect_uris.len() > MAX_REDIRECT_URIS {
            v.add(
                "redirect_uris",
                format!("must name at most {MAX_REDIRECT_URIS} URIs"),
            );
        }
        let mut uris = Vec::with_capacity(req.redirect_uris.len());
        for (i, raw) in req.redirect_uris.iter().enumerate() {
            if let Some(uri) = v.check(
                &format!("redirect_uris[{i}]"),
                crate::domain::oidc::parse_redirect_uri(raw),
            ) {
                uris.push(uri);
            }
        }
        let client_id = v.finish_with(client_id)?;
        let uris = self
            .0
            .set_redirect_uris(&caller, &client_id, &uris)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SetClientRedirectUrisResponse {
            client_id,
            redirect_uris: uris,
        }))
    }

    async fn set_client_jwks(
        &self,
        request: Request<pb::SetClientJwksRequest>,
    ) -> Reply<pb::SetClientJwksResponse> {
        let caller = admin(&request)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let client_id = v.check("client_id", parse_id(CLIENT_ID_PREFIX, &req.client_id));
        let jwks = if req.jwks.trim().is_empty() {
            None
        } else {
            v.check("jwks", crate::domain::oidc::parse_client_jwks(&req.jwks))
        };
        let client_id = v.finish_with(client_id)?;
        let (stored, count) = match &jwks {
            Some((set, count)) => (Some(set.as_str()), *count),
            None => (None, 0),
        };
        self.0
            .set_client_jwks(&caller, &client_id, stored)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SetClientJwksResponse {
            client_id,
            key_count: i32::try_from(count).unwrap_or(i32::MAX),
        }))
    }
}

const MAX_REDIRECT_URIS: usize = 10;

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Reply<pb::IssueTokenResponse> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let client_id = v.check("client_id", parse_id(CLIENT_ID_PREFIX, &req.client_id));
        if req.client_secret.is_empty() {
            v.add("client_secret", "is required");
        }
        let scopes = v.check("scopes", parse_scopes(&req.scopes, false));
        let (client_id, scopes) = v.finish_with(client_id.zip(scopes))?;
        let issued = self
            .0
            .issue_token(&client_id, &req.client_secret, Some(scopes))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::IssueTokenResponse {
            access_token: issued.access_token,
            token_type: "Bearer".to_owned(),
            expires_in: issued.expires_in,
            expire_time: Some(timestamp_secs(issued.expire_time)),
            scope: issued.scopes.to_string(),
        }))
    }

    async fn introspect_token(
        &self,
        request: Request<pb::IntrospectTokenRequest>,
    ) -> Reply<pb::IntrospectTokenResponse> {
        let caller = caller(&request)?;
        let token = &request.get_ref().token;
        if token.is_empty() {
            return Err(ApiError::invalid("token", "is required").into());
        }
        let Some(subject) = self.0.introspect(&caller, token).await else {
            return Ok(Response::new(pb::IntrospectTokenResponse::default()));
        };
        Ok(Response::new(pb::IntrospectTokenResponse {
            active: true,
            scope: subject.scopes.to_string(),
            client_id: subject.client_id.clone(),
            agency_id: subject.agency_id,
            environment: environment_to_pb(subject.environment).into(),
            token_type: "Bearer".to_owned(),
            expire_time: Some(timestamp_secs(subject.expires_at)),
            issue_time: Some(timestamp_secs(subject.issued_at)),
            subject: subject.client_id,
            audience: self.0.audience.clone(),
            issuer: self.0.issuer.clone(),
            token_id: subject.token_id,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Reply<pb::RevokeTokenResponse> {
        let caller = caller(&request)?;
        let token = &request.get_ref().token;
        if token.is_empty() {
            return Err(ApiError::invalid("token", "is required").into());
        }
        self.0
            .revoke(&caller, token)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.0.published_keys().iter().map(jwk_to_pb).collect(),
        }))
    }

    async fn rotate_signing_keys(
        &self,
        request: Request<pb::RotateSigningKeysRequest>,
    ) -> Reply<pb::RotateSigningKeysResponse> {
        let caller = admin(&request)?;
        let (next, activate_time) = self
            .0
            .rotate_signing_keys(&caller)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RotateSigningKeysResponse {
            next_kid: next.kid,
            activate_time: Some(timestamp_micros(activate_time)),
            published_keys: self.0.published_keys().iter().map(jwk_to_pb).collect(),
        }))
    }
}

/// Empty means the caller's own agency.
fn optional_agency_id(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        Ok(None)
    } else {
        parse_id(AGENCY_ID_PREFIX, raw).map(Some)
    }
}

fn parse_client_id(raw: &str) -> Result<String, ApiError> {
    parse_id(CLIENT_ID_PREFIX, raw).map_err(|d| ApiError::invalid("client_id", d))
}

fn parse_scopes(raw: &[i32], required: bool) -> Result<ScopeSet, String> {
    let mut set = ScopeSet::default();
    for value in raw {
        let scope = pb::Scope::try_from(*value)
            .ok()
            .and_then(scope_from_pb)
            .ok_or_else(|| "contains an unknown or unspecified scope".to_owned())?;
        set.insert(scope);
    }
    if required && set.is_empty() {
        return Err("must name at least one scope".to_owned());
    }
    Ok(set)
}

fn parse_environment(raw: i32) -> Result<Environment, String> {
    match common::Environment::try_from(raw) {
        Ok(common::Environment::Sandbox) => Ok(Environment::Sandbox),
        Ok(common::Environment::Live) => Ok(Environment::Live),
        _ => Err("must be ENVIRONMENT_SANDBOX or ENVIRONMENT_LIVE".to_owned()),
    }
}

fn scope_from_pb(scope: pb::Scope) -> Option<Scope> {
    Some(match scope {
        pb::Scope::Unspecified => return None,
        pb::Scope::NotificationsSend => Scope::NotificationsSend,
        pb::Scope::NotificationsRead => Scope::NotificationsRead,
        pb::Scope::NotificationsTemplates => Scope::NotificationsTemplates,
        pb::Scope::PaymentsCreate => Scope::PaymentsCreate,
        pb::Scope::PaymentsRead => Scope::PaymentsRead,
        pb::Scope::PaymentsRefund => Scope::PaymentsRefund,
        pb::Scope::IdentityCitizensRead => Scope::IdentityCitizensRead,
        pb::Scope::IdentityCitizensWrite => Scope::IdentityCitizensWrite,
        pb::Scope::IdentityAdmin => Scope::IdentityAdmin,
    })
}

fn scope_to_pb(scope: Scope) -> pb::Scope {
    match scope {
        Scope::NotificationsSend => pb::Scope::NotificationsSend,
        Scope::NotificationsRead => pb::Scope::NotificationsRead,
        Scope::NotificationsTemplates => pb::Scope::NotificationsTemplates,
        Scope::PaymentsCreate => pb::Scope::PaymentsCreate,
        Scope::PaymentsRead => pb::Scope::PaymentsRead,
        Scope::PaymentsRefund => pb::Scope::PaymentsRefund,
        Scope::IdentityCitizensRead => pb::Scope::IdentityCitizensRead,
        Scope::IdentityCitizensWrite => pb::Scope::IdentityCitizensWrite,
        Scope::IdentityAdmin => pb::Scope::IdentityAdmin,
    }
}

fn environment_to_pb(environment: Environment) -> common::Environment {
    match environment {
        Environment::Sandbox => common::Environment::Sandbox,
        Environment::Live => common::Environment::Live,
    }
}

fn agency_to_pb(agency: &Agency) -> pb::Agency {
    pb::Agency {
        agency_id: agency.agency_id.clone(),
        display_name: agency.display_name.as_str().to_owned(),
        operator: agency.operator,
        create_time: Some(timestamp_micros(agency.create_time)),
    }
}

fn client_to_pb(client: &Client) -> pb::Client {
    pb::Client {
        client_id: client.client_id.clone(),
        agency_id: client.agency_id.clone(),
        display_name: client.display_name.as_str().to_owned(),
        scopes: client
            .scopes
            .iter()
            .map(|s| scope_to_pb(s).into())
            .collect(),
        environment: environment_to_pb(client.environment).into(),
        state: match client.state {
            ClientState::Active => pb::ClientState::Active,
            ClientState::Disabled => pb::ClientState::Disabled,
        }
        .into(),
        create_time: Some(timestamp_micros(client.create_time)),
        secret_rotate_time: Some(timestamp_micros(client.secret_rotate_time)),
    }
}

fn jwk_to_pb(key: &PublicKey) -> pb::JsonWebKey {
    pb::JsonWebKey {
        kty: "EC".to_owned(),
        crv: "P-256".to_owned(),
        x: key.x.clone(),
        y: key.y.clone(),
        kid: key.kid.clone(),
        alg: "ES256".to_owned(),
        r#use: "sig".to_owned(),
    }
}

fn timestamp_micros(micros: i64) -> prost_types::Timestamp {
    let nanos = i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos,
    }
}

fn timestamp_secs(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}
