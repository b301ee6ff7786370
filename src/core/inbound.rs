//! Events as other servers send them to the inbox (DESIGN §3.2, contract), and how each one
//! becomes a log event or a per-event rejection.
//!
//! Wire event: `{"event_id", "type", "sender": <fid|null>, "channel": <ref|null>, "ts": <ms>,
//! "content": {…}}`. Wire types and the log types they become:
//!
//! | wire type | content | log type |
//! |---|---|---|
//! | `message.relay` | `{"action": "new"\|"edit", "message_id", "body"}` | `message.new` / `message.edit` |
//! | `message.relay` | `{"action": "delete", "message_id"}` | `message.delete` |
//! | `channel.invite` | `{"invitee": <fid>}` | `channel.invite` |
//! | `channel.join`, `channel.leave` | `{}` | the same |
//! | `sender_key.distribute` | `{"recipient": <fid>, "device_id", "key"}` | the same |
//!
//! Anything else is `SY_UNKNOWN_TYPE`; a malformed field or content is `SY_BAD_EVENT`; a sender
//! of another server than the authenticated origin is `SY_FORBIDDEN`, unless the channel is
//! homed at the origin (the home server relays its members' events). The log keeps the
//! origin's `event_id`, so `(origin, event_id)` is the dedup key in memory and in the log.

use serde_json::{Map, Value};

use super::event::{EventError, NewEvent, PreparedEvent};
use super::ids;

/// Why one event of an inbox request was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub errcode: &'static str,
    pub error: String,
}

impl Rejection {
    fn bad(error: impl Into<String>) -> Rejection {
        Rejection {
            errcode: "SY_BAD_EVENT",
            error: error.into(),
        }
    }
}

/// The `event_id` of a wire event, if it has a well-formed one (results are keyed by it).
pub fn event_id(event: &Value) -> Option<&str> {
    event
        .get("event_id")
        .and_then(Value::as_str)
        .filter(|id| ids::is_opaque_id(id))
}

fn optional_str<'a>(
    event: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a str>, Rejection> {
    match event.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Rejection::bad(format!(
            "\"{key}\" must be a string or null"
        ))),
    }
}

