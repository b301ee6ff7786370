//! Gateway frames: the polyproto envelope `{n, op, d, s}` (DESIGN §5; polyproto core §3.2).
//!
//! `s` is the per-connection counter of server messages, starting at 0 with Hello; a chat
//! event's log position is its `d.seq`, and that is what Resume takes. Client frames carry no
//! `s`.
//!
//! | n      | op | direction | meaning |
//! |--------|----|-----------|---------|
//! | `core` | 0  | client    | Heartbeat (`d` is not inspected) |
//! | `core` | 1  | server    | Hello `{heartbeat_interval}` (ms) |
//! | `core` | 2  | client    | Identify `{token}` (instead of a ticket) |
//! | `core` | 5  | client    | Resume `{s, token}`: `s` is the last log `seq` the client has |
//! | `core` | 7  | server    | Heartbeat ACK, `d = []` (nothing is re-sent: resume instead) |
//! | `core` | 10 | server    | Resumed `{replayed, seq}` after the replayed events |
//! | `core` | 11 | server    | Heartbeat Request: heartbeat now |
//! | `chat` | 0  | server    | an event `{type, seq, channel, sender, ts, content}` |
//! | `chat` | 1  | client    | a command `{type: subscribe | typing.start | typing.stop | presence.update, …}` |
//! | `chat` | 2  | server    | Ready `{fid, session_id, channels, invited, seq}`: live from `seq` on |
//! | `chat` | 3  | server    | a command was refused `{type, errcode, error}` |

use serde::Deserialize;
use serde_json::Value;

pub const CORE: &str = "core";
pub const CHAT: &str = "chat";

pub mod op {
    pub const HEARTBEAT: u16 = 0;
    pub const HELLO: u16 = 1;
    pub const IDENTIFY: u16 = 2;
    pub const RESUME: u16 = 5;
    pub const HEARTBEAT_ACK: u16 = 7;
    pub const RESUMED: u16 = 10;
    pub const HEARTBEAT_REQUEST: u16 = 11;
    pub const CHAT_EVENT: u16 = 0;
    pub const CHAT_COMMAND: u16 = 1;
    pub const CHAT_READY: u16 = 2;
    pub const CHAT_REFUSED: u16 = 3;
}

/// Close codes. 4001 is the contract's code for a bad ticket (DESIGN §5), so an unknown
/// opcode, which polyproto also gives 4001, is 4002 here: a client can tell "get a new
/// ticket" from "fix the frame". Resumable: 4000, 4002, 4009.
pub mod close {
    /// The server stopped sending to this socket (its buffer filled or it missed events):
    /// resume with the last `seq` received.
    pub const RESUME: u16 = 4000;
    /// An invalid, expired or reused ticket.
    pub const BAD_TICKET: u16 = 4001;
    /// A frame that is not a JSON envelope, an unknown namespace or opcode, or Identify or
    /// Resume without its fields.
    pub const INVALID_PAYLOAD: u16 = 4002;
    /// A frame other than Identify or Resume before authentication, or the session ended.
    pub const NOT_AUTHENTICATED: u16 = 4003;
    /// Identify or Resume with a token of no live session.
    pub const BAD_TOKEN: u16 = 4004;
    pub const ALREADY_AUTHENTICATED: u16 = 4005;
    /// Too many client frames.
    pub const RATE_LIMITED: u16 = 4008;
    /// No heartbeat in time.
    pub const TIMEOUT: u16 = 4009;
    /// Resume is impossible (more missed events than a replay holds): catch up over REST.
    pub const UNRESUMABLE: u16 = 4010;
}

/// A server frame with a JSON `d` given as bytes (serialised once, shared).
pub fn frame(n: &str, op: u16, s: u64, d: &[u8]) -> String {
    use std::fmt::Write;
    // `d` comes from serde_json, so it is UTF-8.
    let d = std::str::from_utf8(d).unwrap_or("null");
    let mut out = String::with_capacity(d.len() + 40);
    let _ = write!(out, "{{\"n\":\"{n}\",\"op\":{op},\"s\":{s},\"d\":{d}}}");
    out
}

/// A frame from the client.
#[derive(Debug, Deserialize)]
pub struct ClientFrame {
    pub n: String,
    pub op: u16,
    #[serde(default)]
    pub d: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_the_envelope_with_d_verbatim() {
        let d = br#"{"type":"message.new","seq":7}"#;
        let text = frame(CHAT, op::CHAT_EVENT, 3, d);
        let parsed: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            parsed,
            serde_json::json!({"n": "chat", "op": 0, "s": 3,
                               "d": {"type": "message.new", "seq": 7}})
        );
    }
}
