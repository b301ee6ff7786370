//! Log events: the types the log knows, how their content is checked, and the log entry with
//! its leaf (the canonical JSON that is hashed into the chain and the Merkle tree).
//!
//! Log types are the ones clients see (DESIGN §5): a federated `message.relay` with
//! `action: "new"` is recorded as `message.new`, so the log, the gateway and REST catch-up
//! speak one vocabulary.

use std::fmt;
use std::str::FromStr;

use crate::core::tiles::MAX_LEAF_BYTES;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::canonical_json::{self, CanonicalJsonError};
use super::chain::ChainHash;
use super::ids;

/// Every event type the log accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    ChannelNew,
    ChannelInvite,
    ChannelJoin,
    ChannelLeave,
    MessageNew,
    MessageEdit,
    MessageDelete,
    SenderKeyDistribute,
    OriginPolicy,
    ServerKeyRotated,
    ServerKeysFetched,
    ServerIdCertIssued,
    AccountRegistered,
    SessionCreated,
    SessionDeleted,
    SessionIdCertUpdated,
    ActorIdCertIssued,
    ActorIdCertInvalidated,
    ActorForeignIdCertSeen,
    ServiceAdded,
    ServiceRemoved,
    ServicePrimarySet,
}

impl EventType {
    pub const ALL: [EventType; 22] = [
        EventType::ChannelNew,
        EventType::ChannelInvite,
        EventType::ChannelJoin,
        EventType::ChannelLeave,
        EventType::MessageNew,
        EventType::MessageEdit,
        EventType::MessageDelete,
        EventType::SenderKeyDistribute,
        EventType::OriginPolicy,
        EventType::ServerKeyRotated,
        EventType::ServerKeysFetched,
        EventType::ServerIdCertIssued,
        EventType::AccountRegistered,
        EventType::SessionCreated,
        EventType::SessionDeleted,
        EventType::SessionIdCertUpdated,
        EventType::ActorIdCertIssued,
        EventType::ActorIdCertInvalidated,
        EventType::ActorForeignIdCertSeen,
        EventType::ServiceAdded,
        EventType::ServiceRemoved,
        EventType::ServicePrimarySet,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ChannelNew => "channel.new",
            EventType::ChannelInvite => "channel.invite",
            EventType::ChannelJoin => "channel.join",
            EventType::ChannelLeave => "channel.leave",
            EventType::MessageNew => "message.new",
            EventType::MessageEdit => "message.edit",
            EventType::MessageDelete => "message.delete",
            EventType::SenderKeyDistribute => "sender_key.distribute",
            EventType::OriginPolicy => "origin.policy",
            EventType::ServerKeyRotated => "server.key_rotated",
            EventType::ServerKeysFetched => "server.keys_fetched",
            EventType::ServerIdCertIssued => "server.idcert_issued",
            EventType::AccountRegistered => "account.registered",
            EventType::SessionCreated => "session.created",
            EventType::SessionDeleted => "session.deleted",
            EventType::SessionIdCertUpdated => "session.idcert_updated",
            EventType::ActorIdCertIssued => "actor.idcert_issued",
            EventType::ActorIdCertInvalidated => "actor.idcert_invalidated",
            EventType::ActorForeignIdCertSeen => "actor.foreign_idcert_seen",
            EventType::ServiceAdded => "service.added",
            EventType::ServiceRemoved => "service.removed",
            EventType::ServicePrimarySet => "service.primary_set",
        }
    }

    /// Whether events of this type belong to a channel (and so need `channel`).
    pub fn needs_channel(self) -> bool {
        !matches!(
            self,
            EventType::SenderKeyDistribute
                | EventType::OriginPolicy
                | EventType::ServerKeyRotated
                | EventType::ServerKeysFetched
                | EventType::ServerIdCertIssued
                | EventType::AccountRegistered
                | EventType::SessionCreated
                | EventType::SessionDeleted
                | EventType::SessionIdCertUpdated
                | EventType::ActorIdCertIssued
                | EventType::ActorIdCertInvalidated
                | EventType::ActorForeignIdCertSeen
                | EventType::ServiceAdded
                | EventType::ServiceRemoved
                | EventType::ServicePrimarySet
        )
    }

    /// The identity events of DESIGN §2.3: public in the auditor API, and the history of a key.
    pub fn is_identity(self) -> bool {
        matches!(
            self,
            EventType::ServerKeyRotated
                | EventType::ServerIdCertIssued
                | EventType::ActorIdCertIssued
                | EventType::ActorIdCertInvalidated
                | EventType::ActorForeignIdCertSeen
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown event type {0:?}")]
pub struct UnknownEventType(pub String);

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType(s.chars().take(64).collect()))
    }
}

