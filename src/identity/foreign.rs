//! Other servers' actor certificates (DESIGN §4.3–§4.4): fetched from the actor's home
//! server, checked by [`super::checker`], and trusted only inside the cache window their
//! home signed.
//!
//! ```text
//!  actor_cert(fid, serial, at)
//!    entries of fid: cached (moka, weighed in bytes), else fetched, one fetch in flight per
//!    actor, unless the home (or this very answer) failed lately:
//!      GET <home>/.p2/core/v1/idcert/actor/<fid>   (FencedFetcher: public addresses only)
//!      each entry (at most 256): chained to the home's root (GET …/idcert/server, cached,
//!      refetched at most once a minute when a cache signature fails; at most one root of an
//!      earlier time per answer, for certificates issued before a rotation), the actor
//!      profile, the fid asked, the cache signature by the home's current key
//!    the entry of `serial`, its window open now (else refetch once), not invalidated, the
//!    certificate valid at `at`
//! ```
//! An entry whose window has closed is never used: the next use refetches. A window that
//! opens a little in our future (the home's clock runs ahead) is accepted within the replay
//! window. What a home answers decides only when it is an answer about the certificate (404,
//! an invalidation, a bad signature): those are
//! [`ForeignError::Untrusted`]. Anything that may pass (no connection, a timeout, 5xx, 429,
//! a redirect, an unreadable or oversized answer) is [`ForeignError::Unreachable`]: the
//! caller answers 503
//! and nothing ends. Failures are remembered (10 s, doubling to 10 min), per home or per
//! answer, so that no request makes this server fetch in a loop; a refresh replaces cached
//! entries only once it has new ones.
//!
//! What is cached here comes from other servers, not from our log, so each node of a cluster
//! keeps its own without going stale through another node's change. The one exception is the
//! set of certificates already recorded in the log, which follows the log
//! ([`ForeignCerts::apply`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::checker::{
    check_actor, check_cache_window, check_root, ActorCert, CacheWindow, RootCert,
};
use crate::clock::Clock;
use crate::core::event::{is_decimal_serial, LogEntry, NewEvent};
use crate::core::ids;
use crate::federation::client::{FencedFetcher, FetchError};

/// Largest answer read from a home server (an actor with many sessions has a certificate per
/// session, about 1.3 KB each in an answer).
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Entries of one answer that are checked; the rest are left out.
const MAX_ENTRIES: usize = 256;
/// Bytes of answers kept in the cache of actors' entries.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// At most one forced refetch of a home's root per this time.
const ROOT_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// At most one refetch of an actor's list for a serial it lacked per this time (a question
/// in between is answered 503 with this `Retry-After`).
const UNKNOWN_SERIAL_REFETCH: Duration = Duration::from_secs(2);
/// How long a fetched list of an actor's entries is kept at most (each entry is used only
/// inside its own window, which is at most 12 h).
const ENTRIES_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// Why another server's actor certificate is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForeignError {
    /// The home server cannot be asked now (or failed lately): try again later.
    #[error("{home} cannot be reached to check the certificate; retry in {retry_after} s")]
    Unreachable { home: String, retry_after: u64 },
    /// The certificate is not trusted: unknown, invalidated, expired, badly signed, or its
    /// home is at an address this server does not fetch from.
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
    /// The answer's size, for the cache's weigher.
    bytes: u32,
    /// When they were fetched (a refresh asked before then is answered by them).
    fetched: Instant,
}

/// What a failed fetch is remembered against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Blame {
    /// The home: every actor of it waits out the backoff.
    Home,
    /// This one answer (an earlier root, one actor's list): the home's others go on.
    Answer,
}

/// A home (or one of its answers) that failed lately, and what its callers get meanwhile.
struct Negative {
    until: Instant,
    backoff: Duration,
    error: ForeignError,
}

/// The roots of earlier times fetched while checking one answer: at most one fetch each.
#[derive(Default)]
struct PastRoots {
    roots: Vec<RootCert>,
    fetched: bool,
}

