//! NotificationService and CallbackService over gRPC.

use std::pin::Pin;
use std::time::Duration;

use atiende_platform::auth::{Caller, Environment, Scope};
use atiende_platform::error::{ApiError, Violations};
use atiende_platform::ids::parse_id;
use atiende_platform::paging::{PageSize, decode_id_cursor, decode_page_token, encode_page_token};
use atiende_platform::storage::now_micros;
use atiende_proto::notifications::v1 as pb;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{
    CallbackApi, NotificationApi, Reply, authorised, parse_channel, parse_idempotency_key,
    parse_personalisation, parse_version, timestamp,
};
use crate::domain::notifications::{
    self as domain, BATCH_ID_PREFIX, Event, NOTIFICATION_ID_PREFIX, Notification,
    parse_email_address, parse_phone_number,
};
use crate::domain::templates::{Channel, TEMPLATE_ID_PREFIX};
use crate::sending::{
    BatchRowSend, BatchSend, BatchView, EmailSend, FallbackSend, MAX_BATCH_ROWS, SendOptions,
    Sender, SmsSend,
};
use crate::store::queue::{self, NotificationFilter};

type EventStream = Pin<
    Box<dyn Stream<Item = Result<pb::WatchNotificationEventsResponse, Status>> + Send + 'static>,
>;

const MAX_REFERENCE_CHARS: usize = 255;
const MAX_URL_CHARS: usize = 2048;
/// Events one stream read takes at most.
const EVENT_PAGE: i64 = 500;

fn sender(caller: &Caller) -> Sender {
    Sender {
        agency_id: caller.agency_id.clone(),
        environment: caller.environment,
    }
}

fn parse_reference(raw: &str) -> Result<String, String> {
    if raw.chars().count() > MAX_REFERENCE_CHARS || raw.chars().any(char::is_control) {
        Err(format!(
            "must be at most {MAX_REFERENCE_CHARS} characters, without control characters"
        ))
    } else {
        Ok(raw.to_owned())
    }
}

fn parse_time(raw: Option<&prost_types::Timestamp>) -> Result<Option<i64>, String> {
    let Some(ts) = raw else {
        return Ok(None);
    };
    if !(0..1_000_000_000).contains(&ts.nanos) || !(0..=253_402_300_799).contains(&ts.seconds) {
        return Err("is not a valid timestamp".to_owned());
    }
    Ok(Some(ts.seconds * 1_000_000 + i64::from(ts.nanos / 1000)))
}

/// An https URL (or, when `allow_http`, http) without credentials.
fn parse_url(raw: &str, allow_http: bool) -> Result<String, String> {
    let message = if allow_http {
        "must be an http:// or https:// URL"
    } else {
        "must be an https:// URL"
    };
    let rest = raw
        .strip_prefix("https://")
        .or_else(|| raw.strip_prefix("http://").filter(|_| allow_http))
        .ok_or_else(|| message.to_owned())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if raw.len() > MAX_URL_CHARS
        || authority.is_empty()
        || authority.contains('@')
        || raw
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>')
    {
        return Err(format!(
            "{message}, at most {MAX_URL_CHARS} characters, without spaces or credentials"
        ));
    }
    Ok(raw.to_owned())
}

fn options(
    v: &mut Violations,
    reference: &str,
    scheduled: Option<&prost_types::Timestamp>,
    key: &str,
) -> Option<SendOptions> {
    let reference = v.check("reference", parse_reference(reference));
    let scheduled_time = v.check("scheduled_time", parse_time(scheduled));
    let idempotency_key = v.check("idempotency_key", parse_idempotency_key(key));
    Some(SendOptions {
        reference: reference?,
        scheduled_time: scheduled_time?,
        idempotency_key: idempotency_key?,
    })
}

fn email_reply_to(v: &mut Violations, raw: &str) -> Option<String> {
    if raw.is_empty() {
        return Some(String::new());
    }
    v.check(
        "email_reply_to",
        parse_email_address(raw).map_err(str::to_owned),
    )
}

