-- Citizens, their second factors, sign-in throttles and the audit trail.
-- Timestamps are microseconds since the Unix epoch.
CREATE TABLE citizens (
    citizen_id          TEXT PRIMARY KEY,
    environment         TEXT NOT NULL CHECK (environment IN ('sandbox', 'live')),
    national_id_scheme  TEXT NOT NULL,
    national_id         TEXT NOT NULL,
    given_names         TEXT NOT NULL,
    family_names        TEXT NOT NULL,
    email               TEXT NOT NULL,
    email_verified      INTEGER NOT NULL,
    phone_number        TEXT,
    -- argon2id, PHC string form; NULL until the citizen sets a password.
    password_hash       TEXT,
    state               TEXT NOT NULL CHECK (state IN ('active', 'disabled')),
    assurance_level     TEXT NOT NULL CHECK (assurance_level IN ('low', 'substantial', 'high')),
    proofing_agency_id  TEXT,
    proofing_evidence   TEXT,
    proofing_time       INTEGER,
    registered_by       TEXT NOT NULL REFERENCES agencies (agency_id),
    -- AES-256-GCM under the key encryption key, the citizen id as AAD.
    totp_secret_sealed  BLOB,
    totp_confirmed      INTEGER NOT NULL,
    -- The last time step whose code was accepted: each code works once.
    totp_last_step      INTEGER NOT NULL,
    create_time         INTEGER NOT NULL,
    update_time         INTEGER NOT NULL,
    UNIQUE (environment, national_id_scheme, national_id)
);

-- Unused recovery codes (SHA-256); a used one is deleted.
CREATE TABLE recovery_codes (
    citizen_id  TEXT NOT NULL REFERENCES citizens (citizen_id),
    code_hash   TEXT NOT NULL,
    PRIMARY KEY (citizen_id, code_hash)
);

-- Failed sign-ins per account and per source; keys are SHA-256 digests,
-- so no national id or address is kept here.
CREATE TABLE sign_in_throttles (
    throttle_key   TEXT PRIMARY KEY,
    failures       INTEGER NOT NULL,
    window_start   INTEGER NOT NULL,
    locked_until   INTEGER NOT NULL
);

-- Append-only, hash-chained: each entry's previous_hash is the hash of
-- the entry before it (seq - 1).
CREATE TABLE audit_events (
    seq             INTEGER PRIMARY KEY,
    audit_event_id  TEXT NOT NULL UNIQUE,
    event_type      TEXT NOT NULL,
    environment     TEXT NOT NULL,
    citizen_id      TEXT,
    agency_id       TEXT,
    occur_time      INTEGER NOT NULL,
    -- A JSON object of strings.
    attributes      TEXT NOT NULL,
    previous_hash   TEXT NOT NULL,
    hash            TEXT NOT NULL
);
CREATE INDEX audit_events_by_citizen ON audit_events (citizen_id, seq);
CREATE INDEX audit_events_by_agency ON audit_events (agency_id, seq);

-- The head of the chain. Every append updates this row first, so appends
-- queue behind its lock and the chain never forks.
CREATE TABLE audit_head (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    seq   INTEGER NOT NULL,
    hash  TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000');
