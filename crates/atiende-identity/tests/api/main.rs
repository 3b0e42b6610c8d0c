//! The identity service's API tests: one binary, real sockets, both
//! databases.
//!
//! Every test runs against a server started on port 0, once on SQLite and
//! once on PostgreSQL. Without a reachable PostgreSQL the PostgreSQL runs are
//! reported as *ignored*; under CI (`CI=true`) they run and fail instead.
//! `TEST_LOG=1` echoes the server's logs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod agencies;
mod attacks;
mod browser;
mod citizens;
mod client_auth;
mod environments;
mod http_endpoint;
mod logs;
mod oidc;
mod oidc_client;
mod rotation;
mod sessions;
mod support;
mod tokens;

use std::process::ExitCode;

use atiende_platform::harness::{TestFn, run_suite};
use atiende_platform::tests;

const TESTS: &[(&str, TestFn)] = tests![
    tokens::issued_token_verifies_against_jwks_and_introspects_until_revoked,
    tokens::token_for_a_subset_of_scopes_carries_only_those,
    tokens::scope_the_client_lacks_is_refused,
    tokens::wrong_secret_unknown_client_and_disabled_client_get_one_answer,
    tokens::introspection_needs_a_token_and_reports_garbage_inactive,
    agencies::client_lifecycle_secret_rotation_disable_and_paging,
    agencies::agency_cannot_see_or_change_another_agencys_clients,
    agencies::sandbox_admin_cannot_create_or_manage_live_clients,
    agencies::only_operators_create_agencies_and_rotate_keys,
    agencies::bad_input_gets_invalid_argument_with_field_violations,
    agencies::arbitrary_input_never_takes_the_server_down,
    agencies::oversized_request_is_refused_and_the_server_keeps_serving,
    attacks::forged_and_misaddressed_tokens_are_unauthenticated,
    attacks::valid_token_without_the_scope_is_permission_denied,
    rotation::next_key_is_published_before_it_signs_and_old_tokens_keep_verifying,
    rotation::verifier_with_stale_cache_picks_up_new_key_without_restart,
    http_endpoint::token_endpoint_accepts_basic_and_post_client_auth,
    http_endpoint::token_endpoint_errors_follow_rfc_6749,
    http_endpoint::discovery_and_jwks_are_served,
    logs::secrets_and_tokens_never_appear_in_logs_or_errors,
    environments::sandbox_clients_of_operators_cannot_act_as_operators,
    environments::sandbox_callers_neither_see_nor_revoke_live_tokens,
    environments::revocation_from_an_instance_with_a_skewed_clock_is_seen,
    environments::unknown_client_ids_in_bulk_do_not_block_real_clients,
    environments::operators_create_the_first_client_of_a_new_agency,
    environments::rotation_is_idempotent_while_a_key_waits,
    citizens::registration_normalises_the_run_and_finds_it_either_way,
    citizens::invalid_registrations_list_every_bad_field,
    citizens::a_national_id_registers_once_per_environment,
    citizens::scopes_and_agencies_limit_what_a_caller_sees_and_changes,
    citizens::unknown_accounts_and_wrong_passwords_get_the_same_answer,
    citizens::lockout_after_repeated_failures_and_its_expiry,
    citizens::a_burst_of_concurrent_guesses_gets_no_more_than_the_limit,
    citizens::a_source_failing_against_many_accounts_is_locked_out,
    citizens::totp_second_factor_and_single_use_recovery_codes,
    citizens::audit_chain_verifies_and_an_altered_row_is_reported,
    citizens::concurrent_appends_never_fork_the_chain,
    citizens::audit_events_are_listed_per_agency_citizen_type_and_time,
    logs::passwords_codes_and_personal_data_never_appear_in_logs_or_errors,
    oidc::code_flow_with_pkce_gives_a_verified_id_token_and_userinfo,
    oidc::pkce_redirect_uri_csrf_and_code_replay_are_refused,
    oidc::pairwise_subjects_differ_across_agencies_and_are_stable,
    oidc::a_citizen_with_totp_is_asked_for_a_code_and_reaches_substantial,
    oidc::agencies_set_their_clients_redirect_uris,
    oidc::refresh_tokens_rotate_and_a_reused_one_revokes_its_family,
    oidc::a_citizen_who_does_not_consent_sends_back_access_denied,
    oidc::clients_revoke_their_own_citizen_tokens,
    oidc_client::a_standard_oidc_client_library_signs_a_citizen_in,
    client_auth::clients_authenticate_with_private_key_jwt,
    sessions::a_session_skips_sign_in_and_remembered_consent_skips_the_page,
    sessions::a_page_sign_in_is_audited_and_forgets_the_account_failures,
    sessions::acr_values_substantial_steps_up_with_totp_enrolment_on_the_pages,
    sessions::a_password_session_steps_up_with_the_second_factor_it_has,
    sessions::citizens_register_on_the_pages_in_english_and_verify_their_email,
    sessions::logout_ends_the_session_and_returns_to_a_registered_uri,
    sessions::clients_introspect_their_own_citizen_tokens,
];

/// Tests that need Chromium and chromedriver: left out, with the reason
/// printed, where they are missing; under CI (`CI` set) they always run.
const BROWSER_TESTS: &[(&str, TestFn)] =
    tests![browser::a_citizen_registers_enrols_totp_consents_and_signs_in_again_in_a_real_browser];

fn main() -> ExitCode {
    support::install_log_capture();
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false");
    let mut all = TESTS.to_vec();
    if ci || browser::available() {
        all.extend_from_slice(BROWSER_TESTS);
    } else {
        eprintln!(
            "browser tests left out: no chromedriver (apt-get install chromium chromium-driver)"
        );
    }
    run_suite(support::PG_PREFIX, &all)
}
