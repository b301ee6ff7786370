//! polyproto identity (DESIGN §4): who the server is and who its actors are.
//!
//! - [`idcert`]: the X.509 profile the polyproto crate parses byte for byte (root and actor
//!   certificates), built here and signed by `federation::signing`;
//! - [`server_certs`]: the server's root ID-Certs over time;
//! - [`checker`]: the one certificate checker (roots, actor certificates, cache windows);
//! - [`csr`]: ID-CSRs, parsed and judged;
//! - [`actor_certs`]: the actor certificates we issue, renew and invalidate;
//! - [`foreign`]: other servers' roots and actor certificates, fetched (fenced), checked and
//!   cached;
//! - [`challenges`]: sign-in challenge strings;
//! - [`sessions`]: bearer tokens to sessions, local and foreign, and how a session ends;
//! - [`signed`]: message signatures, on the client API and in the inbox;
//! - [`services`]: an actor's discoverable services;
//! - [`accounts`]: registration, login, password checks (and the sensitive-action check);
//! - `follow`: what each node of a cluster keeps in memory (tokens, ended sessions, our actor
//!   certificates), kept current from the log whichever node made the change.

pub mod accounts;
pub mod actor_certs;
pub mod challenges;
pub mod checker;
pub mod csr;
mod follow;
pub mod foreign;
pub mod idcert;
pub mod server_certs;
pub mod services;
pub mod sessions;
pub mod signed;

use crate::store::{AppendError, StoreError};

/// What identity refuses, in the terms the API answers (DESIGN §4).
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// 400 `SY_BAD_CSR`.
    #[error("{0}")]
    BadCsr(String),
    /// 403 `SY_FORBIDDEN`.
    #[error("{0}")]
    Forbidden(String),
    /// 403 `SY_SENSITIVE_ACTION`.
    #[error("{0}")]
    Sensitive(String),
    /// 400 `SY_INVALID_PARAM`.
    #[error("{0}")]
    InvalidParam(String),
    /// 401 `SY_BAD_CHALLENGE`.
    #[error("{0}")]
    BadChallenge(String),
    /// 401 `SY_BAD_CERT`.
    #[error("{0}")]
    BadCert(String),
    /// 400 `SY_BAD_CERT`: a certificate in a request body.
    #[error("{0}")]
    CertInput(String),
    /// 401 `SY_BAD_SIGNATURE`.
    #[error("{0}")]
    BadSignature(String),
    /// 400 `SY_BAD_SIGNATURE`: a message's signature.
    #[error("{0}")]
    MessageSignature(String),
    /// 400 `SY_SIGNATURE_REQUIRED`.
    #[error("{0}")]
    SignatureRequired(String),
    /// 404 `SY_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// 409 `SY_ALREADY_EXISTS`.
    #[error("{0}")]
    AlreadyExists(String),
    /// 401 `SY_UNKNOWN_TOKEN`.
    #[error("{0}")]
    UnknownToken(String),
    /// 429 `SY_LIMIT_EXCEEDED` with `Retry-After`.
    #[error("{message}")]
    Limited { message: String, retry_after: u64 },
    /// 503 `SY_UNAVAILABLE` with `Retry-After`: a home server we need cannot be reached.
    #[error("{message}")]
    HomeUnavailable { message: String, retry_after: u64 },
    /// 503 `SY_OVERLOADED` with `Retry-After`: this server holds as many of something as it
    /// allows (a cluster's outstanding challenges).
    #[error("{message}")]
    Overloaded { message: String, retry_after: u64 },
    /// 503: the log could not commit.
    #[error("the event log could not commit; retry")]
    Append(#[source] AppendError),
    /// 500.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500.
    #[error("{0}")]
    Internal(String),
}

impl From<AppendError> for IdentityError {
    fn from(error: AppendError) -> Self {
        IdentityError::Append(error)
    }
}

/// Everything identity keeps for one instance.
pub struct Identity {
    /// The instance clock every identity decision reads (tests move it).
    pub clock: std::sync::Arc<crate::clock::Clock>,
    pub actor_certs: std::sync::Arc<actor_certs::ActorCerts>,
    pub sessions: sessions::Sessions,
    pub challenges: challenges::Challenges,
    pub services: services::Services,
    pub sensitive: accounts::SensitiveActions,
    /// Dropped with the instance, which ends its tasks (nothing is ever sent).
    _stop: tokio::sync::watch::Sender<()>,
}

