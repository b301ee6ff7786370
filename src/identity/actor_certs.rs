//! The actor ID-Certs this server issues (DESIGN §4.2): issuance from an ID-CSR, renewal,
//! invalidation, and the entries `GET /.p2/core/v1/idcert/actor/{fid}` answers.
//!
//! ```text
//!  POST /.p2/core/v1/idcert (bearer of a local session)
//!    CSR parses, Ed25519, self-signed ─ 400 SY_BAD_CSR
//!    names exactly this session, an actor's capabilities ─ 403 SY_FORBIDDEN
//!    one issuer per session at a time (striped lock)
//!    the session holds a valid certificate ─ renewal: the sensitive-action check
//!    serial (random, 63 bits) → TBS → signed with the current key (federation::signing)
//!    one append: [actor.idcert_invalidated {reason: renewed}], actor.idcert_issued
//!    memory updated after the commit
//! ```
//! Every issuance and invalidation is a log event, and the `actor_idcerts` projection is
//! what a restart loads (certificates that have not expired) and what a question about a past
//! `timestamp` reads. Nothing here holds a database connection while it signs: the only
//! database step of an issuance is its append.
//!
//! Every node of a cluster answers from its own index, so the index follows the log
//! ([`ActorCerts::apply`], fed by `identity::follow`): a certificate issued or invalidated
//! through another node is answered here as soon as this node reads its event. The node that
//! issued it applies its own event too; an entry already in the index is kept, so the two
//! paths agree whichever comes first. Issuance through two nodes at once can break what one
//! node's session lock guarantees (one valid certificate per session, none for an ended
//! session); `apply` reports such certificates and the writer invalidates them in the log.
//!
//! Cache windows: each answered entry carries `cache_not_valid_before` = now,
//! `cache_not_valid_after` = now + `identity.cert_cache_ttl` (never past `not_after`) and the
//! server key's signature over [`cache_message`]. A window is signed once per certificate per
//! second and shared by every answer of that second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use ed25519_dalek::VerifyingKey;
use serde_json::json;

use super::checker::cache_message;
use super::csr::{self, CsrError, CsrRefused};
use super::idcert::{actor_dn, actor_tbs, fingerprint, random_actor_serial, sign_certificate};
use crate::core::event::{LogEntry, NewEvent};
use crate::federation::signing::ServerKey;
use crate::identity::server_certs::IssuedCert;
use crate::store::{AppendError, AppendOutcome, EventLogHandle, Store, StoreError};

