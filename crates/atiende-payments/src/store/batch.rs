//! Group commit: the creates and state changes of many requests written in
//! one transaction (see `service::writer`).
//!
//! On PostgreSQL the rows go in with statements of arrays (`UNNEST`), the
//! same text for any group size; usually the whole group is one statement
//! of data-modifying CTEs, so a group costs one round trip and one
//! commit whatever its size. On SQLite, where a statement is cheap and writers
//! are serialised anyway, the rows are written one by one inside the one
//! transaction: the saving is the commit (one fsync for the group).
//!
//! The conditions are the same as for a single write: an idempotency key
//! is claimed by an `INSERT ... ON CONFLICT DO NOTHING`, a state change is
//! an `UPDATE ... WHERE state = <expected>`. A write whose condition fails
//! is skipped, and the others go on. A payment whose authorisation is being
//! voided is never captured (`void_requested_time`).

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgArguments;
use sqlx::{Arguments as _, Encode, PgConnection, Postgres, SqliteConnection, Type};

use super::*;
use crate::domain::state;

/// A change of state, as the state machine allowed it.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub from: PaymentState,
    pub to: PaymentState,
    pub event: EventType,
    pub reason: Option<FailureReason>,
    pub message: String,
    /// Recorded when the card is submitted.
    pub card: Option<CardSummary>,
    /// Recorded on success.
    pub fee_minor: Option<i64>,
    /// Posted in the same transaction.
    pub postings: Vec<Transaction>,
    pub now: i64,
    /// The states the payment passes through on its way from `from` to
    /// `to` in this one write, each with its event, recorded in this order
    /// before `event`: STARTED when the card step finds the payment
    /// CREATED (the payer opened the page in the same step), SUBMITTED
    /// when the gateway's answer is recorded with the card. One write, so
    /// one row change: all the events or none.
    pub passed: Vec<(PaymentState, EventType)>,
}

impl StateChange {
    /// Whether the way from `from` through `passed` to `to` is the state
    /// machine's, with its events, and passes only through the states
    /// that [`StateChange::passing_view`] knows.
    fn follows_the_state_machine(&self) -> bool {
        let mut at = self.from;
        for &(state, event) in &self.passed {
            let known = match state {
                PaymentState::Started => at == PaymentState::Created,
                PaymentState::Submitted => true,
                _ => false,
            };
            if !known || state::transition(at, state, None).ok() != Some(event) {
                return false;
            }
            at = state;
        }
        state::transition(at, self.to, self.reason).ok() == Some(self.event)
    }

    /// The payment as it was in `state`, passed through on the way to
    /// what it is now, for that state's event: nothing of the outcome yet
    /// (no failure, no fee) and, in STARTED, nothing of the card.
    fn passing_view(payment: &Payment, state: PaymentState) -> Payment {
        Payment {
            state,
            failure_reason: None,
            failure_message: String::new(),
            fee_minor: None,
            card: if state == PaymentState::Started {
                None
            } else {
                payment.card.clone()
            },
            ..payment.clone()
        }
    }
}

/// One write of a group.
#[derive(Debug, Clone)]
#[allow(
    clippy::large_enum_variant,
    reason = "queued once per request and moved, never stored in bulk"
)]
pub enum Write {
    /// A new payment, its `payment_created` event and, when a key is
    /// given, the claim of the key (`(key, request hash)`).
    Create {
        payment: Payment,
        idempotency: Option<(String, String)>,
    },
    /// `change` applied to the tenant's payment if it is still in
    /// `change.from`, with its event and postings.
    Change {
        tenant: Tenant,
        payment_id: String,
        change: StateChange,
    },
}

/// How one write of a committed group ended.
#[derive(Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "answered once per request and moved, never stored in bulk"
)]
pub enum Written {
    /// Written: the payment as it now is.
    Done(Payment),
    /// Nothing written: the key was already claimed, or the payment was not
    /// in the expected state (or does not exist).
    Skipped,
}

/// Writes `writes` in one transaction; one answer per write, in order.
/// An error means nothing was written.
pub async fn write_group(db: &Database, writes: &[Write]) -> Result<Vec<Written>, PaymentsError> {
    for write in writes {
        if let Write::Change { change, .. } = write
            && !change.postings.iter().all(Transaction::is_balanced)
        {
            return Err(corrupt("unbalanced ledger transaction"));
        }
        if let Write::Change { change, .. } = write
            && !change.follows_the_state_machine()
        {
            return Err(corrupt("a state change off the state machine"));
        }
    }
    match db {
        Database::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let mut written = Vec::with_capacity(writes.len());
            for write in writes {
                written.push(sqlite_write(&mut tx, write).await?);
            }
            tx.commit().await?;
            Ok(written)
        }
        Database::Postgres(pool) if changes_distinct(writes) => {
            let mut conn = pool.acquire().await?;
            pg_one_statement(&mut conn, writes).await
        }
        Database::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            let written = pg_group(&mut tx, writes).await?;
            tx.commit().await?;
            Ok(written)
        }
    }
}