/// Why an event cannot enter the log.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    #[error("event_id must be 1..255 characters of [A-Za-z0-9._:-]")]
    BadEventId,
    #[error("origin must be a server name (host[:port])")]
    BadOrigin,
    #[error("sender must be a federation id (local@server)")]
    BadSender,
    #[error("{0} events need a channel ref (id@server)")]
    MissingChannel(EventType),
    #[error("channel must be a channel ref (id@server)")]
    BadChannel,
    #[error("{0}")]
    UnknownType(#[from] UnknownEventType),
    #[error("content of {kind}: {problem}")]
    BadContent { kind: EventType, problem: String },
    #[error("content is not canonical JSON: {0}")]
    NotCanonical(#[from] CanonicalJsonError),
    #[error("the event is too large for the log: its entry could exceed {MAX_LEAF_BYTES} bytes")]
    TooLarge,
}

/// An event as a caller hands it to the log, before it has a `seq`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    pub event_id: String,
    pub origin: String,
    pub event_type: String,
    pub sender: Option<String>,
    pub channel: Option<String>,
    pub origin_ts: i64,
    pub content: Value,
}

/// A checked event: known type, valid ids and content, content already canonical.
/// Preparing happens in the caller's task so the single writer only hashes and writes.
#[derive(Clone, Debug)]
pub struct PreparedEvent {
    pub event_id: String,
    pub origin: String,
    pub event_type: EventType,
    pub sender: Option<String>,
    pub channel: Option<String>,
    pub origin_ts: i64,
    pub content: Value,
    /// The content as canonical JSON (what is stored and hashed).
    pub canonical_content: Box<RawValue>,
    /// The leaf up to the fields the writer assigns (see [`write_leaf_head`]).
    pub leaf_head: String,
    /// The Merkle leaf hash's state after `0x00 ‖ leaf_head`: hashed here, in the caller's
    /// task, so the single writer finishes it with the short tail (`seq`, `received_ts`, …).
    pub leaf_hasher: sha2::Sha256,
}

impl NewEvent {
    /// Checks the event and canonicalises its content.
    pub fn prepare(self) -> Result<PreparedEvent, EventError> {
        if !ids::is_opaque_id(&self.event_id) {
            return Err(EventError::BadEventId);
        }
        if !ids::is_server_name(&self.origin) {
            return Err(EventError::BadOrigin);
        }
        let event_type: EventType = self.event_type.parse()?;
        if self
            .sender
            .as_deref()
            .is_some_and(|s| ids::parse_fid(s).is_none())
        {
            return Err(EventError::BadSender);
        }
        match self.channel.as_deref() {
            Some(c) if ids::parse_channel_ref(c).is_none() => return Err(EventError::BadChannel),
            None if event_type.needs_channel() => {
                return Err(EventError::MissingChannel(event_type))
            }
            _ => {}
        }
        check_content(event_type, &self.content).map_err(|problem| EventError::BadContent {
            kind: event_type,
            problem,
        })?;
        let canonical_content = canonical_json::to_canonical_string(&self.content)?;
        if leaf_bound(&self, canonical_content.len()) > MAX_LEAF_BYTES {
            return Err(EventError::TooLarge);
        }
        // Canonical JSON is valid JSON, so this never fails; the error arm keeps it panic-free.
        let canonical_content = RawValue::from_string(canonical_content)
            .map_err(|_| EventError::NotCanonical(CanonicalJsonError::Float))?;
        let mut leaf_head = String::with_capacity(canonical_content.get().len() + 192);
        write_leaf_head(
            &mut leaf_head,
            &self.event_id,
            &self.origin,
            self.channel.as_deref(),
            self.origin_ts,
            canonical_content.get(),
        );
        let mut leaf_hasher = crate::core::merkle::leaf_hasher();
        sha2::Digest::update(&mut leaf_hasher, leaf_head.as_bytes());
        Ok(PreparedEvent {
            event_id: self.event_id,
            origin: self.origin,
            event_type,
            sender: self.sender,
            channel: self.channel,
            origin_ts: self.origin_ts,
            content: self.content,
            canonical_content,
            leaf_head,
            leaf_hasher,
        })
    }
}

