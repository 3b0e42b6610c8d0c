//! What the hosted payment page does: the page URL's secret is the
//! payer's only credential, so these calls are not scoped by a token but
//! by that secret.

use subtle::ConstantTimeEq;

use super::*;

impl PaymentsService {
    /// The payment behind a page URL, if the secret matches.
    pub async fn payment_for_page(
        &self,
        payment_id: &str,
        page_secret: &str,
    ) -> Result<Option<Payment>, PaymentsError> {
        let payment = store::get_payment_for_page(&self.db, payment_id).await?;
        Ok(payment.filter(|p| bool::from(p.page_secret.as_bytes().ct_eq(page_secret.as_bytes()))))
    }

    /// The payer opened the page: CREATED becomes STARTED (once; the page
    /// URL is single-use from then on, `next_url` is no longer returned).
    pub async fn open_page(&self, payment: Payment) -> Result<Payment, PaymentsError> {
        if payment.state != PaymentState::Created {
            return Ok(payment);
        }
        let tenant = payment.tenant.clone();
        let payment_id = payment.payment_id.clone();
        match self
            .move_to(&tenant, payment, PaymentState::Started, None, "", None)
            .await
        {
            Err(PaymentsError::IllegalTransition(_)) => {
                self.get_payment(&tenant, &payment_id).await
            }
            other => other,
        }
    }

    /// The payer submitted a card on the page.
    pub async fn submit_card_on_page(
        &self,
        payment: Payment,
        card: &CardSubmission,
    ) -> Result<Payment, PaymentsError> {
        self.card_step(payment, card).await
    }

    /// The payer chose to cancel on the page: FAILED, CANCELLED_BY_USER.
    pub async fn cancel_on_page(&self, payment: Payment) -> Result<Payment, PaymentsError> {
        let tenant = payment.tenant.clone();
        self.move_to(
            &tenant,
            payment,
            PaymentState::Failed,
            Some(FailureReason::CancelledByUser),
            "cancelled by the payer on the payment page",
            None,
        )
        .await
    }
}