/// Certificates start this long before their issue time, for clients whose clock is behind.
const BACKDATE_SECS: i64 = 60;
/// Striped locks: one issuance per session at a time.
const STRIPES: usize = 64;

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error(transparent)]
    BadCsr(#[from] CsrError),
    #[error(transparent)]
    Refused(#[from] CsrRefused),
    /// The renewal check (sensitive action) failed; the caller's own error.
    #[error("{0}")]
    Renewal(super::IdentityError),
    #[error("this server has no root ID-Cert to issue under right now")]
    NoRoot,
    #[error("cannot build the certificate: {0}")]
    Build(#[from] super::idcert::IdCertError),
    #[error("four random serials in a row were taken")]
    NoFreeSerial,
    #[error("the session ended")]
    SessionEnded,
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A cache window, signed (DESIGN §4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedWindow {
    pub not_before: i64,
    pub not_after: i64,
    /// Hex of the server key's signature over [`cache_message`].
    pub signature: String,
}

/// One actor certificate we issued.
#[derive(Debug)]
pub struct IssuedActorCert {
    pub serial: i64,
    pub fid: String,
    pub session_id: String,
    pub fingerprint: String,
    pub key: VerifyingKey,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub pem: Arc<str>,
    /// Unix seconds.
    pub invalidated_at: Option<i64>,
    /// The window signed for the second `.0` with the key `.1`.
    window: Mutex<Option<(i64, [u8; 32], SignedWindow)>>,
}

impl IssuedActorCert {
    /// A certificate as the projection holds it.
    pub fn from_row(row: entities::actor_idcerts::Model) -> Option<IssuedActorCert> {
        let key = super::checker::subject_key(&row.pem)?;
        Some(IssuedActorCert {
            serial: row.serial,
            fid: row.fid,
            session_id: row.session_id,
            fingerprint: row.fingerprint,
            key,
            not_before: row.not_before,
            not_after: row.not_after,
            pem: row.pem.into(),
            invalidated_at: row.invalidated_at,
            window: Mutex::new(None),
        })
    }

    fn invalidated(&self, at: i64) -> IssuedActorCert {
        IssuedActorCert {
            serial: self.serial,
            fid: self.fid.clone(),
            session_id: self.session_id.clone(),
            fingerprint: self.fingerprint.clone(),
            key: self.key,
            not_before: self.not_before,
            not_after: self.not_after,
            pem: self.pem.clone(),
            invalidated_at: Some(at),
            window: Mutex::new(None),
        }
    }

    /// Valid at `at`: inside its validity and not invalidated.
    pub fn valid_at(&self, at: i64) -> bool {
        self.invalidated_at.is_none() && self.not_before <= at && at <= self.not_after
    }

    /// The cache window for an answer at `now`, signed by `key` (shared by every answer of
    /// the same second and key: a rotation signs anew).
    pub fn window(&self, now: i64, ttl: i64, key: &ServerKey) -> SignedWindow {
        let key_id = key.verifying_key().to_bytes();
        let mut memo = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((second, signed_with, window)) = memo.as_ref() {
            if *second == now && *signed_with == key_id {
                return window.clone();
            }
        }
        let not_after = (now + ttl).min(self.not_after).max(now);
        let message = cache_message(
            &self.serial.to_string(),
            now,
            not_after,
            self.invalidated_at,
        );
        let window = SignedWindow {
            not_before: now,
            not_after,
            signature: hex::encode(key.sign(message.as_bytes()).to_bytes()),
        };
        *memo = Some((now, key_id, window.clone()));
        window
    }
}

/// What a question about an actor's certificates answers: the entries, newest first.
pub type Entries = Vec<Arc<IssuedActorCert>>;

#[derive(Default)]
struct Index {
    /// Every unexpired certificate of each actor, oldest first.
    by_fid: HashMap<String, Vec<Arc<IssuedActorCert>>>,
    /// The valid certificate of each session.
    by_session: HashMap<String, Arc<IssuedActorCert>>,
}

impl Index {
    fn find(&self, serial: i64) -> Option<&Arc<IssuedActorCert>> {
        self.by_fid.values().flatten().find(|c| c.serial == serial)
    }

    /// Inserts `cert` unless the index holds its serial already (what the index holds is at
    /// least as new: an invalidation read from the log meanwhile stays).
    fn insert_new(&mut self, cert: Arc<IssuedActorCert>) {
        let known = self
            .by_fid
            .get(&cert.fid)
            .is_some_and(|certs| certs.iter().any(|c| c.serial == cert.serial));
        if !known {
            self.insert(cert);
        }
    }

    fn insert(&mut self, cert: Arc<IssuedActorCert>) {
        if cert.invalidated_at.is_none() {
            self.by_session
                .insert(cert.session_id.clone(), cert.clone());
        } else if self
            .by_session
            .get(&cert.session_id)
            .is_some_and(|c| c.serial == cert.serial)
        {
            self.by_session.remove(&cert.session_id);
        }
        let certs = self.by_fid.entry(cert.fid.clone()).or_default();
        match certs.iter_mut().find(|c| c.serial == cert.serial) {
            Some(slot) => *slot = cert,
            None => certs.push(cert),
        }
    }
}

/// Our actor certificates: the in-memory index in front of the `actor_idcerts` projection.
pub struct ActorCerts {
    server_name: String,
    lifetime_secs: i64,
    index: RwLock<Index>,
    stripes: Vec<tokio::sync::Mutex<()>>,
    /// Certificates read back for questions about the past, kept a minute so that their
    /// signed windows are shared too.
    past: moka::sync::Cache<i64, Arc<IssuedActorCert>>,
}

impl ActorCerts {
    /// Loads the certificates that have not expired at `now` (unix seconds).
    pub async fn load(
        store: &Store,
        server_name: &str,
        lifetime: std::time::Duration,
        now: i64,
    ) -> Result<ActorCerts, StoreError> {
        let mut index = Index::default();
        for row in store.actor_idcerts_unexpired(now).await? {
            if let Some(cert) = IssuedActorCert::from_row(row) {
                index.insert(Arc::new(cert));
            }
        }
        Ok(ActorCerts {
            server_name: server_name.to_owned(),
            lifetime_secs: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
            index: RwLock::new(index),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            past: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    fn stripe(&self, session_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        session_id.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % self.stripes.len()]
    }

    /// Holds off any issuance for `session_id` (a session ending takes it).
    pub async fn lock(&self, session_id: &str) -> tokio::sync::MutexGuard<'_, ()> {
        self.stripe(session_id).lock().await
    }

    /// The valid certificate of `session_id` at `now`, if it has one.
    pub fn of_session(&self, session_id: &str, now: i64) -> Option<Arc<IssuedActorCert>> {
        self.read()
            .by_session
            .get(session_id)
            .filter(|c| c.valid_at(now))
            .cloned()
    }

    /// Our unexpired certificate `serial` (decimal) of `fid`, valid or invalidated.
    pub fn by_serial(&self, fid: &str, serial: &str) -> Option<Arc<IssuedActorCert>> {
        let serial: i64 = serial.parse().ok()?;
        self.read()
            .by_fid
            .get(fid)?
            .iter()
            .find(|c| c.serial == serial)
            .cloned()
    }

    /// Whether we hold any unexpired certificate of `fid` (known actor without a database
    /// read).
    pub fn knows(&self, fid: &str) -> bool {
        self.read().by_fid.contains_key(fid)
    }

    /// The unexpired certificates of `fid` whose validity contains `at` (or, without `at`,
    /// every one not expired at `now`), of `session_id` when given, newest first.
    pub fn entries(
        &self,
        fid: &str,
        at: Option<i64>,
        session_id: Option<&str>,
        now: i64,
    ) -> Entries {
        let index = self.read();
        let Some(certs) = index.by_fid.get(fid) else {
            return Vec::new();
        };
        let mut out: Entries = certs
            .iter()
            .filter(|c| match at {
                Some(at) => c.not_before <= at && at <= c.not_after,
                None => c.not_after >= now,
            })
            .filter(|c| session_id.is_none_or(|s| c.session_id == s))
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// A certificate of the projection (a question about the past), shared for a minute.
    pub fn past(&self, row: entities::actor_idcerts::Model) -> Option<Arc<IssuedActorCert>> {
        // Reused only as the projection has it now: an invalidation replaces it.
        if let Some(cert) = self
            .past
            .get(&row.serial)
            .filter(|c| c.invalidated_at == row.invalidated_at)
        {
            return Some(cert);
        }
        let serial = row.serial;
        let cert = Arc::new(IssuedActorCert::from_row(row)?);
        self.past.insert(serial, cert.clone());
        Some(cert)
    }

    /// Drops certificates that expired before `now` from memory (the projection keeps them).
    pub fn prune(&self, now: i64) {
        let mut index = self.write();
        index.by_fid.retain(|_, certs| {
            certs.retain(|c| c.not_after >= now);
            !certs.is_empty()
        });
        index.by_session.retain(|_, c| c.not_after >= now);
    }

    /// Issues a certificate from `csr_pem` for the local session `session_id` of `fid`.
    /// `renewal` runs only when the session already holds a valid certificate (the
    /// sensitive-action check); the old one is invalidated in the same append. `live` is
    /// asked under the session's lock: a session that ended meanwhile gets nothing.
    #[allow(clippy::too_many_arguments)]
    pub async fn issue(
        &self,
        log: &EventLogHandle,
        key: &ServerKey,
        root: Option<IssuedCert>,
        fid: &str,
        session_id: &str,
        csr_pem: &str,
        now: i64,
        live: impl FnOnce() -> bool,
        renewal: impl AsyncFnOnce() -> Result<(), super::IdentityError>,
    ) -> Result<Arc<IssuedActorCert>, IssueError> {
        let csr = csr::parse(csr_pem)?;
        let usage = csr.for_actor(fid, session_id)?;
        // The renewal check (a password hash) runs before the session's lock, so that it
        // never holds up the session's end; it runs under the lock only when a certificate
        // appeared meanwhile.
        let mut renewal = Some(renewal);
        if self.of_session(session_id, now).is_some() {
            if let Some(check) = renewal.take() {
                check().await.map_err(IssueError::Renewal)?;
            }
        }
        let _one_at_a_time = self.lock(session_id).await;
        if !live() {
            return Err(IssueError::SessionEnded);
        }
        let previous = self.of_session(session_id, now);
        if previous.is_some() {
            if let Some(check) = renewal.take() {
                check().await.map_err(IssueError::Renewal)?;
            }
        }
        let root = root.ok_or(IssueError::NoRoot)?;
        let not_before = (now - BACKDATE_SECS).max(root.not_before.div_euclid(1000));
        let not_after = (not_before + self.lifetime_secs).min(root.not_after.div_euclid(1000));
        if not_after <= now {
            return Err(IssueError::NoRoot);
        }
        let subject = actor_dn(fid, session_id)?;
        let fingerprint = fingerprint(&csr.key)?;
        // A serial already taken (a 63-bit collision) is answered by the log as a duplicate:
        // draw another.
        for _ in 0..4 {
            let serial = random_actor_serial();
            let tbs = actor_tbs(
                &self.server_name,
                subject.clone(),
                &csr.key,
                serial,
                not_before,
                not_after,
                usage,
            )?;
            let pem = sign_certificate(key, tbs)?;
            let mut events = Vec::with_capacity(2);
            if let Some(old) = &previous {
                events.push(self.invalidation(old, now, "renewed"));
            }
            events.push(NewEvent {
                event_id: format!("actor-cert:{serial}"),
                origin: self.server_name.clone(),
                event_type: "actor.idcert_issued".into(),
                sender: Some(fid.to_owned()),
                channel: None,
                origin_ts: now * 1000,
                content: json!({
                    "serial": serial.to_string(),
                    "fid": fid,
                    "session_id": session_id,
                    "fingerprint": fingerprint,
                    "not_before": not_before,
                    "not_after": not_after,
                    "pem": pem,
                }),
            });
            let outcomes = log.append(events).await?;
            if matches!(outcomes.last(), Some(AppendOutcome::Duplicate { .. })) {
                continue;
            }
            let cert = Arc::new(IssuedActorCert {
                serial,
                fid: fid.to_owned(),
                session_id: session_id.to_owned(),
                fingerprint: fingerprint.clone(),
                key: csr.key,
                not_before,
                not_after,
                pem: pem.into(),
                invalidated_at: None,
                window: Mutex::new(None),
            });
            if let Some(old) = &previous {
                self.invalidated(old.serial, now);
            }
            self.write().insert_new(cert.clone());
            tracing::info!(%fid, serial, renewed = previous.is_some(), "issued an actor ID-Cert");
            return Ok(cert);
        }
        Err(IssueError::NoFreeSerial)
    }

    fn invalidation(&self, cert: &IssuedActorCert, now: i64, reason: &str) -> NewEvent {
        NewEvent {
            event_id: format!("actor-cert-invalidated:{}", cert.serial),
            origin: self.server_name.clone(),
            event_type: "actor.idcert_invalidated".into(),
            sender: Some(cert.fid.clone()),
            channel: None,
            origin_ts: now * 1000,
            content: json!({
                "serial": cert.serial.to_string(),
                "invalidated_at": now,
                "reason": reason,
            }),
        }
    }

    /// The event that invalidates the valid certificate of `session_id`, if it has one; the
    /// caller appends it with whatever else ends (see [`ActorCerts::invalidated`]).
    pub fn session_end_event(&self, session_id: &str, now: i64) -> Option<(i64, NewEvent)> {
        let cert = self.read().by_session.get(session_id).cloned()?;
        Some((cert.serial, self.invalidation(&cert, now, "session_ended")))
    }

    /// Records in memory that `serial` was invalidated at `at` (after its event committed).
    pub fn invalidated(&self, serial: i64, at: i64) {
        let mut index = self.write();
        let found = index.find(serial).cloned();
        // The first invalidation is the one the log keeps.
        if let Some(cert) = found.filter(|c| c.invalidated_at.is_none()) {
            index.insert(Arc::new(cert.invalidated(at)));
        }
    }

    /// Applies a committed entry of the log to the index: an `actor.idcert_issued` adds the
    /// certificate (unless it has expired, or the index holds it already), an
    /// `actor.idcert_invalidated` marks it. Answers the certificates that now break what one
    /// node's session lock guarantees, with the reason to invalidate them: the new one, when
    /// its session had `ended` before it (an issuance through one node racing the end through
    /// another); a valid one of the same session that the new one replaced without
    /// invalidating it (two issuances through two nodes at once). One node never makes
    /// either, so on one node this answers nothing.
    pub fn apply(
        &self,
        entry: &LogEntry,
        now: i64,
        ended: impl Fn(&str) -> bool,
    ) -> Vec<(i64, &'static str)> {
        let mut repairs = Vec::new();
        match entry.event_type.as_str() {
            "actor.idcert_issued" => {
                let Some(cert) = issued_from_entry(entry).filter(|c| c.not_after >= now) else {
                    return repairs;
                };
                let mut index = self.write();
                if let Some(replaced) = index
                    .by_session
                    .get(&cert.session_id)
                    .filter(|c| c.serial != cert.serial && c.valid_at(now))
                {
                    repairs.push((replaced.serial, "renewed"));
                }
                if ended(&cert.session_id) {
                    repairs.push((cert.serial, "session_ended"));
                }
                index.insert_new(Arc::new(cert));
            }
            "actor.idcert_invalidated" => {
                #[derive(serde::Deserialize)]
                struct Invalidated {
                    serial: String,
                    invalidated_at: i64,
                }
                let content = serde_json::from_str::<Invalidated>(entry.content.get());
                if let Ok(content) = content {
                    if let Ok(serial) = content.serial.parse() {
                        self.invalidated(serial, content.invalidated_at);
                    }
                }
            }
            _ => {}
        }
        repairs
    }

    /// The invalidation of certificate `serial` at `now` for `reason`, if the index holds it
    /// not invalidated yet (what the writer appends to repair a race between nodes; its event
    /// id is the certificate's, so the log keeps one whoever appends it).
    pub fn invalidation_of(&self, serial: i64, now: i64, reason: &str) -> Option<NewEvent> {
        let cert = self
            .read()
            .find(serial)
            .filter(|c| c.invalidated_at.is_none())
            .cloned()?;
        Some(self.invalidation(&cert, now, reason))
    }
}

/// The certificate an `actor.idcert_issued` entry records.
fn issued_from_entry(entry: &LogEntry) -> Option<IssuedActorCert> {
    #[derive(serde::Deserialize)]
    struct Issued {
        serial: String,
        fid: String,
        session_id: String,
        fingerprint: String,
        not_before: i64,
        not_after: i64,
        pem: String,
    }
    let content: Issued = serde_json::from_str(entry.content.get()).ok()?;
    Some(IssuedActorCert {
        serial: content.serial.parse().ok()?,
        key: super::checker::subject_key(&content.pem)?,
        fid: content.fid,
        session_id: content.session_id,
        fingerprint: content.fingerprint,
        not_before: content.not_before,
        not_after: content.not_after,
        pem: content.pem.into(),
        invalidated_at: None,
        window: Mutex::new(None),
    })
}
