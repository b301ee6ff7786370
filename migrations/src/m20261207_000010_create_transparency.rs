//! The verifiable log (DESIGN §2.1–§2.5): the Merkle tree's tiles, the checkpoints we signed,
//! the cosignatures witnesses returned, and the state of the logs we witness.
//!
//! `log_tiles` is written by the log writer in the transaction that commits the entries it
//! covers; the other tables are written by the checkpoint signer and the witness.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LogTiles {
    Table,
    Level,
    Idx,
    Hashes,
}

#[derive(DeriveIden)]
enum LogCheckpoints {
    Table,
    Size,
    RootHash,
    Note,
    KeyId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum LogCosignatures {
    Table,
    Size,
    Witness,
    Line,
    CosignedAt,
}

#[derive(DeriveIden)]
enum WitnessedLogs {
    Table,
    Origin,
    Size,
    RootHash,
    Note,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LogTiles::Table)
                    .col(ColumnDef::new(LogTiles::Level).integer().not_null())
                    .col(ColumnDef::new(LogTiles::Idx).big_integer().not_null())
                    // 32 bytes per hash, 1..=256 hashes.
                    .col(ColumnDef::new(LogTiles::Hashes).binary().not_null())
                    .primary_key(Index::create().col(LogTiles::Level).col(LogTiles::Idx))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LogCheckpoints::Table)
                    .col(
                        ColumnDef::new(LogCheckpoints::Size)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(LogCheckpoints::RootHash).string().not_null())
                    .col(ColumnDef::new(LogCheckpoints::Note).text().not_null())
                    .col(ColumnDef::new(LogCheckpoints::KeyId).string().not_null())
                    .col(
                        ColumnDef::new(LogCheckpoints::CreatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LogCosignatures::Table)
                    .col(
                        ColumnDef::new(LogCosignatures::Size)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(LogCosignatures::Witness).string().not_null())
                    .col(ColumnDef::new(LogCosignatures::Line).text().not_null())
                    .col(
                        ColumnDef::new(LogCosignatures::CosignedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(LogCosignatures::Size)
                            .col(LogCosignatures::Witness),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(WitnessedLogs::Table)
                    .col(
                        ColumnDef::new(WitnessedLogs::Origin)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(WitnessedLogs::Size).big_integer().not_null())
                    .col(ColumnDef::new(WitnessedLogs::RootHash).string().not_null())
                    .col(ColumnDef::new(WitnessedLogs::Note).text().not_null())
                    .col(
                        ColumnDef::new(WitnessedLogs::UpdatedAt)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(WitnessedLogs::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(LogCosignatures::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(LogCheckpoints::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(LogTiles::Table).to_owned())
            .await
    }
}
