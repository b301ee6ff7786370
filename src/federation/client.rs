//! Reaching other servers: server-name resolution and the one outbound HTTP client.
//!
//! Resolution (DESIGN §3): a name listed in `[federation.resolve]` goes to its base URL; a name
//! whose host is in `federation.plain_http_hosts` goes to `http://<name>`; everything else to
//! `https://<name>`, verified against the Mozilla root store (webpki-roots) with rustls.
//!
//! awc clients are per thread (not `Send`), so each HTTP worker builds its own
//! [`OutboundClient`] from the shared [`Resolver`]; connections are pooled per worker. Every
//! outbound call has a connect timeout and a whole-request timeout from the configuration.
//!
//! [`FencedFetcher`] makes the fetches a client's request can trigger from a server the
//! request names (an actor's home server, DESIGN §4.3–§4.4, issue 10 item 6). It reaches only
//! public addresses, unless the name is in `[federation.resolve]` or its host in
//! `federation.plain_http_hosts`: an IP literal is checked before any connection, a DNS name
//! by the resolver of its own client, which refuses a name with any loopback, private,
//! link-local or otherwise non-public address, so the connection only ever goes to an address
//! that was checked; it follows no redirect. Its answers are bounded in size, its requests by
//! the outbound timeouts, a bounded queue to one thread of its own and 64 fetches at once.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;

use crate::config::FederationConfig;

/// Where each server name is reached.
#[derive(Clone, Debug)]
pub struct Resolver {
    resolve: std::collections::BTreeMap<String, String>,
    plain_http_hosts: Vec<String>,
}

impl Resolver {
    pub fn new(config: &FederationConfig) -> Resolver {
        Resolver {
            resolve: config.resolve.clone(),
            plain_http_hosts: config.plain_http_hosts.clone(),
        }
    }

    /// The base URL of `server_name`, without a trailing slash.
    pub fn base_url(&self, server_name: &str) -> String {
        if let Some(url) = self.resolve.get(server_name) {
            return url.trim_end_matches('/').to_owned();
        }
        let host = crate::identity::idcert::host_of(server_name);
        let scheme = if self.plain_http_hosts.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{server_name}")
    }

