//! Forwarded appends (DESIGN §7): a follower sends its appends to the leader over
//! `POST /internal/v1/append` and answers its own caller after the leader's commit — and
//! after it has itself applied that commit, so the caller reads its own write on this node.
//!
//! Retrying is safe: appends are idempotent on `(origin, event_id)`, and every event id is
//! chosen before the first try. So while there is no leader (an election is under way) or
//! the one we knew is gone, the forwarder asks the database who leads and tries again, for up
//! to [`ELECTION_WAIT`]; only then is the caller answered 503 with `Retry-After`.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::node::Node;
use crate::core::event::{NewEvent, PreparedEvent};
use crate::store::{AppendError, AppendOutcome, Forwarder, StoreError};

/// How long an append waits for a leader before it is answered 503. Failover takes at most
/// about this long when a leader's process dies (DESIGN §7: 5 s).
const ELECTION_WAIT: Duration = Duration::from_secs(6);
/// Between two tries while no leader answers.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// One forwarded request's limit (a group commit under load takes milliseconds).
/// Well under [`ELECTION_WAIT`], so a request lost with its leader is retried in time.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a follower waits to have applied the commit it forwarded before answering.
const APPLY_WAIT: Duration = Duration::from_secs(2);

/// One event on the wire between nodes: a [`NewEvent`]; the leader prepares it again (the
/// same checks and canonical form as here).
#[derive(Serialize, Deserialize)]
pub struct WireEvent {
    pub event_id: String,
    pub origin: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub sender: Option<String>,
    pub channel: Option<String>,
    pub origin_ts: i64,
    pub content: serde_json::Value,
}

