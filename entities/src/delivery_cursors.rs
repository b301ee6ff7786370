//! Outbound delivery: how far each destination server has acknowledged the log.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "delivery_cursors")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub destination: String,
    /// Every event up to this `seq` that concerns the destination was delivered (or dead-lettered).
    pub cursor_seq: i64,
    pub updated_ts: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
