//! The auditor API and the key registry (DESIGN §2.3–§2.4): Diogenes's log and keys routes.
//!
//! Log routes (admin token unless stated; 401 `SY_MISSING_TOKEN` without one, 403
//! `SY_FORBIDDEN` with a wrong one):
//! - `GET /api/v1/log?page=&per_page=&event_type=&search=` → `{"entries": [<entry>…], "page",
//!   "per_page", "total"}`, **newest first**. `per_page` 1..200 (default 50), `page` ≥ 1.
//! - `GET /api/v1/log/{id}` → `<entry>` plus `"inclusion"`: the inclusion proof of §2.2
//!   against the latest checkpoint, or `null` while no checkpoint covers the entry yet (within
//!   about `transparency.checkpoint_interval` of its commit; ask again). Public for identity
//!   events (`EventType::is_identity`), admin token for any other. 400 for an id that is not a
//!   positive integer, 404 `SY_NOT_FOUND` past the head.
//! - `GET /api/v1/log/by-fingerprint/{fingerprint}` (public) → `{"entries": [<entry with
//!   "inclusion">…]}`: every identity event naming the key, oldest first (an empty list when
//!   none does); 400 unless the fingerprint is `sha256:<64 hex>`.
//! - `GET /api/v1/log/audit-trail?fingerprint=&fid=&origin=&event_type=&start_date=&end_date=
//!   [&search=][&page=&per_page=]` → the `/api/v1/log` shape; at least one filter (400
//!   otherwise), dates RFC 3339 (`Z` or a `±HH:MM` offset), both bounds inclusive, on the
//!   time the entry was received.
//! - `GET /api/v1/audit/export?format=json|csv&<audit-trail filters>[&page=&page_size=]` →
//!   streamed as an attachment, **oldest first** (`seq` order); `page`/`page_size` (≤ 1000)
//!   select one window of that order, omitted = every matching entry. JSON is one array of
//!   entries, CSV a header line and one RFC 4180 record per entry (`payload` is the content's
//!   canonical JSON; a null sender or channel is an empty field). The store reads keyset pages
//!   of 1000 as the client reads, so the server holds one page at a time. A storage failure
//!   before the first page answers 503; after the headers went out it can only cut the body
//!   short (a JSON array left unclosed, a chunked body not terminated), which clients see.
//!
//! `<entry>` = `{"id": <seq>, "timestamp": <RFC 3339 of received_ts>, "event_type", "payload":
//! <content>, "previous_hash", "entry_hash", "event_id", "origin", "sender", "channel"}`.
//!
//! Key registry (public): a **projection**, derived from tables the log writer fills
//! (`actor_idcerts` from `actor.idcert_issued`/`actor.idcert_invalidated`, `server_idcerts`
//! from `server.idcert_issued`, `retired_server_keys` from `server.key_rotated`) plus the
//! current signing key; nothing here writes. Registration, succession and revocation happen
//! through the identity routes (DESIGN §4), each a log event.
//! - `GET /api/v1/keys?page=&per_page=` → `{"keys": [<key>…], "page", "per_page", "total"}`:
//!   our server keys first (the current one, then the retired ones, newest first), then our
//!   actor certificates, newest first.
//! - `GET /api/v1/keys/search?pseudonym=<substring>` (case-insensitive; also `page`,
//!   `per_page`) → the same shape, keys whose pseudonym contains it.
//! - `GET /api/v1/keys/{fingerprint}` → `<key>` plus `"public_key"` (SPKI PEM) and
//!   `"log_entry_id"` (the `seq` of the event that registered the key: an actor certificate's
//!   `actor.idcert_issued`; a server key's `server.key_rotated` that brought it in, or for the
//!   first key its first `server.idcert_issued`). A key renewed with the same CSR key has
//!   several certificates: the newest answers.
//! - `GET /api/v1/keys/{fingerprint}/status` → `{"fingerprint", "status", "expires_at"}`.
//!
//! `<key>` = `{"fingerprint", "pseudonym": <fid or server name>, "kind": "server"|"actor",
//! "algorithm": "ed25519", "status", "serial", "session_id", "registered_at", "expires_at"}`.
//! Status: an actor certificate is `invalidated` once renewed or its session ended, else
//! `expired` past its `not_after`, else `active`; a retired server key is `invalidated`
//! (rotated out; `expires_at` is its `expired_ts`), the current one `active` (`expired` if its
//! newest root ID-Cert has lapsed). `serial`: the certificate's decimal serial (actor), the
//! newest root ID-Cert's hex serial (server). `registered_at`: when the log received the event
//! of `log_entry_id`.

