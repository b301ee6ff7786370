//! The client gateway's HTTP side (DESIGN §5):
//! - `POST /api/v1/auth/ws-ticket` (bearer) → `{ticket, expires_in}`: single use, 30 s;
//! - `GET /ws?ticket=<ticket>[&resume=<seq>]` upgrades to the WebSocket gateway; without a
//!   ticket the client identifies with Identify or Resume (see `gateway::session`). An
//!   invalid, expired or reused ticket is closed with 4001 before any frame;
//! - `GET /.p2/core/v1/events?since=&limit=` (bearer): what this session missed since its
//!   cursor, oldest first; 204 when there is nothing.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::authenticate;
use crate::app::AppState;
use crate::error::{ApiError, ErrorKind};
use crate::gateway::channel::ChannelEvent;
use crate::gateway::frames::close;
use crate::gateway::session::{Identity, Session, Start};

/// The largest client frame the gateway reads.
const MAX_CLIENT_FRAME: usize = 64 * 1024;

pub async fn ws_ticket(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = authenticate(&req, &state).await?;
    let lifetime = state.tickets.lifetime();
    let ticket = state
        .tickets
        .issue(
            &session.fid,
            &session.session_id,
            u64::try_from(session.created_seq).unwrap_or(0),
        )
        .await
        .map_err(|error| {
            ApiError::new(
                ErrorKind::Unavailable,
                "the ticket could not be stored; retry shortly",
            )
            .with_cause(error)
        })?
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::LimitExceeded,
                "this session has had gateway.max_sockets_per_user tickets within a ticket's lifetime",
            )
            .retry_after(lifetime.as_secs())
        })?;
    Ok(HttpResponse::Ok().json(json!({"ticket": ticket, "expires_in": lifetime.as_secs()})))
}

#[derive(Deserialize)]
pub struct WsQuery {
    ticket: Option<String>,
    resume: Option<u64>,
}

pub async fn ws(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if state.channels.stopping() {
        return Err(ApiError::new(
            ErrorKind::Unavailable,
            "the server is restarting; connect again shortly",
        )
        .retry_after(1)
        .into());
    }
    // Admission first: a refused handshake reads nothing and consumes no ticket.
    if let Err(wait) = state.admission.admit() {
        state.metrics.gateway_handshakes_refused.inc();
        return Err(ApiError::new(
            ErrorKind::Overloaded,
            "too many gateway handshakes at once; retry after the delay given",
        )
        .retry_after(wait.as_secs_f64().ceil() as u64)
        .into());
    }
    // A malformed query is treated like a bad ticket, after the upgrade, as the contract says.
    let query = web::Query::<WsQuery>::from_query(req.query_string()).ok();
    let (response, ws, stream) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::new(
            ErrorKind::InvalidParam,
            format!("GET /ws is a WebSocket upgrade: {e}"),
        )
    })?;
    let stream = stream.max_frame_size(MAX_CLIENT_FRAME);
    let start = match query.as_ref().map(|q| (q.ticket.as_deref(), q.resume)) {
        Some((None, None)) => Some(Start::AwaitIdentify),
        // The grant holds all the handshake needs: no other database read. A ticket of a
        // session that ended meanwhile is refused by the ticket store. A cluster's ticket
        // table that cannot be reached is a 503 instead of the upgrade.
        Some((Some(ticket), resume)) => match state.tickets.redeem(ticket).await {
            Ok(grant) => grant.map(|grant| Start::Ticket {
                identity: Identity {
                    fid: grant.fid,
                    session_id: grant.session_id,
                    created_seq: grant.created_seq,
                },
                resume,
            }),
            Err(error) => {
                return Err(ApiError::new(
                    ErrorKind::Unavailable,
                    "the ticket cannot be checked now; retry shortly",
                )
                .with_cause(error)
                .retry_after(1)
                .into())
            }
        },
        _ => None,
    };
    match start {
        Some(start) => Session::launch(state, ws, stream, start),
        None => {
            state
                .metrics
                .gateway_closes
                .with_label_values(&[&close::BAD_TICKET.to_string()])
                .inc();
            actix_web::rt::spawn(async move {
                let ws = ws;
                let reason = actix_ws::CloseReason {
                    code: actix_ws::CloseCode::Other(close::BAD_TICKET),
                    description: Some("invalid, expired or used ticket".into()),
                };
                drop(stream);
                let _ = ws.close(Some(reason)).await;
            });
        }
    }
    Ok(response)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    since: Option<u64>,
    limit: Option<u64>,
}

pub async fn events(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = authenticate(&req, &state).await?;
    let query = web::Query::<EventsQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::new(ErrorKind::InvalidParam, format!("bad query: {e}")))?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::new(
            ErrorKind::InvalidParam,
            "limit must be 1..1000",
        ));
    }
    let stored = state
        .store
        .session_cursor(&session.session_id)
        .await
        .map_err(super::store_fault)?;
    let created = u64::try_from(session.created_seq).unwrap_or(0);
    // A live cursor (the session has sockets, or had them less than a flush ago) is newer
    // than the stored one, even when it went back after a socket died.
    let current = state
        .cursors
        .live(&session.session_id)
        .unwrap_or(stored.unwrap_or(0))
        .max(created);
    let since = query.since.unwrap_or(current);
    let (head, _) = state.store.head().await.map_err(super::store_fault)?;
    let missed = state
        .store
        .events_visible_to(&session.fid, since, limit)
        .await
        .map_err(super::store_fault)?;
    // A short page saw everything up to `head` at least: the cursor can move there, so that
    // a quiet user's next call does not scan the same stretch of the log again.
    let last = missed.last().map_or(since, |e| e.seq);
    let cursor = if (missed.len() as u64) < limit {
        last.max(head)
    } else {
        last
    };
    // The cursor is stored before the answer: what is answered counts as delivered. It
    // never moves back (an explicit `since` below it just reads).
    // A session's first REST call stores its cursor even where it did not move: its first
    // socket must not take it for a first connect (which starts at the head) afterwards.
    if cursor > current || (stored.is_none() && state.cursors.live(&session.session_id).is_none()) {
        state
            .cursors
            .store(&session.session_id, cursor)
            .await
            .map_err(super::store_fault)?;
    }
    if missed.is_empty() {
        return Ok(HttpResponse::NoContent().finish());
    }
    let events: Vec<_> = missed
        .iter()
        .filter_map(ChannelEvent::from_entry)
        .map(|event| event.json)
        .collect();
    let body = [b"[".as_slice(), &events.join(b",".as_slice()), b"]"].concat();
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}
