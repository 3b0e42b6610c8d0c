//! The gRPC adapter: the only module that knows prost types. It checks
//! scopes, parses requests into domain values (collecting every field
//! violation), calls [`NotificationsService`] and renders the result.

use std::sync::Arc;

use atiende_platform::auth::{Caller, Scope, caller};
use atiende_platform::error::{ApiError, Violations};
use atiende_platform::ids::parse_id;
use atiende_platform::paging::{PageSize, decode_id_cursor, encode_page_token};
use atiende_proto::notifications::v1 as pb;
use tonic::{Request, Response, Status};

use crate::domain::sms::Encoding;
use crate::domain::template::{MAX_INSERTED_BYTES, Personalisation, Value, is_placeholder_name};
use crate::domain::templates::{
    self, Channel, Rendering, TEMPLATE_ID_PREFIX, Template, TemplateDraft,
};
use crate::service::{NotificationsService, TemplateEdit};

mod sending;

type Reply<T> = Result<Response<T>, Status>;

/// Most personalisation values one request may carry.
const MAX_PERSONALISATION_KEYS: usize = 1000;
const MAX_IDEMPOTENCY_KEY_CHARS: usize = 255;

#[derive(Clone)]
pub struct TemplateApi(pub Arc<NotificationsService>);

#[derive(Clone)]
pub struct NotificationApi {
    pub service: Arc<NotificationsService>,
    /// How often an event stream looks for changes made elsewhere.
    pub poll_interval: std::time::Duration,
}

#[derive(Clone)]
pub struct CallbackApi {
    pub service: Arc<NotificationsService>,
    pub allow_insecure: bool,
}

const READERS: &[Scope] = &[Scope::NotificationsTemplates, Scope::NotificationsRead];

pub(crate) fn authorised(
    request: &Request<impl Sized>,
    scopes: &[Scope],
) -> Result<Caller, ApiError> {
    let caller = caller(request)?;
    caller.require_any(scopes)?;
    Ok(caller)
}