/// An upper bound of the leaf's length (DESIGN §2: at most 65,535 bytes): the canonical
/// content, every string field as if each byte needed a two-byte escape, and room for the
/// keys, three 20-digit integers and the punctuation.
fn leaf_bound(event: &NewEvent, canonical_content: usize) -> usize {
    let strings = event.event_id.len()
        + event.origin.len()
        + event.event_type.len()
        + event.sender.as_deref().map_or(0, str::len)
        + event.channel.as_deref().map_or(0, str::len);
    canonical_content + 2 * strings + 256
}

const MAX_NAME_CHARS: usize = 100;
/// A message body's cap: with the entry's other fields and any escaping of quotes and
/// backslashes the leaf stays under [`MAX_LEAF_BYTES`]; a body of control characters (six
/// bytes each once escaped) is refused by the leaf bound instead.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

fn str_field<'a>(content: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    content
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("\"{key}\" must be a string"))
}

fn message_id(content: &Map<String, Value>) -> Result<(), String> {
    let id = str_field(content, "message_id")?;
    if ids::is_opaque_id(id) {
        Ok(())
    } else {
        Err("\"message_id\" must be 1..255 characters of [A-Za-z0-9._:-]".into())
    }
}

fn body(content: &Map<String, Value>) -> Result<(), String> {
    let body = str_field(content, "body")?;
    if body.len() > MAX_BODY_BYTES {
        return Err(format!("\"body\" is over {MAX_BODY_BYTES} bytes"));
    }
    Ok(())
}

fn fid_field(content: &Map<String, Value>, key: &str) -> Result<(), String> {
    let fid = str_field(content, key)?;
    ids::parse_fid(fid)
        .map(|_| ())
        .ok_or_else(|| format!("\"{key}\" must be a federation id (local@server)"))
}

fn key_id_field(content: &Map<String, Value>, key: &str) -> Result<(), String> {
    let version = str_field(content, key)?
        .strip_prefix("ed25519:")
        .unwrap_or("");
    if version.is_empty()
        || !version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Err(format!("\"{key}\" must be ed25519:<version>"));
    }
    Ok(())
}

fn session_id_field(content: &Map<String, Value>) -> Result<(), String> {
    let session = str_field(content, "session_id")?;
    if (1..=32).contains(&session.len()) && session.bytes().all(|b| b.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err("\"session_id\" must be 1..32 ASCII letters and digits".into())
    }
}

fn non_negative(content: &Map<String, Value>, key: &str) -> Result<(), String> {
    content
        .get(key)
        .and_then(Value::as_u64)
        .map(|_| ())
        .ok_or_else(|| format!("\"{key}\" must be a non-negative integer"))
}

/// A certificate serial as the API writes it: a positive decimal of at most 48 digits (20
/// octets), no leading zero.
pub fn is_decimal_serial(serial: &str) -> bool {
    (1..=48).contains(&serial.len())
        && serial.bytes().all(|b| b.is_ascii_digit())
        && !serial.starts_with('0')
}

