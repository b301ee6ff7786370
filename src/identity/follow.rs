//! The identity state each node keeps in memory, kept current from the log (DESIGN §7: each
//! node feeds its own caches from what it reads). On one node this only repeats what the
//! node that made a change did right after its append; on a cluster node it is how a change
//! made through another node takes effect here.
//!
//! ```text
//!  EventLogHandle::subscribe          every committed batch, in seq order (this node's own,
//!    │                                and on a cluster node what it read of the others')
//!    ▼                                Lagged: the missed entries are re-read from the log
//!  follow (one task per instance)
//!    ├─▶ Sessions::apply      session.deleted: the token stops working here, its sockets
//!    │                        here close with 4003, its cursor goes (once, see `Sessions`);
//!    │                        session.idcert_updated: the cached row goes
//!    ├─▶ ActorCerts::apply    actor.idcert_issued / _invalidated: GET …/idcert/actor
//!    ├─▶ ForeignCerts::apply  actor.foreign_idcert_seen: not appended again from here
//!    └─▶ repairs (the writer only): actor.idcert_invalidated
//! ```
//!
//! Repairs: one node serialises an issuance and the end of its session under the session's
//! lock, so no certificate outlives its session and a session holds one valid certificate.
//! Two nodes hold two locks: an issuance through one node can commit after the end through
//! another, or beside another node's issuance for the same session. The writer reads the log
//! in order and invalidates what breaks the rule (a certificate of a session that ended
//! before it, the older of two valid ones of a session, the valid certificate of a session
//! whose end did not invalidate it). The invalidation's event id is the certificate's, so the
//! log keeps one however many appends race. One node never needs one.

use std::sync::{Arc, Weak};

use tokio::sync::broadcast::error::RecvError;

use super::Identity;
use crate::core::event::{LogEntry, NewEvent};
use crate::store::{CommittedBatch, EventLogHandle, Store};

/// Entries re-read per query after the subscriber lost batches.
const REREAD_PAGE: u64 = 1000;

/// A subscription taken before the state it updates was loaded, so that nothing committed
/// in between is missed (applying an entry twice changes nothing).
pub(super) struct Subscription {
    committed: tokio::sync::broadcast::Receiver<Arc<CommittedBatch>>,
    /// Everything up to here is in what was loaded after subscribing.
    applied: u64,
}

impl Subscription {
    pub(super) fn new(log: &EventLogHandle) -> Subscription {
        let committed = log.subscribe();
        Subscription {
            applied: log.committed_head(),
            committed,
        }
    }
}

/// Applies every committed batch to `identity` until the instance or the log goes.
pub(super) async fn follow(
    identity: Weak<Identity>,
    store: Store,
    log: EventLogHandle,
    mut subscription: Subscription,
) {
    let role = log.role();
    loop {
        let (entries, through): (Vec<LogEntry>, u64) = match subscription.committed.recv().await {
            Ok(batch) => {
                let Some(last) = batch.entries.last().map(|e| e.seq) else {
                    continue;
                };
                let entries = batch
                    .entries
                    .iter()
                    .filter(|e| e.seq > subscription.applied && is_followed(&e.event_type))
                    .cloned()
                    .collect();
                (entries, last)
            }
            Err(RecvError::Lagged(missed)) => {
                let Some(identity) = identity.upgrade() else {
                    return;
                };
                tracing::warn!(
                    missed,
                    "the identity follower lost committed batches; re-reading them"
                );
                identity.sessions.forget_cached();
                match reread(&store, subscription.applied).await {
                    Ok(read) => read,
                    Err(error) => {
                        // Keep the cursor: the next lag or batch retries from here.
                        tracing::error!(%error, "cannot re-read the log for identity");
                        continue;
                    }
                }
            }
            Err(RecvError::Closed) => return,
        };
        subscription.applied = subscription.applied.max(through);
        if entries.is_empty() {
            continue;
        }
        let Some(identity) = identity.upgrade() else {
            return;
        };
        let repairs = apply(&identity, &entries);
        if !repairs.is_empty() && role.borrow().writes() {
            let log = log.clone();
            actix_web::rt::spawn(async move {
                if let Err(error) = log.append(repairs).await {
                    tracing::warn!(%error, "cannot invalidate a certificate that outlived its session");
                }
            });
        }
    }
}

/// The followed entries committed after `after`, up to the head now, in order, and that head.
async fn reread(
    store: &Store,
    after: u64,
) -> Result<(Vec<LogEntry>, u64), crate::store::StoreError> {
    let (head, _) = store.head().await?;
    let mut entries = Vec::new();
    let mut from = after;
    while from < head {
        let page = store.read_after(from, REREAD_PAGE).await?;
        let Some(last) = page.last().map(|e| e.seq) else {
            break;
        };
        entries.extend(
            page.into_iter()
                .filter(|e| e.seq <= head && is_followed(&e.event_type)),
        );
        from = last;
    }
    Ok((entries, head))
}

/// The event types this follower applies.
fn is_followed(event_type: &str) -> bool {
    matches!(
        event_type,
        "session.deleted"
            | "session.idcert_updated"
            | "actor.idcert_issued"
            | "actor.idcert_invalidated"
            | "actor.foreign_idcert_seen"
    )
}

/// Applies `entries` in order; answers the invalidations the writer appends (see the module
/// doc).
fn apply(identity: &Identity, entries: &[LogEntry]) -> Vec<NewEvent> {
    let now = identity.clock.now_secs();
    let certs = &identity.actor_certs;
    let mut repairs: Vec<(i64, &'static str)> = Vec::new();
    let mut ended = Vec::new();
    for entry in entries {
        identity.sessions.apply(entry);
        identity.sessions.foreign().apply(entry);
        repairs.extend(certs.apply(entry, now, |session| !identity.sessions.is_live(session)));
        if entry.event_type == "session.deleted" {
            ended.push(entry);
        }
    }
    // After the whole batch: an end appended with its invalidation leaves nothing valid.
    let mut events: Vec<NewEvent> = ended
        .iter()
        .filter_map(|entry| {
            let session_id = super::sessions::session_id_of(entry)?;
            certs.session_end_event(&session_id, now).map(|(_, e)| e)
        })
        .collect();
    events.extend(
        repairs
            .into_iter()
            .filter_map(|(serial, reason)| certs.invalidation_of(serial, now, reason)),
    );
    events.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    events.dedup_by(|a, b| a.event_id == b.event_id);
    events
}
