//! Sending: requests checked, rendered and committed as notifications (the
//! delivery workers take it from there), and what agencies read back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use atiende_platform::auth::Environment;
use atiende_platform::ids::new_id;
use atiende_platform::paging::{Page, PageSize};
use atiende_platform::storage::{Database, now_micros};
use aws_lc_rs::digest;

use crate::domain::notifications::{
    BATCH_ID_PREFIX, Fallback, Notification, Status, is_simulator_recipient,
};
use crate::domain::template::Personalisation;
use crate::domain::templates::{self, Channel, Rendering, Template};
use crate::service::{NotificationsError, NotificationsService};
use crate::store::queue::{self, BatchRow, NotificationFilter, SendRecord, SendRefused};

/// Most rows in one batch.
pub const MAX_BATCH_ROWS: usize = 50_000;
/// Most rendered content (subjects, texts, HTML) one batch may hold in
/// memory before it is committed.
pub const MAX_BATCH_RENDERED_BYTES: usize = 256 * 1024 * 1024;
/// Furthest a send may be scheduled ahead.
pub const MAX_SCHEDULE_AHEAD: Duration = Duration::from_secs(7 * 24 * 3600);

/// Who sends: the caller's agency and token environment.
#[derive(Debug, Clone)]
pub struct Sender {
    pub agency_id: String,
    pub environment: Environment,
}

/// Options every send shares.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    pub reference: String,
    /// µs; `None` (or a past time) means now.
    pub scheduled_time: Option<i64>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct EmailSend {
    pub template_id: String,
    pub template_version: Option<i32>,
    pub email_address: String,
    pub personalisation: Personalisation,
    pub email_reply_to: String,
    pub unsubscribe_url: String,
    pub fallback: Option<FallbackSend>,
    pub options: SendOptions,
}

#[derive(Debug, Clone)]
pub struct FallbackSend {
    pub template_id: String,
    pub template_version: Option<i32>,
    pub phone_number: String,
    pub personalisation: Personalisation,
}

#[derive(Debug, Clone)]
pub struct SmsSend {
    pub template_id: String,
    pub template_version: Option<i32>,
    pub phone_number: String,
    pub personalisation: Personalisation,
    pub sender_id: String,
    pub options: SendOptions,
}

#[derive(Debug, Clone)]
pub struct BatchSend {
    pub template_id: String,
    pub template_version: Option<i32>,
    pub channel: Channel,
    pub rows: Vec<BatchRowSend>,
    pub email_reply_to: String,
    pub sender_id: String,
    pub options: SendOptions,
}

#[derive(Debug, Clone)]
pub struct BatchRowSend {
    pub recipient: String,
    pub personalisation: Personalisation,
    pub reference: String,
    pub unsubscribe_url: String,
}

/// A batch and its progress.
#[derive(Debug, Clone)]
pub struct BatchView {
    pub batch: BatchRow,
    pub counts: Vec<(Status, i64)>,
    pub complete_time: Option<i64>,
}

/// A per-agency token bucket (per instance): `per_minute` sends, refilled
/// continuously.
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token, or says how long until one is available.
    pub fn take(&self, agency_id: &str) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let per_second = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > 100_000 {
            // Forget full buckets (idle agencies) to bound memory.
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_second < capacity
            });
        }
        let (tokens, at) = buckets
            .entry(agency_id.to_owned())
            .or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * per_second).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / per_second))
        }
    }
}

/// A field and what is wrong with it.
type Violation = (String, String);

/// Templates as sends read them. A version never changes, so versions are
/// kept; "the latest version" is re-read after [`LATEST_TTL`] (an update on
/// this instance forgets it at once; on another, within the TTL).
#[derive(Default)]
pub struct TemplateCache {
    entries: Mutex<HashMap<TemplateKey, (Instant, Template)>>,
}

/// (agency, template id, version or `None` for the latest)
type TemplateKey = (String, String, Option<i32>);

pub const LATEST_TTL: Duration = Duration::from_secs(1);
const TEMPLATE_CACHE_MAX: usize = 10_000;

