//! `Channel` actors and the router that feeds them: the local fan-out of committed events.
//!
//! ```text
//!  EventLog ── committed batch ──▶ router task (one per instance), in seq order:
//!                                   1. a membership change of a local user with live sockets
//!                                      (invite, create, join) subscribes those sockets first;
//!                                   2. the event, serialised ONCE ({type, seq, channel, sender,
//!                                      ts, content}, DESIGN §5), is sent to its Channel actor
//!                                      and the router waits until it was handed on;
//!                                   3. a leave unsubscribes the leaver's sockets after it.
//!                                         │
//!  Channel actors (one per channel with subscribers, all on the fan-out arbiter)
//!    subscribers: id → Subscriber (each socket's bounded outbound queue, fed directly; or
//!      any actor's mailbox)
//!    Publish → the shared event to each subscriber without waiting; a subscriber whose
//!      queue is full is dropped and told Gap (its socket closes with a resumable code and
//!      the client resumes from the log): never buffered without bound
//!    typing.start / typing.stop / presence.update: ephemeral, never logged; a typing.start
//!      that is not renewed ends with a typing.stop after `gateway.typing_ttl` (10 s)
//!    no subscribers → stops; the router then skips its channel
//! ```
//! A router that falls behind the log's publication closes every socket with 4000: they
//! resume from the log, which lost nothing.
//! Because the router waits for each publication to be handed on before the next, every
//! session receives its events in `seq` order whatever channels they come from. That is what
//! makes one number — the last `seq` a client saw — enough to resume without a gap.
//!
//! Whatever appended the event (the inbox, a local client, the home server's relay), its
//! publication is the same: the log's committed batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_web::web::Bytes;
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;

use crate::core::event::LogEntry;
use crate::core::projection::{membership_ops, Membership, ProjectionOp};
use crate::store::{CommittedBatch, EventLogHandle, CLIENT_TYPES};

/// Publications a Channel actor's mailbox holds before the router waits.
const CHANNEL_MAILBOX: usize = 1024;

/// The types clients see in a channel (DESIGN §5), as logged.
pub fn client_visible(event_type: &str) -> bool {
    CLIENT_TYPES.contains(&event_type)
}

/// One committed event of a channel, serialised once for every subscriber.
#[derive(Debug)]
pub struct ChannelEvent {
    pub seq: u64,
    pub channel: String,
    pub event_type: String,
    pub sender: Option<String>,
    /// The membership change it makes, if any: `(fid, state)`.
    pub membership: Option<(String, Membership)>,
    /// `{"type", "seq", "channel", "sender", "ts", "content"}`.
    pub json: Bytes,
}

#[derive(serde::Serialize)]
struct Wire<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    channel: &'a str,
    sender: Option<&'a str>,
    ts: i64,
    content: &'a RawValue,
}

impl ChannelEvent {
    pub fn from_entry(entry: &LogEntry) -> Option<ChannelEvent> {
        let channel = entry.channel.as_deref()?;
        let json = serde_json::to_vec(&Wire {
            kind: &entry.event_type,
            seq: Some(entry.seq),
            channel,
            sender: entry.sender.as_deref(),
            ts: entry.origin_ts,
            content: &entry.content,
        })
        .ok()?;
        let membership = membership_ops(entry).into_iter().find_map(|op| match op {
            ProjectionOp::SetMembership { fid, state, .. } => Some((fid, state)),
            _ => None,
        });
        Some(ChannelEvent {
            seq: entry.seq,
            channel: channel.to_owned(),
            event_type: entry.event_type.clone(),
            sender: entry.sender.clone(),
            membership,
            json: Bytes::from(json),
        })
    }
}

/// An ephemeral signal's `d` (typing, presence): the event shape without `seq`.
pub fn ephemeral_json(
    kind: &str,
    channel: &str,
    sender: &str,
    content: &serde_json::Value,
) -> Bytes {
    let content = RawValue::from_string(content.to_string())
        .unwrap_or_else(|_| RawValue::from_string("{}".into()).expect("{} is JSON"));
    let json = serde_json::to_vec(&Wire {
        kind,
        seq: None,
        channel,
        sender: Some(sender),
        ts: crate::clock::now_ms(),
        content: &content,
    })
    .unwrap_or_default();
    Bytes::from(json)
}