pub struct ForeignCerts {
    clock: Arc<Clock>,
    fetcher: FencedFetcher,
    /// How far in our future a window may open (the home's clock may run ahead), seconds.
    skew: i64,
    /// `identity_home_fetches_total`, by result.
    fetches: prometheus::IntCounterVec,
    roots: moka::future::Cache<String, Arc<RootCert>>,
    actors: moka::future::Cache<String, Arc<ActorEntries>>,
    negative: moka::sync::Cache<String, Arc<Negative>>,
    root_refetched: moka::sync::Cache<String, ()>,
    /// Actors refetched lately for a serial their list lacked (at most one such refetch per
    /// actor per [`UNKNOWN_SERIAL_REFETCH`]).
    unknown_refetched: moka::sync::Cache<String, ()>,
    /// (fid, serial) already recorded as `actor.foreign_idcert_seen`.
    recorded: moka::sync::Cache<(String, String), ()>,
}

impl ForeignCerts {
    pub fn new(
        clock: Arc<Clock>,
        fetcher: FencedFetcher,
        skew: Duration,
        fetches: prometheus::IntCounterVec,
    ) -> ForeignCerts {
        ForeignCerts {
            clock,
            fetcher,
            skew: i64::try_from(skew.as_secs()).unwrap_or(300),
            fetches,
            roots: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            actors: moka::future::Cache::builder()
                .max_capacity(CACHE_BYTES)
                .weigher(|_: &String, entries: &Arc<ActorEntries>| entries.bytes)
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
            unknown_refetched: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(UNKNOWN_SERIAL_REFETCH)
                .build(),
            recorded: moka::sync::Cache::builder().max_capacity(1_000_000).build(),
        }
    }

    /// Fetches made so far through the fenced fetcher (tests).
    pub fn fetches(&self) -> u64 {
        self.fetcher.fetches()
    }

    /// Whether a window can be used at `now`: open, or opening within the allowed skew.
    fn usable(&self, window: &CacheWindow, now: i64) -> bool {
        window.not_before - self.skew <= now && now < window.not_after
    }

    /// The error `key` (a home, or a home and a path) failed with lately, if it did.
    fn refused_lately(&self, key: &str) -> Result<(), ForeignError> {
        if let Some(negative) = self.negative.get(key) {
            let now = Instant::now();
            if now < negative.until {
                return Err(match &negative.error {
                    ForeignError::Unreachable { home, .. } => ForeignError::Unreachable {
                        home: home.clone(),
                        retry_after: negative.until.duration_since(now).as_secs().max(1),
                    },
                    other => other.clone(),
                });
            }
        }
        Ok(())
    }

    /// Remembers that `key` failed with `error` (10 s, doubling to 10 min) and answers it.
    fn remember(&self, key: &str, error: ForeignError) -> ForeignError {
        let backoff = self
            .negative
            .get(key)
            .map_or(FIRST_BACKOFF, |n| (n.backoff * 2).min(MAX_BACKOFF));
        let error = match error {
            ForeignError::Unreachable { home, .. } => ForeignError::Unreachable {
                home,
                retry_after: backoff.as_secs(),
            },
            other => other,
        };
        tracing::info!(%key, %error, backoff_s = backoff.as_secs(), "a home server's answer could not be used");
        self.negative.insert(
            key.to_owned(),
            Arc::new(Negative {
                until: Instant::now() + backoff,
                backoff,
                error: error.clone(),
            }),
        );
        error
    }

    /// An answer of `home` at `path` that cannot be read: like an unreachable one, for that
    /// answer only.
    fn unreadable(&self, home: &str, path: &str) -> ForeignError {
        tracing::info!(%home, %path, "a home server's answer is unreadable");
        self.remember(
            &format!("{home}{path}"),
            ForeignError::Unreachable {
                home: home.to_owned(),
                retry_after: 0,
            },
        )
    }

