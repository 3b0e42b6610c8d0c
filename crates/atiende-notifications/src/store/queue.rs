//! Notifications, their queue, events, batches and callbacks.

use atiende_platform::auth::Environment;
use atiende_platform::ids::new_id;
use atiende_platform::on_db;
use atiende_platform::storage::Database;
use sqlx::AssertSqlSafe;

use crate::domain::notifications::{
    EVENT_ID_PREFIX, Event, Fallback, NOTIFICATION_ID_PREFIX, Notification, Status,
};
use crate::domain::templates::Channel;
use crate::service::NotificationsError;

const COLUMNS: &str = "notification_id, agency_id, environment, channel, status, template_id, \
    template_version, recipient, reference, batch_id, subject, body, html_body, fragment_count, \
    email_reply_to, unsubscribe_url, sender_id, fallback_template_id, fallback_template_version, \
    fallback_recipient, fallback_body, fallback_fragment_count, fallback_notification_id, \
    fallback_for_notification_id, provider_reference, attempts, create_time, \
    scheduled_time, send_time, complete_time, cancel_time, update_time";

#[derive(sqlx::FromRow)]
struct NotificationRow {
    notification_id: String,
    agency_id: String,
    environment: String,
    channel: String,
    status: String,
    template_id: String,
    template_version: i64,
    recipient: String,
    reference: String,
    batch_id: Option<String>,
    subject: String,
    body: String,
    html_body: String,
    fragment_count: i64,
    email_reply_to: String,
    unsubscribe_url: String,
    sender_id: String,
    fallback_template_id: Option<String>,
    fallback_template_version: Option<i64>,
    fallback_recipient: Option<String>,
    fallback_body: Option<String>,
    fallback_fragment_count: Option<i64>,
    fallback_notification_id: Option<String>,
    fallback_for_notification_id: Option<String>,
    provider_reference: Option<String>,
    attempts: i64,
    create_time: i64,
    scheduled_time: Option<i64>,
    send_time: Option<i64>,
    complete_time: Option<i64>,
    cancel_time: Option<i64>,
    update_time: i64,
}

/// A notification claimed for delivery: `attempt` fences its result.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub notification: Notification,
    pub attempt: i64,
    /// Set when a provider accepted an earlier attempt and a receipt is
    /// awaited: the claim means the receipt never came.
    pub provider_reference: Option<String>,
}

impl NotificationRow {
    fn into_claimed(self) -> Result<Claimed, NotificationsError> {
        let attempt = self.attempts;
        let provider_reference = self.provider_reference.clone();
        Ok(Claimed {
            notification: self.into_domain()?,
            attempt,
            provider_reference,
        })
    }

    fn into_domain(self) -> Result<Notification, NotificationsError> {
        let corrupt = || NotificationsError::Corrupt("notification row");
        let int = |v: i64| i32::try_from(v).map_err(|_| corrupt());
        let fallback = match (
            self.fallback_template_id,
            self.fallback_template_version,
            self.fallback_recipient,
            self.fallback_body,
            self.fallback_fragment_count,
        ) {
            (Some(template_id), Some(version), Some(phone_number), Some(body), Some(fragments)) => {
                Some(Fallback {
                    template_id,
                    template_version: int(version)?,
                    phone_number,
                    body,
                    fragment_count: int(fragments)?,
                })
            }
            _ => None,
        };
        Ok(Notification {
            notification_id: self.notification_id,
            agency_id: self.agency_id,
            environment: Environment::parse(&self.environment).ok_or_else(corrupt)?,
            channel: Channel::parse(&self.channel).ok_or_else(corrupt)?,
            status: Status::parse(&self.status).ok_or_else(corrupt)?,
            template_id: self.template_id,
            template_version: int(self.template_version)?,
            recipient: self.recipient,
            reference: self.reference,
            batch_id: self.batch_id,
            subject: self.subject,
            body: self.body,
            html_body: self.html_body,
            fragment_count: int(self.fragment_count)?,
            email_reply_to: self.email_reply_to,
            unsubscribe_url: self.unsubscribe_url,
            sender_id: self.sender_id,
            fallback,
            fallback_notification_id: self.fallback_notification_id,
            fallback_for_notification_id: self.fallback_for_notification_id,
            create_time: self.create_time,
            scheduled_time: self.scheduled_time,
            send_time: self.send_time,
            complete_time: self.complete_time,
            cancel_time: self.cancel_time,
            update_time: self.update_time,
        })
    }
}