    /// Whether the operator named `server_name` (in `[federation.resolve]`, or its host in
    /// `federation.plain_http_hosts`): such a server may be at any address.
    pub fn operator_listed(&self, server_name: &str) -> bool {
        self.resolve.contains_key(server_name)
            || self
                .plain_http_hosts
                .iter()
                .any(|h| h == crate::identity::idcert::host_of(server_name))
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local, shared
/// (CGNAT), unspecified, broadcast, multicast, documentation, benchmarking or reserved; an
/// IPv4 address inside IPv6 (mapped, compatible, NAT64) is judged as IPv4.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            if segments[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                // IPv4-compatible (deprecated): judge the IPv4 address.
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public(IpAddr::from([a, b, c, d]));
            }
            if segments[0] == 0x2002 {
                // 6to4: judge the IPv4 address it carries.
                let [a, b] = segments[1].to_be_bytes();
                let [c, d] = segments[2].to_be_bytes();
                return is_public(IpAddr::from([a, b, c, d]));
            }
            if segments[..2] == [0x64, 0xff9b] && segments[2] == 1 {
                // Local-use NAT64 (RFC 8215): never a public address.
                return false;
            }
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = segments[6].to_be_bytes();
                let [c, d] = segments[7].to_be_bytes();
                return is_public(IpAddr::from([a, b, c, d]));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00
                || (segments[0] & 0xffc0) == 0xfe80
                || (segments[0] & 0xffc0) == 0xfec0
                || (segments[0] == 0x2001 && segments[1] == 0x0db8)
                || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0]))
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum FetchError {
    #[error("{server} is not fetched from: {detail}")]
    Fenced { server: String, detail: String },
    #[error("too many fetches are waiting; retry shortly")]
    Busy,
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("the answer of {url} is over {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("the answer of {url} is over {limit} bytes or unreadable: {detail}")]
    Body {
        url: String,
        limit: usize,
        detail: String,
    },
}

/// The outbound HTTP client of one worker thread.
pub struct OutboundClient {
    client: awc::Client,
    resolver: Arc<Resolver>,
    /// The whole request, body included (awc's own timeout stops at the headers).
    request_timeout: std::time::Duration,
}

/// Largest response body read from another server.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// The TLS settings of outbound calls: the Mozilla root store (webpki-roots), plus the
/// roots of `federation.ca_file` (checked at start, see `Application::build`).
fn tls_config(config: &FederationConfig) -> Option<Arc<rustls::ClientConfig>> {
    let extra = match &config.ca_file {
        Some(path) => match crate::tls::certificates(path) {
            Ok(certs) => certs,
            Err(problem) => {
                tracing::error!(%problem, "federation.ca_file: trusting the web PKI only");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    match crate::tls::client_config(&extra) {
        Ok(tls) => Some(Arc::new(tls)),
        // ring supports the default protocol versions; should that ever change, https calls
        // fail with a clear connect error instead of the server refusing to start.
        Err(error) => {
            tracing::error!(%error, "TLS is unavailable for outbound calls");
            None
        }
    }
}

/// An awc client with the outbound timeouts and TLS settings over `connector`.
fn build_client<S, IO>(
    connector: awc::Connector<S>,
    config: &FederationConfig,
    follow_redirects: bool,
) -> awc::Client
where
    IO: actix_rt::net::ActixStream + std::fmt::Debug + 'static,
    S: actix_web::dev::Service<
            actix_tls::connect::ConnectInfo<actix_web::http::Uri>,
            Response = actix_tls::connect::Connection<actix_web::http::Uri, IO>,
            Error = actix_tls::connect::ConnectError,
        > + Clone
        + 'static,
{
    let mut connector = connector.timeout(config.connect_timeout);
    if let Some(tls) = tls_config(config) {
        connector = connector.rustls_0_23(tls);
    }
    let builder = awc::Client::builder()
        .connector(connector)
        .timeout(config.request_timeout)
        .add_default_header((
            "User-Agent",
            concat!("switchyard/", env!("CARGO_PKG_VERSION")),
        ));
    if follow_redirects {
        builder.finish()
    } else {
        builder.disable_redirects().finish()
    }
}

impl OutboundClient {
    pub fn new(resolver: Arc<Resolver>, config: &FederationConfig) -> OutboundClient {
        let client = build_client(awc::Connector::new(), config, true);
        OutboundClient {
            client,
            resolver,
            request_timeout: config.request_timeout,
        }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// `GET <base URL of server_name><path>`, answering the body of a 200.
    pub async fn get(&self, server_name: &str, path: &str) -> Result<Bytes, FetchError> {
        let url = format!("{}{path}", self.resolver.base_url(server_name));
        let response = self
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| FetchError::Unreachable {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status {
                url,
                status: response.status(),
            });
        }
        let mut response = response.timeout(self.request_timeout);
        response
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| FetchError::Body {
                url,
                limit: MAX_RESPONSE_BYTES,
                detail: e.to_string(),
            })
    }
}

/// What another server answered to a POST.
#[derive(Debug)]
pub struct PostAnswer {
    pub status: StatusCode,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after: Option<u64>,
    pub body: Bytes,
}

impl OutboundClient {
    /// `POST <base URL of server_name><path>` with `headers` and a JSON `body`; any status is
    /// an answer (the caller decides), only a failure to get one is an error.
    pub async fn post(
        &self,
        server_name: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<PostAnswer, FetchError> {
        let url = format!("{}{path}", self.resolver.base_url(server_name));
        let mut request = self
            .client
            .post(&url)
            .insert_header(("Content-Type", "application/json"));
        for (name, value) in headers {
            request = request.insert_header((*name, *value));
        }
        let response = request
            .send_body(body)
            .await
            .map_err(|e| FetchError::Unreachable {
                url: url.clone(),
                detail: e.to_string(),
            })?;
        let retry_after = response
            .headers()
            .get("Retry-After")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        let mut response = response.timeout(self.request_timeout);
        let body = response
            .body()
            .limit(MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| FetchError::Body {
                url,
                limit: MAX_RESPONSE_BYTES,
                detail: e.to_string(),
            })?;
        Ok(PostAnswer {
            status: response.status(),
            retry_after,
            body,
        })
    }
}

/// Resolves names for the fenced client: only a name whose every address is public.
struct PublicOnly;

impl actix_tls::connect::Resolve for PublicOnly {
    fn lookup<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<SocketAddr>, Box<dyn std::error::Error>>> + 'a>>
    {
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
            if let Some(private) = addresses.iter().find(|a| !is_public(a.ip())) {
                return Err(format!(
                    "{host} resolves to {}, which is not a public address",
                    private.ip()
                )
                .into());
            }
            Ok(addresses)
        })
    }
}

struct FetchJob {
    server_name: String,
    path: String,
    /// The operator named this server: any address, through the unfenced client.
    listed: bool,
    limit: usize,
    reply: tokio::sync::oneshot::Sender<Result<Bytes, FetchError>>,
}

/// Fetches from servers that a client's request names, fenced to public addresses (see the
/// module doc). One thread of its own runs them, behind a bounded queue.
#[derive(Clone)]
pub struct FencedFetcher {
    queue: tokio::sync::mpsc::Sender<FetchJob>,
    resolver: Arc<Resolver>,
    request_timeout: std::time::Duration,
    fetches: Arc<std::sync::atomic::AtomicU64>,
}

/// Fetches waiting for the fenced fetcher's thread at most.
const FENCED_QUEUE: usize = 1024;
/// Fetches the fenced fetcher runs at once.
const FENCED_CONCURRENCY: usize = 64;

impl FencedFetcher {
    /// Starts the fetcher's thread.
    pub fn start(config: &FederationConfig) -> FencedFetcher {
        let resolver = Arc::new(Resolver::new(config));
        let request_timeout = config.request_timeout;
        let (queue, mut jobs) = tokio::sync::mpsc::channel::<FetchJob>(FENCED_QUEUE);
        let arbiter = actix_rt::Arbiter::new();
        let config = config.clone();
        let base = resolver.clone();
        // The clients are built on the fetcher's own thread: awc clients are not `Send`.
        // Neither follows redirects: a redirect would lead the fenced one past its fence.
        arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let fenced = build_client(
                    awc::Connector::new().connector(
                        actix_tls::connect::Connector::new(actix_tls::connect::Resolver::custom(
                            PublicOnly,
                        ))
                        .service(),
                    ),
                    &config,
                    false,
                );
                let listed = build_client(awc::Connector::new(), &config, false);
                // Bounded fetches at once, so that answers in memory are bounded too.
                let running = Arc::new(tokio::sync::Semaphore::new(FENCED_CONCURRENCY));
                while let Some(job) = jobs.recv().await {
                    let Ok(permit) = running.clone().acquire_owned().await else {
                        break;
                    };
                    let client = if job.listed { &listed } else { &fenced }.clone();
                    let url = format!("{}{}", base.base_url(&job.server_name), job.path);
                    let timeout = config.request_timeout;
                    actix_web::rt::spawn(async move {
                        let answer =
                            fetch(&client, &job.server_name, url, job.limit, timeout).await;
                        let _ = job.reply.send(answer);
                        drop(permit);
                    });
                }
                actix_rt::Arbiter::current().stop();
            });
        });
        FencedFetcher {
            queue,
            resolver,
            request_timeout,
            fetches: Arc::default(),
        }
    }

    /// Fetches made so far (tests check that a refused name made none).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `GET <base URL of server_name><path>`, answering the body of a 200 of at most `limit`
    /// bytes. A name the operator did not list is refused at once when its host is a
    /// non-public IP address, and by the resolver when it resolves to one.
    pub async fn get(
        &self,
        server_name: &str,
        path: &str,
        limit: usize,
    ) -> Result<Bytes, FetchError> {
        let listed = self.resolver.operator_listed(server_name);
        if !listed {
            let host = crate::identity::idcert::host_of(server_name);
            if let Ok(ip) = host.parse::<IpAddr>() {
                if !is_public(ip) {
                    return Err(FetchError::Fenced {
                        server: server_name.to_owned(),
                        detail: format!("{ip} is not a public address"),
                    });
                }
            }
        }
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (reply, answer) = tokio::sync::oneshot::channel();
        let waiting = self.request_timeout * 2 + std::time::Duration::from_secs(1);
        self.queue
            .try_send(FetchJob {
                server_name: server_name.to_owned(),
                path: path.to_owned(),
                listed,
                limit,
                reply,
            })
            .map_err(|_| FetchError::Busy)?;
        // Bounded even if the fetcher's thread stalls: a queued job waits for a permit.
        match tokio::time::timeout(waiting, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) | Err(_) => Err(FetchError::Busy),
        }
    }
}

