//! Projection: other servers' actor ID-Certs this server accepted (foreign sessions, signed
//! messages), so the log shows which key was taken for whom.

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "foreign_idcerts")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub fid: String,
    /// The serial as its issuer wrote it, decimal.
    #[sea_orm(primary_key, auto_increment = false)]
    pub serial: String,
    /// The session id the certificate names (its home server's).
    pub session_id: String,
    pub fingerprint: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    #[sea_orm(column_type = "Text")]
    pub pem: String,
    pub seen_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
