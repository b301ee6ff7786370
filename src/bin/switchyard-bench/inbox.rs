//! `inbox`: a load generator for `POST /federation/inbox` (DESIGN §3.2), all in one process.
//!
//! ```text
//!  key server (actix, port 0)          receiver bench.test (Application, port 0, SQLite in --dir)
//!   GET  /<origin>/_matrix/key/v2/server ◀── key fetch (federation.resolve = key server/<origin>)
//!   POST /<origin>/federation/inbox       ◀── outbound delivery, if any (a sink: all "accepted")
//!                                                      ▲
//!  client threads (own actix System + awc client each) │ signed POST /federation/inbox
//!   origins o1.bench … oN.bench, one ed25519 key each ─┘ (pre-signed before the clock starts)
//! ```
//! Every origin's user `u@<origin>` is invited (appended to the receiver's log directly) and
//! joins through the inbox, so the measured `message.relay` events pass channel authorisation
//! and are accepted; any other per-event result counts as an error. Each origin has a channel
//! of its own homed at the receiver (`bench-<i>@bench.test`) so that outbound delivery has no
//! other member server to relay to: the runs measure the inbox, not fan-out
//! (`--shared-channel` puts everyone in `bench@bench.test` instead).
//!
//! Runs: the ceilings (ed25519 verification on one thread, single and batched; the raw sqlx
//! insert rate and the event log's append rate on the same disk), closed-loop throughput points
//! (`--events-per-request`), and the flood comparison: normal origins at a fixed open-loop rate
//! within their quota, without and with one origin sending at `--flood-factor` times its quota.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::ServerHandle;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};
use serde_json::{json, Value};

use switchyard::app::{Application, StartError};
use switchyard::clock::now_ms;
use switchyard::config::{Config, Durability};
use switchyard::core::event::NewEvent;
use switchyard::federation::signing::{RequestSignature, ServerKey};
use switchyard::store::{EventLogHandle, Store};

use crate::{fresh_db, open_log, percentile, raw_insert_rate, remove_db, run_appenders};

/// The receiver's server name.
const RECEIVER: &str = "bench.test";
const INBOX_PATH: &str = "/federation/inbox";
/// The text of every relayed message: with the ids, a log leaf of about 300 bytes.
const MESSAGE_BODY: &str =
    "inbox load generator message body, eighty characters long, nothing else in it...";

const H_ORIGIN: HeaderName = HeaderName::from_static("x-switchyard-origin");
const H_TIMESTAMP: HeaderName = HeaderName::from_static("x-switchyard-timestamp");
const H_KEY: HeaderName = HeaderName::from_static("x-switchyard-key");
const H_SIGNATURE: HeaderName = HeaderName::from_static("x-switchyard-signature");

#[derive(clap::Args)]
pub struct InboxArgs {
    /// Directory for the receiver's database (the disk being measured).
    #[arg(long, default_value = "target/bench-data")]
    dir: PathBuf,
    /// Measured seconds of each run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before each measured window.
    #[arg(long, default_value_t = 1)]
    warmup: u64,
    /// Sending origins in the throughput runs (o1.bench … oN.bench).
    #[arg(long, default_value_t = 10)]
    origins: usize,
    /// Events per request of each throughput point (1..100).
    #[arg(long, value_delimiter = ',', default_value = "100,1")]
    events_per_request: Vec<usize>,
    /// Requests in flight in total, spread over the origins [default: 32 at 100
    /// events/request, 64 at fewer].
    #[arg(long)]
    concurrency: Option<usize>,
    /// Load generator threads, each with its own actix System and awc client.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// HTTP workers of the receiver.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Signature verifier threads of the receiver (0 = one per CPU).
    #[arg(long, default_value_t = 0)]
    verify_threads: usize,
    /// Requests pre-signed per second of run, per throughput point [default: 15000 at 1
    /// event/request, else 80000 events/s divided by the events per request]; beyond them
    /// requests are signed while the clock runs (counted as "live").
    #[arg(long)]
    presign_rate: Option<usize>,
    /// Only the flood comparison.
    #[arg(long, conflicts_with_all = ["no_flood", "no_throughput"])]
    flood: bool,
    /// Skip the flood comparison.
    #[arg(long)]
    no_flood: bool,
    /// Skip the throughput points.
    #[arg(long)]
    no_throughput: bool,
    /// Skip the ceilings.
    #[arg(long)]
    no_ceilings: bool,
    /// Flood: normal origins.
    #[arg(long, default_value_t = 10)]
    flood_origins: usize,
    /// Flood: requests per second of each normal origin (1 event each, open loop).
    #[arg(long, default_value_t = 20)]
    normal_rate: u32,
    /// Flood: every origin's quota, events per minute (and the burst).
    #[arg(long, default_value_t = 6000)]
    quota: u32,
    /// Flood: the flooder sends this many times its quota (1-event requests, open loop).
    #[arg(long, default_value_t = 100)]
    flood_factor: u32,
    /// Flood: most flooder requests in flight (more are counted as not sent).
    #[arg(long, default_value_t = 1024)]
    flood_inflight: usize,
    /// Throughput runs: the pre-verify bucket per (origin, address), requests/s, burst twice
    /// that (raised out of the way; the server's default is 200/s, burst 400).
    #[arg(long, default_value_t = 1_000_000)]
    preverify_rate: u32,
    /// Flood: one run with the flooder per pre-verify rate (requests/s per origin and
    /// address, burst twice that): the server's default 200 (cheap 429s before the signature
    /// check), and raised so that only the per-origin quota stands in the flooder's way.
    #[arg(long, value_delimiter = ',', default_value = "200,1000000")]
    flood_preverify: Vec<u32>,
    /// Every origin in one channel, bench@bench.test: each accepted event is then relayed by
    /// outbound delivery to every other origin (the key server is their sink).
    #[arg(long)]
    shared_channel: bool,
    /// Random event ids (16 hex digits) instead of each origin's counter: inserts into the
    /// log's (origin, event_id) index then land all over it.
    #[arg(long)]
    random_ids: bool,
}

/// One sending server: its name, its user, its channel at the receiver, its key.
struct Peer {
    name: String,
    user: String,
    channel: String,
    key: ServerKey,
    key_id: String,
    origin_header: HeaderValue,
    key_header: HeaderValue,
}

impl Peer {
    fn new(name: String, channel: String) -> anyhow::Result<Peer> {
        let key = ServerKey::generate();
        let key_id = key.key_id();
        Ok(Peer {
            user: format!("u@{name}"),
            channel,
            origin_header: HeaderValue::try_from(name.as_str())?,
            key_header: HeaderValue::try_from(key_id.as_str())?,
            name,
            key,
            key_id,
        })
    }

