//! Each client session's cursor: the newest `seq` delivered to it over its WebSocket or
//! returned by REST catch-up (DESIGN §5). A read position, not a state change: operational
//! state kept outside the log, like the delivery cursors.

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
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(SessionCursors::Table).to_owned())
            .await
    }
}