fn serial_field(content: &Map<String, Value>, key: &str) -> Result<(), String> {
    if is_decimal_serial(str_field(content, key)?) {
        Ok(())
    } else {
        Err(format!("\"{key}\" must be a positive decimal serial"))
    }
}

/// A key fingerprint: `sha256:<64 lowercase hex>` of the SubjectPublicKeyInfo DER.
pub fn is_fingerprint(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A service name (DESIGN §4.5): 2..64 of `[a-z0-9_.-]`.
pub fn is_service_name(name: &str) -> bool {
    (2..=64).contains(&name.len())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
        })
}

/// A service URL: `http://` or `https://`, then a host, at most 2048 visible ASCII characters.
pub fn is_service_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    url.len() <= 2048
        && rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
        && url.bytes().all(|b| b.is_ascii_graphic())
}

/// A message's `signed` member (DESIGN §4.4): exactly `{"serial", "ts", "signature"}`.
fn signed_field(content: &Map<String, Value>) -> Result<(), String> {
    let Some(signed) = content.get("signed") else {
        return Ok(());
    };
    let signed = signed
        .as_object()
        .ok_or_else(|| "\"signed\" must be an object".to_string())?;
    if signed.len() != 3 {
        return Err("\"signed\" has exactly \"serial\", \"ts\" and \"signature\"".into());
    }
    serial_field(signed, "serial")?;
    non_negative(signed, "ts")?;
    let signature = str_field(signed, "signature")?;
    if signature.len() != 86
        || !signature
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
    {
        return Err("\"signed.signature\" must be unpadded base64 of 64 bytes".into());
    }
    Ok(())
}

/// The fields every actor certificate event carries; the session id is checked by the caller
/// (ours are hex, another server's are any 1..32 visible ASCII characters).
fn actor_cert_fields(content: &Map<String, Value>) -> Result<(), String> {
    fid_field(content, "fid")?;
    serial_field(content, "serial")?;
    if !is_fingerprint(str_field(content, "fingerprint")?) {
        return Err("\"fingerprint\" must be sha256:<64 lowercase hex>".into());
    }
    non_negative(content, "not_before")?;
    non_negative(content, "not_after")?;
    if !str_field(content, "pem")?.starts_with("-----BEGIN CERTIFICATE-----") {
        return Err("\"pem\" must be a PEM certificate".into());
    }
    Ok(())
}

fn service_fields(content: &Map<String, Value>) -> Result<(), String> {
    if !is_service_name(str_field(content, "service")?) {
        return Err("\"service\" must be 2..64 of [a-z0-9_.-]".into());
    }
    if !is_service_url(str_field(content, "url")?) {
        return Err("\"url\" must be an http(s) URL".into());
    }
    Ok(())
}

