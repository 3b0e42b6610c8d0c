//! Delivery: the workers that take notifications off the queue and hand
//! them to email and SMS providers (or the simulator, for sandbox
//! agencies), the delivery callbacks, and retention.
//!
//! The queue is the `notifications` table (see `store::queue`). A worker
//! claims due rows with a lease and fences its result with the attempt
//! number, so several instances on one PostgreSQL never deliver a
//! notification twice while its lease holds; a crashed instance's claims
//! are taken over when their lease ends.

pub mod email;
pub mod sms;

use std::sync::Arc;
use std::time::Duration;

use atiende_platform::auth::Environment;
use atiende_platform::server::Shutdown;
use atiende_platform::storage::{Database, now_micros};
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::config::DeliveryConfig;
use crate::domain::notifications::{Simulated, Status, simulated_outcome};
use crate::domain::templates::Channel;
use crate::store::queue::{self, CallbackJob, Claimed};
use email::{EmailSender, OutgoingEmail};
use sms::{OutgoingSms, ProviderChain};

/// What one delivery attempt came to.
pub enum Outcome {
    /// Accepted by the recipient's mail server.
    Delivered,
    /// Refused for good; the reason names no recipient.
    PermanentFailure(String),
    /// Failed for now: the reason, and whether the failure is ours or the
    /// provider's (technical) rather than the recipient's.
    Retry(String, bool),
    /// An SMS provider took it; a receipt follows when `receipts`.
    Accepted {
        provider: String,
        reference: String,
        receipts: bool,
    },
    /// A sandbox notification's simulated end.
    Simulated(Simulated),
}

/// Wakes workers and event streams when something is committed.
#[derive(Default)]
pub struct Signals {
    /// New or retried work for the delivery workers.
    pub work: Notify,
    /// New status events for streams.
    pub events: Notify,
}

/// A final status waiting for its group commit.
struct Ending {
    claimed: Claimed,
    status: Status,
    detail: String,
    reply: tokio::sync::oneshot::Sender<Result<bool, crate::service::NotificationsError>>,
}

/// Group commit of final statuses: deliveries that end while a transaction
/// is being written share the next one.
pub struct Finisher {
    queue: tokio::sync::mpsc::Sender<Ending>,
}

const FINISH_GROUP_MAX: usize = 256;

