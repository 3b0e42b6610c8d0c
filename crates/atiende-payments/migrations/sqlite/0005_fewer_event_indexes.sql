-- Two index entries fewer per event (docs/performance.md, ninth session).
--
-- Events are pruned by sequence, oldest first, up to the first event still
-- within the retention: the primary key finds them, and the index on
-- occur_time goes.
DROP INDEX payment_events_by_time;

-- A delivery finds its event by sequence (the primary key) instead of by
-- event_id, so event_id needs no index of its own. Event ids are UUIDv7
-- (48 bits of time, 74 random), minted by the service: the UNIQUE
-- constraint only guarded against a collision that cannot be told apart
-- from never.
ALTER TABLE webhook_deliveries ADD COLUMN event_sequence INTEGER;
UPDATE webhook_deliveries SET event_sequence =
    (SELECT e.sequence FROM payment_events e WHERE e.event_id = webhook_deliveries.event_id);

-- SQLite cannot drop a UNIQUE constraint: the table is rebuilt. Nothing
-- references payment_events. The AUTOINCREMENT high-water mark is carried
-- over, so that no new event reuses the sequence of a pruned one.
CREATE TABLE payment_events_rebuilt (
    sequence                INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id                TEXT NOT NULL,
    agency_id               TEXT NOT NULL,
    environment             TEXT NOT NULL,
    payment_id              TEXT NOT NULL REFERENCES payments (payment_id),
    refund_id               TEXT REFERENCES refunds (refund_id),
    event_type              TEXT NOT NULL,
    occur_time              INTEGER NOT NULL,
    state                   TEXT NOT NULL,
    failure_reason          TEXT,
    failure_message         TEXT NOT NULL,
    refund_submitted_minor  INTEGER NOT NULL,
    fee_minor               INTEGER,
    has_card                INTEGER NOT NULL,
    refund_state            TEXT
);
INSERT INTO payment_events_rebuilt (sequence, event_id, agency_id, environment, payment_id,
    refund_id, event_type, occur_time, state, failure_reason, failure_message,
    refund_submitted_minor, fee_minor, has_card, refund_state)
SELECT sequence, event_id, agency_id, environment, payment_id, refund_id, event_type,
    occur_time, state, failure_reason, failure_message, refund_submitted_minor, fee_minor,
    has_card, refund_state
FROM payment_events;
DELETE FROM sqlite_sequence WHERE name = 'payment_events_rebuilt';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'payment_events_rebuilt', seq FROM sqlite_sequence WHERE name = 'payment_events';
DROP TABLE payment_events;
ALTER TABLE payment_events_rebuilt RENAME TO payment_events;
CREATE INDEX payment_events_by_payment ON payment_events (payment_id, sequence);
CREATE INDEX payment_events_by_tenant ON payment_events (agency_id, environment, sequence);