/// Inserts rows of notifications (all `created`), with one event each.
macro_rules! insert_notifications {
    ($tx:expr, $items:expr) => {{
        for chunk in $items.chunks(500) {
            InsertNotifications::insert_notifications(&mut *$tx, chunk).await?;
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO notification_events (event_id, notification_id, agency_id, \
                 environment, status, occur_time) ",
            );
            qb.push_values(chunk, |mut b, n: &Notification| {
                b.push_bind(new_id(EVENT_ID_PREFIX))
                    .push_bind(&n.notification_id)
                    .push_bind(&n.agency_id)
                    .push_bind(n.environment.as_str())
                    .push_bind(n.status.as_str())
                    .push_bind(n.create_time);
            });
            qb.build().execute(&mut *$tx).await?;
        }
    }};
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Bulk inserts of notification rows, per engine.
trait InsertNotifications {
    fn insert_notifications<'a>(
        &'a mut self,
        items: &'a [Notification],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

/// PostgreSQL: one statement of arrays (`UNNEST`), the same text for any
/// number of rows, so it is prepared once per connection; a multi-row
/// VALUES list would be a new statement, parsed and planned, for every
/// group size (measured at ~1 ms a row against ~50 µs).
impl InsertNotifications for sqlx::PgConnection {
    fn insert_notifications<'a>(
        &'a mut self,
        items: &'a [Notification],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let text = |f: &dyn Fn(&Notification) -> String| -> Vec<String> {
                items.iter().map(f).collect()
            };
            let opt_text = |f: &dyn Fn(&Notification) -> Option<String>| -> Vec<Option<String>> {
                items.iter().map(f).collect()
            };
            let int =
                |f: &dyn Fn(&Notification) -> i64| -> Vec<i64> { items.iter().map(f).collect() };
            let opt_int = |f: &dyn Fn(&Notification) -> Option<i64>| -> Vec<Option<i64>> {
                items.iter().map(f).collect()
            };
            let fb = |n: &Notification| n.fallback.clone();
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO notifications ({COLUMNS}, due_time) SELECT * FROM UNNEST(\
                 $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::bigint[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
                 $13::text[], $14::bigint[], $15::text[], $16::text[], $17::text[], $18::text[], \
                 $19::bigint[], $20::text[], $21::text[], $22::bigint[], $23::text[], $24::text[], \
                 $25::text[], $26::bigint[], $27::bigint[], $28::bigint[], $29::bigint[], \
                 $30::bigint[], $31::bigint[], $32::bigint[], $33::bigint[])"
            )))
            .bind(text(&|n| n.notification_id.clone()))
            .bind(text(&|n| n.agency_id.clone()))
            .bind(text(&|n| n.environment.as_str().to_owned()))
            .bind(text(&|n| n.channel.as_str().to_owned()))
            .bind(text(&|n| n.status.as_str().to_owned()))
            .bind(text(&|n| n.template_id.clone()))
            .bind(int(&|n| i64::from(n.template_version)))
            .bind(text(&|n| n.recipient.clone()))
            .bind(text(&|n| n.reference.clone()))
            .bind(opt_text(&|n| n.batch_id.clone()))
            .bind(text(&|n| n.subject.clone()))
            .bind(text(&|n| n.body.clone()))
            .bind(text(&|n| n.html_body.clone()))
            .bind(int(&|n| i64::from(n.fragment_count)))
            .bind(text(&|n| n.email_reply_to.clone()))
            .bind(text(&|n| n.unsubscribe_url.clone()))
            .bind(text(&|n| n.sender_id.clone()))
            .bind(opt_text(&|n| fb(n).map(|f| f.template_id)))
            .bind(opt_int(&|n| fb(n).map(|f| i64::from(f.template_version))))
            .bind(opt_text(&|n| fb(n).map(|f| f.phone_number)))
            .bind(opt_text(&|n| fb(n).map(|f| f.body)))
            .bind(opt_int(&|n| fb(n).map(|f| i64::from(f.fragment_count))))
            .bind(opt_text(&|n| n.fallback_notification_id.clone()))
            .bind(opt_text(&|n| n.fallback_for_notification_id.clone()))
            .bind(opt_text(&|_| None))
            .bind(int(&|_| 0))
            .bind(int(&|n| n.create_time))
            .bind(opt_int(&|n| n.scheduled_time))
            .bind(opt_int(&|n| n.send_time))
            .bind(opt_int(&|n| n.complete_time))
            .bind(opt_int(&|n| n.cancel_time))
            .bind(int(&|n| n.update_time))
            .bind(opt_int(&|n| {
                Some(n.scheduled_time.unwrap_or(n.create_time))
            }))
            .execute(&mut *self)
            .await
            .map(|_| ())
        })
    }
}

/// SQLite: a multi-row VALUES list (statements are cheap to prepare there).
impl InsertNotifications for sqlx::SqliteConnection {
    fn insert_notifications<'a>(
        &'a mut self,
        items: &'a [Notification],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let mut qb = sqlx::QueryBuilder::new(format!(
                "INSERT INTO notifications ({COLUMNS}, due_time) "
            ));
            qb.push_values(items, |mut b, n: &Notification| {
                let fb = n.fallback.as_ref();
                b.push_bind(&n.notification_id)
                    .push_bind(&n.agency_id)
                    .push_bind(n.environment.as_str())
                    .push_bind(n.channel.as_str())
                    .push_bind(n.status.as_str())
                    .push_bind(&n.template_id)
                    .push_bind(i64::from(n.template_version))
                    .push_bind(&n.recipient)
                    .push_bind(&n.reference)
                    .push_bind(&n.batch_id)
                    .push_bind(&n.subject)
                    .push_bind(&n.body)
                    .push_bind(&n.html_body)
                    .push_bind(i64::from(n.fragment_count))
                    .push_bind(&n.email_reply_to)
                    .push_bind(&n.unsubscribe_url)
                    .push_bind(&n.sender_id)
                    .push_bind(fb.map(|f| f.template_id.clone()))
                    .push_bind(fb.map(|f| i64::from(f.template_version)))
                    .push_bind(fb.map(|f| f.phone_number.clone()))
                    .push_bind(fb.map(|f| f.body.clone()))
                    .push_bind(fb.map(|f| i64::from(f.fragment_count)))
                    .push_bind(&n.fallback_notification_id)
                    .push_bind(&n.fallback_for_notification_id)
                    .push_bind(None::<String>)
                    .push_bind(0_i64)
                    .push_bind(n.create_time)
                    .push_bind(n.scheduled_time)
                    .push_bind(n.send_time)
                    .push_bind(n.complete_time)
                    .push_bind(n.cancel_time)
                    .push_bind(n.update_time)
                    .push_bind(Some(n.scheduled_time.unwrap_or(n.create_time)));
            });
            qb.build().execute(&mut *self).await.map(|_| ())
        })
    }
}