    /// `GET <home><path>`, classified (see the module doc); a transient failure is held
    /// against `blame`.
    async fn get(&self, home: &str, path: &str, blame: Blame) -> Result<Vec<u8>, ForeignError> {
        let answer_key = format!("{home}{path}");
        let transient_key = match blame {
            Blame::Home => home.to_owned(),
            Blame::Answer => answer_key.clone(),
        };
        self.refused_lately(home)?;
        self.refused_lately(&answer_key)?;
        let answer = self.fetcher.get(home, path, MAX_ANSWER_BYTES).await;
        let unreachable = || ForeignError::Unreachable {
            home: home.to_owned(),
            retry_after: 0,
        };
        let (result, outcome) = match answer {
            Ok(body) => {
                self.negative.invalidate(home);
                ("ok", Ok(body.to_vec()))
            }
            Err(FetchError::Status { url, status }) if matches!(status.as_u16(), 404 | 410) => (
                "untrusted",
                Err(self.remember(
                    &answer_key,
                    ForeignError::Untrusted(format!("{url} answered {status}")),
                )),
            ),
            // Too large to take: nothing can be concluded about the certificates in it, so it
            // ends nothing (an actor with ~700 certificates at once reaches 1 MiB).
            Err(error @ FetchError::TooLarge { .. }) => {
                tracing::warn!(%home, %error, "a home server's answer is over the size limit");
                (
                    "unreachable",
                    Err(self.remember(&answer_key, unreachable())),
                )
            }
            Err(FetchError::Fenced { detail, .. }) => (
                "refused",
                Err(self.remember(
                    home,
                    ForeignError::Untrusted(format!(
                        "this server does not fetch from {home}: {detail}"
                    )),
                )),
            ),
            Err(FetchError::Busy) => (
                "unreachable",
                Err(ForeignError::Unreachable {
                    home: home.to_owned(),
                    retry_after: 1,
                }),
            ),
            Err(error) => {
                tracing::debug!(%home, %error, "a fetch from a home server failed");
                (
                    "unreachable",
                    Err(self.remember(&transient_key, unreachable())),
                )
            }
        };
        self.fetches.with_label_values(&[result]).inc();
        outcome
    }

    /// A root ID-Cert of `home` from `path`, checked at `at` (a root that starts within the
    /// allowed skew of it counts: the home's clock may run ahead).
    async fn fetch_root(
        &self,
        home: &str,
        path: &str,
        at: i64,
        blame: Blame,
    ) -> Result<RootCert, ForeignError> {
        let body = self.get(home, path, blame).await?;
        let pem = String::from_utf8(body).map_err(|_| self.unreadable(home, path))?;
        check_root(&pem, home, at, self.skew).map_err(|e| {
            self.remember(
                &format!("{home}{path}"),
                ForeignError::Untrusted(format!("{home}'s root ID-Cert: {e}")),
            )
        })
    }

