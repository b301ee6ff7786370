//! `POST /api/v1/auth/register` and `POST /api/v1/auth/login` (DESIGN §5): each answers
//! `{fid, token, session_id}` (201 for a registration, 200 for a login).

use actix_web::{web, HttpResponse};
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
