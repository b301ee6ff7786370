//! The key resolver: other servers' verify keys for checking their signatures.
//!
//! ```text
//!  key(server, key_id, signed_at)
//!    cache (moka, one entry per server, expires at valid_until_ts capped at 7 days)
//!      miss ──▶ one fetch in flight per server (single-flight):
//!                 the server's /_matrix/key/v2/server, self-signatures verified
//!                 else each trusted notary's /_matrix/key/v2/query/<server>, the notary's
//!                 signature checked against its pinned keys and the server's own too
//!               failure ──▶ negative entry: no new attempt for 10 s, doubling to 10 min
//!    key_id unknown ──▶ one refetch (at most once a minute per server), then give up
//!    old key ──▶ valid only for signatures dated before its expired_ts
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use crate::clock::now_ms;
use crate::config::TrustedNotary;
use crate::federation::client::OutboundClient;
use crate::federation::keys::notary::verify_key_response;
use crate::federation::signing::{unb64, verify_json};

/// Longest time a fetched key set is trusted, whatever its `valid_until_ts` says.
pub const MAX_KEY_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// At most one refetch per server in this time after an unknown key id.
const REFETCH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeyLookupError {
    #[error("the keys of {0} cannot be fetched")]
    Unreachable(String),
    #[error("{server} has no key {key_id}")]
    UnknownKey { server: String, key_id: String },
    #[error(
        "key {key_id} of {server} expired at {expired_ts}, before the signature's time {signed_at}"
    )]
    Expired {
        server: String,
        key_id: String,
        expired_ts: i64,
        signed_at: i64,
    },
}

/// One server's verify keys, current and old.
#[derive(Debug)]
pub struct KeySet {
    keys: HashMap<String, (VerifyingKey, Option<i64>)>,
    expires_at: Instant,
}

impl KeySet {
    /// Reads `verify_keys` and `old_verify_keys` of a verified key response.
    fn from_response(response: &Value, valid_until_ts: i64) -> KeySet {
        let mut keys = HashMap::new();
        for (field, old) in [("verify_keys", false), ("old_verify_keys", true)] {
            for (key_id, entry) in response
                .get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let key = entry
                    .get("key")
                    .and_then(Value::as_str)
                    .and_then(unb64)
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .and_then(|b| VerifyingKey::from_bytes(&b).ok());
                let expired = if old {
                    entry.get("expired_ts").and_then(Value::as_i64)
                } else {
                    None
                };
                // An old key without expired_ts cannot be dated: leave it out.
                if let (Some(key), true) = (key, !old || expired.is_some()) {
                    keys.insert(key_id.clone(), (key, expired));
                }
            }
        }
        let remaining =
            Duration::from_millis(u64::try_from(valid_until_ts - now_ms()).unwrap_or(0));
        KeySet {
            keys,
            expires_at: Instant::now() + remaining.min(MAX_KEY_LIFETIME),
        }
    }
}

struct Negative {
    until: Instant,
    backoff: Duration,
}

pub struct KeyResolver {
    cache: moka::future::Cache<String, Arc<KeySet>>,
    negative: moka::sync::Cache<String, Arc<Negative>>,
    refetched: moka::sync::Cache<String, ()>,
    notaries: Vec<TrustedNotary>,
    fetches: AtomicU64,
}

/// Expires each key set when its (capped) validity ends.
struct UntilValid;

impl moka::Expiry<String, Arc<KeySet>> for UntilValid {
    fn expire_after_create(&self, _: &String, set: &Arc<KeySet>, now: Instant) -> Option<Duration> {
        Some(set.expires_at.saturating_duration_since(now))
    }
}

impl KeyResolver {
    pub fn new(notaries: Vec<TrustedNotary>) -> KeyResolver {
        KeyResolver {
            cache: moka::future::Cache::builder()
                .max_capacity(100_000)
                .expire_after(UntilValid)
                .build(),
            negative: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(MAX_BACKOFF * 2)
                .build(),
            refetched: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(REFETCH_INTERVAL)
                .build(),
            notaries,
            fetches: AtomicU64::new(0),
        }
    }

    /// Fetches started so far (for metrics and tests).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// The key `key_id` of `server`, valid for a signature made at `signed_at` (ms).
    pub async fn key(
        &self,
        client: &OutboundClient,
        server: &str,
        key_id: &str,
        signed_at: i64,
    ) -> Result<VerifyingKey, KeyLookupError> {
        let set = self.key_set(client, server).await?;
        match pick(&set, server, key_id, signed_at) {
            Err(KeyLookupError::UnknownKey { .. }) if !self.refetched.contains_key(server) => {
                self.refetched.insert(server.to_owned(), ());
                self.cache.invalidate(server).await;
                pick(
                    &*self.key_set(client, server).await?,
                    server,
                    key_id,
                    signed_at,
                )
            }
            other => other,
        }
    }

