//! Several nodes on one PostgreSQL (DESIGN §7): the leader's lease and epoch, the nodes,
//! delivery leases, the cluster-wide inbox quotas, and the one-time things (WebSocket tickets,
//! sign-in challenges) any node must be able to redeem. Operational state, not derived from
//! the log; created on SQLite too (one schema), where nothing uses it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ClusterLeader {
    Table,
    Id,
    Epoch,
    NodeId,
    AdvertiseUrl,
    BackendPid,
    LeaseUntilMs,
}

#[derive(DeriveIden)]
enum ClusterNodes {
    Table,
    NodeId,
    AdvertiseUrl,
    Role,
    Epoch,
    AppliedSeq,
    StartedMs,
    SeenMs,
}

#[derive(DeriveIden)]
enum DeliveryLeases {
    Table,
    Destination,
    NodeId,
    UntilMs,
}

#[derive(DeriveIden)]
enum OriginBuckets {
    Table,
    Origin,
    Tokens,
    UpdatedMs,
}

#[derive(DeriveIden)]
enum ClusterTickets {
    Table,
    Ticket,
    Fid,
    SessionId,
    CreatedSeq,
    ExpiresMs,
}

#[derive(DeriveIden)]
enum ClusterChallenges {
    Table,
    Challenge,
    ExpiresMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ClusterLeader::Table)
                    .col(
                        ColumnDef::new(ClusterLeader::Id)
                            .integer()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ClusterLeader::Epoch)
                            .big_integer()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ClusterLeader::NodeId).string())
                    .col(ColumnDef::new(ClusterLeader::AdvertiseUrl).string())
                    .col(ColumnDef::new(ClusterLeader::BackendPid).integer())
                    .col(
                        ColumnDef::new(ClusterLeader::LeaseUntilMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(ClusterLeader::Table)
                    .columns([
                        ClusterLeader::Id,
                        ClusterLeader::Epoch,
                        ClusterLeader::LeaseUntilMs,
                    ])
                    .values_panic([1.into(), 0i64.into(), 0i64.into()])
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ClusterNodes::Table)
                    .col(
                        ColumnDef::new(ClusterNodes::NodeId)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ClusterNodes::AdvertiseUrl)
                            .string()
                            .not_null(),
                    )
                    .col(ColumnDef::new(ClusterNodes::Role).string().not_null())
                    .col(ColumnDef::new(ClusterNodes::Epoch).big_integer().not_null())
                    .col(
                        ColumnDef::new(ClusterNodes::AppliedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ClusterNodes::StartedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ClusterNodes::SeenMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeliveryLeases::Table)
                    .col(
                        ColumnDef::new(DeliveryLeases::Destination)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(DeliveryLeases::NodeId).string())
                    .col(
                        ColumnDef::new(DeliveryLeases::UntilMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(OriginBuckets::Table)
                    .col(
                        ColumnDef::new(OriginBuckets::Origin)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(OriginBuckets::Tokens).double().not_null())
                    .col(
                        ColumnDef::new(OriginBuckets::UpdatedMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ClusterTickets::Table)
                    .col(
                        ColumnDef::new(ClusterTickets::Ticket)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(ClusterTickets::Fid).string().not_null())
                    .col(
                        ColumnDef::new(ClusterTickets::SessionId)
                            .string()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ClusterTickets::CreatedSeq)
                            .big_integer()
                            .not_null(),
                    )
                    .col(
                        ColumnDef::new(ClusterTickets::ExpiresMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ClusterChallenges::Table)
                    .col(
                        ColumnDef::new(ClusterChallenges::Challenge)
                            .string()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(ClusterChallenges::ExpiresMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            ClusterChallenges::Table.into_iden(),
            ClusterTickets::Table.into_iden(),
            OriginBuckets::Table.into_iden(),
            DeliveryLeases::Table.into_iden(),
            ClusterNodes::Table.into_iden(),
            ClusterLeader::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}