fn sender_id(v: &mut Violations, raw: &str) -> Option<String> {
    let ok = raw.is_empty()
        || (raw.len() <= 11 && raw.chars().all(|c| c.is_ascii_alphanumeric()))
        || parse_phone_number(raw).is_ok();
    if ok {
        Some(raw.to_owned())
    } else {
        v.add(
            "sender_id",
            "must be up to 11 letters and digits, or a phone number",
        );
        None
    }
}

#[tonic::async_trait]
impl pb::notification_service_server::NotificationService for NotificationApi {
    async fn send_email(
        &self,
        request: Request<pb::SendEmailRequest>,
    ) -> Reply<pb::SendEmailResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let template_id = v.check(
            "template_id",
            parse_id(TEMPLATE_ID_PREFIX, &req.template_id),
        );
        let version = v.check("template_version", parse_version(req.template_version));
        let address = v.check(
            "email_address",
            parse_email_address(&req.email_address).map_err(str::to_owned),
        );
        let values = parse_personalisation(&req.personalisation, "personalisation", &mut v);
        let opts = options(
            &mut v,
            &req.reference,
            req.scheduled_time.as_ref(),
            &req.idempotency_key,
        );
        let reply_to = email_reply_to(&mut v, &req.email_reply_to);
        let unsubscribe = if req.unsubscribe_url.is_empty() {
            Some(String::new())
        } else {
            v.check("unsubscribe_url", parse_url(&req.unsubscribe_url, false))
        };
        let fallback = match &req.fallback {
            None => Some(None),
            Some(fb) => {
                let id = v.check(
                    "fallback.template_id",
                    parse_id(TEMPLATE_ID_PREFIX, &fb.template_id),
                );
                let version = v.check(
                    "fallback.template_version",
                    parse_version(fb.template_version),
                );
                let phone = v.check(
                    "fallback.phone_number",
                    parse_phone_number(&fb.phone_number).map_err(str::to_owned),
                );
                let values =
                    parse_personalisation(&fb.personalisation, "fallback.personalisation", &mut v);
                (|| {
                    Some(Some(FallbackSend {
                        template_id: id?,
                        template_version: version?,
                        phone_number: phone?,
                        personalisation: values?,
                    }))
                })()
            }
        };
        let send = (|| {
            Some(EmailSend {
                template_id: template_id?,
                template_version: version?,
                email_address: address?,
                personalisation: values?,
                email_reply_to: reply_to?,
                unsubscribe_url: unsubscribe?,
                fallback: fallback?,
                options: opts?,
            })
        })();
        let send = v.finish_with(send)?;
        let notification = self
            .service
            .send_email(&sender(&caller), send)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SendEmailResponse {
            notification: Some(notification_to_pb(&notification)),
        }))
    }

    async fn send_sms(&self, request: Request<pb::SendSmsRequest>) -> Reply<pb::SendSmsResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let template_id = v.check(
            "template_id",
            parse_id(TEMPLATE_ID_PREFIX, &req.template_id),
        );
        let version = v.check("template_version", parse_version(req.template_version));
        let phone = v.check(
            "phone_number",
            parse_phone_number(&req.phone_number).map_err(str::to_owned),
        );
        let values = parse_personalisation(&req.personalisation, "personalisation", &mut v);
        let opts = options(
            &mut v,
            &req.reference,
            req.scheduled_time.as_ref(),
            &req.idempotency_key,
        );
        let sender_id = sender_id(&mut v, &req.sender_id);
        let send = (|| {
            Some(SmsSend {
                template_id: template_id?,
                template_version: version?,
                phone_number: phone?,
                personalisation: values?,
                sender_id: sender_id?,
                options: opts?,
            })
        })();
        let send = v.finish_with(send)?;
        let notification = self
            .service
            .send_sms(&sender(&caller), send)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SendSmsResponse {
            notification: Some(notification_to_pb(&notification)),
        }))
    }

    async fn send_batch(
        &self,
        request: Request<pb::SendBatchRequest>,
    ) -> Reply<pb::SendBatchResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let template_id = v.check(
            "template_id",
            parse_id(TEMPLATE_ID_PREFIX, &req.template_id),
        );
        let version = v.check("template_version", parse_version(req.template_version));
        let channel = v.check("channel", parse_channel(req.channel));
        let opts = options(
            &mut v,
            "",
            req.scheduled_time.as_ref(),
            &req.idempotency_key,
        );
        let reply_to = email_reply_to(&mut v, &req.email_reply_to);
        let sender_id = sender_id(&mut v, &req.sender_id);
        if req.recipients.is_empty() || req.recipients.len() > MAX_BATCH_ROWS {
            v.add(
                "recipients",
                format!("must have 1 to {MAX_BATCH_ROWS} rows"),
            );
        }
        let mut rows = Vec::with_capacity(req.recipients.len().min(MAX_BATCH_ROWS));
        let mut rows_ok = req.recipients.len() <= MAX_BATCH_ROWS;
        if rows_ok {
            for (i, row) in req.recipients.iter().enumerate() {
                let values = parse_personalisation(
                    &row.personalisation,
                    &format!("recipients[{i}].personalisation"),
                    &mut v,
                );
                let reference = v.check(
                    &format!("recipients[{i}].reference"),
                    parse_reference(&row.reference),
                );
                let unsubscribe = if row.unsubscribe_url.is_empty() {
                    Some(String::new())
                } else {
                    v.check(
                        &format!("recipients[{i}].unsubscribe_url"),
                        parse_url(&row.unsubscribe_url, false),
                    )
                };
                match (values, reference, unsubscribe) {
                    (Some(personalisation), Some(reference), Some(unsubscribe_url)) => {
                        rows.push(BatchRowSend {
                            // Parsed with the template's channel, below.
                            recipient: row.recipient.clone(),
                            personalisation,
                            reference,
                            unsubscribe_url,
                        })
                    }
                    _ => rows_ok = false,
                }
            }
        }
        let send = (|| {
            Some(BatchSend {
                template_id: template_id?,
                template_version: version?,
                channel: channel?,
                rows: rows_ok.then_some(rows)?,
                email_reply_to: reply_to?,
                sender_id: sender_id?,
                options: opts?,
            })
        })();
        let send = v.finish_with(send)?;
        let view = self
            .service
            .send_batch(&sender(&caller), send)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SendBatchResponse {
            batch: Some(batch_to_pb(&view)),
        }))
    }

    async fn get_notification(
        &self,
        request: Request<pb::GetNotificationRequest>,
    ) -> Reply<pb::GetNotificationResponse> {
        let caller = authorised(&request, &[Scope::NotificationsRead])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check(
            "notification_id",
            parse_id(NOTIFICATION_ID_PREFIX, &req.notification_id),
        );
        let id = v.finish_with(id)?;
        let n = self
            .service
            .get_notification(&sender(&caller), &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetNotificationResponse {
            notification: Some(notification_to_pb(&n)),
        }))
    }

    async fn list_notifications(
        &self,
        request: Request<pb::ListNotificationsRequest>,
    ) -> Reply<pb::ListNotificationsResponse> {
        let caller = authorised(&request, &[Scope::NotificationsRead])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let mut filter = NotificationFilter::default();
        for (i, raw) in req.statuses.iter().enumerate() {
            match status_from_pb(*raw) {
                Some(status) => filter.statuses.push(status),
                None => v.add(format!("statuses[{i}]"), "is not a notification status"),
            }
        }
        filter.statuses.sort();
        filter.statuses.dedup();
        match pb::Channel::try_from(req.channel) {
            Ok(pb::Channel::Unspecified) => {}
            Ok(pb::Channel::Email) => filter.channel = Some(Channel::Email),
            Ok(pb::Channel::Sms) => filter.channel = Some(Channel::Sms),
            Err(_) => v.add(
                "channel",
                "must be CHANNEL_EMAIL, CHANNEL_SMS or unspecified",
            ),
        }
        if !req.template_id.is_empty() {
            filter.template_id = v.check(
                "template_id",
                parse_id(TEMPLATE_ID_PREFIX, &req.template_id),
            );
        }
        if !req.reference.is_empty() {
            filter.reference = v.check("reference", parse_reference(&req.reference));
        }
        if !req.batch_id.is_empty() {
            filter.batch_id = v.check("batch_id", parse_id(BATCH_ID_PREFIX, &req.batch_id));
        }
        if let Some(range) = &req.create_time_range {
            filter.created_from = v
                .check(
                    "create_time_range.start_time",
                    parse_time(range.start_time.as_ref()),
                )
                .flatten();
            filter.created_to = v
                .check(
                    "create_time_range.end_time",
                    parse_time(range.end_time.as_ref()),
                )
                .flatten();
        }
        let filters = format!("{filter:?}");
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, &filters, NOTIFICATION_ID_PREFIX),
        );
        let (page_size, cursor) = v.finish_with(page_size.zip(cursor))?;
        let page = self
            .service
            .list_notifications(&sender(&caller), &filter, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListNotificationsResponse {
            notifications: page.items.iter().map(notification_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }

    async fn get_batch(
        &self,
        request: Request<pb::GetBatchRequest>,
    ) -> Reply<pb::GetBatchResponse> {
        let caller = authorised(&request, &[Scope::NotificationsRead])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("batch_id", parse_id(BATCH_ID_PREFIX, &req.batch_id));
        let id = v.finish_with(id)?;
        let view = self
            .service
            .get_batch(&sender(&caller), &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetBatchResponse {
            batch: Some(batch_to_pb(&view)),
        }))
    }

    async fn cancel_notification(
        &self,
        request: Request<pb::CancelNotificationRequest>,
    ) -> Reply<pb::CancelNotificationResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check(
            "notification_id",
            parse_id(NOTIFICATION_ID_PREFIX, &req.notification_id),
        );
        let id = v.finish_with(id)?;
        let n = self
            .service
            .cancel_notification(&sender(&caller), &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CancelNotificationResponse {
            notification: Some(notification_to_pb(&n)),
        }))
    }

    async fn cancel_batch(
        &self,
        request: Request<pb::CancelBatchRequest>,
    ) -> Reply<pb::CancelBatchResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let id = v.check("batch_id", parse_id(BATCH_ID_PREFIX, &req.batch_id));
        let id = v.finish_with(id)?;
        let view = self
            .service
            .cancel_batch(&sender(&caller), &id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CancelBatchResponse {
            batch: Some(batch_to_pb(&view)),
        }))
    }

    async fn watch_notification_events(
        &self,
        request: Request<pb::WatchNotificationEventsRequest>,
    ) -> Reply<EventStream> {
        let caller = authorised(&request, &[Scope::NotificationsRead])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let mut statuses = Vec::new();
        for (i, raw) in req.statuses.iter().enumerate() {
            match status_from_pb(*raw) {
                Some(status) => statuses.push(status),
                None => v.add(format!("statuses[{i}]"), "is not a notification status"),
            }
        }
        let cursor = v.check("cursor", decode_event_cursor(&req.cursor));
        let cursor = v.finish_with(cursor)?;
        let db = self.service.db.clone();
        let start = match cursor {
            Some((position, time)) => {
                if time < now_micros() - 7 * 24 * 3600 * 1_000_000 {
                    return Err(ApiError::OutOfRange(
                        "the cursor is older than the 7 days events are kept".to_owned(),
                    )
                    .into());
                }
                position
            }
            None => queue::events_head(&db).await.map_err(ApiError::from)?,
        };
        let who = sender(&caller);
        let signals = self.service.signals.clone();
        let poll = self.poll_interval;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let mut position = start;
            loop {
                let events = match queue::events_after(
                    &db,
                    &who.agency_id,
                    who.environment,
                    position,
                    EVENT_PAGE,
                )
                .await
                {
                    Ok(events) => events,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(ApiError::from(e)))).await;
                        return;
                    }
                };
                let full = i64::try_from(events.len()).unwrap_or(0) == EVENT_PAGE;
                for (at, event) in events {
                    position = at;
                    if !statuses.is_empty() && !statuses.contains(&event.status) {
                        continue;
                    }
                    let message = pb::WatchNotificationEventsResponse {
                        event: Some(event_to_pb(&event, at)),
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return; // the client went away
                    }
                }
                if full {
                    continue;
                }
                tokio::select! {
                    () = signals.events.notified() => {
                        // Let the writer's transaction settle on PostgreSQL.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    () = tokio::time::sleep(poll) => {}
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Cursors are `tx.seq.micros`, base64url-wrapped like page tokens.
fn encode_event_cursor(position: (i64, i64), time: i64) -> String {
    encode_page_token(&format!("{}.{}.{}", position.0, position.1, time), "events")
}

/// A stream position `(tx, seq)` and the event's time.
type EventCursor = ((i64, i64), i64);

fn decode_event_cursor(raw: &str) -> Result<Option<EventCursor>, String> {
    let Some(text) = decode_page_token(raw, "events")
        .map_err(|_| "is not a cursor of this stream".to_owned())?
    else {
        return Ok(None);
    };
    let parts: Vec<i64> = text
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .map_err(|_| "is not a cursor of this stream".to_owned())?;
    match parts[..] {
        [tx, seq, time] => Ok(Some(((tx, seq), time))),
        _ => Err("is not a cursor of this stream".to_owned()),
    }
}

#[tonic::async_trait]
impl pb::callback_service_server::CallbackService for CallbackApi {
    async fn set_delivery_callback(
        &self,
        request: Request<pb::SetDeliveryCallbackRequest>,
    ) -> Reply<pb::SetDeliveryCallbackResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        let req = request.into_inner();
        let mut v = Violations::new();
        // Live: https to a public host. Sandbox: also http(s) to loopback.
        // Development (`allow_insecure`): anything.
        let loopback = atiende_platform::net::is_loopback_url(&req.url);
        let allow_http =
            self.allow_insecure || (caller.environment == Environment::Sandbox && loopback);
        let url = v.check("url", parse_url(&req.url, allow_http));
        let acceptable = self.allow_insecure
            || atiende_platform::net::is_public_url(&req.url)
            || (caller.environment == Environment::Sandbox && loopback);
        if url.is_some() && !acceptable {
            v.add(
                "url",
                "must name a public host (sandbox clients may also use localhost)",
            );
        }
        let token = &req.bearer_token;
        if !(10..=255).contains(&token.len()) || !token.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            v.add(
                "bearer_token",
                "must be 10 to 255 printable ASCII characters",
            );
        }
        let url = v.finish_with(url)?;
        let now = now_micros();
        queue::set_callback(
            &self.service.db,
            &caller.agency_id,
            caller.environment,
            &url,
            token,
            now,
        )
        .await
        .map_err(ApiError::from)?;
        Ok(Response::new(pb::SetDeliveryCallbackResponse {
            callback: Some(pb::DeliveryCallback {
                url,
                update_time: Some(timestamp(now)),
            }),
        }))
    }

    async fn get_delivery_callback(
        &self,
        request: Request<pb::GetDeliveryCallbackRequest>,
    ) -> Reply<pb::GetDeliveryCallbackResponse> {
        let caller = authorised(&request, &[Scope::NotificationsRead])?;
        let (url, _, update_time) =
            queue::get_callback(&self.service.db, &caller.agency_id, caller.environment)
                .await
                .map_err(ApiError::from)?
                .ok_or(ApiError::NotFound("delivery callback"))?;
        Ok(Response::new(pb::GetDeliveryCallbackResponse {
            callback: Some(pb::DeliveryCallback {
                url,
                update_time: Some(timestamp(update_time)),
            }),
        }))
    }

    async fn delete_delivery_callback(
        &self,
        request: Request<pb::DeleteDeliveryCallbackRequest>,
    ) -> Reply<pb::DeleteDeliveryCallbackResponse> {
        let caller = authorised(&request, &[Scope::NotificationsSend])?;
        queue::delete_callback(&self.service.db, &caller.agency_id, caller.environment)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::DeleteDeliveryCallbackResponse {}))
    }
}

