//! LedgerService: balances and the export stream.

use super::*;

#[tonic::async_trait]
impl pb::ledger_service_server::LedgerService for LedgerApi {
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Reply<pb::GetBalanceResponse> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let currency = if req.currency_code.is_empty() {
            Some(None)
        } else {
            v.check("currency_code", Currency::parse(&req.currency_code))
                .map(Some)
        };
        let as_of = match req.as_of_time.as_ref() {
            None => Some(None),
            Some(t) => v.check("as_of_time", timestamp_to_micros(t)).map(Some),
        };
        let (currency, as_of) = v.finish_with(currency.zip(as_of))?;
        let (balances, as_of) = self
            .0
            .get_balance(&tenant, currency, as_of)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::GetBalanceResponse {
            balances: balances
                .iter()
                .map(|b| pb::AccountBalance {
                    account: account_to_pb(b.account).into(),
                    balance: Some(money_to_pb(b.balance)),
                })
                .collect(),
            as_of_time: Some(timestamp(as_of)),
        }))
    }

    async fn export_transactions(
        &self,
        request: Request<pb::ExportTransactionsRequest>,
    ) -> Reply<ServerStream<pb::ExportTransactionsResponse>> {
        let tenant = authorised(&request, Scope::PaymentsRead)?;
        let req = request.into_inner();
        let mut v = Violations::new();
        let range = v.check(
            "posting_time_range",
            parse_time_range(req.posting_time_range.as_ref()),
        );
        let currency = if req.currency_code.is_empty() {
            Some(None)
        } else {
            v.check("currency_code", Currency::parse(&req.currency_code))
                .map(Some)
        };
        let ((from, end), currency) = v.finish_with(range.zip(currency))?;
        // Entries posted after the call started are not included.
        let before =
            end.unwrap_or_else(|| atiende_platform::storage::now_micros().saturating_add(1));
        let (sink, chunks) = mpsc::channel(4);
        let service = self.0.clone();
        tokio::spawn(async move {
            let mut cursor = None;
            loop {
                let chunk = service
                    .export_chunk(&tenant, currency, from, before, cursor.as_ref())
                    .await;
                let (entries, next) = match chunk {
                    Ok(chunk) => chunk,
                    Err(error) => {
                        let _ = sink.send(Err(Status::from(ApiError::from(error)))).await;
                        return;
                    }
                };
                if !entries.is_empty() {
                    let response = pb::ExportTransactionsResponse {
                        entries: entries.iter().map(entry_to_pb).collect(),
                    };
                    if sink.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
                match next {
                    Some(next) => cursor = Some(next),
                    None => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(chunks))))
    }
}