impl TemplateCache {
    async fn get(
        &self,
        db: &Database,
        agency_id: &str,
        template_id: &str,
        version: Option<i32>,
    ) -> Result<Template, NotificationsError> {
        let key = (agency_id.to_owned(), template_id.to_owned(), version);
        {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, template)) = entries.get(&key)
                && (version.is_some() || at.elapsed() < LATEST_TTL)
            {
                return Ok(template.clone());
            }
        }
        let template = crate::store::get_template(db, agency_id, template_id, version)
            .await?
            .ok_or(NotificationsError::TemplateNotFound)?;
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= TEMPLATE_CACHE_MAX {
            entries.clear();
        }
        entries.insert(key, (Instant::now(), template.clone()));
        Ok(template)
    }

    /// Forgets the latest version of a template (it was just updated).
    pub fn forget_latest(&self, agency_id: &str, template_id: &str) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(agency_id.to_owned(), template_id.to_owned(), None));
    }
}

/// A single send waiting for its group commit.
pub struct Pending {
    pub notification: Notification,
    /// (operation, key, request hash)
    pub idempotency: Option<(&'static str, String, String)>,
    /// (UTC day, daily limit)
    pub daily_limit: Option<(i64, i64)>,
}

type Committed = Result<(Notification, Result<(), SendRefused>), NotificationsError>;

/// Group commit of single sends: sends that arrive while a transaction is
/// being written wait for the next one and share it, so a busy service
/// pays one commit (one fsync) for many sends. Each send is answered only
/// after the transaction that holds it commits.
pub struct SendWriter {
    queue: tokio::sync::mpsc::Sender<(Pending, tokio::sync::oneshot::Sender<Committed>)>,
}

/// Most sends in one transaction.
const GROUP_MAX: usize = 512;
/// Transactions being written at once: one collects while another commits.
const WRITERS: usize = 2;

impl SendWriter {
    /// Starts the writers on the current runtime; they stop when the
    /// writer is dropped.
    pub fn start(db: Database) -> Self {
        let (queue, receiver) = tokio::sync::mpsc::channel(GROUP_MAX * 8);
        let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..WRITERS {
            let (db, receiver) = (db.clone(), receiver.clone());
            tokio::spawn(async move {
                let mut group = Vec::with_capacity(GROUP_MAX);
                loop {
                    let received = receiver.lock().await.recv_many(&mut group, GROUP_MAX).await;
                    if received == 0 {
                        return;
                    }
                    write_group(&db, &mut group).await;
                }
            });
        }
        Self { queue }
    }