/// What a subscriber receives.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum Delivered {
    Event(Arc<ChannelEvent>),
    /// A typing or presence signal of a channel: `d` of a chat event without `seq`.
    Ephemeral {
        channel: Arc<str>,
        json: Bytes,
    },
    /// Events of this channel were lost on the way (a full mailbox): the subscriber was
    /// dropped and must re-read the log after the last `seq` it received.
    Gap {
        channel: String,
    },
}

#[derive(Message)]
#[rtype(result = "()")]
struct Publish(Arc<ChannelEvent>);

/// Why a subscriber did not take an event.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its queue is full: it is dropped and must catch up from the log.
    Full,
    /// It is gone.
    Closed,
}

/// Where a Channel actor hands events: a socket's outbound queue, or an actor's mailbox.
/// Each call must return at once (a Channel actor never waits for a subscriber).
pub trait Subscriber: Send + Sync {
    fn event(&self, event: &Arc<ChannelEvent>) -> Result<(), Refused>;
    /// Best effort: a busy subscriber misses it.
    fn ephemeral(&self, channel: &Arc<str>, json: &Bytes) -> Result<(), Refused>;
    /// It was dropped from `channel` and missed events there.
    fn gap(&self, channel: &str);
}

fn refused<M>(error: SendError<M>) -> Refused {
    match error {
        SendError::Full(_) => Refused::Full,
        SendError::Closed(_) => Refused::Closed,
    }
}

/// Any actor taking [`Delivered`]: its mailbox is the bounded queue.
impl Subscriber for Recipient<Delivered> {
    fn event(&self, event: &Arc<ChannelEvent>) -> Result<(), Refused> {
        self.try_send(Delivered::Event(event.clone()))
            .map_err(refused)
    }

    fn ephemeral(&self, channel: &Arc<str>, json: &Bytes) -> Result<(), Refused> {
        self.try_send(Delivered::Ephemeral {
            channel: channel.clone(),
            json: json.clone(),
        })
        .map_err(refused)
    }

    fn gap(&self, channel: &str) {
        // One message past the bound, once: the subscriber learns it must catch up.
        self.do_send(Delivered::Gap {
            channel: channel.to_owned(),
        });
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub id: u64,
    pub subscriber: Arc<dyn Subscriber>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// A typing or presence signal from a member of the channel.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Signal {
    pub sender: String,
    pub kind: SignalKind,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SignalKind {
    TypingStart,
    TypingStop,
    Presence(serde_json::Value),
}

pub struct Channel {
    name: String,
    subscribers: HashMap<u64, Arc<dyn Subscriber>>,
    /// Who is typing, with the timer that ends it.
    typing: HashMap<String, SpawnHandle>,
    fanout_seconds: prometheus::Histogram,
    /// How long a `typing.start` lasts unless renewed (DESIGN §5: 10 s).
    typing_ttl: Duration,
}

impl Actor for Channel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CHANNEL_MAILBOX);
    }
}

impl Channel {
    fn send_all(&mut self, event: &Arc<ChannelEvent>, ctx: &mut Context<Self>) {
        let name = &self.name;
        self.subscribers
            .retain(|id, subscriber| match subscriber.event(event) {
                Ok(()) => true,
                Err(Refused::Full) => {
                    tracing::debug!(
                        subscriber = id,
                        "channel subscriber cannot keep up; dropped"
                    );
                    subscriber.gap(name);
                    false
                }
                Err(Refused::Closed) => false,
            });
        if self.subscribers.is_empty() {
            ctx.stop();
        }
    }

    fn signal(
        &mut self,
        kind: &str,
        sender: &str,
        content: serde_json::Value,
        ctx: &mut Context<Self>,
    ) {
        let json = ephemeral_json(kind, &self.name, sender, &content);
        let channel: Arc<str> = Arc::from(self.name.as_str());
        // Ephemeral: a full queue just misses it.
        self.subscribers
            .retain(|_, subscriber| subscriber.ephemeral(&channel, &json) != Err(Refused::Closed));
        if self.subscribers.is_empty() {
            ctx.stop();
        }
    }
}

impl Handler<Publish> for Channel {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        let started = std::time::Instant::now();
        self.send_all(&msg.0, ctx);
        self.fanout_seconds.observe(started.elapsed().as_secs_f64());
    }
}

impl Handler<Subscribe> for Channel {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.subscribers.insert(msg.id, msg.subscriber);
    }
}

impl Handler<Unsubscribe> for Channel {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, ctx: &mut Self::Context) {
        self.subscribers.remove(&msg.id);
        if self.subscribers.is_empty() {
            ctx.stop();
        }
    }
}

