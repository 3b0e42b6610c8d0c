//! `Debug` for the messages that carry secrets or bearer tokens: the secret is
//! replaced by `[redacted]`, so a request logged with `{:?}` leaks nothing.

use std::fmt;

use crate::identity::v1::{
    CreateClientResponse, IntrospectTokenRequest, IssueTokenRequest, IssueTokenResponse,
    RegisterCitizenRequest, RevokeTokenRequest, RotateClientSecretResponse,
};
use crate::payments::v1::SimulateCardSubmissionRequest;

const REDACTED: &str = "[redacted]";

impl fmt::Debug for CreateClientResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreateClientResponse")
            .field("client", &self.client)
            .field("client_secret", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for RotateClientSecretResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotateClientSecretResponse")
            .field("client", &self.client)
            .field("client_secret", &REDACTED)
            .finish()
    }
}

/// Carries a password and personal data: only the national id's scheme
/// shows.
impl fmt::Debug for RegisterCitizenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterCitizenRequest")
            .field(
                "national_id.scheme",
                &self.national_id.as_ref().map(|id| id.scheme),
            )
            .field("given_names", &REDACTED)
            .field("family_names", &REDACTED)
            .field("email", &REDACTED)
            .field("phone_number", &REDACTED)
            .field("password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for IssueTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueTokenRequest")
            .field("client_id", &self.client_id)
            .field("client_secret", &REDACTED)
            .field("scopes", &self.scopes)
            .finish()
    }
}

impl fmt::Debug for IssueTokenResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssueTokenResponse")
            .field("access_token", &REDACTED)
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("expire_time", &self.expire_time)
            .field("scope", &self.scope)
            .finish()
    }
}

impl fmt::Debug for IntrospectTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectTokenRequest")
            .field("token", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for RevokeTokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RevokeTokenRequest")
            .field("token", &REDACTED)
            .finish()
    }
}

/// Test card data only, but card numbers and CVCs are never printed, so
/// that a habit formed in the sandbox cannot leak a real one.
impl fmt::Debug for SimulateCardSubmissionRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimulateCardSubmissionRequest")
            .field("payment_id", &self.payment_id)
            .field("card_number", &REDACTED)
            .field("expiry_month", &self.expiry_month)
            .field("expiry_year", &self.expiry_year)
            .field("cvc", &REDACTED)
            .field("cardholder_name", &REDACTED)
            .finish()
    }
}
