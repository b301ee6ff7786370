//! Sessions (DESIGN §4.3, §5): the one place that turns a bearer token into a session, signs
//! an actor of another server in, and ends a session.
//!
//! ```text
//!  authenticate(token)
//!    cache by token hash (an ended session is never revived) ─ else the sessions projection
//!    a foreign session: its certificate (ForeignCerts), trusted only inside its cache window
//!      untrusted (invalidated, expired, gone) ─▶ the session ends: 401, sockets closed 4003
//!      home unreachable past the window ─▶ 503 + Retry-After
//!
//!  sign_in({challenge, fid, serial, signature})            POST /.p2/core/v1/session/auth
//!    1 challenge consumed ─ 401 SY_BAD_CHALLENGE
//!    2 fid of another server ─ 400 SY_INVALID_PARAM
//!    3 the home's root and the certificate, checked and cached ─ 401 SY_BAD_CERT / 503
//!    4 the signature over the challenge, on the verifier threads ─ 401 SY_BAD_SIGNATURE
//!    one append: [actor.foreign_idcert_seen], session.created {foreign, serial}
//! ```
//! A foreign session gets a random session id of ours (so that no other server can name one
//! of our sessions) and remembers the session id its certificate names, which is the one it
//! is answered and deletes by. Everything a session's end must do beyond the log (its
//! sockets, its cursor) is the `on_end` hook the application gives.
//!
//! Every node of a cluster keeps its own token cache and set of ended sessions, so both
//! follow the log ([`Sessions::apply`], fed by `identity::follow` on a cluster node): a
//! session ended through another node stops authenticating here, and its sockets here close
//! with 4003, as soon as this node reads the `session.deleted`. The node that ended it reads
//! its own event too; the set of ended sessions decides which of the two paths runs the
//! hook, so it runs once.

use std::sync::atomic::Ordering::SeqCst;
use std::sync::Arc;

use rand::Rng;
use serde_json::json;

use super::accounts::token_hash;
use super::actor_certs::ActorCerts;
use super::challenges::Challenges;
use super::foreign::{ForeignCerts, ForeignEntry, ForeignError};
use super::IdentityError;
use crate::clock::Clock;
use crate::core::event::{is_decimal_serial, LogEntry, NewEvent};
use crate::core::ids;
use crate::federation::signing::PendingCheck;
use crate::federation::verifier::{SignatureVerifier, VerifyError};
use crate::store::{EventLogHandle, Store};

pub type Session = entities::sessions::Model;

/// Why a session's sockets close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closing {
    /// The session ended: its sockets close with 4003 and its cursor goes.
    Ended,
    /// A foreign session's certificate cannot be checked now (its window closed and its home
    /// cannot be reached): its sockets close with a resumable code; the session stays.
    Unverified,
}

/// What a session's end (or a foreign session that cannot be verified) must do outside the
/// log: close its sockets, drop its cursor. Called with the session's fid and id: a session
/// ended through another node is known here only by its `session.deleted` event.
pub type OnEnd = Box<dyn Fn(&str, &str, Closing) + Send + Sync>;

/// A sign-in answer: `{"challenge", "fid", "serial", "signature"}`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChallengeAnswer {
    pub challenge: String,
    pub fid: String,
    pub serial: String,
    pub signature: String,
}

/// A foreign session, as answered once to its client.
#[derive(Debug, Clone)]
pub struct ForeignSession {
    pub token: String,
    /// The session id the certificate names.
    pub session_id: String,
    pub fid: String,
}

/// Why a session ended, for the logs.
#[derive(Clone, Copy, Debug)]
pub enum EndReason {
    /// The user asked (`DELETE /.p2/core/v1/session`).
    Deleted,
    /// A foreign session's certificate is no longer trusted.
    CertificateUntrusted,
}

impl EndReason {
    fn as_str(self) -> &'static str {
        match self {
            EndReason::Deleted => "deleted",
            EndReason::CertificateUntrusted => "certificate_untrusted",
        }
    }
}

