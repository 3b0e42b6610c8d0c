//! Payment events: one payment's, and a tenant's as they are committed.

use super::*;

/// The events of one payment and its refunds, oldest first, after the
/// cursor (a sequence number).
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
             WHERE e.agency_id = $1 AND e.environment = $2 AND e.payment_id = $3 \
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
