//! Projection: the actor ID-Certs this server issued (polyproto, DESIGN §4.2).

use sea_orm::entity::prelude::*;
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize)]
#[sea_orm(table_name = "actor_idcerts")]
pub struct Model {
    /// The certificate serial: a random positive 63-bit number.
    #[sea_orm(primary_key, auto_increment = false)]
    pub serial: i64,
    pub fid: String,
    pub session_id: String,
    /// `sha256:<hex of the SubjectPublicKeyInfo DER>`.
    pub fingerprint: String,
    /// Validity, unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    #[sea_orm(column_type = "Text")]
    pub pem: String,
    pub issued_seq: i64,
    /// Unix seconds, when invalidated before its end.
    pub invalidated_at: Option<i64>,
    /// `renewed`, `session_ended` or `revoked`.
    pub invalidated_reason: Option<String>,
    pub invalidated_seq: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
