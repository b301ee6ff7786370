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
//! Every node of a cluster answers from its own index, so there the index follows the log
//! ([`ActorCerts::apply`], fed by `identity::follow`): a certificate issued or invalidated
//! through another node is answered here as soon as this node reads its event. The node that
//! issued it applies its own event too; an entry already in the index is kept, and a session's
//! certificate is the one issued last, so the two paths agree whichever comes first. Issuance
//! through two nodes at once can break what one node's session lock guarantees (one valid
//! certificate per session, none for an ended session); the follower finds such certificates
//! in the log's order ([`Lineage`], never the index) and the writer invalidates them. One
//! node (the cluster off) runs no follower: it updates the index after its own appends.
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
    /// The `seq` of its `actor.idcert_issued`: of two certificates of one session, the one
    /// issued later is the session's.
    issued_seq: u64,
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
            issued_seq: u64::try_from(row.issued_seq).unwrap_or(0),
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
            issued_seq: self.issued_seq,
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
        let holder = self.by_session.get(&cert.session_id);
        if cert.invalidated_at.is_none() {
            // The session's certificate is the one issued last: one issued before it and read
            // from the log after it (another node's, racing this node's) does not replace it.
            if holder.is_none_or(|c| c.serial == cert.serial || c.issued_seq < cert.issued_seq) {
                self.by_session
                    .insert(cert.session_id.clone(), cert.clone());
            }
        } else if holder.is_some_and(|c| c.serial == cert.serial) {
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
        let rows = store.actor_idcerts_unexpired(now).await?;
        Ok(Self::from_rows(rows, server_name, lifetime))
    }

    /// [`ActorCerts::load`], and the [`Lineage`] of the log up to `through` (a node of a
    /// cluster, whose follower applies what commits after `through`).
    pub(super) async fn load_following(
        store: &Store,
        server_name: &str,
        lifetime: std::time::Duration,
        now: i64,
        through: u64,
    ) -> Result<(ActorCerts, Lineage), StoreError> {
        let rows = store.actor_idcerts_unexpired(now).await?;
        let lineage = Lineage::from_rows(&rows, through);
        Ok((Self::from_rows(rows, server_name, lifetime), lineage))
    }

    fn from_rows(
        rows: Vec<entities::actor_idcerts::Model>,
        server_name: &str,
        lifetime: std::time::Duration,
    ) -> ActorCerts {
        let mut index = Index::default();
        for row in rows {
            if let Some(cert) = IssuedActorCert::from_row(row) {
                index.insert(Arc::new(cert));
            }
        }
        ActorCerts {
            server_name: server_name.to_owned(),
            lifetime_secs: i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX),
            index: RwLock::new(index),
            stripes: (0..STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
            past: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(std::time::Duration::from_secs(60))
                .build(),
        }
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
            let issued_seq = match outcomes.last() {
                Some(AppendOutcome::Appended { seq }) => *seq,
                _ => continue,
            };
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
                issued_seq,
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
    /// `actor.idcert_invalidated` marks it. The node that issued or invalidated a certificate
    /// updated the index right after its append, so what the index holds may be newer than
    /// `entry`: nothing here decides from it what the log lacks (see [`Lineage`]).
    pub fn apply(&self, entry: &LogEntry, now: i64) {
        match entry.event_type.as_str() {
            "actor.idcert_issued" => {
                if let Some(cert) = issued_from_entry(entry).filter(|c| c.not_after >= now) {
                    self.write().insert_new(Arc::new(cert));
                }
            }
            "actor.idcert_invalidated" => {
                if let Some((serial, at)) = invalidated_from_entry(entry) {
                    self.invalidated(serial, at);
                }
            }
            _ => {}
        }
    }

    /// Applies `entries` (committed, in seq order, none before `lineage`'s) to the index and
    /// to `lineage`; answers the invalidations the writer appends to repair what two nodes'
    /// locks let through (see [`Lineage`]). `ended` tells a session that has ended.
    pub(super) fn follow(
        &self,
        lineage: &mut Lineage,
        entries: &[LogEntry],
        now: i64,
        ended: impl Fn(&str) -> bool,
    ) -> Vec<NewEvent> {
        let mut repairs = Vec::new();
        let mut ends = Vec::new();
        for entry in entries {
            self.apply(entry, now);
            repairs.extend(lineage.apply(entry, now, &ended));
            if entry.event_type == "session.deleted" {
                ends.extend(super::sessions::session_id_of(entry));
            }
        }
        // After the whole batch: an end appended with its invalidation leaves nothing valid.
        repairs.extend(
            ends.iter()
                .filter_map(|session_id| lineage.valid_of(session_id, now))
                .map(|serial| (serial, "session_ended")),
        );
        let mut events: Vec<NewEvent> = repairs
            .into_iter()
            .filter_map(|(serial, reason)| self.invalidation_of(serial, now, reason))
            .collect();
        events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        events.dedup_by(|a, b| a.event_id == b.event_id);
        events
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

/// What the log says of each session's certificate, read in the log's order by the follower
/// of a cluster node; the writer's repairs are decided from it alone. One node's session lock
/// keeps a session to one valid certificate and none after its end; two nodes hold two locks,
/// so an issuance through one can commit beside another's, or after the end through another.
/// In the log's order the repair is plain: a certificate issued while the session held
/// another valid one replaced it without invalidating it (the older one is invalidated,
/// `renewed`), and a certificate of a session that has ended is invalidated
/// (`session_ended`).
///
/// Never from the index: the node that issues or invalidates a certificate updates its index
/// right after its append, before its follower reads the entry, so the index may already
/// hold what comes later in the log. Read against it, the renewal A → B (A invalidated, B
/// issued) would make A's issuance, read late, look like a second valid certificate beside
/// B, and B, the newest, would be invalidated.
#[derive(Default)]
pub(super) struct Lineage {
    /// Of each session, the certificate issued last that the log has not invalidated.
    current: HashMap<String, Current>,
    /// The session of each certificate in `current`.
    session_of: HashMap<i64, String>,
    /// Every entry up to this `seq` is in it.
    through: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Current {
    serial: i64,
    issued_seq: u64,
    /// Unix seconds.
    not_after: i64,
}

impl Lineage {
    /// The lineage at `through` from the projection's rows (which may hold later entries:
    /// they are left to the follower, which applies what commits after `through`), in their
    /// issued order.
    fn from_rows(rows: &[entities::actor_idcerts::Model], through: u64) -> Lineage {
        let mut lineage = Lineage {
            through,
            ..Lineage::default()
        };
        let mut rows: Vec<_> = rows.iter().collect();
        rows.sort_by_key(|row| row.issued_seq);
        for row in rows {
            let Ok(issued_seq) = u64::try_from(row.issued_seq) else {
                continue;
            };
            let invalidated = match row.invalidated_seq {
                Some(seq) => u64::try_from(seq).map_or(true, |seq| seq <= through),
                None => row.invalidated_at.is_some(),
            };
            if issued_seq <= through && !invalidated {
                lineage.set(
                    &row.session_id,
                    Current {
                        serial: row.serial,
                        issued_seq,
                        not_after: row.not_after,
                    },
                );
            }
        }
        lineage
    }

    fn set(&mut self, session_id: &str, cert: Current) {
        if let Some(replaced) = self.current.insert(session_id.to_owned(), cert) {
            self.session_of.remove(&replaced.serial);
        }
        self.session_of.insert(cert.serial, session_id.to_owned());
    }

    /// Applies one committed entry (entries come in seq order; one at or before what the
    /// lineage holds changes nothing); answers the certificates to invalidate, with the
    /// reason. Only ever the entry's own certificate or one issued before it.
    pub(super) fn apply(
        &mut self,
        entry: &LogEntry,
        now: i64,
        ended: impl Fn(&str) -> bool,
    ) -> Vec<(i64, &'static str)> {
        let mut repairs = Vec::new();
        if entry.seq <= self.through {
            return repairs;
        }
        self.through = entry.seq;
        match entry.event_type.as_str() {
            "actor.idcert_issued" => {
                #[derive(serde::Deserialize)]
                struct Issued {
                    serial: String,
                    session_id: String,
                    not_after: i64,
                }
                let Ok(issued) = serde_json::from_str::<Issued>(entry.content.get()) else {
                    return repairs;
                };
                let Ok(serial) = issued.serial.parse::<i64>() else {
                    return repairs;
                };
                if issued.not_after < now {
                    return repairs;
                }
                if ended(&issued.session_id) {
                    repairs.push((serial, "session_ended"));
                    return repairs;
                }
                let cert = Current {
                    serial,
                    issued_seq: entry.seq,
                    not_after: issued.not_after,
                };
                match self.current.get(&issued.session_id).copied() {
                    Some(held) if held.serial == serial => {}
                    // Valid when this one was issued, and not invalidated by its append.
                    Some(held) if held.issued_seq < entry.seq => {
                        if held.not_after >= now {
                            repairs.push((held.serial, "renewed"));
                        }
                        self.set(&issued.session_id, cert);
                    }
                    // Issued later than this entry: never invalidated for an older one (not
                    // reached: entries come in seq order).
                    Some(_) => {}
                    None => self.set(&issued.session_id, cert),
                }
            }
            "actor.idcert_invalidated" => {
                let Some((serial, _)) = invalidated_from_entry(entry) else {
                    return repairs;
                };
                if let Some(session_id) = self.session_of.remove(&serial) {
                    if self
                        .current
                        .get(&session_id)
                        .is_some_and(|c| c.serial == serial)
                    {
                        self.current.remove(&session_id);
                    }
                }
            }
            _ => {}
        }
        repairs
    }

    /// The certificate of `session_id` the log holds valid at `now`, if any.
    pub(super) fn valid_of(&self, session_id: &str, now: i64) -> Option<i64> {
        self.current
            .get(session_id)
            .filter(|c| c.not_after >= now)
            .map(|c| c.serial)
    }

    /// Forgets the certificates that expired before `now`.
    pub(super) fn prune(&mut self, now: i64) {
        let session_of = &mut self.session_of;
        self.current.retain(|_, c| {
            let keep = c.not_after >= now;
            if !keep {
                session_of.remove(&c.serial);
            }
            keep
        });
    }
}

/// The serial and time an `actor.idcert_invalidated` entry records.
fn invalidated_from_entry(entry: &LogEntry) -> Option<(i64, i64)> {
    #[derive(serde::Deserialize)]
    struct Invalidated {
        serial: String,
        invalidated_at: i64,
    }
    let content: Invalidated = serde_json::from_str(entry.content.get()).ok()?;
    Some((content.serial.parse().ok()?, content.invalidated_at))
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
        issued_seq: entry.seq,
        window: Mutex::new(None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::idcert::{actor_dn, ActorUsage};

    const SERVER: &str = "a.example";
    const FID: &str = "alice@a.example";
    const SESSION: &str = "s1";
    const NOW: i64 = 1_800_000_000;
    const NOT_AFTER: i64 = NOW + 86_400;

    fn entry(seq: u64, event_type: &str, content: serde_json::Value) -> LogEntry {
        LogEntry {
            seq,
            event_id: format!("{event_type}:{seq}"),
            origin: SERVER.into(),
            event_type: event_type.into(),
            sender: Some(FID.into()),
            channel: None,
            origin_ts: NOW * 1000,
            received_ts: NOW * 1000,
            content: serde_json::value::to_raw_value(&content).expect("raw"),
            prev_hash: crate::core::chain::ChainHash::GENESIS,
            entry_hash: crate::core::chain::ChainHash::GENESIS,
        }
    }

    /// The `actor.idcert_issued` of certificate `serial` of `SESSION` at `seq`, signed by
    /// `key` like any node's.
    fn issued(key: &ServerKey, seq: u64, serial: i64) -> LogEntry {
        let subject_key =
            ed25519_dalek::SigningKey::from_bytes(&[serial as u8; 32]).verifying_key();
        let tbs = actor_tbs(
            SERVER,
            actor_dn(FID, SESSION).expect("dn"),
            &subject_key,
            serial,
            NOW - 60,
            NOT_AFTER,
            ActorUsage::DigitalSignature,
        )
        .expect("tbs");
        entry(
            seq,
            "actor.idcert_issued",
            json!({
                "serial": serial.to_string(),
                "fid": FID,
                "session_id": SESSION,
                "fingerprint": fingerprint(&subject_key).expect("fingerprint"),
                "not_before": NOW - 60,
                "not_after": NOT_AFTER,
                "pem": sign_certificate(key, tbs).expect("signed"),
            }),
        )
    }

    fn invalidated(seq: u64, serial: i64, reason: &str) -> LogEntry {
        entry(
            seq,
            "actor.idcert_invalidated",
            json!({"serial": serial.to_string(), "invalidated_at": NOW, "reason": reason}),
        )
    }

    fn deleted(seq: u64) -> LogEntry {
        entry(
            seq,
            "session.deleted",
            json!({"session_id": SESSION, "reason": "deleted"}),
        )
    }

    fn empty() -> ActorCerts {
        ActorCerts::from_rows(Vec::new(), SERVER, std::time::Duration::from_secs(86_400))
    }

    /// What the issuing node does right after its append commits `entry`.
    fn issued_here(certs: &ActorCerts, entry: &LogEntry) {
        let cert = issued_from_entry(entry).expect("a certificate");
        certs.write().insert_new(Arc::new(cert));
    }

    fn lineage_through(seq: u64) -> Lineage {
        Lineage {
            through: seq,
            ..Lineage::default()
        }
    }

    /// `(serial, reason)` of each invalidation.
    fn repaired(events: &[NewEvent]) -> Vec<(String, String)> {
        events
            .iter()
            .map(|e| {
                assert_eq!(e.event_type, "actor.idcert_invalidated");
                (
                    e.content["serial"].as_str().expect("serial").to_owned(),
                    e.content["reason"].as_str().expect("reason").to_owned(),
                )
            })
            .collect()
    }

    fn live(_: &str) -> bool {
        false
    }

    #[test]
    fn an_older_entry_read_after_this_nodes_renewal_invalidates_nothing() {
        // This node issued A (seq 100) and renewed it to B (101: A invalidated, 102: B): its
        // index holds A invalidated and B valid before its follower, behind, reads seq 100.
        let key = ServerKey::generate();
        let (a, b) = (1_001, 1_002);
        let entries = [
            issued(&key, 100, a),
            invalidated(101, a, "renewed"),
            issued(&key, 102, b),
        ];
        let here = || {
            let certs = empty();
            issued_here(&certs, &entries[0]);
            certs.invalidated(a, NOW);
            issued_here(&certs, &entries[2]);
            certs
        };
        // One batch at a time.
        let certs = here();
        let mut lineage = lineage_through(99);
        let repairs = certs.follow(&mut lineage, &entries[..1], NOW, live);
        assert_eq!(repairs.len(), 0, "{:?}", repaired(&repairs));
        assert_eq!(certs.of_session(SESSION, NOW).map(|c| c.serial), Some(b));
        let repairs = certs.follow(&mut lineage, &entries[1..], NOW, live);
        assert_eq!(repairs.len(), 0, "{:?}", repaired(&repairs));
        assert_eq!(certs.of_session(SESSION, NOW).map(|c| c.serial), Some(b));
        // All three at once (re-read after a lag), and each again (applied twice).
        let certs = here();
        let mut lineage = lineage_through(99);
        assert!(certs.follow(&mut lineage, &entries, NOW, live).is_empty());
        assert!(certs.follow(&mut lineage, &entries, NOW, live).is_empty());
        assert_eq!(certs.of_session(SESSION, NOW).map(|c| c.serial), Some(b));
        assert_eq!(lineage.valid_of(SESSION, NOW), Some(b));
    }

    #[test]
    fn the_older_of_two_racing_certificates_is_invalidated_whichever_node_issued_it() {
        let key = ServerKey::generate();
        // Another node issued A (seq 100); this node, not knowing it, issued B (seq 101).
        let (a, b) = (2_001, 2_002);
        let entries = [issued(&key, 100, a), issued(&key, 101, b)];
        let certs = empty();
        issued_here(&certs, &entries[1]);
        let mut lineage = lineage_through(99);
        assert!(certs
            .follow(&mut lineage, &entries[..1], NOW, live)
            .is_empty());
        // A, read after B, does not become the session's certificate here.
        assert_eq!(certs.of_session(SESSION, NOW).map(|c| c.serial), Some(b));
        let repairs = certs.follow(&mut lineage, &entries[1..], NOW, live);
        assert_eq!(repaired(&repairs), [(a.to_string(), "renewed".to_owned())]);
        // The repair read back: B stays the session's.
        let repairs = certs.follow(&mut lineage, &[invalidated(102, a, "renewed")], NOW, live);
        assert!(repairs.is_empty());
        assert_eq!(certs.of_session(SESSION, NOW).map(|c| c.serial), Some(b));
        assert!(certs
            .by_serial(FID, &a.to_string())
            .expect("a")
            .invalidated_at
            .is_some());

        // The same through a node that issued neither: the log alone decides.
        let certs = empty();
        let mut lineage = lineage_through(99);
        let repairs = certs.follow(&mut lineage, &entries, NOW, live);
        assert_eq!(repaired(&repairs), [(a.to_string(), "renewed".to_owned())]);
        assert_eq!(certs.of_session(SESSION, NOW).map(|c| c.serial), Some(b));
    }

    #[test]
    fn a_certificate_of_an_ended_session_is_invalidated() {
        let key = ServerKey::generate();
        let (a, c) = (3_001, 3_003);
        // The end, through a node that did not know A, left it valid.
        let certs = empty();
        let mut lineage = lineage_through(99);
        assert!(certs
            .follow(&mut lineage, &[issued(&key, 100, a)], NOW, live)
            .is_empty());
        let repairs = certs.follow(&mut lineage, &[deleted(101)], NOW, |_| true);
        assert_eq!(
            repaired(&repairs),
            [(a.to_string(), "session_ended".to_owned())]
        );
        // A certificate issued after the end, through a node that had not read it.
        let repairs = certs.follow(&mut lineage, &[issued(&key, 102, c)], NOW, |_| true);
        assert_eq!(
            repaired(&repairs),
            [(c.to_string(), "session_ended".to_owned())]
        );

        // An end appended with its invalidation leaves nothing to repair.
        let certs = empty();
        let mut lineage = lineage_through(99);
        let entries = [
            issued(&key, 100, a),
            deleted(101),
            invalidated(102, a, "session_ended"),
        ];
        assert!(certs
            .follow(&mut lineage, &entries[..1], NOW, live)
            .is_empty());
        assert!(certs
            .follow(&mut lineage, &entries[1..], NOW, |_| true)
            .is_empty());
    }

    #[test]
    fn the_lineage_loaded_at_start_is_the_logs_at_the_subscription() {
        // The projection, read after subscribing at seq 100, already holds the renewal
        // 101–102 the follower is about to apply.
        let row = |serial: i64, issued_seq: i64, invalidated_seq: Option<i64>| {
            entities::actor_idcerts::Model {
                serial,
                fid: FID.into(),
                session_id: SESSION.into(),
                fingerprint: String::new(),
                not_before: NOW - 60,
                not_after: NOT_AFTER,
                pem: String::new(),
                issued_seq,
                invalidated_at: invalidated_seq.map(|_| NOW),
                invalidated_reason: invalidated_seq.map(|_| "renewed".into()),
                invalidated_seq,
            }
        };
        let (a, b) = (4_001, 4_002);
        let rows = [row(a, 100, Some(101)), row(b, 102, None)];
        let lineage = Lineage::from_rows(&rows, 100);
        assert_eq!(lineage.valid_of(SESSION, NOW), Some(a));
        let key = ServerKey::generate();
        let certs = empty();
        let mut lineage = lineage;
        let entries = [invalidated(101, a, "renewed"), issued(&key, 102, b)];
        assert!(certs.follow(&mut lineage, &entries, NOW, live).is_empty());
        assert_eq!(lineage.valid_of(SESSION, NOW), Some(b));
        // Loaded after both: B, and the follower has nothing left to apply.
        let lineage = Lineage::from_rows(&rows, 102);
        assert_eq!(lineage.valid_of(SESSION, NOW), Some(b));
        // Expired certificates leave it.
        let mut lineage = lineage;
        lineage.prune(NOT_AFTER + 1);
        assert_eq!(lineage.valid_of(SESSION, NOW), None);
        assert!(lineage.session_of.is_empty());
    }
}