/// The database that groups are written with: on PostgreSQL a pool of
/// its own, of two connections, whose sessions plan each statement once
/// (a generic plan) and never plan a sequential scan.
///
/// PostgreSQL would otherwise plan the group statement afresh for every
/// group (its estimate of a generic plan, made without the arrays' sizes,
/// looks dearer than a plan for the arrays at hand), about 0.6 ms where
/// a whole group takes ~1.2 ms on an idle server (docs/performance.md). A
/// generic plan is kept for the connection's life, so it must stay right
/// as the tables grow: every statement of a group finds its rows by key
/// (see `change_condition!`), and with sequential scans ruled out a plan
/// made while the tables were small cannot scan them later. On SQLite,
/// the same database.
pub fn group_database(db: &Database) -> Database {
    match db {
        Database::Sqlite(_) => db.clone(),
        Database::Postgres(pool) => Database::Postgres(
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(std::time::Duration::from_secs(10))
                // As the service's pool (`atiende_platform::storage`).
                .test_before_acquire(false)
                .connect_lazy_with(group_connect_options(pool)),
        ),
    }
}

/// How the writer's connections connect: as `pool`'s, with the session
/// settings that `group_database` explains.
fn group_connect_options(pool: &sqlx::PgPool) -> sqlx::postgres::PgConnectOptions {
    (*pool.connect_options()).clone().options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ])
}

/// The plans of the statements that apply state changes, as the writer's
/// connection (`group_database`) would cache them if it prepared them now
/// (on PostgreSQL the generic plans, kept for the connection's life): for
/// the test that keeps them on the payments' primary key whatever the
/// tables' size when they were made.
#[doc(hidden)]
pub async fn change_plans(db: &Database) -> Result<Vec<String>, PaymentsError> {
    match db {
        Database::Sqlite(pool) => {
            let explain = format!("EXPLAIN QUERY PLAN {SQLITE_CHANGE}");
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(explain)).persistent(false);
            for _ in 0..15 {
                query = query.bind(None::<String>);
            }
            let rows: Vec<(i64, i64, i64, String)> = query.fetch_all(pool).await?;
            Ok(vec![
                rows.into_iter()
                    .map(|row| row.3)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ])
        }
        Database::Postgres(pool) => {
            // A connection as the writer's, of its own and closed after.
            let mut conn =
                <PgConnection as sqlx::Connection>::connect_with(&group_connect_options(pool))
                    .await?;
            let mut plans = Vec::new();
            for (text, params) in [(PG_GROUP_WITH_CHANGES, 49), (PG_CHANGE_ROUND, 15)] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "PREPARE change_plan AS {text}"
                )))
                .execute(&mut conn)
                .await?;
                let nulls = vec!["NULL"; params].join(", ");
                let lines: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "EXPLAIN EXECUTE change_plan({nulls})"
                )))
                .persistent(false)
                .fetch_all(&mut conn)
                .await?;
                sqlx::raw_sql("DEALLOCATE change_plan")
                    .execute(&mut conn)
                    .await?;
                plans.push(
                    lines
                        .into_iter()
                        .map(|line| line.0)
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            sqlx::Connection::close(conn).await?;
            Ok(plans)
        }
    }
}

/// One state change in a transaction of its own (tests and tools; the
/// service queues its changes for a group). `None` when the payment was not
/// in `change.from`.
pub async fn change_state(
    db: &Database,
    tenant: &Tenant,
    payment_id: &str,
    change: &StateChange,
) -> Result<Option<Payment>, PaymentsError> {
    let write = Write::Change {
        tenant: tenant.clone(),
        payment_id: payment_id.to_owned(),
        change: change.clone(),
    };
    match write_group(db, &[write]).await?.pop() {
        Some(Written::Done(payment)) => Ok(Some(payment)),
        _ => Ok(None),
    }
}

/// The state change of one payment on SQLite.
const SQLITE_CHANGE: &str = concat!(
    "UPDATE payments SET state = $1, failure_reason = $2, failure_message = $3, \
     fee_minor = COALESCE($4, fee_minor), card_brand = COALESCE($5, card_brand), \
     card_first_six = COALESCE($6, card_first_six), \
     card_last_four = COALESCE($7, card_last_four), \
     card_expiry_month = COALESCE($8, card_expiry_month), \
     card_expiry_year = COALESCE($9, card_expiry_year), \
     cardholder_name = COALESCE($10, cardholder_name), update_time = $11 \
     WHERE payment_id = $12 AND agency_id = $13 AND environment = $14 AND state = $15 \
     AND ($1 <> 'success' OR void_requested_time IS NULL) RETURNING ",
    payment_columns!()
);

