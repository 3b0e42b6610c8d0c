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
ALTER TABLE webhook_deliveries ADD COLUMN event_sequence BIGINT;
UPDATE webhook_deliveries d SET event_sequence = e.sequence
    FROM payment_events e WHERE e.event_id = d.event_id;
ALTER TABLE payment_events DROP CONSTRAINT payment_events_event_id_key;
