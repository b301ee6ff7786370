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
    let kind = match error {
        AccountError::BadUsername | AccountError::BadPassword => ErrorKind::InvalidParam,
        AccountError::Taken(_) => ErrorKind::UsernameTaken,
        AccountError::BadCredentials => ErrorKind::BadCredentials,
        AccountError::Busy => ErrorKind::Overloaded,
        AccountError::Hash(_) => return ApiError::internal(error),
        AccountError::Append(error) => return super::append_fault(error),
        AccountError::Store(error) => return super::store_fault(error),
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
/// without one, 401 `SY_UNKNOWN_TOKEN` for a token of no live session (see
/// `identity::sessions`, which also checks a foreign session's certificate).
pub async fn authenticate(
    req: &HttpRequest,
    state: &AppState,
) -> Result<entities::sessions::Model, ApiError> {
    let token = super::bearer(req, "session token")?;
    state
        .identity
        .sessions
        .authenticate(token)
        .await
        .map_err(ApiError::from)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRef {
    session_id: String,
}

/// `DELETE /.p2/core/v1/session` with `{session_id}` as the body or `?session_id=`.
pub async fn delete_session(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let caller = authenticate(&req, &state).await?;
    let target: SessionRef = if body.is_empty() {
        web::Query::<SessionRef>::from_query(req.query_string())
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::InvalidParam,
                    format!("name the session: a body {{\"session_id\"}} or ?session_id=: {e}"),
                )
            })?
            .into_inner()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorKind::BadJson,
                format!("the body must be {{\"session_id\": <id>}}: {e}"),
            )
        })?
    };
    state
        .identity
        .sessions
        .delete(&caller, &target.session_id)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