async fn sqlite_write(tx: &mut SqliteConnection, write: &Write) -> Result<Written, PaymentsError> {
    match write {
        Write::Create {
            payment: p,
            idempotency,
        } => {
            if let Some((key, hash)) = idempotency
                && !claim_key!(
                    tx,
                    &p.tenant,
                    "CreatePayment",
                    key,
                    hash,
                    &p.payment_id,
                    p.create_time
                )
            {
                return Ok(Written::Skipped);
            }
            let metadata = metadata_json(p)?;
            sqlx::query(
                "INSERT INTO payments (payment_id, agency_id, environment, amount_minor, currency, \
                 reference, description, return_url, metadata, language, delayed_capture, state, \
                 failure_message, refund_submitted_minor, page_secret, expire_time, create_time, \
                 update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                 $15, $16, $17, $18)",
            )
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
            .bind(&p.failure_message)
            .bind(p.refund_submitted_minor)
            .bind(&p.page_secret)
            .bind(p.expire_time)
            .bind(p.create_time)
            .bind(p.update_time)
            .execute(&mut *tx)
            .await?;
            insert_event!(tx, EventType::PaymentCreated, p, None);
            Ok(Written::Done(p.clone()))
        }
        Write::Change {
            tenant,
            payment_id,
            change,
        } => {
            let card = change.card.as_ref();
            let row: Option<PaymentRow> = sqlx::query_as(SQLITE_CHANGE)
                .bind(change.to.as_str())
                .bind(change.reason.map(FailureReason::as_str))
                .bind(&change.message)
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
                return Ok(Written::Skipped);
            };
            let payment = Payment::try_from(row)?;
            for &(state, event) in &change.passed {
                let view = StateChange::passing_view(&payment, state);
                insert_event!(tx, event, view, None);
            }
            insert_event!(tx, change.event, payment, None);
            insert_postings!(tx, &change.postings, payment, None, change.now);
            Ok(Written::Done(payment))
        }
    }
}

fn metadata_json(p: &Payment) -> Result<String, PaymentsError> {
    serde_json::to_string(&p.new.metadata).map_err(|_| corrupt("metadata"))
}

/// Whether no payment is changed twice in the group (the usual case; one
/// statement cannot update a row twice).
fn changes_distinct(writes: &[Write]) -> bool {
    let mut ids = HashSet::new();
    writes.iter().all(|w| match w {
        Write::Change { payment_id, .. } => ids.insert(payment_id.as_str()),
        Write::Create { .. } => true,
    })
}

// The pieces of the one-statement group. Parameters: keys $1-$6, new
// payments $7-$22, events $23-$26, then (only when the group changes
// payments) changes $27-$41 and ledger postings $42-$49.

/// The claim of a group's idempotency keys ($1–$6, the columns of
/// `push_key_columns`): the ids of the payments whose key it claimed.
macro_rules! claim_keys {
    () => {
        "INSERT INTO idempotency_keys (agency_id, environment, operation, \
         idempotency_key, request_hash, resource_id, create_time) \
         SELECT a, e, 'CreatePayment', k, h, r, t FROM UNNEST($1::text[], $2::text[], \
         $3::text[], $4::text[], $5::text[], $6::bigint[]) AS c(a, e, k, h, r, t) \
         ON CONFLICT (agency_id, environment, operation, idempotency_key) DO NOTHING \
         RETURNING resource_id"
    };
}

/// A keyed create of a group: the payment, its key and its request hash.
type Keyed<'a> = (&'a Payment, &'a str, &'a str);

/// The group's keyed creates, in one order, so that two groups never
/// deadlock on their keys.
fn keyed_creates(writes: &[Write]) -> Vec<Keyed<'_>> {
    let mut keyed: Vec<Keyed<'_>> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Create {
                payment,
                idempotency: Some((key, hash)),
            } => Some((payment, key.as_str(), hash.as_str())),
            _ => None,
        })
        .collect();
    keyed.sort_by(|a, b| {
        (&a.0.tenant.agency_id, a.0.tenant.environment.as_str(), a.1).cmp(&(
            &b.0.tenant.agency_id,
            b.0.tenant.environment.as_str(),
            b.1,
        ))
    });
    keyed
}

/// Adds `value` as the statement's next parameter.
fn push<'t, T>(args: &mut PgArguments, value: T) -> Result<(), PaymentsError>
where
    T: Encode<'t, Postgres> + Type<Postgres>,
{
    args.add(value)
        .map_err(|e| PaymentsError::Storage(sqlx::Error::Encode(e)))
}

/// One column of `rows`, as an array parameter.
fn column<R, T>(rows: &[R], field: impl Fn(&R) -> T) -> Vec<T> {
    rows.iter().map(field).collect()
}