/// Records one status change as an event, and as a callback to make when
/// the status is final and the agency has a callback.
macro_rules! record_event {
    ($tx:expr, $id:expr, $agency:expr, $env:expr, $status:expr, $now:expr) => {{
        let event_id = new_id(EVENT_ID_PREFIX);
        sqlx::query(
            "INSERT INTO notification_events (event_id, notification_id, agency_id, environment, \
             status, occur_time) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&event_id)
        .bind($id)
        .bind($agency)
        .bind($env)
        .bind($status.as_str())
        .bind($now)
        .execute(&mut *$tx)
        .await?;
        // Cancellations are the agency's own doing: no callback.
        if $status.is_final() && $status != Status::Cancelled {
            sqlx::query(
                "INSERT INTO callback_deliveries (event_id, agency_id, environment, \
                 notification_id, status, occur_time, due_time) \
                 SELECT $1, agency_id, environment, $2, $3, $4, $4 FROM delivery_callbacks \
                 WHERE agency_id = $5 AND environment = $6",
            )
            .bind(&event_id)
            .bind($id)
            .bind($status.as_str())
            .bind($now)
            .bind($agency)
            .bind($env)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// What a send commits besides its notifications.
pub struct SendRecord<'a> {
    /// (operation, key, request hash, resource id)
    pub idempotency: Option<(&'a str, &'a str, &'a str, &'a str)>,
    pub batch: Option<&'a BatchRow>,
    /// (channel, UTC day, daily limit): counted, refused over the limit.
    pub daily_limit: Option<(Channel, i64, i64)>,
}

/// Why a send was not stored.
pub enum SendRefused {
    /// A concurrent request took the idempotency key.
    KeyTaken,
    DailyLimit,
}

/// Commits new notifications (with their events, batch, idempotency key and
/// daily count) in one transaction.
pub async fn insert_send(
    db: &Database,
    items: &[Notification],
    record: SendRecord<'_>,
) -> Result<Result<(), SendRefused>, NotificationsError> {
    let Some(first) = items.first() else {
        return Ok(Ok(()));
    };
    let count = i64::try_from(items.len()).unwrap_or(i64::MAX);
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        if let Some((operation, key, hash, resource)) = record.idempotency {
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (agency_id, operation, idempotency_key, request_hash, \
                 resource_id, create_time) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (agency_id, operation, idempotency_key) DO NOTHING",
            )
            .bind(&first.agency_id)
            .bind(operation)
            .bind(key)
            .bind(hash)
            .bind(resource)
            .bind(first.create_time)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if claimed == 0 {
                return Ok(Err(SendRefused::KeyTaken));
            }
        }
        if let Some((channel, day, limit)) = record.daily_limit {
            let sent: i64 = sqlx::query_scalar(
                "INSERT INTO daily_usage (agency_id, environment, channel, day, sent) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agency_id, environment, channel, day) \
                 DO UPDATE SET sent = daily_usage.sent + excluded.sent RETURNING sent",
            )
            .bind(&first.agency_id)
            .bind(first.environment.as_str())
            .bind(channel.as_str())
            .bind(day)
            .bind(count)
            .fetch_one(&mut *tx)
            .await?;
            if sent > limit {
                return Ok(Err(SendRefused::DailyLimit));
            }
        }
        if let Some(b) = record.batch {
            sqlx::query(
                "INSERT INTO batches (batch_id, agency_id, environment, channel, template_id, \
                 template_version, recipient_count, create_time, scheduled_time, cancel_time) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL)",
            )
            .bind(&b.batch_id)
            .bind(&b.agency_id)
            .bind(&b.environment)
            .bind(&b.channel)
            .bind(&b.template_id)
            .bind(b.template_version)
            .bind(b.recipient_count)
            .bind(b.create_time)
            .bind(b.scheduled_time)
            .execute(&mut *tx)
            .await?;
        }
        insert_notifications!(tx, items);
        tx.commit().await?;
    });
    Ok(Ok(()))
}

/// One single send of a group commit.
pub struct SingleSend<'a> {
    pub notification: &'a Notification,
    /// (operation, key, request hash)
    pub idempotency: Option<(&'a str, &'a str, &'a str)>,
    /// (UTC day, daily limit)
    pub daily_limit: Option<(i64, i64)>,
}

/// Commits many single sends in one transaction (group commit): each gets
/// its own answer, as if it had been committed alone. A send whose key is
/// taken (earlier, or by another send of the group) or that would pass its
/// daily limit is left out.
pub async fn insert_singles(
    db: &Database,
    sends: &[SingleSend<'_>],
) -> Result<Vec<Result<(), SendRefused>>, NotificationsError> {
    let mut outcomes: Vec<Result<(), SendRefused>> = sends.iter().map(|_| Ok(())).collect();
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        // Idempotency keys: claim them all; a key not returned was taken.
        let keyed: Vec<usize> = (0..sends.len())
            .filter(|&i| sends[i].idempotency.is_some())
            .collect();
        if !keyed.is_empty() {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO idempotency_keys (agency_id, operation, idempotency_key, \
                 request_hash, resource_id, create_time) ",
            );
            qb.push_values(&keyed, |mut b, &i| {
                let s = &sends[i];
                let (operation, key, hash) = s.idempotency.unwrap_or_default();
                b.push_bind(&s.notification.agency_id)
                    .push_bind(operation)
                    .push_bind(key)
                    .push_bind(hash)
                    .push_bind(&s.notification.notification_id)
                    .push_bind(s.notification.create_time);
            });
            qb.push(
                " ON CONFLICT (agency_id, operation, idempotency_key) DO NOTHING \
                 RETURNING resource_id",
            );
            let claimed: std::collections::HashSet<String> = qb
                .build_query_scalar::<String>()
                .fetch_all(&mut *tx)
                .await?
                .into_iter()
                .collect();
            for &i in &keyed {
                if !claimed.contains(&sends[i].notification.notification_id) {
                    outcomes[i] = Err(SendRefused::KeyTaken);
                }
            }
        }
        // Daily limits: one count per agency, environment, channel and day;
        // the sends past the limit are refused and uncounted.
        let mut groups: std::collections::BTreeMap<(&str, &str, &str, i64, i64), Vec<usize>> =
            std::collections::BTreeMap::new();
        for (i, s) in sends.iter().enumerate() {
            if let (Some((day, limit)), Ok(())) = (s.daily_limit, &outcomes[i]) {
                let n = s.notification;
                groups
                    .entry((&n.agency_id, n.environment.as_str(), n.channel.as_str(), day, limit))
                    .or_default()
                    .push(i);
            }
        }
        for ((agency, environment, channel, day, limit), members) in groups {
            let count = i64::try_from(members.len()).unwrap_or(i64::MAX);
            let sent: i64 = sqlx::query_scalar(
                "INSERT INTO daily_usage (agency_id, environment, channel, day, sent) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agency_id, environment, channel, day) \
                 DO UPDATE SET sent = daily_usage.sent + excluded.sent RETURNING sent",
            )
            .bind(agency)
            .bind(environment)
            .bind(channel)
            .bind(day)
            .bind(count)
            .fetch_one(&mut *tx)
            .await?;
            let before = sent - count;
            let allowed = usize::try_from((limit - before).clamp(0, count)).unwrap_or(0);
            let refused = members.len() - allowed;
            if refused > 0 {
                for &i in &members[allowed..] {
                    outcomes[i] = Err(SendRefused::DailyLimit);
                    // A refused send leaves no key behind: a retry tomorrow
                    // is a new send, not a replay of nothing.
                    if let Some((operation, key, _)) = sends[i].idempotency {
                        sqlx::query(
                            "DELETE FROM idempotency_keys WHERE agency_id = $1 \
                             AND operation = $2 AND idempotency_key = $3 AND resource_id = $4",
                        )
                        .bind(&sends[i].notification.agency_id)
                        .bind(operation)
                        .bind(key)
                        .bind(&sends[i].notification.notification_id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                sqlx::query(
                    "UPDATE daily_usage SET sent = sent - $1 WHERE agency_id = $2 \
                     AND environment = $3 AND channel = $4 AND day = $5",
                )
                .bind(i64::try_from(refused).unwrap_or(0))
                .bind(agency)
                .bind(environment)
                .bind(channel)
                .bind(day)
                .execute(&mut *tx)
                .await?;
            }
        }
        let stored: Vec<Notification> = sends
            .iter()
            .zip(&outcomes)
            .filter(|(_, outcome)| outcome.is_ok())
            .map(|(s, _)| s.notification.clone())
            .collect();
        if !stored.is_empty() {
            insert_notifications!(tx, &stored);
        }
        tx.commit().await?;
    });
    Ok(outcomes)
}

pub async fn get_notification(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    notification_id: &str,
) -> Result<Option<Notification>, NotificationsError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications \
         WHERE notification_id = $1 AND agency_id = $2 AND environment = $3"
    );
    let row: Option<NotificationRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(notification_id)
            .bind(agency_id)
            .bind(environment.as_str())
            .fetch_optional(pool)
            .await?
    });
    row.map(NotificationRow::into_domain).transpose()
}

