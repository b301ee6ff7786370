//! The auditor's reads of the log and the key registry's reads of the identity projections
//! (DESIGN §2.3–§2.4). Read-only: every row here was written by the log writer.
//!
//! - [`AuditFilter`] is one set of filters for the listing (`/api/v1/log`), the audit trail
//!   and the export; [`Store::audit_page`] answers a page of it **newest first** (as Diogenes
//!   lists), with the total count.
//! - [`Store::audit_export`] streams the same filters **oldest first** (`seq` order), in keyset
//!   pages of at most [`EXPORT_PAGE`] rows (`WHERE seq > <last> ORDER BY seq LIMIT 1000`): an
//!   export of a million entries never holds more than one page in memory.
//! - [`Store::key_history`] answers every identity event naming a key, oldest first.
//! - The registry reads ([`Store::actor_keys`], [`Store::actor_key`]) are over
//!   `actor_idcerts`, a projection of `actor.idcert_issued` / `actor.idcert_invalidated`.
//!
//! The events naming a key ([`Store::key_events`]) are found through the projections, not by
//! scanning content: actor certificates by fingerprint in `actor_idcerts` (`issued_seq`,
//! `invalidated_seq` — an `actor.idcert_invalidated` names only the serial) and
//! `foreign_idcerts` (`seen_seq`); a server key by key id in `server_idcerts` (`issued_seq`)
//! and `retired_server_keys` (`retired_seq`: the rotation that retired it), plus the rotation
//! that brought it in ([`ServerKeyName::introduced_seq`]). Free-text search of fingerprint
//! prefixes does read content: it is stored as canonical JSON (no spaces), so
//! `"fingerprint":"<prefix>` is an exact substring; every LIKE pattern escapes its wildcards
//! with [`LIKE_ESCAPE`].

use std::collections::HashMap;

use futures_util::stream::{self, Stream, StreamExt};
use sea_orm::sea_query::{Expr, Func, LikeExpr, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};

use super::{entry_from_row, Store, StoreError};
use crate::core::event::{EventType, LogEntry};
use entities::{actor_idcerts, events};

/// Rows per keyset page of an export.
pub const EXPORT_PAGE: u64 = 1000;

/// At most this many events of one key's history are answered (a key's history is a handful
/// of events: issued, invalidated, seen by us, rotated).
pub const KEY_HISTORY_LIMIT: u64 = 1000;

/// The escape character of every LIKE pattern built here (`!`, not a backslash: the same
/// SQL text means the same on SQLite and PostgreSQL).
pub const LIKE_ESCAPE: char = '!';

/// `text` with the LIKE wildcards (`%`, `_`) and the escape character escaped.
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    for c in text.chars() {
        if matches!(c, '%' | '_' | LIKE_ESCAPE) {
            out.push(LIKE_ESCAPE);
        }
        out.push(c);
    }
    out
}

fn like(column: events::Column, pattern: String) -> SimpleExpr {
    Expr::col(column).like(LikeExpr::new(pattern).escape(LIKE_ESCAPE))
}

fn identity_types() -> Vec<&'static str> {
    EventType::ALL
        .into_iter()
        .filter(|t| t.is_identity())
        .map(EventType::as_str)
        .collect()
}

/// One of our own server signing keys, as the log names it.
#[derive(Clone, Debug)]
pub struct ServerKeyName {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// The `server.key_rotated` that brought the key in (none for the first key).
    pub introduced_seq: Option<i64>,
}

/// A key fingerprint and, when it is one of our server keys, how the log names that key.
#[derive(Clone, Debug)]
pub struct KeyNames {
    /// `sha256:<64 lowercase hex>`.
    pub fingerprint: String,
    pub server_key: Option<ServerKeyName>,
}

/// The `seq`s of the identity events naming one key, found through the projections the log
/// writer keeps (so a key's history costs a few indexed reads, not a scan of the log).
#[derive(Clone, Debug, Default)]
pub struct KeyEvents(pub Vec<i64>);

