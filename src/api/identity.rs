//! polyproto routes for actors (DESIGN §4.2–§4.5), thin over [`crate::identity`]:
//! - `POST /.p2/core/v1/idcert` (bearer, local session): an ID-CSR as PEM → 201 `{id_cert,
//!   serial, not_before, not_after}`; a renewal takes `X-P2-Sensitive-Solution`;
//! - `GET /.p2/core/v1/idcert/actor/{fid}[?timestamp=&session_id=]`: the actor's
//!   certificates with their signed cache windows (ours from memory; another server's as
//!   its home signed them);
//! - `GET /.p2/core/v1/challenge`, `POST /.p2/core/v1/session/auth`: an actor of another
//!   server signs in by signing a challenge with its certificate's key;
//! - `PUT /.p2/core/v1/session/idcert/extern` (bearer, foreign session): its new certificate;
//! - `GET /.p2/core/v1/services/discover/{fid}[/{service}][?limit=]`, `POST`/`DELETE
//!   /.p2/core/v1/services`, `PUT /.p2/core/v1/services/primary`: services.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::authenticate;
use crate::app::AppState;
use crate::core::ids;
use crate::error::{ApiError, ErrorKind};
use crate::identity::actor_certs::{IssueError, IssuedActorCert};
use crate::identity::foreign::ForeignError;
use crate::identity::sessions::{home_unavailable, ChallengeAnswer, Session};
use crate::identity::IdentityError;

impl From<IdentityError> for ApiError {
    fn from(error: IdentityError) -> Self {
        let kind = match &error {
            IdentityError::BadCsr(_) => ErrorKind::BadCsr,
            IdentityError::Forbidden(_) => ErrorKind::Forbidden,
            IdentityError::Sensitive(_) => ErrorKind::SensitiveAction,
            IdentityError::InvalidParam(_) => ErrorKind::InvalidParam,
            IdentityError::BadChallenge(_) => ErrorKind::BadChallenge,
            IdentityError::BadCert(_) => ErrorKind::BadCert,
            IdentityError::CertInput(_) => ErrorKind::CertInput,
            IdentityError::BadSignature(_) => ErrorKind::BadSignature,
            IdentityError::MessageSignature(_) => ErrorKind::MessageSignature,
            IdentityError::SignatureRequired(_) => ErrorKind::SignatureRequired,
            IdentityError::NotFound(_) => ErrorKind::NotFound,
            IdentityError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            IdentityError::UnknownToken(_) => ErrorKind::UnknownToken,
            IdentityError::Limited { retry_after, .. } => {
                let seconds = *retry_after;
                return ApiError::new(ErrorKind::LimitExceeded, error.to_string())
                    .retry_after(seconds);
            }
            IdentityError::HomeUnavailable { retry_after, .. } => {
                let seconds = *retry_after;
                return ApiError::new(ErrorKind::Unavailable, error.to_string())
                    .retry_after(seconds);
            }
            IdentityError::Overloaded { retry_after, .. } => {
                let seconds = *retry_after;
                return ApiError::new(ErrorKind::Overloaded, error.to_string())
                    .retry_after(seconds);
            }
            IdentityError::Append(_) => {
                return ApiError::new(
                    ErrorKind::Unavailable,
                    "the event log could not commit; nothing was recorded, retry",
                )
                .with_cause(error)
            }
            // The database could not be read (a pool timeout, a restart): survivable.
            IdentityError::Store(_) => {
                return ApiError::new(
                    ErrorKind::Unavailable,
                    "the database could not be read; nothing was recorded, retry",
                )
                .with_cause(error)
            }
            IdentityError::Internal(_) => return ApiError::internal(error),
        };
        ApiError::new(kind, error.to_string())
    }
}

/// Largest PEM body (a CSR or a certificate) read.
const MAX_PEM_BYTES: usize = 16 * 1024;

