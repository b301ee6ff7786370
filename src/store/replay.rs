//! `switchyard replay`: rebuilds every projection from the log into a fresh database and
//! reports whether it equals the live one.
//!
//! The target gets a copy of the log and the projections the log implies, computed by the same
//! [`crate::core::projection::derive`] and [`super::projections::apply`] as the live writer.
//! The target may be another backend (replaying a SQLite log into PostgreSQL is how a
//! deployment moves between them): it also gets the log's Merkle tiles (recomputed as the
//! entries are copied) and every signed checkpoint with its cosignatures, so the copy passes
//! `log verify` and goes on proving consistency with what was published.

use sea_orm::{EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait};
use serde::Serialize;

use super::{projections, Store, StoreError};
use crate::core::event::EventType;
use crate::core::merkle::leaf_hash;
use crate::core::projection::{self, ProjectionOp};
use crate::core::tiles::TileEdge;
use entities::{
    accounts, actor_idcerts, channels, foreign_idcerts, members, messages, origin_policies,
    remote_server_keys, retired_server_keys, server_idcerts, services, sessions,
};

const PAGE: u64 = 5_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub events: u64,
    pub tables: Vec<TableComparison>,
}

impl ReplayReport {
    pub fn identical(&self) -> bool {
        self.tables.iter().all(|t| t.first_difference.is_none())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableComparison {
    pub table: &'static str,
    pub live_rows: u64,
    pub rebuilt_rows: u64,
    /// The first row (in primary-key order) that differs, as JSON of both sides.
    pub first_difference: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("the target database already holds {0} log entries; replay needs an empty one")]
    TargetNotEmpty(u64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Store {
    /// Rebuilds `target` (migrated, empty) from this store's log and compares projections.
    pub async fn replay_into(&self, target: &Store) -> Result<ReplayReport, ReplayError> {
        let (target_head, _) = target.head().await?;
        if target_head != 0 {
            return Err(ReplayError::TargetNotEmpty(target_head));
        }
        let mut after = 0u64;
        // The Merkle tree is part of the log: its tiles are written as the entries are copied.
        let mut tree = TileEdge::new();
        loop {
            let entries = self.read_after(after, PAGE).await?;
            let Some(last) = entries.last() else { break };
            after = last.seq;
            let mut ops: Vec<(u64, ProjectionOp)> = Vec::new();
            for entry in &entries {
                let Ok(kind) = entry.event_type.parse::<EventType>() else {
                    continue;
                };
                let content: serde_json::Value = serde_json::from_str(entry.content.get())
                    .map_err(|e| StoreError::Corrupt {
                        seq: entry.seq as i64,
                        problem: e.to_string(),
                    })?;
                let derived = projection::derive(
                    kind,
                    entry.sender.as_deref(),
                    entry.channel.as_deref(),
                    entry.origin_ts,
                    &content,
                );
                ops.extend(derived.into_iter().map(|op| (entry.seq, op)));
            }
            for entry in &entries {
                tree.push(leaf_hash(entry.leaf().as_bytes()));
            }
            let txn = target.writer.begin().await.map_err(StoreError::from)?;
            super::log::insert_entries(&txn, &entries).await?;
            super::tree::write_tiles(&txn, &tree.take_changes()).await?;
            projections::apply(&txn, ops.iter().map(|(seq, op)| (*seq, op)))
                .await
                .map_err(StoreError::from)?;
            txn.commit().await.map_err(StoreError::from)?;
        }
        copy_checkpoints(self, target, after).await?;
        let tables = vec![
            compare::<channels::Entity>(self, target, "channels").await?,
            compare::<members::Entity>(self, target, "members").await?,
            compare::<messages::Entity>(self, target, "messages").await?,
            compare::<origin_policies::Entity>(self, target, "origin_policies").await?,
            compare::<retired_server_keys::Entity>(self, target, "retired_server_keys").await?,
            compare::<remote_server_keys::Entity>(self, target, "remote_server_keys").await?,
            compare::<server_idcerts::Entity>(self, target, "server_idcerts").await?,
            compare::<accounts::Entity>(self, target, "accounts").await?,
            compare::<sessions::Entity>(self, target, "sessions").await?,
            compare::<actor_idcerts::Entity>(self, target, "actor_idcerts").await?,
            compare::<foreign_idcerts::Entity>(self, target, "foreign_idcerts").await?,
            compare::<services::Entity>(self, target, "services").await?,
        ];
        Ok(ReplayReport {
            events: after,
            tables,
        })
    }
}

/// Copies the signed checkpoints and their cosignatures (history, not projections: they
/// cannot be rebuilt, and a moved log must keep proving consistency with what it published).
///
/// Only checkpoints over entries the copy holds (`copied`): a live server may sign a newer one
/// while the copy runs.
async fn copy_checkpoints(live: &Store, target: &Store, copied: u64) -> Result<(), StoreError> {
    use entities::{log_checkpoints, log_cosignatures, witnessed_logs};
    use sea_orm::{ActiveModelTrait, ColumnTrait, IntoActiveModel};
    let mut after = -1i64;
    loop {
        let rows = log_checkpoints::Entity::find()
            .filter(log_checkpoints::Column::Size.gt(after))
            .filter(log_checkpoints::Column::Size.lte(copied as i64))
            .order_by_asc(log_checkpoints::Column::Size)
            .limit(PAGE)
            .all(live.readers())
            .await?;
        let Some(last) = rows.last() else { break };
        after = last.size;
        let txn = target.writer.begin().await?;
        for row in rows {
            row.into_active_model().reset_all().insert(&txn).await?;
        }
        txn.commit().await?;
    }
    let txn = target.writer.begin().await?;
    for row in log_cosignatures::Entity::find()
        .filter(log_cosignatures::Column::Size.lte(copied as i64))
        .all(live.readers())
        .await?
    {
        row.into_active_model().reset_all().insert(&txn).await?;
    }
    for row in witnessed_logs::Entity::find().all(live.readers()).await? {
        row.into_active_model().reset_all().insert(&txn).await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Compares a table of two stores row by row in primary-key order, a page at a time.
async fn compare<E>(
    live: &Store,
    rebuilt: &Store,
    table: &'static str,
) -> Result<TableComparison, StoreError>
where
    E: EntityTrait,
    E::Model: PartialEq + Serialize,
{
    let mut comparison = TableComparison {
        table,
        live_rows: 0,
        rebuilt_rows: 0,
        first_difference: None,
    };
    let mut offset = 0;
    loop {
        let page = |store: &Store| {
            let mut query = E::find();
            for column in E::PrimaryKey::iter() {
                query = query.order_by_asc(sea_orm::PrimaryKeyToColumn::into_column(column));
            }
            let db = store.readers().clone();
            async move { query.offset(offset).limit(PAGE).all(&db).await }
        };
        let (a, b) = (page(live).await?, page(rebuilt).await?);
        comparison.live_rows += a.len() as u64;
        comparison.rebuilt_rows += b.len() as u64;
        if comparison.first_difference.is_none() {
            let max = a.len().max(b.len());
            for i in 0..max {
                let (x, y) = (a.get(i), b.get(i));
                if x != y {
                    let show = |m: Option<&E::Model>| {
                        m.map(|m| serde_json::to_string(m).unwrap_or_default())
                            .unwrap_or_else(|| "(none)".into())
                    };
                    comparison.first_difference =
                        Some(format!("live {} vs rebuilt {}", show(x), show(y)));
                    break;
                }
            }
        }
        if a.len() < PAGE as usize && b.len() < PAGE as usize {
            return Ok(comparison);
        }
        offset += PAGE;
    }
}

use sea_orm::Iterable;
