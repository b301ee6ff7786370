//! `POST /federation/inbox`: reads the signature headers and the body (stopping at
//! `federation.max_body_bytes`), then hands both to the inbox pipeline
//! ([`crate::federation::inbox`]).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::app::AppState;
use crate::error::{ApiError, ErrorKind};
use crate::federation::client::OutboundClient;
use crate::federation::inbox::SignedHeaders;

fn too_large(cap: usize) -> ApiError {
    ApiError::new(
        ErrorKind::TooLarge,
        format!("the body is over federation.max_body_bytes ({cap} bytes)"),
    )
}

/// Reads the body, refusing it as soon as it passes `cap` bytes.
pub async fn read_capped(
    req: &HttpRequest,
    mut payload: web::Payload,
    cap: usize,
) -> Result<web::BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let mut body = web::BytesMut::with_capacity(declared.unwrap_or(4096).min(cap));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(ErrorKind::BadJson, "the request body could not be read").with_cause(e)
        })?;
        if body.len() + chunk.len() > cap {
            return Err(too_large(cap));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

pub async fn inbox(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    client: web::Data<OutboundClient>,
) -> Result<HttpResponse, ApiError> {
    let count = |e: ApiError| {
        state
            .metrics
            .inbox_requests
            .with_label_values(&[e.kind.errcode()])
            .inc();
        e
    };
    let headers = SignedHeaders::parse(req.headers()).map_err(count)?;
    let body = read_capped(&req, payload, state.config.federation.max_body_bytes)
        .await
        .map_err(count)?;
    let peer = super::peer_ip(&req);
    let answer = state
        .inbox
        .receive(&client, &state.identity.sessions, &headers, peer, &body)
        .await?;
    Ok(HttpResponse::Ok().json(answer))
}

#[derive(serde::Deserialize)]
pub struct LookupQuery {
    username: String,
}

/// `GET /federation/user-lookup?username=<name>` (DESIGN §3.3), signed like the inbox over
/// `GET`, the path with its query string as sent, and the empty body.
pub async fn user_lookup(
    req: HttpRequest,
    query: Result<web::Query<LookupQuery>, actix_web::Error>,
    state: web::Data<AppState>,
    client: web::Data<OutboundClient>,
) -> Result<HttpResponse, ApiError> {
    let headers = SignedHeaders::parse(req.headers())?;
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.path().to_owned(), |p| p.as_str().to_owned());
    let peer = super::peer_ip(&req);
    state
        .inbox
        .check_signed_request(&client, &headers, peer, "GET", &path, b"")
        .await?;
    let query = query.map_err(|_| {
        ApiError::new(
            ErrorKind::InvalidParam,
            "the query must be ?username=<name>",
        )
    })?;
    let account = state
        .store
        .account(&query.username)
        .await
        .map_err(super::store_fault)?;
    Ok(HttpResponse::Ok().json(match account {
        Some(account) => serde_json::json!({
            "found": true,
            "username": account.username,
            "user_id": account.fid,
            "server_domain": state.config.server.name,
        }),
        None => serde_json::json!({"found": false}),
    }))
}
