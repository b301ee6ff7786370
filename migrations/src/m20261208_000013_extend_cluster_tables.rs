//! What the cluster-wide inbox quotas and tickets need beyond the cluster tables (DESIGN §7):
//!
//! - `origin_buckets.granted`: the tokens the latest take granted. A take is one
//!   `INSERT … ON CONFLICT DO UPDATE`, whose `RETURNING` sees only the new row; the grant is
//!   stored beside the remaining tokens so the statement can answer both.
//! - an index on `cluster_tickets.session_id`: issuing counts a session's live tickets and an
//!   ended session's tickets are deleted, both by session.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OriginBuckets {
    Table,
    Granted,
}

#[derive(DeriveIden)]
enum ClusterTickets {
    Table,
    SessionId,
}

const SESSION_INDEX: &str = "cluster_tickets_session_id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(OriginBuckets::Table)
                    .add_column(
                        ColumnDef::new(OriginBuckets::Granted)
                            .double()
                            .not_null()
                            .default(0.0),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(SESSION_INDEX)
                    .table(ClusterTickets::Table)
                    .col(ClusterTickets::SessionId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(SESSION_INDEX)
                    .table(ClusterTickets::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OriginBuckets::Table)
                    .drop_column(OriginBuckets::Granted)
                    .to_owned(),
            )
            .await
    }
}
