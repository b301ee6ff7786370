//! Who is in which channel, for the inbox's authorisation checks, without a database read
//! per event.
//!
//! A moka cache of `(channel, fid) → membership` in front of the `members` projection. Every
//! committed batch of the log updates it (through the same `projection::derive` the writer
//! applies), whoever appended it; a subscriber that lags clears it, and the next lookups read
//! the projection again.
//!
//! Beside it, each user's channels ([`MembershipView::channels_of`]), for the gateway's socket
//! start-ups: read from the projection on a user's first lookup, then kept current by the
//! same applies, so a reconnecting user's sockets start without reading the database. A
//! lookup marks the user as loading before it reads, and the applies that arrive while it
//! reads are kept and replayed over what it read, in order: whichever side of the read a
//! change committed, it is in the result. [`MembershipView::caught_up`] says when the log's
//! own subscriber has applied everything up to a position.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::broadcast::error::RecvError;

use crate::core::projection::{self, Membership, ProjectionOp};
use crate::store::{EventLogHandle, Store, StoreError};

type Key = (String, String);

/// Users whose channels are kept in memory at most; past it the index starts over (an
/// epoch), and lookups read the projection again.
const MAX_USERS: usize = 200_000;

#[derive(Clone)]
pub struct MembershipView {
    store: Store,
    /// The membership and the `seq` that set it (0 when read from the projection).
    cache: moka::sync::Cache<Key, (Option<Membership>, u64)>,
    users: std::sync::Arc<Mutex<Users>>,
    /// The highest `seq` the log's subscriber has applied (everything before it too).
    applied: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

#[derive(Default)]
struct Users {
    /// Bumped whenever the index is cleared: a lookup that started before keeps its result
    /// to itself.
    epoch: u64,
    by_fid: HashMap<String, UserChannels>,
}

/// Channel → (membership, the `seq` that set it).
type ChannelStates = HashMap<String, (Membership, u64)>;

enum UserChannels {
    /// A lookup is reading the projection; the changes applied meanwhile, in order.
    Loading(Vec<(u64, String, Membership)>),
    Loaded(ChannelStates),
}

/// Applies one change unless the state already holds a newer one.
fn set_newer(states: &mut ChannelStates, seq: u64, channel: &str, state: Membership) {
    match states.get_mut(channel) {
        Some((_, known)) if *known >= seq => {}
        Some(slot) => *slot = (state, seq),
        None => {
            states.insert(channel.to_owned(), (state, seq));
        }
    }
}

/// A user's memberships from the projection (`rows`, left ones too, each with the `seq` that
/// set it, as of the read) and the changes applied while it was read: each lands unless the
/// state holds a newer one, whatever the order they arrive in (the log's subscriber applies
/// in order, an appender applies its own commit early or late).
fn merge(
    rows: &[(String, Membership, u64)],
    meanwhile: Vec<(u64, String, Membership)>,
) -> ChannelStates {
    let mut states: ChannelStates = rows
        .iter()
        .map(|(channel, state, seq)| (channel.clone(), (*state, *seq)))
        .collect();
    for (seq, channel, state) in meanwhile {
        set_newer(&mut states, seq, &channel, state);
    }
    states
}

/// The channels a user is invited to or joined, sorted.
fn current(states: &ChannelStates) -> Vec<(String, Membership)> {
    let mut channels: Vec<(String, Membership)> = states
        .iter()
        .filter(|(_, (state, _))| matches!(state, Membership::Invited | Membership::Joined))
        .map(|(channel, (state, _))| (channel.clone(), *state))
        .collect();
    channels.sort_by(|a, b| a.0.cmp(&b.0));
    channels
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
            users: Default::default(),
            applied: std::sync::Arc::new(tokio::sync::watch::Sender::new(log.committed_head())),
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
                        if let Some(last) = batch.entries.last() {
                            updater.applied.send_if_modified(|applied| {
                                let newer = last.seq > *applied;
                                *applied = (*applied).max(last.seq);
                                newer
                            });
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        updater.cache.invalidate_all();
                        updater.clear_users();
                    }
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
                match self.lock_users().by_fid.get_mut(fid) {
                    Some(UserChannels::Loading(meanwhile)) => {
                        meanwhile.push((seq, channel.clone(), *state));
                    }
                    Some(UserChannels::Loaded(states)) => set_newer(states, seq, channel, *state),
                    None => {}
                }
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

    fn lock_users(&self) -> std::sync::MutexGuard<'_, Users> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear_users(&self) {
        let mut users = self.lock_users();
        users.epoch += 1;
        users.by_fid.clear();
    }

