//! Webhook endpoints and their deliveries.

use super::*;

#[derive(sqlx::FromRow)]
struct EndpointRow {
    webhook_endpoint_id: String,
    agency_id: String,
    environment: String,
    url: String,
    event_types: String,
    description: String,
    create_time: i64,
}

impl TryFrom<EndpointRow> for WebhookEndpoint {
    type Error = PaymentsError;

    fn try_from(row: EndpointRow) -> Result<Self, Self::Error> {
        Ok(WebhookEndpoint {
            webhook_endpoint_id: row.webhook_endpoint_id,
            tenant: tenant(row.agency_id, &row.environment)?,
            url: row.url,
            event_types: row
                .event_types
                .split(',')
                .filter(|t| !t.is_empty())
                .map(|t| EventType::parse(t).ok_or_else(|| corrupt("webhook event type")))
                .collect::<Result<_, _>>()?,
            description: row.description,
            create_time: row.create_time,
        })
    }
}

/// How creating an endpoint ended.
pub enum EndpointInsert {
    Created,
    /// A concurrent request with the same key won: nothing was written.
    KeyTaken,
    /// The tenant has the most endpoints allowed: nothing was written.
    TooMany,
}

pub async fn create_webhook_endpoint(
    db: &Database,
    endpoint: &WebhookEndpoint,
    signing_secret: &str,
    idempotency: Option<(&str, &str)>,
) -> Result<EndpointInsert, PaymentsError> {
    let types = name_set(endpoint.event_types.iter().map(|t| t.as_str()));
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        if let Some((key, hash)) = idempotency
            && !claim_key!(tx, &endpoint.tenant, "CreateWebhookEndpoint", key, hash, &endpoint.webhook_endpoint_id, endpoint.create_time)
        {
            return Ok(EndpointInsert::KeyTaken);
        }
        // The count is taken by an upsert of the tenant's counter row, which
        // concurrent creates update one after the other (the row is locked
        // until commit): a check-then-insert would let two of them both
        // see room for the last endpoint.
        let counted = sqlx::query(
            "INSERT INTO webhook_endpoint_counts (agency_id, environment, endpoints) \
             VALUES ($1, $2, 1) ON CONFLICT (agency_id, environment) \
             DO UPDATE SET endpoints = webhook_endpoint_counts.endpoints + 1 \
             WHERE webhook_endpoint_counts.endpoints < $3",
        )
        .bind(&endpoint.tenant.agency_id)
        .bind(endpoint.tenant.environment.as_str())
        .bind(MAX_ENDPOINTS_PER_ENVIRONMENT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if counted == 0 {
            return Ok(EndpointInsert::TooMany);
        }
        sqlx::query(
            "INSERT INTO webhook_endpoints (webhook_endpoint_id, agency_id, environment, url, \
             event_types, description, signing_secret, create_time) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&endpoint.webhook_endpoint_id)
        .bind(&endpoint.tenant.agency_id)
        .bind(endpoint.tenant.environment.as_str())
        .bind(&endpoint.url)
        .bind(&types)
        .bind(&endpoint.description)
        .bind(signing_secret)
        .bind(endpoint.create_time)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    });
    Ok(EndpointInsert::Created)
}

#[derive(sqlx::FromRow)]
struct EndpointWithSecret {
    #[sqlx(flatten)]
    endpoint: EndpointRow,
    signing_secret: String,
}

/// An endpoint and its signing secret.
pub async fn get_webhook_endpoint(
    db: &Database,
    tenant: &Tenant,
    webhook_endpoint_id: &str,
) -> Result<Option<(WebhookEndpoint, String)>, PaymentsError> {
    let row: Option<EndpointWithSecret> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT webhook_endpoint_id, agency_id, environment, url, event_types, description, \
             signing_secret, create_time FROM webhook_endpoints \
             WHERE webhook_endpoint_id = $1 AND agency_id = $2 AND environment = $3",
        )
        .bind(webhook_endpoint_id)
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .fetch_optional(pool)
        .await?
    });
    row.map(|row| Ok((WebhookEndpoint::try_from(row.endpoint)?, row.signing_secret)))
        .transpose()
}

/// The tenant's endpoints, newest first, after the cursor.
pub async fn list_webhook_endpoints(
    db: &Database,
    tenant: &Tenant,
    before_id: Option<&str>,
    limit: i64,
) -> Result<Vec<WebhookEndpoint>, PaymentsError> {
    let rows: Vec<EndpointRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT webhook_endpoint_id, agency_id, environment, url, event_types, description, \
             create_time FROM webhook_endpoints WHERE agency_id = $1 AND environment = $2 \
             AND ($3 IS NULL OR webhook_endpoint_id < $3) \
             ORDER BY webhook_endpoint_id DESC LIMIT $4",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(before_id)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(WebhookEndpoint::try_from).collect()
}

