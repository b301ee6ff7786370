//! Schema migrations, one file per step, shared by SQLite and PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_events;
mod m20261122_000002_create_projections;
mod m20261122_000003_create_retired_server_keys;
mod m20261122_000004_create_remote_server_keys;
mod m20261123_000005_create_server_idcerts;
mod m20261123_000006_create_delivery;
mod m20261123_000007_create_accounts;
mod m20261123_000008_create_session_cursors;
mod m20261207_000009_create_identity;
mod m20261207_000010_create_transparency;
mod m20261207_000011_drop_level0_partial_tiles;
mod m20261208_000012_create_cluster;
mod m20261208_000013_extend_cluster_tables;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_events::Migration),
            Box::new(m20261122_000002_create_projections::Migration),
            Box::new(m20261122_000003_create_retired_server_keys::Migration),
            Box::new(m20261122_000004_create_remote_server_keys::Migration),
            Box::new(m20261123_000005_create_server_idcerts::Migration),
            Box::new(m20261123_000006_create_delivery::Migration),
            Box::new(m20261123_000007_create_accounts::Migration),
            Box::new(m20261123_000008_create_session_cursors::Migration),
            Box::new(m20261207_000009_create_identity::Migration),
            Box::new(m20261207_000010_create_transparency::Migration),
            Box::new(m20261207_000011_drop_level0_partial_tiles::Migration),
            Box::new(m20261208_000012_create_cluster::Migration),
            Box::new(m20261208_000013_extend_cluster_tables::Migration),
        ]
    }
}
