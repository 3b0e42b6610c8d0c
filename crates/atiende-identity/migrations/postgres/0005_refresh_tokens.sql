-- Refresh tokens (SHA-256 digests), in families: every refresh replaces
-- the token with a new one of its family; presenting a replaced token
-- again revokes the whole family and its access tokens. The family is the
-- digest of the code that started it (citizen_access_tokens.code_hash).
CREATE TABLE refresh_tokens (
    token_hash          TEXT PRIMARY KEY,
    family              TEXT NOT NULL,
    citizen_id          TEXT NOT NULL REFERENCES citizens (citizen_id),
    client_id           TEXT NOT NULL,
    agency_id           TEXT NOT NULL,
    scope               TEXT NOT NULL,
    -- The family's end: refreshing never extends it.
    expire_time         BIGINT NOT NULL,
    -- Set when exchanged for a new one.
    use_time            BIGINT
);
CREATE INDEX refresh_tokens_by_family ON refresh_tokens (family);
