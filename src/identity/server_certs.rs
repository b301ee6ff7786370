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

use std::sync::{Arc, RwLock};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::json;

use crate::clock::now_ms;
use crate::core::event::NewEvent;
use crate::federation::signing::KeyRing;
use crate::identity::idcert::{issue_server_root, random_serial, IdCertError};
use crate::store::{AppendError, EventLogHandle, Store, StoreError};

/// Certificates start this long before their issue time, for clients whose clock is behind.
const BACKDATE_MS: i64 = 60_000;

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
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<IssuedCert>> {
        self.certs.read().unwrap_or_else(|e| e.into_inner())
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
        self.certs
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(cert.clone());
        tracing::info!(serial = %cert.serial, key_id = %cert.key_id, not_after = cert.not_after, "issued the server root ID-Cert");
        Ok(cert)
    }
}