use std::collections::HashMap;
use std::str::FromStr;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{web, HttpRequest, HttpResponse};
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::EncodePublicKey;
use ed25519_dalek::VerifyingKey;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::admin::require_admin;
use super::log::{inclusion_json, rfc3339};
use crate::app::AppState;
use crate::core::event::{is_fingerprint, EventType, LogEntry};
use crate::error::{ApiError, ErrorKind};
use crate::federation::signing::unb64;
use crate::identity::idcert::fingerprint;
use crate::store::audit::{AuditFilter, ExportWindow, KeyEvents, KeyNames, ServerKeyName};
use crate::store::StoreError;
use crate::transparency::TransparencyError;
use entities::actor_idcerts;

/// The largest page number: its offset (`(page − 1) × per_page`, at most 10^12) stays far
/// inside the databases' signed 64-bit offsets.
const MAX_PAGE: u64 = 1_000_000_000;
/// `per_page` bounds and default.
const MAX_PER_PAGE: u64 = 200;
const DEFAULT_PER_PAGE: u64 = 50;
/// The largest export window.
const MAX_PAGE_SIZE: u64 = 1000;
/// Free-text parameters longer than this are refused.
const MAX_TEXT: usize = 256;

fn store_error(error: StoreError) -> ApiError {
    TransparencyError::Store(error).into()
}

fn invalid(message: impl Into<std::borrow::Cow<'static, str>>) -> ApiError {
    ApiError::new(ErrorKind::InvalidParam, message)
}

/// A positive integer parameter in `min..=max`, `default` when absent.
fn bounded(value: Option<&str>, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    let Some(text) = value else {
        return Ok(default);
    };
    match text.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid(format!(
            "{name} must be an integer from 1 to {max}"
        ))),
    }
}

/// `(page, per_page)`: page ≥ 1, per_page 1..200 (default 50).
fn paging(page: Option<&str>, per_page: Option<&str>) -> Result<(u64, u64), ApiError> {
    Ok((
        bounded(page, "page", 1, MAX_PAGE)?,
        bounded(per_page, "per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
    ))
}

/// A non-empty text parameter of at most [`MAX_TEXT`] bytes, `None` when absent or empty.
fn text<'a>(value: Option<&'a str>, name: &str) -> Result<Option<&'a str>, ApiError> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) if text.len() > MAX_TEXT => {
            Err(invalid(format!("{name} must be at most {MAX_TEXT} bytes")))
        }
        Some(text) => Ok(Some(text)),
    }
}

/// `sha256:<64 hex>` in lowercase, or 400.
fn parse_fingerprint(text: &str) -> Result<String, ApiError> {
    let lowered = text.trim().to_ascii_lowercase();
    if is_fingerprint(&lowered) {
        Ok(lowered)
    } else {
        Err(invalid(format!(
            "{:?} is not a key fingerprint (sha256:<64 hex digits of the SubjectPublicKeyInfo DER>)",
            text.chars().take(80).collect::<String>()
        )))
    }
}

