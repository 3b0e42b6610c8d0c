//! Background jobs. Instances coordinate through the database only: the
//! expiry job's state changes are conditional updates, so two instances
//! running it at once expire each payment once, and a webhook delivery is
//! taken under a lease (a conditional update of its next attempt time).

use std::sync::Arc;
use std::time::Duration;

use atiende_platform::server::Shutdown;
use atiende_platform::storage::now_micros;

use crate::service::{PaymentsError, PaymentsService};

/// Runs the recovery of interrupted payments, the expiry job and the
/// recovery of interrupted refunds every `interval` until shutdown (or
/// until the database is closed).
pub fn spawn_expiry_job(
    service: Arc<PaymentsService>,
    interval: Duration,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = ticks.tick() => {}
            }
            match service.recover_interrupted_voids(now_micros()).await {
                Ok(0) => {}
                Ok(recovered) => tracing::info!(recovered, "finished interrupted voids"),
                Err(PaymentsError::Storage(sqlx::Error::PoolClosed)) => return,
                Err(error) => tracing::warn!(%error, "void recovery failed; retrying later"),
            }
            match service.recover_interrupted_payments(now_micros()).await {
                Ok(0) => {}
                Ok(recovered) => tracing::info!(recovered, "recovered interrupted payments"),
                Err(PaymentsError::Storage(sqlx::Error::PoolClosed)) => return,
                Err(error) => tracing::warn!(%error, "payment recovery failed; retrying later"),
            }
            match service.expire_stale_payments(now_micros()).await {
                Ok(0) => {}
                Ok(expired) => tracing::info!(expired, "expired stale payments"),
                Err(PaymentsError::Storage(sqlx::Error::PoolClosed)) => return,
                Err(error) => tracing::warn!(%error, "expiry job failed; retrying later"),
            }
            match service.finish_stale_refunds(now_micros()).await {
                Ok(0) => {}
                Ok(finished) => tracing::info!(finished, "finished interrupted refunds"),
                Err(PaymentsError::Storage(sqlx::Error::PoolClosed)) => return,
                Err(error) => tracing::warn!(%error, "refund recovery failed; retrying later"),
            }
            match service.prune_expired_records(now_micros()).await {
                Ok((0, 0)) => {}
                Ok((keys, events)) => {
                    tracing::info!(keys, events, "pruned idempotency keys and events")
                }
                Err(PaymentsError::Storage(sqlx::Error::PoolClosed)) => return,
                Err(error) => tracing::warn!(%error, "retention job failed; retrying later"),
            }
        }
    })
}

/// Delivers due webhooks every `interval`, and as soon as this instance
/// records events, until shutdown.
pub fn spawn_webhook_job(
    service: Arc<PaymentsService>,
    interval: Duration,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut written = service.subscribe_events();
        let stop = shutdown.wait();
        tokio::pin!(stop);
        loop {
            match service.deliver_due_webhooks(now_micros()).await {
                Ok(_) => {}
                Err(PaymentsError::Storage(sqlx::Error::PoolClosed)) => return,
                Err(error) => tracing::warn!(%error, "webhook job failed; retrying later"),
            }
            tokio::select! {
                () = &mut stop => return,
                _ = written.changed() => {}
                () = tokio::time::sleep(interval) => {}
            }
            // Under load events are recorded continuously: without a pause
            // the job would run (and query) back to back, for nothing
            // when no endpoint is registered.
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(WEBHOOK_WAKE_PAUSE) => {}
            }
        }
    })
}

/// The shortest time between two runs of the webhook job woken by events.
const WEBHOOK_WAKE_PAUSE: Duration = Duration::from_millis(100);