impl Finisher {
    pub fn start(db: Database) -> Self {
        let (queue, mut receiver) = tokio::sync::mpsc::channel::<Ending>(FINISH_GROUP_MAX * 4);
        tokio::spawn(async move {
            let mut group = Vec::with_capacity(FINISH_GROUP_MAX);
            while receiver.recv_many(&mut group, FINISH_GROUP_MAX).await > 0 {
                let items: Vec<queue::Finish<'_>> = group
                    .iter()
                    .map(|e| queue::Finish {
                        claimed: &e.claimed,
                        status: e.status,
                        detail: &e.detail,
                    })
                    .collect();
                let result = queue::finish_many(&db, &items, now_micros()).await;
                drop(items);
                match result {
                    Ok(current) => {
                        for (ending, current) in group.drain(..).zip(current) {
                            let _ = ending.reply.send(Ok(current));
                        }
                    }
                    Err(e) => {
                        // One failed transaction must not cost every
                        // delivery of the group a repeat: record them one by
                        // one (what still fails is retried after its lease).
                        tracing::warn!(error = %e, "a group of delivery results failed; recording them one by one");
                        let now = now_micros();
                        for ending in group.drain(..) {
                            let result = queue::finish(
                                &db,
                                &ending.claimed,
                                ending.status,
                                &ending.detail,
                                now,
                            )
                            .await;
                            let _ = ending.reply.send(result);
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    async fn finish(
        &self,
        claimed: &Claimed,
        status: Status,
        detail: &str,
    ) -> Result<bool, crate::service::NotificationsError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue
            .send(Ending {
                claimed: claimed.clone(),
                status,
                detail: detail.to_owned(),
                reply,
            })
            .await
            .map_err(|_| crate::service::NotificationsError::Unavailable)?;
        answer
            .await
            .map_err(|_| crate::service::NotificationsError::Unavailable)?
    }
}

pub struct Deliverer {
    pub(crate) db: Database,
    pub(crate) finisher: Finisher,
    pub(crate) email: EmailSender,
    pub(crate) sms: ProviderChain,
    pub(crate) config: DeliveryConfig,
    pub(crate) signals: Arc<Signals>,
    /// Callbacks of live agencies: public addresses only, no redirects.
    pub(crate) http: reqwest::Client,
    /// Callbacks of sandbox agencies (and all, in development).
    pub(crate) sandbox_http: reqwest::Client,
    /// The public base URL providers post receipts to.
    pub(crate) public_url: String,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

impl Deliverer {
    /// Runs the delivery workers, the callback sender and the retention job
    /// until shutdown; in-flight deliveries finish first.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let callbacks = tokio::spawn(self.clone().run_callbacks(shutdown.clone()));
        let retention = tokio::spawn(self.clone().run_retention(shutdown.clone()));
        self.run_deliveries(shutdown).await;
        let _ = callbacks.await;
        let _ = retention.await;
    }

    async fn run_deliveries(self: Arc<Self>, shutdown: Shutdown) {
        let permits = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let mut tasks = JoinSet::new();
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            while tasks.try_join_next().is_some() {}
            let free = permits.available_permits();
            // Claim in groups: waiting for a quarter of the slots to free
            // up costs little latency and saves many one-row claims.
            if free < (self.config.concurrency / 4).max(1) {
                tokio::select! {
                    _ = tasks.join_next() => continue,
                    () = &mut stop => break,
                }
            }
            let limit = i64::try_from(free).unwrap_or(1);
            let claimed =
                match queue::claim_due(&self.db, now_micros(), micros(self.config.lease_ms), limit)
                    .await
                {
                    Ok(claimed) => claimed,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming notifications failed");
                        Vec::new()
                    }
                };
            let full = claimed.len() == free;
            for c in claimed {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = self.clone();
                tasks.spawn(async move {
                    this.deliver(c).await;
                    drop(permit);
                });
            }
            if full {
                continue;
            }
            tokio::select! {
                () = self.signals.work.notified() => {},
                () = tokio::time::sleep(self.config.poll_interval_ms) => {},
                () = &mut stop => break,
            }
        }
        while tasks.join_next().await.is_some() {}
    }

    /// One attempt at one claimed notification, and its result recorded.
    pub async fn deliver(&self, claimed: Claimed) {
        let n = &claimed.notification;
        let outcome = if claimed.provider_reference.is_some() {
            // Claimed again while awaiting a receipt: none came in time.
            Outcome::Retry("no delivery receipt from the provider".to_owned(), false)
        } else if n.environment == Environment::Sandbox {
            let simulated = simulated_outcome(&n.recipient);
            if simulated == Simulated::Delivered
                && n.channel == Channel::Email
                && self.config.sandbox_outbox
            {
                match self.email.write_to_outbox(&outgoing_email(n)).await {
                    Outcome::Delivered => Outcome::Simulated(simulated),
                    other => other,
                }
            } else {
                Outcome::Simulated(simulated)
            }
        } else {
            match n.channel {
                Channel::Email => self.email.send(&outgoing_email(n)).await,
                Channel::Sms => {
                    self.sms
                        .send(&OutgoingSms {
                            notification_id: &n.notification_id,
                            to: &n.recipient,
                            sender_id: &n.sender_id,
                            body: &n.body,
                        })
                        .await
                }
            }
        };
        if let Err(e) = self.record(&claimed, outcome).await {
            // The lease runs out and another attempt is made.
            tracing::warn!(notification_id = %n.notification_id, error = %e, "recording a delivery failed");
        }
    }

    async fn record(
        &self,
        claimed: &Claimed,
        outcome: Outcome,
    ) -> Result<(), crate::service::NotificationsError> {
        let now = now_micros();
        let n = &claimed.notification;
        let awaiting_receipt = claimed.provider_reference.is_some();
        let (status, detail) = match outcome {
            Outcome::Delivered => (Status::Delivered, String::new()),
            Outcome::Simulated(simulated) => (Status::from(simulated), "simulated".to_owned()),
            Outcome::PermanentFailure(reason) => (Status::PermanentFailure, reason),
            Outcome::Accepted {
                receipts: false, ..
            } => (Status::Sent, String::new()),
            Outcome::Accepted {
                provider,
                reference,
                receipts: true,
            } => {
                let deadline = now.saturating_add(micros(self.config.retry_window_ms));
                queue::await_receipt(&self.db, claimed, &provider, &reference, deadline, now)
                    .await?;
                return Ok(());
            }
            Outcome::Retry(reason, technical) => {
                let started = n.send_time.unwrap_or(now);
                let window = micros(self.config.retry_window_ms);
                if awaiting_receipt || now.saturating_sub(started) >= window {
                    let status = if technical {
                        Status::TechnicalFailure
                    } else {
                        Status::TemporaryFailure
                    };
                    (status, reason)
                } else {
                    let due = now.saturating_add(self.backoff(claimed.attempt));
                    tracing::info!(
                        notification_id = %n.notification_id,
                        attempt = claimed.attempt,
                        reason = %reason,
                        "delivery deferred"
                    );
                    queue::retry_later(&self.db, claimed, &reason, due, now).await?;
                    return Ok(());
                }
            }
        };
        if self.finisher.finish(claimed, status, &detail).await? {
            tracing::info!(
                notification_id = %n.notification_id,
                status = status.as_str(),
                detail = %detail,
                "notification finished"
            );
            self.signals.events.notify_waiters();
            if n.fallback.is_some() && status.triggers_fallback() {
                self.signals.work.notify_one();
            }
        }
        Ok(())
    }

    /// Exponential backoff with jitter: base × 2^(attempt−1), capped, then
    /// a random half to all of it.
    fn backoff(&self, attempt: i64) -> i64 {
        let base = micros(self.config.retry_base_delay_ms).max(1);
        let cap = micros(self.config.retry_max_delay_ms).max(base);
        let exponent = u32::try_from(attempt.saturating_sub(1).clamp(0, 40)).unwrap_or(40);
        let full = base.saturating_mul(1_i64 << exponent.min(40)).min(cap);
        rand::rng().random_range(full / 2..=full)
    }

    /// Applies a provider's delivery receipt; `false` if it is about no
    /// notification awaiting one.
    pub async fn apply_receipt(
        &self,
        provider: &str,
        reference: &str,
        status: Status,
    ) -> Result<bool, crate::service::NotificationsError> {
        // A quick receipt can arrive before the provider's answer to our
        // send is recorded: look again for a little while.
        let mut found = None;
        for _ in 0..20 {
            found = queue::find_by_provider_reference(&self.db, provider, reference).await?;
            if found.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(claimed) = found else {
            return Ok(false);
        };
        if claimed.notification.status != Status::Sending {
            return Ok(true);
        }
        let finished = queue::finish(&self.db, &claimed, status, "", now_micros()).await?;
        if finished {
            self.signals.events.notify_waiters();
            if status.triggers_fallback() {
                self.signals.work.notify_one();
            }
        }
        Ok(true)
    }

    /// Callbacks flow like deliveries: up to `delivery.concurrency` in
    /// flight, claimed in groups as slots free up, so one slow endpoint
    /// holds one slot, not the whole sender.
    async fn run_callbacks(self: Arc<Self>, shutdown: Shutdown) {
        let slots = self.config.concurrency.max(1);
        let permits = Arc::new(Semaphore::new(slots));
        let mut calls = JoinSet::new();
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            while calls.try_join_next().is_some() {}
            let free = permits.available_permits();
            if free < (slots / 4).max(1) {
                tokio::select! {
                    _ = calls.join_next() => continue,
                    () = &mut stop => break,
                }
            }
            let jobs = queue::claim_callbacks(
                &self.db,
                now_micros(),
                micros(self.config.callback_timeout_ms.saturating_mul(3)),
                i64::try_from(free).unwrap_or(1),
            )
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "claiming callbacks failed");
                Vec::new()
            });
            let full = jobs.len() == free;
            for job in jobs {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let this = self.clone();
                calls.spawn(async move {
                    this.call_back(job).await;
                    drop(permit);
                });
            }
            if full {
                continue;
            }
            tokio::select! {
                () = self.signals.events.notified() => {},
                () = tokio::time::sleep(self.config.poll_interval_ms) => {},
                () = &mut stop => break,
            }
        }
        while calls.join_next().await.is_some() {}
    }

    async fn call_back(&self, job: CallbackJob) {
        let delivered = self.post_callback(&job).await;
        let retry_at = match delivered {
            Ok(()) => None,
            Err(reason) => {
                let attempts = u32::try_from(job.attempts).unwrap_or(u32::MAX);
                if attempts >= self.config.callback_attempts {
                    tracing::warn!(event_id = %job.event_id, agency_id = %job.agency_id, reason, "delivery callback abandoned");
                    None
                } else {
                    tracing::info!(event_id = %job.event_id, attempt = attempts, reason, "delivery callback failed; will retry");
                    Some(now_micros().saturating_add(self.backoff(job.attempts)))
                }
            }
        };
        if let Err(e) = queue::settle_callback(&self.db, &job, retry_at).await {
            tracing::warn!(error = %e, "recording a callback failed");
        }
    }

    async fn post_callback(&self, job: &CallbackJob) -> Result<(), &'static str> {
        let environment = Environment::parse(&job.environment).ok_or("corrupt row")?;
        let Some((url, token, _)) = queue::get_callback(&self.db, &job.agency_id, environment)
            .await
            .map_err(|_| "storage")?
        else {
            return Ok(()); // the callback was deleted meanwhile
        };
        let Some(n) =
            queue::get_notification(&self.db, &job.agency_id, environment, &job.notification_id)
                .await
                .map_err(|_| "storage")?
        else {
            return Ok(());
        };
        let body = callback_body(job, &n);
        let client = if environment == Environment::Live && !self.config.allow_insecure_callbacks {
            &self.http
        } else {
            &self.sandbox_http
        };
        let response = client
            .post(url)
            .bearer_auth(token)
            .timeout(self.config.callback_timeout_ms)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    "timeout"
                } else {
                    "unreachable"
                }
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err("non-2xx answer")
        }
    }

    async fn run_retention(self: Arc<Self>, shutdown: Shutdown) {
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            if let Err(e) = self.purge_now().await {
                tracing::warn!(error = %e, "retention purge failed");
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(60)) => {},
                () = &mut stop => break,
            }
        }
    }

    /// Erases what retention says is due now.
    pub async fn purge_now(&self) -> Result<u64, crate::service::NotificationsError> {
        let now = now_micros();
        let day = 24 * 3600 * 1_000_000_i64;
        let purged = queue::purge(
            &self.db,
            now.saturating_sub(micros(self.config.retention_ms)),
            now.saturating_sub(7 * day),
            now.saturating_sub(day),
            now,
        )
        .await?;
        if purged > 0 {
            tracing::info!(purged, "notification content erased by retention");
        }
        Ok(purged)
    }
}