/// An RFC 3339 date-time (`…Z` or with a `±HH:MM` offset) in ms since the epoch, or 400.
fn parse_date(text: &str, name: &str) -> Result<i64, ApiError> {
    let bad = || {
        invalid(format!(
            "{name} must be an RFC 3339 date-time such as 2024-05-01T12:00:00Z"
        ))
    };
    let text = text.trim();
    if let Some(ms) = crate::clock::parse_rfc3339_ms(text) {
        return Ok(ms);
    }
    if !text.is_ascii() {
        return Err(bad());
    }
    // humantime reads UTC only: move a numeric offset into the number.
    let split = text.len().checked_sub(6).ok_or_else(bad)?;
    let (local, offset) = (
        text.get(..split).ok_or_else(bad)?,
        text.get(split..).ok_or_else(bad)?,
    );
    let bytes = offset.as_bytes();
    let sign = match bytes[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return Err(bad()),
    };
    if bytes[3] != b':' {
        return Err(bad());
    }
    let hours: i64 = offset[1..3].parse().map_err(|_| bad())?;
    let minutes: i64 = offset[4..6].parse().map_err(|_| bad())?;
    if hours > 23 || minutes > 59 || !offset[1..3].bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let utc = crate::clock::parse_rfc3339_ms(&format!("{local}Z")).ok_or_else(bad)?;
    Ok(utc - sign * (hours * 3600 + minutes * 60) * 1000)
}

/// An entry as the auditor routes show it (see the module doc).
#[derive(Serialize)]
struct EntryJson<'a> {
    id: u64,
    timestamp: String,
    event_type: &'a str,
    payload: &'a RawValue,
    previous_hash: String,
    entry_hash: String,
    event_id: &'a str,
    origin: &'a str,
    sender: Option<&'a str>,
    channel: Option<&'a str>,
}

impl<'a> From<&'a LogEntry> for EntryJson<'a> {
    fn from(entry: &'a LogEntry) -> EntryJson<'a> {
        EntryJson {
            id: entry.seq,
            timestamp: rfc3339(entry.received_ts),
            event_type: &entry.event_type,
            payload: &entry.content,
            previous_hash: entry.prev_hash.to_string(),
            entry_hash: entry.entry_hash.to_string(),
            event_id: &entry.event_id,
            origin: &entry.origin,
            sender: entry.sender.as_deref(),
            channel: entry.channel.as_deref(),
        }
    }
}

fn entry_value(entry: &LogEntry) -> Result<Value, ApiError> {
    serde_json::to_value(EntryJson::from(entry)).map_err(ApiError::internal)
}

/// The entry with `"inclusion"`: its proof against the latest checkpoint, or null while no
/// checkpoint covers it.
async fn with_inclusion(state: &AppState, entry: &LogEntry) -> Result<Value, ApiError> {
    let mut value = entry_value(entry)?;
    let inclusion = if entry.seq <= state.transparency.published_size() {
        inclusion_json(state, entry.seq, None).await?
    } else {
        Value::Null
    };
    if let Value::Object(map) = &mut value {
        map.insert("inclusion".into(), inclusion);
    }
    Ok(value)
}

fn private_json(body: Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .json(body)
}

/// One of our server signing keys, with what the registry says of it.
struct ServerKeyInfo {
    key_id: String,
    key: VerifyingKey,
    fingerprint: String,
    /// `(expired_ts ms)` when rotated out.
    expired_ts: Option<i64>,
    /// The `server.key_rotated` that brought it in (none for the first key).
    introduced_seq: Option<i64>,
}

/// Our server keys: the current one first, then the retired ones, newest first. Retired keys
/// come from `retired_server_keys` (the log's projection); the current one from the key ring.
async fn server_keys(state: &AppState) -> Result<Vec<ServerKeyInfo>, ApiError> {
    let mut retired = state
        .store
        .retired_server_keys()
        .await
        .map_err(store_error)?;
    retired.sort_by_key(|k| k.retired_seq);
    let mut keys = Vec::with_capacity(retired.len() + 1);
    let mut introduced = None;
    for row in &retired {
        let key = unb64(&row.public_key)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .and_then(|b| VerifyingKey::from_bytes(&b).ok())
            .ok_or_else(|| {
                ApiError::internal(StoreError::Corrupt {
                    seq: row.retired_seq,
                    problem: format!("retired key {} is not an Ed25519 key", row.key_id),
                })
            })?;
        keys.push(ServerKeyInfo {
            key_id: row.key_id.clone(),
            fingerprint: fingerprint(&key).map_err(ApiError::internal)?,
            key,
            expired_ts: Some(row.expired_ts),
            introduced_seq: introduced,
        });
        // Each rotation retires one key and brings in the next.
        introduced = Some(row.retired_seq);
    }
    let current = state.keys.current();
    // Between a rotation's commit and the ring's swap the old key is already retired.
    if !retired.iter().any(|r| r.key_id == current.key_id()) {
        let key = current.verifying_key();
        keys.push(ServerKeyInfo {
            key_id: current.key_id(),
            fingerprint: fingerprint(&key).map_err(ApiError::internal)?,
            key,
            expired_ts: None,
            introduced_seq: introduced,
        });
    }
    keys.reverse();
    Ok(keys)
}

