//! The checkpoints this server signed over its log (DESIGN §2.1): every one is kept.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "log_checkpoints")]
pub struct Model {
    /// The tree size the checkpoint commits to.
    #[sea_orm(primary_key, auto_increment = false)]
    pub size: i64,
    /// The root, lowercase hex.
    pub root_hash: String,
    /// The signed note, exactly as served (without cosignatures).
    #[sea_orm(column_type = "Text")]
    pub note: String,
    /// The signing key, `ed25519:<version>`.
    pub key_id: String,
    /// When it was signed, ms since the epoch.
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