/// Adds the arrays that `claim_keys!` binds, in its order.
fn push_key_columns(args: &mut PgArguments, keyed: &[Keyed<'_>]) -> Result<(), PaymentsError> {
    push(args, column(keyed, |k| k.0.tenant.agency_id.clone()))?;
    push(
        args,
        column(keyed, |k| k.0.tenant.environment.as_str().to_owned()),
    )?;
    push(args, column(keyed, |k| k.1.to_owned()))?;
    push(args, column(keyed, |k| k.2.to_owned()))?;
    push(args, column(keyed, |k| k.0.payment_id.clone()))?;
    push(args, column(keyed, |k| k.0.create_time))
}

/// Adds the arrays of new payments' columns (15, in the order of the
/// `UNNEST` of `group_new_payments!` and `pg_insert_payments`).
fn push_new_payment_columns(
    args: &mut PgArguments,
    creates: &[&Payment],
) -> Result<(), PaymentsError> {
    let metadata = creates
        .iter()
        .map(|p| metadata_json(p))
        .collect::<Result<Vec<_>, _>>()?;
    push(args, column(creates, |p| p.payment_id.clone()))?;
    push(args, column(creates, |p| p.tenant.agency_id.clone()))?;
    push(
        args,
        column(creates, |p| p.tenant.environment.as_str().to_owned()),
    )?;
    push(args, column(creates, |p| p.new.amount.minor))?;
    push(
        args,
        column(creates, |p| p.new.amount.currency.code().to_owned()),
    )?;
    push(args, column(creates, |p| p.new.reference.clone()))?;
    push(args, column(creates, |p| p.new.description.clone()))?;
    push(args, column(creates, |p| p.new.return_url.clone()))?;
    push(args, metadata)?;
    push(
        args,
        column(creates, |p| p.new.language.as_str().to_owned()),
    )?;
    push(args, column(creates, |p| i64::from(p.new.delayed_capture)))?;
    push(args, column(creates, |p| p.state.as_str().to_owned()))?;
    push(args, column(creates, |p| p.page_secret.clone()))?;
    push(args, column(creates, |p| p.expire_time))?;
    push(args, column(creates, |p| p.create_time))
}

/// Adds the arrays of state changes' columns (15, in the order of the
/// `UNNEST` of `group_changes!` and `PG_CHANGE_ROUND`).
fn push_change_columns(
    args: &mut PgArguments,
    changes: &[ChangeRef<'_>],
) -> Result<(), PaymentsError> {
    fn card<'a>(c: &ChangeRef<'a>) -> Option<&'a CardSummary> {
        c.2.card.as_ref()
    }
    push(args, column(changes, |c| c.1.to_owned()))?;
    push(args, column(changes, |c| c.0.agency_id.clone()))?;
    push(
        args,
        column(changes, |c| c.0.environment.as_str().to_owned()),
    )?;
    push(args, column(changes, |c| c.2.from.as_str().to_owned()))?;
    push(args, column(changes, |c| c.2.to.as_str().to_owned()))?;
    push(
        args,
        column(changes, |c| c.2.reason.map(|r| r.as_str().to_owned())),
    )?;
    push(args, column(changes, |c| c.2.message.clone()))?;
    push(args, column(changes, |c| c.2.fee_minor))?;
    push(
        args,
        column(changes, |c| card(c).map(|k| k.brand.as_str().to_owned())),
    )?;
    push(
        args,
        column(changes, |c| card(c).map(|k| k.first_six.clone())),
    )?;
    push(
        args,
        column(changes, |c| card(c).map(|k| k.last_four.clone())),
    )?;
    push(
        args,
        column(changes, |c| card(c).map(|k| i64::from(k.expiry.month))),
    )?;
    push(
        args,
        column(changes, |c| card(c).map(|k| i64::from(k.expiry.year))),
    )?;
    push(
        args,
        column(changes, |c| card(c).map(|k| k.cardholder_name.clone())),
    )?;
    push(args, column(changes, |c| c.2.now))
}

/// CTEs `k` (the keys claimed) and `np` (the payments inserted).
macro_rules! group_new_payments {
    () => {
        concat!(
            "WITH k AS (",
            claim_keys!(),
            "), np AS (INSERT INTO payments (payment_id, agency_id, environment, amount_minor, \
             currency, reference, description, return_url, metadata, language, delayed_capture, \
             state, failure_message, refund_submitted_minor, page_secret, expire_time, \
             create_time, update_time) \
             SELECT i, a, e, am, cu, re, de, ru, me, la, dc, st, '', 0, ps, ex, ct, ct \
             FROM UNNEST($7::text[], $8::text[], $9::text[], $10::bigint[], $11::text[], \
             $12::text[], $13::text[], $14::text[], $15::text[], $16::text[], $17::bigint[], \
             $18::text[], $19::text[], $20::bigint[], $21::bigint[], $22::bool[]) \
             AS c(i, a, e, am, cu, re, de, ru, me, la, dc, st, ps, ex, ct, kd) \
             WHERE NOT c.kd OR c.i IN (SELECT resource_id FROM k) RETURNING ",
            payment_columns!(),
            ")"
        )
    };
}

/// Which payments a change applies to: the one with the change's id
/// (`c.i`), if it is the tenant's (`c.a`, `c.e`) and still in the
/// change's `from` state (`c.f`); never a capture once a void was asked.
///
/// Written so that the only plan PostgreSQL can make is a loop over the
/// changes that looks each payment up by its primary key: no equality
/// here can be hashed or merged (`= ANY (ARRAY[..])`, `IS NOT DISTINCT
/// FROM`), so no plan scans the table to join it. The statements that use
/// it are prepared once per connection, and PostgreSQL keeps a generic
/// plan until the table is analysed; one made while `payments` was small
/// would otherwise join by scanning every payment (docs/performance.md).
/// The same rows match as with plain equalities: none of these columns is
/// ever NULL.
macro_rules! change_condition {
    () => {
        "payment_id = ANY (ARRAY[c.i]) \
         AND ROW(agency_id, environment, state) IS NOT DISTINCT FROM ROW(c.a, c.e, c.f) \
         AND (c.t <> 'success' OR void_requested_time IS NULL)"
    };
}

