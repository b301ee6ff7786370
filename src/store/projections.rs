//! Applies projection operations ([`crate::core::projection`]) inside a transaction.
//!
//! Operations are applied in `seq` order with the semantics documented in `core::projection`.
//! Consecutive `InsertMessage` operations — the bulk of any busy log — are written as one
//! multi-row `INSERT … ON CONFLICT DO NOTHING`, which keeps first-one-wins semantics because a
//! run is de-duplicated in order before it is written.

use std::collections::HashSet;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Value,
};

use super::bulk;

use crate::core::projection::ProjectionOp;
use entities::{
    accounts, actor_idcerts, channels, foreign_idcerts, members, messages, origin_policies,
    remote_server_keys, retired_server_keys, server_idcerts, services, sessions,
};

const INSERT_CHUNK: usize = 1000;

const MESSAGE_COLUMNS: [&str; 8] = [
    "channel_ref",
    "message_id",
    "sender",
    "body",
    "origin_ts",
    "created_seq",
    "edited_seq",
    "deleted_seq",
];

/// Applies `ops` (each with the `seq` of its event) in order.
pub async fn apply<'a>(
    db: &impl ConnectionTrait,
    ops: impl IntoIterator<Item = (u64, &'a ProjectionOp)>,
) -> Result<(), DbErr> {
    let mut run: Vec<Value> = Vec::new();
    let mut run_keys: HashSet<(&'a str, &'a str)> = HashSet::new();
    for (seq, op) in ops {
        let seq = seq as i64;
        if let ProjectionOp::InsertMessage {
            channel,
            message_id,
            sender,
            body,
            origin_ts,
        } = op
        {
            if run_keys.insert((channel, message_id)) {
                run.extend([
                    bulk::text(channel),
                    bulk::text(message_id),
                    bulk::opt_text(sender.as_deref()),
                    bulk::text(body),
                    Value::BigInt(Some(*origin_ts)),
                    Value::BigInt(Some(seq)),
                    Value::BigInt(None),
                    Value::BigInt(None),
                ]);
                if run_keys.len() == INSERT_CHUNK {
                    flush_messages(db, &mut run).await?;
                }
            }
            continue;
        }
        flush_messages(db, &mut run).await?;
        run_keys.clear();
        apply_one(db, seq, op).await?;
    }
    flush_messages(db, &mut run).await
}

/// Writes the pending run of new messages; first one wins on a repeated message id.
async fn flush_messages(db: &impl ConnectionTrait, run: &mut Vec<Value>) -> Result<(), DbErr> {
    let values = std::mem::take(run);
    bulk::insert_rows(
        db,
        "messages",
        &MESSAGE_COLUMNS,
        values,
        r#"ON CONFLICT ("channel_ref", "message_id") DO NOTHING"#,
    )
    .await
}

