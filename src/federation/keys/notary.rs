//! The notary: other servers' keys, fetched, verified, cached, and co-signed by us.
//!
//! ```text
//!  query(server, minimum_valid_until_ts)
//!    our own name ─────────────────────────────▶ our key response
//!    cached and fresh (before half its remaining
//!    validity, and valid past the minimum) ─────▶ cached response
//!    else fetch <server>/_matrix/key/v2/server
//!      verified (name matches, every verify key
//!      self-signs) ──▶ log server.keys_fetched ─▶ new response
//!      unreachable or invalid ──▶ cached (stale) response, or nothing
//!  then co-sign with our current key
//! ```
//!
//! The cache is the `remote_server_keys` projection: every verified response is a log event,
//! so the cache survives restarts and replay, and the log keeps the history of what each
//! server's keys were and when we saw them. A response that fails verification is never
//! cached. Servers we know nothing about are omitted from answers.
//!
//! In front of it, an in-memory cache (moka) holds each server's answer already co-signed and
//! serialised, so a cache hit does no database read and no signature; an entry is used only
//! while the response is fresh and our signing key is the one that co-signed it. A failed
//! fetch is not retried for [`RETRY_AFTER_FAILURE`]: meanwhile the stale response (or nothing)
//! is served, so an unreachable server does not cost a fetch per query.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::clock::now_ms;
use crate::core::canonical_json;
use crate::core::event::NewEvent;
use crate::federation::client::OutboundClient;
use crate::federation::keys::server::KeyServer;
use crate::federation::signing::{unb64, verify_json, KeyRing};
use crate::store::{EventLogHandle, Store};
use crate::telemetry::Metrics;

/// Why a server's key response is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InvalidKeyResponse {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("server_name is {found:?}, not {expected:?}")]
    WrongServer { expected: String, found: String },
    #[error("valid_until_ts is missing or not an integer")]
    NoValidity,
    #[error("verify_keys is missing or empty")]
    NoKeys,
    #[error("verify key {0} is not an ed25519 key of 32 bytes in base64")]
    BadKey(String),
    #[error("verify key {key_id} does not sign the response: {reason}")]
    BadSignature { key_id: String, reason: String },
}

/// Checks a server's own `/_matrix/key/v2/server` response: it names `server`, has a
/// validity, and carries a valid signature by every key in `verify_keys`. Answers the
/// response's `valid_until_ts`.
pub fn verify_key_response(server: &str, response: &Value) -> Result<i64, InvalidKeyResponse> {
    let object = response
        .as_object()
        .ok_or(InvalidKeyResponse::NotAnObject)?;
    let found = object
        .get("server_name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if found != server {
        return Err(InvalidKeyResponse::WrongServer {
            expected: server.to_owned(),
            found: found.to_owned(),
        });
    }
    let valid_until = object
        .get("valid_until_ts")
        .and_then(Value::as_i64)
        .ok_or(InvalidKeyResponse::NoValidity)?;
    let keys = object
        .get("verify_keys")
        .and_then(Value::as_object)
        .filter(|k| !k.is_empty())
        .ok_or(InvalidKeyResponse::NoKeys)?;
    for (key_id, key) in keys {
        let bytes: [u8; 32] = key
            .get("key")
            .and_then(Value::as_str)
            .and_then(unb64)
            .and_then(|b| b.try_into().ok())
            .filter(|_| key_id.starts_with("ed25519:"))
            .ok_or_else(|| InvalidKeyResponse::BadKey(key_id.clone()))?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| InvalidKeyResponse::BadKey(key_id.clone()))?;
        verify_json(response, server, key_id, &key).map_err(|e| {
            InvalidKeyResponse::BadSignature {
                key_id: key_id.clone(),
                reason: e.to_string(),
            }
        })?;
    }
    Ok(valid_until)
}

/// How long a failed fetch of a server is not retried.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(30);
/// Servers whose co-signed answer is kept in memory.
const HOT_CAPACITY: u64 = 10_000;

pub struct Notary {
    server_name: String,
    keys: Arc<KeyRing>,
    store: Store,
    log: EventLogHandle,
    metrics: Arc<Metrics>,
    /// Co-signed answers, ready to send.
    hot: moka::sync::Cache<String, Arc<Hot>>,
    /// Servers whose last fetch failed, until they may be tried again.
    failed: moka::sync::Cache<String, ()>,
}

/// A co-signed answer and what decides whether it may still be served.
struct Hot {
    json: Arc<str>,
    valid_until_ts: i64,
    fetched_ts: i64,
    key_generation: u64,
}

