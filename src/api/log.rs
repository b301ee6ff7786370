//! The log's public read API (DESIGN §2.2): the latest checkpoint, hash tiles, entry bundles
//! (admin), inclusion and consistency proofs, and Diogenes's tree-head and head.
//!
//! Every answer is about the *published* tree — the latest checkpoint — so what a client
//! reads here can always be checked against a signed note.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::admin::require_admin;
use crate::app::AppState;
use crate::core::tiles::{parse_index_width, TileId, MAX_TILE_LEVEL};
use crate::error::{ApiError, ErrorKind};
use crate::transparency::{Published, ReadError, TransparencyError};

impl From<TransparencyError> for ApiError {
    fn from(error: TransparencyError) -> ApiError {
        match error {
            TransparencyError::OutOfRange(message) => {
                ApiError::new(ErrorKind::InvalidParam, message)
            }
            TransparencyError::NotFound(message) => ApiError::new(ErrorKind::NotFound, message),
            TransparencyError::Read(ReadError::Merkle(e)) => {
                ApiError::new(ErrorKind::InvalidParam, e.to_string())
            }
            TransparencyError::Read(ReadError::MissingTile(_))
            | TransparencyError::Store(crate::store::StoreError::Corrupt { .. }) => {
                ApiError::internal(error)
            }
            TransparencyError::Read(ReadError::Store(_)) | TransparencyError::Store(_) => {
                ApiError::new(
                    ErrorKind::Unavailable,
                    "the log's storage is not answering; retry",
                )
                .with_cause(error)
            }
        }
    }
}

fn b64(hash: &[u8]) -> String {
    STANDARD.encode(hash)
}

/// The latest checkpoint, or 404 before the first one (an empty log has none).
fn latest(state: &AppState) -> Result<std::sync::Arc<Published>, ApiError> {
    state.transparency.latest().ok_or_else(|| {
        ApiError::new(
            ErrorKind::NotFound,
            "no checkpoint yet: the log has no entries",
        )
    })
}

/// `GET /log/checkpoint`: the latest checkpoint note with its cosignatures.
pub async fn checkpoint(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let published = latest(&state)?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .body(published.served()))
}

/// `GET /log/tile/{path}`: a hash tile `<L>/<N>[.p/<W>]`, or an entry bundle
/// `entries/<N>[.p/<W>]` (admin token).
pub async fn tile(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let segments: Vec<&str> = path.split('/').collect();
    let malformed = || {
        ApiError::new(
            ErrorKind::NotFound,
            format!(
                "/log/tile/{} is not a tile path (<L>/<N>[.p/<W>] or entries/<N>[.p/<W>], N in x-grouped three-digit form)",
                path.as_str()
            ),
        )
    };
    let (first, rest) = segments.split_first().ok_or_else(malformed)?;
    let (index, width) = parse_index_width(rest).ok_or_else(malformed)?;
    let full = usize::from(width) == crate::core::tiles::TILE_WIDTH;
    let immutable = |response: &mut actix_web::HttpResponseBuilder| {
        if full {
            response.insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"));
        } else {
            response.insert_header((header::CACHE_CONTROL, "public, max-age=1"));
        }
    };
    if *first == "entries" {
        require_admin(&req, &state)?;
        let bundle = state.transparency.entry_bundle(index, width).await?;
        return Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((header::CACHE_CONTROL, "private, no-store"))
            .body(bundle));
    }
    let level: u32 = match first.parse() {
        Ok(level)
            if level <= MAX_TILE_LEVEL
                && first.bytes().all(|b| b.is_ascii_digit())
                && (*first == "0" || !first.starts_with('0')) =>
        {
            level
        }
        _ => return Err(malformed()),
    };
    let bytes = state
        .transparency
        .tile(TileId {
            level,
            index,
            width,
        })
        .await?;
    let mut response = HttpResponse::Ok();
    immutable(&mut response);
    Ok(response
        .content_type("application/octet-stream")
        .body(bytes))
}

/// Parses a decimal query number, 400 naming the parameter otherwise.
fn number(value: Option<&str>, name: &str) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                ApiError::new(
                    ErrorKind::InvalidParam,
                    format!("{name} must be a non-negative integer"),
                )
            })
        })
        .transpose()
}

#[derive(Deserialize)]
pub struct InclusionQuery {
    seq: Option<String>,
    size: Option<String>,
    format: Option<String>,
}

/// `GET /api/v1/log/proof/inclusion?seq=&size=[&format=tlog-proof]`.
pub async fn inclusion(
    query: web::Query<InclusionQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = number(query.seq.as_deref(), "seq")?
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidParam, "seq is required"))?;
    match query.format.as_deref() {
        None | Some("json") => {
            let size = number(query.size.as_deref(), "size")?;
            let proof = inclusion_json(&state, seq, size).await?;
            Ok(HttpResponse::Ok().json(proof))
        }
        Some("tlog-proof") => {
            if query.size.is_some() {
                return Err(ApiError::new(
                    ErrorKind::InvalidParam,
                    "a tlog-proof is always against the latest checkpoint: leave out size",
                ));
            }
            let text = tlog_proof(&state, seq).await?;
            Ok(HttpResponse::Ok()
                .content_type("text/plain; charset=utf-8")
                .body(text))
        }
        Some(other) => Err(ApiError::new(
            ErrorKind::InvalidParam,
            format!("format must be json or tlog-proof, not {other:?}"),
        )),
    }
}

