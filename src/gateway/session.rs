//! The `Session` actor: one per WebSocket connection (DESIGN §5).
//!
//! ```text
//!  client ──frames──▶ MessageStream ─▶ Session actor: Hello, heartbeats, Identify/Resume,
//!                                       │  commands, start-up replay, closes
//!                                       │ control frames, replayed events
//!                                       ▼
//!  Channel actors ── live events ──▶ outbound queue, bounded in frames and bytes
//!                                     (gateway.outbound_max_*)
//!                                       │
//!                     writer task: per-connection `s`, the membership view and dedup by
//!                     log seq, then actix-ws ──▶ socket; moves the session's cursor
//! ```
//! Live events go from the Channel actor straight into the socket's queue: the actor is the
//! control plane, and the data plane costs one hand-off per delivery.
//! - **Start.** A ticket authenticates at the upgrade; without one the client sends Identify
//!   `{token}` or Resume `{s, token}` after Hello. The actor then registers with the router (so
//!   membership changes reach it), subscribes to every channel its user is invited to or has
//!   joined, and replays from the log what it missed: after the session's cursor, or after
//!   Resume's `s` (or the ticket URL's `resume`). Live events that arrive meanwhile are held
//!   and sent after the replay when their `seq` is newer. Then Ready (`chat` op 2) or Resumed
//!   (`core` op 10). A position more than `gateway.max_replay_events` log entries behind the
//!   head closes with 4010.
//! - **Order.** The router hands events on in `seq` order, so `d.seq` only grows on a socket
//!   and the last one a client saw is enough to resume.
//! - **Backpressure.** A socket whose queue is full is poisoned (it takes no later live
//!   event, and the writer sends none, so it never shows an event after one it missed),
//!   dropped by its Channel actors and closed with 4000 (resume). What was queued is dropped,
//!   never buffered without bound.
//! - **Cursor.** The writer advances the session's cursor as frames are handed to the socket;
//!   a socket that ends without a clean close rewinds it (see `gateway::cursors`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_web::web::{self, Bytes};
use actix_ws::{CloseCode, CloseReason, Message as WsMessage, ProtocolError};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use super::channel::{
    ChannelEvent, CloseSocket, Delivered, Refused, SessionLink, Signal, SignalKind, Subscriber,
};
use super::cursors::{Cursor, Lease};
use super::frames::{self, close, op, ClientFrame, CHAT, CORE};
use crate::app::AppState;
use crate::core::projection::Membership;
use crate::store::INVITED_TYPES;

/// How long a close may wait for the socket to take the close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// The window of `gateway.max_client_frames`.
const FRAME_WINDOW: Duration = Duration::from_secs(10);
/// Frames of the outbound bound kept for control frames (heartbeat ACKs and requests, Ready,
/// Resumed, refusals), so that a queue full of events never refuses them.
const CONTROL_RESERVE: usize = 8;
/// Events a replay reads at once.
const REPLAY_PAGE: usize = 200;
/// Replayed frames queued ahead of the writer at most (and never more than half the
/// outbound bound, the rest is for live events): a socket's queue keeps the memory of the
/// deepest it has been, so a replay that filled it to 512 frames left every resumed socket
/// that much heavier for good.
const REPLAY_AHEAD: usize = 64;
/// Presence states a client may announce.
const PRESENCE: [&str; 4] = ["online", "idle", "dnd", "offline"];

/// Runs `work` on the gateway's start-up arbiter and hands its output back (`None` when that
/// arbiter is gone: the process is stopping). A socket's start-up awaits the database and
/// the Channel actors several times, and on an HTTP worker each await waits a full turn of
/// the worker's task queue, which under fan-out holds thousands of socket writers: at 20
/// messages/s to 9,000 sockets a turn took tens of milliseconds and a connect storm slowed to
/// a few dozen handshakes a second. Off the workers, a start-up costs them two turns.
fn off_worker<T: Send + 'static>(
    arbiter: &actix::ArbiterHandle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> impl std::future::Future<Output = Option<T>> {
    let (done, output) = oneshot::channel();
    let spawned = arbiter.spawn(async move {
        let _ = done.send(work.await);
    });
    async move {
        match spawned {
            true => output.await.ok(),
            false => None,
        }
    }
}

/// Whom a socket starts for: a ticket's session, or a token still to check.
enum Who {
    Identity(Identity),
    Token(String),
}

/// What a socket's start-up found.
enum StartUp {
    /// The token was refused or could not be checked: close with this code.
    Unauthenticated(u16, &'static str),
    /// Registered under `Identity` (the actor must unregister when it stops), then started
    /// or refused. The registration undoes itself if it is dropped before the actor takes
    /// it over.
    Registered(Identity, Registration, Result<Started, Refusal>),
}

/// A socket's registration under its user and its channel subscriptions, made by the
/// start-up off the actor's thread: undone on drop unless the actor took it over (then its
/// `stopped` undoes them). A start-up whose answer never reaches the actor (the System
/// stopping, the actor gone) leaves nothing behind.
struct Registration {
    state: web::Data<AppState>,
    fid: String,
    id: u64,
    subscribed: Arc<std::sync::Mutex<Vec<String>>>,
    armed: bool,
}

impl Registration {
    fn take_over(mut self) {
        self.armed = false;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.state.channels.unregister(&self.fid, self.id);
        for channel in self
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            self.state.channels.unsubscribe(channel, self.id);
        }
    }
}

