//! Refunds: the compare-and-set submission, the outcome, reads.

use super::*;

/// How a refund's creation ended in the database.
pub enum RefundInsert {
    /// Created, with the payment as it now is.
    Created(Box<Payment>),
    /// A concurrent request with the same key won: nothing was written.
    KeyTaken,
    /// The payment is not refundable as the caller believed (missing, not
    /// SUCCESS, another currency, another available amount, or too little
    /// available): nothing was written.
    NotApplied,
}

/// Submits a refund: moves its amount from available to submitted if the
/// available amount is still `expected_available_minor` (compare-and-set),
/// and records the refund, its event and its postings, atomically.
pub async fn create_refund(
    db: &Database,
    refund: &Refund,
    expected_available_minor: i64,
    idempotency: Option<(&str, &str)>,
) -> Result<RefundInsert, PaymentsError> {
    let payment = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        if let Some((key, hash)) = idempotency
            && !claim_key!(tx, &refund.tenant, "CreateRefund", key, hash, &refund.refund_id, refund.create_time)
        {
            return Ok(RefundInsert::KeyTaken);
        }
        let row: Option<PaymentRow> = sqlx::query_as(concat!(
            "UPDATE payments SET refund_submitted_minor = refund_submitted_minor + $1, \
             update_time = $2 \
             WHERE payment_id = $3 AND agency_id = $4 AND environment = $5 AND state = 'success' \
             AND currency = $6 AND amount_minor - refund_submitted_minor = $7 \
             AND refund_submitted_minor + $1 <= amount_minor \
             RETURNING ", payment_columns!()
        ))
        .bind(refund.amount.minor)
        .bind(refund.create_time)
        .bind(&refund.payment_id)
        .bind(&refund.tenant.agency_id)
        .bind(refund.tenant.environment.as_str())
        .bind(refund.amount.currency.code())
        .bind(expected_available_minor)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefundInsert::NotApplied);
        };
        let payment = Payment::try_from(row)?;
        sqlx::query(concat!(
            "INSERT INTO refunds (", refund_columns!(), ") \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        ))
        .bind(&refund.refund_id)
        .bind(&refund.payment_id)
        .bind(&refund.tenant.agency_id)
        .bind(refund.tenant.environment.as_str())
        .bind(refund.amount.minor)
        .bind(refund.amount.currency.code())
        .bind(&refund.reason)
        .bind(refund.state.as_str())
        .bind(refund.create_time)
        .bind(refund.update_time)
        .execute(&mut *tx)
        .await?;
        insert_event!(tx, EventType::RefundSubmitted, payment, Some(refund));
        insert_postings!(tx, &[Transaction::refund(refund.amount)], payment, Some(refund.refund_id.as_str()), refund.create_time);
        tx.commit().await?;
        payment
    });
    Ok(RefundInsert::Created(Box::new(payment)))
}

/// Ends a SUBMITTED refund: SUCCESS, or ERROR with its amount available
/// again and its postings reversed. `None` if it was no longer SUBMITTED.
pub async fn finish_refund(
    db: &Database,
    refund: &Refund,
    succeeded: bool,
    now: i64,
) -> Result<Option<Refund>, PaymentsError> {
    let (state, event) = if succeeded {
        (RefundState::Success, EventType::RefundSucceeded)
    } else {
        (RefundState::Error, EventType::RefundErrored)
    };
    let finished = on_db!(db, pool => {
        let mut tx = pool.begin().await?;
        let row: Option<RefundRow> = sqlx::query_as(concat!(
            "UPDATE refunds SET state = $1, update_time = $2 \
             WHERE refund_id = $3 AND agency_id = $4 AND environment = $5 AND state = 'submitted' \
             RETURNING ", refund_columns!()
        ))
        .bind(state.as_str())
        .bind(now)
        .bind(&refund.refund_id)
        .bind(&refund.tenant.agency_id)
        .bind(refund.tenant.environment.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let finished = Refund::try_from(row)?;
        let release = if succeeded { 0 } else { finished.amount.minor };
        let row: PaymentRow = sqlx::query_as(concat!(
            "UPDATE payments SET refund_submitted_minor = refund_submitted_minor - $1, \
             update_time = $2 WHERE payment_id = $3 AND agency_id = $4 AND environment = $5 \
             RETURNING ", payment_columns!()
        ))
        .bind(release)
        .bind(now)
        .bind(&finished.payment_id)
        .bind(&finished.tenant.agency_id)
        .bind(finished.tenant.environment.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let payment = Payment::try_from(row)?;
        insert_event!(tx, event, payment, Some(&finished));
        if !succeeded {
            insert_postings!(tx, &[Transaction::refund_reversal(finished.amount)], payment, Some(finished.refund_id.as_str()), now);
        }
        tx.commit().await?;
        finished
    });
    Ok(Some(finished))
}

pub async fn get_refund(
    db: &Database,
    tenant: &Tenant,
    refund_id: &str,
) -> Result<Option<Refund>, PaymentsError> {
    let row: Option<RefundRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(
            "SELECT ", refund_columns!(), " FROM refunds \
             WHERE refund_id = $1 AND agency_id = $2 AND environment = $3"
        ))
        .bind(refund_id)
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .fetch_optional(pool)
        .await?
    });
    row.map(Refund::try_from).transpose()
}

/// ListRefunds' filters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefundFilter {
    pub payment_id: Option<String>,
    pub states: Vec<RefundState>,
    pub created_from: Option<i64>,
    pub created_before: Option<i64>,
}

/// ListRefunds' query; `$scope` narrows it to one payment or not (two
/// texts, so that the plan for one payment walks that payment's refunds,
/// not every refund of the agency).
macro_rules! list_refunds_query {
    ($scope:literal) => {
        concat!(
            "SELECT ",
            refund_columns!(),
            " FROM refunds \
             WHERE agency_id = $1 AND environment = $2 AND ",
            $scope,
            " \
             AND ($4 = '' OR $4 LIKE '%,' || state || ',%') \
             AND ($5 IS NULL OR create_time >= $5) \
             AND ($6 IS NULL OR create_time < $6) \
             AND ($7 IS NULL OR refund_id < $7) \
             ORDER BY refund_id DESC LIMIT $8"
        )
    };
}

pub async fn list_refunds(
    db: &Database,
    tenant: &Tenant,
    filter: &RefundFilter,
    before_refund_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Refund>, PaymentsError> {
    let states = name_set(filter.states.iter().map(|s| s.as_str()));
    let query = if filter.payment_id.is_some() {
        list_refunds_query!("payment_id = $3")
    } else {
        list_refunds_query!("$3 IS NULL")
    };
    let rows: Vec<RefundRow> = on_db!(db, pool => {
        sqlx::query_as(query)
            .bind(&tenant.agency_id)
            .bind(tenant.environment.as_str())
            .bind(filter.payment_id.as_deref())
            .bind(&states)
            .bind(filter.created_from)
            .bind(filter.created_before)
            .bind(before_refund_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
    });
    rows.into_iter().map(Refund::try_from).collect()
}

/// Refunds of every tenant still SUBMITTED though submitted before
/// `submitted_before`: their process stopped before the gateway answered.
pub async fn stale_refunds(
    db: &Database,
    submitted_before: i64,
    limit: i64,
) -> Result<Vec<Refund>, PaymentsError> {
    let rows: Vec<RefundRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(
            "SELECT ", refund_columns!(), " FROM refunds \
             WHERE state = 'submitted' AND update_time < $1 ORDER BY update_time LIMIT $2"
        ))
        .bind(submitted_before)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(Refund::try_from).collect()
}
