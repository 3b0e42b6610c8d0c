//! Webhook endpoints and the webhook job.

use super::*;

impl PaymentsService {
    /// Registers a webhook endpoint and returns it with its signing
    /// secret. With an idempotency key, a replay returns the same endpoint
    /// and secret.
    pub async fn create_webhook_endpoint(
        &self,
        tenant: &Tenant,
        url: String,
        event_types: Vec<EventType>,
        description: String,
        idempotency_key: Option<&str>,
    ) -> Result<(WebhookEndpoint, String), PaymentsError> {
        let mut parts: Vec<&str> = vec![&url, &description];
        parts.extend(event_types.iter().map(|t| t.as_str()));
        let hash = request_hash(&parts);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay_endpoint(tenant, key, hash).await?
        {
            return Ok(original);
        }
        let endpoint = WebhookEndpoint {
            webhook_endpoint_id: new_id(WEBHOOK_ENDPOINT_ID_PREFIX),
            tenant: tenant.clone(),
            url,
            event_types,
            description,
            create_time: now_micros(),
        };
        let secret = new_signing_secret();
        match store::create_webhook_endpoint(&self.db, &endpoint, &secret, idempotency).await? {
            EndpointInsert::Created => Ok((endpoint, secret)),
            EndpointInsert::TooMany => Err(PaymentsError::TooManyWebhookEndpoints),
            EndpointInsert::KeyTaken => {
                let (key, hash) = idempotency.ok_or(PaymentsError::Corrupt("idempotency"))?;
                self.replay_endpoint(tenant, key, hash)
                    .await?
                    .ok_or(PaymentsError::Corrupt("idempotency record"))
            }
        }
    }

    async fn replay_endpoint(
        &self,
        tenant: &Tenant,
        key: &str,
        hash: &str,
    ) -> Result<Option<(WebhookEndpoint, String)>, PaymentsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, tenant, "CreateWebhookEndpoint", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        // Deleted since: the key still may not be used for another.
        store::get_webhook_endpoint(&self.db, tenant, &record.resource_id)
            .await?
            .map(Some)
            .ok_or(PaymentsError::WebhookEndpointNotFound)
    }

    pub async fn list_webhook_endpoints(
        &self,
        tenant: &Tenant,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<WebhookEndpoint>, PaymentsError> {
        let items =
            store::list_webhook_endpoints(&self.db, tenant, cursor, page_size.fetch_limit())
                .await?;
        Ok(Page::from_overfetch(items, page_size, |e| {
            e.webhook_endpoint_id.clone()
        }))
    }

    pub async fn delete_webhook_endpoint(
        &self,
        tenant: &Tenant,
        webhook_endpoint_id: &str,
    ) -> Result<(), PaymentsError> {
        if store::delete_webhook_endpoint(&self.db, tenant, webhook_endpoint_id).await? {
            Ok(())
        } else {
            Err(PaymentsError::WebhookEndpointNotFound)
        }
    }

    /// The webhook job: attempts every delivery due at `now` once (each
    /// taken under a lease, so instances never send one twice at once) and
    /// schedules retries with exponential backoff for up to 3 days after
    /// the event. Returns how many were delivered. `now` is a parameter so
    /// tests can drive retries without waiting.
    pub async fn deliver_due_webhooks(&self, now: i64) -> Result<usize, PaymentsError> {
        const BATCH: i64 = 50;
        const LEASE_MICROS: i64 = 60 * 1_000_000;
        let mut delivered = 0;
        for due in store::due_deliveries(&self.db, now, BATCH).await? {
            if !store::claim_delivery(&self.db, &due, now.saturating_add(LEASE_MICROS), now).await?
            {
                continue;
            }
            let attempts = due.attempts.saturating_add(1);
            let Some((url, secret, event)) = store::delivery_target(&self.db, &due).await? else {
                store::finish_delivery(&self.db, &due, "failed", now, "endpoint deleted", now)
                    .await?;
                continue;
            };
            let signed_at = now_micros().div_euclid(1_000_000);
            let live = event.payment.tenant.environment == Environment::Live;
            let client = if live { &self.http_live } else { &self.http };
            let outcome = if live && !webhook::is_public_url(&url) {
                DeliveryOutcome::Failed("not a public address".to_owned())
            } else {
                webhook::deliver(
                    client,
                    &url,
                    &secret,
                    signed_at,
                    webhook::event_json(&event),
                )
                .await
            };
            match outcome {
                DeliveryOutcome::Delivered => {
                    delivered += 1;
                    store::finish_delivery(&self.db, &due, "delivered", now, "delivered", now)
                        .await?;
                }
                DeliveryOutcome::Failed(why) => {
                    let next = now.saturating_add(retry_delay_micros(attempts));
                    let give_up = next > due.create_time.saturating_add(DELIVERY_WINDOW_MICROS);
                    let state = if give_up { "failed" } else { "pending" };
                    tracing::info!(
                        event_id = %due.event_id,
                        webhook_endpoint_id = %due.webhook_endpoint_id,
                        attempts,
                        outcome = %why,
                        "webhook delivery failed"
                    );
                    store::finish_delivery(&self.db, &due, state, next, &why, now).await?;
                }
            }
        }
        Ok(delivered)
    }
}
