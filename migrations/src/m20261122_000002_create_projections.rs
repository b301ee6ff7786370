//! Projections derived from the log: channels, members, messages, origin policies.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Channels {
    Table,
    ChannelRef,
    Name,
    Creator,
    CreatedSeq,
}

#[derive(DeriveIden)]
enum Members {
    Table,
    ChannelRef,
    Fid,
    State,
    UpdatedSeq,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    ChannelRef,
    MessageId,
    Sender,
    Body,
    OriginTs,
    CreatedSeq,
    EditedSeq,
    DeletedSeq,
}

#[derive(DeriveIden)]
enum OriginPolicies {
    Table,
    Origin,
    RatePerMinute,
    Burst,
    Blocked,
    UpdatedSeq,
}

/// Creates a table; on SQLite as `WITHOUT ROWID`, so a table keyed by text is one B-tree
/// clustered on its primary key instead of a rowid table plus a primary-key index.
async fn create(
    manager: &SchemaManager<'_>,
    table: &mut TableCreateStatement,
) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    if backend == DbBackend::Sqlite {
        let sql = format!("{} WITHOUT ROWID", table.to_string(SqliteQueryBuilder));
        manager
            .get_connection()
            .execute_unprepared(&sql)
            .await
            .map(|_| ())
    } else {
        manager.create_table(table.to_owned()).await
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create(
            manager,
            Table::create()
                .table(Channels::Table)
                .col(
                    ColumnDef::new(Channels::ChannelRef)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Channels::Name).string().not_null())
                .col(ColumnDef::new(Channels::Creator).string().null())
                .col(
                    ColumnDef::new(Channels::CreatedSeq)
                        .big_integer()
                        .not_null(),
                ),
        )
        .await?;
        create(
            manager,
            Table::create()
                .table(Members::Table)
                .col(ColumnDef::new(Members::ChannelRef).string().not_null())
                .col(ColumnDef::new(Members::Fid).string().not_null())
                .col(ColumnDef::new(Members::State).string().not_null())
                .col(ColumnDef::new(Members::UpdatedSeq).big_integer().not_null())
                .primary_key(Index::create().col(Members::ChannelRef).col(Members::Fid)),
        )
        .await?;
        create(
            manager,
            Table::create()
                .table(Messages::Table)
                .col(ColumnDef::new(Messages::ChannelRef).string().not_null())
                .col(ColumnDef::new(Messages::MessageId).string().not_null())
                .col(ColumnDef::new(Messages::Sender).string().null())
                .col(ColumnDef::new(Messages::Body).text().null())
                .col(ColumnDef::new(Messages::OriginTs).big_integer().not_null())
                .col(
                    ColumnDef::new(Messages::CreatedSeq)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(Messages::EditedSeq).big_integer().null())
                .col(ColumnDef::new(Messages::DeletedSeq).big_integer().null())
                .primary_key(
                    Index::create()
                        .col(Messages::ChannelRef)
                        .col(Messages::MessageId),
                ),
        )
        .await?;
        create(
            manager,
            Table::create()
                .table(OriginPolicies::Table)
                .col(
                    ColumnDef::new(OriginPolicies::Origin)
                        .string()
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(OriginPolicies::RatePerMinute)
                        .big_integer()
                        .not_null(),
                )
                .col(
                    ColumnDef::new(OriginPolicies::Burst)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(OriginPolicies::Blocked).boolean().not_null())
                .col(
                    ColumnDef::new(OriginPolicies::UpdatedSeq)
                        .big_integer()
                        .not_null(),
                ),
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Channels::Table.into_iden(),
            Members::Table.into_iden(),
            Messages::Table.into_iden(),
            OriginPolicies::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
