//! polyproto core routes for the server's own key (DESIGN §4).
//!
//! - `GET /.p2/core/v1/key/server[?timestamp=<unix seconds>]`: the server's public key as a
//!   PEM SubjectPublicKeyInfo, the current one or the one that was current at `timestamp`;
//! - `PUT /.p2/core/v1/key/server` (admin token): rotates the key, as
//!   `POST /admin/v1/keys/rotate` does.

use actix_web::{web, HttpRequest, HttpResponse};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use serde::Deserialize;

use crate::app::AppState;
use crate::clock::now_ms;
use crate::error::{ApiError, ErrorKind};

#[derive(Deserialize)]
pub struct KeyQuery {
    timestamp: Option<String>,
}

pub async fn server_key(
    query: web::Query<KeyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let at_ms = match query.timestamp.as_deref() {
        None => now_ms(),
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
            })?,
    };
    let key = state.keys.verifying_key_at(at_ms).ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "no key of this server is known for that time",
        )
    })?;
    let pem = key
        .to_public_key_pem(LineEnding::LF)
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/x-pem-file")
        .body(pem))
}

pub async fn rotate_server_key(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    super::admin::rotate_keys(req, state).await
}
