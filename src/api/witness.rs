//! Witnessing routes (DESIGN §2.5), thin over [`crate::transparency::witness`]:
//! `POST /log/add-checkpoint` (C2SP tlog-witness, public: the checkpoint's signature is the
//! only authentication) and `GET /admin/v1/witnesses` (admin token).
//!
//! add-checkpoint answers: 200 `text/plain; charset=utf-8` with our cosignature line; 409
//! `text/x.tlog.size` with `<size>\n` (the size we last cosigned); every other refusal in the
//! one JSON error format — 400 `SY_INVALID_PARAM` (malformed, old past size), 403
//! `SY_FORBIDDEN` (no verifying signature of the log's key), 404 `SY_NOT_FOUND` (a log we do
//! not witness), 413 `SY_TOO_LARGE`, 422 `SY_BAD_PROOF` (bad consistency proof, fork), 503
//! `SY_UNAVAILABLE` (the log's keys or our storage not answering).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::admin::require_admin;
use crate::app::AppState;
use crate::clock::rfc3339_ms;
use crate::error::{ApiError, ErrorKind};
use crate::federation::client::OutboundClient;
use crate::transparency::witness::{WitnessError, MAX_REQUEST_BYTES, SIZE_CONTENT_TYPE};

impl From<WitnessError> for ApiError {
    fn from(error: WitnessError) -> ApiError {
        let message = error.to_string();
        match error {
            WitnessError::Malformed(_) | WitnessError::OldPastSize { .. } => {
                ApiError::new(ErrorKind::InvalidParam, message)
            }
            WitnessError::UnknownLog(_) => ApiError::new(ErrorKind::NotFound, message),
            WitnessError::Unverified(_) => ApiError::new(ErrorKind::Forbidden, message),
            WitnessError::BadProof(_) | WitnessError::Fork { .. } => {
                ApiError::new(ErrorKind::BadProof, message)
            }
            // Answered as text by the handler; mapped for completeness.
            WitnessError::Conflict { .. } => ApiError::new(ErrorKind::AlreadyExists, message),
            WitnessError::KeysUnavailable { .. } => {
                ApiError::new(ErrorKind::Unavailable, message).with_cause(error)
            }
            WitnessError::Store(crate::store::StoreError::Corrupt { .. }) => {
                ApiError::internal(error)
            }
            WitnessError::Store(_) => ApiError::new(
                ErrorKind::Unavailable,
                "the witness's storage is not answering; retry",
            )
            .with_cause(error),
        }
    }
}

/// `POST /log/add-checkpoint`.
pub async fn add_checkpoint(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<OutboundClient>,
) -> Result<HttpResponse, ApiError> {
    let body = super::federation::read_capped(&req, payload, MAX_REQUEST_BYTES)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::TooLarge => ApiError::new(
                ErrorKind::TooLarge,
                format!("an add-checkpoint body is at most {MAX_REQUEST_BYTES} bytes"),
            ),
            _ => e,
        })?;
    match state.witness.add_checkpoint(&client, &body).await {
        Ok(cosignature) => Ok(HttpResponse::Ok()
            .content_type("text/plain; charset=utf-8")
            .body(cosignature)),
        Err(WitnessError::Conflict { size, .. }) => Ok(HttpResponse::Conflict()
            .content_type(SIZE_CONTENT_TYPE)
            .body(format!("{size}\n"))),
        Err(error) => Err(error.into()),
    }
}

/// `GET /admin/v1/witnesses` → `{"witnesses": [{server, cosigned_size, cosigned_at,
/// last_error, attempts}], "witnessing": [{origin, size, updated_at}]}`.
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let witnesses: Vec<_> = state
        .witness
        .push_status()
        .into_iter()
        .map(|(server, status)| {
            json!({
                "server": server,
                "cosigned_size": status.cosigned_size,
                "cosigned_at": status.cosigned_at.map(rfc3339_ms),
                "last_error": status.last_error,
                "attempts": status.attempts,
            })
        })
        .collect();
    let witnessing: Vec<_> = state
        .witness
        .witnessed()
        .await
        .map_err(|e| ApiError::from(WitnessError::from(e)))?
        .into_iter()
        .map(|log| {
            json!({
                "origin": log.origin,
                "size": log.size,
                "updated_at": rfc3339_ms(log.updated_at),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({
        "witnesses": witnesses,
        "witnessing": witnessing,
    })))
}
