//! The `atiende` binary as a newcomer and an operator run it: `atiende dev`
//! prints working credentials and a token and stops cleanly on SIGTERM;
//! `create-agency` prints credentials that work; `migrate` migrates;
//! `audit verify` finds the entry someone altered.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use atiende_proto::identity::v1 as pb;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value after `label` on the first line that starts with it.
fn field<'a>(lines: &'a [String], label: &str) -> &'a str {
    lines
        .iter()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{label} missing from output:\n{}", lines.join("\n")))
}

/// `atiende dev` on the given data directory and ports, and its banner, read
/// up to its last line.
async fn start_dev(data_dir: &Path, grpc: u16, http: u16) -> (Child, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_atiende"))
        .args(["dev", "--data-dir"])
        .arg(data_dir)
        .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let banner = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let done = line.contains("Stop with Ctrl-C");
            lines.push(line);
            if done {
                break;
            }
        }
        lines
    });
    let banner = tokio::time::timeout(Duration::from_secs(60), banner)
        .await
        .unwrap()
        .unwrap();
    (child, banner)
}

/// Sends SIGTERM and expects a clean exit.
async fn terminate(mut child: Child) {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(30), status)
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

async fn channel(port: u16) -> tonic::transport::Channel {
    tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test]
async fn atiende_dev_prints_a_working_token_and_stops_on_sigterm() {
    let data_dir = std::env::temp_dir().join(format!("atiende-cli-{}", free_port()));
    let (grpc, http) = (free_port(), free_port());
    let (child, banner) = start_dev(&data_dir, grpc, http).await;

    let token = field(&banner, "export ATIENDE_TOKEN=");
    let client_id = field(&banner, "client_id");
    let client_secret = field(&banner, "client_secret");
    let agency_id = field(&banner, "agency_id");

    // The printed token calls an identity RPC, as the grpcurl example does.
    let mut request = tonic::Request::new(pb::GetAgencyRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let agency = pb::agency_service_client::AgencyServiceClient::new(channel(grpc).await)
        .get_agency(request)
        .await
        .unwrap()
        .into_inner()
        .agency
        .unwrap();
    assert_eq!(agency.agency_id, agency_id);

    // The printed credentials work at the HTTP token endpoint, as the curl example does.
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{http}/oauth2/token"))
        .basic_auth(client_id, Some(client_secret))
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // SIGTERM: the process drains and exits successfully.
    terminate(child).await;
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn create_agency_prints_credentials_once_and_they_work() {
    let data_dir = std::env::temp_dir().join(format!("atiende-cli-{}", free_port()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_atiende"))
            .args(args)
            .env("ATIENDE_STORAGE__DATA_DIR", &data_dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let migrated = run(&["migrate", "--service", "notifications"]);
    assert!(migrated.status.success(), "{migrated:?}");
    assert!(data_dir.join("notifications.db").exists());
    assert!(!run(&["migrate", "--service", "billing"]).status.success());

    let created = run(&[
        "create-agency",
        "--name",
        "Ministerio de Prueba",
        "--operator",
    ]);
    assert!(created.status.success(), "{created:?}");
    let output: Vec<String> = String::from_utf8(created.stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let client_id = field(&output, "client_id:").to_owned();
    let client_secret = field(&output, "client_secret:").to_owned();
    assert_eq!(field(&output, "environment:"), "live");

    // The platform on the same data directory accepts the credentials.
    let (grpc, http) = (free_port(), free_port());
    let (child, _) = start_dev(&data_dir, grpc, http).await;
    let issued = pb::token_service_client::TokenServiceClient::new(channel(grpc).await)
        .issue_token(pb::IssueTokenRequest {
            client_id,
            client_secret,
            scopes: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(issued.scope.contains("identity.admin"));
    terminate(child).await;
    let _ = std::fs::remove_dir_all(data_dir);
}

#[tokio::test]
async fn audit_verify_passes_an_intact_chain_and_names_the_altered_entry() {
    use atiende_identity::domain::audit::{AuditEventType, NewAuditEvent};
    use atiende_identity::store::citizens::append_audit_event;
    use atiende_platform::storage::Database;

    let data_dir = std::env::temp_dir().join(format!("atiende-cli-audit-{}", free_port()));
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_atiende"))
            .args(args)
            .env("ATIENDE_STORAGE__DATA_DIR", &data_dir)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    assert!(run(&["migrate", "--service", "identity"]).status.success());
    let verified = run(&["audit", "verify"]);
    assert!(verified.status.success(), "{verified:?}");
    assert_eq!(
        String::from_utf8_lossy(&verified.stdout).trim(),
        "audit chain verified: 0 entries"
    );

    let url = format!("sqlite://{}", data_dir.join("identity.db").display());
    let db = Database::connect(&url, 1).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        let event = append_audit_event(
            &db,
            NewAuditEvent {
                audit_event_id: atiende_platform::ids::new_id("aud"),
                event_type: AuditEventType::SignInFailure,
                environment: "live".into(),
                citizen_id: None,
                agency_id: None,
                occur_time: 1_000 + i,
                attributes: [("reason".to_owned(), "bad_credentials".to_owned())].into(),
            },
        )
        .await
        .unwrap();
        ids.push(event.audit_event_id);
    }
    let verified = run(&["audit", "verify"]);
    assert!(verified.status.success(), "{verified:?}");
    assert!(String::from_utf8_lossy(&verified.stdout).contains("verified: 3 entries"));

    let Database::Sqlite(pool) = &db else {
        panic!("a SQLite database")
    };
    sqlx::query("UPDATE audit_events SET occur_time = occur_time + 1 WHERE seq = 2")
        .execute(pool)
        .await
        .unwrap();
    db.close().await;
    let broken = run(&["audit", "verify"]);
    assert!(!broken.status.success());
    let stdout = String::from_utf8_lossy(&broken.stdout);
    assert!(
        stdout.contains(&format!("broken at entry 2 ({})", ids[1])),
        "{stdout}"
    );
    assert!(stdout.contains("does not match its hash"), "{stdout}");
    let _ = std::fs::remove_dir_all(data_dir);
}