impl Identity {
    /// Loads our actor certificates and starts, on a node of a cluster, the follower of the
    /// log (see `follow`; one node updates its state after its own appends and needs none),
    /// and the periodic work: the foreign-session check every
    /// `identity.foreign_check_interval` (it ends sessions only while this node writes the
    /// log), and a tidy-up of rate limiters and expired certificates every minute. The tasks
    /// end when the instance goes.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        config: &crate::config::Config,
        clock: std::sync::Arc<crate::clock::Clock>,
        store: &crate::store::Store,
        log: &crate::store::EventLogHandle,
        verifier: crate::federation::verifier::SignatureVerifier,
        metrics: &crate::telemetry::Metrics,
        on_end: sessions::OnEnd,
    ) -> Result<std::sync::Arc<Identity>, StoreError> {
        use std::sync::Arc;
        let server_name = &config.server.name;
        let in_cluster = *log.role().borrow() != crate::cluster::Role::Single;
        let (actor_certs, following) = match in_cluster {
            false => (
                actor_certs::ActorCerts::load(
                    store,
                    server_name,
                    config.identity.actor_cert_lifetime,
                    clock.now_secs(),
                )
                .await?,
                None,
            ),
            true => {
                // Before anything is loaded: what commits meanwhile is applied over it.
                let subscription = follow::Subscription::new(log);
                let (certs, lineage) = actor_certs::ActorCerts::load_following(
                    store,
                    server_name,
                    config.identity.actor_cert_lifetime,
                    clock.now_secs(),
                    subscription.applied(),
                )
                .await?;
                (certs, Some((subscription, lineage)))
            }
        };
        let actor_certs = Arc::new(actor_certs);
        let (stop, stopped) = tokio::sync::watch::channel(());
        let foreign = Arc::new(foreign::ForeignCerts::new(
            clock.clone(),
            crate::federation::client::FencedFetcher::start(&config.federation),
            config.federation.replay_window,
            metrics.identity_home_fetches.clone(),
        ));
        let identity = Arc::new(Identity {
            sessions: sessions::Sessions::new(
                server_name,
                clock.clone(),
                store.clone(),
                log.clone(),
                verifier,
                foreign,
                actor_certs.clone(),
                on_end,
            ),
            // A cluster's challenges are redeemed on whichever node the answer reaches.
            challenges: match config.cluster.enabled {
                false => challenges::Challenges::new(&config.identity, clock.clone()),
                true => challenges::Challenges::in_cluster(
                    &config.identity,
                    clock.clone(),
                    store.clone(),
                ),
            },
            services: services::Services::new(server_name, store.clone(), log.clone()),
            sensitive: accounts::SensitiveActions::default(),
            actor_certs,
            clock,
            _stop: stop,
        });
        if let Some((subscription, lineage)) = following {
            actix_web::rt::spawn(follow::follow(
                Arc::downgrade(&identity),
                store.clone(),
                log.role(),
                subscription,
                lineage,
                stopped.clone(),
            ));
        }
        let mut stopped = stopped;
        let weak = Arc::downgrade(&identity);
        let role = log.role();
        let every = config.identity.foreign_check_interval;
        let checking = Arc::new(std::sync::atomic::AtomicBool::new(false));
        actix_web::rt::spawn(async move {
            let mut check = actix_web::rt::time::interval(every);
            let mut tidy = actix_web::rt::time::interval(std::time::Duration::from_secs(60));
            loop {
                tokio::select! {
                    // Nothing is ever sent: the instance went.
                    _ = stopped.changed() => break,
                    _ = check.tick() => {
                        let Some(identity) = weak.upgrade() else { break };
                        // A check runs on its own, one at a time: a slow home delays the next
                        // check, never the tidy-up.
                        if !checking.swap(true, std::sync::atomic::Ordering::AcqRel) {
                            let checking = checking.clone();
                            let writes = role.borrow().writes();
                            actix_web::rt::spawn(async move {
                                identity.sessions.check_foreign_sessions(writes).await;
                                checking.store(false, std::sync::atomic::Ordering::Release);
                            });
                        }
                    }
                    _ = tidy.tick() => {
                        let Some(identity) = weak.upgrade() else { break };
                        identity.challenges.tidy();
                        identity.sensitive.tidy();
                        identity.actor_certs.prune(identity.clock.now_secs());
                    }
                }
            }
        });
        Ok(identity)
    }
}
