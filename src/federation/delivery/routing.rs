//! Which remote servers a committed log entry concerns, and how it looks on the wire
//! (DESIGN §3.4, §3.5). Pure: no I/O.
//!
//! - An event of a channel homed here goes to every other server with an invited or joined
//!   member, plus the invitee's server for an invite and the leaver's for a leave, except the
//!   server the event came from (it has its own copy).
//! - An event an actor of another server made here (signed in by key trial, DESIGN §4.3)
//!   does not go to that actor's home server: what it does on the server it signed in to
//!   stays in that server's channel, and its home refuses another server speaking for its
//!   users.
//! - An event of ours in a channel homed elsewhere goes to that channel's home server.
//! - A `sender_key.distribute` of ours goes to the recipient's server.
//! - Nothing else leaves this server.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{json, Value};

use crate::core::event::{EventType, LogEntry};
use crate::core::ids;
use crate::core::projection::{Membership, ProjectionOp};

fn server_of(fid: &str) -> Option<&str> {
    ids::parse_fid(fid).map(|(_, server)| server)
}

/// For each channel homed here: the remote servers with invited or joined members.
#[derive(Default, Debug)]
pub struct MemberServers {
    channels: HashMap<String, HashMap<String, HashSet<String>>>,
}

impl MemberServers {
    /// From the `(channel, fid)` pairs of invited or joined members, leaving out `us`.
    pub fn new(members: Vec<(String, String)>, us: &str) -> MemberServers {
        let mut servers = MemberServers::default();
        for (channel, fid) in members {
            servers.set(&channel, &fid, Membership::Joined, us);
        }
        servers
    }

    fn set(&mut self, channel: &str, fid: &str, state: Membership, us: &str) {
        let Some(server) = server_of(fid).filter(|s| *s != us) else {
            return;
        };
        match state {
            Membership::Invited | Membership::Joined => {
                self.channels
                    .entry(channel.to_owned())
                    .or_default()
                    .entry(server.to_owned())
                    .or_default()
                    .insert(fid.to_owned());
            }
            Membership::Left => {
                if let Some(servers) = self.channels.get_mut(channel) {
                    if let Some(fids) = servers.get_mut(server) {
                        fids.remove(fid);
                        if fids.is_empty() {
                            servers.remove(server);
                        }
                    }
                }
            }
        }
    }

    /// Applies the membership changes among `ops`.
    pub fn apply(&mut self, ops: &[ProjectionOp], us: &str) {
        for op in ops {
            if let ProjectionOp::SetMembership {
                channel,
                fid,
                state,
            } = op
            {
                self.set(channel, fid, *state, us);
            }
        }
    }

    pub fn servers(&self, channel: &str) -> impl Iterator<Item = &String> {
        self.channels
            .get(channel)
            .into_iter()
            .flat_map(|s| s.keys())
    }

    /// Every server with members in one of our channels.
    pub fn all_servers(&self) -> BTreeSet<String> {
        self.channels
            .values()
            .flat_map(|servers| servers.keys().cloned())
            .collect()
    }
}

/// The remote servers `entry` must reach, with membership as `members` holds it.
pub fn targets(entry: &LogEntry, us: &str, members: &MemberServers) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(kind) = entry.event_type.parse::<EventType>() else {
        return out;
    };
    let content = || serde_json::from_str::<Value>(entry.content.get()).unwrap_or(Value::Null);
    match kind {
        EventType::SenderKeyDistribute if entry.origin == us => {
            if let Some(server) = content()["recipient"].as_str().and_then(server_of) {
                out.insert(server.to_owned());
            }
        }
        EventType::MessageNew
        | EventType::MessageEdit
        | EventType::MessageDelete
        | EventType::ChannelInvite
        | EventType::ChannelJoin
        | EventType::ChannelLeave => {
            let Some(channel) = entry.channel.as_deref() else {
                return out;
            };
            let home = ids::parse_channel_ref(channel).map_or("", |(_, home)| home);
            if home == us {
                out.extend(members.servers(channel).cloned());
                if kind == EventType::ChannelInvite {
                    if let Some(server) = content()["invitee"].as_str().and_then(server_of) {
                        out.insert(server.to_owned());
                    }
                }
                if kind == EventType::ChannelLeave {
                    if let Some(server) = entry.sender.as_deref().and_then(server_of) {
                        out.insert(server.to_owned());
                    }
                }
                out.remove(&entry.origin);
                if entry.origin == us {
                    if let Some(home) = entry.sender.as_deref().and_then(server_of) {
                        out.remove(home);
                    }
                }
            } else if entry.origin == us {
                out.insert(home.to_owned());
            }
        }
        _ => {}
    }
    out.remove(us);
    out
}

