//! WatchPaymentEvents and ExportTransactions: server streams.

use std::collections::BTreeMap;
use std::time::Duration;

use atiende_platform::auth::{Environment, Scope};
use atiende_platform::testing;
use atiende_proto::payments::v1 as pb;
use pb::PaymentEventType as E;
use tonic::Code;
use tonic::codec::Streaming;

use crate::support::{ALL, Engine, TestApp, VISA_OK, agency_token, authed, payment_request};

async fn next(stream: &mut Streaming<pb::WatchPaymentEventsResponse>) -> pb::PaymentEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap()
        .event
        .unwrap()
}

async fn watch(
    app: &TestApp,
    token: &str,
    cursor: &str,
    types: &[E],
) -> Result<Streaming<pb::WatchPaymentEventsResponse>, tonic::Status> {
    app.payments()
        .watch_payment_events(authed(
            pb::WatchPaymentEventsRequest {
                cursor: cursor.into(),
                types: types.iter().map(|t| (*t).into()).collect(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn watch_streams_new_events_and_resumes_from_a_cursor(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let (_, other) = agency_token(ALL);
    let payment = app.create(&token, payment_request(3_000, "CLP")).await;
    let mut live = watch(&app, &token, "", &[]).await?;

    // Another agency's events are never streamed to this one.
    app.paid(&other, 1_000, "CLP").await;
    app.simulate(&token, &payment.payment_id, VISA_OK)
        .await
        .unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        let event = next(&mut live).await;
        assert_eq!(
            event.payment.as_ref().unwrap().payment_id,
            payment.payment_id
        );
        seen.push(event);
    }
    let types: Vec<E> = seen.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        types,
        [E::PaymentStarted, E::PaymentSubmitted, E::PaymentSucceeded]
    );

    // Resume after "started", only successes: the payment's, then a refund's.
    let mut resumed = watch(
        &app,
        &token,
        &seen[0].cursor,
        &[E::PaymentSucceeded, E::RefundSucceeded],
    )
    .await?;
    let first = next(&mut resumed).await;
    assert_eq!(first.event_id, seen[2].event_id);
    app.refund(&token, &payment.payment_id, 1_000, 3_000, "CLP")
        .await
        .unwrap();
    let refunded = next(&mut resumed).await;
    assert_eq!(refunded.r#type(), E::RefundSucceeded);
    assert_eq!(
        refunded.refund.as_ref().unwrap().state(),
        pb::RefundState::Success
    );
    // The first stream sees the refund's two events too.
    assert_eq!(next(&mut live).await.r#type(), E::RefundSubmitted);
    assert_eq!(next(&mut live).await.r#type(), E::RefundSucceeded);

    let bad = watch(&app, &token, "not-a-cursor", &[]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(crate::support::violated_fields(&bad), ["cursor"]);
    let agency = atiende_platform::ids::new_id("agy");
    let creator = testing::token(&agency, &[Scope::PaymentsCreate], Environment::Sandbox);
    let denied = watch(&app, &creator, "", &[]).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    Ok(())
}

async fn export(
    app: &TestApp,
    token: &str,
    request: pb::ExportTransactionsRequest,
) -> Vec<pb::ExportTransactionsResponse> {
    let mut stream = app
        .ledger()
        .export_transactions(authed(request, token))
        .await
        .unwrap()
        .into_inner();
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        chunks.push(chunk);
    }
    chunks
}

pub async fn export_streams_balanced_transactions_that_add_up_to_the_balances(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let (_, other) = agency_token(ALL);
    let clp = app.paid(&token, 10_000, "CLP").await;
    app.refund(&token, &clp.payment_id, 2_000, 10_000, "CLP")
        .await
        .unwrap();
    app.paid(&token, 1_000, "USD").await;
    app.paid(&other, 5_000, "CLP").await;

    let entries: Vec<pb::LedgerEntry> = export(&app, &token, Default::default())
        .await
        .into_iter()
        .flat_map(|c| c.entries)
        .collect();
    // Payment, fee and refund in CLP; payment and fee in USD.
    assert_eq!(entries.len(), 10);
    let mut per_transaction: BTreeMap<&str, i64> = BTreeMap::new();
    let mut per_account: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for e in &entries {
        let amount = e.amount.as_ref().unwrap();
        *per_transaction.entry(&e.transaction_id).or_default() += amount.amount_minor;
        *per_account
            .entry((amount.currency_code.clone(), e.account))
            .or_default() += amount.amount_minor;
        assert!(e.entry_id.starts_with("len_") && e.transaction_id.starts_with("ltx_"));
    }
    assert_eq!(per_transaction.len(), 5);
    assert!(per_transaction.values().all(|sum| *sum == 0));
    assert_eq!(per_account, app.balances(&token).await);
    let times: Vec<_> = entries
        .iter()
        .map(|e| {
            let t = e.posting_time.unwrap();
            (t.seconds, t.nanos, e.transaction_id.clone())
        })
        .collect();
    let mut sorted = times.clone();
    sorted.sort();
    assert_eq!(times, sorted, "ordered by posting time, then transaction");
    let refund_entries = entries
        .iter()
        .filter(|e| e.transaction_type() == pb::LedgerTransactionType::Refund)
        .count();
    assert_eq!(refund_entries, 2);
    assert!(entries.iter().any(|e| !e.refund_id.is_empty()));

    let usd = export(
        &app,
        &token,
        pb::ExportTransactionsRequest {
            currency_code: "USD".into(),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(usd.iter().map(|c| c.entries.len()).sum::<usize>(), 4);
    let before_anything = export(
        &app,
        &token,
        pb::ExportTransactionsRequest {
            posting_time_range: Some(atiende_proto::common::v1::TimeRange {
                start_time: None,
                end_time: clp.create_time,
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(before_anything.is_empty());
    let bad = app
        .ledger()
        .export_transactions(authed(
            pb::ExportTransactionsRequest {
                currency_code: "pesos".into(),
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    Ok(())
}

/// A server restarted on the same database has every acknowledged
/// payment, and a capture retried after the restart posts nothing twice.
pub async fn restart_loses_no_acknowledged_payment_and_never_captures_twice(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let open = app.create(&token, payment_request(1_000, "CLP")).await;
    let paid = app.paid(&token, 2_000, "CLP").await;
    let mut delayed = payment_request(3_000, "CLP");
    delayed.delayed_capture = true;
    let delayed = app.create(&token, delayed).await;
    app.simulate(&token, &delayed.payment_id, VISA_OK)
        .await
        .unwrap();
    let capture = pb::CapturePaymentRequest {
        payment_id: delayed.payment_id.clone(),
    };
    let captured = app
        .payments()
        .capture_payment(authed(capture.clone(), &token))
        .await?
        .into_inner()
        .payment
        .unwrap();
    let balances = app.balances(&token).await;

    let app = app.restart().await?;
    // The same page, now served by the new server.
    let path = |p: &pb::Payment| {
        p.next_url
            .split("/pay/")
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    };
    let reopened = app.get(&token, &open.payment_id).await;
    assert_eq!(path(&reopened), path(&open));
    assert_eq!(
        pb::Payment {
            next_url: String::new(),
            ..reopened
        },
        pb::Payment {
            next_url: String::new(),
            ..open
        }
    );
    assert_eq!(app.get(&token, &paid.payment_id).await, paid);
    assert_eq!(app.get(&token, &delayed.payment_id).await, captured);
    // The client did not see the first answer and retries.
    let again = app
        .payments()
        .capture_payment(authed(capture, &token))
        .await?
        .into_inner()
        .payment
        .unwrap();
    assert_eq!(again, captured);
    assert_eq!(app.balances(&token).await, balances);
    let payment_transactions: usize = export(&app, &token, Default::default())
        .await
        .iter()
        .flat_map(|c| &c.entries)
        .filter(|e| {
            e.payment_id == delayed.payment_id
                && e.transaction_type() == pb::LedgerTransactionType::Payment
        })
        .count();
    assert_eq!(
        payment_transactions, 2,
        "one PAYMENT transaction of two entries"
    );
    Ok(())
}

pub async fn csv_export_matches_the_ledger_and_needs_a_reader(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (agency, token) = agency_token(ALL);
    let (_, other) = agency_token(ALL);
    let clp = app.paid(&token, 10_000, "CLP").await;
    app.refund(&token, &clp.payment_id, 2_000, 10_000, "CLP")
        .await
        .unwrap();
    app.paid(&token, 1_000, "USD").await;
    app.paid(&other, 5_000, "CLP").await;
    let url = format!("{}/payments/v1/ledger/transactions.csv", app.public_url);
    let get = |query: &'static str, token: Option<String>| {
        let url = url.clone();
        async move {
            let mut request = reqwest::Client::new().get(format!("{url}{query}"));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            request.send().await.unwrap()
        }
    };

    let response = get("", Some(token.clone())).await;
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()?
            .starts_with("text/csv")
    );
    let body = response.text().await?;
    let mut lines = body.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("posting_time,transaction_id,")
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 10, "this agency's entries only");
    let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
    for row in &rows {
        assert_eq!(row.len(), 10);
        *sums.entry(row[5]).or_default() += row[7].parse::<i64>()?;
    }
    assert_eq!(sums, BTreeMap::from([("CLP", 0), ("USD", 0)]));
    assert!(
        rows.iter()
            .any(|r| r[2] == "payment" && r[4] == "collections" && r[6] == "-10.00")
    );
    assert!(rows.iter().any(|r| r[2] == "refund" && !r[9].is_empty()));

    let usd = get("?currency=USD", Some(token.clone()))
        .await
        .text()
        .await?;
    assert_eq!(usd.lines().count(), 1 + 4);
    let future = get("?from=2999-01-01", Some(token.clone()))
        .await
        .text()
        .await?;
    assert_eq!(future.lines().count(), 1, "the header only");

    assert_eq!(
        get("", None).await.status(),
        reqwest::StatusCode::UNAUTHORIZED
    );
    let creator = testing::token(&agency, &[Scope::PaymentsCreate], Environment::Sandbox);
    assert_eq!(
        get("", Some(creator)).await.status(),
        reqwest::StatusCode::FORBIDDEN
    );
    let bad = get("?from=2026-02-30", Some(token.clone())).await;
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    Ok(())
}
