//! The payments service's tables, on SQLite or PostgreSQL. Speaks domain
//! types; every query is scoped by agency and environment.
//!
//! Concurrency is handled by conditional writes inside one transaction,
//! never by reading first: a state change is an `UPDATE ... WHERE state =
//! <expected>` (so two captures cannot both succeed), a refund an `UPDATE`
//! that checks the available amount the caller saw (compare-and-set), and
//! an idempotency key is claimed by the `INSERT` that creates it. Every
//! transaction starts with its write, so SQLite takes its write lock at
//! once and never fails a lock upgrade.

use std::collections::BTreeMap;

use atiende_platform::auth::Environment;
use atiende_platform::ids::new_id;
use atiende_platform::on_db;
use atiende_platform::storage::{Database, Migrations};

use crate::domain::card::{CardBrand, CardSummary, Expiry};
use crate::domain::ledger::{Account, LedgerEntry, Transaction, TransactionType};
use crate::domain::money::{Currency, Money};
use crate::domain::payment::{
    EVENT_ID_PREFIX, LEDGER_ENTRY_ID_PREFIX, LEDGER_TRANSACTION_ID_PREFIX, Language, NewPayment,
    Payment, PaymentEvent, Refund, RefundState, Tenant,
};
use crate::domain::state::{EventType, FailureReason, PaymentState};
use crate::domain::webhook::{MAX_ENDPOINTS_PER_ENVIRONMENT, WebhookEndpoint};
use crate::service::PaymentsError;

