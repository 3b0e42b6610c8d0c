//! The notifications service's API tests: one binary, real gRPC over TCP,
//! every test on SQLite and on PostgreSQL. Callers authenticate with tokens
//! of the platform's test signing key (no identity service needed).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod delivery;
mod sending;
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
    sending::bad_sends_get_every_field_violation_and_store_nothing,
    sending::sends_are_idempotent_and_a_reused_key_is_refused,
    sending::batches_are_validated_whole_and_report_progress,
    sending::scheduled_notifications_and_batches_can_be_cancelled,
    sending::list_filters_by_status_template_reference_and_time,
    sending::callbacks_post_final_statuses_with_the_bearer_token_and_retry,
    sending::event_stream_follows_changes_and_resumes_from_a_cursor,
    sending::over_the_rate_limit_is_resource_exhausted_with_retry_info,
    sending::retention_erases_recipient_and_content_but_keeps_status,
    sending::agencies_cannot_reach_each_others_notifications_and_scopes_hold,
    sending::a_batch_of_fifty_thousand_rows_is_accepted_in_one_request,
    delivery::email_arrives_over_smtp_with_subject_bodies_and_headers,
    delivery::smtp_down_then_up_is_retried_and_delivered,
    delivery::retries_end_in_temporary_or_technical_failure_after_the_window,
    delivery::permanent_failure_sends_the_sms_fallback_through_twilio,
    delivery::sms_fails_over_to_the_second_provider,
    delivery::sandbox_is_simulated_and_never_reaches_a_recipient,
    delivery::notifications_committed_before_a_crash_are_delivered_after_restart,
    delivery::two_instances_on_one_database_deliver_each_notification_once,
];

fn main() -> ExitCode {
    run_suite(support::PG_PREFIX, TESTS)
}
