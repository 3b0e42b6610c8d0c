-- The notifications service's database. Its tables arrive with the service's release.
CREATE TABLE notifications_service (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);
INSERT INTO notifications_service (key, value) VALUES ('schema_owner', 'notifications');
