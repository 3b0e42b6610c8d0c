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
            include_str!("../../migrations/sqlite/0001_service_metadata.sql"),
        ),
        (
            2,
            "payments",
            include_str!("../../migrations/sqlite/0002_payments.sql"),
        ),
        (
            3,
            "webhooks",
            include_str!("../../migrations/sqlite/0003_webhooks.sql"),
        ),
        (
            4,
            "retention and voids",
            include_str!("../../migrations/sqlite/0004_retention_and_voids.sql"),
        ),
        (
            5,
            "fewer event indexes",
            include_str!("../../migrations/sqlite/0005_fewer_event_indexes.sql"),
        ),
    ],
    postgres: &[
        (
            1,
            "service metadata",
            include_str!("../../migrations/postgres/0001_service_metadata.sql"),
        ),
        (
            2,
            "payments",
            include_str!("../../migrations/postgres/0002_payments.sql"),
        ),
        (
            3,
            "webhooks",
            include_str!("../../migrations/postgres/0003_webhooks.sql"),
        ),
        (
            4,
            "retention and voids",
            include_str!("../../migrations/postgres/0004_retention_and_voids.sql"),
        ),
        (
            5,
            "fewer event indexes",
            include_str!("../../migrations/postgres/0005_fewer_event_indexes.sql"),
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
         create_time, update_time, void_requested_time"
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
    void_requested_time: Option<i64>,
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
            void_requested: row.void_requested_time.is_some(),
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
        let sequence: i64 = sqlx::query_scalar(
            "INSERT INTO payment_events (event_id, agency_id, environment, payment_id, refund_id, \
             event_type, occur_time, state, failure_reason, failure_message, \
             refund_submitted_minor, fee_minor, has_card, refund_state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             RETURNING sequence",
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
        .fetch_one(&mut *$tx)
        .await?;
        sqlx::query(
            "INSERT INTO webhook_deliveries (event_id, event_sequence, webhook_endpoint_id, \
             agency_id, environment, state, attempts, next_attempt_time, last_response, \
             create_time, update_time) \
             SELECT $1, $2, w.webhook_endpoint_id, w.agency_id, w.environment, 'pending', 0, $3, \
             '', $3, $3 FROM webhook_endpoints w WHERE w.agency_id = $4 AND w.environment = $5 \
             AND (w.event_types = '' OR w.event_types LIKE '%,' || $6 || ',%')",
        )
        .bind(&event_id)
        .bind(sequence)
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
         p.page_secret, p.expire_time, p.create_time, e.occur_time AS update_time, \
         p.void_requested_time \
         FROM payment_events e JOIN payments p ON p.payment_id = e.payment_id \
         LEFT JOIN refunds r ON r.refund_id = e.refund_id "
    };
}

mod batch;
mod events;
mod ledger;
mod payments;
mod refunds;
mod webhooks;

pub use batch::*;
pub use events::*;
pub use ledger::*;
pub use payments::*;
pub use refunds::*;
pub use webhooks::*;
