//! Builds one Switchyard instance: opens and migrates the store, starts the `EventLog` actor,
//! binds the HTTP server. Nothing here is global, so tests run several instances in one
//! process, each on port 0 with its own database.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{web, App, HttpServer};

use crate::clock::Clock;
use crate::config::Config;
use crate::federation::client::{OutboundClient, Resolver};
use crate::federation::delivery::Delivery;
use crate::federation::inbox::{Inbox, InboxStartError};
use crate::federation::keys::notary::Notary;
use crate::federation::keys::resolver::KeyResolver;
use crate::federation::keys::rotation::{open_key_ring, RotationError};
use crate::federation::keys::server::KeyServer;
use crate::federation::signing::KeyRing;
use crate::federation::verifier::SignatureVerifier;
use crate::gateway::channel::Channels;
use crate::identity::server_certs::{ServerCertError, ServerCerts};
use crate::identity::Identity;
use crate::store::{EventLog, EventLogHandle, Store, StoreError};
use crate::telemetry::Metrics;
use crate::transparency::witness::Witness;
use crate::transparency::Transparency;

/// What every handler can reach.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub log: EventLogHandle,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<KeyRing>,
    pub key_server: KeyServer,
    pub notary: Notary,
    /// Our root ID-Certs (polyproto).
    pub certs: Arc<ServerCerts>,
    /// The federation inbox pipeline, with its Origin actors.
    pub inbox: Arc<Inbox>,
    /// Outbound delivery, with its Destination actors.
    pub delivery: Arc<Delivery>,
    /// Local fan-out: a Channel actor per channel with subscribers.
    pub channels: Arc<Channels>,
    /// Password hashes allowed at once.
    pub hashers: crate::identity::accounts::Hashers,
    /// Single-use WebSocket tickets.
    pub tickets: crate::gateway::tickets::Tickets,
    /// Actor identity: sessions (local and foreign), actor certificates, challenges,
    /// services.
    pub identity: Arc<Identity>,
    /// Client sessions' cursors (socket and REST catch-up).
    pub cursors: Arc<crate::gateway::cursors::Cursors>,
    /// Gateway handshakes admitted per second.
    pub admission: crate::gateway::admission::Admission,
    /// The recent client events, serialised, for replays without a database read.
    pub recent: Arc<crate::gateway::recent::RecentEvents>,
    /// Replays older than the recent window read the log in pages; at most half the reader
    /// pool does so at once, so that a reconnect storm leaves connections for the API.
    pub replay_readers: tokio::sync::Semaphore,
    /// The thread gateway start-ups (token check, memberships, cursor) run on, off the HTTP
    /// workers (see `gateway::session::off_worker`).
    pub startup: actix::ArbiterHandle,
    /// The verifiable log: checkpoints, proofs, witnessing.
    pub transparency: Arc<Transparency>,
    /// Witnessing (DESIGN §2.5): the logs we cosign and the witnesses we push to.
    pub witness: Arc<Witness>,
    /// This node of a cluster (DESIGN §7); `None` on one node.
    pub cluster: Option<Arc<crate::cluster::Node>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] RotationError),
    #[error(transparent)]
    Certs(#[from] ServerCertError),
    #[error(transparent)]
    Inbox(#[from] InboxStartError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("{key}: {problem}")]
    Config { key: &'static str, problem: String },
}

pub struct Application {
    server: Server,
    port: u16,
    store: Store,
    log: EventLogHandle,
    inbox: Arc<Inbox>,
    delivery: Arc<Delivery>,
    channels: Arc<Channels>,
    cursors: Arc<crate::gateway::cursors::Cursors>,
    identity: Arc<Identity>,
    transparency: Arc<Transparency>,
    renew_certs: actix_web::rt::task::JoinHandle<()>,
    cluster: Option<crate::cluster::node::NodeGuard>,
}

/// What a session's end does beyond the log: its cursor goes, and its sockets close with
/// 4003. A foreign session that cannot be verified now keeps its cursor, and its sockets close
/// with 4000 (resumable).
fn session_ended(
    store: Store,
    cursors: Arc<crate::gateway::cursors::Cursors>,
    channels: Arc<Channels>,
    tickets: crate::gateway::tickets::Tickets,
) -> crate::identity::sessions::OnEnd {
    use crate::gateway::channel::CloseSocket;
    use crate::gateway::frames::close;
    use crate::identity::sessions::Closing;
    Box::new(move |fid, session_id, closing| {
        let close = match closing {
            Closing::Ended => {
                tickets.session_ended(session_id);
                cursors.forget(session_id);
                let (store, session_id) = (store.clone(), session_id.to_owned());
                actix_web::rt::spawn(async move {
                    if let Err(error) = store.delete_session_cursor(&session_id).await {
                        tracing::warn!(%error, "cannot delete an ended session's cursor");
                    }
                });
                CloseSocket {
                    code: close::NOT_AUTHENTICATED,
                    reason: "the session was ended",
                }
            }
            Closing::Unverified => CloseSocket {
                code: close::RESUME,
                reason: "the session's certificate cannot be checked now; resume later",
            },
        };
        channels.close_session(fid, session_id, close);
    })
}

impl Application {
    /// Opens the database, migrates it, starts the actors and binds `server.bind`.
    pub async fn build(config: Config) -> Result<Application, StartError> {
        // Bound first: a port in use fails before anything is written, and a cluster node
        // advertises the port it got.
        let listener =
            TcpListener::bind(&config.server.bind).map_err(|source| StartError::Bind {
                addr: config.server.bind.clone(),
                source,
            })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartError::Bind {
                addr: config.server.bind.clone(),
                source,
            })?
            .port();
        // HTTPS, and the extra roots of outbound calls, checked before anything is written.
        let tls = match (&config.server.tls_cert, &config.server.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::server_config(cert, key).map_err(|problem| {
                    StartError::Config {
                        key: "server.tls_cert",
                        problem,
                    }
                })?)
            }
            _ => None,
        };
        if let Some(ca_file) = &config.federation.ca_file {
            crate::tls::certificates(ca_file).map_err(|problem| StartError::Config {
                key: "federation.ca_file",
                problem,
            })?;
        }
        // This node's identity among the nodes of a cluster (DESIGN §7); `None` on one node.
        let node = crate::cluster::NodeIdentity::from_config(&config, port);
        let metrics = Arc::new(Metrics::new()?);
        let store = Store::connect(&config.database, config.storage.durability).await?;
        match node {
            Some(_) => store.migrate_exclusive().await?,
            None => store.migrate().await?,
        }
        let keys = Arc::new(open_key_ring(&config.keys.path, &config.server.name, &store).await?);
        let key_server = KeyServer::new(
            &config.server.name,
            keys.clone(),
            config.keys.response_lifetime,
        );
        let (log, cluster) = match &node {
            None => (
                EventLog::start(
                    &store,
                    config.storage.max_batch_events,
                    config.storage.publish_buffer,
                    metrics.clone(),
                )
                .await?,
                None,
            ),
            // A node starts following; its loop takes the lead if nobody holds it, and its
            // appends go to whoever leads meanwhile (DESIGN §7).
            Some(identity) => {
                let fence = Arc::new(crate::store::Fence::new());
                let log = EventLog::start_node(
                    &store,
                    config.storage.max_batch_events,
                    config.storage.publish_buffer,
                    metrics.clone(),
                    fence.clone(),
                )
                .await?;
                let node = crate::cluster::Node::start(
                    identity.clone(),
                    config.cluster.internal_token.clone(),
                    config.cluster.poll_interval,
                    store.clone(),
                    log.clone(),
                    fence,
                    metrics.clone(),
                )?;
                (log, Some(node))
            }
        };
        let cluster_node = cluster.as_ref().map(|guard| guard.0.clone());
        // Issued and renewed by the writer; every node follows them in the log.
        let (certs, renew_certs) = ServerCerts::start(
            &store,
            &config.server.name,
            config.keys.idcert_lifetime,
            keys.clone(),
            &log,
        )
        .await?;
        let notary = Notary::new(
            &config.server.name,
            keys.clone(),
            store.clone(),
            log.clone(),
            metrics.clone(),
        );
        let key_resolver = Arc::new(KeyResolver::new(config.federation.trusted_notaries.clone()));
        let verifier = SignatureVerifier::start(
            match config.federation.verify_threads {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
            config.federation.max_inflight_requests.max(64) * 2,
            metrics.verify_batch_size.clone(),
        );
        let inbox = Inbox::start(
            &config.server.name,
            &config.federation,
            &store,
            log.clone(),
            key_resolver.clone(),
            verifier.clone(),
            metrics.clone(),
            node.as_ref(),
        )
        .await?;
        let resolver = Arc::new(Resolver::new(&config.federation));
        let delivery = Delivery::start(
            &config.server.name,
            &config.federation,
            store.clone(),
            &log,
            keys.clone(),
            resolver.clone(),
            metrics.clone(),
            node.clone(),
        )
        .await?;
        let channels = Channels::start(
            &log,
            metrics.gateway_fanout_seconds.clone(),
            config.gateway.typing_ttl,
        );
        let cursors = crate::gateway::cursors::Cursors::start(log.clone());
        let per_session = u32::try_from(config.gateway.max_sockets_per_user).unwrap_or(u32::MAX);
        // A cluster's tickets are redeemed on whichever node the upgrade reaches.
        let tickets = match node {
            None => {
                crate::gateway::tickets::Tickets::new(config.gateway.ticket_lifetime, per_session)
            }
            Some(_) => crate::gateway::tickets::Tickets::in_cluster(
                config.gateway.ticket_lifetime,
                per_session,
                store.clone(),
            ),
        };
        let identity = Identity::start(
            &config,
            Arc::new(Clock::default()),
            &store,
            &log,
            verifier,
            &metrics,
            session_ended(
                store.clone(),
                cursors.clone(),
                channels.clone(),
                tickets.clone(),
            ),
        )
        .await?;
        let transparency = Transparency::start(
            &config.server.name,
            &config.transparency,
            &store,
            &log,
            keys.clone(),
            metrics.clone(),
        )
        .await?;
        let witness = Witness::start(
            transparency.clone(),
            key_resolver,
            resolver.clone(),
            &config.federation,
            metrics.clone(),
        )
        .await?;
        let state = web::Data::new(AppState {
            config: Arc::new(config.clone()),
            store: store.clone(),
            log: log.clone(),
            metrics,
            keys,
            key_server,
            notary,
            certs,
            inbox: inbox.clone(),
            delivery: delivery.clone(),
            channels: channels.clone(),
            hashers: crate::identity::accounts::Hashers::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
                config.server.password_hash_memory_kib,
                config.server.password_hash_passes,
            )
            .map_err(|(key, problem)| StartError::Config { key, problem })?,
            tickets,
            cursors: cursors.clone(),
            admission: crate::gateway::admission::Admission::new(
                config.gateway.handshake_rate_per_second,
                config.gateway.handshake_burst,
            ),
            startup: {
                // The thread lives as long as the process; dropping the Arbiter keeps it.
                let arbiter = actix::Arbiter::new();
                arbiter.handle()
            },
            replay_readers: tokio::sync::Semaphore::new(
                (config.database.max_connections as usize / 2).max(1),
            ),
            recent: crate::gateway::recent::RecentEvents::start(
                &log,
                config.gateway.recent_events,
                config.gateway.recent_bytes,
            ),
            identity: identity.clone(),
            transparency: transparency.clone(),
            witness,
            cluster: cluster_node,
        });
        let federation = config.federation.clone();
        let clustered = cluster.is_some();
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // awc clients are per thread: each worker gets its own, with pooled connections.
                .app_data(web::Data::new(OutboundClient::new(
                    resolver.clone(),
                    &federation,
                )))
                .wrap_fn(|mut request, service| {
                    crate::api::json_by_default(&mut request);
                    actix_web::dev::Service::call(service, request)
                })
                .configure(crate::api::configure)
                .configure(|cfg| {
                    if clustered {
                        crate::api::internal::configure(cfg);
                    }
                })
                .default_service(web::to(crate::api::not_found))
        })
        .disable_signals()
        // actix-http keeps a connection's write buffer at the largest size a burst gave it
        // (up to 128 KiB); at the default flush size of 32 KiB every WebSocket that once
        // took a replay kept about 32 KiB for good. 8 KiB bounds that (measured with
        // `switchyard-bench fanout`, README) at the price of a flush per 8 KiB of a large
        // response.
        .h1_write_buffer_size(H1_WRITE_BUFFER)
        .shutdown_timeout(config.server.shutdown_timeout.as_secs());
        if config.server.workers > 0 {
            server = server.workers(config.server.workers);
        }
        let server = match tls {
            Some(tls) => server.listen_rustls_0_23(listener, tls),
            None => server.listen(listener),
        }
        .map_err(|source| StartError::Bind {
            addr: config.server.bind.clone(),
            source,
        })?
        .run();
        tracing::info!(server_name = %config.server.name, port, https = config.server.tls_cert.is_some(), backend = ?store.backend(), "switchyard is listening");
        Ok(Application {
            server,
            port,
            store,
            log,
            inbox,
            delivery,
            channels,
            cursors,
            identity,
            transparency,
            renew_certs,
            cluster,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// This node of a cluster (`None` on one node).
    pub fn cluster(&self) -> Option<&Arc<crate::cluster::Node>> {
        self.cluster.as_ref().map(|guard| &guard.0)
    }

    pub fn event_log(&self) -> &EventLogHandle {
        &self.log
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn inbox(&self) -> &Arc<Inbox> {
        &self.inbox
    }

    pub fn channels(&self) -> &Arc<Channels> {
        &self.channels
    }

    /// Actor identity (tests move its clock).
    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// Stops the server: `stop(true)` is graceful (in-flight requests finish).
    /// The verifiable log: checkpoints and proof reads.
    pub fn transparency(&self) -> &Arc<Transparency> {
        &self.transparency
    }

    /// What stops this instance gracefully (see [`Shutdown::stop`]).
    pub fn shutdown(&self) -> Shutdown {
        Shutdown {
            server: self.server.handle(),
            channels: self.channels.clone(),
        }
    }

    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// Serves until stopped, then drains pending appends and closes the database.
    pub async fn run_until_stopped(self) -> Result<(), StartError> {
        let served = self.server.await;
        self.renew_certs.abort();
        self.delivery.stop().await;
        self.log.drain().await;
        tracing::info!("event log drained");
        if let Some(guard) = &self.cluster {
            // Hands the lead over now rather than after a lease.
            guard.0.leave().await;
        }
        self.cursors.flush(&self.log, true).await;
        drop(self.log);
        self.store.close().await?;
        served.map_err(|source| StartError::Bind {
            addr: "(server)".into(),
            source,
        })
    }
}

/// A graceful stop: every gateway socket is closed with 4000 (resume), so its client comes
/// back with Resume to the next instance and misses nothing; then in-flight requests finish
/// and the log drains ([`Application::run_until_stopped`]).
#[derive(Clone)]
pub struct Shutdown {
    server: ServerHandle,
    channels: Arc<Channels>,
}

/// The size at which an HTTP/1 connection's write buffer is flushed (see `Application::build`).
const H1_WRITE_BUFFER: usize = 8 * 1024;

/// How long closing sockets get to flush their close frames before the server stops.
const SOCKET_CLOSE_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

impl Shutdown {
    pub async fn stop(self) {
        use crate::gateway::channel::CloseSocket;
        use crate::gateway::frames::close;
        let sockets = self.channels.close_all(CloseSocket {
            code: close::RESUME,
            reason: "the server is restarting; resume",
        });
        if sockets > 0 {
            tracing::info!(sockets, "closing gateway sockets with 4000 (resume)");
            actix_web::rt::time::sleep(SOCKET_CLOSE_GRACE).await;
        }
        self.server.stop(true).await;
    }
}
