-- Agencies, their OAuth clients, signing keys and revocations.
-- Timestamps are microseconds since the Unix epoch.
CREATE TABLE agencies (
    agency_id     TEXT PRIMARY KEY,
    display_name  TEXT NOT NULL,
    operator      INTEGER NOT NULL,
    create_time   INTEGER NOT NULL
);

CREATE TABLE clients (
    client_id           TEXT PRIMARY KEY,
    agency_id           TEXT NOT NULL REFERENCES agencies (agency_id),
    display_name        TEXT NOT NULL,
    scopes              TEXT NOT NULL,
    environment         TEXT NOT NULL CHECK (environment IN ('sandbox', 'live')),
    state               TEXT NOT NULL CHECK (state IN ('active', 'disabled')),
    secret_hash         TEXT NOT NULL,
    create_time         INTEGER NOT NULL,
    secret_rotate_time  INTEGER NOT NULL
);
CREATE INDEX clients_by_agency ON clients (agency_id, client_id);

CREATE TABLE signing_keys (
    kid                   TEXT PRIMARY KEY,
    private_key_sealed    BLOB NOT NULL,
    public_x              TEXT NOT NULL,
    public_y              TEXT NOT NULL,
    create_time           INTEGER NOT NULL,
    activate_time         INTEGER NOT NULL
);

CREATE TABLE revocations (
    subject_kind  TEXT NOT NULL CHECK (subject_kind IN ('token', 'client')),
    subject       TEXT NOT NULL,
    agency_id     TEXT NOT NULL,
    expire_time   INTEGER NOT NULL,
    revoke_time   INTEGER NOT NULL,
    PRIMARY KEY (subject_kind, subject)
);
CREATE INDEX revocations_by_time ON revocations (revoke_time);
