-- Voids of authorisations, retention of idempotency keys and events, and
-- the per-tenant count of webhook endpoints.

-- A CAPTURABLE payment being cancelled or expired: its hold is voided at
-- the gateway before the state changes. Set (with what the payment will
-- become: 'cancelled' or 'expired') before the gateway is called, so that
-- a capture cannot slip in, and so that a void the gateway failed, or a
-- process that stopped, is finished by the recovery job.
ALTER TABLE payments ADD COLUMN void_requested_time BIGINT;
ALTER TABLE payments ADD COLUMN void_for TEXT;
CREATE INDEX payments_voids_requested ON payments (void_requested_time)
    WHERE void_requested_time IS NOT NULL;

-- Idempotency keys are pruned after their retention (24 hours at least).
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (create_time);

-- Events are pruned after their retention; the highest pruned sequence is
-- kept in payments_service ('events_pruned_through'), so that a cursor
-- older than it is refused instead of silently skipping events.
CREATE INDEX payment_events_by_time ON payment_events (occur_time);

-- Endpoints per tenant, counted by an upsert that refuses past the limit:
-- concurrent creates cannot both see room for one more.
CREATE TABLE webhook_endpoint_counts (
    agency_id    TEXT NOT NULL,
    environment  TEXT NOT NULL,
    endpoints    BIGINT NOT NULL,
    PRIMARY KEY (agency_id, environment)
);
INSERT INTO webhook_endpoint_counts (agency_id, environment, endpoints)
SELECT agency_id, environment, COUNT(*) FROM webhook_endpoints GROUP BY agency_id, environment;
