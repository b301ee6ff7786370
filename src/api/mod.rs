//! HTTP handlers, thin: parse, call into the library, map errors to [`ApiError`].
//!
//! Routes of this module: `GET /health`, `GET /api/v1/config`, `GET /metrics`,
//! `GET /_matrix/key/v2/server`, `GET /.well-known/switchyard-server`,
//! the notary (see [`notary`]), the server key, root ID-Cert and well-known in polyproto form
//! (see [`polyproto`]),
//! `POST /admin/v1/keys/rotate` and the origins API (see [`admin`]), `POST /federation/inbox`
//! and `GET /federation/user-lookup` (see [`federation`]), registration, login and session
//! ends (see [`auth`]), actor ID-Certs, foreign sign-in and services (see [`identity`]),
//! channels and the gateway (see [`channels`], [`gateway`]), and the JSON answers for unknown
//! routes and malformed bodies.

mod admin;
mod audit;
mod auth;
mod channels;
mod federation;
mod gateway;
mod identity;
pub(crate) mod internal;
mod log;
mod notary;
mod polyproto;
mod witness;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, ErrorKind};

pub fn configure(cfg: &mut web::ServiceConfig) {
    // A body declared as anything but JSON is refused with what to send (one without a
    // Content-Type is taken as JSON: see `json_by_default`).
    cfg.app_data(web::JsonConfig::default().error_handler(|err, _req| {
        match err {
            actix_web::error::JsonPayloadError::ContentType => ApiError::new(
                ErrorKind::UnsupportedMediaType,
                "this route takes a JSON body: send it with Content-Type: application/json \
                     (or with no Content-Type)",
            )
            .into(),
            err => ApiError::new(
                ErrorKind::BadJson,
                format!("the request body is not valid JSON for this route: {err}"),
            )
            .into(),
        }
    }))
    .app_data(web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::new(
            ErrorKind::InvalidParam,
            format!("the query string is not valid for this route: {err}"),
        )
        .into()
    }))
    .route("/health", web::get().to(health))
    .route("/metrics", web::get().to(metrics))
    .route("/api/v1/config", web::get().to(client_config))
    .route("/_matrix/key/v2/server", web::get().to(key_server))
    .route(
        "/.well-known/switchyard-server",
        web::get().to(well_known_server),
    )
    .route("/_matrix/key/v2/query", web::post().to(notary::query_many))
    .route(
        "/_matrix/key/v2/query/{server_name}",
        web::get().to(notary::query_one),
    )
    .route(
        "/.p2/core/v1/key/server",
        web::get().to(polyproto::server_key),
    )
    .route(
        "/.p2/core/v1/key/server",
        web::put().to(polyproto::rotate_server_key),
    )
    .route(
        "/.p2/core/v1/idcert/server",
        web::get().to(polyproto::server_idcert),
    )
    .route(
        "/.well-known/polyproto-core",
        web::get().to(polyproto::well_known),
    )
    .route("/admin/v1/keys/rotate", web::post().to(admin::rotate_keys))
    .route("/federation/inbox", web::post().to(federation::inbox))
    .route(
        "/federation/user-lookup",
        web::get().to(federation::user_lookup),
    )
    .route("/api/v1/auth/register", web::post().to(auth::register))
    .route("/api/v1/auth/login", web::post().to(auth::login))
    .route(
        "/.p2/core/v1/session",
        web::delete().to(auth::delete_session),
    )
    .route("/.p2/core/v1/idcert", web::post().to(identity::issue))
    .route(
        "/.p2/core/v1/idcert/actor/{fid}",
        web::get().to(identity::actor_certs),
    )
    .route("/.p2/core/v1/challenge", web::get().to(identity::challenge))
    .route(
        "/.p2/core/v1/session/auth",
        web::post().to(identity::sign_in),
    )
    .route(
        "/.p2/core/v1/session/idcert/extern",
        web::put().to(identity::extern_certificate),
    )
    .route(
        "/.p2/core/v1/services/discover/{fid}",
        web::get().to(identity::discover),
    )
    .route(
        "/.p2/core/v1/services/discover/{fid}/{service}",
        web::get().to(identity::discover),
    )
    .route(
        "/.p2/core/v1/services",
        web::post().to(identity::add_service),
    )
    .route(
        "/.p2/core/v1/services",
        web::delete().to(identity::remove_service),
    )
    .route(
        "/.p2/core/v1/services/primary",
        web::put().to(identity::set_primary),
    )
    .route("/api/v1/auth/ws-ticket", web::post().to(gateway::ws_ticket))
    .route("/ws", web::get().to(gateway::ws))
    .route("/.p2/core/v1/events", web::get().to(gateway::events))
    .route("/api/v1/channels", web::post().to(channels::create))
    .route(
        "/api/v1/channels/{id}/invite",
        web::post().to(channels::invite),
    )
    .route("/api/v1/channels/{id}/join", web::post().to(channels::join))
    .route(
        "/api/v1/channels/{id}/leave",
        web::post().to(channels::leave),
    )
    .route(
        "/api/v1/channels/{id}/messages",
        web::post().to(channels::post_message),
    )
    .route(
        "/api/v1/channels/{id}/messages",
        web::get().to(channels::history),
    )
    .route(
        "/api/v1/channels/{id}/messages/{message_id}",
        web::patch().to(channels::edit_message),
    )
    .route(
        "/api/v1/channels/{id}/messages/{message_id}",
        web::delete().to(channels::delete_message),
    )
    .route("/log/checkpoint", web::get().to(log::checkpoint))
    .route("/log/tile/{path:.*}", web::get().to(log::tile))
    .route("/api/v1/log/proof/inclusion", web::get().to(log::inclusion))
    .route(
        "/api/v1/log/proof/consistency",
        web::get().to(log::consistency),
    )
    .route("/api/v1/log/tree-head", web::get().to(log::tree_head))
    .route("/api/v1/log/head", web::get().to(log::head))
    .route(
        "/log/add-checkpoint",
        web::post().to(witness::add_checkpoint),
    )
    .route("/admin/v1/witnesses", web::get().to(witness::list))
    .route("/api/v1/log", web::get().to(audit::list))
    .route("/api/v1/log/audit-trail", web::get().to(audit::audit_trail))
    .route(
        "/api/v1/log/by-fingerprint/{fingerprint}",
        web::get().to(audit::by_fingerprint),
    )
    // After every other single-segment /api/v1/log/<name> route.
    .route("/api/v1/log/{id}", web::get().to(audit::entry))
    .route("/api/v1/audit/export", web::get().to(audit::export))
    .route("/api/v1/keys", web::get().to(audit::keys))
    .route("/api/v1/keys/search", web::get().to(audit::search_keys))
    .route("/api/v1/keys/{fingerprint}", web::get().to(audit::key))
    .route(
        "/api/v1/keys/{fingerprint}/status",
        web::get().to(audit::key_status),
    )
    .route("/api/v1/log/verify", web::post().to(log::verify))
    .route("/admin/v1/origins", web::get().to(admin::list_origins))
    .route("/admin/v1/cluster", web::get().to(admin::cluster))
    .route(
        "/admin/v1/destinations",
        web::get().to(admin::list_destinations),
    )
    .route(
        "/admin/v1/origins/{origin}",
        web::get().to(admin::get_origin),
    )
    .route(
        "/admin/v1/origins/{origin}",
        web::put().to(admin::put_origin),
    );
}

