//! Group commit of payment creates and state changes.
//!
//! Concurrent requests queue their write; the writer task takes what is
//! waiting (up to [`GROUP_MAX`]) and writes it in one transaction
//! ([`store::write_group`]), so a busy service pays one commit and a few
//! statements for many requests instead of a transaction each. A request is
//! answered only after the transaction that holds its write commits. If a
//! group fails, its requests are retried one at a time, so that one bad
//! write (or a deadlock with another instance's group) fails only its own
//! request.
//!
//! The writer also remembers the payments it has just written
//! ([`JustWritten`]), so that the next step of a payment this instance
//! is taking through its lifecycle need not read it back first.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Instant;

use tokio::sync::{Mutex, oneshot};

use super::*;
use crate::store::{Write, Written};

/// Most writes in one transaction.
const GROUP_MAX: usize = 512;

/// The write of one request and where its answer goes.
type Unit = (Write, oneshot::Sender<Result<Written, PaymentsError>>);

pub(crate) struct Writer {
    queue: mpsc::Sender<Unit>,
    just_written: JustWritten,
}

impl Writer {
    /// Starts the writer task on the current runtime; it stops when the
    /// writer is dropped.
    ///
    /// One task: while it writes a group, the next one queues. Measured
    /// on two cores (docs/performance.md), a second task writing groups
    /// at the same time only split them in two, so that each write cost
    /// more of the database's CPU, which is what runs out first.
    ///
    /// Should the task panic (a bug), the requests of its group get an
    /// error, nothing they asked for having been acknowledged, and a new
    /// task takes over the queue.
    pub(crate) fn start(db: Database) -> Self {
        let (queue, receiver) = mpsc::channel::<Unit>(GROUP_MAX * 8);
        let receiver = Arc::new(Mutex::new(receiver));
        tokio::spawn(async move {
            loop {
                let (db, receiver) = (db.clone(), receiver.clone());
                let task = tokio::spawn(async move {
                    let mut receiver = receiver.lock().await;
                    let mut group = Vec::with_capacity(GROUP_MAX);
                    while receiver.recv_many(&mut group, GROUP_MAX).await > 0 {
                        write(&db, &mut group).await;
                    }
                });
                match task.await {
                    Err(error) if error.is_panic() => {
                        tracing::error!("the payments writer stopped on a bug; restarting it");
                    }
                    // The queue is closed: the service is stopping.
                    _ => return,
                }
            }
        });
        Self {
            queue,
            just_written: JustWritten::default(),
        }
    }

    /// Queues `write` and waits for its transaction to commit.
    pub(crate) async fn write(&self, write: Write) -> Result<Written, PaymentsError> {
        let changed = match &write {
            Write::Change { payment_id, .. } => Some(payment_id.clone()),
            Write::Create { .. } => None,
        };
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((write, reply))
            .await
            .map_err(|_| PaymentsError::Storage(sqlx::Error::PoolClosed))?;
        let written = answer
            .await
            .map_err(|_| PaymentsError::Storage(sqlx::Error::PoolClosed))??;
        match (&written, changed) {
            (Written::Done(payment), _) => self.just_written.remember(payment),
            // Not in the state this instance thought: what it remembers is stale.
            (Written::Skipped, Some(payment_id)) => self.just_written.forget(&payment_id),
            (Written::Skipped, None) => {}
        }
        Ok(written)
    }

    /// The tenant's payment as this instance last wrote it, if that was
    /// lately and it was then CREATED or CAPTURABLE (the states whose next
    /// step is the card step or the capture).
    ///
    /// Another instance, or a write that does not go through the writer
    /// (a void asked), may have changed the payment since. So a copy
    /// decides only what the write made from it checks again in the
    /// database (the state it changes from, and for a capture that no void
    /// was asked: [`store::write_group`]) and what never changes (amount,
    /// expiry time). Anything else is decided on a fresh read.
    pub(crate) fn just_written(&self, tenant: &Tenant, payment_id: &str) -> Option<Payment> {
        self.just_written.get(tenant, payment_id)
    }

    /// Forgets the payment, which is being changed other than through the
    /// writer.
    pub(crate) fn forget(&self, payment_id: &str) {
        self.just_written.forget(payment_id);
    }
}

/// Payments recently written, in two generations of at most
/// [`JustWritten::GENERATION`] each: when the newer is full, the older is
/// dropped and the newer takes its place. Bounded, and a payment is kept
/// for at least one generation's worth of writes.
#[derive(Default)]
struct JustWritten {
    generations: std::sync::Mutex<[HashMap<String, Payment>; 2]>,
}

impl JustWritten {
    const GENERATION: usize = 4096;

    fn remember(&self, payment: &Payment) {
        if !matches!(
            payment.state,
            PaymentState::Created | PaymentState::Capturable
        ) {
            self.forget(&payment.payment_id);
            return;
        }
        let copy = payment.clone();
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let [newer, older] = &mut *generations;
        let dropped = if newer.len() >= Self::GENERATION {
            std::mem::replace(older, std::mem::take(newer))
        } else {
            HashMap::new()
        };
        older.remove(&copy.payment_id);
        newer.insert(copy.payment_id.clone(), copy);
        drop(generations);
        // Thousands of payments: freed after the lock is let go.
        drop(dropped);
    }

