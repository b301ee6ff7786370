//! `POST /api/v1/auth/register` and `POST /api/v1/auth/login` (DESIGN §5): each answers
//! `{fid, token, session_id}` (201 for a registration, 200 for a login).
//! `DELETE /.p2/core/v1/session` `{session_id}` (bearer): ends one of the caller's sessions.
//! [`authenticate`] resolves a bearer token to its session for every client route.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::config::RegistrationMode;
use crate::error::{ApiError, ErrorKind};
use crate::identity::accounts::{self, AccountError, NewSession};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    username: String,
    password: String,
}

fn answer(error: AccountError) -> ApiError {
    let kind = match &error {
        AccountError::BadUsername | AccountError::BadPassword => ErrorKind::InvalidParam,
        AccountError::Taken(_) => ErrorKind::UsernameTaken,
        AccountError::BadCredentials => ErrorKind::BadCredentials,
        AccountError::Busy => ErrorKind::Overloaded,
        AccountError::Hash(_) | AccountError::Append(_) | AccountError::Store(_) => {
            return ApiError::internal(error)
        }
    };
    ApiError::new(kind, error.to_string())
}

fn session(session: NewSession) -> serde_json::Value {
    json!({"fid": session.fid, "token": session.token, "session_id": session.session_id})
}

pub async fn register(
    body: web::Json<Credentials>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if state.config.server.registration_mode == RegistrationMode::Closed {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "registration is closed on this server",
        ));
    }
    let created = accounts::register(
        &state.hashers,
        &state.log,
        &state.config.server.name,
        &body.username,
        &body.password,
    )
    .await
    .map_err(answer)?;
    Ok(HttpResponse::Created().json(session(created)))
}

pub async fn login(
    body: web::Json<Credentials>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let opened = accounts::login(
        &state.hashers,
        &state.store,
        &state.log,
        &state.config.server.name,
        &body.username,
        &body.password,
    )
    .await
    .map_err(answer)?;
    Ok(HttpResponse::Ok().json(session(opened)))
}

/// The session of the request's `Authorization: Bearer <token>`: 401 `SY_MISSING_TOKEN`
/// without one, 401 `SY_UNKNOWN_TOKEN` for a token of no live session.
pub async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<entities::sessions::Model, ApiError> {
    let token = super::bearer(req, "session token")?;
    let hash = accounts::token_hash(token);
    if let Some(session) = state.sessions.get(&hash) {
        if !state.ended_sessions.contains_key(&session.session_id) {
            return Ok(session);
        }
    }
    let session = state
        .store
        .session_by_token_hash(&hash)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::UnknownToken,
                "the token belongs to no live session",
            )
        })?;
    if !state.ended_sessions.contains_key(&session.session_id) {
        state.sessions.insert(hash, session.clone());
    }
    Ok(session)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    session_id: String,
}

pub async fn delete_session(
    req: HttpRequest,
    body: web::Json<SessionRef>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &state).await?;
    let target = state
        .store
        .session(&body.session_id)
        .await
        .map_err(ApiError::internal)?
        .filter(|s| s.fid == caller.fid)
        .ok_or_else(|| {
            ApiError::new(ErrorKind::NotFound, "no live session of yours has this id")
        })?;
    accounts::end_session(
        &state.log,
        &state.config.server.name,
        &target.fid,
        &target.session_id,
    )
    .await
    .map_err(answer)?;
    // Its token stops working here at once (a lookup racing with the end cannot bring it
    // back into the cache), its sockets close, and its cursor goes.
    state.ended_sessions.insert(target.session_id.clone(), ());
    state.sessions.invalidate(&target.token_hash);
    state.cursors.forget(&target.session_id);
    if let Err(error) = state.store.delete_session_cursor(&target.session_id).await {
        tracing::warn!(%error, "cannot delete an ended session's cursor");
    }
    state.channels.close_session(
        &target.fid,
        &target.session_id,
        crate::gateway::channel::CloseSocket {
            code: crate::gateway::frames::close::NOT_AUTHENTICATED,
            reason: "the session was ended",
        },
    );
    Ok(HttpResponse::NoContent().finish())
}