/// The token of `Authorization: Bearer <token>`, or 401 `SY_MISSING_TOKEN` naming `what`
/// token the route needs.
pub(crate) fn bearer<'a>(req: &'a HttpRequest, what: &str) -> Result<&'a str, ApiError> {
    req.headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                ErrorKind::MissingToken,
                format!("this route needs Authorization: Bearer <{what}>"),
            )
        })
}

/// A storage fault as clients see it: a damaged row is the server's fault (500); anything
/// else (a pool timeout, the database restarting) is one it survives: 503 with `Retry-After`.
pub(crate) fn store_fault(error: crate::store::StoreError) -> ApiError {
    match error {
        crate::store::StoreError::Corrupt { .. } => ApiError::internal(error),
        other if other.is_leadership() => ApiError::new(
            ErrorKind::Unavailable,
            "the cluster is electing its leader; retry",
        )
        .with_cause(other),
        other => ApiError::new(
            ErrorKind::Unavailable,
            "the database is not answering; retry",
        )
        .with_cause(other),
    }
}

/// An append that could not commit, as clients see it: the log refusing our own event is a
/// bug (500); a log that cannot commit now (the database, a cluster electing its leader) is
/// a fault the server survives: 503 with `Retry-After`.
pub(crate) fn append_fault(error: crate::store::AppendError) -> ApiError {
    match error {
        crate::store::AppendError::Invalid { .. } => ApiError::internal(error),
        crate::store::AppendError::Storage(_) | crate::store::AppendError::Stopped => {
            ApiError::new(
                ErrorKind::Unavailable,
                "the event log could not commit; retry",
            )
            .with_cause(error)
            .retry_after(1)
        }
    }
}

/// A request with a body and no `Content-Type` is read as JSON, the only body type of the
/// API's JSON routes: `curl -d '{…}' -H …` without the header is what people type first.
/// (Routes that take other bodies read their bytes and never look at the header.)
pub fn json_by_default(request: &mut actix_web::dev::ServiceRequest) {
    use actix_web::http::{header, Method};
    if matches!(
        *request.method(),
        Method::POST | Method::PUT | Method::PATCH
    ) && !request.headers().contains_key(header::CONTENT_TYPE)
    {
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
    }
}

/// The address the request came from (unspecified when the transport has none).
pub(crate) fn peer_ip(req: &HttpRequest) -> std::net::IpAddr {
    req.peer_addr()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |a| a.ip())
}

/// Answers routes that do not exist, in the one error format.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::new(
        ErrorKind::NotFound,
        format!("no route for {} {}", req.method(), req.path()),
    ))
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

async fn client_config(state: web::Data<AppState>) -> HttpResponse {
    let branding = &state.config.branding;
    HttpResponse::Ok().json(json!({
        "app_name": branding.app_name,
        "app_description": branding.app_description,
        "registration_mode": state.config.server.registration_mode.as_str(),
        "brand_primary_color": branding.primary_color,
        "brand_accent_color": branding.accent_color,
    }))
}

async fn metrics(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let head = u64::try_from(state.metrics.log_head_seq.get()).unwrap_or(0);
    state.delivery.export_lag(head);
    let text = state.metrics.render().map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text))
}

/// The Matrix-format key server response, prepared ahead (see `federation::keys::server`).
async fn key_server(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = state.key_server.response().map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

/// How to reach this server and which key it signs with (DESIGN §3.3).
async fn well_known_server(state: web::Data<AppState>) -> HttpResponse {
    // One read of the key: a rotation in between must not mix two keys in one answer.
    let key = state.keys.current();
    HttpResponse::Ok().json(json!({
        "domain": state.config.server.name,
        "signing_key_public": key.public_b64(),
        "key_id": key.key_id(),
        "api_base_url": state.config.server.public_base_url,
        "protocol_version": "switchyard-federation-v1",
        "log_vkey": state.transparency.vkey(),
        "log_old_vkeys": state.transparency.old_vkeys(),
    }))
}