/// Turns one wire event from `origin` into a checked log event.
///
/// The sender must be a user of `origin`, except in a channel homed at `origin`: a channel's
/// home server relays every member's events to the other member servers (DESIGN §3.5).
pub fn to_log_event(origin: &str, event: &Value) -> Result<PreparedEvent, Rejection> {
    let object = event
        .as_object()
        .ok_or_else(|| Rejection::bad("an event must be a JSON object"))?;
    let event_id = event_id(event).ok_or_else(|| {
        Rejection::bad("\"event_id\" must be 1..255 characters of [A-Za-z0-9._:-]")
    })?;
    let wire_type = object
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::bad("\"type\" must be a string"))?;
    let sender = optional_str(object, "sender")?;
    let channel = optional_str(object, "channel")?;
    let ts = object
        .get("ts")
        .and_then(Value::as_u64)
        .and_then(|ts| i64::try_from(ts).ok())
        .ok_or_else(|| Rejection::bad("\"ts\" must be a non-negative integer (ms)"))?;
    let content = object
        .get("content")
        .and_then(Value::as_object)
        .ok_or_else(|| Rejection::bad("\"content\" must be a JSON object"))?;

    let (log_type, content) = match wire_type {
        "message.relay" => {
            let action = content.get("action").and_then(Value::as_str);
            let mut content = content.clone();
            content.remove("action");
            let log_type = match action {
                Some("new") => "message.new",
                Some("edit") => "message.edit",
                Some("delete") => "message.delete",
                _ => {
                    return Err(Rejection::bad(
                        "message.relay needs \"action\": \"new\", \"edit\" or \"delete\"",
                    ))
                }
            };
            (log_type, Value::Object(content))
        }
        "channel.invite" | "channel.join" | "channel.leave" | "sender_key.distribute" => {
            (wire_type, Value::Object(content.clone()))
        }
        other => {
            return Err(Rejection {
                errcode: "SY_UNKNOWN_TYPE",
                error: format!(
                    "unknown event type {:?}",
                    other.chars().take(64).collect::<String>()
                ),
            })
        }
    };

    // Every event has a sender, and it must be a user of the origin.
    let sender = sender.ok_or_else(|| Rejection::bad("\"sender\" is required for this type"))?;
    let (_, sender_server) = ids::parse_fid(sender)
        .ok_or_else(|| Rejection::bad("\"sender\" must be a federation id (local@server)"))?;
    let home = channel
        .and_then(ids::parse_channel_ref)
        .map(|(_, home)| home);
    // The home-relay waiver is for channel events only: a key for a recipient is always sent
    // by the sender's own server.
    let relayed = home == Some(origin) && log_type != "sender_key.distribute";
    if sender_server != origin && !relayed {
        return Err(Rejection {
            errcode: "SY_FORBIDDEN",
            error: format!("the sender {sender} does not belong to the origin {origin}"),
        });
    }

    NewEvent {
        event_id: event_id.to_owned(),
        origin: origin.to_owned(),
        event_type: log_type.to_owned(),
        sender: Some(sender.to_owned()),
        channel: channel.map(str::to_owned),
        origin_ts: ts,
        content,
    }
    .prepare()
    .map_err(|error| match error {
        EventError::UnknownType(e) => Rejection {
            errcode: "SY_UNKNOWN_TYPE",
            error: e.to_string(),
        },
        other => Rejection::bad(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(kind: &str, content: Value) -> Value {
        json!({"event_id": "e1", "type": kind, "sender": "bob@b.example",
               "channel": "general@a.example", "ts": 5, "content": content})
    }

    #[test]
    fn relays_become_log_types_without_the_action() {
        let new = to_log_event(
            "b.example",
            &wire(
                "message.relay",
                json!({"action": "new", "message_id": "m1", "body": "hi"}),
            ),
        )
        .expect("new");
        assert_eq!(new.event_type.as_str(), "message.new");
        assert_eq!(
            new.canonical_content.get(),
            r#"{"body":"hi","message_id":"m1"}"#
        );
        assert_eq!((new.origin.as_str(), new.origin_ts), ("b.example", 5));
        let delete = to_log_event(
            "b.example",
            &wire(
                "message.relay",
                json!({"action": "delete", "message_id": "m1"}),
            ),
        )
        .expect("delete");
        assert_eq!(delete.event_type.as_str(), "message.delete");
        for (kind, content) in [
            ("channel.invite", json!({"invitee": "carol@c.example"})),
            ("channel.join", json!({})),
            ("channel.leave", json!({})),
        ] {
            assert_eq!(
                to_log_event("b.example", &wire(kind, content))
                    .expect(kind)
                    .event_type
                    .as_str(),
                kind
            );
        }
        let mut key = wire(
            "sender_key.distribute",
            json!({"recipient": "alice@a.example", "device_id": "d1", "key": "opaque"}),
        );
        key["channel"] = Value::Null;
        to_log_event("b.example", &key).expect("sender key");
    }

    #[test]
    fn a_home_server_relays_other_servers_senders_in_its_own_channels() {
        let mut relayed = wire(
            "message.relay",
            json!({"action": "new", "message_id": "m1", "body": "hi"}),
        );
        relayed["channel"] = json!("general@a.example");
        to_log_event("a.example", &relayed).expect("the home server relays bob's message");
        let mut key = relayed.clone();
        key["type"] = json!("sender_key.distribute");
        key["content"] = json!({"recipient": "alice@b.example", "device_id": "d", "key": "k"});
        assert_eq!(
            to_log_event("a.example", &key)
                .expect_err("a key is sent by its sender's own server")
                .errcode,
            "SY_FORBIDDEN"
        );
        relayed["channel"] = json!("general@c.example");
        assert_eq!(
            to_log_event("a.example", &relayed)
                .expect_err("not its channel")
                .errcode,
            "SY_FORBIDDEN"
        );
    }

    #[test]
    fn each_bad_field_has_its_errcode() {
        let ok = wire(
            "message.relay",
            json!({"action": "new", "message_id": "m1", "body": "hi"}),
        );
        let cases: Vec<(&str, Value, &str)> = vec![
            ("event_id", json!("has space"), "SY_BAD_EVENT"),
            ("event_id", json!(""), "SY_BAD_EVENT"),
            ("type", json!("channel.new"), "SY_UNKNOWN_TYPE"),
            ("type", json!("server.key_rotated"), "SY_UNKNOWN_TYPE"),
            ("type", json!(7), "SY_BAD_EVENT"),
            ("sender", json!("mallory@c.example"), "SY_FORBIDDEN"),
            ("sender", json!("not a fid"), "SY_BAD_EVENT"),
            ("sender", Value::Null, "SY_BAD_EVENT"),
            ("channel", json!("no-server"), "SY_BAD_EVENT"),
            ("channel", Value::Null, "SY_BAD_EVENT"),
            ("ts", json!(-1), "SY_BAD_EVENT"),
            ("ts", json!("5"), "SY_BAD_EVENT"),
            ("content", json!([]), "SY_BAD_EVENT"),
            (
                "content",
                json!({"action": "shout", "message_id": "m1"}),
                "SY_BAD_EVENT",
            ),
            (
                "content",
                json!({"action": "new", "message_id": "m 1", "body": "x"}),
                "SY_BAD_EVENT",
            ),
            (
                "content",
                json!({"action": "new", "message_id": "m1"}),
                "SY_BAD_EVENT",
            ),
        ];
        for (field, value, errcode) in cases {
            let mut event = ok.clone();
            event[field] = value.clone();
            let rejection = to_log_event("b.example", &event).expect_err(field);
            assert_eq!(rejection.errcode, errcode, "{field} = {value}");
        }
        assert_eq!(
            to_log_event("b.example", &json!("not an object"))
                .expect_err("object")
                .errcode,
            "SY_BAD_EVENT"
        );
    }
}
