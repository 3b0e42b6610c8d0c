//! The HTTP side: SMS providers POST their delivery receipts here.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Form, Router};

use crate::delivery::Deliverer;
use crate::delivery::sms::receipts_url;

pub fn router(deliverer: Arc<Deliverer>) -> Router {
    Router::new()
        .route("/notifications/v1/sms-receipts/{provider}", post(receipt))
        .with_state(deliverer)
}

/// `POST /notifications/v1/sms-receipts/{provider}`: 204 when taken (or
/// about nothing we wait for), 403 when not authentic, 404 for an unknown
/// provider.
async fn receipt(
    State(deliverer): State<Arc<Deliverer>>,
    Path(provider_name): Path<String>,
    headers: HeaderMap,
    Form(params): Form<Vec<(String, String)>>,
) -> StatusCode {
    let Some(provider) = deliverer.sms.get(&provider_name) else {
        return StatusCode::NOT_FOUND;
    };
    let url = receipts_url(&deliverer.public_url, &provider_name);
    let signature = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok());
    match provider.receipt(&url, signature, &params) {
        Err(_) => {
            tracing::warn!(provider = %provider_name, "SMS receipt refused: bad signature");
            StatusCode::FORBIDDEN
        }
        Ok(None) => StatusCode::NO_CONTENT,
        Ok(Some((reference, status))) => {
            match deliverer
                .apply_receipt(&provider_name, &reference, status)
                .await
            {
                Ok(_) => StatusCode::NO_CONTENT,
                Err(e) => {
                    tracing::warn!(error = %e, "recording an SMS receipt failed");
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }
    }
}
