//! Each client session's cursor (DESIGN §5): the newest `seq` handed to one of its sockets or
//! returned by `GET /.p2/core/v1/events`. WebSocket delivery and REST catch-up share it, so a
//! client that switches between them gets no gap and no duplicate.
//!
//! The cursor moves on every delivered event, so it lives in memory while a session has
//! sockets (an atomic per session) and a flusher writes the ones that moved to
//! `session_cursors` once a second. REST catch-up writes its own advance before it answers.
//! A cursor only ever errs backwards: after a crash it can be up to a second behind, and a
//! socket that ends without a clean close rewinds it (see `gateway::session`). The client then
//! sees some events twice (it can drop them by `seq`), never misses one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Store;

/// A session's cursor while it has sockets.
#[derive(Debug, Default)]
pub struct Cursor {
    seq: AtomicU64,
    flushed: AtomicU64,
    sockets: AtomicUsize,
}

impl Cursor {
    pub fn get(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Moves the cursor forward to `seq` (never back).
    pub fn advance(&self, seq: u64) {
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Moves the cursor back to `seq` if it is past it: what was handed to a socket that then
    /// died may never have arrived.
    pub fn rewind_to(&self, seq: u64) {
        self.seq.fetch_min(seq, Ordering::AcqRel);
    }
}

/// A socket's hold on its session's cursor; dropping it releases the hold.
pub struct Lease {
    cursor: Arc<Cursor>,
}

impl Lease {
    pub fn cursor(&self) -> &Arc<Cursor> {
        &self.cursor
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        // Forgotten at the next flush once written.
        self.cursor.sockets.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct Cursors {
    live: Mutex<HashMap<String, Arc<Cursor>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cursors {
    /// Starts the flusher.
    pub fn start(store: Store) -> Arc<Cursors> {
        let cursors = Arc::new(Cursors {
            live: Mutex::new(HashMap::new()),
        });
        let flusher = Arc::downgrade(&cursors);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(cursors) = flusher.upgrade() else {
                    break;
                };
                cursors.flush(&store).await;
            }
        });
        cursors
    }

    /// The cursor of a session that opens a socket, starting at `stored` (what the database
    /// holds) if it is not live yet; held until the lease is dropped.
    pub fn acquire(&self, session_id: &str, stored: u64) -> Lease {
        let mut live = lock(&self.live);
        let cursor = live.entry(session_id.to_owned()).or_insert_with(|| {
            Arc::new(Cursor {
                seq: AtomicU64::new(stored),
                flushed: AtomicU64::new(stored),
                sockets: AtomicUsize::new(0),
            })
        });
        cursor.sockets.fetch_add(1, Ordering::AcqRel);
        Lease {
            cursor: cursor.clone(),
        }
    }

    /// The live cursor of `session_id`, if it has one.
    pub fn live(&self, session_id: &str) -> Option<u64> {
        lock(&self.live).get(session_id).map(|c| c.get())
    }

    /// Records a REST catch-up's advance in memory (the caller writes it to the store).
    pub fn advance_live(&self, session_id: &str, seq: u64) {
        if let Some(cursor) = lock(&self.live).get(session_id) {
            cursor.advance(seq);
        }
    }

    /// Forgets a session's cursor (the session ended).
    pub fn forget(&self, session_id: &str) {
        lock(&self.live).remove(session_id);
    }

    /// Writes the cursors that moved; forgets those without sockets once written.
    pub async fn flush(&self, store: &Store) {
        let moved: Vec<(String, u64, Arc<Cursor>)> = lock(&self.live)
            .iter()
            .filter_map(|(id, c)| {
                let seq = c.get();
                (seq != c.flushed.load(Ordering::Acquire)).then(|| (id.clone(), seq, c.clone()))
            })
            .collect();
        if !moved.is_empty() {
            let rows: Vec<(String, u64)> = moved
                .iter()
                .map(|(id, seq, _)| (id.clone(), *seq))
                .collect();
            if let Err(error) = store.set_session_cursors(&rows).await {
                tracing::warn!(%error, "cannot store session cursors; retrying in a second");
                return;
            }
            for (_, seq, cursor) in &moved {
                cursor.flushed.store(*seq, Ordering::Release);
            }
        }
        lock(&self.live).retain(|_, c| {
            c.sockets.load(Ordering::Acquire) > 0 || c.get() > c.flushed.load(Ordering::Acquire)
        });
    }
}
