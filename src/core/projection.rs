//! What each event does to the projections, as data.
//!
//! [`derive`] maps one event to the projection operations it causes. It is a pure function of
//! the event, used both by the live writer (in the same transaction as the event) and by
//! `switchyard replay`, so a rebuilt database equals the live one by construction; the store
//! only has to apply operations in log order.
//!
//! Semantics, applied in `seq` order:
//! - `channel.new`: the channel row (first one wins) and the creator as `joined`;
//! - `channel.invite` / `join` / `leave`: the member row of (channel, fid) takes that state;
//! - `message.new`: the message row, first one wins (message ids are unique per channel);
//! - `message.edit`: replaces the body of a live message; `message.delete` redacts it;
//! - `origin.policy`: the operator's override for that origin, last one wins;
//! - `server.key_rotated`: the old key joins the retired keys with its `expired_ts`;
//! - `server.keys_fetched`: another server's verified key response, last one wins;
//! - `server.idcert_issued`: one of our own root ID-Certs, kept by serial;
//! - `account.registered`: a local account (first one wins); `session.created`: a session
//!   of the sender, with the hash of its bearer token (and, for a foreign session, the serial
//!   of the certificate it signed in with and its home session id); `session.deleted`: the
//!   session's row goes (its token stops working); `session.idcert_updated`: a foreign
//!   session's certificate changes;
//! - `actor.idcert_issued`: an actor certificate we issued, kept by serial (first one wins);
//!   `actor.idcert_invalidated`: marks it invalidated, once (the first invalidation wins);
//! - `actor.foreign_idcert_seen`: another server's actor certificate we accepted, by (fid,
//!   serial), first one wins;
//! - `service.added` / `service.removed` / `service.primary_set`: an actor's services; one
//!   primary per (actor, service).

use serde_json::Value;

use super::event::EventType;

/// Membership states of the `members` projection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    Invited,
    Joined,
    Left,
}

impl Membership {
    pub fn parse(state: &str) -> Option<Membership> {
        match state {
            "invited" => Some(Membership::Invited),
            "joined" => Some(Membership::Joined),
            "left" => Some(Membership::Left),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Invited => "invited",
            Membership::Joined => "joined",
            Membership::Left => "left",
        }
    }
}

/// One change to a projection. `seq` is attached when the writer applies it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectionOp {
    CreateChannel {
        channel: String,
        name: String,
        creator: Option<String>,
    },
    SetMembership {
        channel: String,
        fid: String,
        state: Membership,
    },
    InsertMessage {
        channel: String,
        message_id: String,
        sender: Option<String>,
        body: String,
        origin_ts: i64,
    },
    EditMessage {
        channel: String,
        message_id: String,
        body: String,
    },
    DeleteMessage {
        channel: String,
        message_id: String,
    },
    SetOriginPolicy {
        origin: String,
        rate_per_minute: i64,
        burst: i64,
        blocked: bool,
    },
    RetireServerKey {
        key_id: String,
        public_key: String,
        expired_ts: i64,
    },
    /// The last verified key response of another server (the notary's cache).
    StoreRemoteKeys {
        server_name: String,
        response: String,
        valid_until_ts: i64,
        fetched_ts: i64,
    },
    CreateAccount {
        username: String,
        fid: String,
        password_hash: String,
    },
    CreateSession {
        session_id: String,
        fid: String,
        token_hash: String,
        /// A foreign session: the serial of its certificate, and the session id it names.
        idcert_serial: Option<String>,
        home_session_id: Option<String>,
    },
    /// A foreign session's certificate is replaced (`PUT …/session/idcert/extern`).
    SetSessionIdCert {
        session_id: String,
        serial: String,
    },
    /// An actor certificate we issued.
    StoreActorIdCert {
        serial: i64,
        fid: String,
        session_id: String,
        fingerprint: String,
        not_before: i64,
        not_after: i64,
        pem: String,
    },
    /// One of our actor certificates is invalidated.
    InvalidateActorIdCert {
        serial: i64,
        invalidated_at: i64,
        reason: String,
    },
    /// Another server's actor certificate we accepted.
    StoreForeignIdCert {
        fid: String,
        serial: String,
        session_id: String,
        fingerprint: String,
        not_before: i64,
        not_after: i64,
        pem: String,
    },
    /// An actor offers a service; `primary` takes the primary role from any other provider.
    AddService {
        fid: String,
        service: String,
        url: String,
        primary: bool,
    },
    /// A provider goes; `new_primary` (when given) becomes the primary.
    RemoveService {
        fid: String,
        service: String,
        url: String,
        new_primary: Option<String>,
    },
    /// `url` becomes the primary provider of `service`, the others not.
    SetServicePrimary {
        fid: String,
        service: String,
        url: String,
    },
    /// The session ends: its token stops working.
    DeleteSession {
        session_id: String,
    },
    /// A root ID-Cert we issued for one of our keys.
    StoreServerIdCert {
        serial: String,
        key_id: String,
        not_before: i64,
        not_after: i64,
        pem: String,
    },
}