/// CTE `up`: the state changes, each on the payment if still in its
/// `from` state.
macro_rules! group_changes {
    () => {
        concat!(
            "up AS (UPDATE payments SET state = c.t, failure_reason = c.r, \
             failure_message = c.m, fee_minor = COALESCE(c.fee, fee_minor), \
             card_brand = COALESCE(c.cb, card_brand), \
             card_first_six = COALESCE(c.c6, card_first_six), \
             card_last_four = COALESCE(c.c4, card_last_four), \
             card_expiry_month = COALESCE(c.cm, card_expiry_month), \
             card_expiry_year = COALESCE(c.cy, card_expiry_year), \
             cardholder_name = COALESCE(c.cn, cardholder_name), update_time = c.n \
             FROM UNNEST($27::text[], $28::text[], $29::text[], $30::text[], $31::text[], \
             $32::text[], $33::text[], $34::bigint[], $35::text[], $36::text[], $37::text[], \
             $38::bigint[], $39::bigint[], $40::text[], $41::bigint[]) \
             AS c(i, a, e, f, t, r, m, fee, cb, c6, c4, cm, cy, cn, n) WHERE ",
            change_condition!(),
            " RETURNING ",
            payment_columns!(),
            ")"
        )
    };
}

/// The deliveries that the events in CTE `ev` (returning `event_id`,
/// `sequence`, `agency_id`, `environment`, `event_type`, `occur_time`) owe
/// to the tenant's webhook endpoints.
macro_rules! webhook_deliveries_of_ev {
    () => {
        "INSERT INTO webhook_deliveries (event_id, event_sequence, webhook_endpoint_id, \
         agency_id, environment, state, attempts, next_attempt_time, last_response, \
         create_time, update_time) SELECT ev.event_id, ev.sequence, w.webhook_endpoint_id, \
         w.agency_id, w.environment, 'pending', 0, ev.occur_time, '', ev.occur_time, \
         ev.occur_time FROM ev JOIN webhook_endpoints w ON w.agency_id = ev.agency_id \
         AND w.environment = ev.environment \
         AND (w.event_types = '' OR w.event_types LIKE '%,' || ev.event_type || ',%')"
    };
}

/// CTEs `ev` (the events of the payments in `done`, in the group's order)
/// and `wh` (the deliveries they owe to webhook endpoints).
macro_rules! group_events {
    () => {
        concat!(
            "ev AS (INSERT INTO payment_events (event_id, agency_id, environment, payment_id, \
         event_type, occur_time, state, failure_reason, failure_message, \
         refund_submitted_minor, fee_minor, has_card) \
         SELECT x.ev, d.agency_id, d.environment, d.payment_id, x.ty, d.update_time, \
         COALESCE(x.st, d.state), \
         CASE WHEN x.st IS NULL THEN d.failure_reason END, \
         CASE WHEN x.st IS NULL THEN d.failure_message ELSE '' END, \
         d.refund_submitted_minor, CASE WHEN x.st IS NULL THEN d.fee_minor END, \
         CASE WHEN x.st = 'started' OR d.card_brand IS NULL THEN 0 ELSE 1 END \
         FROM UNNEST($23::text[], $24::text[], $25::text[], $26::text[]) \
         WITH ORDINALITY AS x(pid, ev, ty, st, o) \
         JOIN done d ON d.payment_id = x.pid ORDER BY x.o \
         RETURNING event_id, sequence, agency_id, environment, event_type, occur_time), \
         wh AS (",
            webhook_deliveries_of_ev!(),
            ")"
        )
    };
}

/// CTE `le`: the ledger postings of the changes written.
macro_rules! group_postings {
    () => {
        "le AS (INSERT INTO ledger_entries (entry_id, transaction_id, agency_id, environment, \
         transaction_type, account, currency, amount_minor, payment_id, posting_time) \
         SELECT l.id, l.tx, u.agency_id, u.environment, l.ty, l.acc, l.cur, l.am, \
         u.payment_id, l.t FROM UNNEST($42::text[], $43::text[], $44::text[], $45::text[], \
         $46::text[], $47::text[], $48::bigint[], $49::bigint[]) \
         AS l(pid, id, tx, ty, acc, cur, am, t) JOIN up u ON u.payment_id = l.pid)"
    };
}

/// [`pg_one_statement`]'s text for a group with state changes.
const PG_GROUP_WITH_CHANGES: &str = concat!(
    group_new_payments!(),
    ", ",
    group_changes!(),
    ", done AS (SELECT * FROM np UNION ALL SELECT * FROM up), ",
    group_events!(),
    ", ",
    group_postings!(),
    " SELECT * FROM done"
);