    /// The Matrix key server response of this origin, self-signed.
    fn key_response(&self) -> anyhow::Result<Bytes> {
        let mut response = json!({
            "server_name": self.name,
            "verify_keys": {self.key_id.as_str(): {"key": self.key.public_b64()}},
            "old_verify_keys": {},
            "valid_until_ts": now_ms() + 86_400_000,
        });
        self.key.sign_json(&self.name, &mut response)?;
        Ok(Bytes::from(serde_json::to_vec(&response)?))
    }

    /// `{"events": [...]}` of `message.relay` "new" events with these ids.
    fn relay_body(&self, ids: impl Iterator<Item = String>) -> (Vec<u8>, usize) {
        let ts = now_ms();
        let mut body = Vec::with_capacity(512);
        body.extend_from_slice(b"{\"events\":[");
        let mut count = 0;
        for id in ids {
            if count > 0 {
                body.push(b',');
            }
            count += 1;
            // Ids, names and the body are plain [A-Za-z0-9.:@ ,-]: nothing to escape.
            let _ = write!(
                body,
                r#"{{"event_id":"{id}","type":"message.relay","sender":"{}","channel":"{}","ts":{ts},"content":{{"action":"new","message_id":"{}:{id}","body":"{MESSAGE_BODY}"}}}}"#,
                self.user, self.channel, self.name
            );
        }
        body.extend_from_slice(b"]}");
        (body, count)
    }

    fn join_body(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({"events": [{
            "event_id": "join", "type": "channel.join", "sender": self.user,
            "channel": self.channel, "ts": now_ms(), "content": {},
        }]}))
        .unwrap_or_default()
    }

    /// A signed request carrying `body`.
    fn sign(&self, (body, events): (Vec<u8>, usize)) -> Signed {
        let timestamp = (now_ms() / 1000).to_string();
        let signature = self.key.sign_request(&RequestSignature {
            method: "POST",
            path: INBOX_PATH,
            origin: &self.name,
            destination: RECEIVER,
            timestamp: &timestamp,
            key_id: &self.key_id,
            body: &body,
        });
        Signed {
            origin: self.origin_header.clone(),
            key: self.key_header.clone(),
            // Digits and base64: always valid header values.
            timestamp: HeaderValue::try_from(timestamp).unwrap_or(HeaderValue::from_static("0")),
            signature: HeaderValue::try_from(signature).unwrap_or(HeaderValue::from_static("-")),
            body: Bytes::from(body),
            events,
        }
    }
}

/// A request ready to send.
struct Signed {
    origin: HeaderValue,
    timestamp: HeaderValue,
    key: HeaderValue,
    signature: HeaderValue,
    body: Bytes,
    events: usize,
}

/// What came back for one request.
enum Reply {
    Answered {
        status: u16,
        retry_after: bool,
        body: Bytes,
    },
    Failed(String),
}

fn http_client(connections: usize) -> awc::Client {
    awc::Client::builder()
        .connector(
            awc::Connector::new()
                .limit(connections)
                .conn_lifetime(Duration::from_secs(3600)),
        )
        .timeout(Duration::from_secs(30))
        .disable_redirects()
        .finish()
}

async fn post(client: &awc::Client, url: &str, request: &Signed) -> Reply {
    let sent = client
        .post(url)
        .insert_header(("content-type", "application/json"))
        .insert_header((H_ORIGIN, request.origin.clone()))
        .insert_header((H_TIMESTAMP, request.timestamp.clone()))
        .insert_header((H_KEY, request.key.clone()))
        .insert_header((H_SIGNATURE, request.signature.clone()))
        .send_body(request.body.clone())
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => return Reply::Failed(error.to_string()),
    };
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    match response.body().limit(4 << 20).await {
        Ok(body) => Reply::Answered {
            status,
            retry_after,
            body,
        },
        Err(error) => Reply::Failed(format!("{status}, body unreadable: {error}")),
    }
}

