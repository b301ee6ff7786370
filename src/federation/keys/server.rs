//! `GET /_matrix/key/v2/server`, served from a prepared body.
//!
//! The response (Matrix Server-Server API, "Publishing Keys"):
//! `{server_name, verify_keys: {"ed25519:<id>": {key}}, old_verify_keys: {…}, valid_until_ts,
//! signatures: {<server name>: {"ed25519:<id>": <sig>}}}`, signed by every current key over its
//! canonical JSON without `signatures`, and sent as canonical JSON itself.
//!
//! Signing and serialising per request would put an ed25519 signature on the hot path of the
//! most-fetched federation route. The body is built once and served as shared bytes until half
//! of its validity has passed, so a fetched response is always valid for at least half of
//! `keys.response_lifetime`; only then, or after a key rotation, is it rebuilt (under a lock,
//! once). Retired keys are listed in `old_verify_keys` with their `expired_ts`.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use actix_web::web::Bytes;
use serde_json::json;

use crate::clock::now_ms;
use crate::core::canonical_json;
use crate::federation::signing::{KeyRing, SignatureError};

struct Prepared {
    body: Bytes,
    rebuild_at_ms: i64,
    generation: u64,
}

impl Prepared {
    fn fresh(&self, now: i64, generation: u64) -> bool {
        now < self.rebuild_at_ms && generation == self.generation
    }
}

pub struct KeyServer {
    server_name: String,
    keys: Arc<KeyRing>,
    lifetime_ms: i64,
    prepared: RwLock<Option<Prepared>>,
}

impl KeyServer {
    pub fn new(server_name: &str, keys: Arc<KeyRing>, lifetime: Duration) -> KeyServer {
        KeyServer {
            server_name: server_name.to_owned(),
            keys,
            lifetime_ms: i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX / 2),
            prepared: RwLock::new(None),
        }
    }

    /// The current response body: canonical JSON, signed.
    pub fn response(&self) -> Result<Bytes, SignatureError> {
        let now = now_ms();
        let generation = self.keys.generation();
        if let Ok(guard) = self.prepared.read() {
            if let Some(prepared) = guard.as_ref().filter(|p| p.fresh(now, generation)) {
                return Ok(prepared.body.clone());
            }
        }
        // A poisoned lock only means another thread panicked mid-build; rebuild regardless.
        let mut guard = self.prepared.write().unwrap_or_else(|e| e.into_inner());
        if let Some(prepared) = guard.as_ref().filter(|p| p.fresh(now, generation)) {
            return Ok(prepared.body.clone());
        }
        let body = self.build(now)?;
        *guard = Some(Prepared {
            body: body.clone(),
            rebuild_at_ms: now + self.lifetime_ms / 2,
            generation,
        });
        Ok(body)
    }

    fn build(&self, now: i64) -> Result<Bytes, SignatureError> {
        let key = self.keys.current();
        let old_verify_keys: serde_json::Map<String, serde_json::Value> = self
            .keys
            .retired()
            .into_iter()
            .map(|k| {
                (
                    k.key_id,
                    json!({"key": k.public_key, "expired_ts": k.expired_ts}),
                )
            })
            .collect();
        let mut response = json!({
            "server_name": self.server_name,
            "verify_keys": { key.key_id(): { "key": key.public_b64() } },
            "old_verify_keys": old_verify_keys,
            "valid_until_ts": now + self.lifetime_ms,
        });
        key.sign_json(&self.server_name, &mut response)?;
        Ok(Bytes::from(canonical_json::to_canonical_string(&response)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::signing::{verify_json, RetiredKey, ServerKey};

    fn ring(key: ServerKey) -> Arc<KeyRing> {
        Arc::new(KeyRing::new(
            std::path::Path::new("unused.key"),
            key,
            Vec::new(),
        ))
    }

    #[test]
    fn response_is_signed_canonical_json_and_reused() {
        let keys = ring(ServerKey::generate());
        let key = keys.current();
        let server = KeyServer::new("a.example:8448", keys.clone(), Duration::from_secs(86_400));
        let body = server.response().expect("response");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            canonical_json::to_canonical_string(&value)
                .expect("canonical")
                .as_bytes(),
            &body[..]
        );
        assert_eq!(value["server_name"], "a.example:8448");
        assert_eq!(value["verify_keys"][key.key_id()]["key"], key.public_b64());
        assert_eq!(value["old_verify_keys"], json!({}));
        let valid_until = value["valid_until_ts"].as_i64().expect("ts");
        assert!((valid_until - now_ms() - 86_400_000).abs() < 5_000);
        verify_json(
            &value,
            "a.example:8448",
            &key.key_id(),
            &key.verifying_key(),
        )
        .expect("self-signed");
        // The same bytes until half the lifetime has passed.
        assert_eq!(server.response().expect("again"), body);
    }

    #[test]
    fn an_expired_preparation_is_rebuilt() {
        let keys = ring(ServerKey::generate());
        let server = KeyServer::new("a.example", keys, Duration::from_millis(2));
        let first = server.response().expect("first");
        std::thread::sleep(Duration::from_millis(5));
        assert_ne!(server.response().expect("second"), first);
    }

    #[test]
    fn a_rotation_rebuilds_with_the_old_key_listed() {
        let keys = ring(ServerKey::generate());
        let old = keys.current();
        let server = KeyServer::new("a.example", keys.clone(), Duration::from_secs(86_400));
        let before = server.response().expect("before");
        let retired = RetiredKey {
            key_id: old.key_id(),
            public_key: old.public_b64(),
            expired_ts: 42,
        };
        keys.install(ServerKey::generate(), retired);
        let after: serde_json::Value =
            serde_json::from_slice(&server.response().expect("after")).expect("json");
        assert_ne!(
            serde_json::from_slice::<serde_json::Value>(&before).expect("json"),
            after
        );
        let new = keys.current();
        assert_eq!(after["verify_keys"][new.key_id()]["key"], new.public_b64());
        assert_eq!(
            after["old_verify_keys"][old.key_id()],
            json!({"key": old.public_b64(), "expired_ts": 42})
        );
        // Signed by the current key only.
        verify_json(&after, "a.example", &new.key_id(), &new.verifying_key())
            .expect("signed by the new key");
        assert_eq!(
            after["signatures"]["a.example"]
                .as_object()
                .map(|m| m.len()),
            Some(1)
        );
    }
}
