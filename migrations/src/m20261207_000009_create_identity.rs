//! Actor identity (DESIGN §4.2–§4.5): the actor certificates we issued, the other servers'
//! actor certificates we accepted, actors' services, and what a foreign session signed in
//! with. All projections of the log.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ActorIdcerts {
    Table,
    Serial,
    Fid,
    SessionId,
    Fingerprint,
    NotBefore,
    NotAfter,
    Pem,
    IssuedSeq,
    InvalidatedAt,
    InvalidatedReason,
    InvalidatedSeq,
}

#[derive(DeriveIden)]
enum ForeignIdcerts {
    Table,
    Fid,
    Serial,
    SessionId,
    Fingerprint,
    NotBefore,
    NotAfter,
    Pem,
    SeenSeq,
}

#[derive(DeriveIden)]
enum Services {
    Table,
    Fid,
    Service,
    Url,
    IsPrimary,
    CreatedSeq,
    UpdatedSeq,
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    IdcertSerial,
    HomeSessionId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ActorIdcerts::Table)
                    .col(
                        ColumnDef::new(ActorIdcerts::Serial)
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ActorIdcerts::Fid).string().not_null())
                    .col(ColumnDef::new(ActorIdcerts::SessionId).string().not_null())
                    .col(
                        ColumnDef::new(ActorIdcerts::Fingerprint)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ActorIdcerts::NotBefore)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ActorIdcerts::NotAfter)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ActorIdcerts::Pem).text().not_null())
                    .col(
                        ColumnDef::new(ActorIdcerts::IssuedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ActorIdcerts::InvalidatedAt).big_integer())
                    .col(ColumnDef::new(ActorIdcerts::InvalidatedReason).string())
                    .col(ColumnDef::new(ActorIdcerts::InvalidatedSeq).big_integer())
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("actor_idcerts_fid")
                    .table(ActorIdcerts::Table)
                    .col(ActorIdcerts::Fid)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("actor_idcerts_not_after")
                    .table(ActorIdcerts::Table)
                    .col(ActorIdcerts::NotAfter)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ForeignIdcerts::Table)
                    .col(ColumnDef::new(ForeignIdcerts::Fid).string().not_null())
                    .col(ColumnDef::new(ForeignIdcerts::Serial).string().not_null())
                    .col(
                        ColumnDef::new(ForeignIdcerts::SessionId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ForeignIdcerts::Fingerprint)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ForeignIdcerts::NotBefore)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ForeignIdcerts::NotAfter)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ForeignIdcerts::Pem).text().not_null())
                    .col(
                        ColumnDef::new(ForeignIdcerts::SeenSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(ForeignIdcerts::Fid)
                            .col(ForeignIdcerts::Serial),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Services::Table)
                    .col(ColumnDef::new(Services::Fid).string().not_null())
                    .col(ColumnDef::new(Services::Service).string().not_null())
                    .col(ColumnDef::new(Services::Url).string().not_null())
                    .col(ColumnDef::new(Services::IsPrimary).boolean().not_null())
                    .col(
                        ColumnDef::new(Services::CreatedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(Services::UpdatedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .primary_key(
                        Index::create()
                            .col(Services::Fid)
                            .col(Services::Service)
                            .col(Services::Url),
                    )
                    .to_owned(),
            )
            .await?;
        // Two columns, one statement each: SQLite adds one column per ALTER TABLE.
        for column in [Sessions::IdcertSerial, Sessions::HomeSessionId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sessions::Table)
                        .add_column(ColumnDef::new(column).string().null())
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Sessions::IdcertSerial, Sessions::HomeSessionId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Sessions::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(Services::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ForeignIdcerts::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(ActorIdcerts::Table).to_owned())
            .await
    }
}
