-- One role and one database per service: no service can read another's
-- tables. Run once by the postgres image on an empty data volume
-- (/docker-entrypoint-initdb.d). The passwords are for local development only.
CREATE ROLE identity LOGIN PASSWORD 'identity-dev';
CREATE ROLE notifications LOGIN PASSWORD 'notifications-dev';
CREATE ROLE payments LOGIN PASSWORD 'payments-dev';

CREATE DATABASE identity OWNER identity;
CREATE DATABASE notifications OWNER notifications;
CREATE DATABASE payments OWNER payments;

REVOKE ALL ON DATABASE identity FROM PUBLIC;
REVOKE ALL ON DATABASE notifications FROM PUBLIC;
REVOKE ALL ON DATABASE payments FROM PUBLIC;
