//! The identity state a node of a cluster keeps in memory, kept current from the log (DESIGN
//! §7: each node feeds its own caches from what it reads): a change made through another node
//! takes effect here. One node (the cluster off) runs none of this: it updates its state after
//! its own appends, and nobody else appends.
//!
//! ```text
//!  EventLogHandle::subscribe          every committed batch, in seq order (this node's own,
//!    │                                and what it read of the others')
//!    ▼                                Lagged: the missed entries are re-read from the log
//!  follow (one task per instance; ends when the instance goes or the log closes)
//!    ├─▶ Sessions::apply      session.deleted: the token stops working here, its sockets
//!    │                        here close with 4003, its cursor goes (once, see `Sessions`);
//!    │                        session.idcert_updated: the cached row goes
//!    ├─▶ ForeignCerts::apply  actor.foreign_idcert_seen: not appended again from here
//!    ├─▶ ActorCerts::apply    actor.idcert_issued / _invalidated: GET …/idcert/actor
//!    └─▶ Lineage::apply       the log's own view of each session's certificate
//!          └─▶ repairs (the writer only): actor.idcert_invalidated
//! ```
//!
//! Repairs: one node serialises an issuance and the end of its session under the session's
//! lock, so no certificate outlives its session and a session holds one valid certificate.
//! Two nodes hold two locks: an issuance through one node can commit after the end through
//! another, or beside another node's issuance for the same session. The writer reads the log
//! in order and invalidates what breaks the rule (a certificate of a session that ended
//! before it, the older of two valid ones of a session, the valid certificate of a session
//! whose end did not invalidate it), deciding from the [`Lineage`] this task alone feeds, in
//! seq order, never from the index the issuing node updates ahead of its follower. The
//! invalidation's event id is the certificate's, so the log keeps one however many appends
//! race.
//!
//! The task holds no handle on the log (a handle keeps the log's broadcast, its writer and
//! its threads alive): the instance, held weakly, appends the repairs.

use std::sync::{Arc, Weak};

use tokio::sync::broadcast::error::RecvError;

use super::actor_certs::Lineage;
use super::Identity;
use crate::cluster::RoleWatch;
use crate::core::event::{LogEntry, NewEvent};
use crate::store::{CommittedBatch, EventLogHandle, Store};

/// Entries re-read per query after the subscriber lost batches.
const REREAD_PAGE: u64 = 1000;
/// How often (seconds of the instance clock) expired certificates leave the lineage.
const PRUNE_EVERY_SECS: i64 = 60;

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

    /// Everything up to this `seq` is in what is loaded after subscribing.
    pub(super) fn applied(&self) -> u64 {
        self.applied
    }
}

/// Applies every committed batch to `identity` until the instance goes (`stop` closes with
/// it) or the log closes. `role` tells whether this node appends the repairs.
pub(super) async fn follow(
    identity: Weak<Identity>,
    store: Store,
    role: RoleWatch,
    mut subscription: Subscription,
    mut lineage: Lineage,
    mut stop: tokio::sync::watch::Receiver<()>,
) {
    let mut pruned = i64::MIN;
    loop {
        let received = tokio::select! {
            // Nothing is ever sent: this ends when the sender, the instance's, is dropped.
            _ = stop.changed() => return,
            received = subscription.committed.recv() => received,
        };
        let (entries, through): (Vec<LogEntry>, u64) = match received {
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
        let now = identity.clock.now_secs();
        let repairs = apply(&identity, &mut lineage, &entries, now);
        if now.saturating_sub(pruned) >= PRUNE_EVERY_SECS {
            lineage.prune(now);
            pruned = now;
        }
        if !repairs.is_empty() && role.borrow().writes() {
            let log = identity.sessions.log().clone();
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
fn apply(
    identity: &Identity,
    lineage: &mut Lineage,
    entries: &[LogEntry],
    now: i64,
) -> Vec<NewEvent> {
    for entry in entries {
        identity.sessions.apply(entry);
        identity.sessions.foreign().apply(entry);
    }
    identity
        .actor_certs
        .follow(lineage, entries, now, |session| {
            !identity.sessions.is_live(session)
        })
}
