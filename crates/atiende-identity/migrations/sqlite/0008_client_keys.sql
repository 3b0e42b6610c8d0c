-- private_key_jwt (RFC 7523): the public keys a client authenticates with,
-- and the ids of assertions already used (each works once, until it
-- expires).
CREATE TABLE client_jwks (
    client_id  TEXT PRIMARY KEY REFERENCES clients (client_id),
    jwks       TEXT NOT NULL
);

CREATE TABLE client_assertion_ids (
    jti_hash     TEXT PRIMARY KEY,
    expire_time  INTEGER NOT NULL
);
