//! The append-only, hash-chained event log (DESIGN §2).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "events")]
pub struct Model {
    /// 1-based, gap-free position in the log, assigned by the single writer.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub event_id: String,
    pub origin: String,
    #[sea_orm(column_name = "type")]
    pub event_type: String,
    pub sender: Option<String>,
    pub channel: Option<String>,
    pub origin_ts: i64,
    pub received_ts: i64,
    /// The content as canonical JSON text, kept byte-exact so the leaf can be recomputed.
    pub content: String,
    pub prev_hash: String,
    pub entry_hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