fn outgoing_email(n: &crate::domain::notifications::Notification) -> OutgoingEmail<'_> {
    OutgoingEmail {
        notification_id: &n.notification_id,
        to: &n.recipient,
        subject: &n.subject,
        text: &n.body,
        html: &n.html_body,
        reply_to: &n.email_reply_to,
        unsubscribe_url: &n.unsubscribe_url,
    }
}

/// A callback's body: the canonical proto3 JSON encoding of the
/// `NotificationEvent` (see callback.proto), default values omitted.
fn callback_body(
    job: &CallbackJob,
    n: &crate::domain::notifications::Notification,
) -> serde_json::Value {
    use serde_json::{Map, Value};
    let status = Status::parse(&job.status).unwrap_or(n.status);
    let enum_name = |s: Status| {
        format!(
            "NOTIFICATION_STATUS_{}",
            s.as_str().replace('-', "_").to_ascii_uppercase()
        )
    };
    let mut notification = Map::new();
    let mut put = |key: &str, value: Value| {
        let empty = matches!(&value, Value::String(s) if s.is_empty()) || value.is_null();
        if !empty {
            notification.insert(key.to_owned(), value);
        }
    };
    put("notificationId", n.notification_id.clone().into());
    put(
        "channel",
        format!("CHANNEL_{}", n.channel.as_str().to_ascii_uppercase()).into(),
    );
    put("status", enum_name(status).into());
    put("templateId", n.template_id.clone().into());
    put("templateVersion", n.template_version.into());
    put("recipient", n.recipient.clone().into());
    put("reference", n.reference.clone().into());
    put("batchId", n.batch_id.clone().unwrap_or_default().into());
    put("subject", n.subject.clone().into());
    put("body", n.body.clone().into());
    if n.fragment_count > 0 {
        put("fragmentCount", n.fragment_count.into());
    }
    put("emailReplyTo", n.email_reply_to.clone().into());
    put("unsubscribeUrl", n.unsubscribe_url.clone().into());
    put("senderId", n.sender_id.clone().into());
    put(
        "fallbackNotificationId",
        n.fallback_notification_id
            .clone()
            .unwrap_or_default()
            .into(),
    );
    put(
        "fallbackForNotificationId",
        n.fallback_for_notification_id
            .clone()
            .unwrap_or_default()
            .into(),
    );
    put(
        "environment",
        format!(
            "ENVIRONMENT_{}",
            n.environment.as_str().to_ascii_uppercase()
        )
        .into(),
    );
    put("createTime", rfc3339(n.create_time).into());
    put("scheduledTime", n.scheduled_time.map(rfc3339).into());
    put("sendTime", n.send_time.map(rfc3339).into());
    put("completeTime", rfc3339(job.occur_time).into());
    put("updateTime", rfc3339(job.occur_time).into());
    let mut event = Map::new();
    event.insert("eventId".to_owned(), job.event_id.clone().into());
    event.insert("occurTime".to_owned(), rfc3339(job.occur_time).into());
    event.insert("notification".to_owned(), Value::Object(notification));
    Value::Object(event)
}

/// `2026-11-22T17:45:15.123456Z` from Unix microseconds.
pub fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400_000_001), "2000-02-29T00:00:00.000001Z");
        assert_eq!(
            rfc3339(1_795_369_515_123_456),
            "2026-11-22T17:45:15.123456Z"
        );
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59.999999Z");
    }
}
