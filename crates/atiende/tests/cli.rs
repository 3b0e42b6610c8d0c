//! The `atiende` binary as a newcomer runs it: `atiende dev` prints working
//! credentials and a token, and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use atiende_proto::identity::v1 as pb;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value after `label` on the banner line that starts with it.
fn field<'a>(banner: &'a [String], label: &str) -> &'a str {
    banner
        .iter()
        .find_map(|line| line.trim_start().strip_prefix(label))
        .map(str::trim)
        .unwrap_or_else(|| panic!("{label} missing from banner:\n{}", banner.join("\n")))
}

#[tokio::test]
async fn atiende_dev_prints_a_working_token_and_stops_on_sigterm() {
    let data_dir = std::env::temp_dir().join(format!("atiende-cli-{}", free_port()));
    let (grpc, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_atiende"))
        .args(["dev", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();

    // Read the banner up to its last line.
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

    let token = field(&banner, "export ATIENDE_TOKEN=");
    let client_id = field(&banner, "client_id");
    let client_secret = field(&banner, "client_secret");
    let agency_id = field(&banner, "agency_id");

    // The printed token calls an identity RPC, as the grpcurl example does.
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(pb::GetAgencyRequest::default());
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let agency = pb::agency_service_client::AgencyServiceClient::new(channel)
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
    let _ = std::fs::remove_dir_all(data_dir);
}