/// The identity events naming the key `fingerprint` (see `store::audit`).
async fn key_events(state: &AppState, fingerprint: &str) -> Result<KeyEvents, ApiError> {
    let server_key = server_keys(state)
        .await?
        .into_iter()
        .find(|k| k.fingerprint == fingerprint)
        .map(|k| ServerKeyName {
            key_id: k.key_id,
            introduced_seq: k.introduced_seq,
        });
    let names = KeyNames {
        fingerprint: fingerprint.to_owned(),
        server_key,
    };
    state.store.key_events(&names).await.map_err(store_error)
}

/// The filters every auditor route shares.
#[derive(Deserialize)]
pub struct FilterQuery {
    page: Option<String>,
    per_page: Option<String>,
    page_size: Option<String>,
    format: Option<String>,
    event_type: Option<String>,
    search: Option<String>,
    fingerprint: Option<String>,
    fid: Option<String>,
    origin: Option<String>,
    start_date: Option<String>,
    end_date: Option<String>,
}

/// Builds the filter of `query`; `trail` allows the audit-trail filters (else only
/// `event_type` and `search`, as `/api/v1/log` defines).
async fn filter_of(
    state: &AppState,
    query: &FilterQuery,
    trail: bool,
) -> Result<AuditFilter, ApiError> {
    let mut filter = AuditFilter::default();
    if let Some(kind) = text(query.event_type.as_deref(), "event_type")? {
        EventType::from_str(kind).map_err(|e| invalid(e.to_string()))?;
        filter.event_type = Some(kind.to_owned());
    }
    if let Some(term) = text(query.search.as_deref(), "search")? {
        if is_fingerprint(&term.to_ascii_lowercase()) {
            let fingerprint = term.to_ascii_lowercase();
            filter.search_key = Some(key_events(state, &fingerprint).await?);
            filter.search = Some(fingerprint);
        } else {
            filter.search = Some(term.to_owned());
        }
    }
    if !trail {
        return Ok(filter);
    }
    if let Some(fp) = text(query.fingerprint.as_deref(), "fingerprint")? {
        filter.key = Some(key_events(state, &parse_fingerprint(fp)?).await?);
    }
    if let Some(fid) = text(query.fid.as_deref(), "fid")? {
        if crate::core::ids::parse_fid(fid).is_none() {
            return Err(invalid(format!(
                "fid {fid:?} is not a federation id (name@server)"
            )));
        }
        filter.fid = Some(fid.to_owned());
    }
    if let Some(origin) = text(query.origin.as_deref(), "origin")? {
        if !crate::core::ids::is_server_name(origin) {
            return Err(invalid(format!(
                "origin {origin:?} is not a server name (host[:port])"
            )));
        }
        filter.origin = Some(origin.to_owned());
    }
    if let Some(start) = text(query.start_date.as_deref(), "start_date")? {
        filter.start_ms = Some(parse_date(start, "start_date")?);
    }
    if let Some(end) = text(query.end_date.as_deref(), "end_date")? {
        filter.end_ms = Some(parse_date(end, "end_date")?);
    }
    if let (Some(start), Some(end)) = (filter.start_ms, filter.end_ms) {
        if start > end {
            return Err(invalid("start_date must not be after end_date"));
        }
    }
    Ok(filter)
}

