//! Other servers' actor certificates (DESIGN §4.3–§4.4): fetched from the actor's home
//! server, checked by [`super::checker`], and trusted only inside the cache window their
//! home signed.
//!
//! ```text
//!  actor_cert(fid, serial, at)
//!    negative cache: the home failed lately ─▶ Unreachable (503) / Fenced (403), no fetch
//!    entries of fid (moka, one fetch in flight per actor):
//!      GET <home>/.p2/core/v1/idcert/actor/<fid>   (FencedFetcher: public addresses only)
//!      each entry: chain to the home's root (GET <home>/.p2/core/v1/idcert/server, cached,
//!      refetched once when a signature fails; the root at the certificate's issue time when
//!      the current one did not sign it), the actor profile, the fid asked, the cache
//!      signature by the home's current key
//!    the entry of `serial`, its window open now (else refetch once), not invalidated, the
//!    certificate valid at `at`
//! ```
//! An entry whose window has closed is never used: the next use refetches. Fetch failures
//! are remembered (10 s, doubling to 10 min) so that no name makes this server fetch in a
//! loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::checker::{
    check_actor, check_cache_window, check_root, ActorCert, CacheWindow, RootCert,
};
use crate::clock::Clock;
use crate::core::event::{is_decimal_serial, NewEvent};
use crate::core::ids;
use crate::federation::client::{FencedFetcher, FetchError};

/// Largest answer read from a home server.
const MAX_ANSWER_BYTES: usize = 256 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// At most one forced refetch of a home's root per this time.
const ROOT_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// How long a fetched list of an actor's entries is kept at most (each entry is used only
/// inside its own window, which is at most 12 h).
const ENTRIES_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Why another server's actor certificate is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForeignError {
    /// The home server cannot be reached (now, or lately): try again later.
    #[error("{home} cannot be reached to check the certificate; retry in {retry_after} s")]
    Unreachable { home: String, retry_after: u64 },
    /// This server does not fetch from that name (a non-public address).
    #[error("{0}")]
    Fenced(String),
    /// The certificate is not trusted: unknown, invalidated, expired, badly signed.
    #[error("{0}")]
    Untrusted(String),
}

/// One entry of a home server's answer, checked.
#[derive(Clone, Debug)]
pub struct ForeignEntry {
    pub cert: ActorCert,
    pub window: CacheWindow,
    /// The entry as the home server wrote it, answered unchanged to our own clients.
    pub raw: Value,
}

impl ForeignEntry {
    pub fn invalidated_at(&self) -> Option<i64> {
        self.window.invalidated_at
    }
}

/// An actor's entries as its home answered them.
#[derive(Debug)]
struct ActorEntries {
    entries: Vec<ForeignEntry>,
}

/// A home server's root ID-Certs we have checked: the current one, and older ones by the
/// time they were asked for.
#[derive(Debug)]
struct HomeRoot {
    root: RootCert,
}

struct Negative {
    until: Instant,
    backoff: Duration,
    fenced: Option<String>,
}

pub struct ForeignCerts {
    clock: Arc<Clock>,
    fetcher: FencedFetcher,
    /// `identity_home_fetches_total`, by result.
    fetches: prometheus::IntCounterVec,
    roots: moka::future::Cache<String, Arc<HomeRoot>>,
    /// Roots valid at a past time, by `(home, unix seconds)`.
    past_roots: moka::sync::Cache<(String, i64), Arc<HomeRoot>>,
    actors: moka::future::Cache<String, Arc<ActorEntries>>,
    negative: moka::sync::Cache<String, Arc<Negative>>,
    root_refetched: moka::sync::Cache<String, ()>,
    /// (fid, serial) already recorded as `actor.foreign_idcert_seen`.
    recorded: moka::sync::Cache<(String, String), ()>,
}

