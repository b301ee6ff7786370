//! `Channel` actors: the local fan-out point of each channel's committed events.
//!
//! ```text
//!  EventLog ── committed batch ──▶ router task (one per instance)
//!                                   for each entry of a client-visible type with a channel
//!                                   whose Channel actor is running (someone subscribed):
//!                                   serialise the event ONCE: {type, seq, channel, sender,
//!                                   ts, content} (DESIGN §5), try_send Publish
//!                                         │
//!  Channel actor (one per channel) ◀──────┘
//!    subscribers: id → Recipient<Delivered>  (sessions, from the gateway)
//!    Publish → Delivered::Event(shared bytes) to each subscriber, try_send:
//!      a subscriber whose mailbox is full is dropped with Delivered::Gap when possible,
//!      and catches up from the log by seq (never buffered without bound)
//!    no subscribers → stops; the router then skips its channel
//! ```
//! Whatever appended the event (the inbox, a local client, the home server's relay), its
//! publication is the same: the log's committed batches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use actix_web::web::Bytes;
use serde_json::value::RawValue;
use tokio::sync::broadcast::error::RecvError;

use crate::core::event::LogEntry;
use crate::store::{CommittedBatch, EventLogHandle};

/// Publications a Channel actor's mailbox holds before the router reports a gap instead.
const CHANNEL_MAILBOX: usize = 1024;

/// The types clients see in a channel (DESIGN §5), as logged.
pub fn client_visible(event_type: &str) -> bool {
    matches!(
        event_type,
        "message.new"
            | "message.edit"
            | "message.delete"
            | "channel.new"
            | "channel.invite"
            | "channel.join"
            | "channel.leave"
    )
}

/// One committed event of a channel, serialised once for every subscriber.
#[derive(Debug)]
pub struct ChannelEvent {
    pub seq: u64,
    pub channel: String,
    /// `{"type", "seq", "channel", "sender", "ts", "content"}`.
    pub json: Bytes,
}

impl ChannelEvent {
    pub fn from_entry(entry: &LogEntry) -> Option<ChannelEvent> {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            seq: u64,
            channel: &'a str,
            sender: Option<&'a str>,
            ts: i64,
            content: &'a RawValue,
        }
        let channel = entry.channel.as_deref()?;
        let json = serde_json::to_vec(&Wire {
            kind: &entry.event_type,
            seq: entry.seq,
            channel,
            sender: entry.sender.as_deref(),
            ts: entry.origin_ts,
            content: &entry.content,
        })
        .ok()?;
        Some(ChannelEvent {
            seq: entry.seq,
            channel: channel.to_owned(),
            json: Bytes::from(json),
        })
    }
}

/// What a subscriber receives.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum Delivered {
    Event(Arc<ChannelEvent>),
    /// Events of this channel were lost on the way (a full mailbox): re-read the log after
    /// the last `seq` received.
    Gap {
        channel: String,
    },
}

#[derive(Message)]
#[rtype(result = "()")]
struct Publish(Arc<ChannelEvent>);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub id: u64,
    pub recipient: Recipient<Delivered>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

pub struct Channel {
    name: String,
    subscribers: HashMap<u64, Recipient<Delivered>>,
    /// Set by the router when a publication could not be queued.
    lagged: Arc<AtomicBool>,
}

impl Actor for Channel {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(CHANNEL_MAILBOX);
        // A gap on a channel that then goes quiet is reported without waiting for its next
        // event.
        ctx.run_interval(std::time::Duration::from_millis(500), |actor, ctx| {
            if actor.lagged.swap(false, Ordering::AcqRel) {
                let gap = Delivered::Gap {
                    channel: actor.name.clone(),
                };
                actor.send_all(&gap, ctx);
            }
        });
    }
}

