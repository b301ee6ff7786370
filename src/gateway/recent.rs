//! The recent events, in memory (DESIGN §5, storms): the client events of the last
//! `gateway.recent_events` log positions (and at most `gateway.recent_bytes` of them), each
//! serialised once, as the shared bytes sockets are sent. A connect or Resume whose position is
//! inside the window is replayed from here without a database read; an older one pages through
//! the log as before.
//!
//! The window follows the log's committed batches. It covers every position after `floor`
//! up to `last`; it keeps only the events a client can see (`CLIENT_TYPES`), but knows it
//! holds all of them in that range. If it falls behind the publication (`Lagged`), it starts
//! again from the next batch: a replay it cannot cover reads the database.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::error::RecvError;

use super::channel::ChannelEvent;
use crate::core::projection::Membership;
use crate::store::{CommittedBatch, EventLogHandle, CLIENT_TYPES, INVITED_TYPES};

struct Window {
    events: VecDeque<Arc<ChannelEvent>>,
    bytes: usize,
    /// Every client event with a `seq` in `(floor, last]` is in `events`.
    floor: u64,
    last: u64,
}

pub struct RecentEvents {
    window: Mutex<Window>,
    max_events: usize,
    max_bytes: usize,
}

impl RecentEvents {
    /// Starts following `log` from its committed head.
    pub fn start(log: &EventLogHandle, max_events: usize, max_bytes: usize) -> Arc<RecentEvents> {
        let mut committed = log.subscribe();
        let head = log.committed_head();
        let recent = Arc::new(RecentEvents {
            window: Mutex::new(Window {
                events: VecDeque::new(),
                bytes: 0,
                floor: head,
                last: head,
            }),
            max_events,
            max_bytes,
        });
        let weak = Arc::downgrade(&recent);
        actix_web::rt::spawn(async move {
            loop {
                let received = committed.recv().await;
                let Some(recent) = weak.upgrade() else { return };
                match received {
                    Ok(batch) => recent.add(&batch),
                    Err(RecvError::Lagged(_)) => recent.restart(),
                    Err(RecvError::Closed) => return,
                }
            }
        });
        recent
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, batch: &CommittedBatch) {
        let Some(first) = batch.entries.first() else {
            return;
        };
        let events: Vec<Arc<ChannelEvent>> = batch
            .entries
            .iter()
            .filter(|e| CLIENT_TYPES.contains(&e.event_type.as_str()))
            .filter_map(ChannelEvent::from_entry)
            .map(Arc::new)
            .collect();
        let mut window = self.lock();
        if first.seq != window.last + 1 {
            // A gap (we lagged, or started mid-way): cover from this batch on.
            window.events.clear();
            window.bytes = 0;
            window.floor = first.seq - 1;
        }
        for event in events {
            window.bytes += event.json.len();
            window.events.push_back(event);
        }
        window.last = batch.entries.last().map_or(window.last, |e| e.seq);
        while window.events.len() > self.max_events || window.bytes > self.max_bytes {
            let Some(old) = window.events.pop_front() else {
                break;
            };
            window.bytes -= old.json.len();
            window.floor = old.seq;
        }
    }

    fn restart(&self) {
        let mut window = self.lock();
        window.events.clear();
        window.bytes = 0;
        // Nothing is covered until the next batch, which starts a new range.
        window.floor = u64::MAX;
        window.last = u64::MAX - 1;
    }

    /// Whether a replay from `after` can start in the window (it holds every client event
    /// after `after` that it has seen).
    pub fn covers(&self, after: u64) -> bool {
        after >= self.lock().floor
    }

    /// The events in `(after, end]` that `fid` sees with membership `channels` (the rules of
    /// `Store::events_visible_to`), with `end` = `upto` or the last position the window has
    /// seen if it is not there yet; `None` when the window does not hold `after` (read the
    /// log).
    pub fn replay(
        &self,
        fid: &str,
        channels: &HashMap<String, Membership>,
        after: u64,
        upto: u64,
    ) -> Option<(Vec<Arc<ChannelEvent>>, u64)> {
        let window = self.lock();
        if after < window.floor || after >= window.last {
            return None;
        }
        let end = upto.min(window.last);
        let start = window.events.partition_point(|e| e.seq <= after);
        let events = window
            .events
            .range(start..)
            .take_while(|e| e.seq <= end)
            .filter(|e| match channels.get(&e.channel) {
                Some(Membership::Joined) => true,
                Some(Membership::Invited) => INVITED_TYPES.contains(&e.event_type.as_str()),
                _ => e.event_type == "channel.leave" && e.sender.as_deref() == Some(fid),
            })
            .cloned()
            .collect();
        Some((events, end))
    }
}
