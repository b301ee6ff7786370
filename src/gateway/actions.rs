//! What a local user may do to channels and messages (DESIGN §5), each a log event.
//!
//! Every action checks the caller's standing first and changes nothing when it fails:
//! - creating a channel makes its creator a joined member of a channel homed here;
//! - only a joined member invites, posts, or reads history; only an invited user joins; an
//!   invited or joined member leaves;
//! - only a message's author edits or deletes it;
//! - a message or edit may carry its author's signature, checked against the session's
//!   certificate before anything is written (`identity::signed`).
//!
//! Membership is read from the projection, which holds remote channels too (their invites and
//! joins reach us through the inbox). Events in a channel homed elsewhere travel to its home
//! server through outbound delivery, which relays them to the other members; an invite of a
//! remote user reaches that user's server the same way.

use rand::Rng;
use serde_json::json;

use crate::clock::now_ms;
use crate::core::event::EventType;
use crate::core::event::NewEvent;
use crate::core::ids;
use crate::core::projection::{self, Membership, ProjectionOp};
use crate::federation::inbox::membership::MembershipView;
use crate::identity::sessions::{Session, Sessions};
use crate::identity::signed::{check_from_client, Signed, SignedMessage};
use crate::store::{AppendError, EventLogHandle, Store, StoreError};

const MAX_NAME_CHARS: usize = 100;
use crate::core::event::MAX_BODY_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    AlreadyMember(String),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A message signature refused (DESIGN §4.4), or a home server that cannot be asked.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
}

/// A user acting through a session here (local, or an actor of another server signed in
/// here), with what the action needs.
pub struct Caller<'a> {
    pub store: &'a Store,
    pub log: &'a EventLogHandle,
    /// Memberships, cached and kept current from the log.
    pub membership: &'a MembershipView,
    /// Our server name.
    pub us: &'a str,
    pub fid: &'a str,
    /// The caller's session, whose certificate signs its messages.
    pub session: &'a Session,
    /// Checks message signatures (DESIGN §4.4).
    pub signatures: &'a MessageSignatures<'a>,
}

/// What checking a message's signature needs.
pub struct MessageSignatures<'a> {
    pub sessions: &'a Sessions,
    /// `identity.require_signed_messages`.
    pub required: bool,
    /// `federation.replay_window`, ms.
    pub window_ms: i64,
}

fn random_id(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill(raw.as_mut_slice());
    hex::encode(raw)
}

/// The channel ref a path names: a bare id is one of our channels.
pub fn channel_ref(path: &str, us: &str) -> Result<String, ActionError> {
    let full = if path.contains('@') {
        path.to_owned()
    } else {
        format!("{path}@{us}")
    };
    ids::parse_channel_ref(&full)
        .map(|_| full.clone())
        .ok_or_else(|| {
            ActionError::Invalid(format!("{path:?} is not a channel id or ref (id@server)"))
        })
}

