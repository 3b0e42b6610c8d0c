//! PaymentService.

use super::*;

#[tonic::async_trait]
impl pb::payment_service_server::PaymentService for PaymentApi {
    async fn create_payment(
        &self,
        request: Request<pb::CreatePaymentRequest>,
    ) -> Reply<pb::CreatePaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let key = v.check(
            "idempotency_key",
            parse_idempotency_key(&req.idempotency_key),
        );
        let language = match pb::Language::try_from(req.language) {
            Ok(pb::Language::Unspecified | pb::Language::Es) => Some(Language::Es),
            Ok(pb::Language::En) => Some(Language::En),
            Err(_) => None,
        };
        let new = match NewPayment::parse(
            parse_money(req.amount.as_ref(), "amount", true),
            &req.reference,
            &req.description,
            &req.return_url,
            &req.metadata,
            language,
            req.delayed_capture,
            tenant.environment,
        ) {
            Ok(new) => Some(new),
            Err(problems) => {
                add_all(&mut v, "", problems);
                None
            }
        };
        let (new, key) = v.finish_with(new.zip(key))?;
        let payment = self
            .0
            .create_payment(&tenant, new, key.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CreatePaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Reply<pb::GetPaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let payment_id = parse_payment_id(&request.get_ref().payment_id)?;
        let payment = self
            .0
            .get_payment(&tenant, &payment_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetPaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Reply<pb::ListPaymentsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let states = v.check(
            "states",
            parse_enum_list(&req.states, payment_state_from_pb),
        );
        let range = v.check(
            "create_time_range",
            parse_time_range(req.create_time_range.as_ref()),
        );
        let reference = if req.reference.is_empty() {
            None
        } else {
            v.check("reference", parse_text(&req.reference))
        };
        let last_four = req.card_last_four_digits.as_str();
        let four_digits = last_four.len() == 4 && last_four.bytes().all(|b| b.is_ascii_digit());
        if !last_four.is_empty() && !four_digits {
            v.add("card_last_four_digits", "must be four digits");
        }
        let filters = format!(
            "states={:?};reference={};range={:?};last4={}",
            req.states, req.reference, range, last_four
        );
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_id_cursor(&req.page_token, &filters, PAYMENT_ID_PREFIX),
        );
        let (((states, (created_from, created_before)), page_size), cursor) =
            v.finish_with(states.zip(range).zip(page_size).zip(cursor))?;
        let filter = PaymentFilter {
            states,
            reference,
            created_from,
            created_before,
            card_last_four: (!last_four.is_empty()).then(|| last_four.to_owned()),
        };
        let page = self
            .0
            .list_payments(&tenant, &filter, page_size, cursor.as_deref())
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPaymentsResponse {
            payments: page.items.iter().map(|p| self.payment_to_pb(p)).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }

    async fn capture_payment(
        &self,
        request: Request<pb::CapturePaymentRequest>,
    ) -> Reply<pb::CapturePaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let payment_id = parse_payment_id(&request.get_ref().payment_id)?;
        let payment = self
            .0
            .capture_payment(&tenant, &payment_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CapturePaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn cancel_payment(
        &self,
        request: Request<pb::CancelPaymentRequest>,
    ) -> Reply<pb::CancelPaymentResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        let payment_id = parse_payment_id(&request.get_ref().payment_id)?;
        let payment = self
            .0
            .cancel_payment(&tenant, &payment_id)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::CancelPaymentResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }

    async fn list_payment_events(
        &self,
        request: Request<pb::ListPaymentEventsRequest>,
    ) -> Reply<pb::ListPaymentEventsResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id));
        let filters = format!("payment={}", req.payment_id);
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let cursor = v.check(
            "page_token",
            decode_page_token(&req.page_token, &filters).and_then(|c| {
                c.map(|c| {
                    c.parse::<i64>()
                        .map_err(|_| "is not a page token from a previous call".to_owned())
                })
                .transpose()
            }),
        );
        let ((payment_id, page_size), cursor) =
            v.finish_with(payment_id.zip(page_size).zip(cursor))?;
        let page = self
            .0
            .list_payment_events(&tenant, &payment_id, page_size, cursor)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ListPaymentEventsResponse {
            events: page.items.iter().map(event_to_pb).collect(),
            next_page_token: page
                .next_cursor
                .map(|c| encode_page_token(&c, &filters))
                .unwrap_or_default(),
        }))
    }

    async fn watch_payment_events(
        &self,
        request: Request<pb::WatchPaymentEventsRequest>,
    ) -> Reply<ServerStream<pb::WatchPaymentEventsResponse>> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let cursor = if req.cursor.is_empty() {
            Some(None)
        } else {
            v.check("cursor", parse_event_cursor(&req.cursor)).map(Some)
        };
        let types = v.check("types", parse_enum_list(&req.types, event_type_from_pb));
        let (cursor, types) = v.finish_with(cursor.zip(types))?;
        // Resolved before answering: every event recorded after the call
        // returns is streamed.
        let cursor = match cursor {
            Some(cursor) => {
                self.0
                    .check_event_cursor(cursor)
                    .await
                    .map_err(ApiError::from)?;
                cursor
            }
            None => self
                .0
                .current_event_cursor()
                .await
                .map_err(ApiError::from)?,
        };
        let (sink, events) = mpsc::channel(64);
        let service = self.0.clone();
        tokio::spawn(async move { service.watch_events(tenant, cursor, types, sink).await });
        let stream = ReceiverStream::new(events).map(|item| match item {
            Ok(event) => Ok(pb::WatchPaymentEventsResponse {
                event: Some(event_to_pb(&event)),
            }),
            Err(error) => Err(Status::from(ApiError::from(error))),
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn simulate_card_submission(
        &self,
        request: Request<pb::SimulateCardSubmissionRequest>,
    ) -> Reply<pb::SimulateCardSubmissionResponse> {
        let tenant = authorised(&request, Scope::PaymentsCreate)?;
        if tenant.environment != Environment::Sandbox {
            return Err(ApiError::PermissionDenied(
                "SimulateCardSubmission is for sandbox callers only".to_owned(),
            )
            .into());
        }
        let req = request.into_inner();
        let mut v = Violations::new();
        let payment_id = v.check("payment_id", parse_id(PAYMENT_ID_PREFIX, &req.payment_id));
        let number = v.check("card_number", CardNumber::parse(&req.card_number));
        let cvc = number
            .as_ref()
            .and_then(|n| v.check("cvc", Cvc::parse(&req.cvc, n.brand())));
        let expiry = match Expiry::parse(
            req.expiry_month,
            req.expiry_year,
            atiende_platform::storage::now_micros(),
        ) {
            Ok(expiry) => Some(expiry),
            Err((field, description)) => {
                v.add(field, description);
                None
            }
        };
        let name = v.check(
            "cardholder_name",
            parse_cardholder_name(&req.cardholder_name),
        );
        let card = number.zip(cvc).zip(expiry).zip(name).map(
            |(((number, cvc), expiry), cardholder_name)| CardSubmission {
                number,
                cvc,
                expiry,
                cardholder_name,
            },
        );
        if let Some(card) = &card
            && SandboxGateway::outcome(card).is_none()
        {
            v.add(
                "card_number",
                "is not a sandbox test card (see the SimulateCardSubmission documentation)",
            );
        }
        let (payment_id, card) = v.finish_with(payment_id.zip(card))?;
        let payment = self
            .0
            .simulate_card_submission(&tenant, &payment_id, &card)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::SimulateCardSubmissionResponse {
            payment: Some(self.payment_to_pb(&payment)),
        }))
    }
}