/// A page of `filter`, in the `/api/v1/log` shape.
async fn listing(
    state: &AppState,
    filter: &AuditFilter,
    query: &FilterQuery,
) -> Result<HttpResponse, ApiError> {
    let (page, per_page) = paging(query.page.as_deref(), query.per_page.as_deref())?;
    let (entries, total) = state
        .store
        .audit_page(filter, page, per_page)
        .await
        .map_err(store_error)?;
    let entries = entries
        .iter()
        .map(entry_value)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(private_json(json!({
        "entries": entries,
        "page": page,
        "per_page": per_page,
        "total": total,
    })))
}

/// `GET /api/v1/log` (admin).
pub async fn list(
    req: HttpRequest,
    query: web::Query<FilterQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let filter = filter_of(&state, &query, false).await?;
    listing(&state, &filter, &query).await
}

/// `GET /api/v1/log/audit-trail` (admin; at least one filter).
pub async fn audit_trail(
    req: HttpRequest,
    query: web::Query<FilterQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let filter = filter_of(&state, &query, true).await?;
    if filter.is_empty() {
        return Err(invalid(
            "the audit trail needs at least one filter: fingerprint, fid, origin, event_type, start_date, end_date or search",
        ));
    }
    listing(&state, &filter, &query).await
}

/// `GET /api/v1/log/{id}`: public for identity events, admin token for any other.
pub async fn entry(
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let seq = match id.parse::<u64>() {
        Ok(seq) if seq >= 1 => seq,
        _ => {
            return Err(invalid(format!(
                "the entry id must be a positive integer (its seq), not {:?}",
                id.chars().take(40).collect::<String>()
            )))
        }
    };
    let entry = state
        .store
        .entry(seq)
        .await
        .map_err(store_error)?
        .ok_or_else(|| ApiError::new(ErrorKind::NotFound, format!("the log has no entry {seq}")))?;
    let public = EventType::from_str(&entry.event_type).is_ok_and(EventType::is_identity);
    if !public {
        require_admin(&req, &state)?;
    }
    let body = with_inclusion(&state, &entry).await?;
    let cache = if public {
        "public, max-age=1"
    } else {
        "private, no-store"
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, cache))
        .json(body))
}

/// `GET /api/v1/log/by-fingerprint/{fingerprint}` (public): the key's whole history.
pub async fn by_fingerprint(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let fingerprint = parse_fingerprint(&path)?;
    let events = key_events(&state, &fingerprint).await?;
    let history = state
        .store
        .key_history(&events)
        .await
        .map_err(store_error)?;
    let mut entries = Vec::with_capacity(history.len());
    for entry in &history {
        entries.push(with_inclusion(&state, entry).await?);
    }
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .json(json!({ "entries": entries })))
}

/// The export formats.
#[derive(Clone, Copy)]
enum Format {
    Json,
    Csv,
}

const CSV_HEADER: &str =
    "id,timestamp,event_type,payload,previous_hash,entry_hash,event_id,origin,sender,channel\r\n";

/// One CSV field, quoted (RFC 4180) when it holds a comma, quote or line break.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

fn csv_record(out: &mut String, entry: &LogEntry) {
    let id = entry.seq.to_string();
    let timestamp = rfc3339(entry.received_ts);
    let (prev, hash) = (entry.prev_hash.to_string(), entry.entry_hash.to_string());
    let fields = [
        id.as_str(),
        &timestamp,
        &entry.event_type,
        entry.content.get(),
        &prev,
        &hash,
        &entry.event_id,
        &entry.origin,
        entry.sender.as_deref().unwrap_or_default(),
        entry.channel.as_deref().unwrap_or_default(),
    ];
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        csv_field(out, field);
    }
    out.push_str("\r\n");
}