/// The content rules of each type. Unknown extra fields are kept (forward compatibility);
/// the fields a type defines must be present and well-formed.
fn check_content(kind: EventType, content: &Value) -> Result<(), String> {
    let content = content
        .as_object()
        .ok_or_else(|| "content must be a JSON object".to_string())?;
    match kind {
        EventType::ChannelNew => {
            let name = str_field(content, "name")?;
            let chars = name.chars().count();
            if chars == 0 || chars > MAX_NAME_CHARS {
                return Err(format!("\"name\" must be 1..{MAX_NAME_CHARS} characters"));
            }
            Ok(())
        }
        EventType::ChannelInvite => fid_field(content, "invitee"),
        EventType::ChannelJoin | EventType::ChannelLeave => Ok(()),
        EventType::MessageNew | EventType::MessageEdit => message_id(content)
            .and(body(content))
            .and(signed_field(content)),
        EventType::MessageDelete => message_id(content),
        EventType::SenderKeyDistribute => {
            fid_field(content, "recipient")?;
            str_field(content, "device_id")?;
            str_field(content, "key").map(|_| ())
        }
        EventType::ServerKeysFetched => {
            let server = str_field(content, "server_name")?;
            if !ids::is_server_name(server) {
                return Err("\"server_name\" must be a server name".into());
            }
            if !content.get("response").is_some_and(Value::is_object) {
                return Err("\"response\" must be the server's key response object".into());
            }
            non_negative(content, "valid_until_ts")?;
            non_negative(content, "fetched_ts")
        }
        EventType::ServerKeyRotated => {
            key_id_field(content, "old_key_id")?;
            key_id_field(content, "new_key_id")?;
            for field in ["old_key", "new_key"] {
                let key = str_field(content, field)?;
                if key.len() != 43
                    || !key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
                {
                    return Err(format!(
                        "\"{field}\" must be an ed25519 public key in unpadded base64"
                    ));
                }
            }
            non_negative(content, "expired_ts")
        }
        EventType::ServerIdCertIssued => {
            key_id_field(content, "key_id")?;
            let serial = str_field(content, "serial")?;
            if !(2..=40).contains(&serial.len())
                || serial.len() % 2 != 0
                || !serial
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err("\"serial\" must be 1..20 octets in lowercase hex".into());
            }
            non_negative(content, "not_before")?;
            non_negative(content, "not_after")?;
            if !str_field(content, "pem")?.starts_with("-----BEGIN CERTIFICATE-----") {
                return Err("\"pem\" must be a PEM certificate".into());
            }
            Ok(())
        }
        EventType::AccountRegistered => {
            let username = str_field(content, "username")?;
            if ids::parse_fid(&format!("{username}@x")).is_none() {
                return Err("\"username\" must be 1..64 of [a-z0-9._-]".into());
            }
            if !str_field(content, "password_hash")?.starts_with("$argon2") {
                return Err("\"password_hash\" must be an argon2 PHC string".into());
            }
            Ok(())
        }
        EventType::SessionDeleted => session_id_field(content),
        EventType::SessionIdCertUpdated => {
            session_id_field(content)?;
            serial_field(content, "serial")
        }
        EventType::ActorIdCertIssued => {
            session_id_field(content)?;
            actor_cert_fields(content)
        }
        EventType::ActorForeignIdCertSeen => {
            let session = str_field(content, "session_id")?;
            if !(1..=32).contains(&session.len()) || !session.bytes().all(|b| b.is_ascii_graphic())
            {
                return Err("\"session_id\" must be 1..32 visible ASCII characters".into());
            }
            actor_cert_fields(content)
        }
        EventType::ActorIdCertInvalidated => {
            serial_field(content, "serial")?;
            non_negative(content, "invalidated_at")?;
            match str_field(content, "reason")? {
                "renewed" | "session_ended" | "revoked" => Ok(()),
                _ => Err("\"reason\" must be renewed, session_ended or revoked".into()),
            }
        }
        EventType::ServiceAdded => {
            service_fields(content)?;
            content
                .get("primary")
                .and_then(Value::as_bool)
                .map(|_| ())
                .ok_or_else(|| "\"primary\" must be a boolean".to_string())
        }
        EventType::ServiceRemoved => {
            service_fields(content)?;
            match content.get("new_primary") {
                Some(Value::Null) => Ok(()),
                Some(Value::String(url)) if is_service_url(url) => Ok(()),
                _ => Err("\"new_primary\" must be a service URL or null".into()),
            }
        }
        EventType::ServicePrimarySet => service_fields(content),
        EventType::SessionCreated => {
            session_id_field(content)?;
            if let Some(serial) = content.get("serial") {
                if !serial.as_str().is_some_and(is_decimal_serial) {
                    return Err("\"serial\" must be a positive decimal serial".into());
                }
            }
            let hash = str_field(content, "token_hash")?;
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err("\"token_hash\" must be a lowercase hex SHA-256".into());
            }
            Ok(())
        }
        EventType::OriginPolicy => {
            let origin = str_field(content, "origin")?;
            if !ids::is_server_name(origin) {
                return Err("\"origin\" must be a server name".into());
            }
            non_negative(content, "rate_per_minute")?;
            non_negative(content, "burst")?;
            content
                .get("blocked")
                .and_then(Value::as_bool)
                .map(|_| ())
                .ok_or_else(|| "\"blocked\" must be a boolean".to_string())
        }
    }
}