/// Filters of a notification listing; `None` matches everything.
#[derive(Debug, Default, Clone)]
pub struct NotificationFilter {
    pub statuses: Vec<Status>,
    pub channel: Option<Channel>,
    pub template_id: Option<String>,
    pub reference: Option<String>,
    pub batch_id: Option<String>,
    pub created_from: Option<i64>,
    pub created_to: Option<i64>,
}

pub async fn list_notifications(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    filter: &NotificationFilter,
    before_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Notification>, NotificationsError> {
    // Status names are fixed strings from the domain, never input.
    let statuses = if filter.statuses.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = filter
            .statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        format!("AND status IN ({}) ", names.join(", "))
    };
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications \
         WHERE agency_id = $1 AND environment = $2 {statuses}\
         AND ($3 IS NULL OR channel = $3) AND ($4 IS NULL OR template_id = $4) \
         AND ($5 IS NULL OR reference = $5) AND ($6 IS NULL OR batch_id = $6) \
         AND ($7 IS NULL OR create_time >= $7) AND ($8 IS NULL OR create_time < $8) \
         AND ($9 IS NULL OR notification_id < $9) \
         ORDER BY notification_id DESC LIMIT $10"
    );
    let rows: Vec<NotificationRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(agency_id)
            .bind(environment.as_str())
            .bind(filter.channel.map(Channel::as_str))
            .bind(&filter.template_id)
            .bind(&filter.reference)
            .bind(&filter.batch_id)
            .bind(filter.created_from)
            .bind(filter.created_to)
            .bind(before_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(NotificationRow::into_domain).collect()
}