/// The events of a 200 answer whose result is "accepted", and what the first other result
/// was; an error when the answer cannot be read.
fn accepted_in(body: &[u8]) -> Result<(usize, Option<String>), String> {
    #[derive(serde::Deserialize)]
    struct Answer<'a> {
        #[serde(borrow)]
        results: HashMap<&'a str, Outcome<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Outcome<'a> {
        status: &'a str,
    }
    let answer: Answer<'_> = serde_json::from_slice(body).map_err(|e| {
        format!(
            "unreadable answer ({e}): {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })?;
    let accepted = answer
        .results
        .values()
        .filter(|o| o.status == "accepted")
        .count();
    let other = (accepted < answer.results.len()).then(|| {
        format!(
            "{accepted} of {} events accepted: {}",
            answer.results.len(),
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    });
    Ok((accepted, other))
}

/// What a set of requests got, merged over tasks and threads.
#[derive(Default)]
struct Tally {
    /// Latencies of the requests answered inside the measured window.
    latencies: Vec<Duration>,
    /// 200s answered inside the window, and their accepted events.
    requests: u64,
    events: u64,
    /// For the whole run (warm-up and drain too).
    sent: u64,
    accepted_total: u64,
    /// Events answered with another result than "accepted", or in a 200 we could not read.
    bad_events: u64,
    /// Answers other than 200, by status.
    statuses: BTreeMap<u16, u64>,
    retry_after: u64,
    /// 429s by the limiter that answered (from the error sentence).
    limited_by: BTreeMap<&'static str, u64>,
    /// Requests that got no answer.
    failed: u64,
    /// Requests signed while the clock ran (the pre-signed ones ran out).
    signed_live: u64,
    /// Open loop: requests not sent because the in-flight cap was reached.
    not_sent: u64,
    sample: Option<String>,
}

impl Tally {
    fn record(&mut self, reply: Reply, events: usize, in_window: bool, latency: Duration) {
        self.sent += 1;
        if let Reply::Answered { .. } = reply {
            if in_window {
                self.latencies.push(latency);
            }
        }
        match reply {
            Reply::Answered {
                status: 200, body, ..
            } => match accepted_in(&body) {
                Ok((accepted, other)) => {
                    if let Some(other) = other {
                        self.sample.get_or_insert(other);
                    }
                    self.accepted_total += accepted as u64;
                    self.bad_events += events.saturating_sub(accepted) as u64;
                    if in_window {
                        self.requests += 1;
                        self.events += accepted as u64;
                    }
                }
                Err(problem) => {
                    self.bad_events += events as u64;
                    self.sample.get_or_insert(problem);
                }
            },
            Reply::Answered {
                status,
                retry_after,
                body,
            } => {
                *self.statuses.entry(status).or_default() += 1;
                let text = String::from_utf8_lossy(&body);
                if status == 429 {
                    self.retry_after += u64::from(retry_after);
                    let by = if text.contains("from this origin and address") {
                        "pre-verify bucket"
                    } else if text.contains("quota") || text.contains("at most") {
                        "origin quota"
                    } else {
                        "other"
                    };
                    *self.limited_by.entry(by).or_default() += 1;
                } else {
                    self.sample.get_or_insert_with(|| {
                        format!("{status}: {}", text.chars().take(300).collect::<String>())
                    });
                }
            }
            Reply::Failed(error) => {
                self.failed += 1;
                self.sample.get_or_insert(error);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.latencies.extend(other.latencies);
        self.requests += other.requests;
        self.events += other.events;
        self.sent += other.sent;
        self.accepted_total += other.accepted_total;
        self.bad_events += other.bad_events;
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        self.retry_after += other.retry_after;
        for (by, n) in other.limited_by {
            *self.limited_by.entry(by).or_default() += n;
        }
        self.failed += other.failed;
        self.signed_live += other.signed_live;
        self.not_sent += other.not_sent;
        if self.sample.is_none() {
            self.sample = other.sample;
        }
    }

    fn non_200(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Requests or events that should have been accepted and were not.
    fn errors(&self) -> u64 {
        self.bad_events + self.non_200() + self.failed
    }

    /// p50, p99, max of the window's latencies.
    fn percentiles(&mut self) -> (Duration, Duration, Duration) {
        self.latencies.sort_unstable();
        (
            percentile(&self.latencies, 0.50),
            percentile(&self.latencies, 0.99),
            self.latencies.last().copied().unwrap_or_default(),
        )
    }

    fn statuses_text(&self) -> String {
        if self.statuses.is_empty() {
            return "none".into();
        }
        self.statuses
            .iter()
            .map(|(status, n)| format!("{n}×{status}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// When a run sends and when it measures.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    measure_from: Instant,
    end: Instant,
}

impl Window {
    fn new(warmup: Duration, seconds: Duration) -> Window {
        // A little slack for the client threads to start.
        let start = Instant::now() + Duration::from_millis(100);
        Window {
            start,
            measure_from: start + warmup,
            end: start + warmup + seconds,
        }
    }

    fn contains(&self, at: Instant) -> bool {
        at >= self.measure_from && at <= self.end
    }

    fn seconds(&self) -> f64 {
        (self.end - self.measure_from).as_secs_f64()
    }
}

async fn sleep_until(at: Instant) {
    actix_web::rt::time::sleep_until(actix_web::rt::time::Instant::from_std(at)).await;
}

/// A load generator thread: its own actix System and awc client, running `work`; the tally
/// comes back on a channel so that the receiver's own thread never blocks on a join.
fn client_thread<F, Fut>(n: usize, work: F) -> anyhow::Result<tokio::sync::oneshot::Receiver<Tally>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Tally> + 'static,
{
    let (done, tally) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(format!("bench-client-{n}"))
        .spawn(move || {
            let tally = actix_web::rt::System::new().block_on(work());
            let _ = done.send(tally);
        })?;
    Ok(tally)
}

// ---------------------------------------------------------------------------------------
// The key server (and delivery sink) of every origin.

struct KeyServer {
    base_url: String,
    handle: ServerHandle,
    delivered: Arc<AtomicU64>,
    /// Its worker threads (for the CPU breakdown).
    threads: std::collections::HashSet<u64>,
}

struct KeyServerState {
    responses: HashMap<String, Bytes>,
    delivered: Arc<AtomicU64>,
}

async fn key_response(origin: web::Path<String>, state: web::Data<KeyServerState>) -> HttpResponse {
    match state.responses.get(origin.as_str()) {
        Some(body) => HttpResponse::Ok()
            .content_type("application/json")
            .body(body.clone()),
        None => HttpResponse::NotFound().finish(),
    }
}

/// Outbound delivery from the receiver lands here: every event is answered "accepted".
async fn delivery_sink(body: Bytes, state: web::Data<KeyServerState>) -> HttpResponse {
    let events: Vec<Value> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("events").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    state
        .delivered
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    let results: serde_json::Map<String, Value> = events
        .iter()
        .filter_map(|e| e.get("event_id").and_then(Value::as_str))
        .map(|id| (id.to_owned(), json!({"status": "accepted", "seq": 0})))
        .collect();
    HttpResponse::Ok().json(json!({ "results": results }))
}

async fn start_key_server(peers: &[Arc<Peer>]) -> anyhow::Result<KeyServer> {
    let mut responses = HashMap::new();
    for peer in peers {
        responses.insert(peer.name.clone(), peer.key_response()?);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let state = web::Data::new(KeyServerState {
        responses,
        delivered: delivered.clone(),
    });
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let before = thread_cpu();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(web::PayloadConfig::new(8 << 20))
            .route(
                "/{origin}/_matrix/key/v2/server",
                web::get().to(key_response),
            )
            .route("/{origin}/federation/inbox", web::post().to(delivery_sink))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    let base_url = format!("http://127.0.0.1:{port}");
    // One answer: the worker thread runs from here on.
    if let Some(peer) = peers.first() {
        let url = format!("{base_url}/{}/_matrix/key/v2/server", peer.name);
        let status = http_client(1).get(url).send().await.map(|r| r.status());
        anyhow::ensure!(
            status.as_ref().is_ok_and(|s| s.is_success()),
            "the key server does not answer: {status:?}"
        );
    }
    Ok(KeyServer {
        base_url,
        handle,
        delivered,
        threads: ThreadRoles::new_arbiters(&before, &thread_cpu()),
    })
}

// ---------------------------------------------------------------------------------------
// The receiver.

struct Receiver {
    url: String,
    base: String,
    log: EventLogHandle,
    store: Store,
    handle: ServerHandle,
    running: actix_web::rt::task::JoinHandle<Result<(), StartError>>,
    dir: PathBuf,
    roles: ThreadRoles,
}

struct ReceiverSetup<'a> {
    peers: &'a [Arc<Peer>],
    key_server: &'a KeyServer,
    /// Events per minute and burst of every origin.
    quota: u32,
    preverify: u32,
}

impl Receiver {
    async fn start(args: &InboxArgs, setup: ReceiverSetup<'_>) -> anyhow::Result<Receiver> {
        let dir = args.dir.join("inbox-receiver");
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let mut config = Config::default();
        config.server.name = RECEIVER.into();
        config.server.bind = "127.0.0.1:0".into();
        config.server.workers = args.workers;
        config.server.shutdown_timeout = Duration::from_secs(1);
        config.database.url = format!("sqlite://{}?mode=rwc", dir.join("receiver.db").display());
        config.keys.path = dir.join("signing.key");
        let federation = &mut config.federation;
        for peer in setup.peers {
            federation.resolve.insert(
                peer.name.clone(),
                format!("{}/{}", setup.key_server.base_url, peer.name),
            );
        }
        federation.preverify_rate_per_second = setup.preverify;
        // Twice the rate, as the server's defaults (200/s, burst 400).
        federation.preverify_burst = setup.preverify.saturating_mul(2);
        federation.max_inflight_requests = 8192;
        federation.verify_threads = args.verify_threads;
        federation.default_rate_per_minute = setup.quota;
        federation.default_burst = setup.quota;
        config.validate()?;
        let before_build = thread_cpu();
        let app = Application::build(config).await?;
        let built = thread_cpu();
        let base = format!("http://127.0.0.1:{}", app.port());
        let mut receiver = Receiver {
            url: format!("{base}{INBOX_PATH}"),
            base,
            log: app.event_log().clone(),
            store: app.store().clone(),
            handle: app.handle(),
            running: actix_web::rt::spawn(app.run_until_stopped()),
            dir,
            roles: ThreadRoles::default(),
        };
        receiver.join_everyone(setup.peers).await?;
        receiver.roles = ThreadRoles {
            key_server: setup.key_server.threads.clone(),
            log_writer: ThreadRoles::new_arbiters(&before_build, &built),
            http_workers: ThreadRoles::new_arbiters(&built, &thread_cpu()),
        };
        Ok(receiver)
    }

    /// The channels, created and with every origin's user invited (appended directly), then
    /// each user's join through the inbox (which also makes the receiver fetch each key).
    async fn join_everyone(&self, peers: &[Arc<Peer>]) -> anyhow::Result<()> {
        let admin = format!("admin@{RECEIVER}");
        let event = |id: String, kind: &str, channel: &str, content: Value| NewEvent {
            event_id: id,
            origin: RECEIVER.into(),
            event_type: kind.into(),
            sender: Some(admin.clone()),
            channel: Some(channel.to_owned()),
            origin_ts: now_ms(),
            content,
        };
        let mut events = Vec::new();
        let mut channels: Vec<&str> = peers.iter().map(|p| p.channel.as_str()).collect();
        channels.dedup();
        for (n, channel) in channels.iter().enumerate() {
            events.push(event(
                format!("new-{n}"),
                "channel.new",
                channel,
                json!({"name": "Bench"}),
            ));
        }
        for peer in peers {
            events.push(event(
                format!("invite-{}", peer.name),
                "channel.invite",
                &peer.channel,
                json!({"invitee": peer.user}),
            ));
        }
        self.log.append(events).await?;
        let client = http_client(peers.len());
        let joins = peers.iter().map(|peer| {
            let request = peer.sign((peer.join_body(), 1));
            let client = &client;
            async move {
                let mut tally = Tally::default();
                tally.record(
                    post(client, &self.url, &request).await,
                    1,
                    false,
                    Duration::ZERO,
                );
                (peer.name.clone(), tally)
            }
        });
        for (name, tally) in futures_util::future::join_all(joins).await {
            anyhow::ensure!(
                tally.accepted_total == 1,
                "the join of {name} was not accepted: {}",
                tally.sample.unwrap_or_default()
            );
        }
        Ok(())
    }

    async fn head(&self) -> anyhow::Result<u64> {
        Ok(self.store.head().await?.0)
    }

    /// The receiver's Prometheus text, as name (with labels) → value.
    async fn metrics(&self) -> HashMap<String, f64> {
        let client = http_client(1);
        let Ok(mut response) = client.get(format!("{}/metrics", self.base)).send().await else {
            return HashMap::new();
        };
        let body = response.body().limit(16 << 20).await.unwrap_or_default();
        String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect()
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.handle.stop(true).await;
        self.running.await??;
        std::fs::remove_dir_all(&self.dir)?;
        Ok(())
    }
}

/// What the receiver's metrics say about a window (differences between two scrapes).
struct ServerSide {
    verify_batch: f64,
    commit_events: f64,
    commit_ms: f64,
    commits_per_s: f64,
    append_wait_ms: f64,
    request_ms: f64,
    /// Inbox requests and group commits that took over 10 ms.
    slow_requests: f64,
    slow_commits: f64,
}

impl ServerSide {
    fn between(
        before: &HashMap<String, f64>,
        after: &HashMap<String, f64>,
        seconds: f64,
    ) -> ServerSide {
        let delta = |name: &str| after.get(name).unwrap_or(&0.0) - before.get(name).unwrap_or(&0.0);
        let mean = |name: &str| {
            delta(&format!("switchyard_{name}_sum"))
                / delta(&format!("switchyard_{name}_count")).max(1.0)
        };
        ServerSide {
            verify_batch: mean("verify_batch_size"),
            commit_events: mean("log_batch_events"),
            commit_ms: mean("log_commit_seconds") * 1000.0,
            commits_per_s: delta("switchyard_log_commit_seconds_count") / seconds,
            append_wait_ms: mean("log_append_seconds") * 1000.0,
            slow_requests: delta("switchyard_inbox_request_seconds_count")
                - delta("switchyard_inbox_request_seconds_bucket{le=\"0.01\"}"),
            slow_commits: delta("switchyard_log_commit_seconds_count")
                - delta("switchyard_log_commit_seconds_bucket{le=\"0.01\"}"),
            request_ms: mean("inbox_request_seconds") * 1000.0,
        }
    }
}

// ---------------------------------------------------------------------------------------
// CPU time by thread, from /proc: where the cores went during a window.

/// tid → (name, nanoseconds on a CPU, nanoseconds runnable but waiting for one).
type ThreadTimes = HashMap<u64, (String, u64, u64)>;

fn thread_cpu() -> ThreadTimes {
    let mut threads = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // schedstat: nanoseconds on a CPU, nanoseconds waiting on a run queue, timeslices.
        let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
        let mut fields = stat.split_whitespace().map(|f| f.parse().unwrap_or(0));
        let (run, wait) = (fields.next().unwrap_or(0), fields.next().unwrap_or(0));
        threads.insert(tid, (name.trim().to_owned(), run, wait));
    }
    threads
}

/// Busy time of the whole machine (every process) and the time the hypervisor took
/// (steal), in clock ticks, from /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy = fields
        .iter()
        .take(7)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4);
    (
        busy.map(|(_, v)| v).sum(),
        fields.get(7).copied().unwrap_or(0),
    )
}

/// A snapshot of CPU use: per thread of this process, and of the whole machine.
struct CpuSnapshot {
    threads: ThreadTimes,
    machine: (u64, u64),
}

impl CpuSnapshot {
    fn take() -> CpuSnapshot {
        CpuSnapshot {
            threads: thread_cpu(),
            machine: machine_ticks(),
        }
    }
}

/// Which threads do what. Actix names every arbiter thread alike (`actix-rt|system:…`), so
/// they are told apart by when they appeared: the key server's worker when it first answered,
/// the receiver's log writer during `Application::build`, its HTTP workers when it first ran.
/// The receiver's outbound delivery (Destination actors) runs on the main thread.
#[derive(Default, Clone)]
struct ThreadRoles {
    log_writer: std::collections::HashSet<u64>,
    http_workers: std::collections::HashSet<u64>,
    key_server: std::collections::HashSet<u64>,
}

impl ThreadRoles {
    fn new_arbiters(before: &ThreadTimes, after: &ThreadTimes) -> std::collections::HashSet<u64> {
        after
            .iter()
            .filter(|(tid, (name, _, _))| {
                name.starts_with("actix-rt|") && !before.contains_key(tid)
            })
            .map(|(tid, _)| *tid)
            .collect()
    }

    fn group(&self, tid: u64, name: &str) -> &'static str {
        if self.http_workers.contains(&tid) {
            "http workers"
        } else if self.log_writer.contains(&tid) {
            "log writer"
        } else if self.key_server.contains(&tid) {
            "key server"
        } else if name.starts_with("sy-verify") {
            "verifiers"
        } else if name.starts_with("sqlx-sqlite") {
            "sqlite"
        } else if name.starts_with("bench-client") {
            "clients"
        } else if name.starts_with("switchyard-benc") {
            "main"
        } else {
            "other"
        }
    }
}

/// Cores used per thread group between two snapshots, busiest first, with the time the
/// group's threads were runnable but waited for a core; and what other processes used.
fn cpu_between(
    before: &CpuSnapshot,
    after: &CpuSnapshot,
    roles: &ThreadRoles,
    seconds: f64,
) -> String {
    let mut groups: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
    for (tid, (name, run, wait)) in &after.threads {
        let (run0, wait0) = before
            .threads
            .get(tid)
            .map_or((0, 0), |(_, run, wait)| (*run, *wait));
        let group = groups.entry(roles.group(*tid, name)).or_default();
        group.0 += run.saturating_sub(run0);
        group.1 += wait.saturating_sub(wait0);
    }
    let total: u64 = groups.values().map(|(run, _)| run).sum();
    let mut groups: Vec<_> = groups
        .into_iter()
        .filter(|(_, (run, _))| *run > 0)
        .collect();
    groups.sort_by_key(|(_, (run, _))| std::cmp::Reverse(*run));
    let cores = |ns: u64| ns as f64 / 1e9 / seconds;
    let parts: Vec<String> = groups
        .iter()
        .map(|(group, (run, wait))| {
            format!("{group} {:.2} (+{:.2} waiting)", cores(*run), cores(*wait))
        })
        .collect();
    // USER_HZ is 100 on Linux.
    let ticks = |t: u64| t as f64 / 100.0 / seconds;
    let busy = ticks(after.machine.0.saturating_sub(before.machine.0));
    let steal = ticks(after.machine.1.saturating_sub(before.machine.1));
    format!(
        "{} = {:.2} cores; other processes {:.2}, hypervisor steal {:.2} (of {} cores)",
        parts.join(", "),
        cores(total),
        (busy - cores(total)).max(0.0),
        steal,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

// ---------------------------------------------------------------------------------------

pub async fn run(args: InboxArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    anyhow::ensure!(
        args.events_per_request
            .iter()
            .all(|n| (1..=100).contains(n)),
        "--events-per-request takes 1..100"
    );
    let throughput = !args.flood && !args.no_throughput;
    let flood = !args.no_flood;
    let ceilings = if args.no_ceilings || args.flood {
        None
    } else {
        Some(measure_ceilings(&args.dir).await?)
    };
    let mut lines = Vec::new();
    if throughput {
        for &epr in &args.events_per_request {
            lines.push(throughput_point(&args, epr).await?);
        }
    }
    let flood_summary = if flood {
        Some(flood_comparison(&args).await?)
    } else {
        None
    };

    println!();
    println!(
        "== summary: receiver {} HTTP worker(s), {} verifier thread(s), SQLite WAL normal in {}; client {} thread(s), loopback",
        args.workers,
        if args.verify_threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            args.verify_threads
        },
        args.dir.display(),
        args.client_threads
    );
    if let Some(c) = &ceilings {
        println!(
            "ceilings: ed25519 verify {:.0}/s (1 thread), verify_batch(64) {:.0}/s; raw sqlx insert {:.0} rows/s; log append (256 appenders) {:.0} events/s",
            c.verify_single, c.verify_batch, c.raw_insert, c.log_append
        );
    }
    if !lines.is_empty() {
        println!(
            "{:>8} {:>5} {:>9} {:>10} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9}",
            "ev/req",
            "conc",
            "req/s",
            "events/s",
            "p50",
            "p99",
            "errors",
            "non-200",
            "ev/log",
            "req/verify"
        );
        for line in &lines {
            let (vs_log, vs_verify) = match &ceilings {
                Some(c) => (
                    format!("{:.2}", line.events_per_s / c.log_append),
                    format!("{:.2}", line.requests_per_s / c.verify_batch),
                ),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{:>8} {:>5} {:>9.0} {:>10.0} {:>9.2?} {:>9.2?} {:>7} {:>8} {:>9} {:>9}",
                line.events_per_request,
                line.concurrency,
                line.requests_per_s,
                line.events_per_s,
                line.p50,
                line.p99,
                line.errors,
                line.non_200,
                vs_log,
                vs_verify
            );
        }
    }
    if !lines.is_empty() {
        println!(
            "(ev/log: events/s over the log append ceiling; req/verify: requests/s over one thread's verify_batch rate. Issue targets: ≥ 50000 events/s at 100 events/request; ≥ 8000 requests/s with p99 < 20 ms at 1)"
        );
    }
    if let Some(summary) = flood_summary {
        println!("{summary}");
    }
    Ok(())
}

struct Ceilings {
    verify_single: f64,
    verify_batch: f64,
    raw_insert: f64,
    log_append: f64,
}

/// Signatures verified per second on this thread: one by one, and in batches of 64.
fn verify_rates() -> anyhow::Result<(f64, f64)> {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let keys: Vec<ServerKey> = (0..8).map(|_| ServerKey::generate()).collect();
    let messages: Vec<Vec<u8>> = (0..64u64)
        .map(|i| {
            let mut message = vec![b'm'; 300];
            message[..8].copy_from_slice(&i.to_le_bytes());
            message
        })
        .collect();
    let signatures: Vec<Signature> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| keys[i % keys.len()].sign(m))
        .collect();
    let verifying: Vec<VerifyingKey> = (0..64)
        .map(|i| keys[i % keys.len()].verifying_key())
        .collect();
    let second = Duration::from_secs(1);
    let started = Instant::now();
    let mut checked = 0u64;
    while started.elapsed() < second {
        for ((message, signature), key) in messages.iter().zip(&signatures).zip(&verifying) {
            key.verify(message, signature)?;
        }
        checked += 64;
    }
    let single = checked as f64 / started.elapsed().as_secs_f64();
    let slices: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let started = Instant::now();
    let mut checked = 0u64;
    while started.elapsed() < second {
        ed25519_dalek::verify_batch(&slices, &signatures, &verifying)?;
        checked += 64;
    }
    Ok((single, checked as f64 / started.elapsed().as_secs_f64()))
}

async fn measure_ceilings(dir: &Path) -> anyhow::Result<Ceilings> {
    println!("== ceilings");
    let (verify_single, verify_batch) = verify_rates()?;
    println!(
        "ed25519 (300-byte messages, one thread): verify {verify_single:.0}/s, verify_batch of 64 {verify_batch:.0}/s ({:.2}×)",
        verify_batch / verify_single
    );
    let raw_path = fresh_db(dir, "inbox-raw.db")?;
    let raw_insert = raw_insert_rate(&raw_path, Durability::Normal, Duration::from_secs(2)).await?;
    let path = fresh_db(dir, "inbox-log.db")?;
    let (store, log, _) = open_log(
        &format!("sqlite://{}?mode=rwc", path.display()),
        Durability::Normal,
    )
    .await?;
    let figures = run_appenders(&log, 256, Duration::from_secs(3)).await?;
    drop(log);
    store.close().await?;
    remove_db(&path)?;
    let log_append = figures.rate();
    println!(
        "SQLite (normal): raw sqlx insert {raw_insert:.0} rows/s; EventLog append, 256 appenders of message.new: {log_append:.0} events/s (p99 {:.2?})",
        figures.p99
    );
    Ok(Ceilings {
        verify_single,
        verify_batch,
        raw_insert,
        log_append,
    })
}

fn peers(prefix: &str, count: usize, shared: bool) -> anyhow::Result<Vec<Arc<Peer>>> {
    (1..=count)
        .map(|i| {
            let channel = if shared {
                format!("bench@{RECEIVER}")
            } else {
                format!("bench-{prefix}{i}@{RECEIVER}")
            };
            Ok(Arc::new(Peer::new(format!("{prefix}{i}.bench"), channel)?))
        })
        .collect()
}

/// One sending task of an origin, and how it names its events.
#[derive(Clone)]
struct Sender {
    peer: Arc<Peer>,
    /// This task's rank among the `of` tasks of its origin.
    rank: usize,
    of: usize,
    random_ids: bool,
}

impl Sender {
    /// The ids of the `k`th request of this task. By default a counter shared by the
    /// origin's tasks, zero-padded, so that ids arrive nearly in order (as a sender numbering
    /// its events does); with `--random-ids`, 16 random hex digits each.
    fn ids(&self, k: usize, events: usize) -> impl Iterator<Item = String> + '_ {
        (0..events).map(move |e| {
            if self.random_ids {
                format!("{:016x}", rand::random::<u64>())
            } else {
                format!("{:012}", (k * self.of + self.rank) * events + e)
            }
        })
    }

    /// A request signed now, for when the pre-signed ones ran out (ids of their own).
    fn sign_live(&self, n: u64, events: usize) -> Signed {
        let ids = (0..events).map(|e| format!("live-{}-{n}-{e}", self.rank));
        self.peer.sign(self.peer.relay_body(ids))
    }
}

/// `count` task descriptions per origin round robin: task `t` belongs to origin `t % n`.
fn senders(peers: &[Arc<Peer>], count: usize, random_ids: bool) -> Vec<Sender> {
    let n = peers.len().max(1);
    (0..count)
        .map(|t| Sender {
            peer: peers[t % n].clone(),
            rank: t / n,
            of: count / n + usize::from(t % n < count % n),
            random_ids,
        })
        .collect()
}

/// Builds `count` requests of `events` events for each sender, in parallel on every core.
fn presign(senders: &[Sender], count: usize, events: usize) -> Vec<Vec<Signed>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = senders.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = senders
            .chunks(chunk)
            .map(|chunk| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .map(|sender| {
                            (0..count)
                                .map(|k| {
                                    sender
                                        .peer
                                        .sign(sender.peer.relay_body(sender.ids(k, events)))
                                })
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

struct PointLine {
    events_per_request: usize,
    concurrency: usize,
    requests_per_s: f64,
    events_per_s: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
    non_200: u64,
}

/// One closed-loop task: send, wait for the answer, send the next, until the window ends.
async fn closed_loop(
    client: awc::Client,
    url: Rc<str>,
    sender: Sender,
    queue: Vec<Signed>,
    events: usize,
    window: Window,
) -> Tally {
    sleep_until(window.start).await;
    let mut tally = Tally::default();
    let mut queue = queue.into_iter();
    let mut live = 0u64;
    while Instant::now() < window.end {
        let request = match queue.next() {
            Some(request) => request,
            None => {
                live += 1;
                tally.signed_live += 1;
                sender.sign_live(live, events)
            }
        };
        let sent = Instant::now();
        let reply = post(&client, &url, &request).await;
        let done = Instant::now();
        tally.record(reply, request.events, window.contains(done), done - sent);
    }
    tally
}

async fn throughput_point(args: &InboxArgs, events: usize) -> anyhow::Result<PointLine> {
    let concurrency = args
        .concurrency
        .unwrap_or(if events >= 100 { 32 } else { 64 })
        .max(1);
    let origins = args.origins.max(1);
    let presign_rate =
        args.presign_rate
            .unwrap_or(if events == 1 { 15_000 } else { 80_000 / events });
    let run_seconds = args.warmup + args.seconds + 1;
    println!();
    println!(
        "== throughput: {events} event(s)/request, {concurrency} requests in flight over {origins} origins, {}s (+{}s warm-up)",
        args.seconds, args.warmup
    );
    let peers = peers("o", origins, args.shared_channel)?;
    let key_server = start_key_server(&peers).await?;
    let receiver = Receiver::start(
        args,
        ReceiverSetup {
            peers: &peers,
            key_server: &key_server,
            quota: 1_000_000_000,
            preverify: args.preverify_rate,
        },
    )
    .await?;

    let tasks = senders(&peers, concurrency, args.random_ids);
    let per_task = (presign_rate * run_seconds as usize).div_ceil(concurrency);
    let signing = Instant::now();
    let mut queues = presign(&tasks, per_task, events);
    println!(
        "pre-signed {} requests ({} events) in {:.1?}",
        per_task * concurrency,
        per_task * concurrency * events,
        signing.elapsed()
    );

    let head_before = receiver.head().await?;
    let window = Window::new(
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.seconds),
    );
    let threads = args.client_threads.max(1);
    let mut per_thread: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
    for (n, (sender, queue)) in tasks.into_iter().zip(queues.drain(..)).enumerate() {
        per_thread[n % threads].push((sender, queue));
    }
    let mut running = Vec::new();
    for (n, specs) in per_thread.into_iter().enumerate() {
        let url = receiver.url.clone();
        running.push(client_thread(n, move || async move {
            let client = http_client(specs.len().max(1));
            let url: Rc<str> = url.into();
            let handles: Vec<_> = specs
                .into_iter()
                .map(|(sender, queue)| {
                    actix_web::rt::spawn(closed_loop(
                        client.clone(),
                        url.clone(),
                        sender,
                        queue,
                        events,
                        window,
                    ))
                })
                .collect();
            let mut tally = Tally::default();
            for handle in handles {
                if let Ok(part) = handle.await {
                    tally.merge(part);
                }
            }
            tally
        })?);
    }
    sleep_until(window.measure_from).await;
    let (cpu_before, metrics_before) = (CpuSnapshot::take(), receiver.metrics().await);
    sleep_until(window.end).await;
    let (cpu_after, metrics_after) = (CpuSnapshot::take(), receiver.metrics().await);
    let mut tally = Tally::default();
    for part in running {
        tally.merge(part.await?);
    }
    let head_after = receiver.head().await?;
    let server = ServerSide::between(&metrics_before, &metrics_after, window.seconds());

    let (p50, p99, max) = tally.percentiles();
    let seconds = window.seconds();
    let line = PointLine {
        events_per_request: events,
        concurrency,
        requests_per_s: tally.requests as f64 / seconds,
        events_per_s: tally.events as f64 / seconds,
        p50,
        p99,
        errors: tally.errors(),
        non_200: tally.non_200(),
    };
    println!(
        "accepted {:.0} events/s, {:.0} requests/s; latency p50 {p50:.2?} p99 {p99:.2?} max {max:.2?}",
        line.events_per_s, line.requests_per_s
    );
    println!(
        "errors {} (events not accepted {}, non-200 answers {}: {}, no answer {}); requests signed live {}",
        line.errors,
        tally.bad_events,
        line.non_200,
        tally.statuses_text(),
        tally.failed,
        tally.signed_live
    );
    if let Some(sample) = &tally.sample {
        println!("first error: {sample}");
    }
    let appended = head_after - head_before;
    println!(
        "log: {appended} entries appended during the run, {} events answered accepted{}",
        tally.accepted_total,
        if appended == tally.accepted_total {
            " (equal)"
        } else {
            " (MISMATCH)"
        }
    );
    println!(
        "receiver: mean verify batch {:.1} signatures; {:.0} group commits/s of {:.1} events, {:.2} ms each (log writer committing {:.0}% of the time); mean time in the inbox pipeline {:.2} ms, of which {:.2} ms from handing the events to the log writer to its answer; {} requests over 10 ms in the pipeline; outbound delivery sent {} events",
        server.verify_batch,
        server.commits_per_s,
        server.commit_events,
        server.commit_ms,
        server.commits_per_s * server.commit_ms / 10.0,
        server.request_ms,
        server.append_wait_ms,
        server.slow_requests,
        key_server.delivered.load(Ordering::Relaxed)
    );
    println!(
        "cpu: {}",
        cpu_between(&cpu_before, &cpu_after, &receiver.roles, seconds)
    );
    receiver.stop().await?;
    key_server.handle.stop(true).await;
    Ok(line)
}

// ---------------------------------------------------------------------------------------
// Flood.

/// Normal origins: each sends its pre-signed requests at `rate` per second on a fixed
/// schedule, whatever the answers do (open loop); latency runs from the scheduled time.
async fn open_loop_normal(
    client: awc::Client,
    url: Rc<str>,
    origins: Vec<Vec<Signed>>,
    rate: u32,
    window: Window,
) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let count = origins.len().max(1) as u32;
    let schedulers: Vec<_> = origins
        .into_iter()
        .enumerate()
        .map(|(i, requests)| {
            let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
            // Origins staggered over one interval.
            let offset = interval * i as u32 / count;
            actix_web::rt::spawn(async move {
                let mut sends = Vec::new();
                for (k, request) in requests.into_iter().enumerate() {
                    let due = window.start + offset + interval * k as u32;
                    if due >= window.end {
                        break;
                    }
                    sleep_until(due).await;
                    let (client, url, tally) = (client.clone(), url.clone(), tally.clone());
                    sends.push(actix_web::rt::spawn(async move {
                        let reply = post(&client, &url, &request).await;
                        let done = Instant::now();
                        tally.borrow_mut().record(
                            reply,
                            request.events,
                            window.contains(due),
                            done - due,
                        );
                    }));
                }
                for send in sends {
                    let _ = send.await;
                }
            })
        })
        .collect();
    for scheduler in schedulers {
        let _ = scheduler.await;
    }
    Rc::try_unwrap(tally).map_or_else(|_| Tally::default(), RefCell::into_inner)
}

/// The flooder: `rate` requests per second, sent on schedule every millisecond, at most
/// `max_inflight` at once (the rest counted as not sent).
async fn open_loop_flood(
    client: awc::Client,
    url: Rc<str>,
    requests: Vec<Signed>,
    rate: f64,
    max_inflight: usize,
    window: Window,
) -> Tally {
    let tally = Rc::new(RefCell::new(Tally::default()));
    let inflight = Rc::new(Cell::new(0usize));
    let mut requests = requests.into_iter();
    let mut due_total = 0u64;
    let mut sends = Vec::new();
    let mut tick = window.start;
    while tick < window.end {
        sleep_until(tick).await;
        let due = ((Instant::now().min(window.end) - window.start).as_secs_f64() * rate) as u64;
        while due_total < due {
            due_total += 1;
            let Some(request) = requests.next().filter(|_| inflight.get() < max_inflight) else {
                tally.borrow_mut().not_sent += 1;
                continue;
            };
            inflight.set(inflight.get() + 1);
            let (client, url, tally, inflight) =
                (client.clone(), url.clone(), tally.clone(), inflight.clone());
            sends.push(actix_web::rt::spawn(async move {
                let sent = Instant::now();
                let reply = post(&client, &url, &request).await;
                let done = Instant::now();
                inflight.set(inflight.get() - 1);
                tally.borrow_mut().record(
                    reply,
                    request.events,
                    window.contains(sent),
                    done - sent,
                );
            }));
        }
        sends.retain(|s| !s.is_finished());
        tick += Duration::from_millis(1);
    }
    for send in sends {
        let _ = send.await;
    }
    Rc::try_unwrap(tally).map_or_else(|_| Tally::default(), RefCell::into_inner)
}

struct FloodRun {
    normal: Tally,
    flooder: Option<Tally>,
    cpu: String,
    server: ServerSide,
    log_check: String,
}

async fn flood_run(
    args: &InboxArgs,
    normal: &[Arc<Peer>],
    flooder: &Arc<Peer>,
    preverify: u32,
    with_flooder: bool,
) -> anyhow::Result<FloodRun> {
    let mut everyone = normal.to_vec();
    everyone.push(flooder.clone());
    let key_server = start_key_server(&everyone).await?;
    let receiver = Receiver::start(
        args,
        ReceiverSetup {
            peers: &everyone,
            key_server: &key_server,
            quota: args.quota,
            preverify,
        },
    )
    .await?;
    let run_seconds = args.warmup + args.seconds + 1;
    let per_normal = args.normal_rate as usize * run_seconds as usize + 1;
    let normal_requests = presign(
        &senders(normal, normal.len(), args.random_ids),
        per_normal,
        1,
    );
    let flood_rate = f64::from(args.quota) / 60.0 * f64::from(args.flood_factor);
    let flood_requests = if with_flooder {
        let signing = Instant::now();
        let count = (flood_rate * run_seconds as f64) as usize;
        // Split over tasks so that every core signs.
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let tasks = senders(std::slice::from_ref(flooder), threads, args.random_ids);
        let requests: Vec<Signed> = presign(&tasks, count.div_ceil(threads), 1)
            .into_iter()
            .flatten()
            .collect();
        println!(
            "pre-signed {} flooder requests in {:.1?}",
            requests.len(),
            signing.elapsed()
        );
        Some(requests)
    } else {
        None
    };

    let head_before = receiver.head().await?;
    let window = Window::new(
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.seconds),
    );
    let url = receiver.url.clone();
    let rate = args.normal_rate;
    let normal_done = client_thread(0, move || async move {
        open_loop_normal(http_client(256), url.into(), normal_requests, rate, window).await
    })?;
    let flood_done = match flood_requests {
        Some(requests) => {
            let url = receiver.url.clone();
            let max_inflight = args.flood_inflight;
            Some(client_thread(1, move || async move {
                open_loop_flood(
                    http_client(max_inflight),
                    url.into(),
                    requests,
                    flood_rate,
                    max_inflight,
                    window,
                )
                .await
            })?)
        }
        None => None,
    };
    sleep_until(window.measure_from).await;
    let (cpu_before, metrics_before) = (CpuSnapshot::take(), receiver.metrics().await);
    sleep_until(window.end).await;
    let cpu = cpu_between(
        &cpu_before,
        &CpuSnapshot::take(),
        &receiver.roles,
        window.seconds(),
    );
    let server = ServerSide::between(&metrics_before, &receiver.metrics().await, window.seconds());
    let normal = normal_done.await?;
    let flooder = match flood_done {
        Some(done) => Some(done.await?),
        None => None,
    };
    let appended = receiver.head().await? - head_before;
    let accepted = normal.accepted_total + flooder.as_ref().map_or(0, |f| f.accepted_total);
    let log_check = format!(
        "log: {appended} entries appended, {accepted} events answered accepted{}",
        if appended == accepted {
            " (equal)"
        } else {
            " (MISMATCH)"
        }
    );
    receiver.stop().await?;
    key_server.handle.stop(true).await;
    Ok(FloodRun {
        normal,
        flooder,
        cpu,
        server,
        log_check,
    })
}

async fn flood_comparison(args: &InboxArgs) -> anyhow::Result<String> {
    let normal = peers("n", args.flood_origins.max(1), args.shared_channel)?;
    let flooder = Arc::new(Peer::new(
        "flood.bench".into(),
        if args.shared_channel {
            format!("bench@{RECEIVER}")
        } else {
            format!("bench-flood@{RECEIVER}")
        },
    )?);
    let flood_rate = f64::from(args.quota) / 60.0 * f64::from(args.flood_factor);
    let preverify = if args.flood_preverify.is_empty() {
        vec![200]
    } else {
        args.flood_preverify.clone()
    };
    println!();
    println!(
        "== flood: {} normal origins × {} req/s of 1 event (open loop, latency from the scheduled time); quota {}/min, burst {} for every origin; flooder at {}× its quota = {:.0} req/s of 1 event (open loop, ≤ {} in flight, its client on this machine too)",
        normal.len(),
        args.normal_rate,
        args.quota,
        args.quota,
        args.flood_factor,
        flood_rate,
        args.flood_inflight
    );
    let mut summary = format!(
        "flood: {} origins × {} req/s (1 event), quota {}/min; flooder {}× its quota ({:.0} req/s)\n{:<29} {:>9} {:>9} {:>9} {:>6} {:>7} | {:>8} {:>8} {:>8} {:>11}",
        normal.len(),
        args.normal_rate,
        args.quota,
        args.flood_factor,
        flood_rate,
        "run",
        "p50",
        "p99",
        "max",
        "errors",
        "p99 ×",
        "sent",
        "429",
        "R-After",
        "accepted ev"
    );
    // The baseline first: the normal origins alone (far below any pre-verify bucket).
    let mut plan = vec![("no flooder".to_owned(), preverify[0], false)];
    plan.extend(
        preverify
            .iter()
            .map(|&rate| (format!("flooder, pre-verify {rate}/s"), rate, true)),
    );
    let mut baseline_p99 = None;
    for (label, rate, with_flooder) in plan {
        let mut run = flood_run(args, &normal, &flooder, rate, with_flooder).await?;
        let (p50, p99, max) = run.normal.percentiles();
        let baseline = *baseline_p99.get_or_insert(p99);
        println!(
            "{label}: normal origins {} requests in the window, p50 {p50:.2?} p99 {p99:.2?} max {max:.2?}; errors {} (non-200: {}, no answer {})",
            run.normal.latencies.len(),
            run.normal.errors(),
            run.normal.statuses_text(),
            run.normal.failed
        );
        if let Some(sample) = &run.normal.sample {
            println!("  first normal-origin error: {sample}");
        }
        let ratio = p99.as_secs_f64() / baseline.as_secs_f64().max(1e-9);
        summary.push_str(&format!(
            "\n{label:<29} {p50:>9.2?} {p99:>9.2?} {max:>9.2?} {:>6} {:>6.2}×",
            run.normal.errors(),
            ratio
        ));
        if let Some(f) = &run.flooder {
            let limited = f.statuses.get(&429).copied().unwrap_or(0);
            let by: Vec<String> = f
                .limited_by
                .iter()
                .map(|(by, n)| format!("{n} by the {by}"))
                .collect();
            let mut other = f.statuses.clone();
            other.remove(&429);
            println!(
                "  flooder: {} sent, {} not sent (in-flight cap), {} events accepted; {limited}× 429 ({}), {} of them with Retry-After; other answers: {}",
                f.sent,
                f.not_sent,
                f.accepted_total,
                by.join(", "),
                f.retry_after,
                if other.is_empty() && f.failed == 0 && f.bad_events == 0 {
                    "none".to_owned()
                } else {
                    format!(
                        "{other:?}, no answer {}, events not accepted {}",
                        f.failed, f.bad_events
                    )
                }
            );
            summary.push_str(&format!(
                " | {:>8} {:>8} {:>8} {:>11}",
                f.sent, limited, f.retry_after, f.accepted_total
            ));
        }
        println!(
            "  receiver (all origins): {:.0} group commits/s of {:.1} events, {:.2} ms each; {} inbox requests and {} group commits over 10 ms",
            run.server.commits_per_s,
            run.server.commit_events,
            run.server.commit_ms,
            run.server.slow_requests,
            run.server.slow_commits
        );
        println!("  {}", run.log_check);
        println!("  cpu: {}", run.cpu);
    }
    summary.push_str(
        "\n(p99 ×: the normal origins' p99 over the run without the flooder; the issue's target is ≤ 2×)",
    );
    Ok(summary)
}
