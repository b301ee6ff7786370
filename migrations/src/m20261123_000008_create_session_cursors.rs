//! Each client session's cursor: the newest `seq` delivered to it over its WebSocket or
//! returned by REST catch-up (DESIGN §5). A read position, not a state change: operational
//! state kept outside the log, like the delivery cursors. Also an index of `members` by fid:
//! a user's channels are read at every socket start and catch-up.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum SessionCursors {
    Table,
    SessionId,
    CursorSeq,
    UpdatedTs,
}

#[derive(DeriveIden)]
enum Members {
    Table,
    Fid,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SessionCursors::Table)
                    .col(
                        ColumnDef::new(SessionCursors::SessionId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(SessionCursors::CursorSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(SessionCursors::UpdatedTs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("members_fid")
                    .table(Members::Table)
                    .col(Members::Fid)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("members_fid")
                    .table(Members::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(SessionCursors::Table).to_owned())
            .await
    }
}