/// Cancels a notification still waiting for its scheduled time. `false`
/// when it is not in that state (or not the agency's).
pub async fn cancel_notification(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    notification_id: &str,
    now: i64,
) -> Result<bool, NotificationsError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE notifications SET status = 'cancelled', due_time = NULL, cancel_time = $4, \
             complete_time = $4, update_time = $4 \
             WHERE notification_id = $1 AND agency_id = $2 AND environment = $3 \
             AND status = 'created' AND scheduled_time > $4",
        )
        .bind(notification_id)
        .bind(agency_id)
        .bind(environment.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        record_event!(tx, notification_id, agency_id, environment.as_str(), Status::Cancelled, now);
        tx.commit().await?;
    });
    Ok(true)
}

/// Claims up to `limit` notifications that are due, for `lease_micros`.
/// On PostgreSQL, concurrent claimants skip each other's rows (`FOR UPDATE
/// SKIP LOCKED`); SQLite runs one writer at a time, so the single UPDATE
/// statement is the claim.
pub async fn claim_due(
    db: &Database,
    now: i64,
    lease_micros: i64,
    limit: i64,
) -> Result<Vec<Claimed>, NotificationsError> {
    let lock = match db {
        Database::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        Database::Sqlite(_) => "",
    };
    let sql = format!(
        "UPDATE notifications SET status = 'sending', attempts = attempts + 1, \
         due_time = $1 + $2, send_time = COALESCE(send_time, $1), update_time = $1 \
         WHERE notification_id IN (SELECT notification_id FROM notifications \
         WHERE due_time IS NOT NULL AND due_time <= $1 ORDER BY due_time LIMIT $3 {lock}) \
         RETURNING {COLUMNS}"
    );
    let rows: Vec<NotificationRow> = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let rows: Vec<NotificationRow> = sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(now)
            .bind(lease_micros)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        // A first attempt is the CREATED -> SENDING change.
        let first: Vec<&NotificationRow> = rows.iter().filter(|r| r.attempts == 1).collect();
        if !first.is_empty() {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO notification_events (event_id, notification_id, agency_id, \
                 environment, status, occur_time) ",
            );
            qb.push_values(first, |mut b, r| {
                b.push_bind(new_id(EVENT_ID_PREFIX))
                    .push_bind(&r.notification_id)
                    .push_bind(&r.agency_id)
                    .push_bind(&r.environment)
                    .push_bind(Status::Sending.as_str())
                    .push_bind(now);
            });
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        rows
    });
    rows.into_iter()
        .map(NotificationRow::into_claimed)
        .collect()
}

/// Ends a claimed attempt with a final status; with an SMS fallback when
/// the email failed so. `false` if the attempt was no longer current.
pub async fn finish(
    db: &Database,
    claimed: &Claimed,
    status: Status,
    detail: &str,
    now: i64,
) -> Result<bool, NotificationsError> {
    let item = Finish {
        claimed,
        status,
        detail,
    };
    let current = finish_many(db, std::slice::from_ref(&item), now).await?;
    Ok(current.first().copied().unwrap_or(false))
}

/// One attempt's end, for [`finish_many`].
pub struct Finish<'a> {
    pub claimed: &'a Claimed,
    pub status: Status,
    pub detail: &'a str,
}