/// The bytes of one page; `first` says whether no entry was written before it.
fn render_page(format: Format, page: &[LogEntry], first: bool) -> Result<Bytes, serde_json::Error> {
    match format {
        Format::Json => {
            let mut out = Vec::with_capacity(page.len() * 512);
            for (i, entry) in page.iter().enumerate() {
                if i > 0 || !first {
                    out.push(b',');
                }
                out.push(b'\n');
                serde_json::to_writer(&mut out, &EntryJson::from(entry))?;
            }
            Ok(Bytes::from(out))
        }
        Format::Csv => {
            let mut out = String::with_capacity(page.len() * 512);
            for entry in page {
                csv_record(&mut out, entry);
            }
            Ok(Bytes::from(out))
        }
    }
}

/// Why an export stopped after its headers were sent (logged; the body is cut short).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("the export stopped: {0}")]
    Store(#[from] StoreError),
    #[error("the export stopped: {0}")]
    Json(#[from] serde_json::Error),
}

/// `GET /api/v1/audit/export` (admin): streamed JSON or CSV.
pub async fn export(
    req: HttpRequest,
    query: web::Query<FilterQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&req, &state)?;
    let format = match query.format.as_deref().map(str::trim) {
        None | Some("") | Some("json") => Format::Json,
        Some("csv") => Format::Csv,
        Some(other) => {
            return Err(invalid(format!(
                "format must be json or csv, not {:?}",
                other.chars().take(40).collect::<String>()
            )))
        }
    };
    if query.per_page.is_some() {
        return Err(invalid(
            "the export's window is page and page_size, not per_page",
        ));
    }
    let filter = filter_of(&state, &query, true).await?;
    let window = match (query.page.as_deref(), query.page_size.as_deref()) {
        (None, None) => None,
        (page, size) => Some(ExportWindow {
            page: bounded(page, "page", 1, MAX_PAGE)?,
            page_size: bounded(size, "page_size", MAX_PAGE_SIZE, MAX_PAGE_SIZE)?,
        }),
    };
    let mut pages = Box::pin(state.store.audit_export(&filter, window));
    // The first page is read before answering, so a store that is down answers 503.
    let first = match pages.next().await {
        Some(Err(e)) => return Err(store_error(e)),
        other => other,
    };
    let (extension, content_type, opening, closing): (_, _, &'static [u8], &'static [u8]) =
        match format {
            Format::Json => ("json", "application/json", b"[", b"\n]\n"),
            Format::Csv => ("csv", "text/csv; charset=utf-8", CSV_HEADER.as_bytes(), b""),
        };
    let body = stream::iter(first)
        .chain(pages)
        .scan(true, move |first, page| {
            let rendered = page.map_err(ExportError::from).and_then(|page| {
                let bytes = render_page(format, &page, *first)?;
                *first &= page.is_empty();
                Ok(bytes)
            });
            std::future::ready(Some(rendered))
        })
        .map(|chunk| {
            chunk.inspect_err(|e| {
                tracing::error!(error = %crate::error::chain(e), "audit export cut short");
            })
        });
    let body = stream::once(std::future::ready(Ok::<_, ExportError>(
        Bytes::from_static(opening),
    )))
    .chain(body)
    .chain(stream::once(std::future::ready(Ok(Bytes::from_static(
        closing,
    )))))
    .filter(|chunk| std::future::ready(!matches!(chunk, Ok(b) if b.is_empty())));
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "private, no-store"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"switchyard-audit.{extension}\""),
        ))
        .streaming(body))
}

// ---- the key registry ----

fn status_of_actor(cert: &actor_idcerts::Model, now_s: i64) -> &'static str {
    if cert.invalidated_at.is_some() {
        "invalidated"
    } else if cert.not_after < now_s {
        "expired"
    } else {
        "active"
    }
}

/// A registry row: the `<key>` of the module doc, with what the detail route adds.
struct KeyRow {
    json: Value,
    public_key: VerifyingKey,
    log_entry_id: Option<i64>,
}