/// The whole group as one PostgreSQL statement of data-modifying CTEs
/// (keys, new payments, state changes, their events, webhook deliveries
/// and ledger postings), committed on its own, with no BEGIN or COMMIT,
/// where the transaction path needs six statements: one round trip, of a
/// statement prepared once per connection (see `change_condition!` for
/// why its cached plan stays right as the tables grow). Only when each
/// payment is changed at most once.
async fn pg_one_statement(
    conn: &mut PgConnection,
    writes: &[Write],
) -> Result<Vec<Written>, PaymentsError> {
    let creates: Vec<&Payment> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Create { payment, .. } => Some(payment),
            Write::Change { .. } => None,
        })
        .collect();
    let keyed: Vec<bool> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Create { idempotency, .. } => Some(idempotency.is_some()),
            Write::Change { .. } => None,
        })
        .collect();
    let changes: Vec<ChangeRef<'_>> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Change {
                tenant,
                payment_id,
                change,
            } => Some((tenant, payment_id.as_str(), change)),
            Write::Create { .. } => None,
        })
        .collect();
    // (payment, event id, event type, the state passed through that the
    // event records, or None for the state written) of every write, if
    // it is written (see `StateChange::passing_view`).
    let mut events: Vec<(&str, String, &str, Option<&str>)> = Vec::with_capacity(writes.len());
    for write in writes {
        match write {
            Write::Create { payment, .. } => events.push((
                payment.payment_id.as_str(),
                new_id(EVENT_ID_PREFIX),
                EventType::PaymentCreated.as_str(),
                None,
            )),
            Write::Change {
                payment_id, change, ..
            } => {
                for &(state, event) in &change.passed {
                    events.push((
                        payment_id.as_str(),
                        new_id(EVENT_ID_PREFIX),
                        event.as_str(),
                        Some(state.as_str()),
                    ));
                }
                events.push((
                    payment_id.as_str(),
                    new_id(EVENT_ID_PREFIX),
                    change.event.as_str(),
                    None,
                ));
            }
        }
    }
    // (payment, entry, transaction, type, account, currency, amount, time)
    type Posting<'a> = (&'a str, String, String, &'a str, &'a str, &'a str, i64, i64);
    let mut postings: Vec<Posting<'_>> = Vec::new();
    for (_, payment_id, change) in &changes {
        for transaction in &change.postings {
            let transaction_id = new_id(LEDGER_TRANSACTION_ID_PREFIX);
            for posting in transaction.postings() {
                postings.push((
                    payment_id,
                    new_id(LEDGER_ENTRY_ID_PREFIX),
                    transaction_id.clone(),
                    transaction.kind.as_str(),
                    posting.account.as_str(),
                    transaction.currency.code(),
                    posting.amount_minor,
                    change.now,
                ));
            }
        }
    }
    let mut args = PgArguments::default();
    push_key_columns(&mut args, &keyed_creates(writes))?;
    push_new_payment_columns(&mut args, &creates)?;
    push(&mut args, keyed)?;
    push(&mut args, column(&events, |e| e.0.to_owned()))?;
    push(&mut args, column(&events, |e| e.1.clone()))?;
    push(&mut args, column(&events, |e| e.2.to_owned()))?;
    push(&mut args, column(&events, |e| e.3.map(str::to_owned)))?;
    let query = if changes.is_empty() {
        // Creates only: a smaller statement, with no payment to update.
        sqlx::query_as_with(
            concat!(
                group_new_payments!(),
                ", done AS (SELECT * FROM np), ",
                group_events!(),
                " SELECT * FROM done"
            ),
            args,
        )
    } else {
        push_change_columns(&mut args, &changes)?;
        push(&mut args, column(&postings, |r| r.0.to_owned()))?;
        push(&mut args, column(&postings, |r| r.1.clone()))?;
        push(&mut args, column(&postings, |r| r.2.clone()))?;
        push(&mut args, column(&postings, |r| r.3.to_owned()))?;
        push(&mut args, column(&postings, |r| r.4.to_owned()))?;
        push(&mut args, column(&postings, |r| r.5.to_owned()))?;
        push(&mut args, column(&postings, |r| r.6))?;
        push(&mut args, column(&postings, |r| r.7))?;
        sqlx::query_as_with(PG_GROUP_WITH_CHANGES, args)
    };
    let rows: Vec<PaymentRow> = query.fetch_all(&mut *conn).await?;
    let mut done: HashMap<String, Payment> = rows
        .into_iter()
        .map(|row| {
            let payment = Payment::try_from(row)?;
            Ok((payment.payment_id.clone(), payment))
        })
        .collect::<Result<_, PaymentsError>>()?;
    Ok(writes
        .iter()
        .map(|w| {
            let id = match w {
                Write::Create { payment, .. } => payment.payment_id.as_str(),
                Write::Change { payment_id, .. } => payment_id.as_str(),
            };
            done.remove(id).map_or(Written::Skipped, Written::Done)
        })
        .collect())
}