    /// Every current verify key of `server` (`verify_keys`, not the expired old ones), for
    /// signatures that name their key some other way than by Matrix key id (a checkpoint
    /// note's key ID, DESIGN §2.5). Fetched and cached like [`KeyResolver::key`].
    pub async fn current_keys(
        &self,
        client: &OutboundClient,
        server: &str,
    ) -> Result<Vec<VerifyingKey>, KeyLookupError> {
        let set = self.key_set(client, server).await?;
        Ok(set
            .keys
            .values()
            .filter(|(_, expired)| expired.is_none())
            .map(|(key, _)| *key)
            .collect())
    }

    /// After a signature failed with a cached key: drop the cached set so the next lookup
    /// fetches again, at most once per [`REFETCH_INTERVAL`] per server.
    pub async fn signature_failed(&self, server: &str) {
        if !self.refetched.contains_key(server) {
            self.refetched.insert(server.to_owned(), ());
            self.cache.invalidate(server).await;
        }
    }

    async fn key_set(
        &self,
        client: &OutboundClient,
        server: &str,
    ) -> Result<Arc<KeySet>, KeyLookupError> {
        if let Some(negative) = self.negative.get(server) {
            if Instant::now() < negative.until {
                return Err(KeyLookupError::Unreachable(server.to_owned()));
            }
        }
        // The init future runs once per flight, so a failure is counted once, however many
        // lookups were waiting on it.
        let fetched = self
            .cache
            .try_get_with(server.to_owned(), async {
                self.fetches.fetch_add(1, Ordering::Relaxed);
                match self.fetch(client, server).await {
                    Some(set) => {
                        self.negative.invalidate(server);
                        Ok(Arc::new(set))
                    }
                    None => {
                        let backoff = self
                            .negative
                            .get(server)
                            .map_or(FIRST_BACKOFF, |n| (n.backoff * 2).min(MAX_BACKOFF));
                        let negative = Negative {
                            until: Instant::now() + backoff,
                            backoff,
                        };
                        self.negative.insert(server.to_owned(), Arc::new(negative));
                        Err(())
                    }
                }
            })
            .await;
        fetched.map_err(|_: Arc<()>| KeyLookupError::Unreachable(server.to_owned()))
    }

    /// The server itself first, then each trusted notary.
    async fn fetch(&self, client: &OutboundClient, server: &str) -> Option<KeySet> {
        match client.get(server, "/_matrix/key/v2/server").await {
            Ok(body) => {
                let response: Option<Value> = serde_json::from_slice(&body).ok();
                if let Some(set) = response.and_then(|r| {
                    verify_key_response(server, &r)
                        .ok()
                        .map(|v| KeySet::from_response(&r, v))
                }) {
                    return Some(set);
                }
                tracing::warn!(server, "the server's key response does not verify");
            }
            Err(error) => {
                tracing::debug!(server, %error, "cannot fetch keys from the server itself")
            }
        }
        for notary in &self.notaries {
            if let Some(set) = self.fetch_through(client, notary, server).await {
                return Some(set);
            }
        }
        None
    }

    async fn fetch_through(
        &self,
        client: &OutboundClient,
        notary: &TrustedNotary,
        server: &str,
    ) -> Option<KeySet> {
        let body = client
            .get(
                &notary.server_name,
                &format!("/_matrix/key/v2/query/{server}"),
            )
            .await
            .map_err(
                |error| tracing::debug!(notary = %notary.server_name, %error, "notary unreachable"),
            )
            .ok()?;
        let answer: Value = serde_json::from_slice(&body).ok()?;
        answer
            .get("server_keys")?
            .as_array()?
            .iter()
            .find_map(|response| {
                let notarised = notary.verify_keys.iter().any(|(key_id, key)| {
                    let key = unb64(key)
                        .and_then(|b| <[u8; 32]>::try_from(b).ok())
                        .and_then(|b| VerifyingKey::from_bytes(&b).ok());
                    key.is_some_and(|key| {
                        verify_json(response, &notary.server_name, key_id, &key).is_ok()
                    })
                });
                let valid_until = verify_key_response(server, response).ok()?;
                notarised.then(|| KeySet::from_response(response, valid_until))
            })
    }
}

fn pick(
    set: &KeySet,
    server: &str,
    key_id: &str,
    signed_at: i64,
) -> Result<VerifyingKey, KeyLookupError> {
    match set.keys.get(key_id) {
        None => Err(KeyLookupError::UnknownKey {
            server: server.to_owned(),
            key_id: key_id.to_owned(),
        }),
        Some((key, None)) => Ok(*key),
        Some((key, Some(expired_ts))) if signed_at < *expired_ts => Ok(*key),
        Some((_, Some(expired_ts))) => Err(KeyLookupError::Expired {
            server: server.to_owned(),
            key_id: key_id.to_owned(),
            expired_ts: *expired_ts,
            signed_at,
        }),
    }
}