impl From<WireEvent> for NewEvent {
    fn from(w: WireEvent) -> NewEvent {
        NewEvent {
            event_id: w.event_id,
            origin: w.origin,
            event_type: w.event_type,
            sender: w.sender,
            channel: w.channel,
            origin_ts: w.origin_ts,
            content: w.content,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct AppendRequest {
    pub events: Vec<WireEvent>,
}

/// One event's outcome on the wire.
#[derive(Serialize, Deserialize)]
pub struct WireOutcome {
    pub seq: u64,
    pub duplicate: bool,
}

#[derive(Serialize, Deserialize)]
pub struct AppendAnswer {
    pub outcomes: Vec<WireOutcome>,
}

impl From<AppendOutcome> for WireOutcome {
    fn from(o: AppendOutcome) -> WireOutcome {
        WireOutcome {
            seq: o.seq(),
            duplicate: matches!(o, AppendOutcome::Duplicate { .. }),
        }
    }
}

/// The follower's side: serialise, send to the leader, wait to have applied the commit.
pub struct Forwarding {
    /// Weak: the node holds the log, which holds this.
    node: std::sync::Weak<Node>,
    token: String,
    /// The thread the HTTP client lives on (awc clients belong to one thread); stopped when
    /// the log that holds this forwarder goes.
    arbiter: actix::Arbiter,
}

impl Drop for Forwarding {
    fn drop(&mut self) {
        self.arbiter.stop();
    }
}

thread_local! {
    static CLIENT: RefCell<Option<awc::Client>> = const { RefCell::new(None) };
}

/// What the leader answered, as far as the forwarder cares.
enum Answer {
    Committed(Vec<WireOutcome>),
    /// Try again, perhaps elsewhere: no leader there, or nobody answered. `maybe_written`:
    /// the request may have reached a leader that committed it (the answer was lost).
    Retry {
        problem: String,
        maybe_written: bool,
    },
    /// The leader refused the request itself (a bad token, events it would not take).
    Refused(String),
}

impl Forwarding {
    pub(super) fn start(node: std::sync::Weak<Node>) -> Forwarding {
        let token = node
            .upgrade()
            .map(|n| n.internal_token.clone())
            .unwrap_or_default();
        Forwarding {
            token,
            node,
            arbiter: actix::Arbiter::new(),
        }
    }

    async fn send(&self, url: String, body: actix_web::web::Bytes) -> Answer {
        let token = self.token.clone();
        let (reply, answer) = tokio::sync::oneshot::channel();
        // awc's futures are not Send: the closure crosses to the thread, the future stays there.
        let sent = self.arbiter.spawn_fn(move || {
            actix_rt::spawn(async move {
                let client = CLIENT.with(|c| {
                    c.borrow_mut()
                        .get_or_insert_with(|| {
                            awc::Client::builder()
                                .timeout(REQUEST_TIMEOUT)
                                .connector(awc::Connector::new().limit(1024))
                                .finish()
                        })
                        .clone()
                });
                let result = client
                    .post(format!("{url}/internal/v1/append"))
                    .insert_header(("Authorization", format!("Bearer {token}")))
                    .content_type("application/json")
                    .send_body(body)
                    .await;
                let answer = match result {
                    Err(error) => Answer::Retry {
                        problem: format!("the leader at {url} did not answer: {error}"),
                        // Nothing was sent if no connection was made.
                        maybe_written: !matches!(error, awc::error::SendRequestError::Connect(_)),
                    },
                    Ok(mut response) => {
                        let status = response.status();
                        let body = response.body().limit(16 << 20).await;
                        match (status.as_u16(), body) {
                            (200, Ok(body)) => {
                                match serde_json::from_slice::<AppendAnswer>(&body) {
                                    Ok(answer) => Answer::Committed(answer.outcomes),
                                    Err(error) => Answer::Refused(format!(
                                        "the leader's answer is unreadable: {error}"
                                    )),
                                }
                            }
                            (503, body) | (502, body) | (504, body) => Answer::Retry {
                                problem: format!("the node at {url} answered {status}"),
                                // A node that does not lead wrote nothing; a leader's 503 may
                                // follow a COMMIT whose outcome it could not know.
                                maybe_written: !body.as_deref().is_ok_and(|b| {
                                    String::from_utf8_lossy(b).contains("SY_NOT_LEADER")
                                }),
                            },
                            (_, body) => Answer::Refused(format!(
                                "the leader at {url} refused the append ({status}): {}",
                                body.map(|b| String::from_utf8_lossy(&b).into_owned())
                                    .unwrap_or_default()
                            )),
                        }
                    }
                };
                let _ = reply.send(answer);
            });
        });
        if !sent {
            return Answer::Refused("the forwarding thread has stopped".into());
        }
        answer
            .await
            .unwrap_or_else(|_| Answer::Refused("the forwarding thread has stopped".into()))
    }

    async fn forward_events(
        &self,
        events: Vec<PreparedEvent>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        let Some(node) = self.node.upgrade() else {
            return Err(AppendError::Stopped);
        };
        self.forward_through(&node, events).await
    }

    async fn forward_through(
        &self,
        node: &Node,
        events: Vec<PreparedEvent>,
    ) -> Result<Vec<AppendOutcome>, AppendError> {
        let started = Instant::now();
        let request = AppendRequest {
            events: events
                .iter()
                .map(|e| WireEvent {
                    event_id: e.event_id.clone(),
                    origin: e.origin.clone(),
                    event_type: e.event_type.as_str().to_owned(),
                    sender: e.sender.clone(),
                    channel: e.channel.clone(),
                    origin_ts: e.origin_ts,
                    content: e.content.clone(),
                })
                .collect(),
        };
        let body = actix_web::web::Bytes::from(serde_json::to_vec(&request).map_err(|e| {
            AppendError::Storage(Arc::new(StoreError::NoLeader(format!(
                "cannot encode the append: {e}"
            ))))
        })?);
        let mut leader = node.leader().await;
        let mut last_problem = String::from("no node leads");
        // Whether an earlier try may have been committed with its answer lost.
        let mut maybe_written = false;
        let mut bonus_used = false;
        loop {
            if node.role().writes() {
                // This node won an election meanwhile.
                if !maybe_written {
                    return node.log().append_here(events).await;
                }
                let mut outcomes = node.log().append_here(events.clone()).await?;
                own_earlier_try(node, &events, &mut outcomes).await;
                return Ok(outcomes);
            }
            let answer = match &leader {
                Some(seen) if seen.node_id != node.identity.node_id => {
                    self.send(seen.advertise_url.clone(), body.clone()).await
                }
                _ => Answer::Retry {
                    problem: last_problem.clone(),
                    maybe_written: false,
                },
            };
            match answer {
                Answer::Committed(outcomes) => {
                    let metrics = &node.metrics;
                    metrics.forwarded.with_label_values(&["ok"]).inc();
                    metrics
                        .forward_seconds
                        .observe(started.elapsed().as_secs_f64());
                    let mut outcomes: Vec<AppendOutcome> = outcomes
                        .into_iter()
                        .map(|o| match o.duplicate {
                            true => AppendOutcome::Duplicate { seq: o.seq },
                            false => AppendOutcome::Appended { seq: o.seq },
                        })
                        .collect();
                    if maybe_written {
                        own_earlier_try(node, &events, &mut outcomes).await;
                    }
                    if let Some(last) = outcomes.iter().map(|o| o.seq()).max() {
                        if !node.applied(last, APPLY_WAIT).await {
                            tracing::debug!(
                                seq = last,
                                "answering a forwarded append before applying it here"
                            );
                        }
                    }
                    return Ok(outcomes);
                }
                Answer::Refused(problem) => {
                    node.metrics.forwarded.with_label_values(&["refused"]).inc();
                    tracing::error!(%problem, "the leader refused a forwarded append");
                    return Err(AppendError::Storage(Arc::new(StoreError::NoLeader(
                        problem,
                    ))));
                }
                Answer::Retry {
                    problem,
                    maybe_written: this_may_have,
                } => {
                    // A try whose request may have been committed is tried once more even
                    // past the election's wait: the retry finds it, and the caller learns it
                    // committed instead of being told it did not.
                    maybe_written |= this_may_have;
                    let past = started.elapsed() >= ELECTION_WAIT;
                    let bonus = past && this_may_have && !bonus_used;
                    bonus_used |= bonus;
                    if past && !bonus {
                        node.metrics
                            .forwarded
                            .with_label_values(&["unavailable"])
                            .inc();
                        return Err(AppendError::Storage(Arc::new(StoreError::NoLeader(
                            problem,
                        ))));
                    }
                    last_problem = problem;
                    tokio::time::sleep(RETRY_PAUSE).await;
                    leader = node.refresh_leader().await;
                }
            }
        }
    }
}

/// After a try whose answer was lost, the retry finds the events already in the log and the
/// leader answers them as duplicates: the earlier try committed them. An event stored exactly
/// as this append has it (type, sender, channel, time, canonical content) is reported as
/// appended, so a caller is not told "already taken" about its own write (a registration, a
/// certificate serial). Anything else stays a duplicate.
async fn own_earlier_try(node: &Node, events: &[PreparedEvent], outcomes: &mut [AppendOutcome]) {
    for (event, outcome) in events.iter().zip(outcomes.iter_mut()) {
        let AppendOutcome::Duplicate { seq } = *outcome else {
            continue;
        };
        let stored = match node.store().read_after(seq - 1, 1).await {
            Ok(entries) => entries.into_iter().next(),
            Err(error) => {
                tracing::warn!(%error, seq, "cannot compare a duplicate with the retried event");
                None
            }
        };
        if stored.is_some_and(|entry| {
            entry.seq == seq
                && entry.event_id == event.event_id
                && entry.event_type == event.event_type.as_str()
                && entry.sender == event.sender
                && entry.channel == event.channel
                && entry.origin_ts == event.origin_ts
                && entry.content.get() == event.canonical_content.get()
        }) {
            *outcome = AppendOutcome::Appended { seq };
        }
    }
}

impl Forwarder for Forwarding {
    fn forward(
        &self,
        events: Vec<PreparedEvent>,
    ) -> BoxFuture<'_, Result<Vec<AppendOutcome>, AppendError>> {
        Box::pin(self.forward_events(events))
    }
}