/// A cached response and the times that decide whether it is fresh.
struct Cached {
    response: Value,
    valid_until_ts: i64,
    fetched_ts: i64,
}

impl Cached {
    /// Fresh until half of the validity it had when fetched has passed, and only if it is
    /// valid at least until `minimum`.
    fn fresh(&self, now: i64, minimum: Option<i64>) -> bool {
        let half_life = self.fetched_ts + (self.valid_until_ts - self.fetched_ts) / 2;
        now < half_life && minimum.is_none_or(|m| self.valid_until_ts >= m)
    }
}

impl Notary {
    pub fn new(
        server_name: &str,
        keys: Arc<KeyRing>,
        store: Store,
        log: EventLogHandle,
        metrics: Arc<Metrics>,
    ) -> Notary {
        Notary {
            server_name: server_name.to_owned(),
            keys,
            store,
            log,
            metrics,
            hot: moka::sync::Cache::new(HOT_CAPACITY),
            failed: moka::sync::Cache::builder()
                .max_capacity(HOT_CAPACITY)
                .time_to_live(RETRY_AFTER_FAILURE)
                .build(),
        }
    }

    /// The co-signed key response of `server` as canonical JSON, or `None` if we know
    /// nothing about it.
    pub async fn query(
        &self,
        client: &OutboundClient,
        own: &KeyServer,
        server: &str,
        minimum_valid_until_ts: Option<i64>,
    ) -> Option<Arc<str>> {
        if server == self.server_name {
            return own
                .response()
                .ok()
                .and_then(|body| std::str::from_utf8(&body).ok().map(Arc::from));
        }
        let now = now_ms();
        let generation = self.keys.generation();
        if let Some(hot) = self.hot.get(server) {
            let cached = Cached {
                response: Value::Null,
                valid_until_ts: hot.valid_until_ts,
                fetched_ts: hot.fetched_ts,
            };
            if hot.key_generation == generation && cached.fresh(now, minimum_valid_until_ts) {
                self.metrics
                    .notary_requests
                    .with_label_values(&["cache_hit"])
                    .inc();
                return Some(hot.json.clone());
            }
        }
        let cached = self.cached(server).await;
        let (response, valid_until_ts, fetched_ts) = match cached {
            Some(c) if c.fresh(now, minimum_valid_until_ts) => {
                self.metrics
                    .notary_requests
                    .with_label_values(&["cache_hit"])
                    .inc();
                (c.response, c.valid_until_ts, c.fetched_ts)
            }
            stale => match self.fetch_unless_failing(client, server, now).await {
                Some((fresh, valid_until_ts)) => {
                    self.metrics
                        .notary_requests
                        .with_label_values(&["fetched"])
                        .inc();
                    (fresh, valid_until_ts, now)
                }
                None => {
                    let outcome = if stale.is_some() { "stale" } else { "unknown" };
                    self.metrics
                        .notary_requests
                        .with_label_values(&[outcome])
                        .inc();
                    let stale = stale?;
                    // A stale answer is not kept hot: it must not outlive the next retry.
                    return self.cosign(stale.response).map(Arc::from);
                }
            },
        };
        let json: Arc<str> = Arc::from(self.cosign(response)?);
        let hot = Hot {
            json: json.clone(),
            valid_until_ts,
            fetched_ts,
            key_generation: generation,
        };
        self.hot.insert(server.to_owned(), Arc::new(hot));
        Some(json)
    }

    async fn fetch_unless_failing(
        &self,
        client: &OutboundClient,
        server: &str,
        now: i64,
    ) -> Option<(Value, i64)> {
        if self.failed.contains_key(server) {
            return None;
        }
        let fetched = self.fetch(client, server, now).await;
        if fetched.is_none() {
            self.failed.insert(server.to_owned(), ());
        }
        fetched
    }

