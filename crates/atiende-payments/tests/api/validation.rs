//! Bad input: INVALID_ARGUMENT naming every offending field, never a panic.

use atiende_platform::auth::Environment;
use atiende_platform::testing;
use atiende_proto::payments::v1 as pb;
use tonic::Code;

use crate::support::{
    ALL, Engine, TestApp, agency_token, authed, card, money, payment_request, refund_request,
    violated_fields,
};

async fn create_violations(
    app: &TestApp,
    token: &str,
    request: pb::CreatePaymentRequest,
) -> Vec<String> {
    let status = app
        .payments()
        .create_payment(authed(request, token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    violated_fields(&status)
}

pub async fn bad_input_gets_field_violations(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let with = |change: fn(&mut pb::CreatePaymentRequest)| {
        let mut request = payment_request(1_000, "CLP");
        change(&mut request);
        request
    };
    let cases: Vec<(pb::CreatePaymentRequest, &[&str])> = vec![
        (
            with(|r| r.amount = Some(money(0, "CLP"))),
            &["amount.amount_minor"],
        ),
        (
            with(|r| r.amount = Some(money(-5, "USD"))),
            &["amount.amount_minor"],
        ),
        (with(|r| r.amount = None), &["amount"]),
        (
            with(|r| r.amount = Some(money(100, "XYZ"))),
            &["amount.currency_code"],
        ),
        (
            with(|r| r.amount = Some(money(100, "clp"))),
            &["amount.currency_code"],
        ),
        // Known, but not one the agency accepts.
        (
            with(|r| r.amount = Some(money(100, "JPY"))),
            &["amount.currency_code"],
        ),
        // Above the agency's limit (100 million CLP).
        (
            with(|r| r.amount = Some(money(100_000_001, "CLP"))),
            &["amount.amount_minor"],
        ),
        (
            with(|r| r.amount = Some(money(i64::MAX, "USD"))),
            &["amount.amount_minor"],
        ),
        (with(|r| r.reference = String::new()), &["reference"]),
        (with(|r| r.description = "x".repeat(256)), &["description"]),
        (with(|r| r.reference = "a\u{0}b".into()), &["reference"]),
        (
            with(|r| r.return_url = "http://municipio.example.cl/".into()),
            &["return_url"],
        ),
        (
            with(|r| r.return_url = "javascript:alert(1)".into()),
            &["return_url"],
        ),
        (with(|r| r.return_url = String::new()), &["return_url"]),
        (
            with(|r| r.metadata = (0..16).map(|i| (format!("k{i}"), "v".into())).collect()),
            &["metadata"],
        ),
        (
            with(|r| r.metadata = [("k".into(), "v".repeat(501))].into()),
            &["metadata[k]"],
        ),
        (with(|r| r.language = 99), &["language"]),
        (
            with(|r| r.idempotency_key = "k".repeat(256)),
            &["idempotency_key"],
        ),
    ];
    for (request, expected) in cases {
        assert_eq!(create_violations(&app, &token, request).await, expected);
    }
    // Every bad field at once.
    let all_bad = pb::CreatePaymentRequest {
        amount: Some(money(0, "XYZ")),
        reference: String::new(),
        description: String::new(),
        return_url: "ftp://x".into(),
        metadata: Default::default(),
        language: 7,
        delayed_capture: false,
        idempotency_key: String::new(),
    };
    let mut fields = create_violations(&app, &token, all_bad).await;
    fields.sort();
    assert_eq!(
        fields,
        [
            "amount.amount_minor",
            "amount.currency_code",
            "description",
            "language",
            "reference",
            "return_url"
        ]
    );
    // http://localhost is for the sandbox only.
    let live = testing::token(
        &atiende_platform::ids::new_id("agy"),
        ALL,
        Environment::Live,
    );
    let local = with(|r| r.return_url = "http://localhost:8000/vuelta".into());
    assert_eq!(
        create_violations(&app, &live, local.clone()).await,
        ["return_url"]
    );
    app.create(&token, local).await;

    // Ids, pages, cards, refunds.
    let bad_id = app
        .payments()
        .get_payment(authed(
            pb::GetPaymentRequest {
                payment_id: "pay_nope".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad_id), ["payment_id"]);
    let bad_page = app
        .payments()
        .list_payments(authed(
            pb::ListPaymentsRequest {
                page_size: 5000,
                page_token: "garbage!".into(),
                card_last_four_digits: "12a4".into(),
                states: vec![0],
                ..Default::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    let mut fields = violated_fields(&bad_page);
    fields.sort();
    assert_eq!(
        fields,
        ["card_last_four_digits", "page_size", "page_token", "states"]
    );

    let payment = app.create(&token, payment_request(1_000, "CLP")).await;
    let card_cases: Vec<(pb::SimulateCardSubmissionRequest, &[&str])> = vec![
        (
            card(&payment.payment_id, "4242 4242 4242 4241"),
            &["card_number"],
        ),
        (
            card(&payment.payment_id, "6011 1111 1111 1117"),
            &["card_number"],
        ),
        (card(&payment.payment_id, "42"), &["card_number"]),
        (
            pb::SimulateCardSubmissionRequest {
                cvc: "12".into(),
                ..card(&payment.payment_id, "4242424242424242")
            },
            &["cvc"],
        ),
        (
            pb::SimulateCardSubmissionRequest {
                expiry_month: 13,
                ..card(&payment.payment_id, "4242424242424242")
            },
            &["expiry_month"],
        ),
        (
            pb::SimulateCardSubmissionRequest {
                expiry_year: 2020,
                ..card(&payment.payment_id, "4242424242424242")
            },
            &["expiry_year"],
        ),
        (
            pb::SimulateCardSubmissionRequest {
                cardholder_name: " ".into(),
                ..card(&payment.payment_id, "4242424242424242")
            },
            &["cardholder_name"],
        ),
    ];
    for (request, expected) in card_cases {
        let status = app
            .payments()
            .simulate_card_submission(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), expected);
        // The card number never comes back in an error.
        assert!(!status.message().contains("4242"), "{}", status.message());
    }
    assert_eq!(
        app.get(&token, &payment.payment_id).await.state(),
        pb::PaymentState::Created,
        "a refused card step changes nothing"
    );

    let refund_cases: Vec<(pb::CreateRefundRequest, &[&str])> = vec![
        (
            refund_request(&payment.payment_id, 0, 0, "CLP"),
            &["amount.amount_minor"],
        ),
        (
            refund_request(&payment.payment_id, 10, -1, "CLP"),
            &["refund_amount_available.amount_minor"],
        ),
        (refund_request("", 10, 0, "CLP"), &["payment_id"]),
        (
            pb::CreateRefundRequest {
                amount: None,
                refund_amount_available: None,
                ..refund_request(&payment.payment_id, 1, 0, "CLP")
            },
            &["amount", "refund_amount_available"],
        ),
    ];
    for (request, expected) in refund_cases {
        let status = app
            .refunds()
            .create_refund(authed(request, &token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), expected);
    }
    Ok(())
}

/// Random garbage in every field of every request: the answer is always a
/// considered one (never INTERNAL or UNKNOWN, which a panic or an unchecked
/// database error would give).
pub async fn random_input_never_breaks_the_service(engine: Engine) -> anyhow::Result<()> {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let app = TestApp::spawn(engine).await?;
    let (_, token) = agency_token(ALL);
    let paid = app.paid(&token, 1_000, "CLP").await;
    let mut rng = StdRng::seed_from_u64(0x00A7_1EDE);
    let pieces = [
        "",
        "pay_",
        "CLP",
        "usd",
        "https://",
        "http://localhost",
        "\u{0}",
        "ñ",
        "💳",
        "'",
        "\"",
        "%",
        "_",
        ",",
        "--",
        ";",
        "<",
        "4242",
        " ",
        "9",
        "-1",
        "\n",
    ];
    let mut text = |rng: &mut StdRng| -> String {
        let mut s = String::new();
        for _ in 0..rng.random_range(0..6) {
            s.push_str(pieces[rng.random_range(0..pieces.len())]);
        }
        if rng.random_bool(0.1) {
            s.push_str(&"x".repeat(rng.random_range(200..2_000)));
        }
        s
    };
    let number = |rng: &mut StdRng| -> i64 {
        match rng.random_range(0..4) {
            0 => i64::MIN,
            1 => i64::MAX,
            2 => rng.random_range(-5..5),
            _ => rng.random(),
        }
    };
    let int = |rng: &mut StdRng| -> i32 {
        if rng.random_bool(0.5) {
            rng.random()
        } else {
            rng.random_range(-2..14)
        }
    };
    let considered = |result: Result<(), tonic::Status>| match result {
        Ok(()) => {}
        Err(status) => assert!(
            !matches!(
                status.code(),
                Code::Internal | Code::Unknown | Code::Unavailable
            ),
            "{status:?}"
        ),
    };
    for _ in 0..40 {
        let money = |rng: &mut StdRng, text: &mut dyn FnMut(&mut StdRng) -> String| {
            rng.random_bool(0.8)
                .then(|| crate::support::money(number(rng), &text(rng)))
        };
        let create = pb::CreatePaymentRequest {
            amount: money(&mut rng, &mut text),
            reference: text(&mut rng),
            description: text(&mut rng),
            return_url: text(&mut rng),
            metadata: (0..rng.random_range(0..20))
                .map(|_| (text(&mut rng), text(&mut rng)))
                .collect(),
            language: int(&mut rng),
            delayed_capture: rng.random(),
            idempotency_key: text(&mut rng),
        };
        considered(
            app.payments()
                .create_payment(authed(create, &token))
                .await
                .map(drop),
        );
        let id = if rng.random_bool(0.3) {
            paid.payment_id.clone()
        } else {
            text(&mut rng)
        };
        considered(
            app.payments()
                .list_payments(authed(
                    pb::ListPaymentsRequest {
                        states: vec![int(&mut rng)],
                        reference: text(&mut rng),
                        create_time_range: None,
                        card_last_four_digits: text(&mut rng),
                        page_size: int(&mut rng),
                        page_token: text(&mut rng),
                    },
                    &token,
                ))
                .await
                .map(drop),
        );
        considered(
            app.payments()
                .simulate_card_submission(authed(
                    pb::SimulateCardSubmissionRequest {
                        payment_id: id.clone(),
                        card_number: text(&mut rng),
                        expiry_month: int(&mut rng),
                        expiry_year: int(&mut rng),
                        cvc: text(&mut rng),
                        cardholder_name: text(&mut rng),
                    },
                    &token,
                ))
                .await
                .map(drop),
        );
        considered(
            app.refunds()
                .create_refund(authed(
                    pb::CreateRefundRequest {
                        payment_id: id.clone(),
                        amount: money(&mut rng, &mut text),
                        refund_amount_available: money(&mut rng, &mut text),
                        reason: text(&mut rng),
                        idempotency_key: text(&mut rng),
                    },
                    &token,
                ))
                .await
                .map(drop),
        );
        considered(
            app.payments()
                .list_payment_events(authed(
                    pb::ListPaymentEventsRequest {
                        payment_id: id,
                        page_size: int(&mut rng),
                        page_token: text(&mut rng),
                    },
                    &token,
                ))
                .await
                .map(drop),
        );
        considered(
            app.ledger()
                .get_balance(authed(
                    pb::GetBalanceRequest {
                        currency_code: text(&mut rng),
                        as_of_time: Some(prost_types::Timestamp {
                            seconds: number(&mut rng),
                            nanos: int(&mut rng),
                        }),
                    },
                    &token,
                ))
                .await
                .map(drop),
        );
    }
    // The paid payment is as it was.
    assert_eq!(
        app.get(&token, &paid.payment_id).await.state(),
        pb::PaymentState::Success
    );
    Ok(())
}
