//! The notifications service's tables, on SQLite or PostgreSQL. Speaks
//! domain types; every query is scoped by agency.

use atiende_platform::on_db;
use atiende_platform::storage::{Database, Migrations};

use crate::domain::templates::{Channel, Template, TemplateDraft};
use crate::service::NotificationsError;

pub mod queue;

pub const MIGRATIONS: Migrations = Migrations {
    service: "notifications",
    sqlite: &[
        (
            1,
            "service metadata",
            include_str!("../migrations/sqlite/0001_service_metadata.sql"),
        ),
        (
            2,
            "templates",
            include_str!("../migrations/sqlite/0002_templates.sql"),
        ),
        (
            3,
            "notifications",
            include_str!("../migrations/sqlite/0003_notifications.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "service metadata",
            include_str!("../migrations/postgres/0001_service_metadata.sql"),
        ),
        (
            2,
            "templates",
            include_str!("../migrations/postgres/0002_templates.sql"),
        ),
        (
            3,
            "notifications",
            include_str!("../migrations/postgres/0003_notifications.sql"),
        ),
    ],
};

#[derive(sqlx::FromRow)]
struct TemplateRow {
    template_id: String,
    version: i64,
    agency_id: String,
    channel: String,
    name: String,
    description: String,
    subject: String,
    body: String,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<TemplateRow> for Template {
    type Error = NotificationsError;

    fn try_from(row: TemplateRow) -> Result<Self, Self::Error> {
        let corrupt = || NotificationsError::Corrupt("template row");
        Ok(Template {
            template_id: row.template_id,
            version: i32::try_from(row.version).map_err(|_| corrupt())?,
            agency_id: row.agency_id,
            draft: TemplateDraft {
                channel: Channel::parse(&row.channel).ok_or_else(corrupt)?,
                name: row.name,
                description: row.description,
                subject: row.subject,
                body: row.body,
            },
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

/// The INSERT of one template version, bound; executed on a pool or in a
/// transaction of either engine.
macro_rules! insert_template {
    ($t:expr) => {
        sqlx::query(
            "INSERT INTO templates (template_id, version, agency_id, channel, name, description, \
             subject, body, create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&$t.template_id)
        .bind(i64::from($t.version))
        .bind(&$t.agency_id)
        .bind($t.draft.channel.as_str())
        .bind(&$t.draft.name)
        .bind(&$t.draft.description)
        .bind(&$t.draft.subject)
        .bind(&$t.draft.body)
        .bind($t.create_time)
        .bind($t.update_time)
    };
}

/// Inserts one version. A version that already exists is
/// [`NotificationsError::VersionConflict`].
pub async fn insert_template_version(
    db: &Database,
    t: &Template,
) -> Result<(), NotificationsError> {
    let result = on_db!(db, pool => {
        insert_template!(t).execute(pool).await.map(|_| ())
    });
    match result {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
            Err(NotificationsError::VersionConflict)
        }
        Err(e) => Err(e.into()),
    }
}

/// The template at `version`, or its latest version for `None`.
pub async fn get_template(
    db: &Database,
    agency_id: &str,
    template_id: &str,
    version: Option<i32>,
) -> Result<Option<Template>, NotificationsError> {
    let row: Option<TemplateRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT template_id, version, agency_id, channel, name, description, subject, body, \
             create_time, update_time FROM templates \
             WHERE agency_id = $1 AND template_id = $2 AND ($3 IS NULL OR version = $3) \
             ORDER BY version DESC LIMIT 1",
        )
        .bind(agency_id)
        .bind(template_id)
        .bind(version.map(i64::from))
        .fetch_optional(pool)
        .await?
    });
    row.map(Template::try_from).transpose()
}

/// The latest version of each of the agency's templates, newest template
/// first (ids are time-ordered), after the cursor.
pub async fn list_templates(
    db: &Database,
    agency_id: &str,
    channel: Option<Channel>,
    before_template_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Template>, NotificationsError> {
    let rows: Vec<TemplateRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT t.template_id, t.version, t.agency_id, t.channel, t.name, t.description, \
             t.subject, t.body, t.create_time, t.update_time FROM templates t \
             WHERE t.agency_id = $1 \
             AND t.version = (SELECT MAX(v.version) FROM templates v WHERE v.template_id = t.template_id) \
             AND ($2 IS NULL OR t.channel = $2) \
             AND ($3 IS NULL OR t.template_id < $3) \
             ORDER BY t.template_id DESC LIMIT $4",
        )
        .bind(agency_id)
        .bind(channel.map(Channel::as_str))
        .bind(before_template_id)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(Template::try_from).collect()
}

/// What an idempotency key was first used for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub resource_id: String,
}

pub async fn find_idempotency_key(
    db: &Database,
    agency_id: &str,
    operation: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, NotificationsError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT request_hash, resource_id FROM idempotency_keys \
             WHERE agency_id = $1 AND operation = $2 AND idempotency_key = $3",
        )
        .bind(agency_id)
        .bind(operation)
        .bind(key)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

/// Creates version 1 of a template and, when a key is given, records the
/// key in the same transaction. `Ok(false)` when the key was taken
/// meanwhile by a concurrent request (nothing was written).
pub async fn create_template(
    db: &Database,
    template: &Template,
    idempotency: Option<(&str, &str)>,
) -> Result<bool, NotificationsError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        if let Some((key, hash)) = idempotency {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (agency_id, operation, idempotency_key, request_hash, \
                 resource_id, create_time) VALUES ($1, 'CreateTemplate', $2, $3, $4, $5) \
                 ON CONFLICT (agency_id, operation, idempotency_key) DO NOTHING",
            )
            .bind(&template.agency_id)
            .bind(key)
            .bind(hash)
            .bind(&template.template_id)
            .bind(template.create_time)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                return Ok(false);
            }
        }
        insert_template!(template)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(true)
}