    /// The home's current root, checked (cached; one fetch in flight per home).
    async fn root(&self, home: &str) -> Result<Arc<RootCert>, ForeignError> {
        let now = self.clock.now_secs();
        let cached = self.roots.get(home).await;
        if let Some(root) = cached.filter(|r| r.not_before - self.skew <= now && now <= r.not_after)
        {
            return Ok(root);
        }
        self.roots.invalidate(home).await;
        self.roots
            .try_get_with(home.to_owned(), async {
                self.fetch_root(home, "/.p2/core/v1/idcert/server", now, Blame::Home)
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|e: Arc<ForeignError>| (*e).clone())
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

    /// Checks one entry of `fid`'s answer: the certificate chains to the home's root (or to
    /// a root of its issue time: at most one such fetch per answer), names `fid`, and the
    /// cache window is signed by the home's current key.
    async fn check_entry(
        &self,
        home: &str,
        fid: &str,
        raw: &Value,
        current: &RootCert,
        past: &mut PastRoots,
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
            invalidated_at: match (raw.get("invalidated"), raw.get("invalidated_at")) {
                (Some(Value::Bool(true)), Some(at)) => Some(at.as_i64().ok_or_else(|| {
                    untrusted("an invalidated entry has no invalidated_at".into())
                })?),
                (Some(Value::Bool(true)), None) => {
                    return Err(untrusted(
                        "an invalidated entry has no invalidated_at".into(),
                    ))
                }
                (_, at) => at.and_then(Value::as_i64),
            },
            signature: text("cache_signature")
                .ok_or_else(|| untrusted("an entry has no cache signature".into()))?
                .to_owned(),
        };
        let issued = super::checker::not_before(pem)
            .ok_or_else(|| untrusted("an entry's id_cert is not a certificate".into()))?;
        let mut checked = check_actor(pem, current, issued);
        if checked.is_err() {
            checked = past
                .roots
                .iter()
                .map(|root| check_actor(pem, root, issued))
                .find(Result::is_ok)
                .unwrap_or(checked);
        }
        if checked.is_err() && !past.fetched {
            past.fetched = true;
            // Whatever happens to this fetch concerns this entry only.
            let path = format!("/.p2/core/v1/idcert/server?timestamp={issued}");
            if let Ok(root) = self.fetch_root(home, &path, issued, Blame::Answer).await {
                checked = check_actor(pem, &root, issued).or(checked);
                past.roots.push(root);
            }
        }
        let cert = checked.map_err(|e| untrusted(format!("{fid}'s certificate {serial}: {e}")))?;
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
        let fetched = Instant::now();
        let path = format!("/.p2/core/v1/idcert/actor/{fid}");
        let body = self.get(home, &path, Blame::Home).await?;
        let bytes = u32::try_from(body.len()).unwrap_or(u32::MAX);
        let answer: Vec<Value> =
            serde_json::from_slice(&body).map_err(|_| self.unreadable(home, &path))?;
        if answer.len() > MAX_ENTRIES {
            tracing::info!(%fid, entries = answer.len(), "an actor's home answered more certificates than are checked");
        }
        let mut root = self.root(home).await?;
        let mut past = PastRoots::default();
        let mut entries = Vec::new();
        let mut retried = false;
        for raw in answer.iter().take(MAX_ENTRIES) {
            match self.check_entry(home, fid, raw, &root, &mut past).await {
                Ok(entry) => entries.push(entry),
                // A cache signature by a key we do not hold yet: the home may have rotated.
                Err(ForeignError::Untrusted(reason))
                    if !retried && self.refetch_root(home).await =>
                {
                    tracing::debug!(%fid, %reason, "refetching the home's root once");
                    retried = true;
                    root = self.root(home).await?;
                    if let Ok(entry) = self.check_entry(home, fid, raw, &root, &mut past).await {
                        entries.push(entry);
                    }
                }
                Err(ForeignError::Untrusted(reason)) => {
                    tracing::debug!(%fid, %reason, "an entry of the home's answer is not trusted");
                }
                Err(other) => return Err(other),
            }
        }
        Ok(ActorEntries {
            entries,
            bytes,
            fetched,
        })
    }

    /// `fid`'s entries: cached, else fetched (one fetch in flight per actor).
    async fn entries(&self, fid: &str) -> Result<Arc<ActorEntries>, ForeignError> {
        let home = home_of(fid)?;
        if let Some(entries) = self.actors.get(fid).await {
            return Ok(entries);
        }
        self.refused_lately(home)?;
        self.actors
            .try_get_with(fid.to_owned(), async {
                self.fetch_entries(fid, home).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<ForeignError>| (*e).clone())
    }

    /// `fid`'s entries fetched again. The cached ones stay until the new ones are in (a
    /// failed refresh leaves them usable inside their windows), and callers that asked while
    /// another refresh ran share its answer.
    async fn refresh(&self, fid: &str) -> Result<Arc<ActorEntries>, ForeignError> {
        use moka::ops::compute::{CompResult, Op};
        let home = home_of(fid)?;
        let asked = Instant::now();
        let result = self
            .actors
            .entry(fid.to_owned())
            .and_try_compute_with(|current| async move {
                if current.is_some_and(|c| c.value().fetched >= asked) {
                    return Ok(Op::Nop);
                }
                self.refused_lately(home)?;
                self.fetch_entries(fid, home)
                    .await
                    .map(|entries| Op::Put(Arc::new(entries)))
            })
            .await?;
        match result {
            CompResult::Inserted(entry)
            | CompResult::ReplacedWith(entry)
            | CompResult::Unchanged(entry) => Ok(entry.into_value()),
            CompResult::StillNone(_) | CompResult::Removed(_) => Err(ForeignError::Unreachable {
                home: home.to_owned(),
                retry_after: 1,
            }),
        }
    }

    /// Whether entries of `fid` are held in memory.
    pub fn holds(&self, fid: &str) -> bool {
        self.actors.contains_key(fid)
    }

    /// The certificate `serial` of `fid`, trusted now: its entry's window is usable, it is
    /// not invalidated at or before `signed_at` (any invalidation when `None`), and it is
    /// valid at `at` (unix seconds).
    pub async fn actor_cert(
        &self,
        fid: &str,
        serial: &str,
        at: i64,
        signed_at: Option<i64>,
    ) -> Result<ForeignEntry, ForeignError> {
        let now = self.clock.now_secs();
        let find = |entries: &ActorEntries| {
            entries
                .entries
                .iter()
                .find(|e| e.cert.serial == serial)
                .cloned()
        };
        let cached = self.entries(fid).await?;
        let entry = match find(&cached) {
            Some(entry) if self.usable(&entry.window, now) => entry,
            found => {
                // Past its window: ask the home again. Unknown to the list: the certificate
                // may be newer than it, but one refetch per actor per 2 s answers that.
                if found.is_none() {
                    // Asked again lately: nothing can be concluded, retry shortly.
                    if self.unknown_refetched.contains_key(fid) {
                        return Err(ForeignError::Unreachable {
                            home: home_of(fid)?.to_owned(),
                            retry_after: UNKNOWN_SERIAL_REFETCH.as_secs(),
                        });
                    }
                    self.unknown_refetched.insert(fid.to_owned(), ());
                }
                let fresh = self.refresh(fid).await?;
                match find(&fresh) {
                    Some(entry) if self.usable(&entry.window, now) => entry,
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
    /// chain to its home's root and be the one its home answers for the actor now.
    pub async fn presented(&self, pem: &str) -> Result<ForeignEntry, ForeignError> {
        let now = self.clock.now_secs();
        let not_one = || ForeignError::Untrusted("the body is not an actor ID-Cert".into());
        let fid = super::checker::subject_fid(pem).ok_or_else(not_one)?;
        let (_, home) = ids::parse_fid(&fid).ok_or_else(not_one)?;
        let root = self.root(home).await?;
        let cert =
            check_actor(pem, &root, now).map_err(|e| ForeignError::Untrusted(e.to_string()))?;
        let entry = self.actor_cert(&cert.fid, &cert.serial, now, None).await?;
        if entry.cert.fingerprint != cert.fingerprint {
            return Err(ForeignError::Untrusted(format!(
                "{fid}'s home answers another key for certificate {}",
                cert.serial
            )));
        }
        Ok(entry)
    }

    /// The entries of `fid` we hold from its home (refetched once their windows close),
    /// unchanged, whose window is open now, filtered like our own answers.
    pub async fn answer(
        &self,
        fid: &str,
        at: Option<i64>,
        session_id: Option<&str>,
    ) -> Result<Vec<Value>, ForeignError> {
        let now = self.clock.now_secs();
        let mut entries = self.entries(fid).await?;
        if entries.entries.iter().any(|e| !self.usable(&e.window, now)) {
            // A refresh that fails leaves the usable entries answerable.
            if let Ok(fresh) = self.refresh(fid).await {
                entries = fresh;
            }
        }
        Ok(entries
            .entries
            .iter()
            .filter(|e| self.usable(&e.window, now))
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

    /// Notes a committed `actor.foreign_idcert_seen`, whichever node recorded it, so that
    /// this node does not append it again (the log would answer a duplicate; this spares it).
    pub fn apply(&self, entry: &LogEntry) {
        #[derive(serde::Deserialize)]
        struct Seen {
            fid: String,
            serial: String,
        }
        if entry.event_type == "actor.foreign_idcert_seen" {
            if let Ok(seen) = serde_json::from_str::<Seen>(entry.content.get()) {
                self.recorded.insert((seen.fid, seen.serial), ());
            }
        }
    }
}

/// The home server of `fid`.
fn home_of(fid: &str) -> Result<&str, ForeignError> {
    ids::parse_fid(fid)
        .map(|(_, home)| home)
        .ok_or_else(|| ForeignError::Untrusted(format!("{fid:?} is not a federation id")))
}
