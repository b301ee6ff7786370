//! The nodes' own routes (DESIGN §7), present only when `cluster.enabled`:
//! `POST /internal/v1/append` — a follower's append, committed by the leader.
//!
//! `Authorization: Bearer <cluster.internal_token>` (compared through SHA-256 digests, like
//! the admin token). A node that does not lead answers 503 `SY_NOT_LEADER` with
//! `Retry-After`, and never forwards further: a follower asks the database who leads.

use actix_web::{web, HttpRequest, HttpResponse};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::cluster::forward::{AppendAnswer, AppendRequest};
use crate::core::event::NewEvent;
use crate::error::{ApiError, ErrorKind};
use crate::store::AppendError;

/// The largest forwarded append: an inbox request's events (at most
/// `federation.max_body_bytes` of JSON) and their envelope, with room to spare.
pub const MAX_APPEND_BYTES: usize = 32 << 20;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/internal/v1/append")
            .app_data(web::PayloadConfig::new(MAX_APPEND_BYTES))
            .route(web::post().to(append))
            .default_service(web::to(|| async {
                Err::<HttpResponse, _>(ApiError::new(
                    ErrorKind::MethodNotAllowed,
                    "POST /internal/v1/append is the only method here",
                ))
            })),
    );
}

fn require_node(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let given = super::bearer(req, "cluster.internal_token")?;
    let configured = &state.config.cluster.internal_token;
    if Sha256::digest(given.as_bytes()) != Sha256::digest(configured.as_bytes()) {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "the internal token is not this cluster's",
        ));
    }
    Ok(())
}

/// `POST /internal/v1/append` `{"events": [...]}` → `{"outcomes": [{"seq", "duplicate"}]}`,
/// after the commit.
pub async fn append(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_node(&req, &state)?;
    let not_leader = || {
        ApiError::new(
            ErrorKind::NotLeader,
            "this node does not lead the cluster; ask the database who does",
        )
        .retry_after(1)
    };
    if !state.log.role().borrow().writes() {
        return Err(not_leader());
    }
    let request: AppendRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            ErrorKind::BadJson,
            format!("the body is not an append request: {e}"),
        )
    })?;
    let prepared = request
        .events
        .into_iter()
        .enumerate()
        .map(|(index, event)| {
            NewEvent::from(event).prepare().map_err(|error| {
                ApiError::new(
                    ErrorKind::InvalidParam,
                    format!("event {index} is invalid: {error}"),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    match state.log.append_here(prepared).await {
        Ok(outcomes) => Ok(HttpResponse::Ok().json(AppendAnswer {
            outcomes: outcomes.into_iter().map(Into::into).collect(),
        })),
        Err(AppendError::Storage(error)) if error.is_leadership() => Err(not_leader()),
        Err(AppendError::Invalid { index, error }) => Err(ApiError::new(
            ErrorKind::InvalidParam,
            format!("event {index} is invalid: {error}"),
        )),
        Err(error) => Err(ApiError::new(
            ErrorKind::Unavailable,
            "the leader could not commit; retry",
        )
        .with_cause(error)
        .retry_after(1)),
    }
}