/// A PEM body: as text (`text/plain`, `application/x-pem-file`), or a JSON string holding it.
fn pem_body(body: &[u8], what: &str) -> Result<String, IdentityError> {
    let invalid = |reason: &str| match what {
        "CSR" => IdentityError::BadCsr(format!("the body must be the ID-CSR as PEM: {reason}")),
        _ => IdentityError::CertInput(format!("the body must be the ID-Cert as PEM: {reason}")),
    };
    if body.len() > MAX_PEM_BYTES {
        return Err(invalid("it is over 16 KiB"));
    }
    let text = std::str::from_utf8(body).map_err(|_| invalid("it is not UTF-8"))?;
    if text.trim_start().starts_with('"') {
        return serde_json::from_str::<String>(text)
            .map_err(|_| invalid("a malformed JSON string"));
    }
    Ok(text.to_owned())
}

fn local_session(session: &Session, what: &str) -> Result<(), ApiError> {
    if session.idcert_serial.is_some() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!("{what} belongs to the actor's home server, not to a foreign session here"),
        ));
    }
    Ok(())
}

/// The sensitive-action check of `fid` with the request's `X-P2-Sensitive-Solution`.
async fn confirm(state: &AppState, fid: &str, solution: Option<&str>) -> Result<(), IdentityError> {
    state
        .identity
        .sensitive
        .check(&state.hashers, &state.store, fid, solution)
        .await
}

fn sensitive_solution(req: &HttpRequest) -> Option<String> {
    req.headers()
        .get("X-P2-Sensitive-Solution")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// `POST /.p2/core/v1/idcert`.
pub async fn issue(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = authenticate(&req, &state).await?;
    local_session(&session, "issuing a certificate")?;
    let csr = pem_body(&body, "CSR")?;
    let identity = &state.identity;
    let now = identity.clock.now_secs();
    let key = state.keys.current();
    let root = state
        .certs
        .at(&state.keys, now * 1000)
        .filter(|c| c.key_id == key.key_id());
    let solution = sensitive_solution(&req);
    let cert = identity
        .actor_certs
        .issue(
            &state.log,
            &key,
            root,
            &session.fid,
            &session.session_id,
            &csr,
            now,
            || identity.sessions.is_live(&session.session_id),
            async || confirm(&state, &session.fid, solution.as_deref()).await,
        )
        .await
        .map_err(|error| match error {
            IssueError::BadCsr(e) => ApiError::new(ErrorKind::BadCsr, e.to_string()),
            IssueError::Refused(e) => ApiError::new(ErrorKind::Forbidden, e.to_string()),
            IssueError::Renewal(e) => ApiError::from(e),
            IssueError::Append(e) => ApiError::from(IdentityError::Append(e)),
            IssueError::NoRoot => ApiError::new(
                ErrorKind::Unavailable,
                "this server's root ID-Cert is being renewed; retry shortly",
            ),
            IssueError::SessionEnded => ApiError::new(ErrorKind::UnknownToken, "the session ended"),
            other => ApiError::internal(other),
        })?;
    Ok(HttpResponse::Created().json(json!({
        "id_cert": &*cert.pem,
        "serial": cert.serial.to_string(),
        "not_before": cert.not_before,
        "not_after": cert.not_after,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertQuery {
    timestamp: Option<String>,
    session_id: Option<String>,
}

fn timestamp(text: Option<&str>) -> Result<Option<i64>, ApiError> {
    text.map(|t| {
        t.parse::<i64>().ok().filter(|s| *s >= 0).ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidParam,
                "timestamp must be a non-negative integer (unix seconds)",
            )
        })
    })
    .transpose()
}

fn entry_json(
    cert: &IssuedActorCert,
    window: &crate::identity::actor_certs::SignedWindow,
) -> Value {
    json!({
        "id_cert": &*cert.pem,
        "invalidated": cert.invalidated_at.is_some(),
        "serial": cert.serial.to_string(),
        "session_id": cert.session_id,
        "not_before": cert.not_before,
        "not_after": cert.not_after,
        "invalidated_at": cert.invalidated_at,
        "cache_not_valid_before": window.not_before,
        "cache_not_valid_after": window.not_after,
        "cache_signature": window.signature,
    })
}

/// `GET /.p2/core/v1/idcert/actor/{fid}`.
pub async fn actor_certs(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<CertQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(ErrorKind::InvalidParam, format!("bad query: {e}")))?;
    let at = timestamp(query.timestamp.as_deref())?;
    let session_id = query.session_id.as_deref();
    let fid = path.as_str();
    let Some((local, server)) = ids::parse_fid(fid) else {
        return Err(ApiError::new(
            ErrorKind::InvalidParam,
            format!("{fid:?} is not a federation id (local@server)"),
        ));
    };
    let identity = &state.identity;
    if server != state.config.server.name {
        // Only actors we hold certificates of: an anonymous question must not make this
        // server fetch from any name it is given.
        let held = identity.sessions.foreign().holds(fid)
            || state
                .store
                .has_foreign_idcert(fid)
                .await
                .map_err(|e| ApiError::from(IdentityError::Store(e)))?;
        if !held {
            return Err(ApiError::new(
                ErrorKind::NotFound,
                format!("this server holds no certificate of {fid}"),
            ));
        }
        let answer = identity
            .sessions
            .foreign()
            .answer(fid, at, session_id)
            .await
            .map_err(|error| match error {
                ForeignError::Untrusted(reason) => ApiError::new(
                    ErrorKind::NotFound,
                    format!("{fid}'s home server vouches for no certificate: {reason}"),
                ),
                other => ApiError::from(home_unavailable(other)),
            })?;
        return Ok(HttpResponse::Ok().json(answer));
    }
    let now = identity.clock.now_secs();
    let ttl = i64::try_from(state.config.identity.cert_cache_ttl.as_secs()).unwrap_or(3600);
    let key = state.keys.current();
    let certs: Vec<std::sync::Arc<IssuedActorCert>> = match at {
        // The past is in the projection; memory holds what has not expired.
        Some(at) if at < now => state
            .store
            .actor_idcerts_at(fid, at)
            .await
            .map_err(|e| ApiError::from(IdentityError::Store(e)))?
            .into_iter()
            .rev()
            .filter(|row| session_id.is_none_or(|s| row.session_id == s))
            .filter_map(|row| identity.actor_certs.past(row))
            .collect(),
        _ => identity.actor_certs.entries(fid, at, session_id, now),
    };
    if certs.is_empty()
        && !identity.actor_certs.knows(fid)
        && state
            .store
            .account(local)
            .await
            .map_err(|e| ApiError::from(IdentityError::Store(e)))?
            .is_none()
    {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("{fid} is not an actor of this server"),
        ));
    }
    let entries: Vec<Value> = certs
        .iter()
        .map(|cert| entry_json(cert, &cert.window(now, ttl, &key)))
        .collect();
    Ok(HttpResponse::Ok().json(entries))
}