impl ForeignCerts {
    pub fn new(
        clock: Arc<Clock>,
        fetcher: FencedFetcher,
        fetches: prometheus::IntCounterVec,
    ) -> ForeignCerts {
        ForeignCerts {
            clock,
            fetcher,
            fetches,
            roots: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            past_roots: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            actors: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ENTRIES_LIFETIME)
                .build(),
            negative: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(MAX_BACKOFF * 2)
                .build(),
            root_refetched: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ROOT_REFETCH_INTERVAL)
                .build(),
            recorded: moka::sync::Cache::builder().max_capacity(1_000_000).build(),
        }
    }

    /// Fetches made so far through the fenced fetcher (tests).
    pub fn fetches(&self) -> u64 {
        self.fetcher.fetches()
    }

    fn refused_lately(&self, home: &str) -> Result<(), ForeignError> {
        if let Some(negative) = self.negative.get(home) {
            let now = Instant::now();
            if now < negative.until {
                return Err(match &negative.fenced {
                    Some(detail) => ForeignError::Fenced(detail.clone()),
                    None => ForeignError::Unreachable {
                        home: home.to_owned(),
                        retry_after: negative.until.duration_since(now).as_secs().max(1),
                    },
                });
            }
        }
        Ok(())
    }

    /// Remembers that `home` failed, and answers the error its callers get.
    fn failed(&self, home: &str, error: FetchError) -> ForeignError {
        let backoff = self
            .negative
            .get(home)
            .map_or(FIRST_BACKOFF, |n| (n.backoff * 2).min(MAX_BACKOFF));
        let fenced = match &error {
            FetchError::Fenced { detail, .. } => {
                Some(format!("this server does not fetch from {home}: {detail}"))
            }
            _ => None,
        };
        tracing::info!(%home, %error, backoff_s = backoff.as_secs(), "a home server could not be fetched from");
        self.negative.insert(
            home.to_owned(),
            Arc::new(Negative {
                until: Instant::now() + backoff,
                backoff,
                fenced: fenced.clone(),
            }),
        );
        match fenced {
            Some(detail) => ForeignError::Fenced(detail),
            None => ForeignError::Unreachable {
                home: home.to_owned(),
                retry_after: backoff.as_secs(),
            },
        }
    }

    /// `GET <home><path>`: a 404 or another refusal is the home's answer (the certificate is
    /// not trusted); anything else that fails is the home being unreachable.
    async fn get(&self, home: &str, path: &str) -> Result<Vec<u8>, ForeignError> {
        self.refused_lately(home)?;
        let answer = self.fetcher.get(home, path, MAX_ANSWER_BYTES).await;
        let result = match &answer {
            Ok(_) => "ok",
            Err(FetchError::Status { status, .. }) if status.is_client_error() => "untrusted",
            Err(FetchError::Fenced { .. }) => "refused",
            Err(_) => "unreachable",
        };
        self.fetches.with_label_values(&[result]).inc();
        match answer {
            Ok(body) => {
                self.negative.invalidate(home);
                Ok(body.to_vec())
            }
            Err(FetchError::Status { url, status }) if status.is_client_error() => {
                Err(ForeignError::Untrusted(format!("{url} answered {status}")))
            }
            Err(FetchError::Busy) => Err(ForeignError::Unreachable {
                home: home.to_owned(),
                retry_after: 1,
            }),
            Err(error) => Err(self.failed(home, error)),
        }
    }

    /// The home's current root, checked (cached; one fetch in flight per home).
    async fn root(&self, home: &str) -> Result<Arc<HomeRoot>, ForeignError> {
        let now = self.clock.now_secs();
        let cached = self.roots.get(home).await;
        if let Some(root) = cached.filter(|r| r.root.not_before <= now && now <= r.root.not_after) {
            return Ok(root);
        }
        self.roots.invalidate(home).await;
        self.roots
            .try_get_with(home.to_owned(), async {
                let body = self.get(home, "/.p2/core/v1/idcert/server").await?;
                let pem = String::from_utf8(body)
                    .map_err(|_| ForeignError::Untrusted(format!("{home}'s root is not text")))?;
                let root = check_root(&pem, home, now)
                    .map_err(|e| ForeignError::Untrusted(format!("{home}'s root ID-Cert: {e}")))?;
                Ok(Arc::new(HomeRoot { root }))
            })
            .await
            .map_err(|e: Arc<ForeignError>| (*e).clone())
    }

    /// The home's root that was valid at `at` (unix seconds).
    async fn root_at(&self, home: &str, at: i64) -> Result<Arc<HomeRoot>, ForeignError> {
        let key = (home.to_owned(), at);
        if let Some(root) = self.past_roots.get(&key) {
            return Ok(root);
        }
        let body = self
            .get(home, &format!("/.p2/core/v1/idcert/server?timestamp={at}"))
            .await?;
        let pem = String::from_utf8(body)
            .map_err(|_| ForeignError::Untrusted(format!("{home}'s root is not text")))?;
        let root = check_root(&pem, home, at)
            .map_err(|e| ForeignError::Untrusted(format!("{home}'s root ID-Cert: {e}")))?;
        let root = Arc::new(HomeRoot { root });
        self.past_roots.insert(key, root.clone());
        Ok(root)
    }

    /// Drops the cached current root of `home`, at most once a minute.
    async fn refetch_root(&self, home: &str) -> bool {
        if self.root_refetched.contains_key(home) {
            return false;
        }
        self.root_refetched.insert(home.to_owned(), ());
        self.roots.invalidate(home).await;
        true
    }

    /// Checks one entry of `fid`'s answer: the certificate chains to the home's root (the
    /// one of its issue time if the current one did not sign it), names `fid`, and the cache
    /// window is signed by the home's current key.
    async fn check_entry(
        &self,
        home: &str,
        fid: &str,
        raw: &Value,
        current: &RootCert,
    ) -> Result<ForeignEntry, ForeignError> {
        let untrusted = |m: String| ForeignError::Untrusted(m);
        let text = |key: &str| raw.get(key).and_then(Value::as_str);
        let number = |key: &str| raw.get(key).and_then(Value::as_i64);
        let pem = text("id_cert").ok_or_else(|| untrusted("an entry has no id_cert".into()))?;
        let serial = text("serial")
            .filter(|s| is_decimal_serial(s))
            .ok_or_else(|| untrusted("an entry has no decimal serial".into()))?;
        let window = CacheWindow {
            serial: serial.to_owned(),
            not_before: number("cache_not_valid_before")
                .ok_or_else(|| untrusted("an entry has no cache window".into()))?,
            not_after: number("cache_not_valid_after")
                .ok_or_else(|| untrusted("an entry has no cache window".into()))?,
            invalidated_at: raw.get("invalidated_at").and_then(Value::as_i64),
            signature: text("cache_signature")
                .ok_or_else(|| untrusted("an entry has no cache signature".into()))?
                .to_owned(),
        };
        // Chain first with the current root; then with the root of the issue time.
        let peek = super::checker::subject_key(pem)
            .and_then(|_| x509_not_before(pem))
            .ok_or_else(|| untrusted("an entry's id_cert is not a certificate".into()))?;
        let cert = match check_actor(pem, current, peek) {
            Ok(cert) => cert,
            Err(first) => {
                let past = self.root_at(home, peek).await?;
                check_actor(pem, &past.root, peek)
                    .map_err(|_| untrusted(format!("{fid}'s certificate {serial}: {first}")))?
            }
        };
        if cert.fid != fid {
            return Err(untrusted(format!(
                "{home} answered a certificate of {} for {fid}",
                cert.fid
            )));
        }
        if cert.serial != serial {
            return Err(untrusted(format!(
                "the entry says serial {serial}, its certificate {}",
                cert.serial
            )));
        }
        check_cache_window(&window, &current.key)
            .map_err(|e| untrusted(format!("{fid}'s certificate {serial}: {e}")))?;
        Ok(ForeignEntry {
            cert,
            window,
            raw: raw.clone(),
        })
    }

    /// Fetches and checks `fid`'s entries.
    async fn fetch_entries(&self, fid: &str, home: &str) -> Result<ActorEntries, ForeignError> {
        let body = self
            .get(home, &format!("/.p2/core/v1/idcert/actor/{fid}"))
            .await?;
        let answer: Vec<Value> = serde_json::from_slice(&body).map_err(|_| {
            ForeignError::Untrusted(format!("{home} did not answer a list of certificates"))
        })?;
        let mut root = self.root(home).await?;
        let mut entries = Vec::new();
        let mut retried = false;
        for raw in answer.iter().take(1000) {
            match self.check_entry(home, fid, raw, &root.root).await {
                Ok(entry) => entries.push(entry),
                // A cache signature by a key we do not hold yet: the home may have rotated.
                Err(ForeignError::Untrusted(reason))
                    if !retried && self.refetch_root(home).await =>
                {
                    tracing::debug!(%fid, %reason, "refetching the home's root once");
                    retried = true;
                    root = self.root(home).await?;
                    if let Ok(entry) = self.check_entry(home, fid, raw, &root.root).await {
                        entries.push(entry);
                    }
                }
                Err(ForeignError::Untrusted(reason)) => {
                    tracing::debug!(%fid, %reason, "an entry of the home's answer is not trusted");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(ActorEntries { entries })
    }

    /// `fid`'s entries: cached, else fetched (one fetch in flight per actor). `fresh` drops
    /// the cached ones first.
    async fn entries(&self, fid: &str, fresh: bool) -> Result<Arc<ActorEntries>, ForeignError> {
        let (_, home) = ids::parse_fid(fid)
            .ok_or_else(|| ForeignError::Untrusted(format!("{fid:?} is not a federation id")))?;
        if fresh {
            self.actors.invalidate(fid).await;
        }
        self.refused_lately(home)?;
        self.actors
            .try_get_with(fid.to_owned(), async {
                self.fetch_entries(fid, home).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<ForeignError>| (*e).clone())
    }

    /// The certificate `serial` of `fid`, trusted now: its entry's window is open, it is not
    /// invalidated at or before `signed_at` (any invalidation when `None`), and it is valid
    /// at `at` (unix seconds).
    pub async fn actor_cert(
        &self,
        fid: &str,
        serial: &str,
        at: i64,
        signed_at: Option<i64>,
    ) -> Result<ForeignEntry, ForeignError> {
        let now = self.clock.now_secs();
        let mut fresh = false;
        let entry = loop {
            let entries = self.entries(fid, fresh).await?;
            let found = entries
                .entries
                .iter()
                .find(|e| e.cert.serial == serial)
                .cloned();
            match found {
                Some(entry) if entry.window.open_at(now) => break entry,
                // Past its window, or unknown to a list fetched earlier: ask the home again.
                _ if !fresh => fresh = true,
                Some(_) => {
                    return Err(ForeignError::Untrusted(format!(
                        "{fid}'s certificate {serial} has no open cache window"
                    )))
                }
                None => {
                    return Err(ForeignError::Untrusted(format!(
                        "{fid}'s home server has no valid certificate {serial}"
                    )))
                }
            }
        };
        if let Some(invalidated_at) = entry.invalidated_at() {
            if signed_at.is_none_or(|t| t >= invalidated_at) {
                return Err(ForeignError::Untrusted(format!(
                    "{fid}'s certificate {serial} was invalidated at {invalidated_at}"
                )));
            }
        }
        if !entry.cert.valid_at(at) {
            return Err(ForeignError::Untrusted(format!(
                "{fid}'s certificate {serial} is valid from {} to {}, not at {at}",
                entry.cert.not_before, entry.cert.not_after
            )));
        }
        Ok(entry)
    }

    /// Checks a certificate a client hands over (`PUT …/session/idcert/extern`): it must
    /// chain to its home's root and be one its home answers for the actor now.
    pub async fn presented(&self, pem: &str) -> Result<ForeignEntry, ForeignError> {
        let now = self.clock.now_secs();
        let fid = super::checker::subject_fid(pem)
            .ok_or_else(|| ForeignError::Untrusted("the body is not an actor ID-Cert".into()))?;
        let (_, home) = ids::parse_fid(&fid)
            .ok_or_else(|| ForeignError::Untrusted("the body is not an actor ID-Cert".into()))?;
        let root = self.root(home).await?;
        let cert = check_actor(pem, &root.root, now)
            .map_err(|e| ForeignError::Untrusted(e.to_string()))?;
        self.actor_cert(&cert.fid, &cert.serial, now, None).await
    }

    /// The entries of `fid` we hold from its home (fetched if needed), unchanged, whose window
    /// is open now, filtered like our own answers.
    pub async fn answer(
        &self,
        fid: &str,
        at: Option<i64>,
        session_id: Option<&str>,
    ) -> Result<Vec<Value>, ForeignError> {
        let now = self.clock.now_secs();
        let mut entries = self.entries(fid, false).await?;
        if entries.entries.iter().any(|e| !e.window.open_at(now)) {
            entries = self.entries(fid, true).await?;
        }
        Ok(entries
            .entries
            .iter()
            .filter(|e| e.window.open_at(now))
            .filter(|e| match at {
                Some(at) => e.cert.valid_at(at),
                None => e.cert.not_after >= now,
            })
            .filter(|e| session_id.is_none_or(|s| e.cert.session_id == s))
            .map(|e| e.raw.clone())
            .collect())
    }

    /// The `actor.foreign_idcert_seen` event of `entry`, unless it is recorded already.
    pub fn seen_event(&self, server_name: &str, entry: &ForeignEntry) -> Option<NewEvent> {
        let cert = &entry.cert;
        if self
            .recorded
            .contains_key(&(cert.fid.clone(), cert.serial.clone()))
        {
            return None;
        }
        let id = hex::encode(&Sha256::digest(format!("{}\n{}", cert.fid, cert.serial))[..20]);
        Some(NewEvent {
            event_id: format!("foreign-cert:{id}"),
            origin: server_name.to_owned(),
            event_type: "actor.foreign_idcert_seen".into(),
            sender: Some(cert.fid.clone()),
            channel: None,
            origin_ts: self.clock.now_ms(),
            content: json!({
                "fid": cert.fid,
                "serial": cert.serial,
                "session_id": cert.session_id,
                "fingerprint": cert.fingerprint,
                "not_before": cert.not_before,
                "not_after": cert.not_after,
                "pem": cert.pem,
            }),
        })
    }

    /// Notes that `entry` is recorded (after its event committed).
    pub fn recorded(&self, entry: &ForeignEntry) {
        self.recorded
            .insert((entry.cert.fid.clone(), entry.cert.serial.clone()), ());
    }
}

/// The notBefore of a PEM certificate, unchecked (to pick the root of its issue time).
fn x509_not_before(pem: &str) -> Option<i64> {
    use x509_cert::der::DecodePem;
    let cert = x509_cert::Certificate::from_pem(pem.trim()).ok()?;
    i64::try_from(
        cert.tbs_certificate
            .validity
            .not_before
            .to_unix_duration()
            .as_secs(),
    )
    .ok()
}
