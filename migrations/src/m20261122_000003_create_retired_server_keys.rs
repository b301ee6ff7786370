//! Our own signing keys that were rotated out.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RetiredServerKeys {
    Table,
    KeyId,
    PublicKey,
    ExpiredTs,
    RetiredSeq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RetiredServerKeys::Table)
                    .col(
                        ColumnDef::new(RetiredServerKeys::KeyId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(RetiredServerKeys::PublicKey)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RetiredServerKeys::ExpiredTs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RetiredServerKeys::RetiredSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RetiredServerKeys::Table).to_owned())
            .await
    }
}
