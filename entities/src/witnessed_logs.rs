//! The logs of other servers we witness (DESIGN §2.5): the latest checkpoint we cosigned.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "witnessed_logs")]
pub struct Model {
    /// The log's origin line, `<server>/log`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub origin: String,
    pub size: i64,
    /// Lowercase hex.
    pub root_hash: String,
    /// The checkpoint note as it was cosigned.
    #[sea_orm(column_type = "Text")]
    pub note: String,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
