//! The server's root ID-Certs over time: issued, recorded in the log, and looked up by time.
//!
//! A certificate is issued for the current key when none of its certificates has more than a
//! third of `keys.idcert_lifetime` left: at start, after every rotation (the old private key
//! is gone by then, so this is the only moment its successor can be certified), and from an
//! hourly check. Each issued certificate is a `server.idcert_issued` event (event id
//! `idcert:<serial>`), so the history survives restarts and replay, and
//! `GET /.p2/core/v1/idcert/server?timestamp=` can answer for any time since the first start.
//!
//! Lookup at time `t`: the key that was current at `t` (from the retired-key intervals of the
//! [`KeyRing`]), then the newest of its certificates whose validity covers `t`.
//!
//! Several nodes on one database share one history: only the node that writes the log issues
//! at start and from the hourly check (and at once when it becomes the writer, in case its
//! predecessor left the renewal undone), and every node learns each `server.idcert_issued`
//! from the log ([`ServerCerts::start`]), so the certificates a node answers and issues under
//! are the cluster's, and a new writer does not issue again what its predecessor issued. One
//! node (the cluster off) follows nothing: it is the only issuer, and adds what it issues.
//!
//! The task of [`ServerCerts::start`] holds the instance weakly and no handle on the log (a
//! handle keeps the log's broadcast, its writer and its threads alive): it ends when the
//! instance goes, or when the log closes.

use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::clock::now_ms;
use crate::core::event::{LogEntry, NewEvent};
use crate::federation::signing::KeyRing;
use crate::identity::idcert::{issue_server_root, random_serial, IdCertError};
use crate::store::{AppendError, CommittedBatch, EventLogHandle, Store, StoreError};

type Committed = tokio::sync::broadcast::Receiver<Arc<CommittedBatch>>;

