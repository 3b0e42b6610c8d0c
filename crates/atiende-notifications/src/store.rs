//! The notifications service's tables. The schema starts empty; the first
//! migration records that the service owns this database.

use atiende_platform::storage::Migrations;

pub const MIGRATIONS: Migrations = Migrations {
    service: "notifications",
    sqlite: &[(
        1,
        "service metadata",
        include_str!("../migrations/sqlite/0001_service_metadata.sql"),
    )],
    postgres: &[(
        1,
        "service metadata",
        include_str!("../migrations/postgres/0001_service_metadata.sql"),
    )],
};
