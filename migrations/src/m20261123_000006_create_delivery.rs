//! Outbound delivery state: one cursor per destination server, and the events a destination
//! refused for good (dead letters). Operational state, not derived from the log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum DeliveryCursors {
    Table,
    Destination,
    CursorSeq,
    UpdatedTs,
}

#[derive(DeriveIden)]
enum DeadLetters {
    Table,
    Id,
    Destination,
    Seq,
    EventId,
    Errcode,
    Error,
    Ts,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(DeliveryCursors::Table)
                    .col(
                        ColumnDef::new(DeliveryCursors::Destination)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(DeliveryCursors::CursorSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(DeliveryCursors::UpdatedTs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeadLetters::Table)
                    .col(
                        ColumnDef::new(DeadLetters::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(DeadLetters::Destination).string().not_null())
                    .col(ColumnDef::new(DeadLetters::Seq).big_integer().not_null())
                    .col(ColumnDef::new(DeadLetters::EventId).string().not_null())
                    .col(ColumnDef::new(DeadLetters::Errcode).string().not_null())
                    .col(ColumnDef::new(DeadLetters::Error).text().not_null())
                    .col(ColumnDef::new(DeadLetters::Ts).big_integer().not_null())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("dead_letters_destination_seq")
                    .table(DeadLetters::Table)
                    .col(DeadLetters::Destination)
                    .col(DeadLetters::Seq)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(DeadLetters::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(DeliveryCursors::Table).to_owned())
            .await
    }
}
