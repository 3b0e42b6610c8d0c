//! The notifications service's API tests: one binary, real gRPC over TCP,
//! every test on SQLite and on PostgreSQL. Callers authenticate with tokens
//! of the platform's test signing key (no identity service needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;
mod templates;

use std::process::ExitCode;

use atiende_platform::harness::{TestFn, run_suite};
use atiende_platform::tests;

const TESTS: &[(&str, TestFn)] = tests![
    templates::templates_are_versioned_and_old_versions_stay_readable,
    templates::concurrent_updates_from_one_version_create_one_version,
    templates::list_is_newest_first_filtered_and_paged,
    templates::preview_renders_email_and_sms_and_reports_missing_values,
    templates::create_is_idempotent_and_refuses_a_reused_key,
    templates::bad_input_gets_field_violations,
    templates::agency_cannot_see_or_change_another_agencys_templates,
    templates::scopes_are_enforced,
];

fn main() -> ExitCode {
    run_suite(support::PG_PREFIX, TESTS)
}