impl Handler<Signal> for Channel {
    type Result = ();

    fn handle(&mut self, msg: Signal, ctx: &mut Self::Context) {
        let empty = serde_json::json!({});
        match msg.kind {
            SignalKind::TypingStart => {
                if let Some(timer) = self.typing.remove(&msg.sender) {
                    ctx.cancel_future(timer);
                }
                let sender = msg.sender.clone();
                let timer = ctx.run_later(self.typing_ttl, move |actor, ctx| {
                    actor.typing.remove(&sender);
                    actor.signal("typing.stop", &sender, serde_json::json!({}), ctx);
                });
                self.typing.insert(msg.sender.clone(), timer);
                self.signal("typing.start", &msg.sender, empty, ctx);
            }
            SignalKind::TypingStop => {
                if let Some(timer) = self.typing.remove(&msg.sender) {
                    ctx.cancel_future(timer);
                    self.signal("typing.stop", &msg.sender, empty, ctx);
                }
            }
            SignalKind::Presence(content) => {
                self.signal("presence.update", &msg.sender, content, ctx)
            }
        }
    }
}

/// A live socket of a local user, as the router needs it.
#[derive(Clone)]
pub struct SessionLink {
    pub session_id: String,
    pub subscriber: Arc<dyn Subscriber>,
    pub close: Recipient<CloseSocket>,
}

/// Asks a socket to close (its session was ended).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct CloseSocket {
    pub code: u16,
    pub reason: &'static str,
}

