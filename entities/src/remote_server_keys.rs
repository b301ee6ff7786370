//! Projection: the last verified key response of each other server (the notary's cache).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "remote_server_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub server_name: String,
    /// The server's own signed `/_matrix/key/v2/server` response, canonical JSON.
    pub response: String,
    pub valid_until_ts: i64,
    pub fetched_ts: i64,
    pub updated_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