/// One committed entry of the log (DESIGN §2).
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub seq: u64,
    pub event_id: String,
    pub origin: String,
    pub event_type: String,
    pub sender: Option<String>,
    pub channel: Option<String>,
    pub origin_ts: i64,
    pub received_ts: i64,
    /// The content as canonical JSON, exactly as hashed.
    pub content: Box<RawValue>,
    pub prev_hash: ChainHash,
    pub entry_hash: ChainHash,
}

impl PartialEq for LogEntry {
    fn eq(&self, other: &Self) -> bool {
        self.seq == other.seq
            && self.event_id == other.event_id
            && self.origin == other.origin
            && self.event_type == other.event_type
            && self.sender == other.sender
            && self.channel == other.channel
            && self.origin_ts == other.origin_ts
            && self.received_ts == other.received_ts
            && self.content.get() == other.content.get()
            && self.prev_hash == other.prev_hash
            && self.entry_hash == other.entry_hash
    }
}

/// Writes the leaf of an entry: canonical JSON of the entry without `prev_hash`/`entry_hash`.
/// Fields are written in sorted key order by hand so the (already canonical) content is
/// copied, not re-encoded; a unit test checks this equals the generic canonical encoding.
/// The leaf is [`write_leaf_head`] (what an event has before the log takes it) followed by
/// [`write_leaf_tail`] (what the writer assigns).
#[allow(clippy::too_many_arguments)]
pub fn write_leaf(
    out: &mut String,
    seq: u64,
    event_id: &str,
    origin: &str,
    event_type: &str,
    sender: Option<&str>,
    channel: Option<&str>,
    origin_ts: i64,
    received_ts: i64,
    canonical_content: &str,
) {
    write_leaf_head(out, event_id, origin, channel, origin_ts, canonical_content);
    write_leaf_tail(out, seq, event_type, sender, received_ts);
}

/// The leaf up to `"received_ts":`: channel, content, event_id, origin, origin_ts (the keys
/// sort before the fields the writer assigns).
pub fn write_leaf_head(
    out: &mut String,
    event_id: &str,
    origin: &str,
    channel: Option<&str>,
    origin_ts: i64,
    canonical_content: &str,
) {
    use canonical_json::write_string;
    use std::fmt::Write;
    out.push_str("{\"channel\":");
    match channel {
        Some(s) => write_string(s, out),
        None => out.push_str("null"),
    }
    out.push_str(",\"content\":");
    out.push_str(canonical_content);
    out.push_str(",\"event_id\":");
    write_string(event_id, out);
    out.push_str(",\"origin\":");
    write_string(origin, out);
    // Writing into a String never fails.
    let _ = write!(out, ",\"origin_ts\":{origin_ts},\"received_ts\":");
}

/// The rest of the leaf after [`write_leaf_head`]: received_ts, sender, seq, type.
pub fn write_leaf_tail(
    out: &mut String,
    seq: u64,
    event_type: &str,
    sender: Option<&str>,
    received_ts: i64,
) {
    use canonical_json::write_string;
    use std::fmt::Write;
    let _ = write!(out, "{received_ts},\"sender\":");
    match sender {
        Some(s) => write_string(s, out),
        None => out.push_str("null"),
    }
    let _ = write!(out, ",\"seq\":{seq},\"type\":");
    write_string(event_type, out);
    out.push('}');
}

impl LogEntry {
    /// The leaf bytes of this entry.
    pub fn leaf(&self) -> String {
        let mut out = String::with_capacity(self.content.get().len() + 256);
        write_leaf(
            &mut out,
            self.seq,
            &self.event_id,
            &self.origin,
            &self.event_type,
            self.sender.as_deref(),
            self.channel.as_deref(),
            self.origin_ts,
            self.received_ts,
            self.content.get(),
        );
        out
    }

