//! What every Atiende service shares, each piece small and named.
//!
//! # Layout
//! - [`config`]: defaults, an optional TOML file, `ATIENDE_*` overrides.
//! - [`telemetry`]: the tracing subscriber, OTLP export, trace context in gRPC
//!   metadata.
//! - [`server`]: gRPC bootstrap (health, reflection v1 and v1alpha, auth,
//!   limits, timeouts), HTTP serving, and the [`server::Shutdown`] mechanism.
//! - [`auth`]: bearer-token verification against a JWKS; the
//!   [`auth::Caller`] of every request; scopes.
//! - [`error`]: [`error::ApiError`] and the one mapping to `tonic::Status`.
//! - [`storage`]: SQLite and PostgreSQL pools, embedded migrations.
//! - [`paging`], [`ids`]: page tokens and server-assigned ids.
//! - `testing`, `harness` (feature `testing`): a test signing key, and the
//!   test harness that runs a service's API suite on SQLite and PostgreSQL.
//!
//! Architecture invariant: this crate knows no service's domain. It never
//! names a table, a template or a payment.

pub mod auth;
pub mod config;
pub mod error;
#[cfg(feature = "testing")]
pub mod harness;
pub mod html;
pub mod ids;
pub mod net;
pub mod paging;
pub mod server;
pub mod storage;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(feature = "testing")]
pub mod webdriver;