/// Whether the client asked for JSON (`Accept: application/json`).
pub fn wants_json(req: &HttpRequest) -> bool {
    req.headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"))
}

/// The crate's `CacheableIdCert` for one of our root ID-Certs (DESIGN §4.1).
pub fn cacheable_root(state: &AppState, cert: &crate::identity::server_certs::IssuedCert) -> Value {
    let now = state.identity.clock.now_secs();
    let ttl = i64::try_from(state.config.identity.cert_cache_ttl.as_secs()).unwrap_or(3600);
    let not_after = (now + ttl).min(cert.not_after.div_euclid(1000)).max(now);
    let serial = hex::decode(&cert.serial)
        .map(|bytes| crate::identity::idcert::serial_decimal(&bytes))
        .unwrap_or_default();
    let message = crate::identity::checker::cache_message(&serial, now, not_after, None);
    let signature = state.keys.current().sign(message.as_bytes());
    json!({
        "idCertPem": &*cert.pem,
        "cacheNotValidBefore": now.to_string(),
        "cacheNotValidAfter": not_after.to_string(),
        "cacheSignature": hex::encode(signature.to_bytes()),
    })
}

/// `GET /.p2/core/v1/challenge`.
pub async fn challenge(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let challenge = state
        .identity
        .challenges
        .issue(super::peer_ip(&req))
        .await?;
    Ok(HttpResponse::Ok().json(json!({
        "challenge": challenge.challenge,
        "expires": challenge.expires,
    })))
}

