//! Cosignatures witnesses returned for our checkpoints (DESIGN §2.5).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "log_cosignatures")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub size: i64,
    /// The witness's server name.
    #[sea_orm(primary_key, auto_increment = false)]
    pub witness: String,
    /// The signature line(s) it returned, newline-terminated.
    #[sea_orm(column_type = "Text")]
    pub line: String,
    pub cosigned_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