/// Ends many claimed attempts in one transaction:
/// one bulk UPDATE, one INSERT of events, one of callbacks, and the SMS
/// fallbacks due. Returns, per item, whether its attempt was still current.
pub async fn finish_many(
    db: &Database,
    items: &[Finish<'_>],
    now: i64,
) -> Result<Vec<bool>, NotificationsError> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let fallback_ids: Vec<Option<String>> = items
        .iter()
        .map(|f| {
            (f.claimed.notification.fallback.is_some() && f.status.triggers_fallback())
                .then(|| new_id(NOTIFICATION_ID_PREFIX))
        })
        .collect();
    let current: Vec<bool> = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let mut qb = sqlx::QueryBuilder::new("UPDATE notifications SET status = v.column3, due_time = NULL, complete_time = ");
        qb.push_bind(now)
            .push(", update_time = ")
            .push_bind(now)
            .push(", failure_detail = v.column4, fallback_notification_id = v.column5 FROM (");
        qb.push_values(items.iter().zip(&fallback_ids), |mut b, (f, fallback_id)| {
            b.push_bind(&f.claimed.notification.notification_id)
                .push("CAST(")
                .push_bind_unseparated(f.claimed.attempt)
                .push_unseparated(" AS BIGINT)")
                .push_bind(f.status.as_str())
                .push_bind(f.detail)
                .push_bind(fallback_id);
        });
        qb.push(
            ") AS v WHERE notifications.notification_id = v.column1 \
             AND notifications.attempts = v.column2 AND notifications.status = 'sending' \
             RETURNING notifications.notification_id, notifications.attempts",
        );
        // An item is current only if its own attempt was updated: a stale
        // attempt of the same notification in the group is not.
        let updated: std::collections::HashSet<(String, i64)> = qb
            .build_query_as::<(String, i64)>()
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let current = |f: &Finish<'_>| {
            updated.contains(&(f.claimed.notification.notification_id.clone(), f.claimed.attempt))
        };
        let done: Vec<(&Finish<'_>, &Option<String>, String)> = items
            .iter()
            .zip(&fallback_ids)
            .filter(|(f, _)| current(f))
            .map(|(f, id)| (f, id, new_id(EVENT_ID_PREFIX)))
            .collect();
        if !done.is_empty() {
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO notification_events (event_id, notification_id, agency_id, \
                 environment, status, occur_time) ",
            );
            qb.push_values(&done, |mut b, (f, _, event_id)| {
                let n = &f.claimed.notification;
                b.push_bind(event_id)
                    .push_bind(&n.notification_id)
                    .push_bind(&n.agency_id)
                    .push_bind(n.environment.as_str())
                    .push_bind(f.status.as_str())
                    .push_bind(now);
            });
            qb.build().execute(&mut *tx).await?;
            // A callback for each final status of an agency that has one.
            let mut qb = sqlx::QueryBuilder::new(
                "INSERT INTO callback_deliveries (event_id, agency_id, environment, \
                 notification_id, status, occur_time, due_time) \
                 SELECT v.column1, v.column2, v.column3, v.column4, v.column5, ",
            );
            qb.push_bind(now).push(", ").push_bind(now).push(" FROM (");
            qb.push_values(&done, |mut b, (f, _, event_id)| {
                let n = &f.claimed.notification;
                b.push_bind(event_id)
                    .push_bind(&n.agency_id)
                    .push_bind(n.environment.as_str())
                    .push_bind(&n.notification_id)
                    .push_bind(f.status.as_str());
            });
            qb.push(
                ") AS v JOIN delivery_callbacks c \
                 ON c.agency_id = v.column2 AND c.environment = v.column3",
            );
            qb.build().execute(&mut *tx).await?;
            let fallbacks: Vec<Notification> = done
                .iter()
                .filter_map(|(f, id, _)| {
                    let id = (*id).clone()?;
                    let n = &f.claimed.notification;
                    let fb = n.fallback.as_ref()?;
                    Some(fallback_sms(n, fb, id, now))
                })
                .collect();
            if !fallbacks.is_empty() {
                insert_notifications!(tx, &fallbacks);
            }
        }
        let current: Vec<bool> = items.iter().map(current).collect();
        tx.commit().await?;
        current
    });
    Ok(current)
}

/// The SMS notification an email's fallback becomes.
fn fallback_sms(email: &Notification, fb: &Fallback, id: String, now: i64) -> Notification {
    Notification {
        notification_id: id,
        channel: Channel::Sms,
        status: Status::Created,
        template_id: fb.template_id.clone(),
        template_version: fb.template_version,
        recipient: fb.phone_number.clone(),
        subject: String::new(),
        body: fb.body.clone(),
        html_body: String::new(),
        fragment_count: fb.fragment_count,
        email_reply_to: String::new(),
        unsubscribe_url: String::new(),
        fallback: None,
        fallback_notification_id: None,
        fallback_for_notification_id: Some(email.notification_id.clone()),
        batch_id: None,
        create_time: now,
        scheduled_time: None,
        send_time: None,
        complete_time: None,
        cancel_time: None,
        update_time: now,
        ..email.clone()
    }
}

