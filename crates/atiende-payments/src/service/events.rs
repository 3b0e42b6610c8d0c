//! Events (lists and streams) and the ledger (balances, export).

use super::*;

impl PaymentsService {
    /// The tenant's balances at `as_of` (now when `None`), and that time.
    pub async fn get_balance(
        &self,
        tenant: &Tenant,
        currency: Option<Currency>,
        as_of: Option<i64>,
    ) -> Result<(Vec<AccountBalance>, i64), PaymentsError> {
        // Entries are posted with the time they were written; "now" is one
        // microsecond later so that the entries of this instant count.
        let as_of = as_of.unwrap_or_else(|| now_micros().saturating_add(1));
        Ok((
            store::balances(&self.db, tenant, currency, as_of).await?,
            as_of,
        ))
    }

    /// The cursor of the last event recorded so far: a stream started from
    /// it gets only events recorded from now on.
    pub async fn current_event_cursor(&self) -> Result<i64, PaymentsError> {
        store::last_event_sequence(&self.db).await
    }

    /// Refuses a cursor older than the events kept: resuming from it would
    /// silently skip the pruned events.
    pub async fn check_event_cursor(&self, cursor: i64) -> Result<(), PaymentsError> {
        if cursor < store::events_pruned_through(&self.db).await? {
            return Err(PaymentsError::CursorTooOld);
        }
        Ok(())
    }

    /// The retention job: prunes idempotency keys and events older than
    /// they are kept, as of `now` (a parameter, so that tests drive it
    /// without waiting). Returns how many keys and events.
    pub async fn prune_expired_records(&self, now: i64) -> Result<(u64, u64), PaymentsError> {
        let keys = store::prune_idempotency_keys(
            &self.db,
            now.saturating_sub(self.retention.idempotency_key_micros),
        )
        .await?;
        let events =
            store::prune_events(&self.db, now.saturating_sub(self.retention.event_micros)).await?;
        Ok((keys, events))
    }

    /// Streams the tenant's events after `cursor` into `sink`, in recording
    /// order, until the receiver goes away or the server shuts down. An
    /// error ends the stream after being sent.
    pub async fn watch_events(
        &self,
        tenant: Tenant,
        cursor: i64,
        types: Vec<EventType>,
        sink: mpsc::Sender<Result<PaymentEvent, PaymentsError>>,
    ) {
        if let Err(error) = self.stream_events(&tenant, cursor, &types, &sink).await {
            let _ = sink.send(Err(error)).await;
        }
    }

    async fn stream_events(
        &self,
        tenant: &Tenant,
        cursor: i64,
        types: &[EventType],
        sink: &mpsc::Sender<Result<PaymentEvent, PaymentsError>>,
    ) -> Result<(), PaymentsError> {
        let mut written = self.events_written.subscribe();
        let stop = self.shutdown.clone().wait();
        tokio::pin!(stop);
        let mut after = cursor;
        loop {
            loop {
                let high = store::committed_event_sequence(
                    &self.db,
                    after,
                    now_micros(),
                    EVENT_GAP_WAIT_MICROS,
                )
                .await?;
                if high == after {
                    break;
                }
                let events =
                    store::tenant_events(&self.db, tenant, after, high, types, WATCH_BATCH).await?;
                let full = events.len() == usize::try_from(WATCH_BATCH).unwrap_or(usize::MAX);
                for event in events {
                    after = event.sequence;
                    if sink.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                if !full {
                    // Nothing else of this tenant's up to `high`.
                    after = high;
                }
            }
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = sink.closed() => return Ok(()),
                _ = written.changed() => {}
                () = tokio::time::sleep(WATCH_POLL) => {}
            }
        }
    }

    /// One chunk of the tenant's ledger entries posted in [`from`,
    /// `before`), after `cursor`: at most [`EXPORT_CHUNK_ENTRIES`], never
    /// splitting a transaction, and where the next chunk starts (`None`
    /// at the end).
    pub async fn export_chunk(
        &self,
        tenant: &Tenant,
        currency: Option<Currency>,
        from: Option<i64>,
        before: i64,
        cursor: Option<&ExportCursor>,
    ) -> Result<(Vec<LedgerEntry>, Option<ExportCursor>), PaymentsError> {
        let limit = i64::try_from(EXPORT_CHUNK_ENTRIES).unwrap_or(i64::MAX);
        let entries =
            store::ledger_entries(&self.db, tenant, currency, from, before, cursor, limit).await?;
        let (chunk, more) = complete_transactions(entries, EXPORT_CHUNK_ENTRIES);
        let next = chunk.last().filter(|_| more).map(|e| ExportCursor {
            posting_time: e.posting_time,
            transaction_id: e.transaction_id.clone(),
        });
        Ok((chunk, next))
    }
}
