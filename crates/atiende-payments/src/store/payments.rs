//! Payments: create, read, list, change state, find stale ones.

use super::*;

/// Creates a payment and its `payment_created` event and, when a key is
/// given, claims the key in the same transaction. `Ok(false)` when a
/// concurrent request claimed the key first (nothing was written).
pub async fn create_payment(
    db: &Database,
    p: &Payment,
    idempotency: Option<(&str, &str)>,
) -> Result<bool, PaymentsError> {
    let metadata = serde_json::to_string(&p.new.metadata).map_err(|_| corrupt("metadata"))?;
    on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        if let Some((key, hash)) = idempotency
            && !claim_key!(tx, &p.tenant, "CreatePayment", key, hash, &p.payment_id, p.create_time)
        {
            return Ok(false);
        }
        sqlx::query(concat!(
            "INSERT INTO payments (", payment_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, \
             $25, $26)"
        ))
        .bind(&p.payment_id)
        .bind(&p.tenant.agency_id)
        .bind(p.tenant.environment.as_str())
        .bind(p.new.amount.minor)
        .bind(p.new.amount.currency.code())
        .bind(&p.new.reference)
        .bind(&p.new.description)
        .bind(&p.new.return_url)
        .bind(&metadata)
        .bind(p.new.language.as_str())
        .bind(i64::from(p.new.delayed_capture))
        .bind(p.state.as_str())
        .bind(p.failure_reason.map(FailureReason::as_str))
        .bind(&p.failure_message)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(None::<i64>)
        .bind(None::<i64>)
        .bind(None::<String>)
        .bind(p.refund_submitted_minor)
        .bind(p.fee_minor)
        .bind(&p.page_secret)
        .bind(p.expire_time)
        .bind(p.create_time)
        .bind(p.update_time)
        .execute(&mut *tx)
        .await?;
        insert_event!(tx, EventType::PaymentCreated, p, None);
        tx.commit().await?;
    });
    Ok(true)
}

pub async fn get_payment(
    db: &Database,
    tenant: &Tenant,
    payment_id: &str,
) -> Result<Option<Payment>, PaymentsError> {
    let row: Option<PaymentRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(
            "SELECT ", payment_columns!(), " FROM payments \
             WHERE payment_id = $1 AND agency_id = $2 AND environment = $3"
        ))
        .bind(payment_id)
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .fetch_optional(pool)
        .await?
    });
    row.map(Payment::try_from).transpose()
}

/// A payment by id alone, for the hosted page (which checks the page
/// secret instead of a tenant).
pub async fn get_payment_for_page(
    db: &Database,
    payment_id: &str,
) -> Result<Option<Payment>, PaymentsError> {
    let row: Option<PaymentRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(
            "SELECT ", payment_columns!(), " FROM payments WHERE payment_id = $1"
        ))
        .bind(payment_id)
        .fetch_optional(pool)
        .await?
    });
    row.map(Payment::try_from).transpose()
}

/// ListPayments' filters; every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentFilter {
    pub states: Vec<PaymentState>,
    pub reference: Option<String>,
    pub created_from: Option<i64>,
    pub created_before: Option<i64>,
    pub card_last_four: Option<String>,
}

/// The tenant's payments matching `filter`, newest first (ids are
/// time-ordered), after the cursor.
pub async fn list_payments(
    db: &Database,
    tenant: &Tenant,
    filter: &PaymentFilter,
    before_payment_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Payment>, PaymentsError> {
    let states = name_set(filter.states.iter().map(|s| s.as_str()));
    let rows: Vec<PaymentRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(
            "SELECT ", payment_columns!(), " FROM payments \
             WHERE agency_id = $1 AND environment = $2 \
             AND ($3 = '' OR $3 LIKE '%,' || state || ',%') \
             AND ($4 IS NULL OR reference = $4) \
             AND ($5 IS NULL OR create_time >= $5) \
             AND ($6 IS NULL OR create_time < $6) \
             AND ($7 IS NULL OR card_last_four = $7) \
             AND ($8 IS NULL OR payment_id < $8) \
             ORDER BY payment_id DESC LIMIT $9"
        ))
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(&states)
        .bind(filter.reference.as_deref())
        .bind(filter.created_from)
        .bind(filter.created_before)
        .bind(filter.card_last_four.as_deref())
        .bind(before_payment_id)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(Payment::try_from).collect()
}