/// Puts a claimed attempt back in the queue, due at `due_time`.
pub async fn retry_later(
    db: &Database,
    claimed: &Claimed,
    detail: &str,
    due_time: i64,
    now: i64,
) -> Result<bool, NotificationsError> {
    let changed = on_db!(db, pool => {
        sqlx::query(
            "UPDATE notifications SET due_time = $1, update_time = $2, failure_detail = $3 \
             WHERE notification_id = $4 AND attempts = $5 AND status = 'sending'",
        )
        .bind(due_time)
        .bind(now)
        .bind(detail)
        .bind(&claimed.notification.notification_id)
        .bind(claimed.attempt)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(changed == 1)
}

/// Records that a provider accepted an SMS and a receipt is awaited until
/// `receipt_deadline` (then the notification is claimed again and ends).
pub async fn await_receipt(
    db: &Database,
    claimed: &Claimed,
    provider: &str,
    reference: &str,
    receipt_deadline: i64,
    now: i64,
) -> Result<bool, NotificationsError> {
    let changed = on_db!(db, pool => {
        sqlx::query(
            "UPDATE notifications SET due_time = $1, update_time = $2, provider = $3, \
             provider_reference = $4 \
             WHERE notification_id = $5 AND attempts = $6 AND status = 'sending'",
        )
        .bind(receipt_deadline)
        .bind(now)
        .bind(provider)
        .bind(reference)
        .bind(&claimed.notification.notification_id)
        .bind(claimed.attempt)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(changed == 1)
}

/// The notification a provider's receipt is about, claimed as its current
/// attempt (so [`finish`] applies).
pub async fn find_by_provider_reference(
    db: &Database,
    provider: &str,
    reference: &str,
) -> Result<Option<Claimed>, NotificationsError> {
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE provider = $1 AND provider_reference = $2"
    );
    let row: Option<NotificationRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(provider)
            .bind(reference)
            .fetch_optional(pool)
            .await?
    });
    row.map(NotificationRow::into_claimed).transpose()
}

/// Events of the agency's environment after the cursor `(tx, seq)`, in
/// recording order, with their notifications as they are now. On PostgreSQL
/// only events of transactions older than every running transaction are
/// read, so none can appear later behind the cursor.
pub async fn events_after(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    after: (i64, i64),
    limit: i64,
) -> Result<Vec<((i64, i64), Event)>, NotificationsError> {
    let horizon = match db {
        Database::Postgres(_) => "AND e.tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        Database::Sqlite(_) => "",
    };
    let columns: String = COLUMNS
        .split(", ")
        .map(|c| format!("n.{}", c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "SELECT e.tx AS event_tx, e.seq AS event_seq, e.event_id AS event_id, \
         e.status AS event_status, e.occur_time AS event_time, {columns} \
         FROM notification_events e JOIN notifications n ON n.notification_id = e.notification_id \
         WHERE e.agency_id = $1 AND e.environment = $2 \
         AND (e.tx > $3 OR (e.tx = $3 AND e.seq > $4)) {horizon} \
         ORDER BY e.tx, e.seq LIMIT $5"
    );
    let rows: Vec<EventRow> = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(agency_id)
            .bind(environment.as_str())
            .bind(after.0)
            .bind(after.1)
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    rows.into_iter()
        .map(|r| {
            let status = Status::parse(&r.event_status)
                .ok_or(NotificationsError::Corrupt("event status"))?;
            Ok((
                (r.event_tx, r.event_seq),
                Event {
                    seq: r.event_seq,
                    event_id: r.event_id,
                    status,
                    occur_time: r.event_time,
                    notification: r.notification.into_domain()?,
                },
            ))
        })
        .collect()
}

/// The position after which only new events follow.
pub async fn events_head(db: &Database) -> Result<(i64, i64), NotificationsError> {
    let head: Option<(i64, i64)> = match db {
        // Just below every running transaction: events they commit later
        // are still ahead of the stream (a few older ones may repeat).
        Database::Postgres(pool) => {
            let xmin: i64 =
                sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
                    .fetch_one(pool)
                    .await?;
            Some((xmin - 1, i64::MAX))
        }
        Database::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT tx, seq FROM notification_events ORDER BY tx DESC, seq DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
        }
    };
    Ok(head.unwrap_or((0, 0)))
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_tx: i64,
    event_seq: i64,
    event_id: String,
    event_status: String,
    event_time: i64,
    #[sqlx(flatten)]
    notification: NotificationRow,
}

/// A batch as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BatchRow {
    pub batch_id: String,
    pub agency_id: String,
    pub environment: String,
    pub channel: String,
    pub template_id: String,
    pub template_version: i64,
    pub recipient_count: i64,
    pub create_time: i64,
    pub scheduled_time: Option<i64>,
    pub cancel_time: Option<i64>,
}

/// A batch with how many of its notifications are in each status, and
/// when the last one ended.
pub async fn get_batch(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    batch_id: &str,
) -> Result<Option<(BatchRow, Vec<(Status, i64)>, Option<i64>)>, NotificationsError> {
    let (batch, counts, last): (Option<BatchRow>, Vec<(String, i64)>, Option<i64>) = on_db!(db, pool => {
        let batch: Option<BatchRow> = sqlx::query_as(
            "SELECT batch_id, agency_id, environment, channel, template_id, template_version, \
             recipient_count, create_time, scheduled_time, cancel_time FROM batches \
             WHERE batch_id = $1 AND agency_id = $2 AND environment = $3",
        )
        .bind(batch_id)
        .bind(agency_id)
        .bind(environment.as_str())
        .fetch_optional(pool)
        .await?;
        if batch.is_none() {
            return Ok(None);
        }
        let counts: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM notifications WHERE batch_id = $1 GROUP BY status",
        )
        .bind(batch_id)
        .fetch_all(pool)
        .await?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(complete_time) FROM notifications WHERE batch_id = $1",
        )
        .bind(batch_id)
        .fetch_one(pool)
        .await?;
        (batch, counts, last)
    });
    let Some(batch) = batch else {
        return Ok(None);
    };
    let mut parsed = Vec::with_capacity(counts.len());
    for (status, count) in counts {
        let status = Status::parse(&status).ok_or(NotificationsError::Corrupt("batch status"))?;
        parsed.push((status, count));
    }
    parsed.sort();
    Ok(Some((batch, parsed, last)))
}

/// Cancels every notification of a batch scheduled after `now`. `false`
/// when the batch is not (or no longer) cancellable.
pub async fn cancel_batch(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    batch_id: &str,
    now: i64,
) -> Result<bool, NotificationsError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE batches SET cancel_time = $4 WHERE batch_id = $1 AND agency_id = $2 \
             AND environment = $3 AND cancel_time IS NULL AND scheduled_time > $4",
        )
        .bind(batch_id)
        .bind(agency_id)
        .bind(environment.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        let ids: Vec<String> = sqlx::query_scalar(
            "UPDATE notifications SET status = 'cancelled', due_time = NULL, cancel_time = $2, \
             complete_time = $2, update_time = $2 \
             WHERE batch_id = $1 AND status = 'created' RETURNING notification_id",
        )
        .bind(batch_id)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        for id in &ids {
            record_event!(tx, id, agency_id, environment.as_str(), Status::Cancelled, now);
        }
        tx.commit().await?;
    });
    Ok(true)
}

