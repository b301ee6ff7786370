//! The last verified key response of each other server.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RemoteServerKeys {
    Table,
    ServerName,
    Response,
    ValidUntilTs,
    FetchedTs,
    UpdatedSeq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RemoteServerKeys::Table)
                    .col(
                        ColumnDef::new(RemoteServerKeys::ServerName)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(RemoteServerKeys::Response).text().not_null())
                    .col(
                        ColumnDef::new(RemoteServerKeys::ValidUntilTs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RemoteServerKeys::FetchedTs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(RemoteServerKeys::UpdatedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RemoteServerKeys::Table).to_owned())
            .await
    }
}