/// The registry rows of our server keys (see [`server_keys`]).
async fn server_rows(state: &AppState) -> Result<Vec<KeyRow>, ApiError> {
    let keys = server_keys(state).await?;
    let certs = state.store.server_idcerts().await.map_err(store_error)?;
    let now = crate::clock::now_ms();
    let mut rows = Vec::with_capacity(keys.len());
    for key in keys {
        // server_idcerts comes oldest first.
        let own: Vec<_> = certs.iter().filter(|c| c.key_id == key.key_id).collect();
        let first_cert = own.first().map(|c| c.issued_seq);
        let newest = own.iter().max_by_key(|c| c.not_after);
        let log_entry_id = match (key.introduced_seq, first_cert) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (status, expires) = match key.expired_ts {
            Some(expired) => ("invalidated", Some(expired)),
            None => {
                let expires = newest.map(|c| c.not_after);
                let lapsed = expires.is_some_and(|e| e < now);
                (if lapsed { "expired" } else { "active" }, expires)
            }
        };
        rows.push(KeyRow {
            json: json!({
                "fingerprint": key.fingerprint,
                "pseudonym": state.config.server.name,
                "kind": "server",
                "algorithm": "ed25519",
                "status": status,
                "serial": newest.map(|c| c.serial.clone()),
                "session_id": Value::Null,
                "registered_at": Value::Null,
                "expires_at": expires.map(rfc3339),
                "key_id": key.key_id,
            }),
            public_key: key.key,
            log_entry_id,
        });
    }
    Ok(rows)
}

fn actor_row(cert: &actor_idcerts::Model, now_s: i64) -> Result<KeyRow, ApiError> {
    let public_key = crate::identity::checker::subject_key(&cert.pem).ok_or_else(|| {
        ApiError::internal(StoreError::Corrupt {
            seq: cert.issued_seq,
            problem: format!("the certificate {} has no Ed25519 subject key", cert.serial),
        })
    })?;
    Ok(KeyRow {
        json: json!({
            "fingerprint": cert.fingerprint,
            "pseudonym": cert.fid,
            "kind": "actor",
            "algorithm": "ed25519",
            "status": status_of_actor(cert, now_s),
            "serial": cert.serial.to_string(),
            "session_id": cert.session_id,
            "registered_at": Value::Null,
            "expires_at": rfc3339(cert.not_after.saturating_mul(1000)),
        }),
        public_key,
        log_entry_id: Some(cert.issued_seq),
    })
}

/// Fills `registered_at` of `rows` from the log entries that registered them.
async fn registered_times(state: &AppState, rows: &mut [KeyRow]) -> Result<(), ApiError> {
    let seqs: Vec<i64> = rows.iter().filter_map(|r| r.log_entry_id).collect();
    let times: HashMap<i64, i64> = state
        .store
        .received_times(&seqs)
        .await
        .map_err(store_error)?;
    for row in rows {
        if let Some(ms) = row.log_entry_id.and_then(|seq| times.get(&seq)) {
            row.json["registered_at"] = Value::String(rfc3339(*ms));
        }
    }
    Ok(())
}

/// A page of the registry: server keys (matching `pseudonym`) first, then actor keys.
async fn registry_page(
    state: &AppState,
    pseudonym: Option<&str>,
    page: u64,
    per_page: u64,
) -> Result<HttpResponse, ApiError> {
    let mut servers = server_rows(state).await?;
    if let Some(text) = pseudonym {
        let text = text.to_lowercase();
        if !state.config.server.name.to_lowercase().contains(&text) {
            servers.clear();
        }
    }
    let offset = page.saturating_sub(1).saturating_mul(per_page);
    let server_count = servers.len() as u64;
    let mut rows: Vec<KeyRow> = servers
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(per_page).unwrap_or(usize::MAX))
        .collect();
    let actor_offset = offset.saturating_sub(server_count);
    let actor_limit = per_page - rows.len() as u64;
    let now_s = crate::clock::now_ms().div_euclid(1000);
    let (certs, actor_total) = state
        .store
        .actor_keys(pseudonym, actor_offset, actor_limit.max(1))
        .await
        .map_err(store_error)?;
    if actor_limit > 0 {
        for cert in &certs {
            rows.push(actor_row(cert, now_s)?);
        }
    }
    registered_times(state, &mut rows).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .json(json!({
            "keys": rows.into_iter().map(|r| r.json).collect::<Vec<_>>(),
            "page": page,
            "per_page": per_page,
            "total": server_count + actor_total,
        })))
}