    async fn cached(&self, server: &str) -> Option<Cached> {
        match self.store.remote_server_keys(server).await {
            Ok(Some(row)) => serde_json::from_str(&row.response)
                .ok()
                .map(|response| Cached {
                    response,
                    valid_until_ts: row.valid_until_ts,
                    fetched_ts: row.fetched_ts,
                }),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(%error, server, "cannot read the notary cache");
                None
            }
        }
    }

    /// Fetches, verifies and records `server`'s keys; `None` when that fails.
    async fn fetch(&self, client: &OutboundClient, server: &str, now: i64) -> Option<(Value, i64)> {
        let fetched = client.get(server, "/_matrix/key/v2/server").await;
        let response: Value = match fetched.map(|body| serde_json::from_slice(&body)) {
            Ok(Ok(value)) => value,
            Ok(Err(error)) => {
                self.metrics
                    .notary_fetches
                    .with_label_values(&["invalid"])
                    .inc();
                tracing::warn!(server, %error, "key response is not JSON");
                return None;
            }
            Err(error) => {
                self.metrics
                    .notary_fetches
                    .with_label_values(&["unreachable"])
                    .inc();
                tracing::warn!(server, %error, "cannot fetch keys");
                return None;
            }
        };
        let valid_until_ts = match verify_key_response(server, &response) {
            Ok(valid_until) => valid_until,
            Err(error) => {
                self.metrics
                    .notary_fetches
                    .with_label_values(&["invalid"])
                    .inc();
                tracing::warn!(server, %error, "refusing a key response");
                return None;
            }
        };
        self.metrics.notary_fetches.with_label_values(&["ok"]).inc();
        self.record(server, &response, valid_until_ts, now).await;
        Some((response, valid_until_ts))
    }

    /// Appends the verified response to the log (which updates the cache projection).
    async fn record(&self, server: &str, response: &Value, valid_until_ts: i64, fetched_ts: i64) {
        let digest = canonical_json::to_canonical_string(response)
            .map(|text| hex::encode(Sha256::digest(format!("{server}\n{text}").as_bytes())))
            .unwrap_or_default();
        let event = NewEvent {
            event_id: format!("keys-fetched:{}", &digest[..digest.len().min(32)]),
            origin: self.server_name.clone(),
            event_type: "server.keys_fetched".into(),
            sender: None,
            channel: None,
            origin_ts: fetched_ts,
            content: json!({
                "server_name": server,
                "response": response,
                "valid_until_ts": valid_until_ts,
                "fetched_ts": fetched_ts,
            }),
        };
        if let Err(error) = self.log.append(vec![event]).await {
            // The answer is still good; only the cache misses this response.
            tracing::error!(%error, server, "cannot record fetched keys");
        }
    }

    /// Adds our signature and serialises as canonical JSON.
    fn cosign(&self, mut response: Value) -> Option<String> {
        let signed = self
            .keys
            .current()
            .sign_json(&self.server_name, &mut response)
            .and_then(|()| Ok(canonical_json::to_canonical_string(&response)?));
        match signed {
            Ok(json) => Some(json),
            Err(error) => {
                tracing::error!(%error, "cannot co-sign a key response");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::signing::ServerKey;

    fn signed(server: &str, key: &ServerKey) -> Value {
        let mut response = json!({
            "server_name": server,
            "verify_keys": { key.key_id(): { "key": key.public_b64() } },
            "old_verify_keys": {},
            "valid_until_ts": 1_000,
        });
        key.sign_json(server, &mut response).expect("sign");
        response
    }

    #[test]
    fn accepts_a_self_signed_response() {
        let key = ServerKey::generate();
        assert_eq!(
            verify_key_response("b.example", &signed("b.example", &key)),
            Ok(1_000)
        );
    }

    #[test]
    fn refuses_what_does_not_verify() {
        let key = ServerKey::generate();
        let good = signed("b.example", &key);
        assert!(matches!(
            verify_key_response("c.example", &good),
            Err(InvalidKeyResponse::WrongServer { .. })
        ));
        let mut tampered = good.clone();
        tampered["valid_until_ts"] = json!(2_000);
        assert!(matches!(
            verify_key_response("b.example", &tampered),
            Err(InvalidKeyResponse::BadSignature { .. })
        ));
        let mut unsigned = good.clone();
        unsigned
            .as_object_mut()
            .expect("object")
            .remove("signatures");
        assert!(matches!(
            verify_key_response("b.example", &unsigned),
            Err(InvalidKeyResponse::BadSignature { .. })
        ));
        let mut no_keys = good.clone();
        no_keys["verify_keys"] = json!({});
        assert_eq!(
            verify_key_response("b.example", &no_keys),
            Err(InvalidKeyResponse::NoKeys)
        );
        let mut no_validity = good;
        no_validity
            .as_object_mut()
            .expect("object")
            .remove("valid_until_ts");
        assert_eq!(
            verify_key_response("b.example", &no_validity),
            Err(InvalidKeyResponse::NoValidity)
        );
    }

    #[test]
    fn freshness_is_half_the_validity_and_the_minimum() {
        let cached = Cached {
            response: json!({}),
            valid_until_ts: 1_000,
            fetched_ts: 0,
        };
        assert!(cached.fresh(499, None));
        assert!(!cached.fresh(500, None));
        assert!(cached.fresh(100, Some(1_000)));
        assert!(!cached.fresh(100, Some(1_001)));
    }
}
