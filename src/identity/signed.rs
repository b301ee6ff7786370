//! Messages signed by their authors (DESIGN §4.4).
//!
//! The author signs the canonical JSON of `{"action": "new" | "edit", "body", "channel",
//! "message_id" (edit only), "sender", "ts"}` and sends `"signed": {"serial", "ts",
//! "signature"}` next to the body. The `signed` object then travels unchanged in the event's
//! content: the log, `message.relay`, the gateway and REST catch-up.
//!
//! Two checks, one rule each:
//! - [`check_from_client`]: a message posted or edited here; `serial` must be the session's
//!   current valid certificate (ours for a local session, its home's for a foreign one), `ts`
//!   inside `federation.replay_window` of now → else 400 `SY_BAD_SIGNATURE`; without
//!   `signed` under `identity.require_signed_messages`, 400 `SY_SIGNATURE_REQUIRED`;
//! - [`check_relayed`]: a message another server relays; the author's certificate (our cache,
//!   else the author's home server) must have been valid and not invalidated when it was
//!   signed, and `ts` near the event's own time → else the event is rejected with
//!   `SY_BAD_SIGNATURE`; a home that cannot be reached fails the whole request (503).
//!
//! Every check runs on the shared verifier threads, which batch the checks of concurrent
//! requests (a post's, a relay's, the inbox's own) into one equation.

use ed25519_dalek::Signature;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::foreign::{ForeignEntry, ForeignError};
use super::sessions::{Session, Sessions};
use super::IdentityError;
use crate::core::canonical_json;
use crate::core::event::{EventType, PreparedEvent};
use crate::core::ids;
use crate::federation::signing::{unb64, PendingCheck};

/// A message's `signed` member.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Signed {
    /// The serial of the author's certificate, decimal.
    pub serial: String,
    /// When the author signed, ms.
    pub ts: i64,
    /// Unpadded standard base64 of the Ed25519 signature.
    pub signature: String,
}

impl Signed {
    fn signature(&self) -> Option<Signature> {
        let bytes: [u8; 64] = unb64(&self.signature)?.try_into().ok()?;
        Some(Signature::from_bytes(&bytes))
    }
}

/// What a message's signature covers.
pub struct SignedMessage<'a> {
    /// `new` or `edit`.
    pub action: &'a str,
    pub body: &'a str,
    pub channel: &'a str,
    /// Edits only.
    pub message_id: Option<&'a str>,
    pub sender: &'a str,
    pub ts: i64,
}

impl SignedMessage<'_> {
    /// The canonical JSON the author signs, written in key order (`action`, `body`,
    /// `channel`, `message_id`, `sender`, `ts`; a unit test checks it against the generic
    /// encoder).
    pub fn bytes(&self) -> Vec<u8> {
        use canonical_json::write_string;
        let mut out = String::with_capacity(self.body.len() + self.channel.len() + 128);
        out.push_str("{\"action\":");
        write_string(self.action, &mut out);
        out.push_str(",\"body\":");
        write_string(self.body, &mut out);
        out.push_str(",\"channel\":");
        write_string(self.channel, &mut out);
        if let Some(message_id) = self.message_id {
            out.push_str(",\"message_id\":");
            write_string(message_id, &mut out);
        }
        out.push_str(",\"sender\":");
        write_string(self.sender, &mut out);
        out.push_str(",\"ts\":");
        out.push_str(&self.ts.to_string());
        out.push('}');
        out.into_bytes()
    }
}

fn bad(message: impl Into<String>) -> IdentityError {
    IdentityError::MessageSignature(message.into())
}

fn signature_of(signed: &Signed) -> Result<Signature, IdentityError> {
    signed
        .signature()
        .ok_or_else(|| bad("signed.signature must be unpadded base64 of 64 bytes"))
}

/// Checks a message a client posts or edits as `session` (`message.ts` is `signed.ts`).
/// `now_ms` is the server's time and `window_ms` the allowed distance of `signed.ts` from it.
pub async fn check_from_client(
    sessions: &Sessions,
    session: &Session,
    message: &SignedMessage<'_>,
    signed: Option<&Signed>,
    required: bool,
    now_ms: i64,
    window_ms: i64,
) -> Result<(), IdentityError> {
    let Some(signed) = signed else {
        return if required {
            Err(IdentityError::SignatureRequired(
                "this server requires messages and edits to carry their author's signature".into(),
            ))
        } else {
            Ok(())
        };
    };
    let skew = now_ms.saturating_sub(signed.ts);
    if skew.saturating_abs() > window_ms {
        return Err(bad(format!(
            "signed.ts is {skew} ms away from this server's clock (the window is ±{window_ms} ms)"
        )));
    }
    let Some((serial, key)) = sessions.signing_certificate(session).await? else {
        return Err(bad("this session holds no valid certificate to sign with"));
    };
    if serial != signed.serial {
        return Err(bad(format!(
            "signed.serial {} is not this session's current certificate",
            signed.serial
        )));
    }
    // On the verifier threads, batched with the checks of concurrent requests.
    let check = PendingCheck {
        message: message.bytes(),
        signature: signature_of(signed)?,
        key,
    };
    if sessions.verify(check).await? {
        Ok(())
    } else {
        Err(bad(
            "the signature does not verify with this session's certificate",
        ))
    }
}

