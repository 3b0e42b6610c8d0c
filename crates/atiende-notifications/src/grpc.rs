//! The gRPC adapter. The notifications RPCs land with the notifications issue (templates, email over SMTP, SMS, queue, callbacks);
//! until then every RPC answers UNIMPLEMENTED, after authentication, so
//! callers can already obtain tokens and wire their clients.

use atiende_proto::notifications::v1 as pb;

#[derive(Clone)]
pub struct TemplateApi;
#[derive(Clone)]
pub struct NotificationApi;
#[derive(Clone)]
pub struct CallbackApi;

impl pb::template_service_server::TemplateService for TemplateApi {}
impl pb::notification_service_server::NotificationService for NotificationApi {}
impl pb::callback_service_server::CallbackService for CallbackApi {}