pub struct Sessions {
    server_name: String,
    clock: Arc<Clock>,
    store: Store,
    log: EventLogHandle,
    verifier: SignatureVerifier,
    foreign: Arc<ForeignCerts>,
    actor_certs: Arc<ActorCerts>,
    /// Live sessions by the hash of their token, in front of the `sessions` projection.
    by_token: moka::sync::Cache<String, Session>,
    /// The token hash of each session in `by_token`: a change read from the log names the
    /// session, not its token.
    token_of: moka::sync::Cache<String, String>,
    /// Counts the session changes applied (ends, certificate updates), so that a lookup that
    /// read the projection while one was applied does not cache what it read (see
    /// [`Sessions::by_token`]).
    changes: std::sync::atomic::AtomicU64,
    /// Sessions ended within the cache's lifetime, which no cached entry may revive.
    ended: moka::sync::Cache<String, ()>,
    on_end: OnEnd,
}

fn random_hex(bytes: usize) -> String {
    let mut raw = vec![0u8; bytes];
    rand::thread_rng().fill(raw.as_mut_slice());
    hex::encode(raw)
}

impl Sessions {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: &str,
        clock: Arc<Clock>,
        store: Store,
        log: EventLogHandle,
        verifier: SignatureVerifier,
        foreign: Arc<ForeignCerts>,
        actor_certs: Arc<ActorCerts>,
        on_end: OnEnd,
    ) -> Sessions {
        Sessions {
            server_name: server_name.to_owned(),
            clock,
            store,
            log,
            verifier,
            foreign,
            actor_certs,
            by_token: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(300))
                .build(),
            token_of: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(300))
                .build(),
            changes: std::sync::atomic::AtomicU64::new(0),
            ended: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(std::time::Duration::from_secs(600))
                .build(),
            on_end,
        }
    }

    /// The live session of `token`: 401 `SY_UNKNOWN_TOKEN` for a token of no live session
    /// (or of a foreign session whose certificate is no longer trusted, which ends it), 503
    /// when a foreign session's home must be asked and cannot be.
    pub async fn authenticate(&self, token: &str) -> Result<Session, IdentityError> {
        let session = self.by_token(token).await?;
        let unknown = || IdentityError::UnknownToken("the token belongs to no live session".into());
        if let Some(serial) = session.idcert_serial.as_deref() {
            let now = self.clock.now_secs();
            match self
                .foreign
                .actor_cert(&session.fid, serial, now, None)
                .await
            {
                Ok(_) => {}
                Err(ForeignError::Untrusted(reason)) => {
                    tracing::info!(fid = %session.fid, %reason, "a foreign session's certificate is no longer trusted; ending it");
                    self.end(&session, EndReason::CertificateUntrusted).await?;
                    return Err(unknown());
                }
                Err(error) => return Err(home_unavailable(error)),
            }
        }
        Ok(session)
    }

    /// The live session of `token`, without checking a foreign session's certificate (the
    /// extern update replaces it).
    pub async fn by_token(&self, token: &str) -> Result<Session, IdentityError> {
        let hash = token_hash(token);
        let unknown = || IdentityError::UnknownToken("the token belongs to no live session".into());
        let session = match self.by_token.get(&hash) {
            Some(session) => session,
            None => {
                let changes = self.changes.load(SeqCst);
                let session = self
                    .store
                    .session_by_token_hash(&hash)
                    .await?
                    .ok_or_else(unknown)?;
                if !self.ended.contains_key(&session.session_id) {
                    self.token_of
                        .insert(session.session_id.clone(), hash.clone());
                    self.by_token.insert(hash.clone(), session.clone());
                    // A change applied since the read may have missed this entry (it was not
                    // in the cache yet): drop it, the next lookup reads the projection again.
                    // Either the change sees the entry or this check sees the change.
                    if self.changes.load(SeqCst) != changes {
                        self.by_token.invalidate(&hash);
                    }
                }
                session
            }
        };
        if self.ended.contains_key(&session.session_id) {
            return Err(unknown());
        }
        Ok(session)
    }

    /// Whether `session_id` has not been ended by this instance lately.
    pub fn is_live(&self, session_id: &str) -> bool {
        !self.ended.contains_key(session_id)
    }

    /// Ends `session`: its token stops working at once (a lookup racing with the end cannot
    /// bring it back), its certificate (ours) is invalidated in the same append, and the
    /// `on_end` hook closes its sockets. Holds the session's issuance lock throughout, so a
    /// certificate issued at the same moment is either invalidated here or refused.
    pub async fn end(&self, session: &Session, reason: EndReason) -> Result<(), IdentityError> {
        let _no_issuance = self.actor_certs.lock(&session.session_id).await;
        let now = self.clock.now_secs();
        let mut events = vec![NewEvent {
            event_id: format!("session-end:{}", session.session_id),
            origin: self.server_name.clone(),
            event_type: "session.deleted".into(),
            sender: Some(session.fid.clone()),
            channel: None,
            origin_ts: self.clock.now_ms(),
            content: json!({"session_id": session.session_id, "reason": reason.as_str()}),
        }];
        let invalidated = self.actor_certs.session_end_event(&session.session_id, now);
        if let Some((_, event)) = &invalidated {
            events.push(event.clone());
        }
        self.log.append(events).await?;
        self.by_token.invalidate(&session.token_hash);
        if let Some((serial, _)) = invalidated {
            self.actor_certs.invalidated(serial, now);
        }
        self.ended(&session.fid, &session.session_id);
        Ok(())
    }

    /// Records that a session ended (its event is committed): its token stops working here,
    /// and the first of the two paths that learn it (the ending call, the log) runs the hook.
    fn ended(&self, fid: &str, session_id: &str) {
        self.changes.fetch_add(1, SeqCst);
        let first = self
            .ended
            .entry(session_id.to_owned())
            .or_insert(())
            .is_fresh();
        if let Some(hash) = self.token_of.remove(session_id) {
            self.by_token.invalidate(&hash);
        }
        if first {
            (self.on_end)(fid, session_id, Closing::Ended);
        }
    }

    /// Applies a committed entry of the log to the token cache and the ended sessions: a
    /// `session.deleted` ends the session here (whichever node ended it), a
    /// `session.idcert_updated` drops its cached row (the next lookup reads the new
    /// certificate's serial). Idempotent: the node that made the change applies it too.
    pub fn apply(&self, entry: &LogEntry) {
        match entry.event_type.as_str() {
            "session.deleted" => {
                // The sender is the session's actor (whose sockets close); every end this
                // server appends names it.
                if let Some(session_id) = session_id_of(entry) {
                    self.ended(entry.sender.as_deref().unwrap_or_default(), &session_id);
                }
            }
            "session.idcert_updated" => {
                let Some(session_id) = session_id_of(entry) else {
                    return;
                };
                self.changes.fetch_add(1, SeqCst);
                if let Some(hash) = self.token_of.remove(&session_id) {
                    self.by_token.invalidate(&hash);
                }
            }
            _ => {}
        }
    }

    /// Forgets every cached token (the log's subscriber lost batches; the ends among them are
    /// re-read and applied, the rest of the cache is read again on demand).
    pub fn forget_cached(&self) {
        self.changes.fetch_add(1, SeqCst);
        self.by_token.invalidate_all();
        self.token_of.invalidate_all();
    }

    /// Ends the caller's session `session_id` (`DELETE /.p2/core/v1/session`). A foreign
    /// caller names its session by the id its certificate carries.
    pub async fn delete(&self, caller: &Session, session_id: &str) -> Result<(), IdentityError> {
        let not_found = || IdentityError::NotFound("no live session of yours has this id".into());
        let target = if caller.home_session_id.as_deref() == Some(session_id) {
            Some(caller.clone())
        } else {
            self.store
                .session(session_id)
                .await?
                .filter(|s| s.fid == caller.fid)
        };
        let target = target.ok_or_else(not_found)?;
        if self.ended.contains_key(&target.session_id) {
            return Err(not_found());
        }
        self.end(&target, EndReason::Deleted).await
    }

    /// Signs an actor of another server in by key trial (DESIGN §4.3), in the contract's
    /// order: the challenge, the fid, the certificate, the signature.
    pub async fn sign_in(
        &self,
        challenges: &Challenges,
        answer: &ChallengeAnswer,
    ) -> Result<ForeignSession, IdentityError> {
        challenges.redeem(&answer.challenge).await?;
        let fid = answer.fid.as_str();
        let (_, home) = ids::parse_fid(fid).ok_or_else(|| {
            IdentityError::InvalidParam(format!("{fid:?} is not a federation id (local@server)"))
        })?;
        if home.eq_ignore_ascii_case(&self.server_name) {
            return Err(IdentityError::InvalidParam(format!(
                "{fid} is an actor of this server: sign in with a password"
            )));
        }
        if !is_decimal_serial(&answer.serial) {
            return Err(IdentityError::BadCert(format!(
                "{fid} has no certificate {:?}: a serial is a positive decimal",
                answer.serial
            )));
        }
        let now = self.clock.now_secs();
        let entry = self
            .foreign
            .actor_cert(fid, &answer.serial, now, None)
            .await
            .map_err(home_unavailable)?;
        let bad_signature = || {
            IdentityError::BadSignature(format!(
                "the signature does not verify with the key of {fid}'s certificate {}",
                answer.serial
            ))
        };
        let signature: [u8; 64] = hex::decode(&answer.signature)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(bad_signature)?;
        let valid = self
            .verify(PendingCheck {
                message: answer.challenge.as_bytes().to_vec(),
                signature: ed25519_dalek::Signature::from_bytes(&signature),
                key: entry.cert.key,
            })
            .await?;
        if !valid {
            return Err(bad_signature());
        }
        let session_id = random_hex(16);
        let token = format!("sy_{}", random_hex(32));
        let seen = self.foreign.seen_event(&self.server_name, &entry);
        let mut events: Vec<NewEvent> = seen.into_iter().collect();
        events.push(NewEvent {
            event_id: format!("session:{session_id}"),
            origin: self.server_name.clone(),
            event_type: "session.created".into(),
            sender: Some(fid.to_owned()),
            channel: None,
            origin_ts: self.clock.now_ms(),
            content: json!({
                "session_id": session_id,
                "token_hash": token_hash(&token),
                "foreign": true,
                "serial": entry.cert.serial,
                "home_session_id": entry.cert.session_id,
            }),
        });
        self.log.append(events).await?;
        self.foreign.recorded(&entry);
        tracing::info!(%fid, serial = %entry.cert.serial, "a foreign actor signed in");
        Ok(ForeignSession {
            token,
            session_id: entry.cert.session_id.clone(),
            fid: fid.to_owned(),
        })
    }

    /// Replaces a foreign session's certificate with `pem` (`PUT …/session/idcert/extern`):
    /// the same actor and session, issued and vouched for by its home now.
    pub async fn update_certificate(
        &self,
        session: &Session,
        pem: &str,
    ) -> Result<(), IdentityError> {
        let Some(home_session_id) = session.home_session_id.as_deref() else {
            return Err(IdentityError::Forbidden(
                "only a foreign session presents a certificate of its home server".into(),
            ));
        };
        // Whose it says it is, before anything is fetched for it.
        let named = super::checker::subject_fid(pem)
            .ok_or_else(|| IdentityError::CertInput("the body is not an actor ID-Cert".into()))?;
        if named != session.fid {
            return Err(IdentityError::Forbidden(format!(
                "the certificate is {named}'s; this session is {}'s",
                session.fid
            )));
        }
        let entry = self
            .foreign
            .presented(pem)
            .await
            .map_err(|error| match error {
                ForeignError::Untrusted(reason) => IdentityError::CertInput(reason),
                other => home_unavailable(other),
            })?;
        if entry.cert.fid != session.fid || entry.cert.session_id != home_session_id {
            return Err(IdentityError::Forbidden(format!(
                "the certificate is {}'s for session {:?}; this session is {}'s {:?}",
                entry.cert.fid, entry.cert.session_id, session.fid, home_session_id
            )));
        }
        let mut events: Vec<NewEvent> = self
            .foreign
            .seen_event(&self.server_name, &entry)
            .into_iter()
            .collect();
        // Under the session's lock, so that a session ending meanwhile takes no certificate.
        let _no_end = self.actor_certs.lock(&session.session_id).await;
        if !self.is_live(&session.session_id) {
            return Err(IdentityError::UnknownToken("the session ended".into()));
        }
        events.push(NewEvent {
            event_id: format!("session-cert:{}:{}", session.session_id, entry.cert.serial),
            origin: self.server_name.clone(),
            event_type: "session.idcert_updated".into(),
            sender: Some(session.fid.clone()),
            channel: None,
            origin_ts: self.clock.now_ms(),
            content: json!({"session_id": session.session_id, "serial": entry.cert.serial}),
        });
        self.log.append(events).await?;
        self.foreign.recorded(&entry);
        // The next lookup reads the session as committed (an insert here could outlive an end).
        self.changes.fetch_add(1, SeqCst);
        self.by_token.invalidate(&session.token_hash);
        Ok(())
    }

    /// The certificate a session signs with now: ours for a local session, its home's for a
    /// foreign one (`None` when it has none).
    pub async fn signing_certificate(
        &self,
        session: &Session,
    ) -> Result<Option<(String, ed25519_dalek::VerifyingKey)>, IdentityError> {
        let now = self.clock.now_secs();
        match session.idcert_serial.as_deref() {
            None => Ok(self
                .actor_certs
                .of_session(&session.session_id, now)
                .map(|c| (c.serial.to_string(), c.key))),
            Some(serial) => match self
                .foreign
                .actor_cert(&session.fid, serial, now, None)
                .await
            {
                Ok(entry) => Ok(Some((entry.cert.serial, entry.cert.key))),
                Err(ForeignError::Untrusted(_)) => Ok(None),
                Err(error) => Err(home_unavailable(error)),
            },
        }
    }

    /// Checks every foreign session's certificate; ends those no longer trusted. Run every
    /// `identity.foreign_check_interval`, so an idle socket is closed too. Only the node that
    /// writes the log (`writes`) ends sessions here: every node would otherwise append the
    /// same ends, and the others learn them from the log. Every node still closes its own
    /// sockets of a session whose home cannot be asked (nothing is appended for that).
    pub async fn check_foreign_sessions(&self, writes: bool) {
        let sessions = match self.store.foreign_sessions().await {
            Ok(sessions) => sessions,
            Err(error) => {
                tracing::warn!(%error, "cannot list foreign sessions to check");
                return;
            }
        };
        let now = self.clock.now_secs();
        // Sixteen at a time: a slow home holds up its own sessions, not the others.
        use futures_util::StreamExt as _;
        futures_util::stream::iter(sessions)
            .for_each_concurrent(16, |session| async move {
                self.check_foreign_session(&session, now, writes).await;
            })
            .await;
    }

    /// One foreign session's certificate, checked at `now`; ended when untrusted if this
    /// node `writes`.
    async fn check_foreign_session(&self, session: &Session, now: i64, writes: bool) {
        let Some(serial) = session.idcert_serial.as_deref() else {
            return;
        };
        if self.ended.contains_key(&session.session_id) {
            return;
        }
        match self
            .foreign
            .actor_cert(&session.fid, serial, now, None)
            .await
        {
            Ok(_) => {}
            Err(ForeignError::Untrusted(_)) if !writes => {}
            Err(ForeignError::Untrusted(reason)) => {
                tracing::info!(fid = %session.fid, %reason, "a foreign session's certificate is no longer trusted; ending it");
                if let Err(error) = self.end(session, EndReason::CertificateUntrusted).await {
                    tracing::warn!(%error, "cannot end a foreign session");
                }
            }
            // Past its window, and its home cannot say: its sockets stop receiving (a
            // resumable close; reconnecting waits for the home, 503), the session stays.
            Err(ForeignError::Unreachable { .. }) => {
                (self.on_end)(&session.fid, &session.session_id, Closing::Unverified);
            }
        }
    }

    /// Checks one signature on the verifier threads.
    pub async fn verify(&self, check: PendingCheck) -> Result<bool, IdentityError> {
        self.verifier
            .verify(check)
            .await
            .map_err(|error| match error {
                VerifyError::Overloaded => IdentityError::HomeUnavailable {
                    message: "too many signatures waiting to be checked; retry shortly".into(),
                    retry_after: 1,
                },
                VerifyError::Stopped => IdentityError::Internal(error.to_string()),
            })
    }

    /// The foreign certificates (for signed messages and the certificate routes).
    pub fn foreign(&self) -> &ForeignCerts {
        &self.foreign
    }

    /// The log this instance appends to.
    pub(super) fn log(&self) -> &EventLogHandle {
        &self.log
    }

    /// Our own actor certificates.
    pub fn actor_certs(&self) -> &ActorCerts {
        &self.actor_certs
    }

    /// Records that `entry` was accepted (the inbox appends the event with the message).
    pub fn seen_event(&self, entry: &ForeignEntry) -> Option<NewEvent> {
        self.foreign.seen_event(&self.server_name, entry)
    }
}

/// The `session_id` of a session event's content.
pub(super) fn session_id_of(entry: &LogEntry) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Content {
        session_id: String,
    }
    serde_json::from_str::<Content>(entry.content.get())
        .ok()
        .map(|c| c.session_id)
}

/// What a sign-in answers for a certificate that cannot be used: 401 `SY_BAD_CERT` when it is
/// not trusted, 503 with `Retry-After` when its home cannot be asked.
pub fn home_unavailable(error: ForeignError) -> IdentityError {
    match error {
        ForeignError::Unreachable { retry_after, .. } => IdentityError::HomeUnavailable {
            message: error.to_string(),
            retry_after,
        },
        ForeignError::Untrusted(reason) => IdentityError::BadCert(reason),
    }
}