fn status_from_pb(raw: i32) -> Option<domain::Status> {
    use domain::Status as S;
    Some(match pb::NotificationStatus::try_from(raw).ok()? {
        pb::NotificationStatus::Unspecified => return None,
        pb::NotificationStatus::Created => S::Created,
        pb::NotificationStatus::Sending => S::Sending,
        pb::NotificationStatus::Delivered => S::Delivered,
        pb::NotificationStatus::PermanentFailure => S::PermanentFailure,
        pb::NotificationStatus::TemporaryFailure => S::TemporaryFailure,
        pb::NotificationStatus::TechnicalFailure => S::TechnicalFailure,
        pb::NotificationStatus::Sent => S::Sent,
        pb::NotificationStatus::Cancelled => S::Cancelled,
    })
}

pub(crate) fn status_to_pb(status: domain::Status) -> pb::NotificationStatus {
    use domain::Status as S;
    match status {
        S::Created => pb::NotificationStatus::Created,
        S::Sending => pb::NotificationStatus::Sending,
        S::Delivered => pb::NotificationStatus::Delivered,
        S::PermanentFailure => pb::NotificationStatus::PermanentFailure,
        S::TemporaryFailure => pb::NotificationStatus::TemporaryFailure,
        S::TechnicalFailure => pb::NotificationStatus::TechnicalFailure,
        S::Sent => pb::NotificationStatus::Sent,
        S::Cancelled => pb::NotificationStatus::Cancelled,
    }
}