    async fn commit(&self, pending: Pending) -> Committed {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send((pending, reply))
            .await
            .map_err(|_| NotificationsError::Unavailable)?;
        answer.await.map_err(|_| NotificationsError::Unavailable)?
    }
}

async fn write_group(
    db: &Database,
    group: &mut Vec<(Pending, tokio::sync::oneshot::Sender<Committed>)>,
) {
    // Keys in one order in every transaction: concurrent groups never
    // deadlock on them.
    group.sort_by(|(a, _), (b, _)| a.idempotency.cmp(&b.idempotency));
    let sends: Vec<queue::SingleSend<'_>> = group
        .iter()
        .map(|(p, _)| queue::SingleSend {
            notification: &p.notification,
            idempotency: p
                .idempotency
                .as_ref()
                .map(|(op, key, hash)| (*op, key.as_str(), hash.as_str())),
            daily_limit: p.daily_limit,
        })
        .collect();
    let started = Instant::now();
    let result = queue::insert_singles(db, &sends).await;
    tracing::debug!(
        sends = sends.len(),
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        "group commit of sends"
    );
    drop(sends);
    match result {
        Ok(outcomes) => {
            for ((pending, reply), outcome) in group.drain(..).zip(outcomes) {
                let _ = reply.send(Ok((pending.notification, outcome)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, sends = group.len(), "a group commit of sends failed");
            for (_, reply) in group.drain(..) {
                let _ = reply.send(Err(NotificationsError::Unavailable));
            }
        }
    }
}

impl NotificationsService {
    pub async fn send_email(
        &self,
        sender: &Sender,
        send: EmailSend,
    ) -> Result<Notification, NotificationsError> {
        self.rate_limit(sender)?;
        let hash = idempotency_hash(&send.options, &send);
        if let Some(original) = self
            .replay_send(sender, "SendEmail", &send.options, &hash)
            .await?
        {
            return Ok(original);
        }
        let mut violations = Vec::new();
        check_recipient(
            sender,
            "email_address",
            &send.email_address,
            &mut violations,
        );
        let template = self
            .template_for(
                sender,
                "template_id",
                &send.template_id,
                send.template_version,
                Channel::Email,
                &mut violations,
            )
            .await;
        let fallback = match &send.fallback {
            None => None,
            Some(fb) => {
                check_recipient(
                    sender,
                    "fallback.phone_number",
                    &fb.phone_number,
                    &mut violations,
                );
                let template = self
                    .template_for(
                        sender,
                        "fallback.template_id",
                        &fb.template_id,
                        fb.template_version,
                        Channel::Sms,
                        &mut violations,
                    )
                    .await;
                template.and_then(|t| {
                    render_checked(
                        &t,
                        "fallback.personalisation",
                        &fb.personalisation,
                        &mut violations,
                    )
                    .and_then(|r| match r {
                        Rendering::Sms { body, size } => Some(Fallback {
                            template_id: t.template_id.clone(),
                            template_version: t.version,
                            phone_number: fb.phone_number.clone(),
                            body,
                            fragment_count: i32::try_from(size.fragments).unwrap_or(i32::MAX),
                        }),
                        Rendering::Email(_) => None,
                    })
                })
            }
        };
        let rendering = template.as_ref().and_then(|t| {
            render_checked(t, "personalisation", &send.personalisation, &mut violations)
        });
        let scheduled_time = check_schedule(send.options.scheduled_time, &mut violations);
        let (Some(template), Some(rendering @ Rendering::Email(_)), true) =
            (template, rendering, violations.is_empty())
        else {
            return Err(NotificationsError::InvalidRequest(violations));
        };
        let notification = Notification {
            reference: send.options.reference.clone(),
            email_reply_to: send.email_reply_to,
            unsubscribe_url: send.unsubscribe_url,
            fallback,
            scheduled_time,
            ..Notification::accepted(
                &sender.agency_id,
                sender.environment,
                &template,
                send.email_address,
                rendering,
                now_micros(),
            )
        };
        self.commit_one(sender, "SendEmail", &send.options, &hash, notification)
            .await
    }

    pub async fn send_sms(
        &self,
        sender: &Sender,
        send: SmsSend,
    ) -> Result<Notification, NotificationsError> {
        self.rate_limit(sender)?;
        let hash = idempotency_hash(&send.options, &send);
        if let Some(original) = self
            .replay_send(sender, "SendSms", &send.options, &hash)
            .await?
        {
            return Ok(original);
        }
        let mut violations = Vec::new();
        check_recipient(sender, "phone_number", &send.phone_number, &mut violations);
        self.check_sender_id(sender, &send.sender_id, &mut violations);
        let template = self
            .template_for(
                sender,
                "template_id",
                &send.template_id,
                send.template_version,
                Channel::Sms,
                &mut violations,
            )
            .await;
        let rendering = template.as_ref().and_then(|t| {
            render_checked(t, "personalisation", &send.personalisation, &mut violations)
        });
        let scheduled_time = check_schedule(send.options.scheduled_time, &mut violations);
        let (Some(template), Some(rendering @ Rendering::Sms { .. }), true) =
            (template, rendering, violations.is_empty())
        else {
            return Err(NotificationsError::InvalidRequest(violations));
        };
        let sender_id = if send.sender_id.is_empty() {
            self.default_sender_id.clone()
        } else {
            send.sender_id
        };
        let notification = Notification {
            reference: send.options.reference.clone(),
            sender_id,
            scheduled_time,
            ..Notification::accepted(
                &sender.agency_id,
                sender.environment,
                &template,
                send.phone_number,
                rendering,
                now_micros(),
            )
        };
        self.commit_one(sender, "SendSms", &send.options, &hash, notification)
            .await
    }

    /// Validates every row first; commits the batch and all its
    /// notifications in one transaction, or nothing.
    pub async fn send_batch(
        &self,
        sender: &Sender,
        send: BatchSend,
    ) -> Result<BatchView, NotificationsError> {
        self.rate_limit(sender)?;
        let hash = idempotency_hash(&send.options, &send);
        if let Some(key) = &send.options.idempotency_key
            && let Some(record) =
                crate::store::find_idempotency_key(&self.db, &sender.agency_id, "SendBatch", key)
                    .await?
        {
            if record.request_hash != hash {
                return Err(NotificationsError::IdempotencyKeyReused);
            }
            return self.get_batch(sender, &record.resource_id).await;
        }
        let mut violations = Vec::new();
        let template = self
            .template_for(
                sender,
                "template_id",
                &send.template_id,
                send.template_version,
                send.channel,
                &mut violations,
            )
            .await;
        let scheduled_time = check_schedule(send.options.scheduled_time, &mut violations);
        if send.channel == Channel::Sms {
            self.check_sender_id(sender, &send.sender_id, &mut violations);
        }
        let Some(template) = template else {
            return Err(NotificationsError::InvalidRequest(violations));
        };
        let now = now_micros();
        let batch_id = new_id(BATCH_ID_PREFIX);
        let sender_id = if send.channel == Channel::Sms && send.sender_id.is_empty() {
            self.default_sender_id.clone()
        } else {
            send.sender_id.clone()
        };
        let mut items = Vec::with_capacity(send.rows.len());
        let mut rendered_bytes = 0usize;
        for (i, row) in send.rows.iter().enumerate() {
            let field = match send.channel {
                Channel::Email => "email address",
                Channel::Sms => "phone number",
            };
            let recipient = match send.channel {
                Channel::Email => crate::domain::notifications::parse_email_address(&row.recipient)
                    .map_err(str::to_owned),
                Channel::Sms => crate::domain::notifications::parse_phone_number(&row.recipient)
                    .map_err(str::to_owned),
            };
            let recipient = match recipient {
                Ok(r) => Some(r),
                Err(message) => {
                    violations.push((
                        format!("recipients[{i}].recipient"),
                        format!("{message} ({field})"),
                    ));
                    None
                }
            };
            if let Some(r) = &recipient {
                check_recipient(
                    sender,
                    &format!("recipients[{i}].recipient"),
                    r,
                    &mut violations,
                );
            }
            let rendering = render_checked(
                &template,
                &format!("recipients[{i}].personalisation"),
                &row.personalisation,
                &mut violations,
            );
            if violations.len() > 1000 {
                violations.push((
                    "recipients".into(),
                    "more than 1000 violations: stopped checking".into(),
                ));
                break;
            }
            let (Some(recipient), Some(rendering)) = (recipient, rendering) else {
                continue;
            };
            rendered_bytes += match &rendering {
                Rendering::Email(e) => e.subject.len() + e.text.len() + e.html.len(),
                Rendering::Sms { body, .. } => body.len(),
            };
            if rendered_bytes > MAX_BATCH_RENDERED_BYTES {
                violations.push((
                    "recipients".into(),
                    "the batch renders to more than 256 MiB: split it".into(),
                ));
                break;
            }
            items.push(Notification {
                reference: row.reference.clone(),
                batch_id: Some(batch_id.clone()),
                email_reply_to: send.email_reply_to.clone(),
                unsubscribe_url: row.unsubscribe_url.clone(),
                sender_id: sender_id.clone(),
                scheduled_time,
                ..Notification::accepted(
                    &sender.agency_id,
                    sender.environment,
                    &template,
                    recipient,
                    rendering,
                    now,
                )
            });
        }
        if !violations.is_empty() {
            return Err(NotificationsError::InvalidRequest(violations));
        }
        let batch = BatchRow {
            batch_id: batch_id.clone(),
            agency_id: sender.agency_id.clone(),
            environment: sender.environment.as_str().to_owned(),
            channel: send.channel.as_str().to_owned(),
            template_id: template.template_id.clone(),
            template_version: i64::from(template.version),
            recipient_count: i64::try_from(items.len()).unwrap_or(i64::MAX),
            create_time: now,
            scheduled_time,
            cancel_time: None,
        };
        let idempotency = send
            .options
            .idempotency_key
            .as_deref()
            .map(|key| ("SendBatch", key, hash.as_str(), batch_id.as_str()));
        let record = SendRecord {
            idempotency,
            batch: Some(&batch),
            daily_limit: self.daily_limit(send.channel, now),
        };
        match queue::insert_send(&self.db, &items, record).await? {
            Ok(()) => {}
            Err(SendRefused::DailyLimit) => return Err(daily_limit_error(now)),
            Err(SendRefused::KeyTaken) => {
                let key = send.options.idempotency_key.as_deref().unwrap_or_default();
                let record = crate::store::find_idempotency_key(
                    &self.db,
                    &sender.agency_id,
                    "SendBatch",
                    key,
                )
                .await?
                .ok_or(NotificationsError::Corrupt("idempotency record"))?;
                if record.request_hash != hash {
                    return Err(NotificationsError::IdempotencyKeyReused);
                }
                return self.get_batch(sender, &record.resource_id).await;
            }
        }
        tracing::info!(batch_id = %batch_id, rows = items.len(), "batch accepted");
        self.signals.work.notify_one();
        self.signals.events.notify_waiters();
        Ok(BatchView {
            counts: vec![(Status::Created, batch.recipient_count)],
            batch,
            complete_time: None,
        })
    }

    pub async fn get_notification(
        &self,
        sender: &Sender,
        notification_id: &str,
    ) -> Result<Notification, NotificationsError> {
        queue::get_notification(
            &self.db,
            &sender.agency_id,
            sender.environment,
            notification_id,
        )
        .await?
        .ok_or(NotificationsError::NotificationNotFound)
    }

    pub async fn list_notifications(
        &self,
        sender: &Sender,
        filter: &NotificationFilter,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Notification>, NotificationsError> {
        let items = queue::list_notifications(
            &self.db,
            &sender.agency_id,
            sender.environment,
            filter,
            cursor,
            page_size.fetch_limit(),
        )
        .await?;
        Ok(Page::from_overfetch(items, page_size, |n| {
            n.notification_id.clone()
        }))
    }

    pub async fn cancel_notification(
        &self,
        sender: &Sender,
        notification_id: &str,
    ) -> Result<Notification, NotificationsError> {
        let now = now_micros();
        let cancelled = queue::cancel_notification(
            &self.db,
            &sender.agency_id,
            sender.environment,
            notification_id,
            now,
        )
        .await?;
        let notification = self.get_notification(sender, notification_id).await?;
        if cancelled {
            self.signals.events.notify_waiters();
            return Ok(notification);
        }
        match notification.status {
            Status::Cancelled => Ok(notification),
            Status::Created if notification.scheduled_time.is_some() => Err(
                NotificationsError::NotCancellable("its scheduled time has passed"),
            ),
            Status::Created => Err(NotificationsError::NotCancellable(
                "it was not scheduled: it is being sent",
            )),
            _ => Err(NotificationsError::NotCancellable("it has been sent")),
        }
    }

    pub async fn get_batch(
        &self,
        sender: &Sender,
        batch_id: &str,
    ) -> Result<BatchView, NotificationsError> {
        let (batch, counts, last) =
            queue::get_batch(&self.db, &sender.agency_id, sender.environment, batch_id)
                .await?
                .ok_or(NotificationsError::BatchNotFound)?;
        let done = counts.iter().all(|(s, _)| s.is_final());
        Ok(BatchView {
            batch,
            counts,
            complete_time: if done { last } else { None },
        })
    }

    pub async fn cancel_batch(
        &self,
        sender: &Sender,
        batch_id: &str,
    ) -> Result<BatchView, NotificationsError> {
        let now = now_micros();
        let cancelled = queue::cancel_batch(
            &self.db,
            &sender.agency_id,
            sender.environment,
            batch_id,
            now,
        )
        .await?;
        let view = self.get_batch(sender, batch_id).await?;
        if cancelled {
            self.signals.events.notify_waiters();
            return Ok(view);
        }
        if view.batch.cancel_time.is_some() {
            return Ok(view);
        }
        Err(NotificationsError::NotCancellable(
            "the batch was not scheduled, or its scheduled time has passed",
        ))
    }

    /// A sender id must be one configured for the agency.
    fn check_sender_id(&self, sender: &Sender, sender_id: &str, violations: &mut Vec<Violation>) {
        let allowed = sender_id.is_empty()
            || self
                .sender_ids
                .get(&sender.agency_id)
                .is_some_and(|ids| ids.iter().any(|id| id == sender_id));
        if !allowed {
            violations.push((
                "sender_id".to_owned(),
                "is not one of the sender ids configured for your agency".to_owned(),
            ));
        }
    }

    fn rate_limit(&self, sender: &Sender) -> Result<(), NotificationsError> {
        self.limiter
            .take(&sender.agency_id)
            .map_err(NotificationsError::RateLimited)
    }

    fn daily_limit(&self, channel: Channel, now: i64) -> Option<(Channel, i64, i64)> {
        let limit = match channel {
            Channel::Email => self.limits.daily_emails,
            Channel::Sms => self.limits.daily_sms,
        };
        (limit > 0).then(|| (channel, now.div_euclid(DAY_MICROS), i64::from(limit)))
    }

    async fn replay_send(
        &self,
        sender: &Sender,
        operation: &str,
        options: &SendOptions,
        hash: &str,
    ) -> Result<Option<Notification>, NotificationsError> {
        let Some(key) = &options.idempotency_key else {
            return Ok(None);
        };
        let Some(record) =
            crate::store::find_idempotency_key(&self.db, &sender.agency_id, operation, key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(NotificationsError::IdempotencyKeyReused);
        }
        self.get_notification(sender, &record.resource_id)
            .await
            .map(Some)
    }

    async fn commit_one(
        &self,
        sender: &Sender,
        operation: &'static str,
        options: &SendOptions,
        hash: &str,
        notification: Notification,
    ) -> Result<Notification, NotificationsError> {
        let create_time = notification.create_time;
        let pending = Pending {
            idempotency: options
                .idempotency_key
                .clone()
                .map(|key| (operation, key, hash.to_owned())),
            daily_limit: self
                .daily_limit(notification.channel, create_time)
                .map(|(_, day, limit)| (day, limit)),
            notification,
        };
        let (notification, outcome) = self.writer.commit(pending).await?;
        match outcome {
            Ok(()) => {}
            Err(SendRefused::DailyLimit) => return Err(daily_limit_error(create_time)),
            Err(SendRefused::KeyTaken) => {
                return self
                    .replay_send(sender, operation, options, hash)
                    .await?
                    .ok_or(NotificationsError::Corrupt("idempotency record"));
            }
        }
        tracing::debug!(notification_id = %notification.notification_id, "notification accepted");
        self.signals.work.notify_one();
        self.signals.events.notify_waiters();
        Ok(notification)
    }

    /// The template to send, of the right channel; otherwise `None`, with
    /// a violation of `field` recorded.
    async fn template_for(
        &self,
        sender: &Sender,
        field: &str,
        template_id: &str,
        version: Option<i32>,
        channel: Channel,
        violations: &mut Vec<Violation>,
    ) -> Option<Template> {
        let problem = match self
            .template_cache
            .get(&self.db, &sender.agency_id, template_id, version)
            .await
        {
            Ok(t) if t.draft.channel == channel => return Some(t),
            Ok(_) => format!("is not an {} template", channel_noun(channel)),
            Err(NotificationsError::TemplateNotFound) => {
                "no such template (or version) in your agency".to_owned()
            }
            Err(_) => "could not be read; try again".to_owned(),
        };
        violations.push((field.to_owned(), problem));
        None
    }
}

const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

fn daily_limit_error(now: i64) -> NotificationsError {
    let next_day = (now.div_euclid(DAY_MICROS) + 1) * DAY_MICROS;
    let wait = u64::try_from(next_day.saturating_sub(now)).unwrap_or(0);
    NotificationsError::DailyLimit(Duration::from_micros(wait))
}

fn channel_noun(channel: Channel) -> &'static str {
    match channel {
        Channel::Email => "email",
        Channel::Sms => "SMS",
    }
}

/// Live agencies may not send to the simulator's recipients.
fn check_recipient(sender: &Sender, field: &str, recipient: &str, violations: &mut Vec<Violation>) {
    if sender.environment == Environment::Live && is_simulator_recipient(recipient) {
        violations.push((
            field.to_owned(),
            "is a simulator recipient, for sandbox clients only".to_owned(),
        ));
    }
}

/// Renders, recording under `field` each missing value, a list where text
/// is needed, an oversize rendering or an SMS over the maximum length.
fn render_checked(
    template: &Template,
    field: &str,
    values: &Personalisation,
    violations: &mut Vec<Violation>,
) -> Option<Rendering> {
    let (rendering, problems) = templates::render(
        template.draft.channel,
        &template.draft.subject,
        &template.draft.body,
        values,
    );
    let before = violations.len();
    for name in &problems.missing {
        violations.push((format!("{field}[{name}]"), "is missing".to_owned()));
    }
    for name in &problems.list_not_allowed {
        violations.push((
            format!("{field}[{name}]"),
            "must be text here, not a list".to_owned(),
        ));
    }
    if problems.too_large {
        violations.push((
            field.to_owned(),
            "the message would insert more than 1 MiB of personalisation".to_owned(),
        ));
    }
    if let Rendering::Sms { size, .. } = &rendering
        && size.is_too_long()
    {
        violations.push((
            field.to_owned(),
            format!(
                "the message would be {} characters, over the maximum of 918",
                size.characters
            ),
        ));
    }
    (violations.len() == before).then_some(rendering)
}

/// The scheduled time, or `None` for now; at most 7 days ahead.
fn check_schedule(at: Option<i64>, violations: &mut Vec<Violation>) -> Option<i64> {
    let now = now_micros();
    let at = at.filter(|&t| t > now)?;
    let limit =
        now.saturating_add(i64::try_from(MAX_SCHEDULE_AHEAD.as_micros()).unwrap_or(i64::MAX));
    if at > limit {
        violations.push((
            "scheduled_time".to_owned(),
            "must be at most 7 days ahead".to_owned(),
        ));
    }
    Some(at)
}

/// The request's digest when it carries an idempotency key (only then is
/// it needed).
fn idempotency_hash(options: &SendOptions, request: &impl std::fmt::Debug) -> String {
    if options.idempotency_key.is_some() {
        request_hash(request)
    } else {
        String::new()
    }
}

/// A digest of a send request's content (the idempotency key included
/// only through the lookup), to tell a replay from a reuse of its key.
fn request_hash(request: &impl std::fmt::Debug) -> String {
    let text = format!("{request:?}");
    digest::digest(&digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_bucket_allows_its_capacity_then_says_when() {
        let limiter = RateLimiter::new(60);
        for _ in 0..60 {
            assert!(limiter.take("agy_a").is_ok());
        }
        let wait = limiter.take("agy_a").unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(limiter.take("agy_b").is_ok(), "buckets are per agency");
        assert!(RateLimiter::new(0).take("agy_a").is_ok());
    }
}
