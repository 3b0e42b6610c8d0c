//! Citizens over gRPC and the password sign-in check: registration and its
//! validation, duplicates, what each agency sees and may change, lockout,
//! second factors, the audit trail and its verification.

use std::time::Duration;

use atiende_identity::config::CitizenConfig;
use atiende_identity::domain::IdentityError;
use atiende_identity::domain::audit::BrokenReason;
use atiende_identity::domain::national_id::{NationalId, NationalIdScheme};
use atiende_identity::domain::totp::{TotpSecret, hotp};
use atiende_identity::service::citizens::{PasswordAttempt, SignInOutcome};
use atiende_identity::store::citizens::verify_audit_chain;
use atiende_platform::auth::{Environment, Scope};
use atiende_platform::on_db;
use atiende_platform::storage::now_micros;
use atiende_proto::identity::v1 as pb;
use secrecy::ExposeSecret;
use tonic::Code;

use crate::support::{AppOptions, Credentials, Engine, TestApp, authed, violated_fields};

pub const PASSWORD: &str = "correct horse battery staple";
const MINUTE: i64 = 60_000_000;

fn run(value: &str) -> pb::NationalId {
    pb::NationalId {
        scheme: pb::NationalIdScheme::ClRun.into(),
        value: value.to_owned(),
    }
}

fn registration(national_id: &str) -> pb::RegisterCitizenRequest {
    pb::RegisterCitizenRequest {
        national_id: Some(run(national_id)),
        given_names: "María José".into(),
        family_names: "Pérez Soto".into(),
        email: "maria.perez@ejemplo.cl".into(),
        phone_number: "+56 9 1234 5678".into(),
        password: PASSWORD.into(),
    }
}

fn cl_run(value: &str) -> NationalId {
    NationalId::parse(NationalIdScheme::ClRun, value).unwrap()
}

async fn register(app: &TestApp, token: &str, national_id: &str) -> anyhow::Result<pb::Citizen> {
    Ok(app
        .citizens()
        .register_citizen(authed(registration(national_id), token))
        .await?
        .into_inner()
        .citizen
        .unwrap())
}

async fn writer(app: &TestApp, environment: Environment) -> anyhow::Result<(Credentials, String)> {
    let agency = app
        .agency_with_client(
            &[Scope::IdentityCitizensRead, Scope::IdentityCitizensWrite],
            environment,
        )
        .await?;
    let token = app.token(&agency).await?;
    Ok((agency, token))
}

fn attempt<'a>(
    national_id: &'a NationalId,
    password: &'a str,
    source: &'a str,
) -> PasswordAttempt<'a> {
    PasswordAttempt {
        environment: Environment::Live,
        national_id,
        password,
        second_factor: None,
        source,
    }
}

