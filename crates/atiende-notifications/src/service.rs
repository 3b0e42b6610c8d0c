//! What the notifications service does, in domain terms. The gRPC adapter
//! parses requests into these calls and renders their results. Every call
//! is scoped to the caller's agency.

use atiende_platform::error::{ApiError, FieldViolation};
use atiende_platform::ids::new_id;
use atiende_platform::paging::{Page, PageSize};
use atiende_platform::storage::{Database, now_micros};
use aws_lc_rs::digest;

use crate::domain::templates::{
    Channel, DraftViolation, TEMPLATE_ID_PREFIX, Template, TemplateDraft,
};
use crate::store;

/// What can go wrong in the notifications service.
#[derive(Debug, thiserror::Error)]
pub enum NotificationsError {
    #[error("template not found")]
    TemplateNotFound,
    #[error("a newer version of the template exists: get it and edit that")]
    VersionConflict,
    #[error("the template has invalid fields")]
    InvalidDraft(Vec<DraftViolation>),
    #[error("the idempotency key was used with a different request")]
    IdempotencyKeyReused,
    #[error("the request has invalid fields")]
    InvalidRequest(Vec<(String, String)>),
    #[error("notification not found")]
    NotificationNotFound,
    #[error("batch not found")]
    BatchNotFound,
    #[error("cannot be cancelled: {0}")]
    NotCancellable(&'static str),
    #[error("rate limit exceeded")]
    RateLimited(std::time::Duration),
    #[error("daily limit reached")]
    DailyLimit(std::time::Duration),
    #[error("the service is unavailable; try again")]
    Unavailable,
    #[error("stored data does not parse: {0}")]
    Corrupt(&'static str),
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<NotificationsError> for ApiError {
    fn from(error: NotificationsError) -> Self {
        match error {
            NotificationsError::TemplateNotFound => ApiError::NotFound("template"),
            NotificationsError::NotificationNotFound => ApiError::NotFound("notification"),
            NotificationsError::BatchNotFound => ApiError::NotFound("batch"),
            NotificationsError::InvalidRequest(violations) => ApiError::InvalidArgument(
                violations
                    .into_iter()
                    .map(|(field, description)| FieldViolation::new(field, description))
                    .collect(),
            ),
            NotificationsError::NotCancellable(_) => {
                ApiError::FailedPrecondition(error.to_string())
            }
            NotificationsError::RateLimited(retry_after)
            | NotificationsError::DailyLimit(retry_after) => {
                ApiError::ResourceExhausted { retry_after }
            }
            NotificationsError::InvalidDraft(violations) => ApiError::InvalidArgument(
                violations
                    .into_iter()
                    .map(|(field, description)| FieldViolation::new(field, description))
                    .collect(),
            ),
            NotificationsError::VersionConflict | NotificationsError::IdempotencyKeyReused => {
                ApiError::FailedPrecondition(error.to_string())
            }
            NotificationsError::Storage(e) => ApiError::from(e),
            NotificationsError::Unavailable => ApiError::Unavailable,
            NotificationsError::Corrupt(_) => ApiError::internal(error),
        }
    }
}

/// The new content of a template, as an update sends it.
pub struct TemplateEdit<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub subject: &'a str,
    pub body: &'a str,
}

pub struct NotificationsService {
    pub(crate) db: Database,
    pub(crate) signals: std::sync::Arc<crate::delivery::Signals>,
    pub(crate) limits: crate::config::LimitsConfig,
    pub(crate) limiter: crate::sending::RateLimiter,
    pub(crate) default_sender_id: String,
    pub(crate) sender_ids: std::collections::HashMap<String, Vec<String>>,
    pub(crate) writer: crate::sending::SendWriter,
    pub(crate) template_cache: crate::sending::TemplateCache,
}

impl NotificationsService {
    /// Creates version 1. With an idempotency key, a replay of the same
    /// request returns the template it created, and the key with another
    /// request is refused.
    pub async fn create_template(
        &self,
        agency_id: &str,
        draft: TemplateDraft,
        idempotency_key: Option<&str>,
    ) -> Result<Template, NotificationsError> {
        let hash = request_hash(&draft);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay(agency_id, key, hash).await?
        {
            return Ok(original);
        }
        let now = now_micros();
        let template = Template {
            template_id: new_id(TEMPLATE_ID_PREFIX),
            version: 1,
            agency_id: agency_id.to_owned(),
            draft,
            create_time: now,
            update_time: now,
        };
        if store::create_template(&self.db, &template, idempotency).await? {
            tracing::info!(template_id = %template.template_id, agency_id, "template created");
            return Ok(template);
        }
        // A concurrent request with the same key won: answer as a replay.
        let (key, hash) = idempotency.ok_or(NotificationsError::Corrupt("idempotency"))?;
        self.replay(agency_id, key, hash)
            .await?
            .ok_or(NotificationsError::Corrupt("idempotency record"))
    }

    async fn replay(
        &self,
        agency_id: &str,
        key: &str,
        hash: &str,
    ) -> Result<Option<Template>, NotificationsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, agency_id, "CreateTemplate", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(NotificationsError::IdempotencyKeyReused);
        }
        store::get_template(&self.db, agency_id, &record.resource_id, Some(1)).await
    }

    /// Adds the next version, edited from `from_version`, which must be the
    /// latest. The channel stays the template's. Unchanged content returns
    /// the latest version as it is.
    pub async fn update_template(
        &self,
        agency_id: &str,
        template_id: &str,
        from_version: i32,
        edit: TemplateEdit<'_>,
    ) -> Result<Template, NotificationsError> {
        let latest = self.get_template(agency_id, template_id, None).await?;
        let draft = TemplateDraft::parse(
            latest.draft.channel,
            edit.name,
            edit.description,
            edit.subject,
            edit.body,
        )
        .map_err(NotificationsError::InvalidDraft)?;
        if latest.version != from_version {
            return Err(NotificationsError::VersionConflict);
        }
        if latest.draft == draft {
            return Ok(latest);
        }
        let next = Template {
            version: latest
                .version
                .checked_add(1)
                .ok_or(NotificationsError::VersionConflict)?,
            draft,
            update_time: now_micros(),
            ..latest
        };
        // Two updates from the same version: the primary key lets one win.
        store::insert_template_version(&self.db, &next).await?;
        self.template_cache.forget_latest(agency_id, template_id);
        tracing::info!(template_id, version = next.version, "template updated");
        Ok(next)
    }

    pub async fn get_template(
        &self,
        agency_id: &str,
        template_id: &str,
        version: Option<i32>,
    ) -> Result<Template, NotificationsError> {
        store::get_template(&self.db, agency_id, template_id, version)
            .await?
            .ok_or(NotificationsError::TemplateNotFound)
    }

    pub async fn list_templates(
        &self,
        agency_id: &str,
        channel: Option<Channel>,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Template>, NotificationsError> {
        let items = store::list_templates(
            &self.db,
            agency_id,
            channel,
            cursor,
            page_size.fetch_limit(),
        )
        .await?;
        Ok(Page::from_overfetch(items, page_size, |t| {
            t.template_id.clone()
        }))
    }
}

/// A digest of what a create request asks for, to tell a replay from a
/// reuse of its idempotency key.
fn request_hash(draft: &TemplateDraft) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in [
        draft.channel.as_str(),
        &draft.name,
        &draft.description,
        &draft.subject,
        &draft.body,
    ] {
        ctx.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        ctx.update(part.as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
