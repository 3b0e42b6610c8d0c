-- Payments, their events, refunds, idempotency keys and the ledger.
-- Timestamps are microseconds since the Unix epoch; amounts are integer
-- minor units of `currency`. Every row carries its agency and environment
-- (sandbox or live), and every query filters on both.
CREATE TABLE payments (
    payment_id              TEXT PRIMARY KEY,
    agency_id               TEXT NOT NULL,
    environment             TEXT NOT NULL CHECK (environment IN ('sandbox', 'live')),
    amount_minor            BIGINT NOT NULL CHECK (amount_minor > 0),
    currency                TEXT NOT NULL,
    reference               TEXT NOT NULL,
    description             TEXT NOT NULL,
    return_url              TEXT NOT NULL,
    metadata                TEXT NOT NULL,
    language                TEXT NOT NULL,
    delayed_capture         BIGINT NOT NULL,
    state                   TEXT NOT NULL,
    failure_reason          TEXT,
    failure_message         TEXT NOT NULL,
    card_brand              TEXT,
    card_first_six          TEXT,
    card_last_four          TEXT,
    card_expiry_month       BIGINT,
    card_expiry_year        BIGINT,
    cardholder_name         TEXT,
    -- Refunds in SUBMITTED or SUCCESS. The CHECK is the last line of
    -- defence: refunds can never exceed the amount.
    refund_submitted_minor  BIGINT NOT NULL
        CHECK (refund_submitted_minor >= 0 AND refund_submitted_minor <= amount_minor),
    fee_minor               BIGINT,
    page_secret             TEXT NOT NULL,
    expire_time             BIGINT NOT NULL,
    create_time             BIGINT NOT NULL,
    update_time             BIGINT NOT NULL
);
CREATE INDEX payments_by_tenant ON payments (agency_id, environment, payment_id);
CREATE INDEX payments_to_expire ON payments (state, expire_time);

CREATE TABLE refunds (
    refund_id     TEXT PRIMARY KEY,
    payment_id    TEXT NOT NULL REFERENCES payments (payment_id),
    agency_id     TEXT NOT NULL,
    environment   TEXT NOT NULL,
    amount_minor  BIGINT NOT NULL CHECK (amount_minor > 0),
    currency      TEXT NOT NULL,
    reason        TEXT NOT NULL,
    state         TEXT NOT NULL,
    create_time   BIGINT NOT NULL,
    update_time   BIGINT NOT NULL
);
CREATE INDEX refunds_by_tenant ON refunds (agency_id, environment, refund_id);
CREATE INDEX refunds_by_payment ON refunds (payment_id, refund_id);

-- Every state change of a payment or refund, with the changing fields as
-- they were right after it. `sequence` is the recording order.
CREATE TABLE payment_events (
    sequence                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id                TEXT NOT NULL UNIQUE,
    agency_id               TEXT NOT NULL,
    environment             TEXT NOT NULL,
    payment_id              TEXT NOT NULL REFERENCES payments (payment_id),
    refund_id               TEXT REFERENCES refunds (refund_id),
    event_type              TEXT NOT NULL,
    occur_time              BIGINT NOT NULL,
    state                   TEXT NOT NULL,
    failure_reason          TEXT,
    failure_message         TEXT NOT NULL,
    refund_submitted_minor  BIGINT NOT NULL,
    fee_minor               BIGINT,
    has_card                BIGINT NOT NULL,
    refund_state            TEXT
);
CREATE INDEX payment_events_by_payment ON payment_events (payment_id, sequence);
CREATE INDEX payment_events_by_tenant ON payment_events (agency_id, environment, sequence);

-- Idempotency keys of create requests, per agency and environment: a
-- replay returns the original object; the key with another request is
-- refused.
CREATE TABLE idempotency_keys (
    agency_id        TEXT NOT NULL,
    environment      TEXT NOT NULL,
    operation        TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    resource_id      TEXT NOT NULL,
    create_time      BIGINT NOT NULL,
    PRIMARY KEY (agency_id, environment, operation, idempotency_key)
);

-- The double-entry ledger: append-only; the entries of a transaction sum
-- to zero.
CREATE TABLE ledger_entries (
    entry_id          TEXT PRIMARY KEY,
    transaction_id    TEXT NOT NULL,
    agency_id         TEXT NOT NULL,
    environment       TEXT NOT NULL,
    transaction_type  TEXT NOT NULL,
    account           TEXT NOT NULL,
    currency          TEXT NOT NULL,
    amount_minor      BIGINT NOT NULL,
    payment_id        TEXT NOT NULL,
    refund_id         TEXT,
    posting_time      BIGINT NOT NULL
);
CREATE INDEX ledger_by_tenant ON ledger_entries (agency_id, environment, currency, posting_time);