/// The wire event (DESIGN §3.2) for a log entry. Its `event_id` is `seq:<seq>`: unique among
/// everything this server sends, and the same on every retry, so the receiver's dedup holds.
pub fn wire_event(entry: &LogEntry) -> Option<Value> {
    let content: Value = serde_json::from_str(entry.content.get()).ok()?;
    let (kind, content) = match entry.event_type.as_str() {
        "message.new" | "message.edit" | "message.delete" => {
            let action = entry.event_type.trim_start_matches("message.");
            let mut content = content.as_object()?.clone();
            content.insert("action".into(), json!(action));
            ("message.relay", Value::Object(content))
        }
        "channel.invite" | "channel.join" | "channel.leave" | "sender_key.distribute" => {
            (entry.event_type.as_str(), content)
        }
        _ => return None,
    };
    Some(json!({
        "event_id": format!("seq:{}", entry.seq),
        "type": kind,
        "sender": entry.sender,
        "channel": entry.channel,
        "ts": entry.origin_ts,
        "content": content,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::chain::ChainHash;
    use serde_json::value::RawValue;

    fn entry(
        seq: u64,
        origin: &str,
        kind: &str,
        sender: &str,
        channel: &str,
        content: Value,
    ) -> LogEntry {
        LogEntry {
            seq,
            event_id: format!("e{seq}"),
            origin: origin.into(),
            event_type: kind.into(),
            sender: Some(sender.into()),
            channel: Some(channel.into()),
            origin_ts: 5,
            received_ts: 6,
            content: RawValue::from_string(content.to_string()).expect("raw"),
            prev_hash: ChainHash::GENESIS,
            entry_hash: ChainHash::GENESIS,
        }
    }

    #[test]
    fn our_channels_reach_member_servers_but_not_the_events_origin() {
        let us = "a.test";
        let mut members = MemberServers::new(
            vec![
                ("general@a.test".into(), "bob@b.test".into()),
                ("general@a.test".into(), "carol@c.test".into()),
                ("general@a.test".into(), "alice@a.test".into()),
            ],
            us,
        );
        let message = json!({"message_id": "m1", "body": "hi"});
        let ours = entry(
            1,
            us,
            "message.new",
            "alice@a.test",
            "general@a.test",
            message.clone(),
        );
        assert_eq!(
            targets(&ours, us, &members),
            ["b.test", "c.test"].map(String::from).into()
        );
        let bobs = entry(
            2,
            "b.test",
            "message.new",
            "bob@b.test",
            "general@a.test",
            message.clone(),
        );
        assert_eq!(
            targets(&bobs, us, &members),
            ["c.test"].map(String::from).into()
        );

        // An invite reaches the invitee's server; a leave reaches the leaver's.
        let invite = entry(
            3,
            us,
            "channel.invite",
            "alice@a.test",
            "general@a.test",
            json!({"invitee": "dan@d.test"}),
        );
        assert!(targets(&invite, us, &members).contains("d.test"));
        let leave = entry(
            4,
            "c.test",
            "channel.leave",
            "carol@c.test",
            "general@a.test",
            json!({}),
        );
        members.apply(
            &[ProjectionOp::SetMembership {
                channel: "general@a.test".into(),
                fid: "carol@c.test".into(),
                state: Membership::Left,
            }],
            us,
        );
        assert_eq!(
            targets(&leave, us, &members),
            ["b.test"].map(String::from).into()
        );
        // A leave made here by an actor of c.test signed in here stays here too.
        let own_leave = entry(
            5,
            us,
            "channel.leave",
            "carol@c.test",
            "general@a.test",
            json!({}),
        );
        assert!(!targets(&own_leave, us, &members).contains("c.test"));

        // An actor of c.test signed in here: its own events do not go back to c.test.
        members.apply(
            &[ProjectionOp::SetMembership {
                channel: "general@a.test".into(),
                fid: "carol@c.test".into(),
                state: Membership::Joined,
            }],
            us,
        );
        let foreign = entry(
            8,
            us,
            "message.new",
            "carol@c.test",
            "general@a.test",
            json!({"message_id": "m2", "body": "hi"}),
        );
        assert_eq!(
            targets(&foreign, us, &members),
            ["b.test"].map(String::from).into()
        );

        // Our user's event in another server's channel goes to that channel's home only.
        let remote = entry(6, us, "message.new", "alice@a.test", "x@b.test", message);
        assert_eq!(
            targets(&remote, us, &members),
            ["b.test"].map(String::from).into()
        );
        // Someone else's event of someone else's channel goes nowhere.
        let other = entry(
            7,
            "b.test",
            "channel.join",
            "bob@b.test",
            "x@b.test",
            json!({}),
        );
        assert!(targets(&other, us, &members).is_empty());
    }

    #[test]
    fn wire_events_use_the_federation_vocabulary() {
        let e = entry(
            9,
            "a.test",
            "message.delete",
            "alice@a.test",
            "general@a.test",
            json!({"message_id": "m1"}),
        );
        let wire = wire_event(&e).expect("wire");
        assert_eq!(
            wire,
            json!({"event_id": "seq:9", "type": "message.relay", "sender": "alice@a.test",
                   "channel": "general@a.test", "ts": 5,
                   "content": {"action": "delete", "message_id": "m1"}})
        );
        let mut policy = e.clone();
        policy.event_type = "origin.policy".into();
        assert!(wire_event(&policy).is_none());
    }
}