    fn forget(&self, payment_id: &str) {
        let mut generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for generation in generations.iter_mut() {
            generation.remove(payment_id);
        }
    }

    fn get(&self, tenant: &Tenant, payment_id: &str) -> Option<Payment> {
        let generations = self
            .generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        generations
            .iter()
            .find_map(|generation| generation.get(payment_id))
            .filter(|payment| payment.tenant == *tenant)
            .cloned()
    }
}

async fn write(db: &Database, group: &mut Vec<Unit>) {
    let (mut writes, replies): (Vec<Write>, Vec<_>) = group.drain(..).unzip();
    let started = Instant::now();
    stamp(&mut writes, atiende_platform::storage::now_micros());
    let result = store::write_group(db, &writes).await;
    tracing::debug!(
        writes = writes.len(),
        elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
        ok = result.is_ok(),
        "group commit of payment writes"
    );
    match result {
        Ok(written) => {
            for (written, reply) in written.into_iter().zip(replies) {
                let _ = reply.send(Ok(written));
            }
        }
        Err(error) if replies.len() == 1 => {
            if let Some(reply) = replies.into_iter().next() {
                let _ = reply.send(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(%error, writes = writes.len(), "a group commit failed; writing one request at a time");
            for (mut write, reply) in writes.into_iter().zip(replies) {
                stamp(
                    std::slice::from_mut(&mut write),
                    atiende_platform::storage::now_micros(),
                );
                let written = store::write_group(db, std::slice::from_ref(&write))
                    .await
                    .and_then(|mut written| {
                        written
                            .pop()
                            .ok_or(PaymentsError::Corrupt("empty group result"))
                    });
                let _ = reply.send(written);
            }
        }
    }
}

/// Dates each write's event when its group is written, not when its
/// request was queued. A stream that meets a missing sequence number waits
/// for it until the event after it is 2 s old; a request that waited longer
/// than that in the queue must not make an uncommitted event look rolled
/// back.
fn stamp(writes: &mut [Write], now: i64) {
    for write in writes {
        match write {
            Write::Create { payment, .. } => payment.update_time = payment.update_time.max(now),
            Write::Change { change, .. } => change.now = change.now.max(now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::payment::Language;

    fn payment(n: usize, agency_id: &str, state: PaymentState) -> Payment {
        Payment {
            payment_id: format!("pay_{n}"),
            tenant: Tenant {
                agency_id: agency_id.to_owned(),
                environment: Environment::Sandbox,
            },
            new: NewPayment {
                amount: Money::new(Currency::parse("CLP").unwrap(), 1_000),
                reference: String::new(),
                description: String::new(),
                return_url: String::new(),
                metadata: BTreeMap::new(),
                language: Language::Es,
                delayed_capture: true,
            },
            state,
            failure_reason: None,
            failure_message: String::new(),
            card: None,
            refund_submitted_minor: 0,
            fee_minor: None,
            page_secret: String::new(),
            expire_time: 0,
            create_time: 0,
            update_time: 0,
            void_requested: false,
        }
    }

    #[test]
    fn just_written_keeps_the_next_steps_payments_for_their_tenant_only() {
        let memory = JustWritten::default();
        let created = payment(1, "agy_a", PaymentState::Created);
        memory.remember(&created);
        let tenant = created.tenant.clone();
        assert_eq!(memory.get(&tenant, "pay_1"), Some(created.clone()));
        let other = Tenant {
            agency_id: "agy_b".to_owned(),
            environment: Environment::Sandbox,
        };
        assert_eq!(memory.get(&other, "pay_1"), None);
        let live = Tenant {
            environment: Environment::Live,
            ..tenant.clone()
        };
        assert_eq!(memory.get(&live, "pay_1"), None);

        // A state whose next step is neither the card nor the capture:
        // forgotten, not kept as it was.
        memory.remember(&payment(1, "agy_a", PaymentState::Submitted));
        assert_eq!(memory.get(&tenant, "pay_1"), None);
        let capturable = payment(1, "agy_a", PaymentState::Capturable);
        memory.remember(&capturable);
        assert_eq!(memory.get(&tenant, "pay_1"), Some(capturable));
        memory.forget("pay_1");
        assert_eq!(memory.get(&tenant, "pay_1"), None);
    }

    #[test]
    fn just_written_is_bounded_and_keeps_a_generation_of_the_latest() {
        let memory = JustWritten::default();
        let total = 3 * JustWritten::GENERATION + 5;
        for n in 0..total {
            memory.remember(&payment(n, "agy_a", PaymentState::Created));
        }
        let kept: usize = memory
            .generations
            .lock()
            .unwrap()
            .iter()
            .map(HashMap::len)
            .sum();
        assert!(kept <= 2 * JustWritten::GENERATION, "{kept}");
        let tenant = payment(0, "agy_a", PaymentState::Created).tenant;
        // The latest generation's worth is always there.
        for n in total - JustWritten::GENERATION..total {
            assert!(memory.get(&tenant, &format!("pay_{n}")).is_some(), "{n}");
        }
        assert_eq!(memory.get(&tenant, "pay_0"), None);
    }
}