/// The PostgreSQL group: keys, new payments, state changes (in rounds in
/// which each payment appears once, in arrival order), then the events
/// with their webhook deliveries, and the ledger postings, each one
/// statement.
async fn pg_group(tx: &mut PgConnection, writes: &[Write]) -> Result<Vec<Written>, PaymentsError> {
    let mut written: Vec<Option<Payment>> = writes.iter().map(|_| None).collect();
    let claimed = pg_claim_keys(tx, writes).await?;
    let creates: Vec<&Payment> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Create { payment, .. } if claimed.contains(payment.payment_id.as_str()) => {
                Some(payment)
            }
            _ => None,
        })
        .collect();
    pg_insert_payments(tx, &creates).await?;
    for (i, write) in writes.iter().enumerate() {
        if let Write::Create { payment, .. } = write
            && claimed.contains(payment.payment_id.as_str())
        {
            written[i] = Some(payment.clone());
        }
    }
    let mut pending: Vec<usize> = (0..writes.len())
        .filter(|&i| matches!(writes[i], Write::Change { .. }))
        .collect();
    while !pending.is_empty() {
        let mut ids = HashSet::new();
        let (round, later): (Vec<usize>, Vec<usize>) =
            pending.iter().partition(|&&i| match &writes[i] {
                Write::Change { payment_id, .. } => ids.insert(payment_id.as_str()),
                Write::Create { .. } => false,
            });
        let mut changed = pg_change_states(tx, writes, &round).await?;
        for i in round {
            if let Write::Change { payment_id, .. } = &writes[i] {
                written[i] = changed.remove(payment_id.as_str());
            }
        }
        pending = later;
    }
    pg_insert_events(tx, writes, &written).await?;
    pg_insert_postings(tx, writes, &written).await?;
    Ok(written
        .into_iter()
        .map(|p| p.map_or(Written::Skipped, Written::Done))
        .collect())
}

/// Claims the keys of the group's keyed creates, in one order (so that
/// two groups never deadlock on them); the ids of the creates that may
/// go ahead (unkeyed ones included).
async fn pg_claim_keys<'a>(
    tx: &mut PgConnection,
    writes: &'a [Write],
) -> Result<HashSet<&'a str>, PaymentsError> {
    let mut free: HashSet<&str> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Create {
                payment,
                idempotency: None,
            } => Some(payment.payment_id.as_str()),
            _ => None,
        })
        .collect();
    let keyed = keyed_creates(writes);
    if keyed.is_empty() {
        return Ok(free);
    }
    let mut args = PgArguments::default();
    push_key_columns(&mut args, &keyed)?;
    let claimed: Vec<String> = sqlx::query_scalar_with(claim_keys!(), args)
        .fetch_all(&mut *tx)
        .await?;
    let claimed: HashSet<String> = claimed.into_iter().collect();
    for (payment, _, _) in keyed {
        if claimed.contains(&payment.payment_id) {
            free.insert(payment.payment_id.as_str());
        }
    }
    Ok(free)
}

async fn pg_insert_payments(
    tx: &mut PgConnection,
    creates: &[&Payment],
) -> Result<(), PaymentsError> {
    if creates.is_empty() {
        return Ok(());
    }
    let mut args = PgArguments::default();
    push_new_payment_columns(&mut args, creates)?;
    sqlx::query_with(
        "INSERT INTO payments (payment_id, agency_id, environment, amount_minor, currency, \
         reference, description, return_url, metadata, language, delayed_capture, state, \
         failure_message, refund_submitted_minor, page_secret, expire_time, create_time, \
         update_time) \
         SELECT i, a, e, am, cu, re, de, ru, me, la, dc, st, '', 0, ps, ex, ct, ct \
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], \
         $7::text[], $8::text[], $9::text[], $10::text[], $11::bigint[], $12::text[], \
         $13::text[], $14::bigint[], $15::bigint[]) \
         AS c(i, a, e, am, cu, re, de, ru, me, la, dc, st, ps, ex, ct)",
        args,
    )
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A change of a group: the tenant, the payment id and the change.
type ChangeRef<'a> = (&'a Tenant, &'a str, &'a StateChange);

/// [`pg_change_states`]'s text.
const PG_CHANGE_ROUND: &str = concat!(
    "UPDATE payments SET state = c.t, failure_reason = c.r, failure_message = c.m, \
     fee_minor = COALESCE(c.fee, fee_minor), card_brand = COALESCE(c.cb, card_brand), \
     card_first_six = COALESCE(c.c6, card_first_six), \
     card_last_four = COALESCE(c.c4, card_last_four), \
     card_expiry_month = COALESCE(c.cm, card_expiry_month), \
     card_expiry_year = COALESCE(c.cy, card_expiry_year), \
     cardholder_name = COALESCE(c.cn, cardholder_name), update_time = c.n \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::bigint[], $9::text[], $10::text[], $11::text[], $12::bigint[], \
     $13::bigint[], $14::text[], $15::bigint[]) \
     AS c(i, a, e, f, t, r, m, fee, cb, c6, c4, cm, cy, cn, n) WHERE ",
    change_condition!(),
    " RETURNING ",
    payment_columns!()
);

