//! RefundService.

use super::*;

#[tonic::async_trait]
impl pb::refund_service_server::RefundService for RefundApi {
    async fn create_refund(
        &self,
        request: Request<pb::CreateRefundRequest>,
    ) -> Reply<pb::CreateRefundResponse> {
        let tenant = authorised(&request, Scope::PaymentsRefund)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id));
        let amount = match parse_money(req.amount.as_ref(), "amount", true) {
            Ok(m) => Some(m),
            Err(problems) => {
                add_all(&mut v, "", problems);
                None
            }
        };
        let available = match parse_money(
            req.refund_amount_available.as_ref(),
            "refund_amount_available",
            false,
        ) {
            Ok(m) => Some(m),
            Err(problems) => {
                add_all(&mut v, "", problems);
                None
            }
        };
        if req.reason.chars().count() > 255 || req.reason.chars().any(char::is_control) {
            v.add(
                "reason",
                "must be at most 255 characters, without control characters",
            );
        }
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let (((payment_id, amount), available), key) =
            v.finish_with(payment_id.zip(amount).zip(available).zip(key))?;
        let refund = self
            .0
            .create_refund(
                &tenant,
                &payment_id,
                amount,
                available,
                &req.reason,
                key.as_deref(),
            )
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreateRefundResponse {
            refund: Some(refund_to_pb(&refund)),
        }))
    }

    async fn get_refund(
        &self,
        request: Request<pb::GetRefundRequest>,
    ) -> Reply<pb::GetRefundResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let refund_id = parse_id(REFUND_ID_PREFIX, &request.get_ref().refund_id)
            .map_err(|e| ApiError::invalid("refund_id", e))?;
        let refund = self
            .0
            .get_refund(&tenant, &refund_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetRefundResponse {
            refund: Some(refund_to_pb(&refund)),
        }))
    }

    async fn list_refunds(
        &self,
        request: Request<pb::ListRefundsRequest>,
    ) -> Reply<pb::ListRefundsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = if req.payment_id.is_empty() {
            Some(None)
        } else {
            v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id))
                .map(Some)
        };
        let states = v.check("states", parse_enum_list(&req.states, refund_state_from_pb));
        let range = v.check(
            "create_time_range",
            parse_time_range(req.create_time_range.as_ref()),
        );
        let filters = format!(
            "payment={};states={:?};range={:?}",
            req.payment_id, req.states, range
        );
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, &filters, REFUND_ID_PREFIX),
        );
        let ((((payment_id, states), (created_from, created_before)), page_size), cursor) =
            v.finish_with(payment_id.zip(states).zip(range).zip(page_size).zip(cursor))?;
        let filter = RefundFilter {
            payment_id,
            states,
            created_from,
            created_before,
        };
        let page = self
            .0
            .list_refunds(&tenant, &filter, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListRefundsResponse {
            refunds: page.items.iter().map(refund_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }
}