impl Channel {
    fn send_all(&mut self, message: &Delivered, ctx: &mut Context<Self>) {
        let name = &self.name;
        self.subscribers
            .retain(|id, recipient| match recipient.try_send(message.clone()) {
                Ok(()) => true,
                Err(_) => {
                    tracing::debug!(
                        subscriber = id,
                        "channel subscriber cannot keep up; dropped"
                    );
                    // It learns of the gap if it can take one more message; either way it must
                    // catch up from the log.
                    let _ = recipient.try_send(Delivered::Gap {
                        channel: name.clone(),
                    });
                    false
                }
            });
        if self.subscribers.is_empty() {
            ctx.stop();
        }
    }
}

impl Handler<Publish> for Channel {
    type Result = ();

    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        if self.lagged.swap(false, Ordering::AcqRel) {
            let gap = Delivered::Gap {
                channel: self.name.clone(),
            };
            self.send_all(&gap, ctx);
        }
        self.send_all(&Delivered::Event(msg.0), ctx);
    }
}

impl Handler<Subscribe> for Channel {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.subscribers.insert(msg.id, msg.recipient);
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

struct Running {
    addr: Addr<Channel>,
    lagged: Arc<AtomicBool>,
}

/// The running Channel actors, and the router that publishes committed events to them.
pub struct Channels {
    running: Mutex<HashMap<String, Running>>,
}

impl Channels {
    /// Starts the router on the log's committed batches.
    pub fn start(log: &EventLogHandle) -> Arc<Channels> {
        let channels = Arc::new(Channels {
            running: Mutex::new(HashMap::new()),
        });
        actix_web::rt::spawn(channels.clone().route(log.subscribe()));
        channels
    }

    /// Subscribes `recipient` (under `id`) to `channel`'s events from now on.
    pub async fn subscribe(&self, channel: &str, id: u64, recipient: Recipient<Delivered>) {
        // An actor stopping (its last subscriber left) refuses the message: start another.
        for _ in 0..3 {
            let addr = {
                let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                let entry = running
                    .entry(channel.to_owned())
                    .or_insert_with(|| start(channel));
                if !entry.addr.connected() {
                    *entry = start(channel);
                }
                entry.addr.clone()
            };
            let subscribe = Subscribe {
                id,
                recipient: recipient.clone(),
            };
            if addr.send(subscribe).await.is_ok() {
                return;
            }
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.get(channel).is_some_and(|r| r.addr == addr) {
                running.remove(channel);
            }
        }
        tracing::error!(%channel, "cannot subscribe to the channel actor");
    }

    pub fn unsubscribe(&self, channel: &str, id: u64) {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = running.get(channel) {
            r.addr.do_send(Unsubscribe { id });
        }
    }

    async fn route(
        self: Arc<Self>,
        mut committed: tokio::sync::broadcast::Receiver<Arc<CommittedBatch>>,
    ) {
        loop {
            let batch = match committed.recv().await {
                Ok(batch) => batch,
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "channel router lagged; every channel reports a gap");
                    let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
                    for r in running.values() {
                        r.lagged.store(true, Ordering::Release);
                    }
                    continue;
                }
                Err(RecvError::Closed) => break,
            };
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            running.retain(|_, r| r.addr.connected());
            if running.is_empty() {
                continue;
            }
            for entry in &batch.entries {
                if !client_visible(&entry.event_type) {
                    continue;
                }
                let Some(r) = entry.channel.as_deref().and_then(|c| running.get(c)) else {
                    continue;
                };
                let Some(event) = ChannelEvent::from_entry(entry) else {
                    continue;
                };
                if r.addr.try_send(Publish(Arc::new(event))).is_err() {
                    r.lagged.store(true, Ordering::Release);
                }
            }
        }
    }
}

fn start(channel: &str) -> Running {
    let lagged = Arc::new(AtomicBool::new(false));
    let addr = Channel {
        name: channel.to_owned(),
        subscribers: HashMap::new(),
        lagged: lagged.clone(),
    }
    .start();
    Running { addr, lagged }
}
