//! Delivery of email verification codes. The login pages ask the
//! configured [`EmailCodeSender`]: in `atiende dev` the code is printed to
//! the log ([`LogEmailCodes`]); a deployment sends it through the
//! notifications service (`grpc::notifications::NotificationsEmailCodes`,
//! the only place that speaks its contract; see `docs/identity.md`). Only the code's digest
//! is kept (`email_verifications`).

use std::future::Future;
use std::pin::Pin;

use crate::domain::citizen::EmailAddress;
use crate::service::IdentityService;
use crate::service::oidc::Locale;

/// A code to send, and to whom.
pub struct EmailCode<'a> {
    pub to: &'a EmailAddress,
    /// Six digits.
    pub code: &'a str,
    pub locale: Locale,
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>>;

/// Sends a verification code to a citizen's email address (the identity
/// service is passed in, for senders that need a token from it).
pub trait EmailCodeSender: Send + Sync {
    fn send<'a>(&'a self, service: &'a IdentityService, code: EmailCode<'a>) -> SendFuture<'a>;
}

/// For development: the code goes to the log (never use in production).
pub struct LogEmailCodes;

impl EmailCodeSender for LogEmailCodes {
    fn send<'a>(&'a self, _service: &'a IdentityService, code: EmailCode<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            tracing::info!(
                target: "atiende::dev",
                code = code.code,
                "email verification code (development only: printed, not sent)"
            );
            Ok(())
        })
    }
}

/// No delivery configured: registration from the pages is refused
/// (the service answers that it is unavailable) rather than leaving a
/// citizen waiting for a code that never comes.
pub struct NoEmailCodes;

impl EmailCodeSender for NoEmailCodes {
    fn send<'a>(&'a self, _service: &'a IdentityService, _code: EmailCode<'a>) -> SendFuture<'a> {
        Box::pin(async { Err("no email code delivery is configured".to_owned()) })
    }
}
