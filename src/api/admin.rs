//! The admin API (`/admin/v1/*`), behind `server.admin_token`.
//!
//! `Authorization: Bearer <server.admin_token>`: no or malformed header → 401
//! `SY_MISSING_TOKEN`; a wrong token, or an empty `admin_token` (admin API off) → 403
//! `SY_FORBIDDEN`. Tokens are compared through their SHA-256 digests, so the comparison
//! takes the same time wherever they differ.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::{ApiError, ErrorKind};
use crate::federation::inbox::origin::{Policy, PolicySource};
use crate::federation::keys::rotation;
use crate::identity::server_certs::IssuedCert;
use crate::store::AppendOutcome;

/// Checks the admin bearer token of `req`.
pub fn require_admin(req: &HttpRequest, state: &AppState) -> Result<(), ApiError> {
    let configured = &state.config.server.admin_token;
    if configured.is_empty() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "the admin API is off (server.admin_token is empty)",
        ));
    }
    let given = super::bearer(req, "admin token")?;
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
    if state.cluster.is_some() {
        // Every node holds the key it loaded at start; a rotation through one node would
        // leave the others signing with a retired key.
        return Err(ApiError::new(
            ErrorKind::Conflict,
            "key rotation is not available while cluster.enabled = true: every node signs \
             with the key file it loaded at start. Stop the nodes, start one with \
             cluster.enabled = false and rotate there, copy its key file to every node, then \
             start them again",
        ));
    }
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

fn origin_name(path: &str) -> Result<&str, ApiError> {
    if crate::core::ids::is_server_name(path) {
        Ok(path)
    } else {
        Err(ApiError::new(
            ErrorKind::InvalidParam,
            format!("{path:?} is not a server name (host[:port])"),
        ))
    }
}

/// `GET /admin/v1/origins` → `{"origins": [<origin view>]}`: every origin with a configured
/// or recorded policy, a running actor or a request in the last day, with its quota and
/// counters.
pub async fn list_origins(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    Ok(HttpResponse::Ok().json(json!({"origins": state.inbox.origins.views()})))
}

/// `GET /admin/v1/origins/{origin}` → the origin view (the defaults for one never seen).
pub async fn get_origin(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let origin = origin_name(&path)?;
    Ok(HttpResponse::Ok().json(state.inbox.origins.view(origin)))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginPolicyBody {
    rate_per_minute: u32,
    burst: u32,
    blocked: bool,
}

/// `PUT /admin/v1/origins/{origin}` with `{rate_per_minute, burst, blocked}`: recorded as an
/// `origin.policy` event (so it survives restarts and replay), then applied at once.
pub async fn put_origin(
    req: HttpRequest,
    path: web::Path<String>,
    body: web::Json<OriginPolicyBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let origin = origin_name(&path)?;
    if body.rate_per_minute == 0 || body.burst == 0 {
        return Err(ApiError::new(
            ErrorKind::InvalidParam,
            "rate_per_minute and burst must be at least 1 (to stop an origin, set blocked)",
        ));
    }
    let event = crate::core::event::NewEvent {
        event_id: format!(
            "origin-policy:{}",
            hex::encode(crate::identity::idcert::random_serial())
        ),
        origin: state.config.server.name.clone(),
        event_type: "origin.policy".into(),
        sender: None,
        channel: None,
        origin_ts: crate::clock::now_ms(),
        content: json!({
            "origin": origin,
            "rate_per_minute": body.rate_per_minute,
            "burst": body.burst,
            "blocked": body.blocked,
        }),
    };
    let outcomes = state
        .log
        .append(vec![event])
        .await
        .map_err(super::append_fault)?;
    // Applied with the seq that set it: in a cluster every node also applies the committed
    // event, and an older policy never replaces a newer one, whichever arrives first.
    // (One outcome per event appended.)
    if let Some(AppendOutcome::Appended { seq } | AppendOutcome::Duplicate { seq }) =
        outcomes.first()
    {
        state.inbox.origins.apply_policy(
            origin,
            Policy {
                rate_per_minute: body.rate_per_minute,
                burst: body.burst,
                blocked: body.blocked,
                source: PolicySource::Admin,
            },
            *seq,
        );
    }
    tracing::info!(%origin, rate_per_minute = body.rate_per_minute, burst = body.burst, blocked = body.blocked, "origin policy changed");
    Ok(HttpResponse::Ok().json(state.inbox.origins.view(origin)))
}

/// `GET /admin/v1/destinations` → `{"destinations": [...]}`: each remote server we deliver
/// to, with its cursor, lag, state, last error and newest dead letters.
pub async fn list_destinations(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let views = state.delivery.views().await.map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok().json(json!({ "destinations": views })))
}

/// `GET /admin/v1/cluster`: the nodes, the leader and its epoch, each node's applied seq and
/// lag, and the destinations' delivery leases (DESIGN §7). On one node: `enabled: false`.
pub async fn cluster(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    use crate::store::cluster as db;
    let (head, _) = state.store.head().await.map_err(super::store_fault)?;
    let role = *state.log.role().borrow();
    let Some(node) = &state.cluster else {
        return Ok(HttpResponse::Ok().json(json!({
            "enabled": false,
            "role": role.as_str(),
            "head_seq": head,
        })));
    };
    let leader = db::leader(&state.store).await.map_err(super::store_fault)?;
    let (nodes, now) = db::nodes(&state.store).await.map_err(super::store_fault)?;
    let live_within = 2 * node.identity.lease_ttl.as_millis() as i64;
    let leases = crate::store::delivery_leases(&state.store)
        .await
        .map_err(super::store_fault)?;
    Ok(HttpResponse::Ok().json(json!({
        "enabled": true,
        "node_id": node.identity.node_id,
        "role": role.as_str(),
        "head_seq": head,
        "epoch": leader.as_ref().map(|l| l.epoch),
        "leader": leader.as_ref().filter(|l| l.lease_until_ms >= l.now_ms).map(|l| json!({
            "node_id": l.node_id,
            "advertise_url": l.advertise_url,
            "epoch": l.epoch,
            "lease_remaining_ms": l.lease_until_ms - l.now_ms,
        })),
        "nodes": nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "advertise_url": n.advertise_url,
            "role": n.role,
            "epoch": n.epoch,
            "applied_seq": n.applied_seq,
            "lag": (head as i64 - n.applied_seq).max(0),
            "seen_ms_ago": now - n.seen_ms,
            "live": n.role != "stopped" && now - n.seen_ms <= live_within,
        })).collect::<Vec<_>>(),
        "leases": leases.iter().map(|(destination, holder, until_ms)| json!({
            "destination": destination,
            "node_id": holder,
            "valid": holder.is_some() && *until_ms > now,
            "remaining_ms": (until_ms - now).max(0),
        })).collect::<Vec<_>>(),
    })))
}
