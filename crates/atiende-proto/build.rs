//! Compiles `proto/` with protox (a pure-Rust protobuf compiler), so that no
//! machine ever needs `protoc`, and writes the file descriptor set that the
//! servers publish through gRPC reflection.

use std::path::{Path, PathBuf};

use prost::Message;

/// Messages that carry a secret or a bearer token: their `Debug` is written by
/// hand in `src/redact.rs` so that logging a request never prints the secret.
const REDACTED_MESSAGES: &[&str] = &[
    ".atiende.identity.v1.CreateClientResponse",
    ".atiende.identity.v1.RotateClientSecretResponse",
    ".atiende.identity.v1.IssueTokenRequest",
    ".atiende.identity.v1.IssueTokenResponse",
    ".atiende.identity.v1.IntrospectTokenRequest",
    ".atiende.identity.v1.RevokeTokenRequest",
    ".atiende.identity.v1.RegisterCitizenRequest",
    ".atiende.payments.v1.SimulateCardSubmissionRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto");
    let mut files = Vec::new();
    collect_protos(&proto_root, &mut files)?;
    files.sort();

    let fds = protox::compile(&files, [&proto_root])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("atiende_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        // Services whose implementation has not landed answer UNIMPLEMENTED.
        .generate_default_stubs(true)
        .skip_debug(REDACTED_MESSAGES.iter().copied())
        .compile_fds(fds)?;

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    Ok(())
}

fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
