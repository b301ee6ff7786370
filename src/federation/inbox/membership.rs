//! Who is in which channel, for the inbox's authorisation checks, without a database read
//! per event.
//!
//! A moka cache of `(channel, fid) → membership` in front of the `members` projection. Every
//! committed batch of the log updates it (through the same `projection::derive` the writer
//! applies), whoever appended it; a subscriber that lags clears it, and the next lookups read
//! the projection again.

use tokio::sync::broadcast::error::RecvError;

use crate::core::projection::{self, Membership, ProjectionOp};
use crate::store::{EventLogHandle, Store, StoreError};

type Key = (String, String);

#[derive(Clone)]
pub struct MembershipView {
    store: Store,
    /// The membership and the `seq` that set it (0 when read from the projection).
    cache: moka::sync::Cache<Key, (Option<Membership>, u64)>,
}

impl MembershipView {
    /// Starts the view and the task that keeps it current from the log.
    pub fn start(store: Store, log: &EventLogHandle) -> MembershipView {
        let view = MembershipView {
            store,
            cache: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_idle(std::time::Duration::from_secs(3600))
                .build(),
        };
        let mut committed = log.subscribe();
        let updater = view.clone();
        actix_web::rt::spawn(async move {
            loop {
                match committed.recv().await {
                    Ok(batch) => {
                        for entry in &batch.entries {
                            updater.apply(entry.seq, &projection::membership_ops(entry));
                        }
                    }
                    Err(RecvError::Lagged(_)) => updater.cache.invalidate_all(),
                    Err(RecvError::Closed) => break,
                }
            }
        });
        view
    }

    /// Applies the membership changes among `ops`, which the entry `seq` committed. An older
    /// change never overwrites a newer one, whichever arrives first (the inbox applies its own
    /// commits at once, the log's publication follows).
    pub fn apply(&self, seq: u64, ops: &[ProjectionOp]) {
        for op in ops {
            if let ProjectionOp::SetMembership {
                channel,
                fid,
                state,
            } = op
            {
                // One step: a concurrent apply of an older change cannot land after this.
                let _ = self
                    .cache
                    .entry((channel.clone(), fid.clone()))
                    .and_compute_with(|known| {
                        if known.is_none_or(|k| k.value().1 < seq) {
                            moka::ops::compute::Op::Put((Some(*state), seq))
                        } else {
                            moka::ops::compute::Op::Nop
                        }
                    });
            }
        }
    }

    /// Whether a user of `server_name` (this server) is invited to or joined in `channel`.
    pub async fn has_local_member(
        &self,
        channel: &str,
        server_name: &str,
    ) -> Result<bool, StoreError> {
        self.store.has_member_of(channel, server_name).await
    }

    pub async fn get(&self, channel: &str, fid: &str) -> Result<Option<Membership>, StoreError> {
        let key = (channel.to_owned(), fid.to_owned());
        if let Some((found, _)) = self.cache.get(&key) {
            return Ok(found);
        }
        let found = self.store.membership(channel, fid).await?;
        // A change applied while the projection was read wins over what was read.
        Ok(self.cache.entry(key).or_insert((found, 0)).into_value().0)
    }
}