pub const MIGRATIONS: Migrations = Migrations {
    service: "payments",
    sqlite: &[
        (
            1,
            "service metadata",
            include_str!("../migrations/sqlite/0001_service_metadata.sql"),
        ),
        (
            2,
            "payments",
            include_str!("../migrations/sqlite/0002_payments.sql"),
        ),
        (
            3,
            "webhooks",
            include_str!("../migrations/sqlite/0003_webhooks.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "service metadata",
            include_str!("../migrations/postgres/0001_service_metadata.sql"),
        ),
        (
            2,
            "payments",
            include_str!("../migrations/postgres/0002_payments.sql"),
        ),
        (
            3,
            "webhooks",
            include_str!("../migrations/postgres/0003_webhooks.sql"),
        ),
    ],
};

/// The columns of a payment row, in [`PaymentRow`]'s names.
macro_rules! payment_columns {
    () => {
        "payment_id, agency_id, environment, amount_minor, currency, reference, description, \
         return_url, metadata, language, delayed_capture, state, failure_reason, failure_message, \
         card_brand, card_first_six, card_last_four, card_expiry_month, card_expiry_year, \
         cardholder_name, refund_submitted_minor, fee_minor, page_secret, expire_time, \
         create_time, update_time"
    };
}

#[derive(sqlx::FromRow)]
struct PaymentRow {
    payment_id: String,
    agency_id: String,
    environment: String,
    amount_minor: i64,
    currency: String,
    reference: String,
    description: String,
    return_url: String,
    metadata: String,
    language: String,
    delayed_capture: i64,
    state: String,
    failure_reason: Option<String>,
    failure_message: String,
    card_brand: Option<String>,
    card_first_six: Option<String>,
    card_last_four: Option<String>,
    card_expiry_month: Option<i64>,
    card_expiry_year: Option<i64>,
    cardholder_name: Option<String>,
    refund_submitted_minor: i64,
    fee_minor: Option<i64>,
    page_secret: String,
    expire_time: i64,
    create_time: i64,
    update_time: i64,
}

fn corrupt(what: &'static str) -> PaymentsError {
    PaymentsError::Corrupt(what)
}

fn tenant(agency_id: String, environment: &str) -> Result<Tenant, PaymentsError> {
    Ok(Tenant {
        agency_id,
        environment: Environment::parse(environment).ok_or_else(|| corrupt("environment"))?,
    })
}

impl TryFrom<PaymentRow> for Payment {
    type Error = PaymentsError;

    fn try_from(row: PaymentRow) -> Result<Self, Self::Error> {
        let currency = Currency::parse(&row.currency).map_err(|_| corrupt("payment currency"))?;
        let metadata: BTreeMap<String, String> =
            serde_json::from_str(&row.metadata).map_err(|_| corrupt("payment metadata"))?;
        let card = match (
            row.card_brand,
            row.card_first_six,
            row.card_last_four,
            row.card_expiry_month,
            row.card_expiry_year,
            row.cardholder_name,
        ) {
            (
                Some(brand),
                Some(first_six),
                Some(last_four),
                Some(month),
                Some(year),
                Some(name),
            ) => Some(CardSummary {
                brand: CardBrand::parse(&brand).ok_or_else(|| corrupt("card brand"))?,
                first_six,
                last_four,
                expiry: Expiry {
                    month: u32::try_from(month).map_err(|_| corrupt("card expiry"))?,
                    year: i32::try_from(year).map_err(|_| corrupt("card expiry"))?,
                },
                cardholder_name: name,
            }),
            _ => None,
        };
        Ok(Payment {
            payment_id: row.payment_id,
            tenant: tenant(row.agency_id, &row.environment)?,
            new: NewPayment {
                amount: Money::new(currency, row.amount_minor),
                reference: row.reference,
                description: row.description,
                return_url: row.return_url,
                metadata,
                language: Language::parse(&row.language).ok_or_else(|| corrupt("language"))?,
                delayed_capture: row.delayed_capture != 0,
            },
            state: PaymentState::parse(&row.state).ok_or_else(|| corrupt("payment state"))?,
            failure_reason: row
                .failure_reason
                .map(|r| FailureReason::parse(&r).ok_or_else(|| corrupt("failure reason")))
                .transpose()?,
            failure_message: row.failure_message,
            card,
            refund_submitted_minor: row.refund_submitted_minor,
            fee_minor: row.fee_minor,
            page_secret: row.page_secret,
            expire_time: row.expire_time,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct RefundRow {
    refund_id: String,
    payment_id: String,
    agency_id: String,
    environment: String,
    amount_minor: i64,
    currency: String,
    reason: String,
    state: String,
    create_time: i64,
    update_time: i64,
}

macro_rules! refund_columns {
    () => {
        "refund_id, payment_id, agency_id, environment, amount_minor, currency, reason, state, \
         create_time, update_time"
    };
}

impl TryFrom<RefundRow> for Refund {
    type Error = PaymentsError;

    fn try_from(row: RefundRow) -> Result<Self, Self::Error> {
        Ok(Refund {
            refund_id: row.refund_id,
            payment_id: row.payment_id,
            tenant: tenant(row.agency_id, &row.environment)?,
            amount: Money::new(
                Currency::parse(&row.currency).map_err(|_| corrupt("refund currency"))?,
                row.amount_minor,
            ),
            reason: row.reason,
            state: RefundState::parse(&row.state).ok_or_else(|| corrupt("refund state"))?,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    event_id: String,
    sequence: i64,
    event_type: String,
    occur_time: i64,
    has_card: i64,
    refund_id: Option<String>,
    refund_state: Option<String>,
    refund_amount_minor: Option<i64>,
    refund_reason: Option<String>,
    refund_create_time: Option<i64>,
    #[sqlx(flatten)]
    payment: PaymentRow,
}

impl TryFrom<EventRow> for PaymentEvent {
    type Error = PaymentsError;

    fn try_from(row: EventRow) -> Result<Self, Self::Error> {
        let mut payment = Payment::try_from(row.payment)?;
        if row.has_card == 0 {
            payment.card = None;
        }
        let refund = match (
            row.refund_id,
            row.refund_state,
            row.refund_amount_minor,
            row.refund_reason,
            row.refund_create_time,
        ) {
            (Some(refund_id), Some(state), Some(amount_minor), Some(reason), Some(create_time)) => {
                Some(Refund {
                    refund_id,
                    payment_id: payment.payment_id.clone(),
                    tenant: payment.tenant.clone(),
                    amount: Money::new(payment.amount().currency, amount_minor),
                    reason,
                    state: RefundState::parse(&state).ok_or_else(|| corrupt("refund state"))?,
                    create_time,
                    update_time: row.occur_time,
                })
            }
            _ => None,
        };
        Ok(PaymentEvent {
            event_id: row.event_id,
            sequence: row.sequence,
            event_type: EventType::parse(&row.event_type).ok_or_else(|| corrupt("event type"))?,
            occur_time: row.occur_time,
            payment,
            refund,
        })
    }
}

/// Records an event with the payment (and refund) as they are now, and
/// the deliveries it owes to the tenant's webhook endpoints.
macro_rules! insert_event {
    ($tx:expr, $event:expr, $p:expr, $refund:expr) => {{
        let refund: Option<&Refund> = $refund;
        let event_id = new_id(EVENT_ID_PREFIX);
        sqlx::query(
            "INSERT INTO payment_events (event_id, agency_id, environment, payment_id, refund_id, \
             event_type, occur_time, state, failure_reason, failure_message, \
             refund_submitted_minor, fee_minor, has_card, refund_state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&event_id)
        .bind(&$p.tenant.agency_id)
        .bind($p.tenant.environment.as_str())
        .bind(&$p.payment_id)
        .bind(refund.map(|r| r.refund_id.as_str()))
        .bind($event.as_str())
        .bind($p.update_time)
        .bind($p.state.as_str())
        .bind($p.failure_reason.map(FailureReason::as_str))
        .bind(&$p.failure_message)
        .bind($p.refund_submitted_minor)
        .bind($p.fee_minor)
        .bind(i64::from($p.card.is_some()))
        .bind(refund.map(|r| r.state.as_str()))
        .execute(&mut *$tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (event_id, webhook_endpoint_id, agency_id, environment, \
             state, attempts, next_attempt_time, last_response, create_time, update_time) \
             SELECT $1, w.webhook_endpoint_id, w.agency_id, w.environment, 'pending', 0, $2, '', \
             $2, $2 FROM webhook_endpoints w WHERE w.agency_id = $3 AND w.environment = $4 \
             AND (w.event_types = '' OR w.event_types LIKE '%,' || $5 || ',%')",
        )
        .bind(&event_id)
        .bind($p.update_time)
        .bind(&$p.tenant.agency_id)
        .bind($p.tenant.environment.as_str())
        .bind($event.as_str())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Posts balanced ledger transactions about a payment (and refund).
macro_rules! insert_postings {
    ($tx:expr, $transactions:expr, $p:expr, $refund_id:expr, $now:expr) => {{
        let refund_id: Option<&str> = $refund_id;
        for transaction in $transactions {
            if !transaction.is_balanced() {
                return Err(corrupt("unbalanced ledger transaction"));
            }
            let transaction_id = new_id(LEDGER_TRANSACTION_ID_PREFIX);
            for posting in transaction.postings() {
                sqlx::query(
                    "INSERT INTO ledger_entries (entry_id, transaction_id, agency_id, environment, \
                     transaction_type, account, currency, amount_minor, payment_id, refund_id, \
                     posting_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(new_id(LEDGER_ENTRY_ID_PREFIX))
                .bind(&transaction_id)
                .bind(&$p.tenant.agency_id)
                .bind($p.tenant.environment.as_str())
                .bind(transaction.kind.as_str())
                .bind(posting.account.as_str())
                .bind(transaction.currency.code())
                .bind(posting.amount_minor)
                .bind(&$p.payment_id)
                .bind(refund_id)
                .bind($now)
                .execute(&mut *$tx)
                .await?;
            }
        }
    }};
}

/// Claims an idempotency key; false when it was already taken.
macro_rules! claim_key {
    ($tx:expr, $tenant:expr, $operation:expr, $key:expr, $hash:expr, $resource:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO idempotency_keys (agency_id, environment, operation, idempotency_key, \
             request_hash, resource_id, create_time) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (agency_id, environment, operation, idempotency_key) DO NOTHING",
        )
        .bind(&$tenant.agency_id)
        .bind($tenant.environment.as_str())
        .bind($operation)
        .bind($key)
        .bind($hash)
        .bind($resource)
        .bind($now)
        .execute(&mut *$tx)
        .await?
        .rows_affected()
            == 1
    };
}

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

/// What an idempotency key was first used for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotencyRecord {
    pub request_hash: String,
    pub resource_id: String,
}

pub async fn find_idempotency_key(
    db: &Database,
    tenant: &Tenant,
    operation: &str,
    key: &str,
) -> Result<Option<IdempotencyRecord>, PaymentsError> {
    let row = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT request_hash, resource_id FROM idempotency_keys \
             WHERE agency_id = $1 AND environment = $2 AND operation = $3 AND idempotency_key = $4",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(operation)
        .bind(key)
        .fetch_optional(pool)
        .await?
    });
    Ok(row)
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

/// ListPayments' filters; every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PaymentFilter {
    pub states: Vec<PaymentState>,
    pub reference: Option<String>,
    pub created_from: Option<i64>,
    pub created_before: Option<i64>,
    pub card_last_four: Option<String>,
}

/// `,a,b,`: a set of names one `LIKE` can test membership in, on both
/// engines (`'' ` means no filter).
fn name_set<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        String::new()
    } else {
        format!(",{},", names.join(","))
    }
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

/// Events with the payment and refund fields they carry: the snapshot
/// columns come from the event, the rest from the payment and refund.
macro_rules! select_events {
    () => {
        "SELECT e.event_id, e.sequence, e.event_type, e.occur_time, e.has_card, e.refund_id, \
         e.refund_state, r.amount_minor AS refund_amount_minor, r.reason AS refund_reason, \
         r.create_time AS refund_create_time, p.payment_id, p.agency_id, p.environment, \
         p.amount_minor, p.currency, p.reference, p.description, p.return_url, p.metadata, \
         p.language, p.delayed_capture, e.state, e.failure_reason, e.failure_message, \
         p.card_brand, p.card_first_six, p.card_last_four, p.card_expiry_month, \
         p.card_expiry_year, p.cardholder_name, e.refund_submitted_minor, e.fee_minor, \
         p.page_secret, p.expire_time, p.create_time, e.occur_time AS update_time \
         FROM payment_events e JOIN payments p ON p.payment_id = e.payment_id \
         LEFT JOIN refunds r ON r.refund_id = e.refund_id "
    };
}

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

pub async fn list_refunds(
    db: &Database,
    tenant: &Tenant,
    filter: &RefundFilter,
    before_refund_id: Option<&str>,
    limit: i64,
) -> Result<Vec<Refund>, PaymentsError> {
    let states = name_set(filter.states.iter().map(|s| s.as_str()));
    let rows: Vec<RefundRow> = on_db!(db, pool => {
        sqlx::query_as(concat!(
            "SELECT ", refund_columns!(), " FROM refunds \
             WHERE agency_id = $1 AND environment = $2 \
             AND ($3 IS NULL OR payment_id = $3) \
             AND ($4 = '' OR $4 LIKE '%,' || state || ',%') \
             AND ($5 IS NULL OR create_time >= $5) \
             AND ($6 IS NULL OR create_time < $6) \
             AND ($7 IS NULL OR refund_id < $7) \
             ORDER BY refund_id DESC LIMIT $8"
        ))
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

/// The balance of one account in one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountBalance {
    pub account: Account,
    pub balance: Money,
}

/// The sums of the tenant's entries posted before `as_of`, per account and
/// currency, ordered by currency and then account.
pub async fn balances(
    db: &Database,
    tenant: &Tenant,
    currency: Option<Currency>,
    as_of: i64,
) -> Result<Vec<AccountBalance>, PaymentsError> {
    let rows: Vec<(String, String, i64)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT account, currency, CAST(SUM(amount_minor) AS BIGINT) FROM ledger_entries \
             WHERE agency_id = $1 AND environment = $2 AND ($3 IS NULL OR currency = $3) \
             AND posting_time < $4 GROUP BY account, currency",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(currency.map(Currency::code))
        .bind(as_of)
        .fetch_all(pool)
        .await?
    });
    let mut balances = rows
        .into_iter()
        .map(|(account, code, sum)| {
            Ok(AccountBalance {
                account: Account::parse(&account).ok_or_else(|| corrupt("ledger account"))?,
                balance: Money::new(
                    Currency::parse(&code).map_err(|_| corrupt("ledger currency"))?,
                    sum,
                ),
            })
        })
        .collect::<Result<Vec<_>, PaymentsError>>()?;
    balances.sort_by_key(|b| (b.balance.currency.code(), b.account));
    Ok(balances)
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
pub async fn stale_payments(
    db: &Database,
    now: i64,
    authorised_before: i64,
    limit: i64,
) -> Result<Vec<StalePayment>, PaymentsError> {
    let rows: Vec<(String, String, String, String)> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT agency_id, environment, payment_id, state FROM payments \
             WHERE (state IN ('created', 'started', 'submitted') AND expire_time <= $1) \
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

#[derive(sqlx::FromRow)]
struct LedgerEntryRow {
    transaction_id: String,
    entry_id: String,
    transaction_type: String,
    account: String,
    currency: String,
    amount_minor: i64,
    payment_id: String,
    refund_id: Option<String>,
    posting_time: i64,
}

impl TryFrom<LedgerEntryRow> for LedgerEntry {
    type Error = PaymentsError;

    fn try_from(row: LedgerEntryRow) -> Result<Self, Self::Error> {
        Ok(LedgerEntry {
            transaction_id: row.transaction_id,
            entry_id: row.entry_id,
            kind: TransactionType::parse(&row.transaction_type)
                .ok_or_else(|| corrupt("ledger transaction type"))?,
            account: Account::parse(&row.account).ok_or_else(|| corrupt("ledger account"))?,
            amount: Money::new(
                Currency::parse(&row.currency).map_err(|_| corrupt("ledger currency"))?,
                row.amount_minor,
            ),
            payment_id: row.payment_id,
            refund_id: row.refund_id,
            posting_time: row.posting_time,
        })
    }
}

/// Where an export continues: after this transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub posting_time: i64,
    pub transaction_id: String,
}

/// The tenant's entries posted in [`from`, `before`), in (posting_time,
/// transaction_id, entry_id) order, after `cursor`.
pub async fn ledger_entries(
    db: &Database,
    tenant: &Tenant,
    currency: Option<Currency>,
    from: Option<i64>,
    before: i64,
    cursor: Option<&ExportCursor>,
    limit: i64,
) -> Result<Vec<LedgerEntry>, PaymentsError> {
    let rows: Vec<LedgerEntryRow> = on_db!(db, pool => {
        sqlx::query_as(
            "SELECT transaction_id, entry_id, transaction_type, account, currency, amount_minor, \
             payment_id, refund_id, posting_time FROM ledger_entries \
             WHERE agency_id = $1 AND environment = $2 AND ($3 IS NULL OR currency = $3) \
             AND ($4 IS NULL OR posting_time >= $4) AND posting_time < $5 \
             AND ($6 IS NULL OR posting_time > $6 OR (posting_time = $6 AND transaction_id > $7)) \
             ORDER BY posting_time, transaction_id, entry_id LIMIT $8",
        )
        .bind(&tenant.agency_id)
        .bind(tenant.environment.as_str())
        .bind(currency.map(Currency::code))
        .bind(from)
        .bind(before)
        .bind(cursor.map(|c| c.posting_time))
        .bind(cursor.map(|c| c.transaction_id.as_str()))
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    rows.into_iter().map(LedgerEntry::try_from).collect()
}

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
        let inserted = sqlx::query(
            "INSERT INTO webhook_endpoints (webhook_endpoint_id, agency_id, environment, url, \
             event_types, description, signing_secret, create_time) \
             SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE (SELECT COUNT(*) FROM webhook_endpoints \
             WHERE agency_id = $2 AND environment = $3) < $9",
        )
        .bind(&endpoint.webhook_endpoint_id)
        .bind(&endpoint.tenant.agency_id)
        .bind(endpoint.tenant.environment.as_str())
        .bind(&endpoint.url)
        .bind(&types)
        .bind(&endpoint.description)
        .bind(signing_secret)
        .bind(endpoint.create_time)
        .bind(MAX_ENDPOINTS_PER_ENVIRONMENT)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(EndpointInsert::TooMany);
        }
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
            "SELECT event_id, webhook_endpoint_id, attempts, next_attempt_time, create_time \
             FROM webhook_deliveries WHERE state = 'pending' AND next_attempt_time <= $1 \
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
        sqlx::query_as(concat!(select_events!(), "WHERE e.event_id = $1"))
            .bind(&due.event_id)
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
