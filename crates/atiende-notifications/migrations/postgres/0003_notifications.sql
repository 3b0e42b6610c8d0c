-- Notifications, their delivery queue, status events and delivery callbacks.
-- Timestamps are microseconds since the Unix epoch.

-- One email or SMS. The row is also its queue entry: `due_time` is when a
-- worker may next claim it (NULL once it needs no more work). A claim sets
-- `due_time` to the end of a lease and bumps `attempts`, which fences the
-- claimant's result: a result whose attempt is no longer current is dropped.
CREATE TABLE notifications (
    notification_id          TEXT PRIMARY KEY,
    agency_id                TEXT NOT NULL,
    environment              TEXT NOT NULL CHECK (environment IN ('sandbox', 'live')),
    channel                  TEXT NOT NULL CHECK (channel IN ('email', 'sms')),
    status                   TEXT NOT NULL,
    template_id              TEXT NOT NULL,
    template_version         BIGINT NOT NULL,
    recipient                TEXT NOT NULL,
    reference                TEXT NOT NULL,
    batch_id                 TEXT,
    subject                  TEXT NOT NULL,
    body                     TEXT NOT NULL,
    html_body                TEXT NOT NULL,
    fragment_count           BIGINT NOT NULL,
    email_reply_to           TEXT NOT NULL,
    unsubscribe_url          TEXT NOT NULL,
    sender_id                TEXT NOT NULL,
    fallback_template_id     TEXT,
    fallback_template_version BIGINT,
    fallback_recipient       TEXT,
    fallback_body            TEXT,
    fallback_fragment_count  BIGINT,
    fallback_notification_id TEXT,
    fallback_for_notification_id TEXT,
    provider                 TEXT NOT NULL DEFAULT '',
    provider_reference       TEXT,
    failure_detail           TEXT NOT NULL DEFAULT '',
    attempts                 BIGINT NOT NULL DEFAULT 0,
    due_time                 BIGINT,
    create_time              BIGINT NOT NULL,
    scheduled_time           BIGINT,
    send_time                BIGINT,
    complete_time            BIGINT,
    cancel_time              BIGINT,
    update_time              BIGINT NOT NULL,
    purge_time               BIGINT
);
CREATE INDEX notifications_due ON notifications (due_time) WHERE due_time IS NOT NULL;
CREATE INDEX notifications_by_agency ON notifications (agency_id, environment, notification_id);
CREATE INDEX notifications_by_batch ON notifications (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX notifications_by_reference ON notifications (agency_id, reference);
CREATE UNIQUE INDEX notifications_by_provider_reference ON notifications (provider, provider_reference)
    WHERE provider_reference IS NOT NULL;
CREATE INDEX notifications_to_purge ON notifications (complete_time) WHERE purge_time IS NULL;

CREATE TABLE batches (
    batch_id          TEXT PRIMARY KEY,
    agency_id         TEXT NOT NULL,
    environment       TEXT NOT NULL,
    channel           TEXT NOT NULL,
    template_id       TEXT NOT NULL,
    template_version  BIGINT NOT NULL,
    recipient_count   BIGINT NOT NULL,
    create_time       BIGINT NOT NULL,
    scheduled_time    BIGINT,
    cancel_time       BIGINT
);

-- Every status change, in recording order (`seq`), for the event stream.
CREATE TABLE notification_events (
    seq              BIGSERIAL PRIMARY KEY,
    event_id         TEXT NOT NULL UNIQUE,
    notification_id  TEXT NOT NULL,
    agency_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    status           TEXT NOT NULL,
    occur_time       BIGINT NOT NULL,
    -- The writing transaction's id: a reader takes only events of
    -- transactions older than every running one, so a cursor never skips an
    -- event that commits late with a lower seq.
    tx               BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint)
);
CREATE INDEX notification_events_by_agency ON notification_events (agency_id, environment, tx, seq);
CREATE INDEX notification_events_by_time ON notification_events (occur_time);

-- An agency's delivery callback, per environment.
CREATE TABLE delivery_callbacks (
    agency_id     TEXT NOT NULL,
    environment   TEXT NOT NULL,
    url           TEXT NOT NULL,
    bearer_token  TEXT NOT NULL,
    update_time   BIGINT NOT NULL,
    PRIMARY KEY (agency_id, environment)
);

-- The outbox of callbacks: one row per final status to POST, written in the
-- transaction that records the status; claimed like notifications.
CREATE TABLE callback_deliveries (
    event_id         TEXT PRIMARY KEY,
    agency_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    notification_id  TEXT NOT NULL,
    status           TEXT NOT NULL,
    occur_time       BIGINT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    due_time         BIGINT
);
CREATE INDEX callback_deliveries_due ON callback_deliveries (due_time) WHERE due_time IS NOT NULL;

-- Sends per agency, environment, channel and UTC day, for daily limits.
CREATE TABLE daily_usage (
    agency_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    channel      TEXT NOT NULL,
    day          BIGINT NOT NULL,
    sent         BIGINT NOT NULL,
    PRIMARY KEY (agency_id, environment, channel, day)
);
