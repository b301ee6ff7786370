//! Projection: our own signing keys that were rotated out, with the time they expired.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "retired_server_keys")]
pub struct Model {
    /// `ed25519:<version>`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    /// The public key, unpadded base64.
    pub public_key: String,
    /// Signatures by this key dated at or after this time (ms) are not valid.
    pub expired_ts: i64,
    pub retired_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