    /// The entry hash this entry must carry, given its `prev_hash`.
    pub fn computed_hash(&self) -> ChainHash {
        self.prev_hash.next(self.leaf().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: &str, content: Value) -> NewEvent {
        NewEvent {
            event_id: "e1".into(),
            origin: "a.example".into(),
            event_type: kind.into(),
            sender: Some("alice@a.example".into()),
            channel: Some("general@a.example".into()),
            origin_ts: 1,
            content,
        }
    }

    /// The writer's leaf and leaf hash (the head prepared here, the tail added by the writer)
    /// equal the stored entry's `leaf()` and its RFC 6962 leaf hash, with nulls and escapes.
    #[test]
    fn the_split_leaf_is_the_entry_leaf_and_its_hash() {
        for (sender, channel, kind, content) in [
            (
                Some("alice@a.example"),
                Some("general@a.example"),
                "message.new",
                json!({"message_id": "m1", "body": "q\"u\\o\nte \u{1} é"}),
            ),
            (
                None,
                None,
                "server.key_rotated",
                json!({"old_key_id": "ed25519:a", "new_key_id": "ed25519:b", "old_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "new_key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "expired_ts": 5}),
            ),
        ] {
            let event = NewEvent {
                event_id: "ev.1".into(),
                origin: "a.example:8448".into(),
                event_type: kind.into(),
                sender: sender.map(str::to_owned),
                channel: channel.map(str::to_owned),
                origin_ts: 17,
                content,
            };
            let prepared = event.prepare().expect("a valid event");
            let mut leaf = prepared.leaf_head.clone();
            write_leaf_tail(&mut leaf, 9, kind, sender, 23);
            let mut hasher = prepared.leaf_hasher.clone();
            sha2::Digest::update(&mut hasher, &leaf.as_bytes()[prepared.leaf_head.len()..]);
            let hash: [u8; 32] = sha2::Digest::finalize(hasher).into();
            let entry = LogEntry {
                seq: 9,
                event_id: prepared.event_id.clone(),
                origin: prepared.origin.clone(),
                event_type: kind.into(),
                sender: prepared.sender.clone(),
                channel: prepared.channel.clone(),
                origin_ts: 17,
                received_ts: 23,
                content: prepared.canonical_content.clone(),
                prev_hash: ChainHash::GENESIS,
                entry_hash: ChainHash::GENESIS,
            };
            assert_eq!(leaf, entry.leaf());
            assert_eq!(
                hash,
                crate::core::merkle::leaf_hash(entry.leaf().as_bytes())
            );
        }
    }

    #[test]
    fn leaf_equals_generic_canonical_encoding() {
        let content = json!({"z": 1, "body": "héllo \"x\"\n", "message_id": "m1"});
        let canonical = canonical_json::to_canonical_string(&content).expect("canonical");
        let entry = LogEntry {
            seq: 42,
            event_id: "ev:1".into(),
            origin: "a.example:8448".into(),
            event_type: "message.new".into(),
            sender: None,
            channel: Some("c@a.example:8448".into()),
            origin_ts: -5,
            received_ts: 1_700_000_000_000,
            content: RawValue::from_string(canonical).expect("raw"),
            prev_hash: ChainHash::GENESIS,
            entry_hash: ChainHash::GENESIS,
        };
        let generic = canonical_json::to_canonical_string(&json!({
            "seq": 42, "event_id": "ev:1", "origin": "a.example:8448", "type": "message.new",
            "sender": null, "channel": "c@a.example:8448", "origin_ts": -5,
            "received_ts": 1_700_000_000_000i64, "content": content,
        }))
        .expect("canonical");
        assert_eq!(entry.leaf(), generic);
        assert_eq!(
            entry.computed_hash(),
            ChainHash::GENESIS.next(generic.as_bytes())
        );
    }

    #[test]
    fn types_round_trip() {
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
        }
        assert!("message.relay".parse::<EventType>().is_err());
    }