#[tonic::async_trait]
impl pb::template_service_server::TemplateService for TemplateApi {
    async fn create_template(
        &self,
        request: Request<pb::CreateTemplateRequest>,
    ) -> Reply<pb::CreateTemplateResponse> {
        let caller = authorised(&request, &[Scope::NotificationsTemplates])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let channel = v.check("channel", parse_channel(req.channel));
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let draft = channel.and_then(|channel| {
            match TemplateDraft::parse(
                channel,
                &req.name,
                &req.description,
                &req.subject,
                &req.body,
            ) {
                Ok(draft) => Some(draft),
                Err(violations) => {
                    for (field, description) in violations {
                        v.add(field, description);
                    }
                    None
                }
            }
        });
        let (draft, key) = v.finish_with(draft.zip(key))?;
        let template = self
            .0
            .create_template(&caller.agency_id, draft, key.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateTemplateResponse {
            template: Some(template_to_pb(&template)),
        }))
    }

    async fn update_template(
        &self,
        request: Request<pb::UpdateTemplateRequest>,
    ) -> Reply<pb::UpdateTemplateResponse> {
        let caller = authorised(&request, &[Scope::NotificationsTemplates])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let template_id = v.check(
            "template_id",
            parse_id(TEMPLATE_ID_PREFIX, &req.template_id),
        );
        if req.version < 1 {
            v.add(
                "version",
                "is required: the version the content was edited from",
            );
        }
        let template_id = v.finish_with(template_id)?;
        let edit = TemplateEdit {
            name: &req.name,
            description: &req.description,
            subject: &req.subject,
            body: &req.body,
        };
        let template = self
            .0
            .update_template(&caller.agency_id, &template_id, req.version, edit)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::UpdateTemplateResponse {
            template: Some(template_to_pb(&template)),
        }))
    }

    async fn get_template(
        &self,
        request: Request<pb::GetTemplateRequest>,
    ) -> Reply<pb::GetTemplateResponse> {
        let caller = authorised(&request, READERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let template_id = v.check(
            "template_id",
            parse_id(TEMPLATE_ID_PREFIX, &req.template_id),
        );
        let version = v.check("version", parse_version(req.version));
        let (template_id, version) = v.finish_with(template_id.zip(version))?;
        let template = self
            .0
            .get_template(&caller.agency_id, &template_id, version)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetTemplateResponse {
            template: Some(template_to_pb(&template)),
        }))
    }

    async fn list_templates(
        &self,
        request: Request<pb::ListTemplatesRequest>,
    ) -> Reply<pb::ListTemplatesResponse> {
        let caller = authorised(&request, READERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let channel = match pb::Channel::try_from(req.channel) {
            Ok(pb::Channel::Unspecified) => Some(None),
            Ok(pb::Channel::Email) => Some(Some(Channel::Email)),
            Ok(pb::Channel::Sms) => Some(Some(Channel::Sms)),
            Err(_) => {
                v.add(
                    "channel",
                    "must be CHANNEL_EMAIL, CHANNEL_SMS or unspecified",
                );
                None
            }
        };
        let filters = format!("channel={}", req.channel);
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, &filters, TEMPLATE_ID_PREFIX),
        );
        let ((channel, page_size), cursor) = v.finish_with(channel.zip(page_size).zip(cursor))?;
        let page = self
            .0
            .list_templates(&caller.agency_id, channel, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListTemplatesResponse {
            templates: page.items.iter().map(template_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }

    async fn preview_template(
        &self,
        request: Request<pb::PreviewTemplateRequest>,
    ) -> Reply<pb::PreviewTemplateResponse> {
        let caller = authorised(&request, READERS)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let values = parse_personalisation(&req.personalisation, "personalisation", &mut v);
        let source = match &req.source {
            Some(pb::preview_template_request::Source::TemplateId(id)) => {
                let id = v.check("template_id", parse_id(TEMPLATE_ID_PREFIX, id));
                let version = v.check("template_version", parse_version(req.template_version));
                id.zip(version)
                    .map(|(id, version)| Source::Stored(id, version))
            }
            Some(pb::preview_template_request::Source::Content(content)) => {
                let channel = v.check("content.channel", parse_channel(content.channel));
                channel.and_then(|channel| {
                    let problems =
                        TemplateDraft::content_violations(channel, &content.subject, &content.body);
                    for (field, description) in &problems {
                        v.add(format!("content.{field}"), description.clone());
                    }
                    problems.is_empty().then(|| {
                        Source::Unsaved(channel, content.subject.clone(), content.body.clone())
                    })
                })
            }
            None => {
                v.add("source", "set template_id or content");
                None
            }
        };
        let (source, values) = v.finish_with(source.zip(values))?;
        let (version, channel, subject, body) = match source {
            Source::Stored(id, version) => {
                let t = self
                    .0
                    .get_template(&caller.agency_id, &id, version)
                    .await
                    .map_err(ApiError::from)?;
                (t.version, t.draft.channel, t.draft.subject, t.draft.body)
            }
            Source::Unsaved(channel, subject, body) => (0, channel, subject, body),
        };
        let (rendering, problems) = templates::render(channel, &subject, &body, &values);
        if problems.too_large {
            return Err(ApiError::invalid(
                "personalisation",
                "the rendering would insert more than 1 MiB of personalisation",
            )
            .into());
        }
        let mut missing = problems.missing;
        missing.extend(problems.list_not_allowed);
        Ok(Response::new(pb::PreviewTemplateResponse {
            template_version: version,
            missing_placeholders: missing,
            rendering: Some(rendering_to_pb(rendering)),
        }))
    }
}

enum Source {
    Stored(String, Option<i32>),
    Unsaved(Channel, String, String),
}

pub(crate) fn parse_channel(raw: i32) -> Result<Channel, String> {
    match pb::Channel::try_from(raw) {
        Ok(pb::Channel::Email) => Ok(Channel::Email),
        Ok(pb::Channel::Sms) => Ok(Channel::Sms),
        _ => Err("must be CHANNEL_EMAIL or CHANNEL_SMS".to_owned()),
    }
}

/// 0 means the latest version.
pub(crate) fn parse_version(raw: i32) -> Result<Option<i32>, String> {
    match raw {
        0 => Ok(None),
        n if n > 0 => Ok(Some(n)),
        _ => Err("must be 0 (latest) or a version number".to_owned()),
    }
}

pub(crate) fn parse_idempotency_key(raw: &str) -> Result<Option<String>, String> {
    if raw.is_empty() {
        Ok(None)
    } else if raw.chars().count() > MAX_IDEMPOTENCY_KEY_CHARS || raw.chars().any(char::is_control) {
        Err(format!(
            "must be at most {MAX_IDEMPOTENCY_KEY_CHARS} characters, without control characters"
        ))
    } else {
        Ok(Some(raw.to_owned()))
    }
}

/// The values, or `None` with violations recorded per key.
pub(crate) fn parse_personalisation(
    raw: &std::collections::HashMap<String, pb::PersonalisationValue>,
    field: &str,
    v: &mut Violations,
) -> Option<Personalisation> {
    if raw.len() > MAX_PERSONALISATION_KEYS {
        v.add(
            field,
            format!("must have at most {MAX_PERSONALISATION_KEYS} values"),
        );
        return None;
    }
    let bytes: usize = raw.iter().map(|(k, v)| k.len() + value_bytes(v)).sum();
    if bytes > MAX_INSERTED_BYTES {
        v.add(field, "must be at most 1 MiB in all");
        return None;
    }
    let mut values = Personalisation::new();
    let mut ok = true;
    for (name, value) in raw {
        // A key that is not a placeholder name can never be used: ignored,
        // like any extra key (and never echoed).
        if !is_placeholder_name(name) {
            continue;
        }
        let value = match &value.kind {
            Some(pb::personalisation_value::Kind::Text(text)) => Value::Text(text.clone()),
            Some(pb::personalisation_value::Kind::List(list)) => Value::List(list.items.clone()),
            None => {
                v.add(format!("{field}[{name}]"), "must be text or a list");
                ok = false;
                continue;
            }
        };
        if values.insert(name, value).is_some() {
            v.add(
                format!("{field}[{name}]"),
                "names the same placeholder as another key (names ignore case and spaces)",
            );
            ok = false;
        }
    }
    ok.then_some(values)
}

fn value_bytes(value: &pb::PersonalisationValue) -> usize {
    match &value.kind {
        Some(pb::personalisation_value::Kind::Text(text)) => text.len(),
        Some(pb::personalisation_value::Kind::List(list)) => {
            list.items.iter().map(String::len).sum()
        }
        None => 0,
    }
}

fn template_to_pb(t: &Template) -> pb::Template {
    pb::Template {
        template_id: t.template_id.clone(),
        version: t.version,
        name: t.draft.name.clone(),
        description: t.draft.description.clone(),
        channel: match t.draft.channel {
            Channel::Email => pb::Channel::Email,
            Channel::Sms => pb::Channel::Sms,
        }
        .into(),
        subject: t.draft.subject.clone(),
        body: t.draft.body.clone(),
        placeholders: t.draft.placeholders(),
        create_time: Some(timestamp(t.create_time)),
        update_time: Some(timestamp(t.update_time)),
    }
}

fn rendering_to_pb(rendering: Rendering) -> pb::preview_template_response::Rendering {
    use pb::preview_template_response::Rendering as R;
    match rendering {
        Rendering::Email(email) => R::Email(pb::EmailPreview {
            subject: email.subject,
            text_body: email.text,
            html_body: email.html,
        }),
        Rendering::Sms { body, size } => R::Sms(pb::SmsPreview {
            body,
            encoding: match size.encoding {
                Encoding::Gsm7 => pb::SmsEncoding::Gsm7,
                Encoding::Ucs2 => pb::SmsEncoding::Ucs2,
            }
            .into(),
            character_count: i32::try_from(size.characters).unwrap_or(i32::MAX),
            fragment_count: i32::try_from(size.fragments).unwrap_or(i32::MAX),
        }),
    }
}

pub(crate) fn timestamp(micros: i64) -> prost_types::Timestamp {
    let nanos = i32::try_from(micros.rem_euclid(1_000_000) * 1000).unwrap_or(0);
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos,
    }
}