impl KeyEvents {
    fn condition(&self) -> Condition {
        if self.0.is_empty() {
            // No entry has a seq below 1: matches nothing.
            return Condition::all().add(events::Column::Seq.lt(1));
        }
        Condition::all()
            .add(events::Column::EventType.is_in(identity_types()))
            .add(events::Column::Seq.is_in(self.0.iter().copied()))
    }
}

/// Filters over the log; every one given must hold (AND). Times are `received_ts` in ms,
/// both bounds inclusive.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Exactly this event type.
    pub event_type: Option<String>,
    /// Free text: a prefix (or the whole) of an event id, sender, channel, `entry_hash` or
    /// `prev_hash`, or of a key fingerprint named by an identity event.
    pub search: Option<String>,
    /// When `search` is a whole fingerprint: the events naming that key, so that events
    /// naming it otherwise (server keys, invalidations) match too.
    pub search_key: Option<KeyEvents>,
    /// Only the identity events naming one key.
    pub key: Option<KeyEvents>,
    /// Sent by this fid, or naming it as a JSON string value in the content.
    pub fid: Option<String>,
    pub origin: Option<String>,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
}

impl AuditFilter {
    /// Whether any filter is set.
    pub fn is_empty(&self) -> bool {
        self.event_type.is_none()
            && self.search.is_none()
            && self.key.is_none()
            && self.fid.is_none()
            && self.origin.is_none()
            && self.start_ms.is_none()
            && self.end_ms.is_none()
    }

    fn condition(&self) -> Condition {
        let mut all = Condition::all();
        if let Some(kind) = &self.event_type {
            all = all.add(events::Column::EventType.eq(kind.as_str()));
        }
        if let Some(term) = &self.search {
            let prefix = format!("{}%", like_escape(term));
            let mut any = Condition::any();
            for column in [
                events::Column::EventId,
                events::Column::Sender,
                events::Column::Channel,
                events::Column::EntryHash,
                events::Column::PrevHash,
            ] {
                any = any.add(like(column, prefix.clone()));
            }
            if term.starts_with("sha256:") {
                any = any.add(
                    Condition::all()
                        .add(events::Column::EventType.is_in(identity_types()))
                        .add(like(
                            events::Column::Content,
                            format!("%\"fingerprint\":\"{}%", like_escape(term)),
                        )),
                );
            }
            if let Some(key) = &self.search_key {
                any = any.add(key.condition());
            }
            all = all.add(any);
        }
        if let Some(key) = &self.key {
            all = all.add(key.condition());
        }
        if let Some(fid) = &self.fid {
            all = all.add(
                Condition::any()
                    .add(events::Column::Sender.eq(fid.as_str()))
                    .add(like(
                        events::Column::Content,
                        format!("%{}%", like_escape(&format!("\"{fid}\""))),
                    )),
            );
        }
        if let Some(origin) = &self.origin {
            all = all.add(events::Column::Origin.eq(origin.as_str()));
        }
        if let Some(start) = self.start_ms {
            all = all.add(events::Column::ReceivedTs.gte(start));
        }
        if let Some(end) = self.end_ms {
            all = all.add(events::Column::ReceivedTs.lte(end));
        }
        all
    }
}

/// Which slice of an export: the `page`-th window of `page_size` entries in `seq` order, or
/// everything.
#[derive(Clone, Copy, Debug)]
pub struct ExportWindow {
    /// 1-based.
    pub page: u64,
    pub page_size: u64,
}

fn to_entries(rows: Vec<events::Model>) -> Result<Vec<LogEntry>, StoreError> {
    rows.into_iter().map(entry_from_row).collect()
}