/// A change of state, as the state machine allowed it.
pub struct StateChange<'a> {
    pub from: PaymentState,
    pub to: PaymentState,
    pub event: EventType,
    pub reason: Option<FailureReason>,
    pub message: &'a str,
    /// Recorded when the card is submitted.
    pub card: Option<&'a CardSummary>,
    /// Recorded on success.
    pub fee_minor: Option<i64>,
    /// Posted in the same transaction.
    pub postings: Vec<Transaction>,
    pub now: i64,
}

/// Applies `change` if the payment is still in `change.from`, with its
/// event and postings, atomically. `None` when it was not (another request
/// changed it first, or it does not exist): nothing was written.
pub async fn change_state(
    db: &Database,
    tenant: &Tenant,
    payment_id: &str,
    change: &StateChange<'_>,
) -> Result<Option<Payment>, PaymentsError> {
    let card = change.card;
    let payment = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let row: Option<PaymentRow> = sqlx::query_as(concat!(
            "UPDATE payments SET state = $1, failure_reason = $2, failure_message = $3, \
             fee_minor = COALESCE($4, fee_minor), card_brand = COALESCE($5, card_brand), \
             card_first_six = COALESCE($6, card_first_six), \
             card_last_four = COALESCE($7, card_last_four), \
             card_expiry_month = COALESCE($8, card_expiry_month), \
             card_expiry_year = COALESCE($9, card_expiry_year), \
             cardholder_name = COALESCE($10, cardholder_name), update_time = $11 \
             WHERE payment_id = $12 AND agency_id = $13 AND environment = $14 AND state = $15 \
             RETURNING ", payment_columns!()
        ))
        .bind(change.to.as_str())
        .bind(change.reason.map(FailureReason::as_str))
        .bind(change.message)
        .bind(change.fee_minor)
        .bind(card.map(|c| c.brand.as_str()))
        .bind(card.map(|c| c.first_six.as_str()))
        .bind(card.map(|c| c.last_four.as_str()))
        .bind(card.map(|c| i64::from(c.expiry.month)))
        .bind(card.map(|c| i64::from(c.expiry.year)))
        .bind(card.map(|c| c.cardholder_name.as_str()))
        .bind(change.now)
        .bind(payment_id)
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(change.from.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let payment = Payment::try_from(row)?;
        insert_event!(tx, change.event, payment, None);
        insert_postings!(tx, &change.postings, payment, None, change.now);
        tx.commit().await?;
        payment
    });
    Ok(Some(payment))
}

/// A payment the expiry job should fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StalePayment {
    pub tenant: Tenant,
    pub payment_id: String,
    pub state: PaymentState,
}

/// Payments of every tenant whose payer did not finish by `now`, and
/// authorisations not captured since `authorised_before`, oldest first.
/// SUBMITTED payments are never expired: the card may be being charged;
/// only the gateway's answer or the recovery job ends them.
pub async fn stale_payments(
    db: &Database,
    now: i64,
    authorised_before: i64,
    limit: i64,
) -> Result<Vec<StalePayment>, PaymentsError> {
    let rows: Vec<(String, String, String, String)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT agency_id, environment, payment_id, state FROM payments \
             WHERE (state IN ('created', 'started') AND expire_time <= $1) \
             OR (state = 'capturable' AND update_time <= $2) \
             ORDER BY expire_time LIMIT $3",
        )
        .bind(now)
        .bind(authorised_before)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(agency_id, environment, payment_id, state)| {
            Ok(StalePayment {
                tenant: tenant(agency_id, &environment)?,
                payment_id,
                state: PaymentState::parse(&state).ok_or_else(|| corrupt("payment state"))?,
            })
        })
        .collect()
}

/// Payments of every tenant still SUBMITTED though their card was
/// submitted before `submitted_before`: the process stopped before the
/// gateway's answer was recorded.
pub async fn interrupted_payments(
    db: &Database,
    submitted_before: i64,
    limit: i64,
) -> Result<Vec<StalePayment>, PaymentsError> {
    let rows: Vec<(String, String, String, String)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT agency_id, environment, payment_id, state FROM payments \
             WHERE state = 'submitted' AND update_time < $1 ORDER BY update_time LIMIT $2",
        )
        .bind(submitted_before)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(agency_id, environment, payment_id, state)| {
            Ok(StalePayment {
                tenant: tenant(agency_id, &environment)?,
                payment_id,
                state: PaymentState::parse(&state).ok_or_else(|| corrupt("payment state"))?,
            })
        })
        .collect()
}