pub async fn registration_normalises_the_run_and_finds_it_either_way(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    let citizen = register(&app, &token, " 12.345.678-5 ").await?;
    assert!(citizen.citizen_id.starts_with("ctz_"));
    assert_eq!(citizen.national_id.as_ref().unwrap().value, "12345678-5");
    assert_eq!(citizen.given_names, "María José");
    assert_eq!(citizen.email, "maria.perez@ejemplo.cl");
    assert!(!citizen.email_verified);
    assert_eq!(citizen.phone_number, "+56912345678");
    assert_eq!(citizen.assurance_level(), pb::AssuranceLevel::Low);
    assert_eq!(citizen.state(), pb::CitizenState::Active);

    for typed in ["12345678-5", "12.345.678-5"] {
        let found = app
            .citizens()
            .find_citizen_by_national_id(authed(
                pb::FindCitizenByNationalIdRequest {
                    national_id: Some(run(typed)),
                },
                &token,
            ))
            .await?
            .into_inner()
            .citizen
            .unwrap();
        assert_eq!(found, citizen);
    }
    let got = app
        .citizens()
        .get_citizen(authed(
            pb::GetCitizenRequest {
                citizen_id: citizen.citizen_id.clone(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(got, citizen);

    let missing = app
        .citizens()
        .find_citizen_by_national_id(authed(
            pb::FindCitizenByNationalIdRequest {
                national_id: Some(run("7.654.321-6")),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    Ok(())
}

pub async fn invalid_registrations_list_every_bad_field(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    let status = app
        .citizens()
        .register_citizen(authed(
            pb::RegisterCitizenRequest {
                national_id: Some(run("12.345.678-9")),
                given_names: "  ".into(),
                family_names: "Pérez".into(),
                email: "maria-at-ejemplo.cl".into(),
                phone_number: "912345678".into(),
                password: "password".into(),
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        violated_fields(&status),
        [
            "national_id.value",
            "given_names",
            "email",
            "phone_number",
            "password"
        ]
    );
    let details = format!("{:?} {}", status.details(), status.message());
    for secret in ["12.345.678", "12345678", "maria-at", "912345678"] {
        assert!(!details.contains(secret), "the error echoes input");
    }

    for (national_id, field) in [
        (None, "national_id"),
        (
            Some(pb::NationalId {
                scheme: 0,
                value: "12345678-5".into(),
            }),
            "national_id.scheme",
        ),
        (Some(run("123.456.789-2")), "national_id.value"),
        (Some(run("12345678-k")), "national_id.value"),
    ] {
        let status = app
            .citizens()
            .register_citizen(authed(
                pb::RegisterCitizenRequest {
                    national_id,
                    ..registration("unused")
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }

    // A short password, and one from the common list in another case.
    for password in ["short", "Sunshine"] {
        let status = app
            .citizens()
            .register_citizen(authed(
                pb::RegisterCitizenRequest {
                    password: password.into(),
                    ..registration("7.654.321-6")
                },
                &token,
            ))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["password"]);
    }
    // Without a password the citizen sets one later: accepted.
    let citizen = app
        .citizens()
        .register_citizen(authed(
            pb::RegisterCitizenRequest {
                password: String::new(),
                phone_number: String::new(),
                ..registration("7.654.321-6")
            },
            &token,
        ))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(citizen.phone_number, "");
    Ok(())
}

pub async fn a_national_id_registers_once_per_environment(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, live) = writer(&app, Environment::Live).await?;
    let (_, other_live) = writer(&app, Environment::Live).await?;
    let (_, sandbox) = writer(&app, Environment::Sandbox).await?;
    let first = register(&app, &live, "12345678-5").await?;
    for (token, typed) in [(&live, "12.345.678-5"), (&other_live, "12345678-5")] {
        let status = app
            .citizens()
            .register_citizen(authed(registration(typed), token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::AlreadyExists);
    }
    // The sandbox is another world: the same RUN registers there, and
    // neither side sees the other's citizen.
    let test_citizen = register(&app, &sandbox, "12345678-5").await?;
    assert_ne!(test_citizen.citizen_id, first.citizen_id);
    for (token, id) in [
        (&sandbox, &first.citizen_id),
        (&live, &test_citizen.citizen_id),
    ] {
        let status = app
            .citizens()
            .get_citizen(authed(
                pb::GetCitizenRequest {
                    citizen_id: id.clone(),
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    Ok(())
}

pub async fn scopes_and_agencies_limit_what_a_caller_sees_and_changes(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, owner) = writer(&app, Environment::Live).await?;
    let (_, other) = writer(&app, Environment::Live).await?;
    let reader = app
        .agency_with_client(&[Scope::IdentityCitizensRead], Environment::Live)
        .await?;
    let reader = app.token(&reader).await?;
    let unrelated = app
        .agency_with_client(&[Scope::PaymentsRead], Environment::Live)
        .await?;
    let unrelated = app.token(&unrelated).await?;
    let citizen = register(&app, &owner, "12345678-5").await?;
    let id = citizen.citizen_id.clone();
    let get = |id: &str| pb::GetCitizenRequest {
        citizen_id: id.to_owned(),
    };

    let status = app
        .citizens()
        .register_citizen(authed(registration("7654321-6"), &reader))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .citizens()
        .get_citizen(authed(get(&id), &unrelated))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .citizens()
        .get_citizen(authed(get(&id), "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Another agency sees who the citizen is, not how to reach them.
    let seen = app
        .citizens()
        .get_citizen(authed(get(&id), &reader))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(seen.given_names, citizen.given_names);
    assert_eq!(seen.national_id, citizen.national_id);
    assert_eq!((seen.email.as_str(), seen.phone_number.as_str()), ("", ""));

    // Only the registering agency changes contact details or the state.
    let update = pb::UpdateContactRequest {
        citizen_id: id.clone(),
        email: "nuevo@ejemplo.cl".into(),
        phone_number: String::new(),
    };
    let status = app
        .citizens()
        .update_contact(authed(update.clone(), &other))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = app
        .citizens()
        .disable_citizen(authed(
            pb::DisableCitizenRequest {
                citizen_id: id.clone(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let updated = app
        .citizens()
        .update_contact(authed(update, &owner))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(updated.email, "nuevo@ejemplo.cl");
    assert_eq!(updated.phone_number, "+56912345678");

    let status = app
        .citizens()
        .update_contact(authed(
            pb::UpdateContactRequest {
                citizen_id: "ctz_nope".into(),
                email: String::new(),
                phone_number: String::new(),
            },
            &owner,
        ))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["citizen_id", "email"]);

    let disabled = app
        .citizens()
        .disable_citizen(authed(
            pb::DisableCitizenRequest {
                citizen_id: id.clone(),
            },
            &owner,
        ))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(disabled.state(), pb::CitizenState::Disabled);
    // An operator may enable it again.
    let operator = app.token(&app.operator).await?;
    let enabled = app
        .citizens()
        .enable_citizen(authed(
            pb::EnableCitizenRequest {
                citizen_id: id.clone(),
            },
            &operator,
        ))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(enabled.state(), pb::CitizenState::Active);

    // Any writer may record a level, given a second factor and evidence.
    let status = app
        .citizens()
        .set_assurance_level(authed(
            pb::SetAssuranceLevelRequest {
                citizen_id: id.clone(),
                assurance_level: pb::AssuranceLevel::High.into(),
                evidence_reference: "expediente 2026/113".into(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    let status = app
        .citizens()
        .set_assurance_level(authed(
            pb::SetAssuranceLevelRequest {
                citizen_id: id.clone(),
                assurance_level: 0,
                evidence_reference: String::new(),
            },
            &other,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["assurance_level", "evidence_reference"]
    );
    let status = app
        .citizens()
        .get_citizen(authed(get(&atiende_platform::ids::new_id("ctz")), &reader))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    Ok(())
}

pub async fn unknown_accounts_and_wrong_passwords_get_the_same_answer(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    let citizen = register(&app, &token, "12345678-5").await?;
    let service = app.identity.service();
    let known = cl_run("12345678-5");
    let unknown = cl_run("7654321-6");

    let wrong = service
        .check_password(attempt(
            &known,
            "correct horse battery stapler",
            "198.51.100.1",
        ))
        .await?;
    let missing = service
        .check_password(attempt(&unknown, PASSWORD, "198.51.100.2"))
        .await?;
    assert_eq!(wrong, SignInOutcome::Refused);
    assert_eq!(missing, wrong);

    let ok = service
        .check_password(attempt(&known, PASSWORD, "198.51.100.3"))
        .await?;
    assert!(
        matches!(&ok, SignInOutcome::Accepted { citizen: signed_in, methods }
            if signed_in.citizen_id == citizen.citizen_id && methods == &["pwd"]),
        "{ok:?}"
    );
    // A sandbox attempt does not reach the live citizen.
    let sandbox = service
        .check_password(PasswordAttempt {
            environment: Environment::Sandbox,
            ..attempt(&known, PASSWORD, "198.51.100.4")
        })
        .await?;
    assert_eq!(sandbox, SignInOutcome::Refused);

    // A disabled account is refused like the others, right password or not.
    app.citizens()
        .disable_citizen(authed(
            pb::DisableCitizenRequest {
                citizen_id: citizen.citizen_id.clone(),
            },
            &token,
        ))
        .await?;
    let disabled = service
        .check_password(attempt(&known, PASSWORD, "198.51.100.5"))
        .await?;
    assert_eq!(disabled, SignInOutcome::Refused);
    Ok(())
}

fn lockout_options() -> AppOptions {
    AppOptions {
        citizens: CitizenConfig {
            lockout_threshold: 3,
            lockout_ms: Duration::from_secs(600),
            ..CitizenConfig::default()
        },
        ..AppOptions::default()
    }
}

pub async fn lockout_after_repeated_failures_and_its_expiry(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn_with(engine, lockout_options()).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    register(&app, &token, "12345678-5").await?;
    let service = app.identity.service();
    let known = cl_run("12345678-5");
    let unknown = cl_run("7654321-6");
    let t0 = now_micros();

    // Per account: three failures from three sources lock it, for an
    // existing account and for one that does not exist alike.
    for id in [&known, &unknown] {
        let mut outcomes = Vec::new();
        for (i, source) in ["203.0.113.1", "203.0.113.2", "203.0.113.3"]
            .iter()
            .enumerate()
        {
            let at = t0 + i64::try_from(i)? * 1_000_000;
            outcomes.push(
                service
                    .check_password_at(attempt(id, "wrong password here", source), at)
                    .await?,
            );
        }
        assert_eq!(
            outcomes[..2],
            [SignInOutcome::Refused, SignInOutcome::Refused]
        );
        assert_eq!(
            outcomes[2],
            SignInOutcome::LockedOut {
                until: t0 + 2_000_000 + 10 * MINUTE
            }
        );
    }
    // Locked: even the right password, from a fresh source, gets the lockout.
    let locked = service
        .check_password_at(attempt(&known, PASSWORD, "203.0.113.9"), t0 + 5 * MINUTE)
        .await?;
    assert!(matches!(locked, SignInOutcome::LockedOut { .. }));
    let locked_unknown = service
        .check_password_at(attempt(&unknown, PASSWORD, "203.0.113.9"), t0 + 5 * MINUTE)
        .await?;
    assert_eq!(locked, locked_unknown);
    // After ten minutes it opens again.
    let later = t0 + 2_000_000 + 10 * MINUTE + 1;
    let ok = service
        .check_password_at(attempt(&known, PASSWORD, "203.0.113.10"), later)
        .await?;
    assert!(matches!(ok, SignInOutcome::Accepted { .. }), "{ok:?}");
    Ok(())
}

pub async fn a_burst_of_concurrent_guesses_gets_no_more_than_the_limit(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_with(engine, lockout_options()).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    register(&app, &token, "12345678-5").await?;
    let now = now_micros();
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..24 {
        let service = app.identity.service().clone();
        burst.spawn(async move {
            let id = cl_run("12345678-5");
            let source = format!("203.0.113.{}", 100 + i);
            service
                .check_password_at(attempt(&id, "wrong password here", &source), now)
                .await
        });
    }
    let mut refused = 0;
    let mut locked = 0;
    while let Some(outcome) = burst.join_next().await {
        match outcome?? {
            SignInOutcome::Refused => refused += 1,
            SignInOutcome::LockedOut { .. } => locked += 1,
            other => panic!("{other:?}"),
        }
    }
    // Three guesses at most (the limit) were checked; the rest were turned
    // away without a check. (Without the reservation all 24 were checked.)
    assert!(refused <= 3, "{refused} guesses were refused after a check");
    assert!(locked >= 21);
    assert_eq!(refused + locked, 24);
    let right = app
        .identity
        .service()
        .check_password_at(
            attempt(&cl_run("12345678-5"), PASSWORD, "203.0.113.250"),
            now + 1,
        )
        .await?;
    assert!(
        matches!(right, SignInOutcome::LockedOut { .. }),
        "{right:?}"
    );
    Ok(())
}

pub async fn a_source_failing_against_many_accounts_is_locked_out(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn_with(engine, lockout_options()).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    register(&app, &token, "12345678-5").await?;
    let service = app.identity.service();
    let known = cl_run("12345678-5");
    let t0 = now_micros();
    for (i, other) in ["7654321-6", "30686957-4", "23456789-6"].iter().enumerate() {
        let id = cl_run(other);
        service
            .check_password_at(attempt(&id, PASSWORD, "192.0.2.66"), t0 + i64::try_from(i)?)
            .await?;
    }
    let from_attacker = service
        .check_password_at(attempt(&known, PASSWORD, "192.0.2.66"), t0 + 10)
        .await?;
    assert!(matches!(from_attacker, SignInOutcome::LockedOut { .. }));
    let from_elsewhere = service
        .check_password_at(attempt(&known, PASSWORD, "192.0.2.67"), t0 + 11)
        .await?;
    assert!(matches!(from_elsewhere, SignInOutcome::Accepted { .. }));

    // Without a known source only accounts are throttled: failures from
    // nowhere in particular never lock out everyone else.
    for (i, other) in ["11111111-1", "22222222-2", "99999999-9"]
        .iter()
        .enumerate()
    {
        let id = cl_run(other);
        let outcome = service
            .check_password_at(attempt(&id, PASSWORD, ""), t0 + 20 + i64::try_from(i)?)
            .await?;
        assert_eq!(outcome, SignInOutcome::Refused);
    }
    let unknown_source = service
        .check_password_at(attempt(&known, PASSWORD, ""), t0 + 30)
        .await?;
    assert!(matches!(unknown_source, SignInOutcome::Accepted { .. }));
    Ok(())
}

fn code_at(secret: &TotpSecret, micros: i64) -> String {
    let step = u64::try_from(micros / 1_000_000 / 30).unwrap();
    format!("{:06}", hotp(secret.expose(), step, 6))
}

pub async fn totp_second_factor_and_single_use_recovery_codes(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    let citizen = register(&app, &token, "12345678-5").await?;
    let id = citizen.citizen_id.clone();
    let service = app.identity.service();
    let known = cl_run("12345678-5");

    let enrolment = service.begin_totp_enrolment(Environment::Live, &id).await?;
    let uri = enrolment.otpauth_uri.expose_secret();
    assert!(uri.starts_with(&format!("otpauth://totp/Atiende:{id}?secret=")));
    let secret = TotpSecret::from_base32(enrolment.secret_base32.expose_secret()).unwrap();
    let t0 = now_micros();
    let wrong = service
        .confirm_totp_enrolment(Environment::Live, &id, "000000", t0)
        .await;
    // One in a million: the wrong code could be the right one.
    if code_at(&secret, t0) != "000000" {
        assert!(matches!(wrong, Err(IdentityError::WrongCode)));
    }
    let codes = service
        .confirm_totp_enrolment(Environment::Live, &id, &code_at(&secret, t0), t0)
        .await?;
    assert_eq!(codes.len(), 10);
    assert!(matches!(
        service.begin_totp_enrolment(Environment::Live, &id).await,
        Err(IdentityError::SecondFactorAlreadyEnrolled)
    ));

    let needs = service
        .check_password_at(attempt(&known, PASSWORD, "a"), t0 + 30_000_000)
        .await?;
    assert_eq!(needs, SignInOutcome::SecondFactorRequired);
    let t1 = t0 + 60_000_000;
    let code = code_at(&secret, t1);
    let ok = service
        .check_password_at(
            PasswordAttempt {
                second_factor: Some(&code),
                ..attempt(&known, PASSWORD, "a")
            },
            t1,
        )
        .await?;
    assert!(
        matches!(&ok, SignInOutcome::Accepted { citizen, methods }
            if citizen.citizen_id == id && methods == &["pwd", "otp"]),
        "{ok:?}"
    );
    // The same code again is a replay; so is the enrolment's code.
    for (code, at) in [(code.clone(), t1 + 1), (code_at(&secret, t0), t0 + 1)] {
        let replay = service
            .check_password_at(
                PasswordAttempt {
                    second_factor: Some(&code),
                    ..attempt(&known, PASSWORD, "a")
                },
                at,
            )
            .await?;
        assert_eq!(replay, SignInOutcome::Refused);
    }
    // A recovery code works once, typed in any case and spacing.
    let recovery = codes[0].expose().to_uppercase().replace('-', " ");
    for expected in [true, false] {
        let outcome = service
            .check_password_at(
                PasswordAttempt {
                    second_factor: Some(&recovery),
                    ..attempt(&known, PASSWORD, "b")
                },
                t1 + 2,
            )
            .await?;
        assert_eq!(matches!(outcome, SignInOutcome::Accepted { .. }), expected);
    }
    assert_eq!(service.recovery_codes_left(&id).await?, 9);

    // With a second factor the agency may now attest a high level.
    let high = app
        .citizens()
        .set_assurance_level(authed(
            pb::SetAssuranceLevelRequest {
                citizen_id: id.clone(),
                assurance_level: pb::AssuranceLevel::High.into(),
                evidence_reference: "expediente 2026/113".into(),
            },
            &token,
        ))
        .await?
        .into_inner()
        .citizen
        .unwrap();
    assert_eq!(high.assurance_level(), pb::AssuranceLevel::High);
    Ok(())
}

pub async fn audit_chain_verifies_and_an_altered_row_is_reported(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    register(&app, &token, "12345678-5").await?;
    register(&app, &token, "7654321-6").await?;
    let service = app.identity.service();
    let known = cl_run("12345678-5");
    for password in ["nope nope nope", PASSWORD, "still wrong!"] {
        service
            .check_password(attempt(&known, password, "192.0.2.1"))
            .await?;
    }
    let db = app.database().await?;
    let report = verify_audit_chain(&db).await?;
    assert_eq!((report.verified, report.broken), (5, None));

    // Someone edits the third entry (a sign-in failure) in the database.
    on_db!(&db, pool => {
        sqlx::query("UPDATE audit_events SET attributes = $1 WHERE seq = 3")
            .bind(r#"{"reason":"nothing to see"}"#)
            .execute(pool)
            .await?;
    });
    let report = verify_audit_chain(&db).await?;
    let broken = report.broken.unwrap();
    assert_eq!((report.verified, broken.seq), (2, 3));
    assert_eq!(broken.reason, BrokenReason::Altered);

    // Deleting an entry instead is reported where the gap is.
    on_db!(&db, pool => {
        sqlx::query("DELETE FROM audit_events WHERE seq = 2")
            .execute(pool)
            .await?;
    });
    let broken = verify_audit_chain(&db).await?.broken.unwrap();
    assert_eq!(broken.seq, 3);
    assert_eq!(broken.reason, BrokenReason::Gap { expected_seq: 2 });
    db.close().await;
    Ok(())
}

pub async fn concurrent_appends_never_fork_the_chain(engine: Engine) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (_, token) = writer(&app, Environment::Live).await?;
    let mut tasks = Vec::new();
    for i in 0..8u32 {
        let service = app.identity.service().clone();
        tasks.push(tokio::spawn(async move {
            let id = cl_run("12345678-5");
            let source = format!("192.0.2.{i}");
            service
                .check_password(attempt(&id, "wrong password", &source))
                .await
        }));
    }
    let mut registrations = Vec::new();
    for national_id in ["7654321-6", "30686957-4", "23456789-6", "1-9"] {
        let client = app.citizens();
        let token = token.clone();
        registrations.push(tokio::spawn(async move {
            let mut client = client;
            client
                .register_citizen(authed(registration(national_id), &token))
                .await
        }));
    }
    for task in tasks {
        assert_eq!(task.await??, SignInOutcome::Refused);
    }
    for task in registrations {
        task.await??;
    }
    let db = app.database().await?;
    let report = verify_audit_chain(&db).await?;
    assert_eq!((report.verified, report.broken), (12, None));
    db.close().await;
    Ok(())
}

pub async fn audit_events_are_listed_per_agency_citizen_type_and_time(
    engine: Engine,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(engine).await?;
    let (agency, token) = writer(&app, Environment::Live).await?;
    let (other_agency, other) = writer(&app, Environment::Live).await?;
    let a = register(&app, &token, "12345678-5").await?;
    let b = register(&app, &token, "7654321-6").await?;
    register(&app, &other, "30686957-4").await?;
    app.citizens()
        .update_contact(authed(
            pb::UpdateContactRequest {
                citizen_id: a.citizen_id.clone(),
                email: String::new(),
                phone_number: "+56 2 2345 6789".into(),
            },
            &token,
        ))
        .await?;
    let service = app.identity.service();
    service
        .check_password(attempt(&cl_run("12345678-5"), "wrong password", "x"))
        .await?;

    let list = |req: pb::ListAuditEventsRequest, token: &str| {
        let mut client = app.citizens();
        let request = authed(req, token);
        async move { client.list_audit_events(request).await }
    };
    // The agency's own events only: two registrations and an update.
    let mine = list(pb::ListAuditEventsRequest::default(), &token)
        .await?
        .into_inner();
    let types: Vec<_> = mine.audit_events.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        types,
        [
            pb::AuditEventType::AdminAction,
            pb::AuditEventType::Registration,
            pb::AuditEventType::Registration
        ]
    );
    assert!(
        mine.audit_events
            .iter()
            .all(|e| e.agency_id == agency.agency_id)
    );
    assert_eq!(mine.audit_events[0].attributes["fields"], "phone_number");
    assert_eq!(mine.audit_events[1].previous_hash.len(), 64);

    // Paging, with the filters bound into the token.
    let first = list(
        pb::ListAuditEventsRequest {
            page_size: 2,
            ..Default::default()
        },
        &token,
    )
    .await?
    .into_inner();
    assert_eq!(first.audit_events.len(), 2);
    let second = list(
        pb::ListAuditEventsRequest {
            page_size: 2,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        },
        &token,
    )
    .await?
    .into_inner();
    assert_eq!(second.audit_events.len(), 1);
    assert_eq!(second.audit_events[0].citizen_id, a.citizen_id);
    assert_eq!(second.next_page_token, "");
    let status = list(
        pb::ListAuditEventsRequest {
            page_size: 2,
            page_token: first.next_page_token,
            citizen_id: b.citizen_id.clone(),
            ..Default::default()
        },
        &token,
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);

    // By citizen and by type.
    let of_b = list(
        pb::ListAuditEventsRequest {
            citizen_id: b.citizen_id.clone(),
            ..Default::default()
        },
        &token,
    )
    .await?
    .into_inner();
    assert_eq!(of_b.audit_events.len(), 1);
    let registrations = list(
        pb::ListAuditEventsRequest {
            types: vec![pb::AuditEventType::Registration.into()],
            ..Default::default()
        },
        &token,
    )
    .await?
    .into_inner();
    assert_eq!(registrations.audit_events.len(), 2);

    // A time range that ends before everything finds nothing.
    let past = list(
        pb::ListAuditEventsRequest {
            occur_time_range: Some(atiende_proto::common::v1::TimeRange {
                start_time: Some(prost_types::Timestamp {
                    seconds: 1,
                    nanos: 0,
                }),
                end_time: Some(prost_types::Timestamp {
                    seconds: 2,
                    nanos: 0,
                }),
            }),
            ..Default::default()
        },
        &token,
    )
    .await?
    .into_inner();
    assert!(past.audit_events.is_empty());

    // Another agency's events are for operators, who also see sign-ins.
    let status = list(
        pb::ListAuditEventsRequest {
            agency_id: other_agency.agency_id.clone(),
            ..Default::default()
        },
        &token,
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let operator = app.token(&app.operator).await?;
    let all = list(pb::ListAuditEventsRequest::default(), &operator)
        .await?
        .into_inner();
    assert_eq!(all.audit_events.len(), 5);
    assert_eq!(
        all.audit_events[0].r#type(),
        pb::AuditEventType::SignInFailure
    );
    assert_eq!(all.audit_events[0].attributes["reason"], "bad_credentials");
    let theirs = list(
        pb::ListAuditEventsRequest {
            agency_id: other_agency.agency_id,
            ..Default::default()
        },
        &operator,
    )
    .await?
    .into_inner();
    assert_eq!(theirs.audit_events.len(), 1);

    let status = list(
        pb::ListAuditEventsRequest {
            types: vec![0],
            citizen_id: "nope".into(),
            ..Default::default()
        },
        &token,
    )
    .await
    .unwrap_err();
    assert_eq!(violated_fields(&status), ["citizen_id", "types"]);
    Ok(())
}