/// Deletes an endpoint and the deliveries it is still owed; false when
/// the tenant has no such endpoint.
pub async fn delete_webhook_endpoint(
    db: &Database,
    tenant: &Tenant,
    webhook_endpoint_id: &str,
) -> Result<bool, PaymentsError> {
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let deleted = sqlx::query(
            "DELETE FROM webhook_endpoints \
             WHERE webhook_endpoint_id = $1 AND agency_id = $2 AND environment = $3",
        )
        .bind(webhook_endpoint_id)
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if deleted == 0 {
            return Ok(false);
        }
        sqlx::query(
            "UPDATE webhook_endpoint_counts SET endpoints = endpoints - 1 \
             WHERE agency_id = $1 AND environment = $2",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE webhook_endpoint_id = $1 AND state = 'pending'")
            .bind(webhook_endpoint_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    });
    Ok(true)
}

/// A delivery that is due.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DueDelivery {
    pub event_id: String,
    /// The event's sequence, by which it is read (`None` only for a
    /// delivery recorded before the column existed whose event is gone).
    pub event_sequence: Option<i64>,
    pub webhook_endpoint_id: String,
    pub attempts: i64,
    pub next_attempt_time: i64,
    pub create_time: i64,
}

/// Deliveries of every tenant due at `now`, most overdue first.
pub async fn due_deliveries(
    db: &Database,
    now: i64,
    limit: i64,
) -> Result<Vec<DueDelivery>, PaymentsError> {
    let rows = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT event_id, event_sequence, webhook_endpoint_id, attempts, next_attempt_time, \
             create_time FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_time <= $1 \
             ORDER BY next_attempt_time LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    Ok(rows)
}

/// Takes a due delivery for one attempt, until `lease_until`, if no one
/// else took it first (compare-and-set on its next attempt time).
pub async fn claim_delivery(
    db: &Database,
    due: &DueDelivery,
    lease_until: i64,
    now: i64,
) -> Result<bool, PaymentsError> {
    let claimed = on_db!(db, pool => {
        sqlx::query(
            "UPDATE webhook_deliveries SET next_attempt_time = $1, attempts = attempts + 1, \
             update_time = $2 WHERE event_id = $3 AND webhook_endpoint_id = $4 \
             AND state = 'pending' AND next_attempt_time = $5",
        )
        .bind(lease_until)
        .bind(now)
        .bind(&due.event_id)
        .bind(&due.webhook_endpoint_id)
        .bind(due.next_attempt_time)
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(claimed == 1)
}

/// Where a delivery goes: the endpoint's URL and secret, and the event.
pub async fn delivery_target(
    db: &Database,
    due: &DueDelivery,
) -> Result<Option<(String, String, PaymentEvent)>, PaymentsError> {
    let endpoint: Option<(String, String)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT url, signing_secret FROM webhook_endpoints WHERE webhook_endpoint_id = $1",
        )
        .bind(&due.webhook_endpoint_id)
        .fetch_optional(pool)
        .await?
    });
    let Some((url, secret)) = endpoint else {
        return Ok(None);
    };
    let row: Option<EventRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(select_events!(), "WHERE e.sequence = $1"))
            .bind(due.event_sequence)
            .fetch_optional(pool)
            .await?
    });
    row.map(|row| Ok((url, secret, PaymentEvent::try_from(row)?)))
        .transpose()
}

/// Records an attempt's outcome: delivered, failed for good, or pending
/// until `next_attempt_time`.
pub async fn finish_delivery(
    db: &Database,
    due: &DueDelivery,
    state: &str,
    next_attempt_time: i64,
    last_response: &str,
    now: i64,
) -> Result<(), PaymentsError> {
    on_db!(db, pool => {
        sqlx::query(
            "UPDATE webhook_deliveries SET state = $1, next_attempt_time = $2, last_response = $3, \
             update_time = $4 WHERE event_id = $5 AND webhook_endpoint_id = $6",
        )
        .bind(state)
        .bind(next_attempt_time)
        .bind(last_response)
        .bind(now)
        .bind(&due.event_id)
        .bind(&due.webhook_endpoint_id)
        .execute(pool)
        .await?;
    });
    Ok(())
}
