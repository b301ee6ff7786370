//! Each client session's cursor (DESIGN §5): the newest `seq` handed to one of its sockets or
//! returned by `GET /.p2/core/v1/events`. WebSocket delivery and REST catch-up share it, so a
//! client that switches between them gets no gap and no duplicate.
//!
//! The cursor moves on every delivered event, so it lives in memory while a session has
//! sockets (an atomic per session) and a flusher writes the ones that moved to
//! `session_cursors` once a second. A cursor that must be stored before its caller goes on
//! (a first connect, a REST catch-up's advance) is handed to the flusher with [`Cursors::store`],
//! which starts a flush at once: every store waiting then shares one write (a group commit),
//! so a connect storm costs a write per batch, not per socket. The flusher writes through the
//! log writer (`EventLogHandle::write_beside`): on SQLite a second writer connection would
//! wait for the one write lock in SQLite's sleeping busy handler, and stall the log.
//! A cursor only ever errs backwards: after a crash it can be up to a second behind, and a
//! socket that ends without a clean close rewinds it (see `gateway::session`). The client then
//! sees some events twice (it can drop them by `seq`), never misses one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::store::{EventLogHandle, Store, StoreError};

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
    /// Cursors to store at once, with their callers.
    urgent: Mutex<Vec<Urgent>>,
    /// Starts a flush before the next tick.
    wake: tokio::sync::Notify,
}

/// A cursor its caller waits to see stored.
struct Urgent {
    session_id: String,
    seq: u64,
    stored: oneshot::Sender<Result<(), String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cursors {
    /// Starts the flusher: once a second, and at once when a store waits.
    pub fn start(log: EventLogHandle) -> Arc<Cursors> {
        let cursors = Arc::new(Cursors {
            live: Mutex::new(HashMap::new()),
            urgent: Mutex::new(Vec::new()),
            wake: tokio::sync::Notify::new(),
        });
        let flusher = Arc::downgrade(&cursors);
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                let Some(cursors) = flusher.upgrade() else {
                    break;
                };
                // A store waiting writes the stores only; the tick writes every moved cursor.
                let everything = tokio::select! {
                    _ = tick.tick() => true,
                    () = cursors.wake.notified() => false,
                };
                cursors.flush(&log, everything).await;
            }
        });
        cursors
    }

    /// Stores `seq` as the cursor of `session_id` and returns once it is written: with the
    /// flush this starts, shared with every other store waiting. A live cursor of the
    /// session moves forward to `seq` as well.
    pub async fn store(&self, session_id: &str, seq: u64) -> Result<(), StoreError> {
        let (stored, written) = oneshot::channel();
        lock(&self.urgent).push(Urgent {
            session_id: session_id.to_owned(),
            seq,
            stored,
        });
        self.wake.notify_one();
        let problem = match written.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(problem)) => problem,
            Err(_) => "the cursor flusher has stopped".to_owned(),
        };
        Err(StoreError::Db(sea_orm::DbErr::Custom(problem)))
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

    /// Forgets a session's cursor (the session ended).
    pub fn forget(&self, session_id: &str) {
        lock(&self.live).remove(session_id);
    }

    /// Writes the stores waiting and, with `everything`, the cursors that moved, in one
    /// transaction; with `everything`, then forgets the cursors without sockets that are
    /// written.
    pub async fn flush(&self, log: &EventLogHandle, everything: bool) {
        let mut urgent = std::mem::take(&mut *lock(&self.urgent));
        // A store whose caller went away (a REST call the client gave up on) is not written.
        urgent.retain(|u| !u.stored.is_closed());
        // One row per session, its newest position: PostgreSQL refuses a statement that
        // updates a row twice. A store moves the session's live cursor too, so that what the
        // tick writes next (and the forgetting below) cannot undo it.
        let mut rows: std::collections::BTreeMap<String, u64> = Default::default();
        {
            let live = lock(&self.live);
            for store in &urgent {
                let seq = rows.entry(store.session_id.clone()).or_insert(store.seq);
                *seq = (*seq).max(store.seq);
                if let Some(cursor) = live.get(&store.session_id) {
                    cursor.advance(store.seq);
                }
            }
        }
        let moved: Vec<(u64, Arc<Cursor>)> = match everything {
            true => lock(&self.live)
                .iter()
                .filter_map(|(id, c)| {
                    let seq = c.get();
                    (seq != c.flushed.load(Ordering::Acquire)).then(|| {
                        rows.insert(id.clone(), seq);
                        (seq, c.clone())
                    })
                })
                .collect(),
            false => Vec::new(),
        };
        if !rows.is_empty() {
            let rows: Vec<(String, u64)> = rows.into_iter().collect();
            let written = log
                .write_beside(|backend| Store::session_cursor_statements(&rows, backend))
                .await;
            let outcome = match written {
                Ok(()) => {
                    for (seq, cursor) in &moved {
                        cursor.flushed.store(*seq, Ordering::Release);
                    }
                    Ok(())
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot store session cursors; retrying in a second");
                    Err(error.to_string())
                }
            };
            for waiting in urgent {
                let _ = waiting.stored.send(outcome.clone());
            }
            if outcome.is_err() {
                return;
            }
        }
        if everything {
            // A cursor rewound below what was written (its socket died) is kept until the
            // next tick writes it.
            lock(&self.live).retain(|_, c| {
                c.sockets.load(Ordering::Acquire) > 0
                    || c.get() != c.flushed.load(Ordering::Acquire)
            });
        }
    }
}
