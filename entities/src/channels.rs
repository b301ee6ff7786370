//! Projection: channels known to this server (ours and remote ones we take part in).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "channels")]
pub struct Model {
    /// `<id>@<home server>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub channel_ref: String,
    pub name: String,
    pub creator: Option<String>,
    pub created_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
