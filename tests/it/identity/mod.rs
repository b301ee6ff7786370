//! Actor identity (DESIGN §4.2–§4.5): certificates, foreign sessions, signed messages,
//! services. The polyproto crate (a dev-dependency written by others) makes the CSRs and
//! checks what we issue.

mod certs;
mod foreign;
mod services;
mod signed;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;

use crate::helpers::TestApp;

/// The log's head `seq`.
pub async fn head(app: &TestApp) -> u64 {
    app.store.head().await.expect("head").0
}

/// A request body.
pub enum Body {
    Json(Value),
    /// `text/plain` (PEM).
    Text(String),
}

/// What a request was answered.
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub retry_after: Option<String>,
}

/// One request: the bearer `token`, the `body`, `X-P2-Sensitive-Solution` when given.
pub async fn request(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Body>,
    sensitive: Option<&str>,
) -> Reply {
    let mut request = awc::Client::default().request(
        method.parse().expect("method"),
        format!("{}{path}", app.address),
    );
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(solution) = sensitive {
        request = request.insert_header(("X-P2-Sensitive-Solution", solution));
    }
    let mut res = match body {
        Some(Body::Json(body)) => request.send_json(&body).await,
        Some(Body::Text(text)) => {
            request
                .insert_header(("Content-Type", "text/plain"))
                .send_body(text)
                .await
        }
        None => request.send().await,
    }
    .expect("request");
    let retry_after = res
        .headers()
        .get("Retry-After")
        .map(|v| v.to_str().expect("ascii").to_owned());
    let bytes = res.body().await.expect("body");
    Reply {
        status: res.status().as_u16(),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry_after,
    }
}

/// Sends `pem` as a `text/plain` body.
pub async fn send_pem(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    pem: &str,
    sensitive: Option<&str>,
) -> (u16, Value) {
    let reply = request(
        app,
        method,
        path,
        token,
        Some(Body::Text(pem.to_owned())),
        sensitive,
    )
    .await;
    (reply.status, reply.body)
}

/// `POST /.p2/core/v1/idcert` with a CSR.
pub async fn issue(app: &TestApp, token: &str, csr: &str, sensitive: Option<&str>) -> (u16, Value) {
    send_pem(
        app,
        "POST",
        "/.p2/core/v1/idcert",
        Some(token),
        csr,
        sensitive,
    )
    .await
}

/// The server's current signing key, from its well-known document.
pub async fn server_key(app: &TestApp) -> VerifyingKey {
    let (_, body) =
        crate::gateway::call(app, "GET", "/.well-known/switchyard-server", None, None).await;
    let bytes =
        switchyard::federation::signing::unb64(body["signing_key_public"].as_str().expect("key"))
            .expect("b64");
    VerifyingKey::from_bytes(&bytes.try_into().expect("32 bytes")).expect("key")
}