/// The membership changes of a committed log entry (`channel.new`, `channel.invite`,
/// `channel.join`, `channel.leave`); nothing for any other entry.
pub fn membership_ops(entry: &super::event::LogEntry) -> Vec<ProjectionOp> {
    let Ok(kind) = entry.event_type.parse::<EventType>() else {
        return Vec::new();
    };
    if !matches!(
        kind,
        EventType::ChannelNew
            | EventType::ChannelInvite
            | EventType::ChannelJoin
            | EventType::ChannelLeave
    ) {
        return Vec::new();
    }
    let Ok(content) = serde_json::from_str::<Value>(entry.content.get()) else {
        return Vec::new();
    };
    derive(
        kind,
        entry.sender.as_deref(),
        entry.channel.as_deref(),
        entry.origin_ts,
        &content,
    )
    .into_iter()
    .filter(|op| matches!(op, ProjectionOp::SetMembership { .. }))
    .collect()
}

fn text(content: &Value, key: &str) -> Option<String> {
    content.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn count(content: &Value, key: &str) -> Option<i64> {
    content
        .get(key)
        .and_then(Value::as_u64)
        .and_then(|n| i64::try_from(n).ok())
}

/// The projection operations of one event. Content that lacks what its type needs yields no
/// operation: the log only holds checked events, and replay must behave exactly like the
/// live path for any row, even one written by hand.
pub fn derive(
    kind: EventType,
    sender: Option<&str>,
    channel: Option<&str>,
    origin_ts: i64,
    content: &Value,
) -> Vec<ProjectionOp> {
    let ch = || channel.map(str::to_owned);
    let membership = |state| {
        Some(ProjectionOp::SetMembership {
            channel: ch()?,
            fid: sender?.to_owned(),
            state,
        })
    };
    let op =
        match kind {
            EventType::ChannelNew => {
                let channel = ch();
                let create = channel
                    .clone()
                    .zip(text(content, "name"))
                    .map(|(channel, name)| ProjectionOp::CreateChannel {
                        channel,
                        name,
                        creator: sender.map(str::to_owned),
                    });
                return create
                    .into_iter()
                    .chain(membership(Membership::Joined))
                    .collect();
            }
            EventType::ChannelInvite => text(content, "invitee").zip(ch()).map(|(fid, channel)| {
                ProjectionOp::SetMembership {
                    channel,
                    fid,
                    state: Membership::Invited,
                }
            }),
            EventType::ChannelJoin => membership(Membership::Joined),
            EventType::ChannelLeave => membership(Membership::Left),
            EventType::MessageNew => ch()
                .zip(text(content, "message_id"))
                .zip(text(content, "body"))
                .map(
                    |((channel, message_id), body)| ProjectionOp::InsertMessage {
                        channel,
                        message_id,
                        sender: sender.map(str::to_owned),
                        body,
                        origin_ts,
                    },
                ),
            EventType::MessageEdit => ch()
                .zip(text(content, "message_id"))
                .zip(text(content, "body"))
                .map(|((channel, message_id), body)| ProjectionOp::EditMessage {
                    channel,
                    message_id,
                    body,
                }),
            EventType::MessageDelete => {
                ch().zip(text(content, "message_id"))
                    .map(|(channel, message_id)| ProjectionOp::DeleteMessage {
                        channel,
                        message_id,
                    })
            }
            EventType::OriginPolicy => (|| {
                Some(ProjectionOp::SetOriginPolicy {
                    origin: text(content, "origin")?,
                    rate_per_minute: count(content, "rate_per_minute")?,
                    burst: count(content, "burst")?,
                    blocked: content.get("blocked")?.as_bool()?,
                })
            })(),
            EventType::ServerKeyRotated => (|| {
                Some(ProjectionOp::RetireServerKey {
                    key_id: text(content, "old_key_id")?,
                    public_key: text(content, "old_key")?,
                    expired_ts: count(content, "expired_ts")?,
                })
            })(),
            EventType::ServerKeysFetched => (|| {
                Some(ProjectionOp::StoreRemoteKeys {
                    server_name: text(content, "server_name")?,
                    response: crate::core::canonical_json::to_canonical_string(
                        content.get("response")?,
                    )
                    .ok()?,
                    valid_until_ts: count(content, "valid_until_ts")?,
                    fetched_ts: count(content, "fetched_ts")?,
                })
            })(),
            EventType::ServerIdCertIssued => (|| {
                Some(ProjectionOp::StoreServerIdCert {
                    serial: text(content, "serial")?,
                    key_id: text(content, "key_id")?,
                    not_before: count(content, "not_before")?,
                    not_after: count(content, "not_after")?,
                    pem: text(content, "pem")?,
                })
            })(),
            EventType::AccountRegistered => (|| {
                Some(ProjectionOp::CreateAccount {
                    username: text(content, "username")?,
                    fid: sender?.to_owned(),
                    password_hash: text(content, "password_hash")?,
                })
            })(),
            EventType::SessionCreated => (|| {
                Some(ProjectionOp::CreateSession {
                    session_id: text(content, "session_id")?,
                    fid: sender?.to_owned(),
                    token_hash: text(content, "token_hash")?,
                    idcert_serial: text(content, "serial"),
                    home_session_id: text(content, "home_session_id"),
                })
            })(),
            EventType::SessionDeleted => text(content, "session_id")
                .map(|session_id| ProjectionOp::DeleteSession { session_id }),
            EventType::SessionIdCertUpdated => (|| {
                Some(ProjectionOp::SetSessionIdCert {
                    session_id: text(content, "session_id")?,
                    serial: text(content, "serial")?,
                })
            })(),
            EventType::ActorIdCertIssued => (|| {
                Some(ProjectionOp::StoreActorIdCert {
                    serial: text(content, "serial")?.parse().ok()?,
                    fid: text(content, "fid")?,
                    session_id: text(content, "session_id")?,
                    fingerprint: text(content, "fingerprint")?,
                    not_before: count(content, "not_before")?,
                    not_after: count(content, "not_after")?,
                    pem: text(content, "pem")?,
                })
            })(),
            EventType::ActorIdCertInvalidated => (|| {
                Some(ProjectionOp::InvalidateActorIdCert {
                    serial: text(content, "serial")?.parse().ok()?,
                    invalidated_at: count(content, "invalidated_at")?,
                    reason: text(content, "reason")?,
                })
            })(),
            EventType::ActorForeignIdCertSeen => (|| {
                Some(ProjectionOp::StoreForeignIdCert {
                    fid: text(content, "fid")?,
                    serial: text(content, "serial")?,
                    session_id: text(content, "session_id")?,
                    fingerprint: text(content, "fingerprint")?,
                    not_before: count(content, "not_before")?,
                    not_after: count(content, "not_after")?,
                    pem: text(content, "pem")?,
                })
            })(),
            EventType::ServiceAdded => (|| {
                Some(ProjectionOp::AddService {
                    fid: sender?.to_owned(),
                    service: text(content, "service")?,
                    url: text(content, "url")?,
                    primary: content.get("primary")?.as_bool()?,
                })
            })(),
            EventType::ServiceRemoved => (|| {
                Some(ProjectionOp::RemoveService {
                    fid: sender?.to_owned(),
                    service: text(content, "service")?,
                    url: text(content, "url")?,
                    new_primary: text(content, "new_primary"),
                })
            })(),
            EventType::ServicePrimarySet => (|| {
                Some(ProjectionOp::SetServicePrimary {
                    fid: sender?.to_owned(),
                    service: text(content, "service")?,
                    url: text(content, "url")?,
                })
            })(),
            EventType::SenderKeyDistribute => None,
        };
    op.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_new_creates_channel_and_joins_creator() {
        let ops = derive(
            EventType::ChannelNew,
            Some("a@s"),
            Some("c@s"),
            1,
            &json!({"name": "general"}),
        );
        assert_eq!(
            ops,
            vec![
                ProjectionOp::CreateChannel {
                    channel: "c@s".into(),
                    name: "general".into(),
                    creator: Some("a@s".into())
                },
                ProjectionOp::SetMembership {
                    channel: "c@s".into(),
                    fid: "a@s".into(),
                    state: Membership::Joined
                },
            ]
        );
    }

    #[test]
    fn messages_and_membership() {
        let new = derive(
            EventType::MessageNew,
            Some("a@s"),
            Some("c@s"),
            7,
            &json!({"message_id": "m", "body": "b"}),
        );
        assert_eq!(
            new,
            vec![ProjectionOp::InsertMessage {
                channel: "c@s".into(),
                message_id: "m".into(),
                sender: Some("a@s".into()),
                body: "b".into(),
                origin_ts: 7
            }]
        );
        let invite = derive(
            EventType::ChannelInvite,
            Some("a@s"),
            Some("c@s"),
            0,
            &json!({"invitee": "b@t"}),
        );
        assert_eq!(
            invite,
            vec![ProjectionOp::SetMembership {
                channel: "c@s".into(),
                fid: "b@t".into(),
                state: Membership::Invited
            }]
        );
        let leave = derive(
            EventType::ChannelLeave,
            Some("b@t"),
            Some("c@s"),
            0,
            &json!({}),
        );
        assert_eq!(
            leave,
            vec![ProjectionOp::SetMembership {
                channel: "c@s".into(),
                fid: "b@t".into(),
                state: Membership::Left
            }]
        );
    }

    #[test]
    fn incomplete_content_yields_nothing() {
        assert!(derive(
            EventType::MessageNew,
            None,
            Some("c@s"),
            0,
            &json!({"message_id": "m"})
        )
        .is_empty());
        assert!(derive(EventType::ChannelJoin, None, Some("c@s"), 0, &json!({})).is_empty());
        assert!(derive(
            EventType::OriginPolicy,
            None,
            None,
            0,
            &json!({"origin": "x", "burst": 1})
        )
        .is_empty());
        assert!(derive(
            EventType::SenderKeyDistribute,
            Some("a@s"),
            None,
            0,
            &json!({})
        )
        .is_empty());
    }
}
