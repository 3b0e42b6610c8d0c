//! LedgerService: balances, and a property test over random operations.

use std::collections::BTreeMap;

use atiende_proto::payments::v1 as pb;
use pb::LedgerAccount as A;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Code;

use crate::support::{
    ALL, DECLINED, Engine, REFUNDS_FAIL, TestApp, VISA_OK, agency_token, authed, minor,
    payment_request,
};

pub async fn balances_follow_the_documented_postings(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    // 10,000 CLP with a fee of 1.5 % + 100 = 250, then a refund of 2,000.
    let paid = app.paid(&token, 10_000, "CLP").await;
    app.refund(&token, &paid.payment_id, 2_000, 10_000, "CLP")
        .await
        .unwrap();
    app.paid(&token, 1_000, "USD").await;
    let response = app
        .ledger()
        .get_balance(authed(pb::GetBalanceRequest::default(), &token))
        .await?
        .into_inner();
    let rows: Vec<(String, A, i64)> = response
        .balances
        .iter()
        .map(|b| {
            let m = b.balance.clone().unwrap();
            (m.currency_code, b.account(), m.amount_minor)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("CLP".into(), A::Collections, -10_000),
            ("CLP".into(), A::AgencyReceivable, 7_750),
            ("CLP".into(), A::Fees, 250),
            ("CLP".into(), A::Refunds, 2_000),
            ("USD".into(), A::Collections, -1_000),
            ("USD".into(), A::AgencyReceivable, 955),
            ("USD".into(), A::Fees, 45),
        ]
    );
    // One currency; and as of a time before anything was posted.
    let usd = app
        .ledger()
        .get_balance(authed(
            pb::GetBalanceRequest {
                currency_code: "USD".into(),
                as_of_time: None,
            },
            &token,
        ))
        .await?
        .into_inner();
    assert_eq!(usd.balances.len(), 3);
    let before = app
        .ledger()
        .get_balance(authed(
            pb::GetBalanceRequest {
                currency_code: String::new(),
                as_of_time: paid.create_time,
            },
            &token,
        ))
        .await?
        .into_inner();
    assert!(before.balances.is_empty());
    let bad = app
        .ledger()
        .get_balance(authed(
            pb::GetBalanceRequest {
                currency_code: "usd".into(),
                as_of_time: None,
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    Ok(())
}

/// Random payments (paid, declined, delayed and captured, cancelled) and
/// refunds (current, stale, too large, failed by the provider) in three
/// currencies: after every
/// few operations the balances sum to zero per currency and equal what
/// the payments themselves say was collected, charged and refunded.
pub async fn random_operations_keep_the_ledger_balanced(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let mut rng = StdRng::seed_from_u64(0x00A7_1EDE);
    let currencies = ["CLP", "USD", "CLF"];
    let mut paid: Vec<(String, String)> = Vec::new();
    let mut failed_refunds = 0;
    for step in 0..80 {
        let currency = currencies[rng.random_range(0..currencies.len())];
        match rng.random_range(0..10) {
            0..=3 => {
                let mut request = payment_request(rng.random_range(1..5_000_000), currency);
                request.delayed_capture = rng.random_bool(0.3);
                let payment = app.create(&token, request).await;
                // Some cards decline; one pays but fails every refund.
                let card = match rng.random_range(0..10) {
                    0..=5 => VISA_OK,
                    6 | 7 => REFUNDS_FAIL,
                    _ => DECLINED,
                };
                let after = app
                    .simulate(&token, &payment.payment_id, card)
                    .await
                    .unwrap();
                if after.state() == pb::PaymentState::Capturable {
                    let mut client = app.payments();
                    let request = pb::CapturePaymentRequest {
                        payment_id: payment.payment_id.clone(),
                    };
                    if rng.random_bool(0.7) {
                        client.capture_payment(authed(request, &token)).await?;
                        paid.push((payment.payment_id, currency.to_owned()));
                    } else {
                        client
                            .cancel_payment(authed(
                                pb::CancelPaymentRequest {
                                    payment_id: request.payment_id,
                                },
                                &token,
                            ))
                            .await?;
                    }
                } else if after.state() == pb::PaymentState::Success {
                    paid.push((payment.payment_id, currency.to_owned()));
                }
            }
            _ if !paid.is_empty() => {
                let (id, currency) = paid[rng.random_range(0..paid.len())].clone();
                let available = minor(&app.get(&token, &id).await.refund_amount_available);
                let stale = rng.random_bool(0.2);
                let amount = if available > 0 && rng.random_bool(0.9) {
                    rng.random_range(1..=available)
                } else {
                    available + 1
                };
                let believed = if stale { available + 1 } else { available };
                let result = app.refund(&token, &id, amount, believed, &currency).await;
                match result {
                    Ok(refund) => {
                        assert!(!stale && amount <= available);
                        if refund.state() == pb::RefundState::Error {
                            failed_refunds += 1;
                        }
                    }
                    Err(s) if stale => assert_eq!(s.code(), Code::FailedPrecondition),
                    Err(s) => assert_eq!(s.code(), Code::InvalidArgument, "{s:?}"),
                }
            }
            _ => {}
        }
        if step % 10 == 9 {
            check_ledger(&app, &token).await;
        }
    }
    assert!(paid.len() > 5, "the seed exercises enough payments");
    assert!(failed_refunds > 0, "and refunds the provider fails");
    Ok(())
}

async fn check_ledger(app: &TestApp, token: &str) {
    let balances = app.balances(token).await;
    let mut per_currency: BTreeMap<String, i64> = BTreeMap::new();
    for ((currency, _), amount) in &balances {
        *per_currency.entry(currency.clone()).or_default() += amount;
    }
    assert!(
        per_currency.values().all(|sum| *sum == 0),
        "{per_currency:?}"
    );

    // What the payments say, independently of the ledger.
    let mut expected: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = app
            .payments()
            .list_payments(authed(
                pb::ListPaymentsRequest {
                    states: vec![pb::PaymentState::Success.into()],
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        for p in &page.payments {
            let currency = p.amount.as_ref().unwrap().currency_code.clone();
            let (amount, fee, refunded) = (
                minor(&p.amount),
                minor(&p.fee),
                minor(&p.refund_amount_submitted),
            );
            let mut add = |account: A, value: i64| {
                *expected
                    .entry((currency.clone(), account.into()))
                    .or_default() += value;
            };
            add(A::Collections, -amount);
            add(A::AgencyReceivable, amount - fee - refunded);
            add(A::Fees, fee);
            add(A::Refunds, refunded);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    expected.retain(|_, v| *v != 0);
    let mut actual = balances;
    actual.retain(|_, v| *v != 0);
    assert_eq!(actual, expected);
}
