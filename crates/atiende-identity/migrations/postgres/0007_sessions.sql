-- Single sign-on: a citizen's session at the login pages (the cookie's
-- SHA-256 digest), so that a second authorization, from the same agency or
-- another, needs no new sign-in unless prompt=login, max_age or a higher
-- level of assurance asks for one. A session ends at its idle or absolute
-- expiry, or at RP-initiated logout.
CREATE TABLE citizen_sessions (
    session_hash      TEXT PRIMARY KEY,
    citizen_id        TEXT NOT NULL REFERENCES citizens (citizen_id),
    environment       TEXT NOT NULL,
    methods           TEXT NOT NULL,
    auth_time         BIGINT NOT NULL,
    idle_expire_time  BIGINT NOT NULL,
    expire_time       BIGINT NOT NULL
);
CREATE INDEX citizen_sessions_by_citizen ON citizen_sessions (citizen_id);

-- Remembered consent: what a citizen allowed a client to receive. A later
-- request for no more than this skips the consent page.
CREATE TABLE consent_grants (
    citizen_id  TEXT NOT NULL REFERENCES citizens (citizen_id),
    client_id   TEXT NOT NULL,
    scope       TEXT NOT NULL,
    grant_time  BIGINT NOT NULL,
    PRIMARY KEY (citizen_id, client_id)
);

-- What the request asks of the sign-in: the minimum level of assurance
-- (from acr_values), the page language (ui_locales), whether consent must
-- be asked again (prompt=consent), and the session it was answered from.
ALTER TABLE authorization_requests ADD COLUMN acr_required TEXT NOT NULL DEFAULT 'low';
ALTER TABLE authorization_requests ADD COLUMN locale TEXT NOT NULL DEFAULT 'es';
ALTER TABLE authorization_requests ADD COLUMN force_consent BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE authorization_requests ADD COLUMN session_hash TEXT;

-- The session an ID token came from (its sid claim).
ALTER TABLE authorization_codes ADD COLUMN session_hash TEXT;

-- Refresh-token families, so that a refresh and a revocation of its
-- family serialise on one row: a family revoked while a refresh runs
-- leaves no live token behind.
CREATE TABLE refresh_families (
    family       TEXT PRIMARY KEY,
    revoke_time  BIGINT,
    expire_time  BIGINT NOT NULL
);
-- The families of refresh tokens issued before this migration.
INSERT INTO refresh_families (family, expire_time)
    SELECT family, MAX(expire_time) FROM refresh_tokens GROUP BY family;

-- Email verification: a 6-digit one-time code (SHA-256 with the citizen
-- id), with a bounded number of tries. A self-registered citizen's
-- password waits here (argon2id) until the code is right: an unverified
-- registration cannot sign in.
CREATE TABLE email_verifications (
    citizen_id   TEXT PRIMARY KEY REFERENCES citizens (citizen_id),
    code_hash    TEXT NOT NULL,
    password_hash TEXT,
    attempts     BIGINT NOT NULL,
    expire_time  BIGINT NOT NULL
);
