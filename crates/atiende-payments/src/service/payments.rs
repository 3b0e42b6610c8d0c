//! The payment lifecycle: create, read, list, capture, cancel, the
//! sandbox card step, and the expiry job.

use super::*;

impl PaymentsService {
    /// Creates a payment in CREATED. With an idempotency key, a replay of
    /// the same request returns the payment it created, and the key with
    /// another request is refused.
    pub async fn create_payment(
        &self,
        tenant: &Tenant,
        new: NewPayment,
        idempotency_key: Option<&str>,
    ) -> Result<Payment, PaymentsError> {
        let hash = payment_request_hash(&new);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay_payment(tenant, key, hash).await?
        {
            return Ok(original);
        }
        self.terms.for_agency(&tenant.agency_id).check(new.amount)?;
        let now = now_micros();
        let payment = Payment {
            payment_id: new_id(PAYMENT_ID_PREFIX),
            tenant: tenant.clone(),
            new,
            state: PaymentState::Created,
            failure_reason: None,
            failure_message: String::new(),
            card: None,
            refund_submitted_minor: 0,
            fee_minor: None,
            page_secret: format!(
                "{:032x}{:032x}",
                rand::random::<u128>(),
                rand::random::<u128>()
            ),
            expire_time: now.saturating_add(PAYMENT_LIFETIME_MICROS),
            create_time: now,
            update_time: now,
            void_requested: false,
        };
        let write = Write::Create {
            payment,
            idempotency: idempotency.map(|(key, hash)| (key.to_owned(), hash.to_owned())),
        };
        if let Written::Done(payment) = self.writer.write(write).await? {
            self.events_recorded();
            tracing::info!(payment_id = %payment.payment_id, agency_id = %tenant.agency_id, "payment created");
            return Ok(payment);
        }
        // A concurrent request with the same key won: answer as a replay.
        let (key, hash) = idempotency.ok_or(PaymentsError::Corrupt("idempotency"))?;
        self.replay_payment(tenant, key, hash)
            .await?
            .ok_or(PaymentsError::Corrupt("idempotency record"))
    }