    /// The channels `fid` is invited to or joined, and whether the database was read for
    /// them (a user's first lookup, or one that met another lookup of the same user).
    pub async fn channels_of(
        &self,
        fid: &str,
    ) -> Result<(Vec<(String, Membership)>, bool), StoreError> {
        let epoch = {
            let mut users = self.lock_users();
            match users.by_fid.get(fid) {
                Some(UserChannels::Loaded(states)) => return Ok((current(states), false)),
                Some(UserChannels::Loading(_)) => None,
                None => {
                    if users.by_fid.len() >= MAX_USERS {
                        users.epoch += 1;
                        users.by_fid.clear();
                    }
                    users
                        .by_fid
                        .insert(fid.to_owned(), UserChannels::Loading(Vec::new()));
                    Some(users.epoch)
                }
            }
        };
        let read = self.store.memberships_of(fid).await;
        let mut users = self.lock_users();
        let loading = match (epoch == Some(users.epoch), read.is_ok()) {
            (true, true) => users.by_fid.remove(fid),
            // A failed read leaves no marker behind.
            (true, false) => {
                users.by_fid.remove(fid);
                None
            }
            // Another lookup of this user is loading it, or the index started over
            // meanwhile: the read is current, it just is not kept.
            (false, _) => None,
        };
        let rows = read?;
        let Some(UserChannels::Loading(meanwhile)) = loading else {
            return Ok((current(&merge(&rows, Vec::new())), true));
        };
        let states = merge(&rows, meanwhile);
        let channels = current(&states);
        users
            .by_fid
            .insert(fid.to_owned(), UserChannels::Loaded(states));
        Ok((channels, true))
    }

    /// Whether the log's subscriber has applied every entry up to `seq`.
    pub fn caught_up(&self, seq: u64) -> bool {
        *self.applied.borrow() >= seq
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_applied_during_a_read_land_over_it_in_order() {
        use Membership::*;
        let rows = vec![
            ("a".to_owned(), Joined, 9),
            ("b".to_owned(), Invited, 10),
            ("x".to_owned(), Joined, 20),
        ];
        // Committed before the read (already in `rows`) and after it; `c` joined and left;
        // an appender's own late apply of an older change to `x` (a leave at 8, before the
        // re-join at 20 the read shows) does not undo the newer state.
        let meanwhile = vec![
            (8, "x".to_owned(), Left),
            (10, "b".to_owned(), Invited),
            (11, "b".to_owned(), Joined),
            (12, "c".to_owned(), Joined),
            (13, "a".to_owned(), Left),
            (14, "c".to_owned(), Left),
            (15, "d".to_owned(), Invited),
        ];
        let mut states = merge(&rows, meanwhile);
        assert_eq!(
            current(&states),
            vec![
                ("b".to_owned(), Joined),
                ("d".to_owned(), Invited),
                ("x".to_owned(), Joined)
            ]
        );
        // A late apply of an older change does not undo a newer one.
        set_newer(&mut states, 12, "c", Joined);
        set_newer(&mut states, 16, "a", Joined);
        assert_eq!(
            current(&states),
            vec![
                ("a".to_owned(), Joined),
                ("b".to_owned(), Joined),
                ("d".to_owned(), Invited),
                ("x".to_owned(), Joined)
            ]
        );
    }
}
