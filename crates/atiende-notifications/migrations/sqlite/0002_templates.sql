-- Templates: every version is a row; the latest is the highest version.
-- Timestamps are microseconds since the Unix epoch.
CREATE TABLE templates (
    template_id   TEXT NOT NULL,
    version       INTEGER NOT NULL,
    agency_id     TEXT NOT NULL,
    channel       TEXT NOT NULL CHECK (channel IN ('email', 'sms')),
    name          TEXT NOT NULL,
    description   TEXT NOT NULL,
    subject       TEXT NOT NULL,
    body          TEXT NOT NULL,
    create_time   INTEGER NOT NULL,
    update_time   INTEGER NOT NULL,
    PRIMARY KEY (template_id, version)
);
CREATE INDEX templates_by_agency ON templates (agency_id, template_id);

-- Idempotency keys of create requests: a replay returns the original
-- resource; the same key with another request is refused.
CREATE TABLE idempotency_keys (
    agency_id        TEXT NOT NULL,
    operation        TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    create_time      INTEGER NOT NULL,
    PRIMARY KEY (agency_id, operation, idempotency_key)
);
