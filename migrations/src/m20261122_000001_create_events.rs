//! The append-only event log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Events {
    Table,
    Seq,
    EventId,
    Origin,
    Type,
    Sender,
    Channel,
    OriginTs,
    ReceivedTs,
    Content,
    PrevHash,
    EntryHash,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Events::Table)
                    .col(
                        ColumnDef::new(Events::Seq)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Events::EventId).string().not_null())
                    .col(ColumnDef::new(Events::Origin).string().not_null())
                    .col(ColumnDef::new(Events::Type).string().not_null())
                    .col(ColumnDef::new(Events::Sender).string().null())
                    .col(ColumnDef::new(Events::Channel).string().null())
                    .col(ColumnDef::new(Events::OriginTs).big_integer().not_null())
                    .col(ColumnDef::new(Events::ReceivedTs).big_integer().not_null())
                    .col(ColumnDef::new(Events::Content).text().not_null())
                    .col(ColumnDef::new(Events::PrevHash).string().not_null())
                    .col(ColumnDef::new(Events::EntryHash).string().not_null())
                    .to_owned(),
            )
            .await?;
        // Idempotency of appends: one entry per (origin, event_id), exact and durable.
        manager
            .create_index(
                Index::create()
                    .name("events_origin_event_id")
                    .table(Events::Table)
                    .col(Events::Origin)
                    .col(Events::EventId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Per-channel reads (history, catch-up) walk this index in seq order.
        manager
            .create_index(
                Index::create()
                    .name("events_channel_seq")
                    .table(Events::Table)
                    .col(Events::Channel)
                    .col(Events::Seq)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Events::Table).to_owned())
            .await
    }
}
