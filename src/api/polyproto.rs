//! polyproto core routes for the server's own identity (DESIGN §4; the polyproto core API).
//!
//! - `GET /.p2/core/v1/key/server[?timestamp=<unix seconds>]`: the server's public key as a
//!   PEM SubjectPublicKeyInfo, the current one or the one that was current at `timestamp`;
//! - `GET /.p2/core/v1/idcert/server[?timestamp=<unix seconds>]`: the server's self-signed
//!   root ID-Cert as PEM, the current one or the one valid at `timestamp`; with `Accept:
//!   application/json`, the polyproto crate's `CacheableIdCert` of it;
//! - `PUT /.p2/core/v1/key/server` (admin token): rotates the key and answers the new key's
//!   ID-Cert as PEM;
//! - `GET /.well-known/polyproto-core`: `{"api": "<public base URL>/.p2/core/"}`.

use actix_web::{web, HttpRequest, HttpResponse};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::clock::now_ms;
use crate::error::{ApiError, ErrorKind};

const PEM: &str = "application/x-pem-file";

#[derive(Deserialize)]
pub struct AtQuery {
    timestamp: Option<String>,
}

impl AtQuery {
    /// The time asked for, in ms: `timestamp` (unix seconds) or now.
    fn at_ms(&self) -> Result<i64, ApiError> {
        match self.timestamp.as_deref() {
            None => Ok(now_ms()),
            Some(text) => text
                .parse::<i64>()
                .ok()
                .filter(|secs| (0..=i64::MAX / 1000).contains(secs))
                .map(|secs| secs * 1000)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::InvalidParam,
                        "timestamp must be a non-negative integer (unix seconds)",
                    )
                }),
        }
    }
}

pub async fn server_key(
    query: web::Query<AtQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let key = state.keys.verifying_key_at(query.at_ms()?).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "no key of this server is known for that time",
        )
    })?;
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().content_type(PEM).body(pem))
}

pub async fn server_idcert(
    req: HttpRequest,
    query: web::Query<AtQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let cert = state.certs.at(&state.keys, query.at_ms()?).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "this server had no ID-Cert valid at that time",
        )
    })?;
    if super::identity::wants_json(&req) {
        return Ok(HttpResponse::Ok().json(super::identity::cacheable_root(&state, &cert)));
    }
    Ok(HttpResponse::Ok()
        .content_type(PEM)
        .body(cert.pem.to_string()))
}

pub async fn rotate_server_key(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::admin::require_admin(&req, &state)?;
    let (_, cert) = super::admin::rotate_and_certify(&state).await?;
    Ok(HttpResponse::Ok()
        .content_type(PEM)
        .body(cert.pem.to_string()))
}

pub async fn well_known(state: web::Data<AppState>) -> HttpResponse {
    let base = state.config.server.public_base_url.trim_end_matches('/');
    HttpResponse::Ok().json(json!({"api": format!("{base}/.p2/core/")}))
}