fn channel_to_pb(channel: Channel) -> pb::Channel {
    match channel {
        Channel::Email => pb::Channel::Email,
        Channel::Sms => pb::Channel::Sms,
    }
}

fn environment_to_pb(environment: Environment) -> atiende_proto::common::v1::Environment {
    match environment {
        Environment::Sandbox => atiende_proto::common::v1::Environment::Sandbox,
        Environment::Live => atiende_proto::common::v1::Environment::Live,
    }
}

pub(crate) fn notification_to_pb(n: &Notification) -> pb::Notification {
    pb::Notification {
        notification_id: n.notification_id.clone(),
        channel: channel_to_pb(n.channel).into(),
        status: status_to_pb(n.status).into(),
        template_id: n.template_id.clone(),
        template_version: n.template_version,
        recipient: n.recipient.clone(),
        reference: n.reference.clone(),
        batch_id: n.batch_id.clone().unwrap_or_default(),
        subject: n.subject.clone(),
        body: n.body.clone(),
        fragment_count: n.fragment_count,
        email_reply_to: n.email_reply_to.clone(),
        unsubscribe_url: n.unsubscribe_url.clone(),
        sender_id: n.sender_id.clone(),
        fallback_notification_id: n.fallback_notification_id.clone().unwrap_or_default(),
        fallback_for_notification_id: n.fallback_for_notification_id.clone().unwrap_or_default(),
        environment: environment_to_pb(n.environment).into(),
        create_time: Some(timestamp(n.create_time)),
        scheduled_time: n.scheduled_time.map(timestamp),
        send_time: n.send_time.map(timestamp),
        complete_time: n.complete_time.map(timestamp),
        cancel_time: n.cancel_time.map(timestamp),
        update_time: Some(timestamp(n.update_time)),
    }
}