async fn fetch(
    client: &awc::Client,
    server: &str,
    url: String,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, FetchError> {
    let response = client.get(&url).send().await.map_err(|e| {
        let detail = e.to_string();
        if detail.contains("not a public address") {
            FetchError::Fenced {
                server: server.to_owned(),
                detail,
            }
        } else {
            FetchError::Unreachable {
                url: url.clone(),
                detail,
            }
        }
    })?;
    if response.status() != StatusCode::OK {
        return Err(FetchError::Status {
            url,
            status: response.status(),
        });
    }
    // awc's request timeout stops at the headers: the body gets one of its own.
    let mut response = response.timeout(timeout);
    response.body().limit(limit).await.map_err(|e| match e {
        awc::error::PayloadError::Overflow => FetchError::TooLarge { url, limit },
        other => FetchError::Body {
            url,
            limit,
            detail: other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "::127.0.0.1",
            "2002:7f00:1::1",
            "2002:c0a8:101::",
            "64:ff9b:1::808:808",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
    }

    #[test]
    fn resolution_order() {
        let mut config = FederationConfig::default();
        config
            .resolve
            .insert("peer.example".into(), "http://127.0.0.1:9000/".into());
        let resolver = Resolver::new(&config);
        assert_eq!(resolver.base_url("peer.example"), "http://127.0.0.1:9000");
        assert_eq!(resolver.base_url("localhost:8008"), "http://localhost:8008");
        assert_eq!(resolver.base_url("127.0.0.1"), "http://127.0.0.1");
        assert_eq!(
            resolver.base_url("chat.example.org"),
            "https://chat.example.org"
        );
        assert_eq!(
            resolver.base_url("chat.example.org:8448"),
            "https://chat.example.org:8448"
        );
        assert_eq!(resolver.base_url("[::1]:8448"), "https://[::1]:8448");
    }
}