#[derive(Deserialize)]
pub struct KeysQuery {
    page: Option<String>,
    per_page: Option<String>,
    pseudonym: Option<String>,
}

/// `GET /api/v1/keys` (public).
pub async fn keys(
    query: web::Query<KeysQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (page, per_page) = paging(query.page.as_deref(), query.per_page.as_deref())?;
    registry_page(&state, None, page, per_page).await
}

/// `GET /api/v1/keys/search?pseudonym=` (public).
pub async fn search_keys(
    query: web::Query<KeysQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (page, per_page) = paging(query.page.as_deref(), query.per_page.as_deref())?;
    let pseudonym = text(query.pseudonym.as_deref(), "pseudonym")?
        .ok_or_else(|| invalid("pseudonym is required (a part of a fid or server name)"))?;
    registry_page(&state, Some(pseudonym), page, per_page).await
}

/// The registry row of the key `fingerprint`, or 404.
async fn key_row(state: &AppState, fingerprint: &str) -> Result<KeyRow, ApiError> {
    let mut row = match server_rows(state)
        .await?
        .into_iter()
        .find(|r| r.json["fingerprint"] == fingerprint)
    {
        Some(row) => row,
        None => {
            let cert = state
                .store
                .actor_key(fingerprint)
                .await
                .map_err(store_error)?
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorKind::NotFound,
                        format!("no key of ours has the fingerprint {fingerprint}"),
                    )
                })?;
            actor_row(&cert, crate::clock::now_ms().div_euclid(1000))?
        }
    };
    registered_times(state, std::slice::from_mut(&mut row)).await?;
    Ok(row)
}

/// `GET /api/v1/keys/{fingerprint}` (public): the key with its PEM and registering entry.
pub async fn key(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let fingerprint = parse_fingerprint(&path)?;
    let row = key_row(&state, &fingerprint).await?;
    let pem = row
        .public_key
        .to_public_key_pem(LineEnding::LF)
        .map_err(ApiError::internal)?;
    let mut body = row.json;
    body["public_key"] = Value::String(pem);
    body["log_entry_id"] = json!(row.log_entry_id);
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .json(body))
}

/// `GET /api/v1/keys/{fingerprint}/status` (public).
pub async fn key_status(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let fingerprint = parse_fingerprint(&path)?;
    let row = key_row(&state, &fingerprint).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "public, max-age=1"))
        .json(json!({
            "fingerprint": fingerprint,
            "status": row.json["status"],
            "expires_at": row.json["expires_at"],
        })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_by_rfc_4180() {
        let mut out = String::new();
        csv_field(&mut out, "plain");
        out.push('|');
        csv_field(&mut out, r#"{"a":"b,c"}"#);
        out.push('|');
        csv_field(&mut out, "two\nlines");
        assert_eq!(out, "plain|\"{\"\"a\"\":\"\"b,c\"\"}\"|\"two\nlines\"");
    }

    #[test]
    fn dates_are_rfc_3339_with_z_or_an_offset() {
        let utc = parse_date("2024-05-01T12:00:00Z", "d").expect("Z");
        assert_eq!(
            parse_date("2024-05-01T14:00:00+02:00", "d").expect("+"),
            utc
        );
        assert_eq!(
            parse_date("2024-05-01T11:30:00-00:30", "d").expect("-"),
            utc
        );
        assert_eq!(
            parse_date("2024-05-01T12:00:00.000Z", "d").expect("ms"),
            utc
        );
        for bad in [
            "2024-05-01",
            "yesterday",
            "2024-05-01T12:00:00+2:00",
            "",
            "+02:00",
        ] {
            assert!(parse_date(bad, "d").is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprints_are_checked_and_lowercased() {
        let hex = "AB".repeat(32);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex}")).expect("upper"),
            format!("sha256:{}", hex.to_lowercase())
        );
        assert!(parse_fingerprint("sha256:abc").is_err());
        assert!(parse_fingerprint(&format!("md5:{hex}")).is_err());
    }
}