/// What the inbox decides about one relayed event.
pub enum RelayVerdict {
    /// Unsigned, or signed and verified; the other server's certificate it was checked with.
    Accept(Option<Box<ForeignEntry>>),
    /// Rejected with `SY_BAD_SIGNATURE` for this reason.
    Reject(String),
}

/// Checks the signature of a relayed `message.new` / `message.edit` (anything else, and an
/// unsigned message, is accepted as it is). `window_ms` bounds the distance between the
/// signature's time and the event's. Err only when the author's home cannot be asked.
pub async fn check_relayed(
    sessions: &Sessions,
    server_name: &str,
    event: &PreparedEvent,
    window_ms: i64,
) -> Result<RelayVerdict, IdentityError> {
    let action = match event.event_type {
        EventType::MessageNew => "new",
        EventType::MessageEdit => "edit",
        _ => return Ok(RelayVerdict::Accept(None)),
    };
    let Some(signed) = event.content.get("signed") else {
        return Ok(RelayVerdict::Accept(None));
    };
    let Ok(signed) = serde_json::from_value::<Signed>(signed.clone()) else {
        return Ok(RelayVerdict::Reject("\"signed\" is malformed".into()));
    };
    let (Some(sender), Some(channel)) = (event.sender.as_deref(), event.channel.as_deref()) else {
        return Ok(RelayVerdict::Reject(
            "a signed message needs a sender and a channel".into(),
        ));
    };
    let text = |key: &str| event.content.get(key).and_then(Value::as_str);
    let message = SignedMessage {
        action,
        body: text("body").unwrap_or_default(),
        channel,
        message_id: (action == "edit").then(|| text("message_id").unwrap_or_default()),
        sender,
        ts: signed.ts,
    };
    let skew = event.origin_ts.saturating_sub(signed.ts);
    if skew.saturating_abs() > window_ms {
        return Ok(RelayVerdict::Reject(format!(
            "signed.ts is {skew} ms away from the event's time"
        )));
    }
    let signed_at = signed.ts.div_euclid(1000);
    let home = ids::parse_fid(sender).map_or("", |(_, home)| home);
    let (key, seen) = if home == server_name {
        match sessions.actor_certs().by_serial(sender, &signed.serial) {
            Some(cert)
                if cert.not_before <= signed_at
                    && signed_at <= cert.not_after
                    && cert.invalidated_at.is_none_or(|at| at > signed_at) =>
            {
                (cert.key, None)
            }
            _ => {
                return Ok(RelayVerdict::Reject(format!(
                    "{sender} held no valid certificate {} at {signed_at}",
                    signed.serial
                )))
            }
        }
    } else {
        match sessions
            .foreign()
            .actor_cert(sender, &signed.serial, signed_at, Some(signed_at))
            .await
        {
            Ok(entry) => (entry.cert.key, Some(Box::new(entry))),
            Err(ForeignError::Unreachable { home, retry_after }) => {
                return Err(IdentityError::HomeUnavailable {
                    message: format!(
                        "{home} cannot be reached to check a relayed message's signature; nothing was recorded, retry"
                    ),
                    retry_after,
                })
            }
            Err(ForeignError::Untrusted(reason)) => {
                return Ok(RelayVerdict::Reject(format!(
                    "the author's certificate is not trusted: {reason}"
                )))
            }
        }
    };
    let Some(signature) = signed.signature() else {
        return Ok(RelayVerdict::Reject(
            "signed.signature must be unpadded base64 of 64 bytes".into(),
        ));
    };
    let check = PendingCheck {
        message: message.bytes(),
        signature,
        key,
    };
    if sessions.verify(check).await? {
        Ok(RelayVerdict::Accept(seen))
    } else {
        Ok(RelayVerdict::Reject(format!(
            "the signature does not verify with {sender}'s certificate {}",
            signed.serial
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_signed_bytes_equal_the_generic_canonical_encoding() {
        for (body, message_id) in [
            ("plain", None),
            ("é\u{1}\"\\\n\t<>", Some("m:1")),
            ("", None),
        ] {
            let message = SignedMessage {
                action: if message_id.is_some() { "edit" } else { "new" },
                body,
                channel: "c@a.example:8448",
                message_id,
                sender: "alice@b.example",
                ts: -7,
            };
            let mut object = json!({"action": message.action, "body": body,
                "channel": message.channel, "sender": message.sender, "ts": message.ts});
            if let Some(id) = message_id {
                object["message_id"] = json!(id);
            }
            let generic = canonical_json::to_canonical_string(&object).expect("canonical");
            assert_eq!(String::from_utf8(message.bytes()).expect("utf8"), generic);
        }
    }

    #[test]
    fn the_signed_bytes_are_canonical_json() {
        let new = SignedMessage {
            action: "new",
            body: "hé \"there\"",
            channel: "c1@a.example",
            message_id: None,
            sender: "alice@b.example",
            ts: 1_700_000_000_000,
        };
        assert_eq!(
            String::from_utf8(new.bytes()).expect("utf8"),
            r#"{"action":"new","body":"hé \"there\"","channel":"c1@a.example","sender":"alice@b.example","ts":1700000000000}"#
        );
        let edit = SignedMessage {
            action: "edit",
            message_id: Some("m1"),
            ..new
        };
        assert_eq!(
            String::from_utf8(edit.bytes()).expect("utf8"),
            r#"{"action":"edit","body":"hé \"there\"","channel":"c1@a.example","message_id":"m1","sender":"alice@b.example","ts":1700000000000}"#
        );
    }
}
