-- OpenID Connect: the redirect URIs of clients, pending authorization
-- requests, authorization codes and citizens' access tokens (secrets as
-- SHA-256 digests), and the salt of pairwise subject identifiers.
CREATE TABLE client_redirect_uris (
    client_id     TEXT NOT NULL REFERENCES clients (client_id),
    redirect_uri  TEXT NOT NULL,
    PRIMARY KEY (client_id, redirect_uri)
);

CREATE TABLE authorization_requests (
    request_id      TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL,
    redirect_uri    TEXT NOT NULL,
    scope           TEXT NOT NULL,
    state           TEXT NOT NULL,
    nonce           TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,
    csrf_hash       TEXT NOT NULL,
    expire_time     INTEGER NOT NULL
);

CREATE TABLE authorization_codes (
    code_hash       TEXT PRIMARY KEY,
    client_id       TEXT NOT NULL,
    citizen_id      TEXT NOT NULL REFERENCES citizens (citizen_id),
    redirect_uri    TEXT NOT NULL,
    scope           TEXT NOT NULL,
    nonce           TEXT NOT NULL,
    code_challenge  TEXT NOT NULL,
    auth_time       INTEGER NOT NULL,
    methods         TEXT NOT NULL,
    expire_time     INTEGER NOT NULL,
    -- Set when exchanged: a code works once.
    use_time        INTEGER
);

CREATE TABLE citizen_access_tokens (
    token_hash   TEXT PRIMARY KEY,
    citizen_id   TEXT NOT NULL REFERENCES citizens (citizen_id),
    client_id    TEXT NOT NULL,
    agency_id    TEXT NOT NULL,
    scope        TEXT NOT NULL,
    -- The code it was issued for: replaying the code revokes it.
    code_hash    TEXT NOT NULL,
    expire_time  INTEGER NOT NULL
);

CREATE TABLE pairwise_salt (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    salt  TEXT NOT NULL
);
