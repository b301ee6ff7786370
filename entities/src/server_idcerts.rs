//! Projection: the root ID-Certs this server issued for its own keys (polyproto).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "server_idcerts")]
pub struct Model {
    /// The certificate serial, lowercase hex.
    #[sea_orm(primary_key, auto_increment = false)]
    pub serial: String,
    /// The signing key the certificate is for, `ed25519:<version>`.
    pub key_id: String,
    /// Validity, in ms (whole seconds: X.509 times have no fraction).
    pub not_before: i64,
    pub not_after: i64,
    #[sea_orm(column_type = "Text")]
    pub pem: String,
    pub issued_seq: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
