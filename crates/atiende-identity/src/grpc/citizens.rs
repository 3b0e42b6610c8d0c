//! `CitizenService`: parses every request into domain values (collecting
//! all field violations), checks the scope, calls the service and renders
//! what the caller may see.

use atiende_platform::auth::{Scope, caller};
use atiende_platform::error::{ApiError, Violations};
use atiende_platform::ids::parse_id;
use atiende_platform::paging::{PageSize, decode_page_token, encode_page_token};
use atiende_proto::identity::v1 as pb;
use tonic::{Request, Response};

use super::{CitizenApi, Reply, timestamp_micros};
use crate::domain::AGENCY_ID_PREFIX;
use crate::domain::audit::{AuditEvent, AuditEventType};
use crate::domain::citizen::{
    AssuranceLevel, CITIZEN_ID_PREFIX, CitizenState, EmailAddress, EvidenceReference, PersonName,
    PhoneNumber,
};
use crate::domain::national_id::{NationalId, NationalIdScheme};
use crate::domain::password::Password;
use crate::service::citizens::{AuditQuery, CitizenView, NewCitizen};

#[tonic::async_trait]
impl pb::citizen_service_server::CitizenService for CitizenApi {
    async fn register_citizen(
        &self,
        request: Request<pb::RegisterCitizenRequest>,
    ) -> Reply<pb::RegisterCitizenResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensWrite)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let national_id = national_id(&mut v, req.national_id.as_ref());
        let given_names = v.check("given_names", PersonName::parse(&req.given_names));
        let family_names = v.check("family_names", PersonName::parse(&req.family_names));
        let email = v.check("email", EmailAddress::parse(&req.email));
        let phone = v.check(
            "phone_number",
            optional(&req.phone_number, PhoneNumber::parse),
        );
        let password = v.check("password", optional(&req.password, Password::parse));
        let (((((national_id, given_names), family_names), email), phone), password) = v
            .finish_with(
                national_id
                    .zip(given_names)
                    .zip(family_names)
                    .zip(email)
                    .zip(phone)
                    .zip(password),
            )?;
        let view = self
            .0
            .register_citizen(
                &caller,
                NewCitizen {
                    national_id,
                    given_names,
                    family_names,
                    email,
                    phone,
                    password,
                },
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RegisterCitizenResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn get_citizen(
        &self,
        request: Request<pb::GetCitizenRequest>,
    ) -> Reply<pb::GetCitizenResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensRead)?;
        let citizen_id = citizen_id(&request.get_ref().citizen_id)?;
        let view = self
            .0
            .get_citizen(&caller, &citizen_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetCitizenResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn find_citizen_by_national_id(
        &self,
        request: Request<pb::FindCitizenByNationalIdRequest>,
    ) -> Reply<pb::FindCitizenByNationalIdResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensRead)?;
        let mut v = Violations::new();
        let national_id = national_id(&mut v, request.get_ref().national_id.as_ref());
        let national_id = v.finish_with(national_id)?;
        let view = self
            .0
            .find_citizen(&caller, &national_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::FindCitizenByNationalIdResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn update_contact(
        &self,
        request: Request<pb::UpdateContactRequest>,
    ) -> Reply<pb::UpdateContactResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensWrite)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("citizen_id", parse_id(CITIZEN_ID_PREFIX, &req.citizen_id));
        let email = v.check("email", optional(&req.email, EmailAddress::parse));
        let phone = v.check(
            "phone_number",
            optional(&req.phone_number, PhoneNumber::parse),
        );
        if req.email.trim().is_empty() && req.phone_number.trim().is_empty() {
            v.add("email", "give an email or a phone_number to change");
        }
        let ((id, email), phone) = v.finish_with(id.zip(email).zip(phone))?;
        let view = self
            .0
            .update_contact(&caller, &id, email, phone)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::UpdateContactResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn disable_citizen(
        &self,
        request: Request<pb::DisableCitizenRequest>,
    ) -> Reply<pb::DisableCitizenResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensWrite)?;
        let id = citizen_id(&request.get_ref().citizen_id)?;
        let view = self
            .0
            .set_citizen_state(&caller, &id, CitizenState::Disabled)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DisableCitizenResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn enable_citizen(
        &self,
        request: Request<pb::EnableCitizenRequest>,
    ) -> Reply<pb::EnableCitizenResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensWrite)?;
        let id = citizen_id(&request.get_ref().citizen_id)?;
        let view = self
            .0
            .set_citizen_state(&caller, &id, CitizenState::Active)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::EnableCitizenResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn set_assurance_level(
        &self,
        request: Request<pb::SetAssuranceLevelRequest>,
    ) -> Reply<pb::SetAssuranceLevelResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensWrite)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("citizen_id", parse_id(CITIZEN_ID_PREFIX, &req.citizen_id));
        let level = v.check("assurance_level", level_from_pb(req.assurance_level));
        let evidence = v.check(
            "evidence_reference",
            EvidenceReference::parse(&req.evidence_reference),
        );
        let ((id, level), evidence) = v.finish_with(id.zip(level).zip(evidence))?;
        let view = self
            .0
            .set_assurance_level(&caller, &id, level, evidence)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SetAssuranceLevelResponse {
            citizen: Some(citizen_to_pb(&view)),
        }))
    }

    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Reply<pb::ListAuditEventsResponse> {
        let caller = caller(&request)?;
        caller.require(Scope::IdentityCitizensRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let citizen = v.check(
            "citizen_id",
            optional(&req.citizen_id, |raw| parse_id(CITIZEN_ID_PREFIX, raw)),
        );
        let agency = v.check(
            "agency_id",
            optional(&req.agency_id, |raw| parse_id(AGENCY_ID_PREFIX, raw)),
        );
        let types = v.check("types", types_from_pb(&req.types));
        let range = v.check(
            "occur_time_range",
            time_range(req.occur_time_range.as_ref()),
        );
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let ((((citizen_id, agency_id), types), (from, before)), page_size) =
            v.finish_with(citizen.zip(agency).zip(types).zip(range).zip(page_size))?;
        let filters = format!(
            "c={};a={};t={};f={:?};b={:?}",
            citizen_id.as_deref().unwrap_or(""),
            agency_id.as_deref().unwrap_or(""),
            types
                .iter()
                .map(|t| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            from,
            before
        );
        let before_seq = seq_cursor(&req.page_token, &filters)
            .map_err(|d| ApiError::invalid("page_token", d))?;
        let page = self
            .0
            .list_audit_events(
                &caller,
                AuditQuery {
                    citizen_id,
                    agency_id,
                    types,
                    occur_from: from,
                    occur_before: before,
                },
                page_size,
                before_seq,
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            audit_events: page.items.iter().map(audit_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }
}

fn citizen_id(raw: &str) -> Result<String, ApiError> {
    parse_id(CITIZEN_ID_PREFIX, raw).map_err(|d| ApiError::invalid("citizen_id", d))
}

/// Empty (or blank) means absent.
fn optional<T>(raw: &str, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, String> {
    if raw.trim().is_empty() {
        Ok(None)
    } else {
        parse(raw).map(Some)
    }
}

fn national_id(v: &mut Violations, raw: Option<&pb::NationalId>) -> Option<NationalId> {
    let Some(raw) = raw else {
        v.add("national_id", "is required");
        return None;
    };
    let scheme = match pb::NationalIdScheme::try_from(raw.scheme) {
        Ok(pb::NationalIdScheme::ClRun) => NationalIdScheme::ClRun,
        _ => {
            v.add("national_id.scheme", "must be NATIONAL_ID_SCHEME_CL_RUN");
            return None;
        }
    };
    v.check("national_id.value", NationalId::parse(scheme, &raw.value))
}

fn level_from_pb(raw: i32) -> Result<AssuranceLevel, String> {
    match pb::AssuranceLevel::try_from(raw) {
        Ok(pb::AssuranceLevel::Low) => Ok(AssuranceLevel::Low),
        Ok(pb::AssuranceLevel::Substantial) => Ok(AssuranceLevel::Substantial),
        Ok(pb::AssuranceLevel::High) => Ok(AssuranceLevel::High),
        _ => Err("must be ASSURANCE_LEVEL_LOW, _SUBSTANTIAL or _HIGH".to_owned()),
    }
}

fn level_to_pb(level: AssuranceLevel) -> pb::AssuranceLevel {
    match level {
        AssuranceLevel::Low => pb::AssuranceLevel::Low,
        AssuranceLevel::Substantial => pb::AssuranceLevel::Substantial,
        AssuranceLevel::High => pb::AssuranceLevel::High,
    }
}

const AUDIT_TYPES: [(pb::AuditEventType, AuditEventType); 10] = [
    (
        pb::AuditEventType::Registration,
        AuditEventType::Registration,
    ),
    (
        pb::AuditEventType::SignInSuccess,
        AuditEventType::SignInSuccess,
    ),
    (
        pb::AuditEventType::SignInFailure,
        AuditEventType::SignInFailure,
    ),
    (pb::AuditEventType::MfaChange, AuditEventType::MfaChange),
    (pb::AuditEventType::Lockout, AuditEventType::Lockout),
    (pb::AuditEventType::Consent, AuditEventType::Consent),
    (pb::AuditEventType::TokenIssue, AuditEventType::TokenIssue),
    (pb::AuditEventType::TokenRevoke, AuditEventType::TokenRevoke),
    (
        pb::AuditEventType::AssuranceChange,
        AuditEventType::AssuranceChange,
    ),
    (pb::AuditEventType::AdminAction, AuditEventType::AdminAction),
];

fn types_from_pb(raw: &[i32]) -> Result<Vec<AuditEventType>, String> {
    let mut types = Vec::new();
    for value in raw {
        let wire = pb::AuditEventType::try_from(*value).ok();
        let domain = AUDIT_TYPES
            .iter()
            .find(|(p, _)| Some(*p) == wire)
            .map(|(_, d)| *d)
            .ok_or_else(|| "contains an unknown or unspecified type".to_owned())?;
        if !types.contains(&domain) {
            types.push(domain);
        }
    }
    Ok(types)
}

fn type_to_pb(event_type: AuditEventType) -> pb::AuditEventType {
    AUDIT_TYPES
        .iter()
        .find(|(_, d)| *d == event_type)
        .map_or(pb::AuditEventType::Unspecified, |(p, _)| *p)
}

fn micros(timestamp: &prost_types::Timestamp) -> Result<i64, String> {
    let nanos = i64::from(timestamp.nanos);
    if !(0..1_000_000_000).contains(&nanos) {
        return Err("has a timestamp with out-of-range nanos".to_owned());
    }
    timestamp
        .seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(nanos / 1000))
        .ok_or_else(|| "has a timestamp out of range".to_owned())
}

/// `[start, end)` in µs; either end open.
fn time_range(
    raw: Option<&atiende_proto::common::v1::TimeRange>,
) -> Result<(Option<i64>, Option<i64>), String> {
    let Some(range) = raw else {
        return Ok((None, None));
    };
    let start = range.start_time.as_ref().map(micros).transpose()?;
    let end = range.end_time.as_ref().map(micros).transpose()?;
    if let (Some(s), Some(e)) = (start, end)
        && s >= e
    {
        return Err("must start before it ends".to_owned());
    }
    Ok((start, end))
}

fn seq_cursor(token: &str, filters: &str) -> Result<Option<i64>, String> {
    match decode_page_token(token, filters)? {
        None => Ok(None),
        Some(cursor) => cursor
            .parse::<i64>()
            .ok()
            .filter(|seq| *seq > 0)
            .map(Some)
            .ok_or_else(|| "is not a page token from a previous call".to_owned()),
    }
}

fn citizen_to_pb(view: &CitizenView) -> pb::Citizen {
    let c = &view.citizen;
    let scheme = match c.national_id.scheme() {
        NationalIdScheme::ClRun => pb::NationalIdScheme::ClRun,
    };
    let (email, email_verified, phone_number) = if view.contact_visible {
        (
            c.email.as_str().to_owned(),
            c.email_verified,
            c.phone
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
        )
    } else {
        (String::new(), false, String::new())
    };
    pb::Citizen {
        citizen_id: c.citizen_id.clone(),
        national_id: Some(pb::NationalId {
            scheme: scheme.into(),
            value: c.national_id.value().to_owned(),
        }),
        given_names: c.given_names.as_str().to_owned(),
        family_names: c.family_names.as_str().to_owned(),
        email,
        email_verified,
        phone_number,
        assurance_level: level_to_pb(c.assurance_level).into(),
        state: match c.state {
            CitizenState::Active => pb::CitizenState::Active,
            CitizenState::Disabled => pb::CitizenState::Disabled,
        }
        .into(),
        create_time: Some(timestamp_micros(c.create_time)),
    }
}

fn audit_to_pb(event: &AuditEvent) -> pb::AuditEvent {
    pb::AuditEvent {
        audit_event_id: event.audit_event_id.clone(),
        r#type: type_to_pb(event.event_type).into(),
        citizen_id: event.citizen_id.clone().unwrap_or_default(),
        agency_id: event.agency_id.clone().unwrap_or_default(),
        occur_time: Some(timestamp_micros(event.occur_time)),
        attributes: event
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        previous_hash: event.previous_hash.clone(),
        hash: event.hash.clone(),
    }
}
