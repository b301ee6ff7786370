//! An actor's discoverable services (DESIGN §4.5; polyproto's services).
//!
//! Discovery is public: `[{service, url, primary}]`, primary first. Management is the
//! actor's own (bearer of a local session), one change at a time per actor, each a log event
//! (`service.added`, `service.removed`, `service.primary_set`) that the `services`
//! projection applies:
//! - the first provider of a service is its primary; naming another primary needs the
//!   sensitive-action check; the same (service, url) twice is 409 `SY_ALREADY_EXISTS`;
//! - removing the primary needs the check, and the oldest remaining provider becomes primary;
//! - setting the primary always needs it.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng;
use serde::Serialize;
use serde_json::json;

use super::IdentityError;
use crate::core::event::{is_service_name, is_service_url, NewEvent};
use crate::store::{EventLogHandle, Store};

/// One provider of a service, as the API answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Service {
    pub service: String,
    pub url: String,
    pub primary: bool,
}

impl From<entities::services::Model> for Service {
    fn from(row: entities::services::Model) -> Self {
        Service {
            service: row.service,
            url: row.url,
            primary: row.is_primary,
        }
    }
}

/// What a removal answers: the provider removed and the new primary, if one was named.
#[derive(Clone, Debug, Serialize)]
pub struct Removed {
    pub service: Service,
    pub new_primary: Option<Service>,
}

/// Sorts providers primary first, then oldest first (the order they come in).
fn primary_first(mut services: Vec<Service>) -> Vec<Service> {
    services.sort_by_key(|s| !s.primary);
    services
}

pub struct Services {
    server_name: String,
    store: Store,
    log: EventLogHandle,
    /// One change at a time per actor.
    locks: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Services {
    pub fn new(server_name: &str, store: Store, log: EventLogHandle) -> Services {
        Services {
            server_name: server_name.to_owned(),
            store,
            log,
            locks: std::sync::Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self, fid: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Unused locks go (only the map and the caller hold them).
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(fid.to_owned()).or_default().clone()
    }

    /// The providers of `fid` (of `service` when given), primary first, at most `limit`.
    pub async fn discover(
        &self,
        fid: &str,
        service: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Service>, IdentityError> {
        let rows = self.store.services(fid, service).await?;
        let mut services = primary_first(rows.into_iter().map(Service::from).collect());
        if let Some(limit) = limit {
            services.truncate(limit);
        }
        Ok(services)
    }

    fn event(&self, fid: &str, kind: &str, content: serde_json::Value) -> NewEvent {
        let id: [u8; 12] = rand::thread_rng().gen();
        NewEvent {
            event_id: format!("service:{}", hex::encode(id)),
            origin: self.server_name.clone(),
            event_type: kind.into(),
            sender: Some(fid.to_owned()),
            channel: None,
            origin_ts: crate::clock::now_ms(),
            content,
        }
    }

    fn check(service: &str, url: &str) -> Result<(), IdentityError> {
        if !is_service_name(service) {
            return Err(IdentityError::InvalidParam(
                "service must be 2..64 of [a-z0-9_.-]".into(),
            ));
        }
        if !is_service_url(url) {
            return Err(IdentityError::InvalidParam(
                "url must be an http:// or https:// URL of at most 2048 characters".into(),
            ));
        }
        Ok(())
    }

    /// Adds `url` as a provider of `service` for `fid`. `sensitive` runs when the request
    /// names a new primary over an existing one.
    pub async fn add(
        &self,
        fid: &str,
        service: &str,
        url: &str,
        primary: bool,
        sensitive: impl AsyncFnOnce() -> Result<(), IdentityError>,
    ) -> Result<Service, IdentityError> {
        Self::check(service, url)?;
        let lock = self.lock(fid);
        let _one_at_a_time = lock.lock().await;
        let existing = self.store.services(fid, Some(service)).await?;
        if existing.iter().any(|s| s.url == url) {
            return Err(IdentityError::AlreadyExists(format!(
                "{url} already provides {service}"
            )));
        }
        let primary = if existing.is_empty() {
            true
        } else {
            if primary {
                sensitive().await?;
            }
            primary
        };
        self.log
            .append(vec![self.event(
                fid,
                "service.added",
                json!({"service": service, "url": url, "primary": primary}),
            )])
            .await?;
        Ok(Service {
            service: service.to_owned(),
            url: url.to_owned(),
            primary,
        })
    }

    /// Removes `url` as a provider of `service`; the primary's removal runs `sensitive`.
    pub async fn remove(
        &self,
        fid: &str,
        service: &str,
        url: &str,
        sensitive: impl AsyncFnOnce() -> Result<(), IdentityError>,
    ) -> Result<Removed, IdentityError> {
        Self::check(service, url)?;
        let lock = self.lock(fid);
        let _one_at_a_time = lock.lock().await;
        let existing = self.store.services(fid, Some(service)).await?;
        let Some(removed) = existing.iter().find(|s| s.url == url).cloned() else {
            return Err(IdentityError::NotFound(format!(
                "{url} does not provide {service}"
            )));
        };
        let new_primary = if removed.is_primary {
            sensitive().await?;
            existing
                .iter()
                .filter(|s| s.url != url)
                .min_by_key(|s| s.created_seq)
                .cloned()
        } else {
            None
        };
        self.log
            .append(vec![self.event(
                fid,
                "service.removed",
                json!({
                    "service": service,
                    "url": url,
                    "new_primary": new_primary.as_ref().map(|s| s.url.clone()),
                }),
            )])
            .await?;
        Ok(Removed {
            service: Service {
                primary: false,
                ..Service::from(removed)
            },
            new_primary: new_primary.map(|s| Service {
                primary: true,
                ..Service::from(s)
            }),
        })
    }

    /// Makes `url` the primary provider of `service` (always a sensitive action); answers
    /// the providers that changed.
    pub async fn set_primary(
        &self,
        fid: &str,
        service: &str,
        url: &str,
        sensitive: impl AsyncFnOnce() -> Result<(), IdentityError>,
    ) -> Result<Vec<Service>, IdentityError> {
        Self::check(service, url)?;
        sensitive().await?;
        let lock = self.lock(fid);
        let _one_at_a_time = lock.lock().await;
        let existing = self.store.services(fid, Some(service)).await?;
        let Some(target) = existing.iter().find(|s| s.url == url).cloned() else {
            return Err(IdentityError::NotFound(format!(
                "{url} does not provide {service}"
            )));
        };
        if target.is_primary {
            return Ok(Vec::new());
        }
        self.log
            .append(vec![self.event(
                fid,
                "service.primary_set",
                json!({"service": service, "url": url}),
            )])
            .await?;
        let mut changed: Vec<Service> = existing
            .into_iter()
            .filter(|s| s.is_primary)
            .map(|s| Service {
                primary: false,
                ..Service::from(s)
            })
            .collect();
        changed.push(Service {
            primary: true,
            ..Service::from(target)
        });
        Ok(changed)
    }
}