fn event_to_pb(event: &Event, position: (i64, i64)) -> pb::NotificationEvent {
    let mut notification = notification_to_pb(&event.notification);
    notification.status = status_to_pb(event.status).into();
    pb::NotificationEvent {
        event_id: event.event_id.clone(),
        cursor: encode_event_cursor(position, event.occur_time),
        occur_time: Some(timestamp(event.occur_time)),
        notification: Some(notification),
    }
}

fn batch_to_pb(view: &BatchView) -> pb::Batch {
    let b = &view.batch;
    pb::Batch {
        batch_id: b.batch_id.clone(),
        channel: Channel::parse(&b.channel)
            .map(channel_to_pb)
            .unwrap_or(pb::Channel::Unspecified)
            .into(),
        template_id: b.template_id.clone(),
        template_version: i32::try_from(b.template_version).unwrap_or(0),
        recipient_count: i32::try_from(b.recipient_count).unwrap_or(i32::MAX),
        status_counts: view
            .counts
            .iter()
            .map(|(status, count)| pb::BatchStatusCount {
                status: status_to_pb(*status).into(),
                count: i32::try_from(*count).unwrap_or(i32::MAX),
            })
            .collect(),
        environment: Environment::parse(&b.environment)
            .map(environment_to_pb)
            .unwrap_or(atiende_proto::common::v1::Environment::Unspecified)
            .into(),
        create_time: Some(timestamp(b.create_time)),
        scheduled_time: b.scheduled_time.map(timestamp),
        complete_time: view.complete_time.map(timestamp),
        cancel_time: b.cancel_time.map(timestamp),
    }
}