fn check_body(body: &str) -> Result<(), ActionError> {
    if body.is_empty() || body.len() > MAX_BODY_BYTES {
        return Err(ActionError::Invalid(format!(
            "\"body\" must be 1..{MAX_BODY_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_message_id(message_id: &str) -> Result<(), ActionError> {
    if ids::is_opaque_id(message_id) {
        Ok(())
    } else {
        Err(ActionError::Invalid(format!(
            "{message_id:?} is not a message id"
        )))
    }
}

impl Caller<'_> {
    fn event(&self, kind: &str, channel: &str, content: serde_json::Value) -> NewEvent {
        NewEvent {
            event_id: format!("c{}", random_id(12)),
            origin: self.us.to_owned(),
            event_type: kind.to_owned(),
            sender: Some(self.fid.to_owned()),
            channel: Some(channel.to_owned()),
            origin_ts: now_ms(),
            content,
        }
    }

    async fn append(&self, event: NewEvent) -> Result<u64, ActionError> {
        // A membership change is visible to this user's next request at once, before the
        // log's publication reaches the cache.
        let changes: Vec<_> = event
            .event_type
            .parse::<EventType>()
            .map(|kind| {
                projection::derive(
                    kind,
                    event.sender.as_deref(),
                    event.channel.as_deref(),
                    event.origin_ts,
                    &event.content,
                )
            })
            .unwrap_or_default()
            .into_iter()
            .filter(|op| matches!(op, ProjectionOp::SetMembership { .. }))
            .collect();
        let outcome = self.log.append(vec![event]).await?;
        let seq = outcome.first().map_or(0, |o| o.seq());
        self.membership.apply(seq, &changes);
        Ok(seq)
    }

    /// The caller's membership of `channel`; 404 when the channel is unknown to them. An
    /// actor of another server signed in here acts in this server's channels only (its home
    /// server speaks for it everywhere else).
    async fn standing(&self, channel: &str) -> Result<Option<Membership>, ActionError> {
        let home = ids::parse_channel_ref(channel).map_or("", |(_, home)| home);
        if self.session.idcert_serial.is_some() && home != self.us {
            return Err(ActionError::Forbidden(format!(
                "{channel} is homed at {home}: a session signed in here acts in this server's channels; take part in {home}'s through your home server"
            )));
        }
        let membership = self.membership.get(channel, self.fid).await?;
        if membership.is_none() && self.store.channel(channel).await?.is_none() {
            return Err(ActionError::NotFound(format!("no channel {channel}")));
        }
        Ok(membership)
    }

    async fn require_joined(&self, channel: &str) -> Result<(), ActionError> {
        match self.standing(channel).await? {
            Some(Membership::Joined) => Ok(()),
            _ => Err(ActionError::Forbidden(format!(
                "you are not a member of {channel}"
            ))),
        }
    }

    /// Creates a channel homed here: `(id, ref, seq)`.
    pub async fn create_channel(&self, name: &str) -> Result<(String, String, u64), ActionError> {
        let chars = name.trim().chars().count();
        if chars == 0 || name.chars().count() > MAX_NAME_CHARS {
            return Err(ActionError::Invalid(format!(
                "\"name\" must be 1..{MAX_NAME_CHARS} characters, not only spaces"
            )));
        }
        let id = random_id(8);
        let channel = format!("{id}@{}", self.us);
        let seq = self
            .append(self.event("channel.new", &channel, json!({"name": name})))
            .await?;
        Ok((id, channel, seq))
    }

    pub async fn invite(&self, channel: &str, invitee: &str) -> Result<u64, ActionError> {
        let Some((local, server)) = ids::parse_fid(invitee) else {
            return Err(ActionError::Invalid(format!(
                "{invitee:?} is not a federation id (local@server)"
            )));
        };
        self.require_joined(channel).await?;
        if server == self.us && self.store.account(local).await?.is_none() {
            return Err(ActionError::NotFound(format!("no user {invitee}")));
        }
        if let Some(state @ (Membership::Invited | Membership::Joined)) =
            self.membership.get(channel, invitee).await?
        {
            return Err(ActionError::AlreadyMember(format!(
                "{invitee} is already {} in {channel}",
                state.as_str()
            )));
        }
        self.append(self.event("channel.invite", channel, json!({"invitee": invitee})))
            .await
    }

    pub async fn join(&self, channel: &str) -> Result<u64, ActionError> {
        match self.standing(channel).await? {
            Some(Membership::Invited) => {
                self.append(self.event("channel.join", channel, json!({})))
                    .await
            }
            Some(Membership::Joined) => Err(ActionError::AlreadyMember(format!(
                "you are already a member of {channel}"
            ))),
            _ => Err(ActionError::Forbidden(format!(
                "{channel} needs an invite to join"
            ))),
        }
    }

    pub async fn leave(&self, channel: &str) -> Result<u64, ActionError> {
        match self.standing(channel).await? {
            Some(Membership::Invited | Membership::Joined) => {
                self.append(self.event("channel.leave", channel, json!({})))
                    .await
            }
            _ => Err(ActionError::Forbidden(format!(
                "you are not a member of {channel}"
            ))),
        }
    }

    /// Checks a message's signature (when it has one, or when one is required).
    async fn check_signature(
        &self,
        action: &str,
        channel: &str,
        message_id: Option<&str>,
        body: &str,
        signed: Option<&Signed>,
    ) -> Result<(), ActionError> {
        let message = SignedMessage {
            action,
            body,
            channel,
            message_id,
            sender: self.fid,
            ts: signed.map_or(0, |s| s.ts),
        };
        let checks = self.signatures;
        check_from_client(
            checks.sessions,
            self.session,
            &message,
            signed,
            checks.required,
            now_ms(),
            checks.window_ms,
        )
        .await?;
        Ok(())
    }

    /// A message's content: its id, body and, when signed, the `signed` object unchanged.
    fn message_content(message_id: &str, body: &str, signed: Option<&Signed>) -> serde_json::Value {
        let mut content = json!({"message_id": message_id, "body": body});
        if let Some(signed) = signed {
            content["signed"] = json!(signed);
        }
        content
    }

    /// Posts a message, signed or not: `(message_id, seq)`.
    pub async fn post(
        &self,
        channel: &str,
        body: &str,
        signed: Option<&Signed>,
    ) -> Result<(String, u64), ActionError> {
        check_body(body)?;
        self.require_joined(channel).await?;
        self.check_signature("new", channel, None, body, signed)
            .await?;
        let message_id = random_id(12);
        let seq = self
            .append(self.event(
                "message.new",
                channel,
                Self::message_content(&message_id, body, signed),
            ))
            .await?;
        Ok((message_id, seq))
    }

    /// Checks that the caller may change `message_id` of `channel`.
    async fn require_author(&self, channel: &str, message_id: &str) -> Result<(), ActionError> {
        check_message_id(message_id)?;
        self.require_joined(channel).await?;
        match self.store.message_sender(channel, message_id).await? {
            None => Err(ActionError::NotFound(format!(
                "no message {message_id} in {channel}"
            ))),
            Some(sender) if sender.as_deref() == Some(self.fid) => Ok(()),
            Some(_) => Err(ActionError::Forbidden(
                "only the author changes a message".into(),
            )),
        }
    }

    pub async fn edit(
        &self,
        channel: &str,
        message_id: &str,
        body: &str,
        signed: Option<&Signed>,
    ) -> Result<u64, ActionError> {
        check_body(body)?;
        self.require_author(channel, message_id).await?;
        self.check_signature("edit", channel, Some(message_id), body, signed)
            .await?;
        self.append(self.event(
            "message.edit",
            channel,
            Self::message_content(message_id, body, signed),
        ))
        .await
    }

    pub async fn delete(&self, channel: &str, message_id: &str) -> Result<u64, ActionError> {
        self.require_author(channel, message_id).await?;
        self.append(self.event("message.delete", channel, json!({"message_id": message_id})))
            .await
    }

    /// Up to `limit` messages created before `before`, newest first.
    pub async fn history(
        &self,
        channel: &str,
        before: Option<u64>,
        limit: u64,
    ) -> Result<Vec<entities::messages::Model>, ActionError> {
        self.require_joined(channel).await?;
        Ok(self.store.messages_before(channel, before, limit).await?)
    }
}
