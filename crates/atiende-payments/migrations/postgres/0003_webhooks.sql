-- Webhook endpoints and the deliveries owed to them. A delivery row is
-- written in the same transaction as its event, so no event is missed;
-- `next_attempt_time` is also the lease of an attempt in progress.
CREATE TABLE webhook_endpoints (
    webhook_endpoint_id  TEXT PRIMARY KEY,
    agency_id            TEXT NOT NULL,
    environment          TEXT NOT NULL,
    url                  TEXT NOT NULL,
    -- ",type,type," or empty for every type.
    event_types          TEXT NOT NULL,
    description          TEXT NOT NULL,
    signing_secret       TEXT NOT NULL,
    create_time          BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_by_tenant ON webhook_endpoints (agency_id, environment, webhook_endpoint_id);

CREATE TABLE webhook_deliveries (
    event_id             TEXT NOT NULL,
    webhook_endpoint_id  TEXT NOT NULL,
    agency_id            TEXT NOT NULL,
    environment          TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts             BIGINT NOT NULL,
    next_attempt_time    BIGINT NOT NULL,
    last_response        TEXT NOT NULL,
    create_time          BIGINT NOT NULL,
    update_time          BIGINT NOT NULL,
    PRIMARY KEY (event_id, webhook_endpoint_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_time);