fn as_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Page `page` (1-based) of `per_page` entries matching `filter`, newest first, and how
    /// many entries match in all.
    pub async fn audit_page(
        &self,
        filter: &AuditFilter,
        page: u64,
        per_page: u64,
    ) -> Result<(Vec<LogEntry>, u64), StoreError> {
        let condition = filter.condition();
        let total = events::Entity::find()
            .filter(condition.clone())
            .count(self.readers())
            .await?;
        let rows = events::Entity::find()
            .filter(condition)
            .order_by_desc(events::Column::Seq)
            .offset(page.saturating_sub(1).saturating_mul(per_page))
            .limit(per_page)
            .all(self.readers())
            .await?;
        Ok((to_entries(rows)?, total))
    }

    /// The entry `seq`, if the log has it.
    pub async fn entry(&self, seq: u64) -> Result<Option<LogEntry>, StoreError> {
        events::Entity::find_by_id(as_i64(seq))
            .one(self.readers())
            .await?
            .map(entry_from_row)
            .transpose()
    }

    /// The `seq`s of every identity event naming `key` (see the module doc).
    pub async fn key_events(&self, key: &KeyNames) -> Result<KeyEvents, StoreError> {
        use entities::{foreign_idcerts, retired_server_keys, server_idcerts};
        let mut seqs: Vec<i64> = Vec::new();
        let actor = actor_idcerts::Entity::find()
            .select_only()
            .column(actor_idcerts::Column::IssuedSeq)
            .column(actor_idcerts::Column::InvalidatedSeq)
            .filter(actor_idcerts::Column::Fingerprint.eq(&key.fingerprint))
            .into_tuple::<(i64, Option<i64>)>()
            .all(self.readers())
            .await?;
        for (issued, invalidated) in actor {
            seqs.push(issued);
            seqs.extend(invalidated);
        }
        seqs.extend(
            foreign_idcerts::Entity::find()
                .select_only()
                .column(foreign_idcerts::Column::SeenSeq)
                .filter(foreign_idcerts::Column::Fingerprint.eq(&key.fingerprint))
                .into_tuple::<i64>()
                .all(self.readers())
                .await?,
        );
        if let Some(server) = &key.server_key {
            seqs.extend(server.introduced_seq);
            seqs.extend(
                server_idcerts::Entity::find()
                    .select_only()
                    .column(server_idcerts::Column::IssuedSeq)
                    .filter(server_idcerts::Column::KeyId.eq(&server.key_id))
                    .into_tuple::<i64>()
                    .all(self.readers())
                    .await?,
            );
            seqs.extend(
                retired_server_keys::Entity::find_by_id(server.key_id.clone())
                    .one(self.readers())
                    .await?
                    .map(|r| r.retired_seq),
            );
        }
        seqs.sort_unstable();
        seqs.dedup();
        Ok(KeyEvents(seqs))
    }

    /// The identity events `key` names, oldest first (at most [`KEY_HISTORY_LIMIT`]).
    pub async fn key_history(&self, key: &KeyEvents) -> Result<Vec<LogEntry>, StoreError> {
        let rows = events::Entity::find()
            .filter(key.condition())
            .order_by_asc(events::Column::Seq)
            .limit(KEY_HISTORY_LIMIT)
            .all(self.readers())
            .await?;
        to_entries(rows)
    }

    /// The entries matching `filter` in `seq` order (oldest first), the whole of them or one
    /// `window`, as a stream of keyset pages of at most [`EXPORT_PAGE`] entries. Each page is
    /// read when the consumer asks for it, so memory holds one page whatever the size.
    pub fn audit_export(
        &self,
        filter: &AuditFilter,
        window: Option<ExportWindow>,
    ) -> impl Stream<Item = Result<Vec<LogEntry>, StoreError>> + 'static {
        struct State {
            store: Store,
            condition: Condition,
            window: Option<ExportWindow>,
            /// The last `seq` answered; `None` before the window's start is known.
            after: Option<i64>,
            /// Entries still to answer (`u64::MAX`: everything).
            remaining: u64,
        }
        let state = State {
            store: self.clone(),
            condition: filter.condition(),
            window,
            after: window.is_none().then_some(0),
            remaining: window.map_or(u64::MAX, |w| w.page_size),
        };
        stream::unfold(state, |mut state| async move {
            if state.remaining == 0 {
                return None;
            }
            let after = match state.after {
                Some(after) => after,
                None => {
                    // The window starts at the first matching entry after skipping the
                    // earlier pages: one indexed lookup, then keyset pages from there.
                    let window = state.window?;
                    let skip = window
                        .page
                        .saturating_sub(1)
                        .saturating_mul(window.page_size);
                    let first = events::Entity::find()
                        .select_only()
                        .column(events::Column::Seq)
                        .filter(state.condition.clone())
                        .order_by_asc(events::Column::Seq)
                        .offset(skip)
                        .limit(1)
                        .into_tuple::<i64>()
                        .one(state.store.readers())
                        .await;
                    match first {
                        Ok(Some(seq)) => seq - 1,
                        Ok(None) => return None,
                        Err(e) => {
                            state.remaining = 0;
                            return Some((Err(StoreError::from(e)), state));
                        }
                    }
                }
            };
            let limit = state.remaining.min(EXPORT_PAGE);
            let rows = events::Entity::find()
                .filter(state.condition.clone())
                .filter(events::Column::Seq.gt(after))
                .order_by_asc(events::Column::Seq)
                .limit(limit)
                .all(state.store.readers())
                .await;
            let page = match rows.map_err(StoreError::from).and_then(to_entries) {
                Ok(page) => page,
                Err(e) => {
                    state.remaining = 0;
                    return Some((Err(e), state));
                }
            };
            let last = page.last()?.seq;
            state.after = Some(as_i64(last));
            state.remaining = if (page.len() as u64) < limit {
                0
            } else {
                state.remaining.saturating_sub(page.len() as u64)
            };
            Some((Ok(page), state))
        })
        // Fused: polling after the end answers the end again.
        .fuse()
    }

    /// Page `page` (1-based) of our actor certificates, newest first, and their count;
    /// only those whose fid contains `pseudonym` (case-insensitive) when given.
    pub async fn actor_keys(
        &self,
        pseudonym: Option<&str>,
        offset: u64,
        limit: u64,
    ) -> Result<(Vec<actor_idcerts::Model>, u64), StoreError> {
        let mut query = actor_idcerts::Entity::find();
        if let Some(text) = pseudonym {
            query = query.filter(
                Expr::expr(Func::lower(Expr::col(actor_idcerts::Column::Fid))).like(
                    LikeExpr::new(format!("%{}%", like_escape(&text.to_lowercase())))
                        .escape(LIKE_ESCAPE),
                ),
            );
        }
        let total = query.clone().count(self.readers()).await?;
        let rows = query
            .order_by_desc(actor_idcerts::Column::IssuedSeq)
            .offset(offset)
            .limit(limit)
            .all(self.readers())
            .await?;
        Ok((rows, total))
    }

    /// The newest of our actor certificates for the key `fingerprint` (a key renewed with
    /// the same CSR key has several).
    pub async fn actor_key(
        &self,
        fingerprint: &str,
    ) -> Result<Option<actor_idcerts::Model>, StoreError> {
        Ok(actor_idcerts::Entity::find()
            .filter(actor_idcerts::Column::Fingerprint.eq(fingerprint))
            .order_by_desc(actor_idcerts::Column::IssuedSeq)
            .one(self.readers())
            .await?)
    }

    /// `received_ts` (ms) of each of the entries `seqs`.
    pub async fn received_times(&self, seqs: &[i64]) -> Result<HashMap<i64, i64>, StoreError> {
        if seqs.is_empty() {
            return Ok(HashMap::new());
        }
        let rows = events::Entity::find()
            .select_only()
            .column(events::Column::Seq)
            .column(events::Column::ReceivedTs)
            .filter(events::Column::Seq.is_in(seqs.iter().copied()))
            .into_tuple::<(i64, i64)>()
            .all(self.readers())
            .await?;
        Ok(rows.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::like_escape;

    #[test]
    fn wildcards_and_the_escape_are_escaped() {
        assert_eq!(like_escape("a_b%c!d"), "a!_b!%c!!d");
        assert_eq!(like_escape("sha256:ab"), "sha256:ab");
    }
}
