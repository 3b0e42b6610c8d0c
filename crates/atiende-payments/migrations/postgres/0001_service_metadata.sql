-- The payments service's database. Its tables arrive with the service's release.
CREATE TABLE payments_service (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
INSERT INTO payments_service (key, value) VALUES ('schema_owner', 'payments');
