//! Payment events: one payment's, and a tenant's as they are committed.

use super::*;

/// The events of one payment and its refunds, oldest first, after the
/// cursor (a sequence number).
///
/// The tenant is checked on the payment, not on the events: with the
/// tenant's columns of `payment_events` in the condition, PostgreSQL's
/// generic plan (prepared statements) walked the tenant's index
/// (`payment_events_by_tenant`) and filtered on the payment, reading every
/// event of the agency for each call.
pub async fn list_payment_events(
    db: &Database,
    tenant: &Tenant,
    payment_id: &str,
    after_sequence: i64,
    limit: i64,
) -> Result<Vec<PaymentEvent>, PaymentsError> {
    let rows: Vec<EventRow> = on_db!(db, pool => {
        sqlx::query_as(
            concat!(select_events!(), "\
             WHERE e.payment_id = $3 AND p.agency_id = $1 AND p.environment = $2 \
             AND e.sequence > $4 ORDER BY e.sequence LIMIT $5"),
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(payment_id)
        .bind(after_sequence)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(PaymentEvent::try_from).collect()
}

/// The last event sequence number recorded so far (0 when none).
pub async fn last_event_sequence(db: &Database) -> Result<i64, PaymentsError> {
    let last: Option<i64> = on_db!(db, pool => {
        sqlx::query_scalar("SELECT MAX(sequence) FROM payment_events")
            .fetch_one(pool)
            .await?
    });
    Ok(last.unwrap_or(0))
}

/// How far after `after` every event is committed, so that a reader can
/// move its cursor there without skipping one.
///
/// Sequence numbers are taken when an event is inserted, not when its
/// transaction commits: on PostgreSQL, event 7 may become visible before
/// event 6. A gap in the numbers is therefore waited for, until the event
/// after it is `gap_wait_micros` old; then the missing numbers are taken
/// to belong to transactions that rolled back (transactions here last
/// milliseconds). On SQLite writers are serialized and there are no gaps.
pub async fn committed_event_sequence(
    db: &Database,
    after: i64,
    now: i64,
    gap_wait_micros: i64,
) -> Result<i64, PaymentsError> {
    let rows: Vec<(i64, i64)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT sequence, occur_time FROM payment_events WHERE sequence > $1 \
             ORDER BY sequence LIMIT 1000",
        )
        .bind(after)
        .fetch_all(pool)
        .await?
    });
    let mut high = after;
    for (sequence, recorded) in rows {
        if sequence == high.saturating_add(1) || recorded <= now.saturating_sub(gap_wait_micros) {
            high = sequence;
        } else {
            break;
        }
    }
    Ok(high)
}

/// The tenant's events in (`after`, `up_to`], of the given types (a
/// [`name_set`]; empty means all), in recording order.
pub async fn tenant_events(
    db: &Database,
    tenant: &Tenant,
    after: i64,
    up_to: i64,
    types: &[EventType],
    limit: i64,
) -> Result<Vec<PaymentEvent>, PaymentsError> {
    let types = name_set(types.iter().map(|t| t.as_str()));
    let rows: Vec<EventRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(select_events!(), "\
             WHERE e.agency_id = $1 AND e.environment = $2 AND e.sequence > $3 \
             AND e.sequence <= $4 AND ($5 = '' OR $5 LIKE '%,' || e.event_type || ',%') \
             ORDER BY e.sequence LIMIT $6"))
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(after)
        .bind(up_to)
        .bind(&types)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(PaymentEvent::try_from).collect()
}

/// The highest sequence number of the events pruned so far (0 when none
/// was): a cursor before it would skip events, and is refused.
pub async fn events_pruned_through(db: &Database) -> Result<i64, PaymentsError> {
    let value: Option<String> = on_db!(db, pool => {
        sqlx::query_scalar("SELECT value FROM payments_service WHERE key = 'events_pruned_through'")
            .fetch_optional(pool)
            .await?
    });
    value
        .map(|v| v.parse().map_err(|_| corrupt("events_pruned_through")))
        .transpose()
        .map(|v| v.unwrap_or(0))
}

/// Deletes the events recorded before `occurred_before`, oldest first in
/// recording order, up to the first event still within the retention, and
/// the webhook deliveries of that time (they end within 3 days: retention
/// is longer), raising the pruned-through mark first. Returns how many
/// events.
///
/// The oldest events are found by walking the primary key from its start,
/// which holds only what is left to prune, until the first event that is
/// kept. An event recorded out of time order (a later sequence with an
/// earlier time, from another instance's clock) waits until the events
/// before it are old enough too: retention is a minimum.
pub async fn prune_events(db: &Database, occurred_before: i64) -> Result<u64, PaymentsError> {
    let pruned = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO payments_service (key, value) \
             SELECT 'events_pruned_through', CAST(m AS TEXT) FROM (SELECT COALESCE(\
             (SELECT sequence FROM payment_events WHERE occur_time >= $1 \
              ORDER BY sequence LIMIT 1) - 1, \
             (SELECT MAX(sequence) FROM payment_events)) AS m) AS pruned \
             WHERE m IS NOT NULL \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value \
             WHERE CAST(payments_service.value AS BIGINT) < CAST(excluded.value AS BIGINT)",
        )
        .bind(occurred_before)
        .execute(&mut *tx)
        .await?;
        let pruned = sqlx::query(
            "DELETE FROM payment_events WHERE sequence <= (SELECT \
             CAST(value AS BIGINT) FROM payments_service WHERE key = 'events_pruned_through') \
             AND occur_time < $1",
        )
        .bind(occurred_before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("DELETE FROM webhook_deliveries WHERE create_time < $1")
            .bind(occurred_before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        pruned
    });
    Ok(pruned)
}

/// Deletes the idempotency keys claimed before `created_before`. Returns
/// how many.
pub async fn prune_idempotency_keys(
    db: &Database,
    created_before: i64,
) -> Result<u64, PaymentsError> {
    let pruned = on_db!(db, pool => {
        sqlx::query("DELETE FROM idempotency_keys WHERE create_time < $1")
            .bind(created_before)
            .execute(pool)
            .await?
            .rows_affected()
    });
    Ok(pruned)
}