/// The inclusion proof of entry `seq` in the published tree of `size` (default: the latest
/// checkpoint's), as the JSON of DESIGN §2.2.
pub(crate) async fn inclusion_json(
    state: &AppState,
    seq: u64,
    size: Option<u64>,
) -> Result<serde_json::Value, ApiError> {
    let transparency = &state.transparency;
    let published = transparency.published_size();
    let size = match size {
        Some(size) => transparency.check_size(size, "size")?,
        None => published,
    };
    if seq == 0 || seq > size {
        return Err(ApiError::new(
            ErrorKind::InvalidParam,
            format!("seq must be between 1 and the tree size ({size})"),
        ));
    }
    let reader = transparency.reader();
    let proof = reader
        .inclusion(seq - 1, size)
        .await
        .map_err(TransparencyError::from)?;
    let leaf = reader
        .leaf_hash(seq - 1, size)
        .await
        .map_err(TransparencyError::from)?;
    let root = reader.root(size).await.map_err(TransparencyError::from)?;
    let checkpoint = transparency
        .checkpoint_at(size)
        .await
        .map_err(TransparencyError::from)?
        .map(|p| p.served());
    Ok(json!({
        "seq": seq,
        "leaf_index": seq - 1,
        "tree_size": size,
        "leaf_hash": b64(&leaf),
        "root_hash": b64(&root),
        "proof": proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
        "checkpoint": checkpoint,
    }))
}

/// A C2SP `c2sp.org/tlog-proof@v1` for entry `seq` against the latest checkpoint.
pub(crate) async fn tlog_proof(state: &AppState, seq: u64) -> Result<String, ApiError> {
    let published = latest(state)?;
    Ok(crate::transparency::tlog_proof(state.transparency.reader(), &published, seq).await?)
}

/// `POST /api/v1/log/verify` (admin): the chain, the tree and the latest checkpoint checked.
pub async fn verify(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let report = state
        .transparency
        .verify()
        .await
        .map_err(TransparencyError::from)?;
    Ok(HttpResponse::Ok().json(json!({
        "valid": report.valid(),
        "entry_count": report.chain.verified,
        "tree_size": report.checkpoint_size.unwrap_or(0),
        "errors": report.errors,
    })))
}

#[derive(Deserialize)]
pub struct ConsistencyQuery {
    old: Option<String>,
    new: Option<String>,
}

/// `GET /api/v1/log/proof/consistency?old=&new=`.
pub async fn consistency(
    query: web::Query<ConsistencyQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let transparency = &state.transparency;
    let old = number(query.old.as_deref(), "old")?
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidParam, "old is required"))?;
    let new = number(query.new.as_deref(), "new")?
        .ok_or_else(|| ApiError::new(ErrorKind::InvalidParam, "new is required"))?;
    transparency.check_size(old, "old")?;
    transparency.check_size(new, "new")?;
    if old > new {
        return Err(ApiError::new(
            ErrorKind::InvalidParam,
            format!("old ({old}) must not be larger than new ({new})"),
        ));
    }
    let reader = transparency.reader();
    let proof = reader
        .consistency(old, new)
        .await
        .map_err(TransparencyError::from)?;
    let old_root = reader.root(old).await.map_err(TransparencyError::from)?;
    let new_root = reader.root(new).await.map_err(TransparencyError::from)?;
    Ok(HttpResponse::Ok().json(json!({
        "old_size": old,
        "new_size": new,
        "old_root": b64(&old_root),
        "new_root": b64(&new_root),
        "proof": proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
    })))
}

/// RFC 3339 (UTC, milliseconds) of a time in ms since the epoch.
pub(crate) fn rfc3339(ms: i64) -> String {
    crate::clock::rfc3339_ms(ms)
}

/// `GET /api/v1/log/tree-head` (Diogenes): the latest checkpoint as JSON.
pub async fn tree_head(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let published = latest(&state)?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .json(json!({
            "tree_size": published.size,
            "root_hash": format!("sha256:{}", hex::encode(published.root)),
            "timestamp": rfc3339(published.signed_at),
            "signature": published.signature_b64(),
            "checkpoint": published.served(),
            "vkey": state.transparency.vkey(),
        })))
}

/// `GET /api/v1/log/head` (Diogenes): the newest entry and the entry count.
pub async fn head(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let entry = state
        .store
        .last_entry()
        .await
        .map_err(TransparencyError::from)?;
    let head = entry.as_ref().map(|e| {
        json!({
            "id": e.seq,
            "entry_hash": e.entry_hash.to_string(),
            "event_type": e.event_type,
            "timestamp": rfc3339(e.received_ts),
        })
    });
    Ok(HttpResponse::Ok().json(json!({
        "head": head,
        "entry_count": entry.map_or(0, |e| e.seq),
    })))
}