/// Certificates start this long before their issue time, for clients whose clock is behind.
const BACKDATE_MS: i64 = 60_000;
/// How often the current certificate's remaining lifetime is checked.
const CHECK_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ServerCertError {
    #[error("cannot build the server ID-Cert: {0}")]
    Build(#[from] IdCertError),
    #[error("cannot record the server ID-Cert in the log: {0}")]
    Append(#[from] AppendError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One root ID-Cert we issued.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuedCert {
    /// Lowercase hex.
    pub serial: String,
    pub key_id: String,
    /// ms, whole seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub pem: Arc<str>,
}

impl IssuedCert {
    fn covers(&self, at_ms: i64) -> bool {
        self.not_before <= at_ms && at_ms < self.not_after
    }
}

impl From<entities::server_idcerts::Model> for IssuedCert {
    fn from(row: entities::server_idcerts::Model) -> Self {
        IssuedCert {
            serial: row.serial,
            key_id: row.key_id,
            not_before: row.not_before,
            not_after: row.not_after,
            pem: row.pem.into(),
        }
    }
}

/// Our root ID-Certs, oldest first, with the lock that keeps two issuers from racing.
pub struct ServerCerts {
    server_name: String,
    lifetime: Duration,
    certs: RwLock<Vec<IssuedCert>>,
    issuing: tokio::sync::Mutex<()>,
    /// What the renewal task of [`ServerCerts::start`] issues with.
    renewal: Option<Renewal>,
}

/// The key ring and the log the renewal task issues with, held by the instance; dropping it
/// ends the task.
struct Renewal {
    ring: Arc<KeyRing>,
    log: EventLogHandle,
    /// Nothing is ever sent: the task ends when this goes.
    _stop: tokio::sync::watch::Sender<()>,
}

impl ServerCerts {
    /// Loads the certificates recorded in the log.
    pub async fn load(
        store: &Store,
        server_name: &str,
        lifetime: Duration,
    ) -> Result<ServerCerts, ServerCertError> {
        let certs = store
            .server_idcerts()
            .await?
            .into_iter()
            .map(IssuedCert::from)
            .collect();
        Ok(ServerCerts {
            server_name: server_name.to_owned(),
            lifetime,
            certs: RwLock::new(certs),
            issuing: tokio::sync::Mutex::new(()),
            renewal: None,
        })
    }

    /// Loads the certificates, issues one for the current key if it needs one and this node
    /// writes the log, and starts the task that checks the remaining lifetime hourly (while
    /// this node writes) and, on a node of a cluster, follows the log's
    /// `server.idcert_issued` and checks at once whenever this node becomes the writer. The
    /// task ends when the instance goes (or abort it).
    pub async fn start(
        store: &Store,
        server_name: &str,
        lifetime: Duration,
        ring: Arc<KeyRing>,
        log: &EventLogHandle,
    ) -> Result<(Arc<ServerCerts>, tokio::task::JoinHandle<()>), ServerCertError> {
        let mut role = log.role();
        let in_cluster = *role.borrow_and_update() != crate::cluster::Role::Single;
        // Before the load: what commits meanwhile is applied over it.
        let committed = in_cluster.then(|| (log.subscribe(), store.clone()));
        let (stop, stopped) = tokio::sync::watch::channel(());
        let mut certs = ServerCerts::load(store, server_name, lifetime).await?;
        certs.renewal = Some(Renewal {
            ring: ring.clone(),
            log: log.clone(),
            _stop: stop,
        });
        let certs = Arc::new(certs);
        if role.borrow().writes() {
            certs.ensure_current(&ring, log).await?;
        }
        let task = actix_web::rt::spawn(keep_current(
            Arc::downgrade(&certs),
            stopped,
            committed,
            role,
        ));
        Ok((certs, task))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<IssuedCert>> {
        self.certs.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `cert` unless it is known (the issuer and the log's follower both add it).
    fn add(&self, cert: IssuedCert) {
        let mut certs = self.certs.write().unwrap_or_else(|e| e.into_inner());
        if !certs.iter().any(|c| c.serial == cert.serial) {
            certs.push(cert);
        }
    }

    /// Applies a committed `server.idcert_issued`, whichever node issued it.
    pub fn apply(&self, entry: &LogEntry) {
        #[derive(serde::Deserialize)]
        struct Issued {
            key_id: String,
            serial: String,
            not_before: i64,
            not_after: i64,
            pem: String,
        }
        if entry.event_type != "server.idcert_issued" {
            return;
        }
        match serde_json::from_str::<Issued>(entry.content.get()) {
            Ok(issued) => self.add(IssuedCert {
                serial: issued.serial,
                key_id: issued.key_id,
                not_before: issued.not_before,
                not_after: issued.not_after,
                pem: issued.pem.into(),
            }),
            Err(error) => {
                tracing::error!(seq = entry.seq, %error, "an unreadable server.idcert_issued")
            }
        }
    }

    /// The certificate that was valid at `at_ms` for the key current then.
    pub fn at(&self, ring: &KeyRing, at_ms: i64) -> Option<IssuedCert> {
        let key_id = ring.key_id_at(at_ms);
        self.read()
            .iter()
            .filter(|c| c.key_id == key_id && c.covers(at_ms))
            .max_by_key(|c| c.not_before)
            .cloned()
    }

    /// A certificate of the current key with more than a third of its lifetime left, issued
    /// and recorded now if there is none.
    pub async fn ensure_current(
        &self,
        ring: &KeyRing,
        log: &EventLogHandle,
    ) -> Result<IssuedCert, ServerCertError> {
        let _one_at_a_time = self.issuing.lock().await;
        let key = ring.current();
        let key_id = key.key_id();
        let now = now_ms();
        let renew_margin = i64::try_from(self.lifetime.as_millis() / 3).unwrap_or(i64::MAX);
        let fresh = self
            .read()
            .iter()
            .filter(|c| c.key_id == key_id && c.covers(now) && c.not_after - now > renew_margin)
            .max_by_key(|c| c.not_before)
            .cloned();
        if let Some(cert) = fresh {
            return Ok(cert);
        }
        let serial = random_serial();
        let not_before = (now - BACKDATE_MS) / 1000 * 1000;
        let start = UNIX_EPOCH + Duration::from_millis(u64::try_from(not_before).unwrap_or(0));
        let pem = issue_server_root(&key, &self.server_name, &serial, start, self.lifetime)?;
        let cert = IssuedCert {
            serial: hex::encode(serial),
            key_id,
            not_before,
            not_after: not_before + i64::try_from(self.lifetime.as_millis()).unwrap_or(i64::MAX),
            pem: pem.into(),
        };
        log.append(vec![NewEvent {
            event_id: format!("idcert:{}", cert.serial),
            origin: self.server_name.clone(),
            event_type: "server.idcert_issued".into(),
            sender: None,
            channel: None,
            origin_ts: now,
            content: json!({
                "key_id": cert.key_id,
                "serial": cert.serial,
                "not_before": cert.not_before,
                "not_after": cert.not_after,
                "pem": &*cert.pem,
            }),
        }])
        .await?;
        self.add(cert.clone());
        tracing::info!(serial = %cert.serial, key_id = %cert.key_id, not_after = cert.not_after, "issued the server root ID-Cert");
        Ok(cert)
    }
}

/// Keeps the current key's certificate renewed while this node writes: hourly, and on a node
/// of a cluster as soon as it becomes the writer; there it also follows the log's
/// `server.idcert_issued` into `certs` (`committed`, and the store to re-read what a lag
/// lost). Ends when `certs` goes (`stop` closes with it) or the log closes.
async fn keep_current(
    certs: std::sync::Weak<ServerCerts>,
    mut stop: tokio::sync::watch::Receiver<()>,
    mut committed: Option<(Committed, Store)>,
    mut role: crate::cluster::RoleWatch,
) {
    use tokio::sync::broadcast::error::RecvError;
    let mut tick = actix_web::rt::time::interval(CHECK_INTERVAL);
    tick.tick().await;
    // A role that can no longer change (the log is going, or one node's) is not waited on.
    let mut role_open = committed.is_some();
    loop {
        let renew = tokio::select! {
            // Nothing is ever sent: the instance went.
            _ = stop.changed() => return,
            _ = tick.tick() => role.borrow().writes(),
            changed = role.changed(), if role_open => match changed {
                Ok(()) => role.borrow_and_update().writes(),
                Err(_) => {
                    role_open = false;
                    false
                }
            },
            batch = async {
                match committed.as_mut() {
                    Some((receiver, _)) => receiver.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let Some(certs) = certs.upgrade() else { return };
                match batch {
                    Ok(batch) => batch.entries.iter().for_each(|e| certs.apply(e)),
                    Err(RecvError::Lagged(_)) => {
                        let Some((_, store)) = committed.as_ref() else { return };
                        match store.server_idcerts().await {
                            Ok(rows) => rows.into_iter().for_each(|r| certs.add(r.into())),
                            Err(error) => {
                                tracing::error!(%error, "cannot re-read the server root ID-Certs")
                            }
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
                false
            }
        };
        if renew {
            let Some(certs) = certs.upgrade() else { return };
            let Some(renewal) = certs.renewal.as_ref() else {
                return;
            };
            if let Err(error) = certs.ensure_current(&renewal.ring, &renewal.log).await {
                tracing::error!(%error, "cannot renew the server root ID-Cert");
            }
        }
    }
}