enum Refusal {
    Close(u16, &'static str),
    Store(crate::store::StoreError),
}

impl From<crate::store::StoreError> for Refusal {
    fn from(error: crate::store::StoreError) -> Self {
        Refusal::Store(error)
    }
}

/// Where a started socket stands: its cursor, the position its replay starts after, the
/// head it runs to, and its channels as of that head.
struct Started {
    cursor: Lease,
    from: u64,
    head: u64,
    channels: Vec<(String, Membership)>,
}

/// A socket's start-up, run on the start-up arbiter: checks the token, registers the socket
/// under its user, subscribes it to its channels, and reads its cursor and the head. The
/// socket registers first and reads its channels before and after taking the head: a
/// membership change then either reaches it live (after the head) or is in what it read.
async fn start_up(
    state: web::Data<AppState>,
    id: u64,
    who: Who,
    resume: Option<u64>,
    subscriber: Arc<SocketQueue>,
    close: Recipient<CloseSocket>,
    subscribed: Arc<std::sync::Mutex<Vec<String>>>,
) -> StartUp {
    let identity = match who {
        Who::Identity(identity) => identity,
        Who::Token(token) => match state.identity.sessions.authenticate(&token).await {
            Ok(session) => Identity {
                fid: session.fid,
                session_id: session.session_id,
                created_seq: u64::try_from(session.created_seq).unwrap_or(0),
            },
            Err(crate::identity::IdentityError::UnknownToken(_)) => {
                return StartUp::Unauthenticated(
                    close::BAD_TOKEN,
                    "the token belongs to no live session",
                )
            }
            Err(error) => {
                tracing::warn!(%error, "gateway token lookup failed");
                return StartUp::Unauthenticated(
                    close::RESUME,
                    "the server could not check the token; retry",
                );
            }
        },
    };
    let subscriber: Arc<dyn Subscriber> = subscriber;
    let link = SessionLink {
        session_id: identity.session_id.clone(),
        subscriber: subscriber.clone(),
        close,
    };
    let max_sockets = state.config.gateway.max_sockets_per_user;
    if !state
        .channels
        .register(&identity.fid, id, link, max_sockets)
    {
        return StartUp::Unauthenticated(close::RATE_LIMITED, "too many sockets for this user");
    }
    let registration = Registration {
        state: state.clone(),
        fid: identity.fid.clone(),
        id,
        subscribed: subscribed.clone(),
        armed: true,
    };
    let started = started(&state, id, &identity, resume, subscriber, subscribed).await;
    StartUp::Registered(identity, registration, started)
}

/// The channels `fid` is invited to or joined, as of `seq` or later: from the membership view
/// when its log subscriber has applied `seq` (a database read only on the user's first
/// lookup), else from the projection. Reads are counted.
async fn channels_as_of(
    state: &AppState,
    fid: &str,
    seq: u64,
) -> Result<Vec<(String, Membership)>, crate::store::StoreError> {
    let view = state.inbox.membership();
    let (channels, read) = match view.caught_up(seq) {
        true => view.channels_of(fid).await?,
        false => (state.store.channels_of(fid).await?, true),
    };
    if read {
        state.metrics.gateway_connect_reads.inc();
    }
    Ok(channels)
}

/// The part of [`start_up`] after the registration.
async fn started(
    state: &AppState,
    id: u64,
    identity: &Identity,
    resume: Option<u64>,
    subscriber: Arc<dyn Subscriber>,
    subscribed: Arc<std::sync::Mutex<Vec<String>>>,
) -> Result<Started, Refusal> {
    // A stop, or the end of this session, may have closed every registered socket just
    // before this one registered: both set their mark before reading the sockets.
    if state.channels.stopping() {
        return Err(Refusal::Close(
            close::RESUME,
            "the server is restarting; resume",
        ));
    }
    if state.tickets.is_ended(&identity.session_id) {
        return Err(Refusal::Close(
            close::NOT_AUTHENTICATED,
            "the session was ended",
        ));
    }
    // Recorded before subscribing, so that a stop meanwhile unsubscribes it.
    let record = |channel: &String| {
        subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(channel.clone());
    };
    let store = &state.store;
    let reads = &state.metrics.gateway_connect_reads;
    // The user's channels from the membership view the log keeps current (a database read
    // only on the user's first lookup since the start), if the view has applied everything
    // committed before this socket registered: a join the router handled before then did
    // not subscribe this socket, so it must be in this look. Otherwise the projection.
    let first = channels_as_of(state, &identity.fid, state.log.committed_head()).await?;
    for (channel, _) in &first {
        record(channel);
        state
            .channels
            .subscribe(channel, id, subscriber.clone())
            .await;
    }
    // A live cursor (another socket of the session, or one that went less than a flush ago)
    // is newer than the stored one, and a Resume says itself where the client stands: then
    // the database is not read.
    let live = state.cursors.live(&identity.session_id);
    let stored = match (live, resume) {
        (None, None) => {
            reads.inc();
            store.session_cursor(&identity.session_id).await?
        }
        _ => None,
    };
    // The committed head from memory (set before its batch is published; this socket is
    // registered, so everything after it reaches it live).
    let head = state.log.committed_head();
    // A session that has never connected (no cursor stored or live, no resume) starts at
    // the head: its Ready carries its channels, and it is not replayed the log since its
    // login. Its cursor is stored before Ready, so a restart cannot take it for a first
    // connect again; REST catch-up then starts there too.
    let start = match live.is_none() && stored.is_none() && resume.is_none() {
        true => {
            state.cursors.store(&identity.session_id, head).await?;
            head
        }
        // A Resume past the head (a client's bug, a restored database) does not pin the
        // cursor ahead of what was delivered.
        false => live
            .or(stored)
            .or(resume.map(|seq| seq.min(head)))
            .unwrap_or(0)
            .max(identity.created_seq),
    };
    let cursor = state.cursors.acquire(&identity.session_id, start);
    // Membership as of `head` or later: changes after it arrive live, in order. The view is
    // as of `head` once the log's subscriber has applied it (it trails a commit by its
    // publication); until then the projection is read instead. Waiting for it instead cost
    // a connect storm a quarter of its pace.
    let channels = channels_as_of(state, &identity.fid, head).await?;
    for (channel, _) in &channels {
        if !first.iter().any(|(c, _)| c == channel) {
            record(channel);
            state
                .channels
                .subscribe(channel, id, subscriber.clone())
                .await;
        }
    }
    let from = resume.unwrap_or_else(|| cursor.cursor().get());
    Ok(Started {
        cursor,
        from,
        head,
        channels,
    })
}

/// Who the socket belongs to, once authenticated.
pub struct Identity {
    pub fid: String,
    pub session_id: String,
    /// The session's `seq` at creation: its cursor until something is delivered.
    pub created_seq: u64,
}

/// How the connection starts.
pub enum Start {
    /// A ticket was redeemed at the upgrade; `resume` is the URL's `resume=<seq>`.
    Ticket {
        identity: Identity,
        resume: Option<u64>,
    },
    /// Wait for Identify or Resume.
    AwaitIdentify,
}

enum Outgoing {
    /// From a Channel actor: filtered and deduplicated by the writer.
    Live(Arc<ChannelEvent>),
    /// From the start-up replay: already filtered by the query.
    Replayed(Arc<ChannelEvent>),
    Ephemeral {
        channel: Arc<str>,
        json: Bytes,
    },
    /// A control frame; `seq` moves the cursor once it is handed on (Ready, Resumed).
    Control {
        n: &'static str,
        op: u16,
        d: String,
        seq: Option<u64>,
    },
    /// The replay is queued: the held live events newer than `upto` follow it.
    ReplayDone {
        upto: u64,
    },
    Pong(Bytes),
}

impl Outgoing {
    /// The bytes it counts against `gateway.outbound_max_bytes`.
    fn weight(&self) -> usize {
        match self {
            Outgoing::Live(e) | Outgoing::Replayed(e) => e.json.len(),
            Outgoing::Ephemeral { json, .. } => json.len(),
            Outgoing::Control { d, .. } => d.len(),
            Outgoing::ReplayDone { .. } | Outgoing::Pong(_) => 0,
        }
    }
}

/// A socket's outbound queue, bounded in frames and bytes; Channel actors push into it from
/// their thread, the Session actor from its own.
pub struct SocketQueue {
    tx: mpsc::Sender<Outgoing>,
    /// Frames queued (above [`FRAME_UNIT`]) and their bytes (below it), in one atomic so that
    /// a push costs one read-modify-write.
    queued: AtomicU64,
    max_frames: usize,
    max_bytes: usize,
    /// Set once a live event was refused: every later one is refused too, and the writer
    /// sends no more live events, so the socket never shows an event after one it missed.
    poisoned: AtomicBool,
    /// The socket's actor, told when a Channel actor dropped it.
    actor: Recipient<Delivered>,
    /// Set by a replay that found the queue full: the writer tells `room` once the queue is
    /// down to half of what a replay queues ahead, and the replay goes on (no polling). Both
    /// sides run on the socket's HTTP worker thread (the writer task and the Session actor),
    /// which is what makes the store-then-check in `room_or_ask` race-free.
    wants_room: AtomicBool,
    room: Recipient<Room>,
}

/// The outbound queue has room again for a stalled replay.
#[derive(Message)]
#[rtype(result = "()")]
struct Room;

/// One frame in [`SocketQueue::queued`].
const FRAME_UNIT: u64 = 1 << 40;

impl SocketQueue {
    fn fits(&self, queued: u64, len: usize, spare: usize) -> bool {
        let (frames, bytes) = (
            (queued / FRAME_UNIT) as usize,
            (queued % FRAME_UNIT) as usize,
        );
        frames + spare < self.max_frames && (bytes == 0 || bytes + len <= self.max_bytes)
    }

