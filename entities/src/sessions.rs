//! Projection: client sessions, with the SHA-256 of their bearer tokens (never the tokens).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub session_id: String,
    pub fid: String,
    /// Lowercase hex SHA-256 of the bearer token.
    #[serde(skip)]
    pub token_hash: String,
    pub created_seq: i64,
    /// A foreign session (an actor of another server signed in here, DESIGN §4.3): the
    /// serial of the certificate it uses now, decimal.
    pub idcert_serial: Option<String>,
    /// A foreign session: the session id its certificate names (its home server's).
    pub home_session_id: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