/// `POST /.p2/core/v1/session/auth`.
pub async fn sign_in(
    body: web::Json<ChallengeAnswer>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let identity = &state.identity;
    let signed_in = identity
        .sessions
        .sign_in(&identity.challenges, &body)
        .await
        .map_err(ApiError::from);
    let result = match &signed_in {
        Ok(_) => "ok",
        Err(error) => error.kind.errcode(),
    };
    state
        .metrics
        .identity_sign_ins
        .with_label_values(&[result])
        .inc();
    let session = signed_in?;
    Ok(HttpResponse::Ok().json(json!({
        "token": session.token,
        "session_id": session.session_id,
        "fid": session.fid,
    })))
}

/// `PUT /.p2/core/v1/session/idcert/extern`.
pub async fn extern_certificate(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    // The token only: the certificate this request replaces may be the one no longer trusted.
    let token = super::bearer(&req, "session token")?;
    let session = state.identity.sessions.by_token(token).await?;
    let pem = pem_body(&body, "certificate")?;
    state
        .identity
        .sessions
        .update_certificate(&session, &pem)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoverQuery {
    limit: Option<usize>,
}

/// `GET /.p2/core/v1/services/discover/{fid}[/{service}]`.
pub async fn discover(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let fid = req.match_info().get("fid").unwrap_or_default().to_owned();
    let service = req.match_info().get("service").map(str::to_owned);
    let query = web::Query::<DiscoverQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(ErrorKind::InvalidParam, format!("bad query: {e}")))?;
    if query.limit == Some(0) {
        return Err(ApiError::new(
            ErrorKind::InvalidParam,
            "limit must be at least 1",
        ));
    }
    let registered = match ids::parse_fid(&fid) {
        Some((local, server)) if server == state.config.server.name => state
            .store
            .account(local)
            .await
            .map_err(|e| ApiError::from(IdentityError::Store(e)))?
            .is_some(),
        _ => false,
    };
    if !registered {
        return Err(ApiError::new(
            ErrorKind::NotFound,
            format!("{fid} is not an actor registered on this server"),
        ));
    }
    let services = state
        .identity
        .services
        .discover(&fid, service.as_deref(), query.limit)
        .await?;
    if services.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    Ok(HttpResponse::Ok().json(services))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewService {
    service: ServiceBody,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBody {
    service: String,
    url: String,
    #[serde(default)]
    primary: bool,
}

/// `POST /.p2/core/v1/services`.
pub async fn add_service(
    req: HttpRequest,
    body: web::Json<NewService>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = authenticate(&req, &state).await?;
    local_session(&session, "managing services")?;
    let solution = sensitive_solution(&req);
    let identity = &state.identity;
    let service = &body.service;
    let added = identity
        .services
        .add(
            &session.fid,
            &service.service,
            &service.url,
            service.primary,
            async || confirm(&state, &session.fid, solution.as_deref()).await,
        )
        .await?;
    Ok(HttpResponse::Created().json(added))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRef {
    name: String,
    url: String,
}

/// `DELETE /.p2/core/v1/services?name=&url=`.
pub async fn remove_service(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = authenticate(&req, &state).await?;
    local_session(&session, "managing services")?;
    let query = web::Query::<ServiceRef>::from_query(req.query_string()).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidParam,
            format!("name the provider: ?name=<service>&url=<url>: {e}"),
        )
    })?;
    let solution = sensitive_solution(&req);
    let identity = &state.identity;
    let removed = identity
        .services
        .remove(&session.fid, &query.name, &query.url, async || {
            confirm(&state, &session.fid, solution.as_deref()).await
        })
        .await?;
    Ok(HttpResponse::Ok().json([removed]))
}

/// `PUT /.p2/core/v1/services/primary {name, url}`.
pub async fn set_primary(
    req: HttpRequest,
    body: web::Json<ServiceRef>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = authenticate(&req, &state).await?;
    local_session(&session, "managing services")?;
    let solution = sensitive_solution(&req);
    let identity = &state.identity;
    let changed = identity
        .services
        .set_primary(&session.fid, &body.name, &body.url, async || {
            confirm(&state, &session.fid, solution.as_deref()).await
        })
        .await?;
    Ok(HttpResponse::Ok().json(changed))
}
