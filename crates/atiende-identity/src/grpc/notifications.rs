//! The notifications service's contract, as a client: email verification
//! codes sent like any agency's email. Its prost types stay in this
//! adapter.

use atiende_proto::notifications::v1 as notify;
use secrecy::{ExposeSecret, SecretString};

use crate::service::IdentityService;
use crate::service::email_codes::{EmailCode, EmailCodeSender, SendFuture};

/// Through the notifications service's gRPC API, as any agency would: a
/// client of the operating agency (holding `notifications.send`) gets a
/// token from this identity service and sends an email template with the
/// placeholders `code` and `language` (`es` or `en`).
pub struct NotificationsEmailCodes {
    channel: tonic::transport::Channel,
    client_id: String,
    client_secret: SecretString,
    template_id: String,
}

impl NotificationsEmailCodes {
    /// Connects lazily to the notifications endpoint (`http://host:port`).
    pub fn new(
        endpoint: &str,
        client_id: String,
        client_secret: SecretString,
        template_id: String,
    ) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| format!("notifications endpoint: {e}"))?
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(10))
            .connect_lazy();
        Ok(Self {
            channel,
            client_id,
            client_secret,
            template_id,
        })
    }
}

impl EmailCodeSender for NotificationsEmailCodes {
    fn send<'a>(&'a self, service: &'a IdentityService, code: EmailCode<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let scopes = [atiende_platform::auth::Scope::NotificationsSend]
                .into_iter()
                .collect();
            let token = service
                .issue_token(
                    &self.client_id,
                    self.client_secret.expose_secret(),
                    Some(scopes),
                )
                .await
                .map_err(|e| format!("token for notifications: {e}"))?;
            let text = |value: &str| notify::PersonalisationValue {
                kind: Some(notify::personalisation_value::Kind::Text(value.to_owned())),
            };
            let mut request = tonic::Request::new(notify::SendEmailRequest {
                template_id: self.template_id.clone(),
                email_address: code.to.as_str().to_owned(),
                personalisation: [
                    ("code".to_owned(), text(code.code)),
                    ("language".to_owned(), text(code.locale.as_str())),
                ]
                .into(),
                reference: "email-verification".to_owned(),
                ..Default::default()
            });
            let bearer = format!("Bearer {}", token.access_token);
            let value = bearer
                .parse()
                .map_err(|_| "token not usable as a header".to_owned())?;
            request.metadata_mut().insert("authorization", value);
            notify::notification_service_client::NotificationServiceClient::new(
                self.channel.clone(),
            )
            .send_email(request)
            .await
            .map_err(|status| format!("notifications answered {:?}", status.code()))?;
            Ok(())
        })
    }
}
