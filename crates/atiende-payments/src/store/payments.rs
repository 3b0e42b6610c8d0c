//! Payments: read, list, find stale ones (creates and state changes are
//! written in groups, by `batch`).

use super::*;

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
             OR (state = 'capturable' AND update_time <= $2 \
                 AND void_requested_time IS NULL) \
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

/// What a CAPTURABLE payment becomes once its authorisation is voided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidFor {
    /// The agency cancelled it.
    Cancellation,
    /// It was not captured in time.
    Expiry,
}

impl VoidFor {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancellation => "cancelled",
            Self::Expiry => "expired",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "cancelled" => Some(Self::Cancellation),
            "expired" => Some(Self::Expiry),
            _ => None,
        }
    }
}

/// Marks a CAPTURABLE payment as being voided, for `void_for` unless a
/// void was already requested (the first request decides what it
/// becomes). From then on it cannot be captured. `None` when the payment
/// is not CAPTURABLE (or not the tenant's).
pub async fn request_void(
    db: &Database,
    tenant: &Tenant,
    payment_id: &str,
    void_for: VoidFor,
    now: i64,
) -> Result<Option<VoidFor>, PaymentsError> {
    let row: Option<String> = on_db!(db, pool => {
        sqlx::query_scalar(
            "UPDATE payments SET void_requested_time = COALESCE(void_requested_time, $1), \
             void_for = COALESCE(void_for, $2) WHERE payment_id = $3 AND agency_id = $4 \
             AND environment = $5 AND state = 'capturable' RETURNING void_for",
        )
        .bind(now)
        .bind(void_for.as_str())
        .bind(payment_id)
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .fetch_optional(pool)
        .await?
    });
    row.map(|raw| VoidFor::parse(&raw).ok_or_else(|| corrupt("void_for")))
        .transpose()
}

/// A void that was requested and not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingVoid {
    pub tenant: Tenant,
    pub payment_id: String,
    pub void_for: VoidFor,
}

/// Payments of every tenant still CAPTURABLE though their void was
/// requested before `requested_before`: the gateway failed the void, or
/// the process stopped.
pub async fn pending_voids(
    db: &Database,
    requested_before: i64,
    limit: i64,
) -> Result<Vec<PendingVoid>, PaymentsError> {
    let rows: Vec<(String, String, String, Option<String>)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT agency_id, environment, payment_id, void_for FROM payments \
             WHERE void_requested_time IS NOT NULL AND void_requested_time < $1 \
             AND state = 'capturable' ORDER BY void_requested_time LIMIT $2",
        )
        .bind(requested_before)
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(agency_id, environment, payment_id, void_for)| {
            Ok(PendingVoid {
                tenant: tenant(agency_id, &environment)?,
                payment_id,
                void_for: void_for
                    .as_deref()
                    .and_then(VoidFor::parse)
                    .ok_or_else(|| corrupt("void_for"))?,
            })
        })
        .collect()
}
