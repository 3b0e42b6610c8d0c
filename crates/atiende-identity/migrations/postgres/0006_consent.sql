-- An authorization request whose citizen has signed in waits for their
-- consent: who signed in, how, and when.
ALTER TABLE authorization_requests ADD COLUMN citizen_id TEXT;
ALTER TABLE authorization_requests ADD COLUMN methods TEXT;
ALTER TABLE authorization_requests ADD COLUMN auth_time BIGINT;