    async fn replay_payment(
        &self,
        tenant: &Tenant,
        key: &str,
        hash: &str,
    ) -> Result<Option<Payment>, PaymentsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, tenant, "CreatePayment", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        store::get_payment(&self.db, tenant, &record.resource_id).await
    }

    pub async fn get_payment(
        &self,
        tenant: &Tenant,
        payment_id: &str,
    ) -> Result<Payment, PaymentsError> {
        store::get_payment(&self.db, tenant, payment_id)
            .await?
            .ok_or(PaymentsError::PaymentNotFound)
    }

    /// The payment as this instance just wrote it, if `usable` says that
    /// copy will do (see [`writer::Writer::just_written`] for what it may
    /// decide); otherwise as the database has it.
    async fn remembered_or_read(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        usable: impl FnOnce(&Payment) -> bool,
    ) -> Result<Payment, PaymentsError> {
        match self.writer.just_written(tenant, payment_id) {
            Some(payment) if usable(&payment) => Ok(payment),
            _ => self.get_payment(tenant, payment_id).await,
        }
    }

    pub async fn list_payments(
        &self,
        tenant: &Tenant,
        filter: &PaymentFilter,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Payment>, PaymentsError> {
        let items =
            store::list_payments(&self.db, tenant, filter, cursor, page_size.fetch_limit()).await?;
        Ok(Page::from_overfetch(items, page_size, |p| {
            p.payment_id.clone()
        }))
    }

    pub async fn list_payment_events(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        page_size: PageSize,
        after_sequence: Option<i64>,
    ) -> Result<Page<PaymentEvent>, PaymentsError> {
        if let Some(after) = after_sequence {
            self.check_event_cursor(after).await?;
        }
        let items = store::list_payment_events(
            &self.db,
            tenant,
            payment_id,
            after_sequence.unwrap_or(0),
            page_size.fetch_limit(),
        )
        .await?;
        // Events are listed only when the payment is the tenant's; an empty
        // list must still tell "none yet" from "not yours".
        if items.is_empty() {
            self.get_payment(tenant, payment_id).await?;
        }
        Ok(Page::from_overfetch(items, page_size, |e| {
            e.sequence.to_string()
        }))
    }

    /// Moves a payment to `to`, as the state machine allows from the state
    /// it is in, recording the event (and, on success, the fee and the
    /// ledger postings) atomically. A concurrent change is retried from the
    /// state it left.
    pub(super) async fn move_to(
        &self,
        tenant: &Tenant,
        mut payment: Payment,
        to: PaymentState,
        reason: Option<FailureReason>,
        message: &str,
        card: Option<&CardSummary>,
    ) -> Result<Payment, PaymentsError> {
        for _ in 0..STATE_CHANGE_ATTEMPTS {
            let change = self.change_along(&payment, &[], to, reason, message, card)?;
            let from = change.from;
            let write = Write::Change {
                tenant: tenant.clone(),
                payment_id: payment.payment_id.clone(),
                change,
            };
            if let Written::Done(changed) = self.writer.write(write).await? {
                self.events_recorded();
                tracing::info!(
                    payment_id = %changed.payment_id,
                    from = from.as_str(),
                    to = to.as_str(),
                    "payment state changed"
                );
                return Ok(changed);
            }
            payment = self.get_payment(tenant, &payment.payment_id).await?;
            // Expiry and cancellation act on the state they saw: if the
            // payer moved on meanwhile (a card being charged), they lose.
            let ends_early = matches!(to, PaymentState::Failed | PaymentState::Cancelled)
                && !matches!(
                    reason,
                    Some(FailureReason::Rejected | FailureReason::ProviderError)
                );
            if ends_early && payment.state != from {
                return Err(IllegalTransition {
                    from: payment.state,
                    to,
                }
                .into());
            }
            // A void was asked meanwhile: no capture will be written.
            if to == PaymentState::Success && payment.void_requested {
                return Err(PaymentsError::BeingVoided);
            }
        }
        Err(IllegalTransition {
            from: payment.state,
            to,
        }
        .into())
    }

    /// The change of `payment` from its state through `passed` to `to`,
    /// with the state machine's events (an illegal step is refused) and,
    /// to SUCCESS, the fee and the ledger postings.
    fn change_along(
        &self,
        payment: &Payment,
        passed: &[PaymentState],
        to: PaymentState,
        reason: Option<FailureReason>,
        message: &str,
        card: Option<&CardSummary>,
    ) -> Result<StateChange, PaymentsError> {
        let mut at = payment.state;
        let mut passed_events = Vec::with_capacity(passed.len());
        for &state in passed {
            passed_events.push((state, state::transition(at, state, None)?));
            at = state;
        }
        let event = state::transition(at, to, reason)?;
        let (fee_minor, postings) = if to == PaymentState::Success {
            let fee = self
                .terms
                .for_agency(&payment.tenant.agency_id)
                .fees
                .fee(payment.amount());
            (Some(fee.minor), capture_postings(payment.amount(), fee))
        } else {
            (None, Vec::new())
        };
        Ok(StateChange {
            from: payment.state,
            to,
            event,
            reason,
            message: message.to_owned(),
            card: card.cloned(),
            fee_minor,
            postings,
            now: now_micros(),
            passed: passed_events,
        })
    }

    /// Captures a CAPTURABLE payment; a SUCCESS one is returned unchanged.
    pub async fn capture_payment(
        &self,
        tenant: &Tenant,
        payment_id: &str,
    ) -> Result<Payment, PaymentsError> {
        // Captured only if the payment is still so when written.
        let payment = self
            .remembered_or_read(tenant, payment_id, |p| {
                p.state == PaymentState::Capturable && !p.void_requested
            })
            .await?;
        if payment.state == PaymentState::Success {
            return Ok(payment);
        }
        if payment.void_requested {
            return Err(PaymentsError::BeingVoided);
        }
        if payment.state != PaymentState::Capturable {
            return Err(IllegalTransition {
                from: payment.state,
                to: PaymentState::Success,
            }
            .into());
        }
        match self
            .move_to(tenant, payment, PaymentState::Success, None, "", None)
            .await
        {
            // A concurrent capture won: the payment is captured, once.
            Err(PaymentsError::IllegalTransition(IllegalTransition {
                from: PaymentState::Success,
                ..
            })) => self.get_payment(tenant, payment_id).await,
            // A concurrent cancel asked for the void first.
            Err(PaymentsError::IllegalTransition(IllegalTransition {
                from: PaymentState::Capturable,
                ..
            })) => Err(PaymentsError::BeingVoided),
            other => other,
        }
    }

    /// Cancels a payment that has not finished; a CANCELLED one is
    /// returned unchanged.
    pub async fn cancel_payment(
        &self,
        tenant: &Tenant,
        payment_id: &str,
    ) -> Result<Payment, PaymentsError> {
        let payment = self.get_payment(tenant, payment_id).await?;
        if payment.state == PaymentState::Cancelled {
            return Ok(payment);
        }
        let cancelled = if payment.state == PaymentState::Capturable {
            self.void_then_end(tenant, payment, VoidFor::Cancellation)
                .await
        } else {
            self.move_to(
                tenant,
                payment,
                PaymentState::Cancelled,
                Some(FailureReason::CancelledByAgency),
                "cancelled by the agency",
                None,
            )
            .await
        };
        match cancelled {
            Err(PaymentsError::IllegalTransition(IllegalTransition {
                from: PaymentState::Cancelled,
                ..
            })) => self.get_payment(tenant, payment_id).await,
            other => other,
        }
    }

    /// Ends a CAPTURABLE payment whose authorisation will not be captured:
    /// first marks it (so that it can no longer be captured), then voids
    /// the hold at the gateway, and only then records the new state and
    /// its event. A void the gateway fails leaves the payment CAPTURABLE
    /// and marked, answers `UNAVAILABLE`, and is finished by the recovery
    /// job ([`Self::recover_interrupted_voids`]): the payer is never
    /// charged for a payment that ends cancelled or expired.
    async fn void_then_end(
        &self,
        tenant: &Tenant,
        payment: Payment,
        void_for: VoidFor,
    ) -> Result<Payment, PaymentsError> {
        // Written outside the writer: what it remembers of the payment no
        // longer holds.
        self.writer.forget(&payment.payment_id);
        let requested = store::request_void(
            &self.db,
            tenant,
            &payment.payment_id,
            void_for,
            now_micros(),
        )
        .await?;
        let Some(recorded) = requested else {
            // No longer CAPTURABLE: captured, or ended, meanwhile.
            let now = self.get_payment(tenant, &payment.payment_id).await?;
            return Err(IllegalTransition {
                from: now.state,
                to: void_target(void_for).0,
            }
            .into());
        };
        let ended = self.finish_void(tenant, payment, recorded).await?;
        if recorded != void_for {
            // An earlier request (expiry, or cancellation) decided the end.
            return Err(IllegalTransition {
                from: ended.state,
                to: void_target(void_for).0,
            }
            .into());
        }
        Ok(ended)
    }

    /// Voids the hold of a payment marked for it and records what the
    /// payment becomes.
    async fn finish_void(
        &self,
        tenant: &Tenant,
        payment: Payment,
        void_for: VoidFor,
    ) -> Result<Payment, PaymentsError> {
        let gateway = self.gateway(tenant.environment)?;
        match gateway.void(&payment.payment_id, payment.amount()).await {
            VoidOutcome::Voided => {}
            VoidOutcome::Failed => {
                tracing::warn!(payment_id = %payment.payment_id, "the gateway failed a void; the recovery job retries it");
                return Err(PaymentsError::GatewayUnavailable);
            }
        }
        let (to, reason, message) = void_target(void_for);
        self.move_to(tenant, payment, to, Some(reason), message, None)
            .await
    }

    /// The recovery job for voids: a payment still CAPTURABLE a minute
    /// after its void was requested had its void failed by the gateway, or
    /// lost its process; the void is tried again and, once done, the
    /// payment ends as was asked. Returns how many. `now` is a parameter
    /// so tests drive the job without waiting.
    pub async fn recover_interrupted_voids(&self, now: i64) -> Result<usize, PaymentsError> {
        const STALE_AFTER_MICROS: i64 = 60 * 1_000_000;
        let mut recovered = 0;
        for item in
            store::pending_voids(&self.db, now.saturating_sub(STALE_AFTER_MICROS), 100).await?
        {
            let Some(payment) =
                store::get_payment(&self.db, &item.tenant, &item.payment_id).await?
            else {
                continue;
            };
            match self.finish_void(&item.tenant, payment, item.void_for).await {
                Ok(_) => recovered += 1,
                // Finished meanwhile, or the gateway still fails: later.
                Err(PaymentsError::IllegalTransition(_) | PaymentsError::GatewayUnavailable) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(recovered)
    }

    /// Plays the payer's card step (sandbox only): opens the page if it
    /// was not, submits the card, and records the gateway's answer.
    pub async fn simulate_card_submission(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        card: &CardSubmission,
    ) -> Result<Payment, PaymentsError> {
        if tenant.environment != Environment::Sandbox {
            return Err(PaymentsError::SandboxOnly);
        }
        let now = now_micros();
        // Opened only if the payment is still CREATED when written.
        let payment = self
            .remembered_or_read(tenant, payment_id, |p| {
                p.state == PaymentState::Created && now < p.expire_time
            })
            .await?;
        // As on the page: once expired, no card is taken (the expiry job
        // may not have run yet).
        if matches!(payment.state, PaymentState::Created | PaymentState::Started)
            && now >= payment.expire_time
        {
            return Err(PaymentsError::PaymentExpired);
        }
        self.card_step(payment, card).await
    }

    /// The payer's card step on a payment in CREATED or STARTED: opens
    /// the page if it was not, records the submitted card (what may be
    /// kept of it), asks the environment's gateway and records its answer.
    ///
    /// With a gateway that answers in process (the sandbox), all of that
    /// is one write; otherwise the submission is written before the
    /// gateway is asked ([`CardGateway::authorises_in_process`]).
    pub(super) async fn card_step(
        &self,
        payment: Payment,
        card: &CardSubmission,
    ) -> Result<Payment, PaymentsError> {
        let tenant = payment.tenant.clone();
        // Before any change: a payment no gateway can take stays as it is.
        let gateway = self.gateway(tenant.environment)?;
        let summary = card.summary();
        let mut payment = payment;
        let opening = payment.state == PaymentState::Created;
        if gateway.authorises_in_process() && (opening || payment.state == PaymentState::Started) {
            let outcome = gateway
                .authorise(&payment.payment_id, card, payment.amount())
                .await;
            let (to, reason, message) = answered(&payment, outcome);
            let passed: &[PaymentState] = if opening {
                &[PaymentState::Started, PaymentState::Submitted]
            } else {
                &[PaymentState::Submitted]
            };
            let change =
                self.change_along(&payment, passed, to, reason, message, Some(&summary))?;
            if let Some(answered) = self.card_write(&payment, change).await? {
                return Ok(answered);
            }
            // Changed meanwhile: step by step from what it now is.
            payment = self.get_payment(&tenant, &payment.payment_id).await?;
        }
        let mut submitted = None;
        if payment.state == PaymentState::Created {
            let change = self.change_along(
                &payment,
                &[PaymentState::Started],
                PaymentState::Submitted,
                None,
                "",
                Some(&summary),
            )?;
            submitted = self.card_write(&payment, change).await?;
            if submitted.is_none() {
                payment = self.get_payment(&tenant, &payment.payment_id).await?;
            }
        }
        let payment = match submitted {
            Some(submitted) => submitted,
            None => {
                if payment.state == PaymentState::Created {
                    payment = self
                        .move_to(&tenant, payment, PaymentState::Started, None, "", None)
                        .await?;
                }
                self.move_to(
                    &tenant,
                    payment,
                    PaymentState::Submitted,
                    None,
                    "",
                    Some(&summary),
                )
                .await?
            }
        };
        let outcome = gateway
            .authorise(&payment.payment_id, card, payment.amount())
            .await;
        self.record_authorisation(payment, outcome).await
    }

    /// Moves a SUBMITTED payment to what the gateway answered.
    async fn record_authorisation(
        &self,
        payment: Payment,
        outcome: Authorisation,
    ) -> Result<Payment, PaymentsError> {
        let (to, reason, message) = answered(&payment, outcome);
        let tenant = payment.tenant.clone();
        self.move_to(&tenant, payment, to, reason, message, None)
            .await
    }

    /// Writes a change of the card step that passes through other states
    /// (one row change, an event for each state): one wait for the writer
    /// instead of one per state. `None` when the payment was no longer in
    /// the state it was read in (nothing was written).
    async fn card_write(
        &self,
        payment: &Payment,
        change: StateChange,
    ) -> Result<Option<Payment>, PaymentsError> {
        let (from, to) = (change.from, change.to);
        let write = Write::Change {
            tenant: payment.tenant.clone(),
            payment_id: payment.payment_id.clone(),
            change,
        };
        match self.writer.write(write).await? {
            Written::Done(changed) => {
                self.events_recorded();
                tracing::info!(
                    payment_id = %changed.payment_id,
                    from = from.as_str(),
                    to = to.as_str(),
                    "card step recorded"
                );
                Ok(Some(changed))
            }
            Written::Skipped => Ok(None),
        }
    }

    /// The recovery job for payments: one still SUBMITTED 5 minutes after
    /// its card was submitted lost its process before the gateway's answer
    /// was recorded; the gateway is asked what became of the authorisation
    /// and the answer recorded, so no authorised payment is lost and none
    /// is charged twice. Returns how many. `now` is a parameter so tests
    /// drive the job without waiting.
    pub async fn recover_interrupted_payments(&self, now: i64) -> Result<usize, PaymentsError> {
        const STALE_AFTER_MICROS: i64 = 5 * 60 * 1_000_000;
        let mut recovered = 0;
        for item in
            store::interrupted_payments(&self.db, now.saturating_sub(STALE_AFTER_MICROS), 100)
                .await?
        {
            let Some(payment) =
                store::get_payment(&self.db, &item.tenant, &item.payment_id).await?
            else {
                continue;
            };
            let outcome = match (&payment.card, self.gateway(item.tenant.environment)) {
                (Some(card), Ok(gateway)) => {
                    gateway
                        .authorisation(&payment.payment_id, card, payment.amount())
                        .await
                }
                _ => Authorisation::ProviderError("the card step was interrupted"),
            };
            match self.record_authorisation(payment, outcome).await {
                Ok(_) => recovered += 1,
                // Finished meanwhile: nothing to do.
                Err(PaymentsError::IllegalTransition(_)) => {}
                Err(other) => return Err(other),
            }
        }
        Ok(recovered)
    }

    /// The expiry job: payments whose payer did not finish by `now` (90
    /// minutes after creation) and authorisations not captured within 7
    /// days become FAILED with reason EXPIRED. Returns how many. `now` is
    /// a parameter so tests drive the job without waiting.
    pub async fn expire_stale_payments(&self, now: i64) -> Result<usize, PaymentsError> {
        const BATCH: i64 = 100;
        let mut expired = 0;
        loop {
            let stale = store::stale_payments(
                &self.db,
                now,
                now.saturating_sub(CAPTURE_WINDOW_MICROS),
                BATCH,
            )
            .await?;
            let mut progressed = false;
            for item in &stale {
                let message = if item.state == PaymentState::Capturable {
                    "the authorisation was not captured within 7 days"
                } else {
                    "the payer did not finish within 90 minutes"
                };
                let Some(payment) =
                    store::get_payment(&self.db, &item.tenant, &item.payment_id).await?
                else {
                    continue;
                };
                let ended = if payment.state == PaymentState::Capturable {
                    // The hold is released before the payment fails.
                    self.void_then_end(&item.tenant, payment, VoidFor::Expiry)
                        .await
                } else {
                    self.move_to(
                        &item.tenant,
                        payment,
                        PaymentState::Failed,
                        Some(FailureReason::Expired),
                        message,
                        None,
                    )
                    .await
                };
                match ended {
                    Ok(_) => {
                        expired += 1;
                        progressed = true;
                    }
                    // Finished meanwhile (paid, cancelled, or expired by
                    // another instance): nothing to do. A void the gateway
                    // failed is retried by the recovery of voids.
                    Err(
                        PaymentsError::IllegalTransition(_) | PaymentsError::GatewayUnavailable,
                    ) => {}
                    Err(other) => return Err(other),
                }
            }
            if !progressed || stale.len() < usize::try_from(BATCH).unwrap_or(usize::MAX) {
                return Ok(expired);
            }
        }
    }
}

/// What a voided payment becomes: its state, reason and message.
fn void_target(void_for: VoidFor) -> (PaymentState, FailureReason, &'static str) {
    match void_for {
        VoidFor::Cancellation => (
            PaymentState::Cancelled,
            FailureReason::CancelledByAgency,
            "cancelled by the agency",
        ),
        VoidFor::Expiry => (
            PaymentState::Failed,
            FailureReason::Expired,
            "the authorisation was not captured within 7 days",
        ),
    }
}

/// A digest of what a create request asks for, to tell a replay from a
/// reuse of its idempotency key.
fn payment_request_hash(new: &NewPayment) -> String {
    let amount = new.amount.minor.to_string();
    let mut parts: Vec<&str> = vec![
        new.amount.currency.code(),
        &amount,
        &new.reference,
        &new.description,
        &new.return_url,
        new.language.as_str(),
        if new.delayed_capture {
            "delayed"
        } else {
            "immediate"
        },
    ];
    for (key, value) in &new.metadata {
        parts.push(key);
        parts.push(value);
    }
    request_hash(&parts)
}

/// The state a payment in the card step moves to on the gateway's answer,
/// with the failure's reason and message.
fn answered(
    payment: &Payment,
    outcome: Authorisation,
) -> (PaymentState, Option<FailureReason>, &'static str) {
    match outcome {
        Authorisation::Authorised if payment.new.delayed_capture => {
            (PaymentState::Capturable, None, "")
        }
        Authorisation::Authorised => (PaymentState::Success, None, ""),
        Authorisation::Declined(message) => {
            (PaymentState::Failed, Some(FailureReason::Rejected), message)
        }
        Authorisation::ProviderError(message) => (
            PaymentState::Error,
            Some(FailureReason::ProviderError),
            message,
        ),
    }
}
