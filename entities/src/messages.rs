//! Projection: the current state of each message (body after edits, deletion marker).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub channel_ref: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: String,
    pub sender: Option<String>,
    /// `None` once deleted: a deletion redacts the body.
    pub body: Option<String>,
    pub origin_ts: i64,
    pub created_seq: i64,
    pub edited_seq: Option<i64>,
    pub deleted_seq: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
