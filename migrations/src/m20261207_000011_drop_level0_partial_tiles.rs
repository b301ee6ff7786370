//! The level-0 partial Merkle tile is no longer stored (readers recompute it from its entries):
//! drops the rows an earlier build of the tree wrote for it, so only full level-0 tiles remain.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DELETE FROM log_tiles WHERE level = 0 AND length(hashes) < 8192")
            .await?;
        Ok(())
    }

    async fn down(&self, _manager: &SchemaManager) -> Result<(), DbErr> {
        // Nothing to restore: the rows are recomputed from the entries when needed.
        Ok(())
    }
}