/// The agency's delivery callback: (url, bearer token, update time).
pub async fn get_callback(
    db: &Database,
    agency_id: &str,
    environment: Environment,
) -> Result<Option<(String, String, i64)>, NotificationsError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT url, bearer_token, update_time FROM delivery_callbacks \
             WHERE agency_id = $1 AND environment = $2",
        )
        .bind(agency_id)
        .bind(environment.as_str())
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
}

pub async fn set_callback(
    db: &Database,
    agency_id: &str,
    environment: Environment,
    url: &str,
    bearer_token: &str,
    now: i64,
) -> Result<(), NotificationsError> {
    on_db!(db, pool => {
        sqlx::query(
            "INSERT INTO delivery_callbacks (agency_id, environment, url, bearer_token, update_time) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (agency_id, environment) \
             DO UPDATE SET url = excluded.url, bearer_token = excluded.bearer_token, \
             update_time = excluded.update_time",
        )
        .bind(agency_id)
        .bind(environment.as_str())
        .bind(url)
        .bind(bearer_token)
        .bind(now)
        .execute(pool)
        .await?;
    });
    Ok(())
}

pub async fn delete_callback(
    db: &Database,
    agency_id: &str,
    environment: Environment,
) -> Result<(), NotificationsError> {
    on_db!(db, pool => {
        sqlx::query("DELETE FROM delivery_callbacks WHERE agency_id = $1 AND environment = $2")
            .bind(agency_id)
            .bind(environment.as_str())
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// A callback to make: the event, where to, and the attempt that fences it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallbackJob {
    pub event_id: String,
    pub notification_id: String,
    pub agency_id: String,
    pub environment: String,
    pub status: String,
    pub occur_time: i64,
    pub attempts: i64,
}

/// Claims due callbacks, like [`claim_due`].
pub async fn claim_callbacks(
    db: &Database,
    now: i64,
    lease_micros: i64,
    limit: i64,
) -> Result<Vec<CallbackJob>, NotificationsError> {
    let lock = match db {
        Database::Postgres(_) => "FOR UPDATE SKIP LOCKED",
        Database::Sqlite(_) => "",
    };
    let sql = format!(
        "UPDATE callback_deliveries SET attempts = attempts + 1, due_time = $1 + $2 \
         WHERE event_id IN (SELECT event_id FROM callback_deliveries \
         WHERE due_time IS NOT NULL AND due_time <= $1 ORDER BY due_time LIMIT $3 {lock}) \
         RETURNING event_id, notification_id, agency_id, environment, status, occur_time, attempts"
    );
    let rows = on_db!(db, pool => {
        sqlx::query_as(AssertSqlSafe(sql.as_str()))
            .bind(now)
            .bind(lease_micros)
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    Ok(rows)
}

/// Ends a callback: done (delivered or given up) or due again later.
pub async fn settle_callback(
    db: &Database,
    job: &CallbackJob,
    retry_at: Option<i64>,
) -> Result<(), NotificationsError> {
    on_db!(db, pool => {
        match retry_at {
            None => sqlx::query("DELETE FROM callback_deliveries WHERE event_id = $1 AND attempts = $2")
                .bind(&job.event_id)
                .bind(job.attempts)
                .execute(pool)
                .await?,
            Some(due) => sqlx::query(
                "UPDATE callback_deliveries SET due_time = $1 WHERE event_id = $2 AND attempts = $3",
            )
            .bind(due)
            .bind(&job.event_id)
            .bind(job.attempts)
            .execute(pool)
            .await?,
        };
    });
    Ok(())
}

/// Erases recipients and content of notifications that ended before
/// `ended_before`, and events recorded before `events_before`. Returns how
/// many notifications were purged.
pub async fn purge(
    db: &Database,
    ended_before: i64,
    events_before: i64,
    keys_before: i64,
    now: i64,
) -> Result<u64, NotificationsError> {
    let purged = on_db!(db, pool => {
        let purged = sqlx::query(
            "UPDATE notifications SET recipient = '', subject = '', body = '', html_body = '', \
             email_reply_to = '', unsubscribe_url = '', \
             fallback_recipient = NULL, fallback_body = NULL, purge_time = $2 \
             WHERE purge_time IS NULL AND complete_time < $1",
        )
        .bind(ended_before)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM notification_events WHERE occur_time < $1")
            .bind(events_before)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM idempotency_keys WHERE create_time < $1")
            .bind(keys_before)
            .execute(pool)
            .await?;
        purged
    });
    Ok(purged)
}

/// A notification's whole stored row as text, for the retention test.
pub async fn raw_row_text(
    db: &Database,
    notification_id: &str,
) -> Result<Option<String>, NotificationsError> {
    let text = on_db!(db, pool => {
        sqlx::query_scalar(
            "SELECT recipient || '|' || subject || '|' || body || '|' || html_body || '|' || \
             COALESCE(fallback_recipient, '') || '|' || COALESCE(fallback_body, '') \
             FROM notifications WHERE notification_id = $1",
        )
            .bind(notification_id)
            .fetch_optional(pool)
            .await?
    });
    Ok(text)
}