/// One round of state changes (each payment at most once); the changed
/// payments by id.
async fn pg_change_states(
    tx: &mut PgConnection,
    writes: &[Write],
    round: &[usize],
) -> Result<HashMap<String, Payment>, PaymentsError> {
    let changes: Vec<ChangeRef<'_>> = round
        .iter()
        .filter_map(|&i| match &writes[i] {
            Write::Change {
                tenant,
                payment_id,
                change,
            } => Some((tenant, payment_id.as_str(), change)),
            Write::Create { .. } => None,
        })
        .collect();
    let mut args = PgArguments::default();
    push_change_columns(&mut args, &changes)?;
    let rows: Vec<PaymentRow> = sqlx::query_as_with(PG_CHANGE_ROUND, args)
        .fetch_all(&mut *tx)
        .await?;
    rows.into_iter()
        .map(|row| {
            let payment = Payment::try_from(row)?;
            Ok((payment.payment_id.clone(), payment))
        })
        .collect()
}

/// The events of the written payments (in the group's order, which is
/// their sequence order) and the deliveries they owe to webhook
/// endpoints.
async fn pg_insert_events(
    tx: &mut PgConnection,
    writes: &[Write],
    written: &[Option<Payment>],
) -> Result<(), PaymentsError> {
    let mut events: Vec<(String, EventType, Payment)> = Vec::with_capacity(writes.len());
    for (write, payment) in writes.iter().zip(written) {
        let Some(payment) = payment else { continue };
        match write {
            Write::Create { .. } => events.push((
                new_id(EVENT_ID_PREFIX),
                EventType::PaymentCreated,
                payment.clone(),
            )),
            Write::Change { change, .. } => {
                for &(state, event) in &change.passed {
                    events.push((
                        new_id(EVENT_ID_PREFIX),
                        event,
                        StateChange::passing_view(payment, state),
                    ));
                }
                events.push((new_id(EVENT_ID_PREFIX), change.event, payment.clone()));
            }
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    // The events and the deliveries they owe, in one statement.
    sqlx::query(concat!(
        "WITH ev AS (INSERT INTO payment_events (event_id, agency_id, environment, payment_id, \
         event_type, occur_time, state, failure_reason, failure_message, \
         refund_submitted_minor, fee_minor, has_card) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::bigint[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[], \
         $12::bigint[]) \
         RETURNING event_id, sequence, agency_id, environment, event_type, occur_time) ",
        webhook_deliveries_of_ev!()
    ))
    .bind(column(&events, |e| e.0.clone()))
    .bind(column(&events, |e| e.2.tenant.agency_id.clone()))
    .bind(column(&events, |e| {
        e.2.tenant.environment.as_str().to_owned()
    }))
    .bind(column(&events, |e| e.2.payment_id.clone()))
    .bind(column(&events, |e| e.1.as_str().to_owned()))
    .bind(column(&events, |e| e.2.update_time))
    .bind(column(&events, |e| e.2.state.as_str().to_owned()))
    .bind(column(&events, |e| {
        e.2.failure_reason.map(|r| r.as_str().to_owned())
    }))
    .bind(column(&events, |e| e.2.failure_message.clone()))
    .bind(column(&events, |e| e.2.refund_submitted_minor))
    .bind(column(&events, |e| e.2.fee_minor))
    .bind(column(&events, |e| i64::from(e.2.card.is_some())))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The ledger postings of the changes written, in one statement.
async fn pg_insert_postings(
    tx: &mut PgConnection,
    writes: &[Write],
    written: &[Option<Payment>],
) -> Result<(), PaymentsError> {
    // (entry, transaction, payment, type, account, currency, amount, time)
    type Row<'a> = (
        String,
        String,
        &'a Payment,
        &'a str,
        &'a str,
        &'a str,
        i64,
        i64,
    );
    let mut rows: Vec<Row<'_>> = Vec::new();
    for (write, payment) in writes.iter().zip(written) {
        let (Write::Change { change, .. }, Some(payment)) = (write, payment) else {
            continue;
        };
        for transaction in &change.postings {
            let transaction_id = new_id(LEDGER_TRANSACTION_ID_PREFIX);
            for posting in transaction.postings() {
                rows.push((
                    new_id(LEDGER_ENTRY_ID_PREFIX),
                    transaction_id.clone(),
                    payment,
                    transaction.kind.as_str(),
                    posting.account.as_str(),
                    transaction.currency.code(),
                    posting.amount_minor,
                    change.now,
                ));
            }
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ledger_entries (entry_id, transaction_id, agency_id, environment, \
         transaction_type, account, currency, amount_minor, payment_id, posting_time) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
         $6::text[], $7::text[], $8::bigint[], $9::text[], $10::bigint[])",
    )
    .bind(column(&rows, |r| r.0.clone()))
    .bind(column(&rows, |r| r.1.clone()))
    .bind(column(&rows, |r| r.2.tenant.agency_id.clone()))
    .bind(column(&rows, |r| {
        r.2.tenant.environment.as_str().to_owned()
    }))
    .bind(column(&rows, |r| r.3.to_owned()))
    .bind(column(&rows, |r| r.4.to_owned()))
    .bind(column(&rows, |r| r.5.to_owned()))
    .bind(column(&rows, |r| r.6))
    .bind(column(&rows, |r| r.2.payment_id.clone()))
    .bind(column(&rows, |r| r.7))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
