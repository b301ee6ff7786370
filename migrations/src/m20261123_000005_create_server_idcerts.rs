//! Our own root ID-Certs (polyproto), one row per issued certificate.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ServerIdcerts {
    Table,
    Serial,
    KeyId,
    NotBefore,
    NotAfter,
    Pem,
    IssuedSeq,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ServerIdcerts::Table)
                    .col(
                        ColumnDef::new(ServerIdcerts::Serial)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ServerIdcerts::KeyId).string().not_null())
                    .col(
                        ColumnDef::new(ServerIdcerts::NotBefore)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ServerIdcerts::NotAfter)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ServerIdcerts::Pem).text().not_null())
                    .col(
                        ColumnDef::new(ServerIdcerts::IssuedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ServerIdcerts::Table).to_owned())
            .await
    }
}
