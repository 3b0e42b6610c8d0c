//! `GET /payments/v1/ledger/transactions.csv`: the ledger export as CSV, for an
//! agency's finance team to open in a spreadsheet and match settlements.
//!
//! Authenticated like the gRPC API (`Authorization: Bearer <token>` with
//! `payments.read`), scoped to the token's agency and environment.
//! Query: `from` and `to` (half-open; `YYYY-MM-DD` for midnight UTC or
//! `YYYY-MM-DDTHH:MM:SSZ`; no `to` means now) and `currency` (optional).
//! One row per ledger entry, ordered as `ExportTransactions` orders them.

use std::sync::Arc;

use atiende_platform::auth::{Scope, TokenVerifier, bearer_token};
use atiende_platform::storage::now_micros;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::domain::ledger::LedgerEntry;
use crate::domain::money::Currency;
use crate::domain::payment::Tenant;
use crate::service::PaymentsService;
use crate::webhook::rfc3339;

pub const HEADER: &str = "posting_time,transaction_id,transaction_type,entry_id,account,\
currency,amount,amount_minor,payment_id,refund_id\n";

#[derive(Clone)]
pub struct ExportState {
    pub service: Arc<PaymentsService>,
    pub verifier: Arc<TokenVerifier>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ExportQuery {
    from: String,
    to: String,
    currency: String,
}

fn problem(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{text}\n"),
    )
        .into_response()
}

pub async fn transactions_csv(
    State(state): State<ExportState>,
    headers: HeaderMap,
    Query(query): Query<ExportQuery>,
) -> Response {
    let caller = match state
        .verifier
        .verify(bearer_token(&headers).unwrap_or_default())
        .await
    {
        Ok(caller) => caller,
        Err(error) => return problem(StatusCode::UNAUTHORIZED, error.reason()),
    };
    if caller.require(Scope::PaymentsRead).is_err() {
        return problem(
            StatusCode::FORBIDDEN,
            "the token lacks the scope payments.read",
        );
    }
    let parse = |raw: &str| (!raw.is_empty()).then(|| parse_utc(raw)).transpose();
    let (Ok(from), Ok(to)) = (parse(&query.from), parse(&query.to)) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "from and to must be YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)",
        );
    };
    let currency = if query.currency.is_empty() {
        None
    } else {
        match Currency::parse(&query.currency) {
            Ok(currency) => Some(currency),
            Err(_) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "currency must be a supported ISO 4217 code in upper case",
                );
            }
        }
    };
    let tenant = Tenant {
        agency_id: caller.agency_id,
        environment: caller.environment,
    };
    let before = to.unwrap_or_else(|| now_micros().saturating_add(1));
    let (sink, lines) = mpsc::channel::<Result<String, std::io::Error>>(4);
    let service = state.service;
    tokio::spawn(async move {
        if sink.send(Ok(HEADER.to_owned())).await.is_err() {
            return;
        }
        let mut cursor = None;
        loop {
            let chunk = service
                .export_chunk(&tenant, currency, from, before, cursor.as_ref())
                .await;
            let (entries, next) = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::error!(%error, "CSV export failed");
                    let _ = sink.send(Err(std::io::Error::other("export failed"))).await;
                    return;
                }
            };
            let text: String = entries.iter().map(csv_row).collect();
            if !text.is_empty() && sink.send(Ok(text)).await.is_err() {
                return;
            }
            match next {
                Some(next) => cursor = Some(next),
                None => return,
            }
        }
    });
    let mut response = Body::from_stream(ReceiverStream::new(lines)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"atiende-transactions.csv\""),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One entry as a CSV line. Every field is an id, a code, a number or a
/// timestamp: nothing needs quoting.
fn csv_row(e: &LedgerEntry) -> String {
    format!(
        "{},{},{},{},{},{},{},{},{},{}\n",
        rfc3339(e.posting_time),
        e.transaction_id,
        e.kind.as_str(),
        e.entry_id,
        e.account.as_str(),
        e.amount.currency.code(),
        e.amount.major(),
        e.amount.minor,
        e.payment_id,
        e.refund_id.as_deref().unwrap_or_default(),
    )
}

/// `YYYY-MM-DD` (midnight UTC) or `YYYY-MM-DDTHH:MM:SSZ`, in microseconds.
pub fn parse_utc(raw: &str) -> Result<i64, ()> {
    let (date, time) = match raw.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z').ok_or(())?)),
        None => (raw, None),
    };
    let number = |s: &str, digits: usize| -> Result<i64, ()> {
        if s.len() == digits && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| ())
        } else {
            Err(())
        }
    };
    let mut parts = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(());
    };
    let (y, m, d) = (number(y, 4)?, number(m, 2)?, number(d, 2)?);
    let (hh, mm, ss) = match time {
        None => (0, 0, 0),
        Some(time) => {
            let mut parts = time.split(':');
            let (Some(h), Some(mi), Some(s), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return Err(());
            };
            (number(h, 2)?, number(mi, 2)?, number(s, 2)?)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 59 {
        return Err(());
    }
    let shifted = if m <= 2 { y - 1 } else { y };
    let era = shifted.div_euclid(400);
    let yoe = shifted - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let micros = (days * 86_400 + hh * 3600 + mm * 60 + ss) * 1_000_000;
    // 30 February and the like do not survive the round trip.
    if rfc3339(micros).get(..10) != Some(date) {
        return Err(());
    }
    Ok(micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_and_times_parse_and_impossible_ones_do_not() {
        assert_eq!(parse_utc("1970-01-01"), Ok(0));
        assert_eq!(parse_utc("2026-11-22T12:00:00Z"), Ok(1_795_348_800_000_000));
        assert_eq!(parse_utc("2000-02-29"), Ok(951_782_400_000_000));
        for bad in [
            "2026-02-30",
            "2026-13-01",
            "2026-11-22T12:00:00",
            "2026-11-22T24:00:00Z",
            "26-11-22",
            "2026-11-22x",
            "",
        ] {
            assert_eq!(parse_utc(bad), Err(()), "{bad}");
        }
    }
}