    #[test]
    fn prepare_accepts_valid_events() {
        let cases = [
            ("channel.new", json!({"name": "general"})),
            ("channel.invite", json!({"invitee": "bob@b.example"})),
            ("channel.join", json!({})),
            ("channel.leave", json!({})),
            ("message.new", json!({"message_id": "m1", "body": "hi"})),
            ("message.edit", json!({"message_id": "m1", "body": "hi!"})),
            ("message.delete", json!({"message_id": "m1"})),
        ];
        for (kind, content) in cases {
            let prepared = event(kind, content.clone()).prepare().expect(kind);
            assert_eq!(prepared.event_type.as_str(), kind);
        }
        let mut key = event(
            "sender_key.distribute",
            json!({"recipient": "bob@b", "device_id": "d", "key": "k"}),
        );
        key.channel = None;
        key.prepare().expect("sender_key");
        let mut policy = event(
            "origin.policy",
            json!({"origin": "b.example", "rate_per_minute": 10, "burst": 5, "blocked": false}),
        );
        policy.channel = None;
        policy.prepare().expect("policy");
        let key = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI";
        let mut rotated = event(
            "server.key_rotated",
            json!({"old_key_id": "ed25519:a_1", "old_key": key, "expired_ts": 1, "new_key_id": "ed25519:a_2", "new_key": key}),
        );
        rotated.channel = None;
        rotated.sender = None;
        rotated.clone().prepare().expect("rotation");
        rotated.content["old_key"] = json!("short");
        assert!(matches!(
            rotated.prepare(),
            Err(EventError::BadContent { .. })
        ));
        let mut cert = event(
            "server.idcert_issued",
            json!({"key_id": "ed25519:a_1", "serial": "01ff", "not_before": 1, "not_after": 2,
                   "pem": "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"}),
        );
        cert.channel = None;
        cert.sender = None;
        cert.clone().prepare().expect("idcert");
        for (field, bad) in [
            ("serial", json!("1ff")),
            ("serial", json!("01FF")),
            ("key_id", json!("rsa:1")),
            ("pem", json!("not a certificate")),
            ("not_after", json!(-1)),
        ] {
            let mut e = cert.clone();
            e.content[field] = bad;
            assert!(
                matches!(e.prepare(), Err(EventError::BadContent { .. })),
                "{field}"
            );
        }
    }

    #[test]
    fn prepare_rejects_each_bad_field() {
        let ok = event("message.new", json!({"message_id": "m1", "body": "hi"}));
        let mut e = ok.clone();
        e.event_id = "bad id".into();
        assert_eq!(e.prepare().unwrap_err(), EventError::BadEventId);
        let mut e = ok.clone();
        e.origin = "bad origin".into();
        assert_eq!(e.prepare().unwrap_err(), EventError::BadOrigin);
        let mut e = ok.clone();
        e.event_type = "message.relay".into();
        assert!(matches!(
            e.prepare().unwrap_err(),
            EventError::UnknownType(_)
        ));
        let mut e = ok.clone();
        e.sender = Some("nobody".into());
        assert_eq!(e.prepare().unwrap_err(), EventError::BadSender);
        let mut e = ok.clone();
        e.channel = None;
        assert_eq!(
            e.prepare().unwrap_err(),
            EventError::MissingChannel(EventType::MessageNew)
        );
        let mut e = ok.clone();
        e.channel = Some("no-server".into());
        assert_eq!(e.prepare().unwrap_err(), EventError::BadChannel);
        for bad in [
            json!([]),
            json!({"message_id": "m1"}),
            json!({"message_id": "", "body": "x"}),
            json!({"message_id": "m", "body": 5}),
        ] {
            let mut e = ok.clone();
            e.content = bad;
            assert!(matches!(
                e.prepare().unwrap_err(),
                EventError::BadContent { .. }
            ));
        }
        let mut e = ok.clone();
        e.content = json!({"message_id": "m1", "body": "x", "extra": 0.5});
        assert_eq!(
            e.prepare().unwrap_err(),
            EventError::NotCanonical(CanonicalJsonError::Float)
        );
    }
}
