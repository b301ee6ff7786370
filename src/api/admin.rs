//! The admin API (`/admin/v1/*`), behind `server.admin_token`.
//!
//! `Authorization: Bearer <server.admin_token>`: no or malformed header → 401
//! `SY_MISSING_TOKEN`; a wrong token, or an empty `admin_token` (admin API off) → 403
//! `SY_FORBIDDEN`. Tokens are compared through their SHA-256 digests, so the comparison
//! takes the same time wherever they differ.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::{ApiError, ErrorKind};
use crate::federation::keys::rotation;
use crate::identity::server_certs::IssuedCert;

/// Checks the admin bearer token of `req`.
pub fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let configured = &state.config.server.admin_token;
    if configured.is_empty() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "the admin API is off (server.admin_token is empty)",
        ));
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::MissingToken,
                "this route needs Authorization: Bearer <admin token>",
            )
        })?;
    if Sha256::digest(given.as_bytes()) != Sha256::digest(configured.as_bytes()) {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "the admin token is not valid",
        ));
    }
    Ok(())
}

/// `POST /admin/v1/keys/rotate` → `{key_id, old_key_id, expired_ts, idcert_serial}`.
pub async fn rotate_keys(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let (rotated, cert) = rotate_and_certify(&state).await?;
    Ok(HttpResponse::Ok().json(json!({
        "key_id": rotated.new_key_id,
        "old_key_id": rotated.old_key_id,
        "expired_ts": rotated.expired_ts,
        "idcert_serial": cert.serial,
    })))
}

/// Rotates the signing key, then issues the new key's root ID-Cert. The caller has checked
/// the admin token.
pub async fn rotate_and_certify(
    state: &AppState,
) -> Result<(rotation::Rotated, IssuedCert), ApiError> {
    let rotated = rotation::rotate(
        &state.keys,
        &state.log,
        &state.store,
        &state.config.server.name,
    )
    .await
    .map_err(ApiError::internal)?;
    // If this fails, the hourly check issues the certificate later.
    let cert = state
        .certs
        .ensure_current(&state.keys, &state.log)
        .await
        .map_err(ApiError::internal)?;
    Ok((rotated, cert))
}