    /// Room for an event of `len` bytes, keeping `spare` frames free. An empty queue takes
    /// any one event, however large.
    fn has_room(&self, len: usize, spare: usize) -> bool {
        self.fits(self.queued.load(Ordering::Acquire), len, spare)
    }

    /// Queues an item; control frames may use the reserve and ignore the byte bound.
    fn push(&self, item: Outgoing, control: bool) -> Result<(), Refused> {
        if !control && self.poisoned.load(Ordering::Acquire) {
            return Err(Refused::Full);
        }
        let len = item.weight();
        let unit = FRAME_UNIT + len as u64;
        let before = self.queued.fetch_add(unit, Ordering::AcqRel);
        if !control && !self.fits(before, len, CONTROL_RESERVE) {
            self.queued.fetch_sub(unit, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        self.tx.try_send(item).map_err(|error| {
            self.queued.fetch_sub(unit, Ordering::AcqRel);
            match error {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }

    fn taken(&self, item: &Outgoing) {
        let unit = FRAME_UNIT + item.weight() as u64;
        let left = self.queued.fetch_sub(unit, Ordering::AcqRel) - unit;
        if (left / FRAME_UNIT) as usize <= (self.max_frames / 2).min(REPLAY_AHEAD) / 2
            && self.wants_room.load(Ordering::Acquire)
            && self.wants_room.swap(false, Ordering::AcqRel)
        {
            self.room.do_send(Room);
        }
    }

    /// Whether an event of `len` bytes fits with `spare` frames free; if not, asks the
    /// writer to say when the queue has drained (checked again after asking, so that a
    /// drain in between is not missed).
    fn room_or_ask(&self, len: usize, spare: usize) -> bool {
        if self.has_room(len, spare) {
            return true;
        }
        self.wants_room.store(true, Ordering::Release);
        if self.has_room(len, spare) {
            self.wants_room.store(false, Ordering::Release);
            return true;
        }
        false
    }
}

impl Subscriber for SocketQueue {
    fn event(&self, event: &Arc<ChannelEvent>) -> Result<(), Refused> {
        let pushed = self.push(Outgoing::Live(event.clone()), false);
        if pushed == Err(Refused::Full) {
            self.poisoned.store(true, Ordering::Release);
        }
        pushed
    }

    fn ephemeral(&self, channel: &Arc<str>, json: &Bytes) -> Result<(), Refused> {
        let item = Outgoing::Ephemeral {
            channel: channel.clone(),
            json: json.clone(),
        };
        match self.push(item, false) {
            // Ephemeral: a busy socket misses it and stays subscribed.
            Err(Refused::Full) => Ok(()),
            other => other,
        }
    }

    fn gap(&self, channel: &str) {
        self.actor.do_send(Delivered::Gap {
            channel: channel.to_owned(),
        });
    }
}

/// What the actor and its writer share (both run on the socket's worker thread).
#[derive(Default)]
struct Feed {
    fid: String,
    /// The channels the user is invited to or has joined, as this socket has seen.
    channels: HashMap<String, Membership>,
    /// The newest log `seq` sent; live events at or below it were replayed.
    sent_upto: u64,
    /// The `seq` of the newest change of the user's own membership seen per channel.
    changed_at: HashMap<String, u64>,
    /// Live events waiting until the start-up replay is queued ahead of them.
    held: Option<Vec<Arc<ChannelEvent>>>,
    /// The next `s`.
    s: u64,
}

impl Feed {
    fn frame(&mut self, n: &str, op: u16, d: &[u8]) -> String {
        let text = frames::frame(n, op, self.s, d);
        self.s += 1;
        text
    }

    /// A live event's frame, if this socket should see it: once, in order, by the user's
    /// standing in its channel (which the event itself may change).
    fn live(&mut self, event: &ChannelEvent) -> Option<String> {
        if event.seq <= self.sent_upto {
            return None;
        }
        let mine = event
            .membership
            .as_ref()
            .filter(|(fid, _)| *fid == self.fid)
            .map(|(_, state)| *state);
        if mine.is_some() {
            self.changed_at.insert(event.channel.clone(), event.seq);
        }
        if let Some(state @ (Membership::Invited | Membership::Joined)) = mine {
            self.channels.insert(event.channel.clone(), state);
        }
        let visible = match self.channels.get(&event.channel) {
            Some(Membership::Joined) => true,
            Some(Membership::Invited) => INVITED_TYPES.contains(&event.event_type.as_str()),
            _ => false,
        } || (event.event_type == "channel.leave"
            && event.sender.as_deref() == Some(self.fid.as_str()));
        if mine == Some(Membership::Left) {
            self.channels.remove(&event.channel);
        }
        self.sent_upto = event.seq;
        visible.then(|| self.frame(CHAT, op::CHAT_EVENT, &event.json))
    }
}

/// What a start-up replay still has to read: visible events in `(after, upto]`.
struct Replay {
    after: u64,
    upto: u64,
    /// How many events it has queued so far (all of them by Resumed).
    count: usize,
    /// Resume (answer Resumed) rather than a plain start (answer Ready).
    resume: bool,
    /// Reading the log (the window did not cover it): counted once per replay.
    from_log: bool,
    /// Taken from the window of recent events: counted once per replay.
    from_memory: bool,
}

struct Authed {
    fid: String,
    session_id: String,
    cursor: Option<Lease>,
}

pub struct Session {
    id: u64,
    state: web::Data<AppState>,
    start: Option<Start>,
    auth: Option<Authed>,
    /// The outbound queue (set once the actor has an address).
    out: Option<Arc<SocketQueue>>,
    abort: Option<oneshot::Sender<CloseReason>>,
    /// Shared with the writer.
    feed: Rc<RefCell<Feed>>,
    /// Shared with the writer: the cursor to advance, once known.
    cursor_slot: Rc<RefCell<Option<Arc<Cursor>>>>,
    /// Replayed events waiting for room in the outbound queue.
    backlog: VecDeque<Arc<ChannelEvent>>,
    /// Every channel this socket subscribed to at start, to unsubscribe when it stops
    /// (the start-up runs on the start-up arbiter, hence the lock).
    subscribed: Arc<std::sync::Mutex<Vec<String>>>,
    /// The replay still to read.
    replay: Option<Replay>,
    fetching: bool,
    connected: Instant,
    last_heartbeat: Instant,
    requested_at: Option<Instant>,
    window: (Instant, u32),
    closing: bool,
    /// The client closed, or the server closed for a reason other than silence or a full
    /// queue: everything handed on reached the socket before the close frame.
    clean_end: bool,
    /// The cursor as of the previous heartbeat, and as of the last one.
    confirmed: u64,
    pending_confirm: u64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Session {
    /// Starts the actor and its writer for an upgraded connection.
    pub fn launch(
        state: web::Data<AppState>,
        ws: actix_ws::Session,
        stream: actix_ws::MessageStream,
        start: Start,
    ) {
        let now = Instant::now();
        Session::create(move |ctx| {
            ctx.add_stream(stream);
            let gateway = &state.config.gateway;
            let (tx, rx) = mpsc::channel(gateway.outbound_max_frames);
            let (abort_tx, abort_rx) = oneshot::channel();
            let out = Arc::new(SocketQueue {
                tx,
                queued: AtomicU64::new(0),
                poisoned: AtomicBool::new(false),
                max_frames: gateway.outbound_max_frames,
                max_bytes: gateway.outbound_max_bytes,
                actor: ctx.address().recipient(),
                wants_room: AtomicBool::new(false),
                room: ctx.address().recipient(),
            });
            let feed = Rc::new(RefCell::new(Feed::default()));
            let cursor_slot = Rc::new(RefCell::new(None));
            actix_web::rt::spawn(write(Writer {
                ws,
                rx,
                abort: abort_rx,
                out: out.clone(),
                feed: feed.clone(),
                cursor: cursor_slot.clone(),
                close: ctx.address().recipient(),
                held_bound: gateway.outbound_max_frames,
                deliveries: state.metrics.gateway_deliveries.clone(),
            }));
            Session {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                state,
                start: Some(start),
                auth: None,
                out: Some(out),
                abort: Some(abort_tx),
                feed,
                cursor_slot,
                backlog: VecDeque::new(),
                subscribed: Arc::default(),
                replay: None,
                fetching: false,
                connected: now,
                last_heartbeat: now,
                requested_at: None,
                window: (now, 0),
                closing: false,
                clean_end: false,
                confirmed: 0,
                pending_confirm: 0,
            }
        });
    }

    /// Queues a control frame; `seq` moves the cursor when it is handed on (Ready, Resumed).
    fn send_control(
        &mut self,
        n: &'static str,
        op: u16,
        d: &Value,
        seq: Option<u64>,
        ctx: &mut Context<Self>,
    ) {
        self.push(
            Outgoing::Control {
                n,
                op,
                d: d.to_string(),
                seq,
            },
            true,
            ctx,
        );
    }

    fn push(&mut self, item: Outgoing, control: bool, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let Some(out) = &self.out else { return };
        if out.push(item, control).is_err() {
            self.close(
                close::RESUME,
                "outbound buffer full; resume from your last seq",
                ctx,
            );
        }
    }

    /// Closes now: what is queued is dropped, the close frame goes out after what the socket
    /// already took.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        self.closing = true;
        // Silence and a full queue both mean frames handed on may never arrive.
        self.clean_end = !matches!(code, close::TIMEOUT | close::RESUME);
        self.state
            .metrics
            .gateway_closes
            .with_label_values(&[&code.to_string()])
            .inc();
        tracing::debug!(socket = self.id, code, reason, "closing gateway socket");
        if let Some(abort) = self.abort.take() {
            let _ = abort.send(CloseReason {
                code: CloseCode::Other(code),
                description: Some(reason.to_owned()),
            });
        }
        ctx.stop();
    }

    fn refuse(&mut self, command: &str, errcode: &str, error: &str, ctx: &mut Context<Self>) {
        let d = json!({"type": command, "errcode": errcode, "error": error});
        self.send_control(CHAT, op::CHAT_REFUSED, &d, None, ctx);
    }

    /// Starts the socket for `who`: the token check (Identify, Resume), registration, the
    /// channels, the cursor and the head, all on the start-up arbiter ([`off_worker`]), with
    /// the actor waiting (frames and messages meanwhile queue behind the start-up); then the
    /// replay from memory or the log.
    fn begin(&mut self, who: Who, resume: Option<u64>, ctx: &mut Context<Self>) {
        let Some(out) = self.out.clone() else { return };
        // Live events that arrive from the registration on wait behind the replay.
        self.feed.borrow_mut().held = Some(Vec::new());
        let work = start_up(
            self.state.clone(),
            self.id,
            who,
            resume,
            out,
            ctx.address().recipient(),
            self.subscribed.clone(),
        );
        let work = off_worker(&self.state.startup, work);
        ctx.wait(work.into_actor(self).map(move |outcome, actor, ctx| {
            let (identity, result) = match outcome {
                None => return actor.close(close::RESUME, "the server is restarting; resume", ctx),
                Some(StartUp::Unauthenticated(code, reason)) => {
                    return actor.close(code, reason, ctx);
                }
                Some(StartUp::Registered(identity, registration, result)) => {
                    // From here on `stopped` undoes the registration.
                    registration.take_over();
                    (identity, result)
                }
            };
            actor.feed.borrow_mut().fid = identity.fid.clone();
            actor.auth = Some(Authed {
                fid: identity.fid,
                session_id: identity.session_id,
                cursor: None,
            });
            let started = match result {
                Ok(started) => started,
                Err(Refusal::Close(code, reason)) => return actor.close(code, reason, ctx),
                Err(Refusal::Store(error)) => {
                    tracing::warn!(%error, "gateway start-up failed");
                    return actor.close(
                        close::RESUME,
                        "the server could not read or store the session's state; retry",
                        ctx,
                    );
                }
            };
            let Started {
                cursor,
                from,
                head,
                channels,
            } = started;
            *actor.cursor_slot.borrow_mut() = Some(cursor.cursor().clone());
            actor.confirmed = cursor.cursor().get();
            actor.pending_confirm = actor.confirmed;
            if let Some(auth) = actor.auth.as_mut() {
                auth.cursor = Some(cursor);
            }
            // The retention bound is on log positions, so deciding costs no read: a position
            // more than `max_replay_events` entries behind the head is 4010, unless the
            // window of recent events still holds it (a replay from memory costs no read);
            // anything newer is replayed, page by page, whatever part of it this user may see.
            let max_replay = actor.state.config.gateway.max_replay_events as u64;
            if head.saturating_sub(from) > max_replay && !actor.state.recent.covers(from) {
                actor.close(
                    close::UNRESUMABLE,
                    "the position is older than the replay retention; catch up over REST",
                    ctx,
                );
                return;
            }
            {
                let mut feed = actor.feed.borrow_mut();
                feed.channels = channels.into_iter().collect();
                feed.sent_upto = head;
            }
            actor.replay = Some(Replay {
                after: from,
                upto: head,
                count: 0,
                resume: resume.is_some(),
                from_log: false,
                from_memory: false,
            });
            actor.fetch_page(ctx);
        }));
    }

    /// Reads the next page of the replay; at its end, queues Ready or Resumed and the live
    /// events held meanwhile.
    fn fetch_page(&mut self, ctx: &mut Context<Self>) {
        let (Some(replay), Some(auth)) = (&self.replay, &self.auth) else {
            return;
        };
        if self.fetching {
            return;
        }
        if replay.after >= replay.upto {
            self.pump(ctx);
            return;
        }
        // Inside the window of recent events: replayed from memory, no database read.
        let from_memory = {
            let feed = self.feed.borrow();
            self.state
                .recent
                .replay(&auth.fid, &feed.channels, replay.after, replay.upto)
        };
        if let Some((events, end)) = from_memory {
            if let Some(replay) = self.replay.as_mut().filter(|r| !r.from_memory) {
                replay.from_memory = true;
                self.state
                    .metrics
                    .gateway_replays
                    .with_label_values(&["memory"])
                    .inc();
            }
            if let Some(replay) = self.replay.as_mut() {
                replay.count += events.len();
                // The rest (if the window has not seen all of it yet) comes next time.
                replay.after = end;
            }
            self.backlog.extend(events);
            self.pump(ctx);
            return;
        }
        self.fetching = true;
        if !replay.from_log {
            self.state
                .metrics
                .gateway_replays
                .with_label_values(&["log"])
                .inc();
        }
        if let Some(replay) = self.replay.as_mut() {
            replay.from_log = true;
        }
        let Some(replay) = self.replay.as_ref() else {
            return;
        };
        let (state, fid, after, upto) = (
            self.state.clone(),
            auth.fid.clone(),
            replay.after,
            replay.upto,
        );
        // The permit is held for the read only, not while the page is written out.
        let read = async move {
            let _permit = state.replay_readers.acquire().await;
            state.metrics.gateway_replay_reads.inc();
            state
                .store
                .events_visible_to(&fid, after, REPLAY_PAGE as u64)
                .await
        };
        ctx.spawn(read.into_actor(self).map(move |page, actor, ctx| {
            actor.fetching = false;
            let page = match page {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "gateway replay read failed");
                    actor.close(
                        close::RESUME,
                        "the server could not read the log; retry",
                        ctx,
                    );
                    return;
                }
            };
            let Some(replay) = actor.replay.as_mut() else {
                return;
            };
            let full = page.len() == REPLAY_PAGE;
            replay.after = page.last().map_or(upto, |e| e.seq);
            if !full {
                replay.after = upto;
            }
            for entry in page.iter().filter(|e| e.seq <= upto) {
                if let Some(event) = ChannelEvent::from_entry(entry) {
                    actor.backlog.push_back(Arc::new(event));
                    replay.count += 1;
                }
            }
            actor.pump(ctx);
        }));
    }

    /// Queues Ready or Resumed after the replayed events (once they are all queued), then
    /// lets the writer release the live events it held.
    fn finish_replay(&mut self, ctx: &mut Context<Self>) {
        if !self.backlog.is_empty() {
            // `pump` calls again once the backlog is queued.
            return;
        }
        let (Some(replay), Some(auth)) = (self.replay.take(), self.auth.as_ref()) else {
            return;
        };
        // A deep replay grew the backlog to thousands of slots; an idle socket keeps none.
        self.backlog = VecDeque::new();
        let (n, op, d) = if replay.resume {
            (
                CORE,
                op::RESUMED,
                json!({"replayed": replay.count, "seq": replay.upto}),
            )
        } else {
            let mut joined = Vec::new();
            let mut invited = Vec::new();
            for (channel, state) in &self.feed.borrow().channels {
                match state {
                    Membership::Joined => joined.push(channel.clone()),
                    _ => invited.push(channel.clone()),
                }
            }
            joined.sort();
            invited.sort();
            let d = json!({
                "fid": auth.fid,
                "session_id": auth.session_id,
                "channels": joined,
                "invited": invited,
                "seq": replay.upto,
            });
            (CHAT, op::CHAT_READY, d)
        };
        self.send_control(n, op, &d, Some(replay.upto), ctx);
        self.push(Outgoing::ReplayDone { upto: replay.upto }, true, ctx);
    }

    /// Moves replayed events into the outbound queue while it has room, keeping half of it
    /// for live events; goes on when the writer says the queue has drained ([`Room`]), and
    /// reads the next page when the backlog runs low.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let Some(out) = self.out.clone() else { return };
        let max = self.state.config.gateway.outbound_max_frames;
        let spare = max - (max / 2).min(REPLAY_AHEAD);
        while let Some(next) = self.backlog.front() {
            if self.closing {
                return;
            }
            if !out.room_or_ask(next.json.len(), spare) {
                return;
            }
            if let Some(event) = self.backlog.pop_front() {
                self.push(Outgoing::Replayed(event), true, ctx);
            }
        }
        if self.replay.as_ref().is_some_and(|r| r.after >= r.upto) {
            self.finish_replay(ctx);
        } else if self.replay.is_some() && self.backlog.len() < REPLAY_PAGE / 2 {
            self.fetch_page(ctx);
        }
    }

    /// Identify or Resume: resolves the token, then starts.
    fn identify(&mut self, d: &Value, resume: Option<u64>, ctx: &mut Context<Self>) {
        let Some(token) = d.get("token").and_then(Value::as_str) else {
            self.close(
                close::INVALID_PAYLOAD,
                "Identify and Resume need d.token",
                ctx,
            );
            return;
        };
        // Nothing else is read until the token is checked (by the one session resolver,
        // which also checks a foreign session's certificate).
        self.begin(Who::Token(token.to_owned()), resume, ctx);
    }

    /// Counts a client frame against `gateway.max_client_frames`; false once over it.
    fn within_rate(&mut self, ctx: &mut Context<Self>) -> bool {
        let limit = self.state.config.gateway.max_client_frames;
        if self.window.0.elapsed() > FRAME_WINDOW {
            self.window = (Instant::now(), 0);
        }
        self.window.1 += 1;
        if self.window.1 > limit {
            self.close(close::RATE_LIMITED, "too many frames", ctx);
            return false;
        }
        true
    }

    fn on_frame(&mut self, text: &str, ctx: &mut Context<Self>) {
        if !self.within_rate(ctx) {
            return;
        }
        let Ok(frame) = serde_json::from_str::<ClientFrame>(text) else {
            self.close(close::INVALID_PAYLOAD, "frames are JSON {n, op, d}", ctx);
            return;
        };
        match (frame.n.as_str(), frame.op) {
            (CORE, op::HEARTBEAT) => {
                self.last_heartbeat = Instant::now();
                self.requested_at = None;
                self.send_control(CORE, op::HEARTBEAT_ACK, &json!([]), None, ctx);
                if let Some(auth) = &self.auth {
                    if let Some(lease) = &auth.cursor {
                        // What was handed on before the previous heartbeat had a whole
                        // interval to arrive.
                        self.confirmed =
                            std::mem::replace(&mut self.pending_confirm, lease.cursor().get());
                    }
                }
            }
            (CORE, op::IDENTIFY | op::RESUME) if self.auth.is_some() => {
                self.close(close::ALREADY_AUTHENTICATED, "already authenticated", ctx);
            }
            (CORE, op::IDENTIFY) => self.identify(&frame.d, None, ctx),
            (CORE, op::RESUME) => match frame.d.get("s").and_then(Value::as_u64) {
                Some(seq) => self.identify(&frame.d, Some(seq), ctx),
                None => self.close(close::INVALID_PAYLOAD, "Resume needs d.s, a log seq", ctx),
            },
            (CHAT, op::CHAT_COMMAND) if self.auth.is_some() => self.command(&frame.d, ctx),
            (CORE | CHAT, _) if self.auth.is_none() => {
                self.close(close::NOT_AUTHENTICATED, "Identify first", ctx);
            }
            _ => self.close(close::INVALID_PAYLOAD, "unknown namespace or opcode", ctx),
        }
    }

    fn command(&mut self, d: &Value, ctx: &mut Context<Self>) {
        let Some(auth) = &self.auth else { return };
        let fid = auth.fid.clone();
        let kind = d.get("type").and_then(Value::as_str).unwrap_or("");
        let channel = d.get("channel").and_then(Value::as_str).map(|c| {
            super::actions::channel_ref(c, &self.state.config.server.name).unwrap_or_default()
        });
        let feed = self.feed.clone();
        let joined = |c: &String| feed.borrow().channels.get(c) == Some(&Membership::Joined);
        match kind {
            "typing.start" | "typing.stop" => {
                let Some(channel) = channel.filter(joined) else {
                    self.refuse(
                        kind,
                        "SY_FORBIDDEN",
                        "typing needs a channel you have joined",
                        ctx,
                    );
                    return;
                };
                let kind = if kind == "typing.start" {
                    SignalKind::TypingStart
                } else {
                    SignalKind::TypingStop
                };
                self.state
                    .channels
                    .signal(&channel, Signal { sender: fid, kind });
            }
            "presence.update" => {
                let status = d.get("status").and_then(Value::as_str).unwrap_or("");
                if !PRESENCE.contains(&status) {
                    self.refuse(
                        kind,
                        "SY_INVALID_PARAM",
                        "status is online, idle, dnd or offline",
                        ctx,
                    );
                    return;
                }
                for (channel, state) in &feed.borrow().channels {
                    if *state == Membership::Joined {
                        let kind = SignalKind::Presence(json!({"status": status}));
                        let signal = Signal {
                            sender: fid.clone(),
                            kind,
                        };
                        self.state.channels.signal(channel, signal);
                    }
                }
            }
            "subscribe" => {
                let Some(channel) = channel.filter(|c| !c.is_empty()) else {
                    self.refuse(kind, "SY_INVALID_PARAM", "subscribe needs a channel", ctx);
                    return;
                };
                if feed.borrow().channels.contains_key(&channel) {
                    return;
                }
                let state = self.state.clone();
                let Some(out) = self.out.clone() else { return };
                let subscriber: Arc<dyn Subscriber> = out;
                let id = self.id;
                ctx.spawn(
                    async move {
                        // The membership read is at least as new as `head`.
                        let head = state.store.head().await.ok()?.0;
                        let membership = state.store.membership(&channel, &fid).await;
                        if let Ok(Some(m @ (Membership::Invited | Membership::Joined))) = membership
                        {
                            state.channels.subscribe(&channel, id, subscriber).await;
                            Some((channel, m, head))
                        } else {
                            None
                        }
                    }
                    .into_actor(self)
                    .map(move |subscribed, actor, ctx| match subscribed {
                        Some((channel, m, head)) => {
                            let mut feed = actor.feed.borrow_mut();
                            // A change the socket saw after `head` is newer than this read.
                            let newer = feed.changed_at.get(&channel).is_some_and(|s| *s > head);
                            if !newer {
                                feed.channels.entry(channel).or_insert(m);
                            } else if !feed.channels.contains_key(&channel) {
                                actor.state.channels.unsubscribe(&channel, id);
                            }
                        }
                        None => actor.refuse(
                            "subscribe",
                            "SY_FORBIDDEN",
                            "you are not a member of that channel",
                            ctx,
                        ),
                    }),
                );
            }
            _ => self.refuse(
                kind,
                "SY_INVALID_PARAM",
                "commands are subscribe, typing.start, typing.stop and presence.update",
                ctx,
            ),
        }
    }

    fn check_heartbeat(&mut self, ctx: &mut Context<Self>) {
        let gateway = &self.state.config.gateway;
        let (interval, grace) = (gateway.heartbeat_interval, gateway.heartbeat_grace);
        if self.auth.is_none()
            && self.start.is_none()
            && self.connected.elapsed() > interval + grace
        {
            self.close(close::NOT_AUTHENTICATED, "no Identify in time", ctx);
            return;
        }
        match self.requested_at {
            Some(at) if at.elapsed() > grace => {
                self.close(close::TIMEOUT, "no heartbeat in time", ctx);
            }
            None if self.last_heartbeat.elapsed() > interval + interval / 2 => {
                self.requested_at = Some(Instant::now());
                self.send_control(CORE, op::HEARTBEAT_REQUEST, &json!({}), None, ctx);
            }
            _ => {}
        }
    }
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.state.metrics.gateway_sockets.inc();
        let interval = self.state.config.gateway.heartbeat_interval;
        let grace = self.state.config.gateway.heartbeat_grace;
        let d = json!({"heartbeat_interval": interval.as_millis() as u64});
        self.send_control(CORE, op::HELLO, &d, None, ctx);
        let tick = (interval.min(grace) / 2).max(Duration::from_millis(50));
        ctx.run_interval(tick, |actor, ctx| actor.check_heartbeat(ctx));
        if let Some(Start::Ticket { identity, resume }) = self.start.take() {
            self.begin(Who::Identity(identity), resume, ctx);
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.state.metrics.gateway_sockets.dec();
        if let Some(auth) = &self.auth {
            self.state.channels.unregister(&auth.fid, self.id);
            let feed = self.feed.borrow();
            let subscribed = self.subscribed.lock().unwrap_or_else(|e| e.into_inner());
            let mut channels: Vec<&String> =
                feed.channels.keys().chain(subscribed.iter()).collect();
            channels.sort();
            channels.dedup();
            for channel in channels {
                self.state.channels.unsubscribe(channel, self.id);
            }
            if let Some(lease) = &auth.cursor {
                if !self.clean_end {
                    // The connection died: frames handed on lately may be lost in flight.
                    lease.cursor().rewind_to(self.confirmed);
                }
            }
        }
        if let Some(abort) = self.abort.take() {
            // The client went away: let the writer end.
            let _ = abort.send(CloseReason {
                code: CloseCode::Normal,
                description: None,
            });
        }
    }
}

/// Live events reach the writer directly; the actor hears only that a Channel actor dropped
/// its socket.
impl Handler<Delivered> for Session {
    type Result = ();

    fn handle(&mut self, msg: Delivered, ctx: &mut Self::Context) {
        if let Delivered::Gap { .. } = msg {
            self.close(
                close::RESUME,
                "this socket fell behind; resume from your last seq",
                ctx,
            );
        }
    }
}

impl Handler<Room> for Session {
    type Result = ();

    fn handle(&mut self, _: Room, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

impl Handler<CloseSocket> for Session {
    type Result = ();

    fn handle(&mut self, msg: CloseSocket, ctx: &mut Self::Context) {
        self.close(msg.code, msg.reason, ctx);
    }
}

impl StreamHandler<Result<WsMessage, ProtocolError>> for Session {
    fn handle(&mut self, msg: Result<WsMessage, ProtocolError>, ctx: &mut Self::Context) {
        match msg {
            Ok(WsMessage::Text(text)) => self.on_frame(&text, ctx),
            Ok(WsMessage::Ping(bytes)) => {
                if self.within_rate(ctx) {
                    self.push(Outgoing::Pong(bytes), true, ctx);
                }
            }
            Ok(WsMessage::Pong(_)) => {}
            Ok(WsMessage::Binary(_) | WsMessage::Continuation(_)) => {
                self.close(close::INVALID_PAYLOAD, "frames are JSON text", ctx);
            }
            Ok(WsMessage::Close(_)) => {
                self.clean_end = true;
                ctx.stop();
            }
            Err(_) => ctx.stop(),
            Ok(WsMessage::Nop) => {}
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// The data plane of one socket.
struct Writer {
    ws: actix_ws::Session,
    rx: mpsc::Receiver<Outgoing>,
    abort: oneshot::Receiver<CloseReason>,
    out: Arc<SocketQueue>,
    feed: Rc<RefCell<Feed>>,
    cursor: Rc<RefCell<Option<Arc<Cursor>>>>,
    close: Recipient<CloseSocket>,
    /// Live events it may hold during the start-up replay.
    held_bound: usize,
    deliveries: prometheus::IntCounter,
}

/// Frames queued items (with the socket's `s`), filters and deduplicates live events, holds
/// them during the start-up replay, hands frames to actix-ws and advances the session's
/// cursor; on abort, drops what is queued and sends the close frame.
async fn write(mut w: Writer) {
    let mut frames: Vec<(String, Option<u64>)> = Vec::new();
    let reason = loop {
        let item = tokio::select! {
            biased;
            reason = &mut w.abort => break reason.ok(),
            item = w.rx.recv() => item,
        };
        let Some(item) = item else { break None };
        w.out.taken(&item);
        {
            let mut feed = w.feed.borrow_mut();
            match item {
                Outgoing::Live(_) if w.out.poisoned.load(Ordering::Acquire) => {}
                Outgoing::Live(event) => match feed.held.as_mut() {
                    Some(held) if held.len() < w.held_bound => held.push(event),
                    Some(_) => {
                        w.out.poisoned.store(true, Ordering::Release);
                        w.close.do_send(CloseSocket {
                            code: close::RESUME,
                            reason: "too many events during start-up; resume",
                        });
                    }
                    None => {
                        if let Some(text) = feed.live(&event) {
                            frames.push((text, Some(event.seq)));
                        }
                    }
                },
                Outgoing::Replayed(event) => {
                    let text = feed.frame(CHAT, op::CHAT_EVENT, &event.json);
                    frames.push((text, Some(event.seq)));
                }
                Outgoing::Ephemeral { channel, json } => {
                    let joined = feed.channels.get(&*channel) == Some(&Membership::Joined);
                    if joined && feed.held.is_none() {
                        frames.push((feed.frame(CHAT, op::CHAT_EVENT, &json), None));
                    }
                }
                Outgoing::Control { n, op, d, seq } => {
                    frames.push((feed.frame(n, op, d.as_bytes()), seq));
                }
                Outgoing::ReplayDone { upto } => {
                    let held = feed.held.take().unwrap_or_default();
                    let poisoned = w.out.poisoned.load(Ordering::Acquire);
                    for event in held.into_iter().filter(|_| !poisoned) {
                        if event.seq > upto {
                            if let Some(text) = feed.live(&event) {
                                frames.push((text, Some(event.seq)));
                            }
                        }
                    }
                }
                Outgoing::Pong(bytes) => {
                    drop(feed);
                    let ponged = tokio::select! {
                        biased;
                        _ = &mut w.abort => return,
                        ponged = w.ws.pong(&bytes) => ponged,
                    };
                    if ponged.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        for (text, seq) in frames.drain(..) {
            let sent = tokio::select! {
                biased;
                reason = &mut w.abort => {
                    drop(w.rx);
                    if let Ok(reason) = reason {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.ws.close(Some(reason))).await;
                    }
                    return;
                }
                sent = w.ws.text(text) => sent,
            };
            if sent.is_err() {
                return;
            }
            if let Some(seq) = seq {
                if let Some(cursor) = w.cursor.borrow().as_ref() {
                    cursor.advance(seq);
                }
                w.deliveries.inc();
            }
        }
    };
    drop(w.rx);
    if let Some(reason) = reason {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, w.ws.close(Some(reason))).await;
    }
}
