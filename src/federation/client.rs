//! Reaching other servers: server-name resolution and the one outbound HTTP client.
//!
//! Resolution (DESIGN §3): a name listed in `[federation.resolve]` goes to its base URL; a name
//! whose host is in `federation.plain_http_hosts` goes to `http://<name>`; everything else to
//! `https://<name>`, verified against the Mozilla root store (webpki-roots) with rustls.
//!
//! awc clients are per thread (not `Send`), so each HTTP worker builds its own
//! [`OutboundClient`] from the shared [`Resolver`]; connections are pooled per worker. Every
//! outbound call has a connect timeout and a whole-request timeout from the configuration.

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
        let host = match server_name.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(rest),
            None => server_name
                .rsplit_once(':')
                .map_or(server_name, |(host, _)| host),
        };
        let scheme = if self.plain_http_hosts.iter().any(|h| h == host) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{server_name}")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} answered {status}")]
    Status { url: String, status: StatusCode },
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
}

/// Largest response body read from another server.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

impl OutboundClient {
    pub fn new(resolver: Arc<Resolver>, config: &FederationConfig) -> OutboundClient {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|builder| builder.with_root_certificates(roots).with_no_client_auth());
        let mut connector = awc::Connector::new().timeout(config.connect_timeout);
        match tls {
            Ok(tls) => connector = connector.rustls_0_23(Arc::new(tls)),
            // ring supports the default protocol versions; should that ever change, https
            // calls fail with a clear connect error instead of the server refusing to start.
            Err(error) => tracing::error!(%error, "TLS is unavailable for outbound calls"),
        }
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(config.request_timeout)
            .add_default_header((
                "User-Agent",
                concat!("switchyard/", env!("CARGO_PKG_VERSION")),
            ))
            .finish();
        OutboundClient { client, resolver }
    }

    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    /// `GET <base URL of server_name><path>`, answering the body of a 200.
    pub async fn get(&self, server_name: &str, path: &str) -> Result<Bytes, FetchError> {
        let url = format!("{}{path}", self.resolver.base_url(server_name));
        let mut response =
            self.client
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
        let mut response = request
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

#[cfg(test)]
mod tests {
    use super::*;

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