async fn apply_one(db: &impl ConnectionTrait, seq: i64, op: &ProjectionOp) -> Result<(), DbErr> {
    match op {
        ProjectionOp::CreateChannel {
            channel,
            name,
            creator,
        } => {
            channels::Entity::insert(channels::ActiveModel {
                channel_ref: Set(channel.clone()),
                name: Set(name.clone()),
                creator: Set(creator.clone()),
                created_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::column(channels::Column::ChannelRef)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::SetMembership {
            channel,
            fid,
            state,
        } => {
            members::Entity::insert(members::ActiveModel {
                channel_ref: Set(channel.clone()),
                fid: Set(fid.clone()),
                state: Set(state.as_str().to_owned()),
                updated_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::columns([members::Column::ChannelRef, members::Column::Fid])
                    .update_columns([members::Column::State, members::Column::UpdatedSeq])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::InsertMessage { .. } => {
            // Batched by `apply`; never reaches here.
        }
        ProjectionOp::EditMessage {
            channel,
            message_id,
            body,
        } => {
            messages::Entity::update_many()
                .col_expr(messages::Column::Body, Expr::value(body.clone()))
                .col_expr(messages::Column::EditedSeq, Expr::value(seq))
                .filter(messages::Column::ChannelRef.eq(channel.as_str()))
                .filter(messages::Column::MessageId.eq(message_id.as_str()))
                .filter(messages::Column::DeletedSeq.is_null())
                .exec(db)
                .await?;
        }
        ProjectionOp::DeleteMessage {
            channel,
            message_id,
        } => {
            messages::Entity::update_many()
                .col_expr(messages::Column::Body, Expr::value(Option::<String>::None))
                .col_expr(messages::Column::DeletedSeq, Expr::value(seq))
                .filter(messages::Column::ChannelRef.eq(channel.as_str()))
                .filter(messages::Column::MessageId.eq(message_id.as_str()))
                .filter(messages::Column::DeletedSeq.is_null())
                .exec(db)
                .await?;
        }
        ProjectionOp::StoreRemoteKeys {
            server_name,
            response,
            valid_until_ts,
            fetched_ts,
        } => {
            remote_server_keys::Entity::insert(remote_server_keys::ActiveModel {
                server_name: Set(server_name.clone()),
                response: Set(response.clone()),
                valid_until_ts: Set(*valid_until_ts),
                fetched_ts: Set(*fetched_ts),
                updated_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::column(remote_server_keys::Column::ServerName)
                    .update_columns([
                        remote_server_keys::Column::Response,
                        remote_server_keys::Column::ValidUntilTs,
                        remote_server_keys::Column::FetchedTs,
                        remote_server_keys::Column::UpdatedSeq,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::RetireServerKey {
            key_id,
            public_key,
            expired_ts,
        } => {
            retired_server_keys::Entity::insert(retired_server_keys::ActiveModel {
                key_id: Set(key_id.clone()),
                public_key: Set(public_key.clone()),
                expired_ts: Set(*expired_ts),
                retired_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::column(retired_server_keys::Column::KeyId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::CreateAccount {
            username,
            fid,
            password_hash,
        } => {
            accounts::Entity::insert(accounts::ActiveModel {
                username: Set(username.clone()),
                fid: Set(fid.clone()),
                password_hash: Set(password_hash.clone()),
                created_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::column(accounts::Column::Username)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::CreateSession {
            session_id,
            fid,
            token_hash,
            idcert_serial,
            home_session_id,
        } => {
            sessions::Entity::insert(sessions::ActiveModel {
                session_id: Set(session_id.clone()),
                fid: Set(fid.clone()),
                token_hash: Set(token_hash.clone()),
                created_seq: Set(seq),
                idcert_serial: Set(idcert_serial.clone()),
                home_session_id: Set(home_session_id.clone()),
            })
            .on_conflict(
                OnConflict::column(sessions::Column::SessionId)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::DeleteSession { session_id } => {
            sessions::Entity::delete_by_id(session_id.clone())
                .exec(db)
                .await?;
        }
        ProjectionOp::SetSessionIdCert { session_id, serial } => {
            sessions::Entity::update_many()
                .col_expr(sessions::Column::IdcertSerial, Expr::value(serial.clone()))
                .filter(sessions::Column::SessionId.eq(session_id.as_str()))
                .exec(db)
                .await?;
        }
        ProjectionOp::StoreActorIdCert {
            serial,
            fid,
            session_id,
            fingerprint,
            not_before,
            not_after,
            pem,
        } => {
            actor_idcerts::Entity::insert(actor_idcerts::ActiveModel {
                serial: Set(*serial),
                fid: Set(fid.clone()),
                session_id: Set(session_id.clone()),
                fingerprint: Set(fingerprint.clone()),
                not_before: Set(*not_before),
                not_after: Set(*not_after),
                pem: Set(pem.clone()),
                issued_seq: Set(seq),
                invalidated_at: Set(None),
                invalidated_reason: Set(None),
                invalidated_seq: Set(None),
            })
            .on_conflict(
                OnConflict::column(actor_idcerts::Column::Serial)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::InvalidateActorIdCert {
            serial,
            invalidated_at,
            reason,
        } => {
            actor_idcerts::Entity::update_many()
                .col_expr(
                    actor_idcerts::Column::InvalidatedAt,
                    Expr::value(*invalidated_at),
                )
                .col_expr(
                    actor_idcerts::Column::InvalidatedReason,
                    Expr::value(reason.clone()),
                )
                .col_expr(actor_idcerts::Column::InvalidatedSeq, Expr::value(seq))
                .filter(actor_idcerts::Column::Serial.eq(*serial))
                .filter(actor_idcerts::Column::InvalidatedSeq.is_null())
                .exec(db)
                .await?;
        }
        ProjectionOp::StoreForeignIdCert {
            fid,
            serial,
            session_id,
            fingerprint,
            not_before,
            not_after,
            pem,
        } => {
            foreign_idcerts::Entity::insert(foreign_idcerts::ActiveModel {
                fid: Set(fid.clone()),
                serial: Set(serial.clone()),
                session_id: Set(session_id.clone()),
                fingerprint: Set(fingerprint.clone()),
                not_before: Set(*not_before),
                not_after: Set(*not_after),
                pem: Set(pem.clone()),
                seen_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::columns([
                    foreign_idcerts::Column::Fid,
                    foreign_idcerts::Column::Serial,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::AddService {
            fid,
            service,
            url,
            primary,
        } => {
            if *primary {
                demote_primary(db, seq, fid, service).await?;
            }
            services::Entity::insert(services::ActiveModel {
                fid: Set(fid.clone()),
                service: Set(service.clone()),
                url: Set(url.clone()),
                is_primary: Set(*primary),
                created_seq: Set(seq),
                updated_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::columns([
                    services::Column::Fid,
                    services::Column::Service,
                    services::Column::Url,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::RemoveService {
            fid,
            service,
            url,
            new_primary,
        } => {
            services::Entity::delete_many()
                .filter(services::Column::Fid.eq(fid.as_str()))
                .filter(services::Column::Service.eq(service.as_str()))
                .filter(services::Column::Url.eq(url.as_str()))
                .exec(db)
                .await?;
            if let Some(primary) = new_primary {
                set_primary(db, seq, fid, service, primary).await?;
            }
        }
        ProjectionOp::SetServicePrimary { fid, service, url } => {
            set_primary(db, seq, fid, service, url).await?;
        }
        ProjectionOp::StoreServerIdCert {
            serial,
            key_id,
            not_before,
            not_after,
            pem,
        } => {
            server_idcerts::Entity::insert(server_idcerts::ActiveModel {
                serial: Set(serial.clone()),
                key_id: Set(key_id.clone()),
                not_before: Set(*not_before),
                not_after: Set(*not_after),
                pem: Set(pem.clone()),
                issued_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::column(server_idcerts::Column::Serial)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        ProjectionOp::SetOriginPolicy {
            origin,
            rate_per_minute,
            burst,
            blocked,
        } => {
            origin_policies::Entity::insert(origin_policies::ActiveModel {
                origin: Set(origin.clone()),
                rate_per_minute: Set(*rate_per_minute),
                burst: Set(*burst),
                blocked: Set(*blocked),
                updated_seq: Set(seq),
            })
            .on_conflict(
                OnConflict::column(origin_policies::Column::Origin)
                    .update_columns([
                        origin_policies::Column::RatePerMinute,
                        origin_policies::Column::Burst,
                        origin_policies::Column::Blocked,
                        origin_policies::Column::UpdatedSeq,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
    }
    Ok(())
}

/// Takes the primary role of `service` away from every provider of `fid`.
async fn demote_primary(
    db: &impl ConnectionTrait,
    seq: i64,
    fid: &str,
    service: &str,
) -> Result<(), DbErr> {
    services::Entity::update_many()
        .col_expr(services::Column::IsPrimary, Expr::value(false))
        .col_expr(services::Column::UpdatedSeq, Expr::value(seq))
        .filter(services::Column::Fid.eq(fid))
        .filter(services::Column::Service.eq(service))
        .filter(services::Column::IsPrimary.eq(true))
        .exec(db)
        .await?;
    Ok(())
}

/// Makes `url` the one primary provider of `service` of `fid` (one statement: the projection
/// only writes; the identity layer checked that `url` is a provider before the event).
async fn set_primary(
    db: &impl ConnectionTrait,
    seq: i64,
    fid: &str,
    service: &str,
    url: &str,
) -> Result<(), DbErr> {
    services::Entity::update_many()
        .col_expr(
            services::Column::IsPrimary,
            Expr::col(services::Column::Url).eq(url),
        )
        .col_expr(services::Column::UpdatedSeq, Expr::value(seq))
        .filter(services::Column::Fid.eq(fid))
        .filter(services::Column::Service.eq(service))
        .exec(db)
        .await?;
    Ok(())
}
