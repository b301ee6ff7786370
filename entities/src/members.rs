//! Projection: membership of each (channel, federation id).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "members")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub channel_ref: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub fid: String,
    /// `invited`, `joined` or `left`.
    pub state: String,
    pub updated_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
