//! Channels and messages over REST (DESIGN §5), all with a bearer token; `{id}` is a channel
//! of ours by id, or any channel by its ref `id@server`:
//! - `POST /api/v1/channels {name}` → 201 `{id, ref, name}`;
//! - `POST /api/v1/channels/{id}/invite {fid}` (local or remote fid) → 200 `{seq}`;
//! - `POST …/join`, `POST …/leave` → 200 `{seq}`;
//! - `POST /api/v1/channels/{id}/messages {body, signed?}` → 201 `{message_id, seq}`;
//! - `PATCH …/messages/{message_id} {body, signed?}`, `DELETE …/messages/{message_id}` →
//!   200 `{seq}`; `signed` is the author's signature (DESIGN §4.4);
//! - `GET /api/v1/channels/{id}/messages?before=<seq>&limit=<1..100>` → 200 `{messages}`,
//!   newest first; deleted messages stay as `{deleted: true}` without a body.
//!
//! Every answer is given after the event is committed.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::auth::authenticate;
use crate::app::AppState;
use crate::core::event::EventError;
use crate::error::{ApiError, ErrorKind};
use crate::gateway::actions::{channel_ref, ActionError, Caller, MessageSignatures};
use crate::identity::signed::Signed;
use crate::store::AppendError;

fn answer(error: ActionError) -> ApiError {
    let error = match error {
        ActionError::Identity(error) => return ApiError::from(error),
        ActionError::Store(error) => return super::store_fault(error),
        ActionError::Append(error @ (AppendError::Storage(_) | AppendError::Stopped)) => {
            return super::append_fault(error)
        }
        other => other,
    };
    let kind = match &error {
        ActionError::Invalid(_) => ErrorKind::InvalidParam,
        ActionError::NotFound(_) => ErrorKind::NotFound,
        ActionError::Forbidden(_) => ErrorKind::Forbidden,
        ActionError::AlreadyMember(_) => ErrorKind::AlreadyMember,
        ActionError::Append(AppendError::Invalid { error, .. }) => {
            let kind = match error {
                EventError::TooLarge => ErrorKind::TooLarge,
                _ => ErrorKind::InvalidParam,
            };
            return ApiError::new(kind, error.to_string());
        }
        ActionError::Append(_) | ActionError::Store(_) | ActionError::Identity(_) => {
            return ApiError::internal(error)
        }
    };
    ApiError::new(kind, error.to_string())
}

/// Runs `action` as the request's user.
async fn as_caller<T, F>(req: &HttpRequest, state: &AppState, action: F) -> Result<T, ApiError>
where
    F: for<'a> AsyncFnOnce(Caller<'a>) -> Result<T, ActionError>,
{
    let session = authenticate(req, state).await?;
    let signatures = MessageSignatures {
        sessions: &state.identity.sessions,
        required: state.config.identity.require_signed_messages,
        window_ms: i64::try_from(state.config.federation.replay_window.as_millis())
            .unwrap_or(i64::MAX),
    };
    let caller = Caller {
        store: &state.store,
        log: &state.log,
        membership: state.inbox.membership(),
        us: &state.config.server.name,
        fid: &session.fid,
        session: &session,
        signatures: &signatures,
    };
    action(caller).await.map_err(answer)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    name: String,
}

pub async fn create(
    req: HttpRequest,
    body: web::Json<NewChannel>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (id, channel, _) =
        as_caller(&req, &state, async |c| c.create_channel(&body.name).await).await?;
    Ok(HttpResponse::Created().json(json!({"id": id, "ref": channel, "name": body.name})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Invitee {
    fid: String,
}

pub async fn invite(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Invitee>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = as_caller(&req, &state, async |c| {
        c.invite(&channel_ref(&path, c.us)?, &body.fid).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({"seq": seq})))
}

pub async fn join(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = as_caller(&req, &state, async |c| {
        c.join(&channel_ref(&path, c.us)?).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({"seq": seq})))
}

pub async fn leave(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = as_caller(&req, &state, async |c| {
        c.leave(&channel_ref(&path, c.us)?).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({"seq": seq})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Body {
    body: String,
    /// The author's signature (DESIGN §4.4).
    signed: Option<Signed>,
}

pub async fn post_message(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<Body>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (message_id, seq) = as_caller(&req, &state, async |c| {
        c.post(&channel_ref(&path, c.us)?, &body.body, body.signed.as_ref())
            .await
    })
    .await?;
    Ok(HttpResponse::Created().json(json!({"message_id": message_id, "seq": seq})))
}

pub async fn edit_message(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    body: web::Json<Body>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = as_caller(&req, &state, async |c| {
        c.edit(
            &channel_ref(&path.0, c.us)?,
            &path.1,
            &body.body,
            body.signed.as_ref(),
        )
        .await
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({"seq": seq})))
}

pub async fn delete_message(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = as_caller(&req, &state, async |c| {
        c.delete(&channel_ref(&path.0, c.us)?, &path.1).await
    })
    .await?;
    Ok(HttpResponse::Ok().json(json!({"seq": seq})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    before: Option<u64>,
    limit: Option<u64>,
}

pub async fn history(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let messages = as_caller(&req, &state, async |c| {
        let query = web::Query::<HistoryQuery>::from_query(req.query_string())
            .map_err(|e| ActionError::Invalid(format!("bad query: {e}")))?;
        let limit = query.limit.unwrap_or(50);
        if !(1..=100).contains(&limit) {
            return Err(ActionError::Invalid("limit must be 1..100".into()));
        }
        c.history(&channel_ref(&path, c.us)?, query.before, limit)
            .await
    })
    .await?;
    let messages: Vec<_> = messages
        .into_iter()
        .map(|m| {
            json!({
                "message_id": m.message_id,
                "sender": m.sender,
                "body": m.body,
                "ts": m.origin_ts,
                "seq": m.created_seq,
                "edited_seq": m.edited_seq,
                "deleted": m.deleted_seq.is_some(),
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(json!({"messages": messages})))
}
