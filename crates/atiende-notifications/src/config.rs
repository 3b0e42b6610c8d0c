//! The notifications service's configuration.

use atiende_platform::config::{AuthConfig, GrpcConfig, StorageConfig};
use atiende_platform::telemetry::TelemetryConfig;
use serde::Deserialize;

/// Unknown sections are ignored (one environment may configure several
/// services); unknown keys inside a section are errors.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NotificationsConfig {
    pub storage: StorageConfig,
    pub grpc: GrpcConfig,
    pub telemetry: TelemetryConfig,
    /// Where access tokens are verified: set one of `jwks_grpc_endpoint`
    /// (the identity service), `jwks_url` or `jwks_file`.
    pub auth: AuthConfig,
}
