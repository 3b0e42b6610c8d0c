//! Refunds: compare-and-set submission, outcome, reads.

use super::*;

impl PaymentsService {
    /// Refunds (part of) a SUCCESS payment if `expected_available` is
    /// still what can be refunded (compare-and-set). With an idempotency
    /// key, a replay returns the original refund, checked before the
    /// amount.
    pub async fn create_refund(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        amount: Money,
        expected_available: Money,
        reason: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Refund, PaymentsError> {
        let hash = request_hash(&[
            payment_id,
            amount.currency.code(),
            &amount.minor.to_string(),
            expected_available.currency.code(),
            &expected_available.minor.to_string(),
            reason,
        ]);
        let idempotency = idempotency_key.map(|key| (key, hash.as_str()));
        if let Some((key, hash)) = idempotency
            && let Some(original) = self.replay_refund(tenant, key, hash).await?
        {
            return Ok(original);
        }
        let now = now_micros();
        let refund = Refund {
            refund_id: new_id(REFUND_ID_PREFIX),
            payment_id: payment_id.to_owned(),
            tenant: tenant.clone(),
            amount,
            reason: reason.to_owned(),
            state: RefundState::Submitted,
            create_time: now,
            update_time: now,
        };
        let payment =
            match store::create_refund(&self.db, &refund, expected_available.minor, idempotency)
                .await?
            {
                RefundInsert::Created(payment) => *payment,
                RefundInsert::KeyTaken => {
                    let (key, hash) = idempotency.ok_or(PaymentsError::Corrupt("idempotency"))?;
                    return self
                        .replay_refund(tenant, key, hash)
                        .await?
                        .ok_or(PaymentsError::Corrupt("idempotency record"));
                }
                RefundInsert::NotApplied => {
                    return Err(self
                        .why_not_refundable(tenant, payment_id, amount, expected_available)
                        .await);
                }
            };
        self.events_recorded();
        tracing::info!(refund_id = %refund.refund_id, payment_id, "refund submitted");
        let outcome = match self.gateway(tenant.environment) {
            Ok(gateway) => {
                gateway
                    .refund(
                        &payment.payment_id,
                        payment.card.as_ref(),
                        &refund.refund_id,
                        amount,
                    )
                    .await
            }
            Err(_) => RefundOutcome::Failed,
        };
        let finished = store::finish_refund(
            &self.db,
            &refund,
            outcome == RefundOutcome::Succeeded,
            now_micros(),
        )
        .await?;
        self.events_recorded();
        Ok(finished.unwrap_or(refund))
    }

    /// Why a refund's compare-and-set did not apply, as the caller should
    /// hear it.
    async fn why_not_refundable(
        &self,
        tenant: &Tenant,
        payment_id: &str,
        amount: Money,
        expected_available: Money,
    ) -> PaymentsError {
        let payment = match self.get_payment(tenant, payment_id).await {
            Ok(payment) => payment,
            Err(error) => return error,
        };
        let currency = payment.amount().currency;
        let available = payment.refund_available();
        if payment.state != PaymentState::Success {
            PaymentsError::NotRefundable
        } else if amount.currency != currency {
            invalid("amount.currency_code", "must be the payment's currency")
        } else if expected_available.currency != currency {
            invalid(
                "refund_amount_available.currency_code",
                "must be the payment's currency",
            )
        } else if expected_available.minor != available.minor {
            PaymentsError::RefundAmountChanged
        } else if amount.minor > available.minor {
            invalid(
                "amount.amount_minor",
                "must be at most the payment's refund_amount_available",
            )
        } else {
            // Changed between the attempt and this read.
            PaymentsError::RefundAmountChanged
        }
    }

    async fn replay_refund(
        &self,
        tenant: &Tenant,
        key: &str,
        hash: &str,
    ) -> Result<Option<Refund>, PaymentsError> {
        let Some(record) =
            store::find_idempotency_key(&self.db, tenant, "CreateRefund", key).await?
        else {
            return Ok(None);
        };
        if record.request_hash != hash {
            return Err(PaymentsError::IdempotencyKeyReused);
        }
        store::get_refund(&self.db, tenant, &record.resource_id).await
    }

    pub async fn get_refund(
        &self,
        tenant: &Tenant,
        refund_id: &str,
    ) -> Result<Refund, PaymentsError> {
        store::get_refund(&self.db, tenant, refund_id)
            .await?
            .ok_or(PaymentsError::RefundNotFound)
    }

    pub async fn list_refunds(
        &self,
        tenant: &Tenant,
        filter: &RefundFilter,
        page_size: PageSize,
        cursor: Option<&str>,
    ) -> Result<Page<Refund>, PaymentsError> {
        let items =
            store::list_refunds(&self.db, tenant, filter, cursor, page_size.fetch_limit()).await?;
        Ok(Page::from_overfetch(items, page_size, |r| {
            r.refund_id.clone()
        }))
    }

    /// The recovery job for refunds: a refund still SUBMITTED 5 minutes
    /// after it was submitted lost its process before the gateway answered;
    /// the gateway is asked again (refund ids make that safe to repeat) and
    /// the answer recorded. Returns how many were finished. `now` is a
    /// parameter so tests drive the job without waiting.
    pub async fn finish_stale_refunds(&self, now: i64) -> Result<usize, PaymentsError> {
        const STALE_AFTER_MICROS: i64 = 5 * 60 * 1_000_000;
        let mut finished = 0;
        for refund in
            store::stale_refunds(&self.db, now.saturating_sub(STALE_AFTER_MICROS), 100).await?
        {
            let Some(payment) =
                store::get_payment(&self.db, &refund.tenant, &refund.payment_id).await?
            else {
                continue;
            };
            let outcome = match self.gateway(refund.tenant.environment) {
                Ok(gateway) => {
                    gateway
                        .refund(
                            &payment.payment_id,
                            payment.card.as_ref(),
                            &refund.refund_id,
                            refund.amount,
                        )
                        .await
                }
                Err(_) => RefundOutcome::Failed,
            };
            let succeeded = outcome == RefundOutcome::Succeeded;
            if store::finish_refund(&self.db, &refund, succeeded, now_micros())
                .await?
                .is_some()
            {
                self.events_recorded();
                finished += 1;
            }
        }
        Ok(finished)
    }
}