/// The running Channel actors, the live sockets of local users, and the router that
/// publishes committed events to them.
pub struct Channels {
    running: Mutex<HashMap<String, Addr<Channel>>>,
    /// fid → socket id → link.
    sockets: Mutex<HashMap<String, HashMap<u64, SessionLink>>>,
    /// Where Channel actors run: fan-out work stays off the HTTP workers.
    arbiter: ArbiterHandle,
    fanout_seconds: prometheus::Histogram,
    typing_ttl: Duration,
    /// Set by [`Channels::close_all`] (the server is stopping): sockets that register later
    /// close themselves with 4000.
    stopping: std::sync::atomic::AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Channels {
    /// Starts the fan-out arbiter and the router on the log's committed batches.
    pub fn start(
        log: &EventLogHandle,
        fanout_seconds: prometheus::Histogram,
        typing_ttl: Duration,
    ) -> Arc<Channels> {
        let arbiter = Arbiter::new();
        let channels = Arc::new(Channels {
            running: Mutex::new(HashMap::new()),
            sockets: Mutex::new(HashMap::new()),
            arbiter: arbiter.handle(),
            fanout_seconds,
            typing_ttl,
            stopping: std::sync::atomic::AtomicBool::new(false),
        });
        // The arbiter thread lives as long as the process; dropping the handle keeps it.
        drop(arbiter);
        actix_web::rt::spawn(channels.clone().route(log.subscribe()));
        channels
    }

    /// The channel's actor, started if it is not running.
    fn actor(&self, channel: &str) -> Addr<Channel> {
        let mut running = lock(&self.running);
        let entry = running
            .entry(channel.to_owned())
            .or_insert_with(|| self.spawn(channel));
        if !entry.connected() {
            *entry = self.spawn(channel);
        }
        entry.clone()
    }

    fn spawn(&self, channel: &str) -> Addr<Channel> {
        let actor = Channel {
            name: channel.to_owned(),
            subscribers: HashMap::new(),
            typing: HashMap::new(),
            fanout_seconds: self.fanout_seconds.clone(),
            typing_ttl: self.typing_ttl,
        };
        Channel::start_in_arbiter(&self.arbiter, |_| actor)
    }

    /// Subscribes `subscriber` (under `id`) to `channel`'s events from now on.
    pub async fn subscribe(&self, channel: &str, id: u64, subscriber: Arc<dyn Subscriber>) {
        // An actor stopping (its last subscriber left) refuses the message: start another.
        for _ in 0..3 {
            let addr = self.actor(channel);
            let subscribe = Subscribe {
                id,
                subscriber: subscriber.clone(),
            };
            if addr.send(subscribe).await.is_ok() {
                return;
            }
            let mut running = lock(&self.running);
            if running.get(channel).is_some_and(|r| *r == addr) {
                running.remove(channel);
            }
        }
        tracing::error!(%channel, "cannot subscribe to the channel actor");
    }

    pub fn unsubscribe(&self, channel: &str, id: u64) {
        let running = lock(&self.running);
        if let Some(addr) = running.get(channel) {
            addr.do_send(Unsubscribe { id });
        }
    }

    /// Hands a typing or presence signal to the channel's actor (dropped when it is busy:
    /// ephemeral signals are best effort). Only channels with subscribers have an actor.
    pub fn signal(&self, channel: &str, signal: Signal) {
        let running = lock(&self.running);
        if let Some(addr) = running.get(channel) {
            let _ = addr.try_send(signal);
        }
    }

    /// Registers a live socket of `fid`, unless it already has `max` of them.
    pub fn register(&self, fid: &str, id: u64, link: SessionLink, max: usize) -> bool {
        let mut sockets = lock(&self.sockets);
        let links = sockets.entry(fid.to_owned()).or_default();
        if links.len() >= max {
            return false;
        }
        links.insert(id, link);
        true
    }

    pub fn unregister(&self, fid: &str, id: u64) {
        let mut sockets = lock(&self.sockets);
        if let Some(links) = sockets.get_mut(fid) {
            links.remove(&id);
            if links.is_empty() {
                sockets.remove(fid);
            }
        }
    }

    /// Closes every socket of `session_id` (its session was ended).
    pub fn close_session(&self, fid: &str, session_id: &str, close: CloseSocket) {
        let sockets = lock(&self.sockets);
        for link in sockets.get(fid).into_iter().flat_map(|l| l.values()) {
            if link.session_id == session_id {
                link.close.do_send(close.clone());
            }
        }
    }

    /// Closes every live socket (the server is stopping); answers how many were asked.
    pub fn close_all(&self, close: CloseSocket) -> usize {
        // Set before the sockets are read: a socket registering meanwhile either is in the
        // map read below or sees the flag after registering (see `stopping`).
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let sockets = lock(&self.sockets);
        let mut asked = 0;
        for link in sockets.values().flat_map(|l| l.values()) {
            link.close.do_send(close.clone());
            asked += 1;
        }
        asked
    }

    /// Whether the server is stopping; a socket checks it right after it registers.
    pub fn stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn sockets_of(&self, fid: &str) -> Vec<(u64, SessionLink)> {
        lock(&self.sockets)
            .get(fid)
            .map(|links| links.iter().map(|(id, l)| (*id, l.clone())).collect())
            .unwrap_or_default()
    }

    async fn route(
        self: Arc<Self>,
        mut committed: tokio::sync::broadcast::Receiver<Arc<CommittedBatch>>,
    ) {
        loop {
            let batch = match committed.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Lagged(missed)) => {
                    // Events were lost to every socket, membership changes among them: each
                    // socket resumes from the log, which has them all.
                    tracing::warn!(
                        missed,
                        "channel router lagged; closing every socket to resume"
                    );
                    let lagged = CloseSocket {
                        code: crate::gateway::frames::close::RESUME,
                        reason: "the server fell behind; resume from your last seq",
                    };
                    for link in lock(&self.sockets).values().flat_map(HashMap::values) {
                        link.close.do_send(lagged.clone());
                    }
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            lock(&self.running).retain(|_, addr| addr.connected());
            for entry in &batch.entries {
                if client_visible(&entry.event_type) {
                    self.route_entry(entry).await;
                }
            }
        }
    }

    async fn route_entry(&self, entry: &LogEntry) {
        let Some(event) = ChannelEvent::from_entry(entry).map(Arc::new) else {
            return;
        };
        let mover = event
            .membership
            .as_ref()
            .map(|(fid, state)| (self.sockets_of(fid), *state))
            .filter(|(sockets, _)| !sockets.is_empty());
        if let Some((sockets, Membership::Invited | Membership::Joined)) = &mover {
            for (id, link) in sockets {
                self.subscribe(&event.channel, *id, link.subscriber.clone())
                    .await;
            }
        }
        let target = lock(&self.running).get(&event.channel).cloned();
        if let Some(addr) = target {
            // Waiting for the hand-on keeps every session's events in seq order. An actor
            // that stopped meanwhile had no subscribers left.
            let _ = addr.send(Publish(event.clone())).await;
        }
        if let Some((sockets, Membership::Left)) = &mover {
            for (id, _) in sockets {
                self.unsubscribe(&event.channel, *id);
            }
        }
    }
}
