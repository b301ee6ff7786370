//! `fanout`: WebSocket fan-out of one channel to many subscribers, against a bare ceiling.
//!
//! ```text
//!  coordinator (switchyard-bench fanout)
//!   │ spawns, per target (bare, then switchyard):
//!   ├─▶ server process ── bare-broadcast (the ceiling), or `switchyard serve` on a temp dir
//!   │     ▲ POST /publish | POST /api/v1/channels/{id}/messages   (M publishers, in the
//!   │     │                                                          coordinator, one at a
//!   │     │                                                          time each)
//!   │     │ GET /ws  ×N, one channel, every frame to every socket
//!   │     ▼
//!   └─▶ clients process (switchyard-bench fanout-clients): 2 threads, one actix System and
//!         N/2 sockets each, from source addresses 127.0.0.2.., answering heartbeats,
//!         resuming after a 4000 close; told what to do over stdin, answering on stdout
//! ```
//! Every published body is `<phase>:<publisher>:<n>:<send unix µs>`; each publisher numbers
//! its messages 1, 2, 3… across the whole run and has at most one request in flight, so the
//! server commits each publisher's messages in order. A 429 or 503 is counted as "busy" and
//! the same message is posted again after a short pause; only a 2xx counts as sent.
//!
//! Switchyard gets one user per socket (`sub0..`, registered, invited and joined before the
//! clock starts, at argon2's least cost: see `start_switchyard`); every socket identifies
//! with its own token. The ceiling checks no token. Per target, in order:
//! - **connect storm**: every socket connects at once, `--connect-concurrency` handshakes
//!   in flight (64), while the publishers post at `--rate`: the time until all are live
//!   (Ready), each handshake's time from its connect to Ready (p50, p99), upgrades answered
//!   503 (admission) or another 5xx. A session that never connected starts at the head, so
//!   what was posted before a socket's Ready is not owed to it: this phase counts no gaps;
//! - the server's RSS (`VmRSS`) before any client connected and once every socket is idle
//!   (nothing arrived for 3 s): the difference divided by N is the RSS per idle socket;
//! - **fixed rate**: `--rate` messages/s in total, spread evenly over the publishers (open
//!   loop: a publisher that falls behind its schedule sends at once), for `--seconds`;
//! - **saturation**: each publisher posts its next message as soon as the previous one is
//!   answered, for `--seconds`;
//! - **reconnect storm** (Switchyard only; the ceiling cannot resume): every socket dropped
//!   at once without a close frame, `--storm-messages` (1,000) posted while they are away,
//!   then all come back at once (`--reconnect-concurrency` handshakes in flight, 1,024) and
//!   resume from their last `seq`, while the publishers post at `--rate`: the time until
//!   every socket is live and has every message posted while it was away, handshakes,
//!   replays served from memory or the log, database reads per resume (from the server's
//!   `/metrics`), gaps and duplicates over the whole phase, and the RSS per idle socket
//!   after it.
//! Each phase is drained (until every socket has every message, or nothing has arrived
//! for 3 s) before the clients report. Each phase line gives the publishers' post latency
//! p99 (first try to 2xx, busy retries included): the storms' against the fixed-rate
//! phase's says what a storm costs the people posting through it.
//!
//! The figures, per target and phase, all counted at the clients:
//! - deliveries/s: chat frames carrying a payload of this phase, received over all sockets,
//!   divided by the time from the phase's first publish to the last such frame;
//! - p50/p99/p99.9: delivery latency, receive time minus the send time in the payload (both
//!   the unix clock of this machine), over every delivery of the phase, from a log-bucketed
//!   histogram (exact below 128 µs, then within 1/64 of the value);
//! - gaps: messages a socket never received: for each socket and publisher, numbers skipped
//!   between two consecutive arrivals, plus those after the last arrival up to the
//!   publisher's last sent number when the phase is reported; an arrival out of order counts
//!   as a gap and a duplicate (the server promises log order);
//! - duplicates: arrivals whose number is not above the socket's last one of that publisher;
//! - reconnects: closes with 4000 (the server dropped a socket that could not keep up),
//!   followed by Resume; "resume failed" counts closes with 4010 (the socket then starts
//!   afresh with Identify, and what it missed shows as gaps), "lost" any other end of a
//!   socket (it reconnects too).
//!
//! The ceiling (`bare-broadcast`) is the least a server on the same stack must do: actix-web
//! with actix-ws, the same number of HTTP workers, no actors, no log, no authentication. Each
//! publish builds one frame with the shape of Switchyard's chat event (its `s` is the publish
//! counter, the same for every socket) and `try_send`s the shared bytes to every socket's
//! bounded queue; a socket whose queue is full is dropped and closed with 4000. It cannot
//! replay, so it answers Resume with 4010.
//!
//! Each phase line ends with the CPU the server and the clients process used from the phase's
//! start to its report, in cores. Both servers share the machine with the clients: at high rates the clients' own CPU is part
//! of what is measured, for both targets alike, which is why the targets are ratios.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{anyhow, bail, ensure, Context as _};
use awc::error::WsProtocolError;
use awc::ws::{CloseCode, CloseReason, Frame, Message};
use futures_util::{Sink, SinkExt as _, Stream, StreamExt as _};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::common::{self, call, cpu_time, free_port, string_field, ChildGuard, ScratchDir};

/// Phase tags carried in the payloads; the clients keep one tally per tag, in this order.
const MAX_PHASES: usize = 4;
/// The connect storm: every socket connects at once while publishers post at `--rate`.
const PHASE_CONNECT: usize = 0;
pub(crate) const PHASE_FIXED: usize = 1;
const PHASE_SATURATION: usize = 2;
/// The reconnect storm: `--storm-messages` posted while every socket is away, then all
/// resume while publishers post at `--rate`.
const PHASE_RECONNECT: usize = 3;
/// A phase is reported once nothing has arrived for this long (or everything has).
const DRAIN_QUIET: Duration = Duration::from_secs(3);
/// Longest drain of a phase.
const DRAIN_LIMIT: Duration = Duration::from_secs(120);
/// Pause before posting again after a 429 or 503.
const BUSY_PAUSE: Duration = Duration::from_millis(10);
/// Pause before posting again after a transport error.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Longest time one message may take to be accepted before the run is abandoned.
const POST_GIVE_UP: Duration = Duration::from_secs(30);
/// Longest wait for a server's Hello after the upgrade.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// The subscriber's and publishers' password (registration needs 8..1024 characters).
const PASSWORD: &str = "fanout-bench-password";

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TargetKind {
    Bare,
    Switchyard,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Bare => "bare",
            TargetKind::Switchyard => "switchyard",
        }
    }
}

#[derive(clap::Args)]
pub struct FanoutArgs {
    /// WebSocket subscribers of the one channel.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Publishers (Switchyard users pub0.., each with one request in flight). Saturation
    /// needs enough of them that the fan-out, not the publishers' round trips, is the limit.
    #[arg(long, default_value_t = 16)]
    publishers: usize,
    /// Seconds of publishing in each phase.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Messages per second, over all publishers, in the fixed-rate phase.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Measure one target only.
    #[arg(long, value_enum)]
    only: Option<TargetKind>,
    /// The Switchyard server binary.
    #[arg(long, default_value = "target/release/switchyard")]
    server_bin: PathBuf,
    /// Threads of the clients process, one actix System each.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Handshakes in progress at once over all client threads (a socket holds its slot from
    /// its connect until Ready or Resumed).
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Messages posted while every socket is away, in the reconnect storm.
    #[arg(long, default_value_t = 1000)]
    storm_messages: u64,
    /// Handshakes in progress at once over all client threads when the sockets come back in
    /// the reconnect storm (clients back from a network blip do not queue politely; the
    /// server's admission is what paces them).
    #[arg(long, default_value_t = 1024)]
    reconnect_concurrency: usize,
    /// Source addresses of the clients: 127.0.0.2, 127.0.0.3, … (so that no one address
    /// runs out of ephemeral ports).
    #[arg(long, default_value_t = 40)]
    source_addresses: u8,
    /// Frames the ceiling queues per socket before it drops the socket (Switchyard's
    /// `gateway.outbound_max_frames` defaults to 1024).
    #[arg(long, default_value_t = 1024)]
    bare_buffer: usize,
    /// The ceiling sets TCP_NODELAY on its sockets (by default it keeps the OS default, as
    /// Switchyard does).
    #[arg(long)]
    bare_nodelay: bool,
}

#[derive(clap::Args)]
pub struct ClientsArgs {
    /// The gateway, e.g. ws://127.0.0.1:8008/ws.
    #[arg(long)]
    url: String,
    /// Sockets in all.
    #[arg(long)]
    clients: usize,
    /// Publishers whose numbers the sockets track.
    #[arg(long)]
    publishers: usize,
    /// Threads, one actix System each; the sockets are split evenly.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Source addresses 127.0.0.2.. (see `fanout --source-addresses`).
    #[arg(long, default_value_t = 40)]
    source_addresses: u8,
    /// Handshakes in progress at once per thread (a socket holds its slot until Ready).
    #[arg(long, default_value_t = 32)]
    connect_concurrency: usize,
    /// Handshakes in progress at once per thread once the sockets come `back`.
    #[arg(long, default_value_t = 512)]
    reconnect_concurrency: usize,
    /// Bearer tokens, one per line, one per socket (socket k sends line k); without it every
    /// socket sends an empty token (the ceiling does not check).
    #[arg(long)]
    tokens: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct BareArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: String,
    /// Frames queued per socket; a socket with a full queue is dropped (closed with 4000).
    #[arg(long, default_value_t = 1024)]
    buffer: usize,
    /// The heartbeat interval announced in Hello, milliseconds.
    #[arg(long, default_value_t = 30_000)]
    heartbeat_interval: u64,
    /// Set TCP_NODELAY on accepted connections (actix-web, and Switchyard, keep the OS
    /// default: Nagle's algorithm on).
    #[arg(long)]
    tcp_nodelay: bool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_micros() as u64)
}

// ---------------------------------------------------------------------------------------------
// Payloads, latency histogram, tallies: shared by the coordinator and the clients
// ---------------------------------------------------------------------------------------------

/// What each published message body carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Payload {
    phase: usize,
    publisher: usize,
    n: u64,
    sent_us: u64,
}

impl Payload {
    fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.phase, self.publisher, self.n, self.sent_us
        )
    }

    fn parse(text: &str) -> Option<Payload> {
        let mut parts = text.split(':');
        let payload = Payload {
            phase: parts.next()?.parse().ok()?,
            publisher: parts.next()?.parse().ok()?,
            n: parts.next()?.parse().ok()?,
            sent_us: parts.next()?.parse().ok()?,
        };
        (parts.next().is_none() && payload.phase < MAX_PHASES).then_some(payload)
    }
}

/// Bits of the sub-bucket index: values below `2^SUB_BITS` µs are exact, larger ones fall in
/// one of `2^(SUB_BITS-1)` buckets per power of two.
const SUB_BITS: u32 = 7;
const HALF: usize = 1 << (SUB_BITS - 1);
const BUCKETS: usize = (64 - SUB_BITS as usize + 2) * HALF;

/// A log-linear histogram of microsecond values.
#[derive(Clone, Serialize, Deserialize)]
#[serde(from = "SparseHistogram", into = "SparseHistogram")]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

/// A histogram on the wire: (bucket, count) for the buckets in use.
#[derive(Serialize, Deserialize)]
struct SparseHistogram(Vec<(u32, u64)>);

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

impl Histogram {
    fn bucket(value: u64) -> usize {
        if value < (1 << SUB_BITS) {
            return value as usize;
        }
        // The shift that brings the value into [HALF, 2 * HALF).
        let shift = (63 - value.leading_zeros()) - (SUB_BITS - 1);
        shift as usize * HALF + (value >> shift) as usize
    }

    /// The middle of a bucket's range of values.
    fn value_of(bucket: usize) -> u64 {
        if bucket < (1 << SUB_BITS) {
            return bucket as u64;
        }
        let shift = bucket / HALF - 1;
        let mantissa = (bucket - shift * HALF) as u64;
        (mantissa << shift) + (1 << shift) / 2
    }

    fn record(&mut self, value: u64) {
        self.counts[Self::bucket(value)] += 1;
        self.total += 1;
    }

    pub(crate) fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
        self.total += other.total;
    }

    /// The value at quantile `q` (0..=1); `None` when empty.
    pub(crate) fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64 * q).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (bucket, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Self::value_of(bucket));
            }
        }
        None
    }
}

impl From<Histogram> for SparseHistogram {
    fn from(histogram: Histogram) -> Self {
        SparseHistogram(
            histogram
                .counts
                .iter()
                .enumerate()
                .filter(|(_, count)| **count > 0)
                .map(|(bucket, count)| (bucket as u32, *count))
                .collect(),
        )
    }
}

impl From<SparseHistogram> for Histogram {
    fn from(sparse: SparseHistogram) -> Self {
        let mut histogram = Histogram::default();
        for (bucket, count) in sparse.0 {
            if let Some(slot) = histogram.counts.get_mut(bucket as usize) {
                *slot += count;
                histogram.total += count;
            }
        }
        histogram
    }
}

/// What the clients saw of one phase (see the module doc for each figure).
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct PhaseTally {
    pub(crate) deliveries: u64,
    /// Unix µs of the first and last delivery of this phase's payloads.
    first_us: Option<u64>,
    last_us: Option<u64>,
    pub(crate) gaps: u64,
    pub(crate) duplicates: u64,
    reconnects: u64,
    resume_failures: u64,
    lost: u64,
    /// Chat events whose body is not a payload of this benchmark, or frames not understood.
    malformed: u64,
    pub(crate) latency: Histogram,
}

impl PhaseTally {
    fn merge(&mut self, other: &PhaseTally) {
        self.deliveries += other.deliveries;
        self.first_us = match (self.first_us, other.first_us) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_us = self.last_us.max(other.last_us);
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
        self.reconnects += other.reconnects;
        self.resume_failures += other.resume_failures;
        self.lost += other.lost;
        self.malformed += other.malformed;
        self.latency.merge(&other.latency);
    }
}

/// The clients' answer to `status`.
#[derive(Clone, Default, Serialize, Deserialize)]
pub(crate) struct ClientStatus {
    /// Sockets that have had Ready.
    ready: u64,
    /// Sockets connected now.
    open: u64,
    /// Sockets connected now and past Ready or Resumed.
    pub(crate) live: u64,
    /// Reconnect storm: sockets that have every message posted while they were away.
    caught_up: u64,
    /// Deliveries so far, per phase tag.
    deliveries: Vec<u64>,
    /// The latest reason a socket failed to connect or ended, if any.
    pub(crate) last_error: Option<String>,
}

impl ClientStatus {
    fn merge(&mut self, other: ClientStatus) {
        self.ready += other.ready;
        self.open += other.open;
        self.live += other.live;
        self.caught_up += other.caught_up;
        if self.deliveries.len() < other.deliveries.len() {
            self.deliveries.resize(other.deliveries.len(), 0);
        }
        for (mine, theirs) in self.deliveries.iter_mut().zip(&other.deliveries) {
            *mine += theirs;
        }
        if other.last_error.is_some() {
            self.last_error = other.last_error;
        }
    }
}

/// The clients' answer to `handshakes`: what they saw of the upgrades since the last ask.
#[derive(Clone, Default, Serialize, Deserialize)]
struct HandshakeTally {
    /// From a socket's connect to its Ready or Resumed (the attempt that succeeded), µs.
    latency: Histogram,
    /// Upgrades answered 503 (admission: retried after a pause).
    refused: u64,
    /// Upgrades answered with any other 5xx.
    server_errors: u64,
}

impl HandshakeTally {
    fn merge(&mut self, other: &HandshakeTally) {
        self.latency.merge(&other.latency);
        self.refused += other.refused;
        self.server_errors += other.server_errors;
    }
}

/// Forwards the lines of `reader` (a pipe) to a channel, from a thread of its own; the
/// channel closes at end of file.
pub(crate) fn lines_of(reader: impl Read + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// Frames of the gateway protocol (DESIGN §5)
// ---------------------------------------------------------------------------------------------

/// `{n, op, d}` of a received frame, `d` left unparsed.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    n: Cow<'a, str>,
    op: u16,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct HelloData {
    heartbeat_interval: u64,
}

#[derive(Deserialize)]
struct ReadyData {
    seq: Option<u64>,
}

#[derive(Deserialize)]
struct EventData<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageContent<'a> {
    #[serde(borrow)]
    body: Cow<'a, str>,
}

fn heartbeat_frame() -> String {
    json!({"n": "core", "op": 0, "d": {}}).to_string()
}

fn identify_frame(token: &str) -> String {
    json!({"n": "core", "op": 2, "d": {"token": token}}).to_string()
}

fn resume_frame(seq: u64, token: &str) -> String {
    json!({"n": "core", "op": 5, "d": {"s": seq, "token": token}}).to_string()
}

// ---------------------------------------------------------------------------------------------
// The coordinator
// ---------------------------------------------------------------------------------------------

/// A child process, killed and reaped when dropped (also on every error path).
/// The clients process and its request/answer channel (one line each way).
pub(crate) struct ClientsProcess {
    pub(crate) stdin: ChildStdin,
    pub(crate) lines: mpsc::UnboundedReceiver<String>,
    pub(crate) guard: ChildGuard,
}

impl ClientsProcess {
    fn spawn(
        args: &FanoutArgs,
        url: &str,
        tokens: Option<&Path>,
    ) -> anyhow::Result<ClientsProcess> {
        let threads = args.client_threads.max(1);
        let mut command = Command::new(std::env::current_exe()?);
        command
            .arg("fanout-clients")
            .args(["--url", url])
            .args(["--clients", &args.clients.to_string()])
            .args(["--publishers", &args.publishers.to_string()])
            .args(["--threads", &threads.to_string()])
            .args(["--source-addresses", &args.source_addresses.to_string()])
            .args([
                "--connect-concurrency",
                &args.connect_concurrency.div_ceil(threads).to_string(),
            ])
            .args([
                "--reconnect-concurrency",
                &args.reconnect_concurrency.div_ceil(threads).to_string(),
            ]);
        if let Some(tokens) = tokens {
            command.arg("--tokens").arg(tokens);
        }
        Self::start(&mut command)
    }

    /// Runs `command` (a `fanout-clients` command line) with its stdin and stdout piped to
    /// this coordinator.
    pub(crate) fn start(command: &mut Command) -> anyhow::Result<ClientsProcess> {
        let mut guard = ChildGuard::spawn(
            "clients",
            command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit()),
        )?;
        let stdin = guard
            .child_mut()
            .stdin
            .take()
            .context("clients stdin not piped")?;
        let stdout = guard
            .child_mut()
            .stdout
            .take()
            .context("clients stdout not piped")?;
        Ok(ClientsProcess {
            stdin,
            lines: lines_of(stdout),
            guard,
        })
    }

    /// Sends `command` and returns the rest of the answer line, which starts with `keyword`.
    async fn ask(&mut self, command: &str, keyword: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .context("the clients process is gone")?;
        let line = tokio::time::timeout(Duration::from_secs(60), self.lines.recv())
            .await
            .map_err(|_| anyhow!("the clients process did not answer `{command}` in 60 s"))?
            .ok_or_else(|| anyhow!("the clients process exited"))?;
        line.strip_prefix(keyword)
            .map(|rest| rest.trim().to_owned())
            .ok_or_else(|| anyhow!("unexpected answer to `{command}`: {line}"))
    }

    pub(crate) async fn status(&mut self) -> anyhow::Result<ClientStatus> {
        let answer = self.ask("status", "status").await?;
        serde_json::from_str(&answer).context("bad status answer")
    }

    /// Drops every socket at once (no close frame) and keeps them away until [`Self::back`].
    async fn away(&mut self) -> anyhow::Result<()> {
        self.ask("away", "away").await.map(drop)
    }

    /// Lets the sockets come back (each resumes from its last seq); `targets` are the
    /// publishers' last numbers posted while they were away (see `caught_up`).
    async fn back(&mut self, targets: &[u64]) -> anyhow::Result<()> {
        let targets: Vec<String> = targets.iter().map(u64::to_string).collect();
        self.ask(&format!("back {}", targets.join(",")), "back")
            .await
            .map(drop)
    }

    /// The handshakes since the last ask (and starts a new tally).
    async fn handshakes(&mut self) -> anyhow::Result<HandshakeTally> {
        let answer = self.ask("handshakes", "handshakes").await?;
        serde_json::from_str(&answer).context("bad handshakes answer")
    }

    pub(crate) async fn report(
        &mut self,
        phase: usize,
        finals: &[u64],
    ) -> anyhow::Result<PhaseTally> {
        let finals: Vec<String> = finals.iter().map(u64::to_string).collect();
        let answer = self
            .ask(&format!("report {phase} {}", finals.join(",")), "report")
            .await?;
        serde_json::from_str(&answer).context("bad report answer")
    }
}

/// Where and how messages are published.
pub(crate) enum PublishTo {
    /// `POST /publish` with the payload as body.
    Bare { url: String },
    /// `POST /api/v1/channels/{id}/messages {"body"}` with each publisher's token.
    Switchyard { url: String, tokens: Vec<String> },
}

enum PostOutcome {
    Sent,
    Busy,
    Failed(String),
    Refused(String),
}

async fn post_payload(client: &awc::Client, to: &PublishTo, payload: &Payload) -> PostOutcome {
    let sent = match to {
        PublishTo::Bare { url } => {
            client
                .post(url)
                .insert_header(("content-type", "text/plain"))
                .send_body(payload.encode())
                .await
        }
        PublishTo::Switchyard { url, tokens } => {
            let body = json!({"body": payload.encode()}).to_string();
            client
                .post(url)
                .insert_header(("content-type", "application/json"))
                .insert_header((
                    "authorization",
                    format!("Bearer {}", tokens[payload.publisher]),
                ))
                .send_body(body)
                .await
        }
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => return PostOutcome::Failed(error.to_string()),
    };
    let status = response.status();
    // Read the body so that the connection can be reused.
    let body = response.body().limit(1 << 20).await;
    if status.is_success() {
        PostOutcome::Sent
    } else if status.as_u16() == 429 || status.as_u16() == 503 {
        PostOutcome::Busy
    } else {
        let body = body.map_or_else(
            |_| Cow::Borrowed("?"),
            |body| Cow::Owned(String::from_utf8_lossy(&body).into_owned()),
        );
        PostOutcome::Refused(format!("{status}: {body}"))
    }
}

#[derive(Default, Clone)]
pub(crate) struct PublishTally {
    pub(crate) sent: u64,
    pub(crate) busy: u64,
    pub(crate) errors: u64,
    /// Fixed rate: messages sent later than their slot (the previous one was still running).
    late: u64,
    /// Post latency, µs: from a message's first try to its 2xx (busy retries included).
    pub(crate) latency: Histogram,
}

impl PublishTally {
    fn merge(&mut self, other: PublishTally) {
        self.sent += other.sent;
        self.busy += other.busy;
        self.errors += other.errors;
        self.late += other.late;
        self.latency.merge(&other.latency);
    }
}

/// When a phase's publishing stops.
#[derive(Clone)]
pub(crate) enum Until {
    /// After this long.
    Elapsed(Duration),
    /// Once this many messages have been posted over all publishers (a shared countdown).
    Count(Rc<std::cell::Cell<u64>>),
    /// Once the flag is raised (checked before each message).
    Raised(Rc<std::cell::Cell<bool>>),
}

impl Until {
    /// Whether the next message may go (and takes its place in a countdown); the deadline
    /// of [`Until::Elapsed`] is checked against each message's slot by the caller.
    fn next(&self) -> bool {
        match self {
            Until::Elapsed(_) => true,
            Until::Count(left) => {
                let n = left.get();
                left.set(n.saturating_sub(1));
                n > 0
            }
            Until::Raised(flag) => !flag.get(),
        }
    }
}

/// Posts message `n` of `publisher` until it is accepted; 429/503 and transport errors are
/// counted and retried (with a fresh send time), anything else ends the run.
async fn publish_one(
    client: &awc::Client,
    to: &PublishTo,
    phase: usize,
    publisher: usize,
    n: u64,
    tally: &mut PublishTally,
) -> anyhow::Result<()> {
    let first_try = Instant::now();
    loop {
        let payload = Payload {
            phase,
            publisher,
            n,
            sent_us: now_us(),
        };
        let pause = match post_payload(client, to, &payload).await {
            PostOutcome::Sent => {
                tally.sent += 1;
                tally.latency.record(first_try.elapsed().as_micros() as u64);
                return Ok(());
            }
            PostOutcome::Busy => {
                tally.busy += 1;
                BUSY_PAUSE
            }
            PostOutcome::Failed(error) => {
                tally.errors += 1;
                ensure!(
                    first_try.elapsed() < POST_GIVE_UP,
                    "publisher {publisher}: message {n} not accepted in {POST_GIVE_UP:?}: {error}"
                );
                ERROR_PAUSE
            }
            PostOutcome::Refused(answer) => {
                bail!("publisher {publisher}: message {n} refused: {answer}")
            }
        };
        actix_web::rt::time::sleep(pause).await;
    }
}

/// One phase's publishing: every publisher from its next number on, until `until`. Returns
/// the unix µs at the start, the publishing time and the publishers' tallies; `next_n` is
/// advanced past what was sent.
pub(crate) async fn publish_phase(
    client: &awc::Client,
    to: &Rc<PublishTo>,
    phase: usize,
    until: Until,
    rate: Option<u32>,
    next_n: &mut [u64],
) -> anyhow::Result<(u64, Duration, PublishTally)> {
    let publishers = next_n.len();
    let started_us = now_us();
    let started = Instant::now();
    let deadline = match until {
        Until::Elapsed(duration) => Some(started + duration),
        _ => None,
    };
    let tasks: Vec<_> = next_n
        .iter()
        .enumerate()
        .map(|(publisher, &first)| {
            let (client, to, until) = (client.clone(), to.clone(), until.clone());
            actix_web::rt::spawn(async move {
                let mut tally = PublishTally::default();
                let mut n = first;
                for k in 0u64.. {
                    let due = match rate {
                        // Publisher p's k-th slot: the publishers interleave evenly.
                        Some(rate) => {
                            started
                                + Duration::from_secs_f64(
                                    (k * publishers as u64 + publisher as u64) as f64
                                        / f64::from(rate),
                                )
                        }
                        None => Instant::now(),
                    };
                    if deadline.is_some_and(|deadline| due >= deadline) {
                        break;
                    }
                    if due > Instant::now() {
                        actix_web::rt::time::sleep_until(due.into()).await;
                    } else if rate.is_some() && k > 0 {
                        tally.late += 1;
                    }
                    if !until.next() {
                        break;
                    }
                    publish_one(&client, &to, phase, publisher, n, &mut tally).await?;
                    n += 1;
                }
                anyhow::Ok((tally, n))
            })
        })
        .collect();
    let mut total = PublishTally::default();
    for (task, next) in tasks.into_iter().zip(next_n.iter_mut()) {
        let (tally, n) = task.await.context("a publisher task panicked")??;
        total.merge(tally);
        *next = n;
    }
    Ok((started_us, started.elapsed(), total))
}

/// A running server under test.
struct Server {
    guard: ChildGuard,
    /// `host:port`.
    addr: SocketAddr,
    publish: Rc<PublishTo>,
    /// The subscribers' bearer tokens, one per line (none for the ceiling).
    tokens: Option<PathBuf>,
    /// Switchyard's `/metrics` (none for the ceiling).
    metrics: Option<String>,
    /// The ceiling's stdin: its end of file stops the ceiling.
    _stdin: Option<ChildStdin>,
}

async fn start_bare(args: &FanoutArgs) -> anyhow::Result<Server> {
    let mut guard = ChildGuard::spawn(
        "bare-broadcast",
        Command::new(std::env::current_exe()?)
            .arg("bare-broadcast")
            .args(["--bind", "127.0.0.1:0"])
            .args(["--buffer", &args.bare_buffer.to_string()])
            .args(args.bare_nodelay.then_some("--tcp-nodelay"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let stdin = guard.child_mut().stdin.take();
    let stdout = guard
        .child_mut()
        .stdout
        .take()
        .context("bare stdout not piped")?;
    let mut lines = lines_of(stdout);
    let first = tokio::time::timeout(Duration::from_secs(30), lines.recv())
        .await
        .map_err(|_| anyhow!("bare-broadcast printed no address in 30 s"))?
        .ok_or_else(|| anyhow!("bare-broadcast exited before printing its address"))?;
    let addr: SocketAddr = first
        .trim()
        .parse()
        .with_context(|| format!("bare-broadcast printed {first:?}, not an address"))?;
    Ok(Server {
        guard,
        addr,
        publish: Rc::new(PublishTo::Bare {
            url: format!("http://{addr}/publish"),
        }),
        tokens: None,
        metrics: None,
        _stdin: stdin,
    })
}

/// Registrations, invitations and joins in flight at once while setting up.
const SETUP_CONCURRENCY: usize = 64;

/// Starts `switchyard serve` on a temporary SQLite database and sets up the run: the
/// publishers `pub0..` (pub0 creates the channel) and one user per subscriber socket
/// (`sub0..`), each invited and joined. Password hashes are at argon2's least cost here
/// (`server.password_hash_memory_kib`): registering 10,000 users at the default cost would
/// take minutes of this machine's two cores, and no figure of this run includes a hash.
async fn start_switchyard(
    args: &FanoutArgs,
    dir: &Path,
    client: &awc::Client,
) -> anyhow::Result<Server> {
    let port = free_port()?;
    let guard = common::start_switchyard(
        &args.server_bin,
        dir,
        &format!("127.0.0.1:{port}"),
        port,
        "[gateway]\nheartbeat_interval = \"30s\"",
        &[
            ("SWITCHYARD__SERVER__PASSWORD_HASH_MEMORY_KIB", "8"),
            ("SWITCHYARD__SERVER__PASSWORD_HASH_PASSES", "1"),
        ],
        client,
    )
    .await?;
    let base = format!("http://127.0.0.1:{port}");
    let setting_up = Instant::now();

    let register = |username: String| {
        let url = format!("{base}/api/v1/auth/register");
        async move {
            let answer = call(
                client,
                &url,
                None,
                &json!({"username": username, "password": PASSWORD}),
            )
            .await?;
            anyhow::Ok((
                string_field(&answer, "fid")?,
                string_field(&answer, "token")?,
            ))
        }
    };
    let mut publishers = Vec::with_capacity(args.publishers);
    for k in 0..args.publishers {
        publishers.push(register(format!("pub{k}")).await?);
    }
    let (_, owner_token) = &publishers[0];
    let channel = call(
        client,
        &format!("{base}/api/v1/channels"),
        Some(owner_token),
        &json!({"name": "fanout"}),
    )
    .await?;
    let channel_id = string_field(&channel, "id")?;
    let channel_url = format!("{base}/api/v1/channels/{channel_id}");
    let admit = |fid: String, token: String| {
        let channel_url = &channel_url;
        async move {
            call(
                client,
                &format!("{channel_url}/invite"),
                Some(owner_token),
                &json!({"fid": fid}),
            )
            .await?;
            call(
                client,
                &format!("{channel_url}/join"),
                Some(&token),
                &json!({}),
            )
            .await?;
            anyhow::Ok(token)
        }
    };
    for (fid, token) in &publishers[1..] {
        admit(fid.clone(), token.clone()).await?;
    }
    let subscribers: Vec<String> = futures_util::stream::iter(0..args.clients)
        .map(|k| async move {
            let (fid, token) = register(format!("sub{k}")).await?;
            admit(fid, token).await
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, subscribers.join("\n"))?;
    println!(
        "switchyard  setup       {} subscribers and {} publishers registered, invited and joined in {:.1} s",
        args.clients,
        args.publishers,
        setting_up.elapsed().as_secs_f64()
    );
    Ok(Server {
        guard,
        addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        publish: Rc::new(PublishTo::Switchyard {
            url: format!("{channel_url}/messages"),
            tokens: publishers.into_iter().map(|(_, token)| token).collect(),
        }),
        tokens: Some(tokens),
        metrics: Some(format!("{base}/metrics")),
        _stdin: None,
    })
}

/// A counter's value in a Prometheus text exposition (the sum over its label sets when
/// `name` has no labels, or one label set named in full: `name{source="log"}`).
async fn counter(client: &awc::Client, url: &str, name: &str) -> anyhow::Result<f64> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|error| anyhow!("GET {url}: {error}"))?;
    let body = response.body().limit(16 << 20).await?;
    let text = std::str::from_utf8(&body).context("metrics are not UTF-8")?;
    Ok(text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(key, _)| {
            *key == name
                || (!name.contains('{')
                    && key
                        .strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{')))
        })
        .filter_map(|(_, value)| value.parse::<f64>().ok())
        .sum())
}

/// `VmRSS` of a process, bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .context("no VmRSS line")?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("bad VmRSS line")?;
    Ok(kib * 1024)
}

/// CPU used by the server and the clients processes over a window, in cores.
struct CpuWindow {
    started: Instant,
    server: Duration,
    clients: Duration,
}

impl CpuWindow {
    fn start(server: u32, clients: u32) -> CpuWindow {
        CpuWindow {
            started: Instant::now(),
            server: cpu_time(server),
            clients: cpu_time(clients),
        }
    }

    /// (server, clients) cores since the start.
    fn cores(&self, server: u32, clients: u32) -> (f64, f64) {
        let wall = self.started.elapsed().as_secs_f64().max(1e-6);
        (
            cpu_time(server).saturating_sub(self.server).as_secs_f64() / wall,
            cpu_time(clients).saturating_sub(self.clients).as_secs_f64() / wall,
        )
    }
}

struct PhaseResult {
    /// The phase tag.
    index: usize,
    label: String,
    published: PublishTally,
    publish_time: Duration,
    started_us: u64,
    tally: PhaseTally,
    /// Cores used by the server and by the clients process from the phase's start to its
    /// report (publishing and drain).
    cpu: (f64, f64),
}

impl PhaseResult {
    fn deliveries_per_second(&self) -> f64 {
        let Some(last) = self.tally.last_us else {
            return 0.0;
        };
        let window = last.saturating_sub(self.started_us).max(1) as f64 / 1e6;
        self.tally.deliveries as f64 / window
    }

    fn quantile_ms(&self, q: f64) -> Option<f64> {
        self.tally.latency.quantile(q).map(|us| us as f64 / 1000.0)
    }
}

struct TargetResult {
    kind: TargetKind,
    rss_before: u64,
    rss_after: u64,
    clients: usize,
    connect_time: Duration,
    /// The connect storm's upgrades.
    handshakes: HandshakeTally,
    /// The connect storm first, then the fixed-rate and saturation phases.
    phases: Vec<PhaseResult>,
    /// The reconnect storm (Switchyard only: the ceiling cannot resume).
    reconnect: Option<ReconnectResult>,
    /// The ceiling's count of sockets dropped for a full queue.
    server_dropped: Option<u64>,
}

impl TargetResult {
    fn rss_per_connection(&self) -> f64 {
        self.rss_after.saturating_sub(self.rss_before) as f64 / self.clients.max(1) as f64
    }

    fn phase(&self, index: usize) -> Option<&PhaseResult> {
        self.phases.iter().find(|phase| phase.index == index)
    }
}

/// What the reconnect storm measured.
struct ReconnectResult {
    /// The messages posted while the sockets were away, and how long that took.
    backlog: PublishTally,
    away_time: Duration,
    /// From "back" until every socket is live and has every message posted while away.
    back_time: Duration,
    handshakes: HandshakeTally,
    /// The phase: the backlog and what the publishers posted at `--rate` meanwhile.
    phase: PhaseResult,
    /// Replays served from the recent window and from the log, database pages read by
    /// replays, and database reads by the start-ups (memberships, stored cursors).
    replays_memory: f64,
    replays_log: f64,
    replay_reads: f64,
    connect_reads: f64,
    rss_after: u64,
}

/// Waits until the clients have every message of `phase` (`expected` deliveries), or none
/// arrived for [`DRAIN_QUIET`].
pub(crate) async fn drain(
    clients: &mut ClientsProcess,
    phase: usize,
    expected: u64,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let status = clients.status().await?;
        let delivered = status.deliveries.get(phase).copied().unwrap_or(0);
        if delivered >= expected
            || last.1.elapsed() >= DRAIN_QUIET
            || started.elapsed() >= DRAIN_LIMIT
        {
            return Ok(());
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Publishing that runs in the background until its flag is raised: the storms' steady
/// publishers.
struct Background {
    stop: Rc<std::cell::Cell<bool>>,
    task:
        actix_web::rt::task::JoinHandle<anyhow::Result<((u64, Duration, PublishTally), Vec<u64>)>>,
}

impl Background {
    fn start(
        client: &awc::Client,
        to: &Rc<PublishTo>,
        phase: usize,
        rate: u32,
        next_n: &[u64],
    ) -> Background {
        let stop = Rc::new(std::cell::Cell::new(false));
        let (client, to, until, mut next_n) = (
            client.clone(),
            to.clone(),
            Until::Raised(stop.clone()),
            next_n.to_vec(),
        );
        let task = actix_web::rt::spawn(async move {
            let outcome =
                publish_phase(&client, &to, phase, until, Some(rate), &mut next_n).await?;
            Ok((outcome, next_n))
        });
        Background { stop, task }
    }

    /// Stops it; `next_n` is advanced past what it sent.
    async fn finish(self, next_n: &mut [u64]) -> anyhow::Result<(u64, Duration, PublishTally)> {
        self.stop.set(true);
        let (outcome, after) = self.task.await.context("a publisher task panicked")??;
        next_n.copy_from_slice(&after);
        Ok(outcome)
    }
}

/// Polls the clients until `done` says so, printing progress every 5 s; past `limit` the run
/// is abandoned.
async fn wait_for_clients(
    server: &mut Server,
    clients: &mut ClientsProcess,
    what: &str,
    limit: Duration,
    done: impl Fn(&ClientStatus) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let mut reported = Instant::now();
    loop {
        server.guard.ensure_running()?;
        clients.guard.ensure_running()?;
        let status = clients.status().await?;
        if done(&status) {
            return Ok(());
        }
        let describe = || {
            format!(
                "{what}: {} open, {} live, {} caught up{}",
                status.open,
                status.live,
                status.caught_up,
                status
                    .last_error
                    .as_deref()
                    .map(|error| format!(" (last error: {error})"))
                    .unwrap_or_default()
            )
        };
        if reported.elapsed() >= Duration::from_secs(5) {
            eprintln!("fanout: {}", describe());
            reported = Instant::now();
        }
        ensure!(
            Instant::now() < deadline,
            "not done in {limit:?}: {}",
            describe()
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure(
    args: &FanoutArgs,
    kind: TargetKind,
    client: &awc::Client,
) -> anyhow::Result<TargetResult> {
    let dir = ScratchDir::create("fanout")?;
    let mut server = match kind {
        TargetKind::Bare => start_bare(args).await?,
        TargetKind::Switchyard => start_switchyard(args, &dir.0, client).await?,
    };
    let rss_before = rss_bytes(server.guard.pid())?;
    let mut next_n = vec![1u64; args.publishers];
    let mut phases = Vec::new();

    // The connect storm: every socket at once (--connect-concurrency handshakes in flight),
    // the publishers posting at --rate meanwhile.
    let url = format!("ws://{}/ws", server.addr);
    let cpu = CpuWindow::start(server.guard.pid(), 0);
    let publishing = Background::start(client, &server.publish, PHASE_CONNECT, args.rate, &next_n);
    let connecting = Instant::now();
    let mut clients = ClientsProcess::spawn(args, &url, server.tokens.as_deref())?;
    let all = args.clients as u64;
    wait_for_clients(
        &mut server,
        &mut clients,
        &format!("{}: connect storm", kind.name()),
        Duration::from_secs(60 + args.clients as u64 / 100),
        |status| status.live >= all,
    )
    .await?;
    let connect_time = connecting.elapsed();
    let (started_us, publish_time, published) = publishing.finish(&mut next_n).await?;
    let handshakes = clients.handshakes().await?;
    // Every socket is idle once nothing has arrived for DRAIN_QUIET.
    drain(&mut clients, PHASE_CONNECT, u64::MAX).await?;
    let rss_after = rss_bytes(server.guard.pid())?;
    let finals: Vec<u64> = next_n.iter().map(|n| n - 1).collect();
    phases.push(PhaseResult {
        index: PHASE_CONNECT,
        label: "connect".to_owned(),
        published,
        publish_time,
        started_us,
        tally: clients.report(PHASE_CONNECT, &finals).await?,
        cpu: cpu.cores(server.guard.pid(), clients.guard.pid()),
    });

    let duration = Duration::from_secs(args.seconds);
    for (phase, rate, label) in [
        (PHASE_FIXED, Some(args.rate), format!("{}/s", args.rate)),
        (PHASE_SATURATION, None, "saturation".to_owned()),
    ] {
        let cpu = CpuWindow::start(server.guard.pid(), clients.guard.pid());
        let (started_us, publish_time, published) = publish_phase(
            client,
            &server.publish,
            phase,
            Until::Elapsed(duration),
            rate,
            &mut next_n,
        )
        .await?;
        drain(&mut clients, phase, published.sent * all).await?;
        let finals: Vec<u64> = next_n.iter().map(|n| n - 1).collect();
        let tally = clients.report(phase, &finals).await?;
        phases.push(PhaseResult {
            index: phase,
            label,
            published,
            publish_time,
            started_us,
            tally,
            cpu: cpu.cores(server.guard.pid(), clients.guard.pid()),
        });
        server.guard.ensure_running()?;
    }

    let reconnect = match kind {
        TargetKind::Bare => None,
        TargetKind::Switchyard => {
            Some(reconnect_storm(args, client, &mut server, &mut clients, &mut next_n).await?)
        }
    };
    let server_dropped = match kind {
        TargetKind::Bare => {
            let mut response = client
                .get(format!("http://{}/stats", server.addr))
                .send()
                .await
                .map_err(|error| anyhow!("GET /stats: {error}"))?;
            let stats: Value = response.json().await.context("GET /stats")?;
            stats["dropped"].as_u64()
        }
        TargetKind::Switchyard => None,
    };
    // The clients first (they would reconnect to a dead server), then the server.
    drop(clients);
    drop(server);
    Ok(TargetResult {
        kind,
        rss_before,
        rss_after,
        clients: args.clients,
        connect_time,
        handshakes,
        phases,
        reconnect,
        server_dropped,
    })
}

/// The reconnect storm: every socket dropped at once (no close frame), `--storm-messages`
/// posted while they are away, then all come back at once and resume, while the publishers
/// post at `--rate`; until every socket is live and has every message posted while away.
async fn reconnect_storm(
    args: &FanoutArgs,
    client: &awc::Client,
    server: &mut Server,
    clients: &mut ClientsProcess,
    next_n: &mut [u64],
) -> anyhow::Result<ReconnectResult> {
    let metrics = server
        .metrics
        .clone()
        .context("the reconnect storm needs the server's /metrics")?;
    let counters = |client: awc::Client, metrics: String| async move {
        let mut values = [0.0; 4];
        for (value, name) in values.iter_mut().zip([
            "switchyard_gateway_replays_total{source=\"memory\"}",
            "switchyard_gateway_replays_total{source=\"log\"}",
            "switchyard_gateway_replay_reads_total",
            "switchyard_gateway_connect_reads_total",
        ]) {
            *value = counter(&client, &metrics, name).await?;
        }
        anyhow::Ok(values)
    };
    let all = args.clients as u64;
    let cpu = CpuWindow::start(server.guard.pid(), clients.guard.pid());
    clients.away().await?;
    wait_for_clients(
        server,
        clients,
        "reconnect storm, dropping",
        Duration::from_secs(30),
        |status| status.open == 0,
    )
    .await?;
    let (started_us, away_time, backlog) = publish_phase(
        client,
        &server.publish,
        PHASE_RECONNECT,
        Until::Count(Rc::new(std::cell::Cell::new(args.storm_messages))),
        None,
        next_n,
    )
    .await?;
    let targets: Vec<u64> = next_n.iter().map(|n| n - 1).collect();
    let before = counters(client.clone(), metrics.clone()).await?;
    clients.handshakes().await?;
    let publishing = Background::start(client, &server.publish, PHASE_RECONNECT, args.rate, next_n);
    let returning = Instant::now();
    clients.back(&targets).await?;
    wait_for_clients(
        server,
        clients,
        "reconnect storm",
        Duration::from_secs(120 + args.clients as u64 / 100),
        |status| status.live >= all && status.caught_up >= all,
    )
    .await?;
    let back_time = returning.elapsed();
    let handshakes = clients.handshakes().await?;
    let (_, steady_time, steady) = publishing.finish(next_n).await?;
    let after = counters(client.clone(), metrics).await?;
    let mut published = backlog.clone();
    published.merge(steady);
    drain(clients, PHASE_RECONNECT, published.sent * all).await?;
    let rss_after = rss_bytes(server.guard.pid())?;
    let finals: Vec<u64> = next_n.iter().map(|n| n - 1).collect();
    let tally = clients.report(PHASE_RECONNECT, &finals).await?;
    Ok(ReconnectResult {
        backlog,
        away_time,
        back_time,
        handshakes,
        phase: PhaseResult {
            index: PHASE_RECONNECT,
            label: "reconnect".to_owned(),
            published,
            publish_time: away_time + steady_time,
            started_us,
            tally,
            cpu: cpu.cores(server.guard.pid(), clients.guard.pid()),
        },
        replays_memory: after[0] - before[0],
        replays_log: after[1] - before[1],
        replay_reads: after[2] - before[2],
        connect_reads: after[3] - before[3],
        rss_after,
    })
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.2}ms"))
}

fn handshake_summary(handshakes: &HandshakeTally) -> String {
    let quantile = |q| handshakes.latency.quantile(q).map(|us| us as f64 / 1000.0);
    format!(
        "handshakes p50 {} p99 {}, {} answered 503, {} other 5xx",
        ms(quantile(0.5)),
        ms(quantile(0.99)),
        handshakes.refused,
        handshakes.server_errors
    )
}

fn print_phase(name: &str, phase: &PhaseResult) {
    let sent_rate = phase.published.sent as f64 / phase.publish_time.as_secs_f64();
    let t = &phase.tally;
    let mut notes = String::new();
    if let Some(p99) = phase.published.latency.quantile(0.99) {
        let _ = write!(notes, " post p99 {:.2}ms", p99 as f64 / 1000.0);
    }
    if phase.published.busy > 0 {
        let _ = write!(notes, " busy={}", phase.published.busy);
    }
    if phase.published.errors > 0 {
        let _ = write!(notes, " post-errors={}", phase.published.errors);
    }
    if phase.published.late > 0 {
        let _ = write!(notes, " late={}", phase.published.late);
    }
    if t.resume_failures > 0 {
        let _ = write!(notes, " resume-failed={}", t.resume_failures);
    }
    if t.lost > 0 {
        let _ = write!(notes, " lost={}", t.lost);
    }
    if t.malformed > 0 {
        let _ = write!(notes, " malformed={}", t.malformed);
    }
    let _ = write!(
        notes,
        " cpu: server {:.2}, clients {:.2} cores",
        phase.cpu.0, phase.cpu.1
    );
    // A socket of the connect storm starts at the head: what was posted before its Ready is
    // not owed to it, so gaps do not apply there.
    let gaps = match phase.index {
        PHASE_CONNECT => "-".to_owned(),
        _ => t.gaps.to_string(),
    };
    println!(
        "{name:<11} {:<11} {:>9.1} {:>13.0} {:>10} {:>10} {:>10} {:>8} {:>8} {:>7}{notes}",
        phase.label,
        sent_rate,
        phase.deliveries_per_second(),
        ms(phase.quantile_ms(0.50)),
        ms(phase.quantile_ms(0.99)),
        ms(phase.quantile_ms(0.999)),
        gaps,
        t.duplicates,
        t.reconnects,
    );
}

fn print_target(result: &TargetResult) {
    let name = result.kind.name();
    println!(
        "{name:<11} {:<11} {} sockets live in {:.1} s; {}",
        "connect",
        result.clients,
        result.connect_time.as_secs_f64(),
        handshake_summary(&result.handshakes),
    );
    println!(
        "{name:<11} {:<11} RSS {:.1} MiB before the clients, {:.1} MiB with {} idle sockets: {:.2} KiB per socket",
        "idle",
        result.rss_before as f64 / 1048576.0,
        result.rss_after as f64 / 1048576.0,
        result.clients,
        result.rss_per_connection() / 1024.0,
    );
    for phase in &result.phases {
        print_phase(name, phase);
    }
    if let Some(storm) = &result.reconnect {
        print_phase(name, &storm.phase);
        let resumes = result.clients.max(1) as f64;
        println!(
            "{name:<11} {:<11} {} sockets dropped; {} messages posted while away in {:.1} s; all live and caught up {:.1} s after they came back; {}",
            "reconnect",
            result.clients,
            storm.backlog.sent,
            storm.away_time.as_secs_f64(),
            storm.back_time.as_secs_f64(),
            handshake_summary(&storm.handshakes),
        );
        println!(
            "{name:<11} {:<11} replays from memory {:.0}, from the log {:.0}; database reads per resume: {:.2} at start-up (memberships, stored cursor) + {:.2} replay pages",
            "",
            storm.replays_memory,
            storm.replays_log,
            storm.connect_reads / resumes,
            storm.replay_reads / resumes,
        );
        println!(
            "{name:<11} {:<11} RSS {:.1} MiB with {} idle sockets after the storm: {:.2} KiB per socket",
            "idle",
            storm.rss_after as f64 / 1048576.0,
            result.clients,
            storm.rss_after.saturating_sub(result.rss_before) as f64 / resumes / 1024.0,
        );
    }
    if let Some(dropped) = result.server_dropped {
        println!(
            "{name:<11} {:<11} sockets dropped by the server for a full queue: {dropped}",
            ""
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn print_targets(
    args: &FanoutArgs,
    bare: Option<&TargetResult>,
    switchyard: Option<&TargetResult>,
) {
    let Some(sy) = switchyard else {
        println!("targets: switchyard not measured");
        return;
    };
    println!(
        "targets at {} subscribers (switchyard against the ceiling):",
        args.clients
    );
    let saturation = |result: &TargetResult| {
        result
            .phase(PHASE_SATURATION)
            .map(PhaseResult::deliveries_per_second)
    };
    match (bare.and_then(saturation), saturation(sy)) {
        (Some(ceiling), Some(ours)) if ceiling > 0.0 => {
            let ratio = ours / ceiling;
            println!(
                "  deliveries/s at saturation  {ratio:>6.2} of the ceiling   target >= 0.60   {}",
                verdict(ratio >= 0.60)
            );
        }
        _ => println!("  deliveries/s at saturation  no ceiling figure"),
    }
    let p99 = |result: &TargetResult| {
        result
            .phase(PHASE_FIXED)
            .and_then(|phase| phase.quantile_ms(0.99))
    };
    match (bare.and_then(p99), p99(sy)) {
        (Some(ceiling), Some(ours)) if ceiling > 0.0 => {
            let ratio = ours / ceiling;
            println!(
                "  p99 at {:>3} messages/s      {ratio:>6.2}x the ceiling    target <= 1.5x   {}",
                args.rate,
                verdict(ratio <= 1.5)
            );
            let sent = |result: &TargetResult| {
                result.phase(PHASE_FIXED).map_or(0.0, |phase| {
                    phase.published.sent as f64 / phase.publish_time.as_secs_f64()
                })
            };
            if let Some(bare) = bare {
                println!(
                    "    (messages actually sent: ceiling {:.1}/s, switchyard {:.1}/s)",
                    sent(bare),
                    sent(sy)
                );
            }
        }
        _ => println!("  p99 at {} messages/s  no ceiling figure", args.rate),
    }
    let errors: u64 = sy
        .phases
        .iter()
        .chain(sy.reconnect.as_ref().map(|storm| &storm.phase))
        .map(|phase| match phase.index {
            PHASE_CONNECT => phase.tally.duplicates,
            _ => phase.tally.gaps + phase.tally.duplicates,
        })
        .sum();
    println!(
        "  gaps and duplicates         {errors:>6}                 target 0         {}",
        verdict(errors == 0)
    );
    let connect = sy.connect_time.as_secs_f64();
    println!(
        "  connect storm, all live     {connect:>6.1} s               target <= 20 s   {}",
        verdict(connect <= 20.0)
    );
    // The connect storm's target is no 5xx at all; a 503 of the admission in the reconnect
    // storm is the documented answer to a thundering herd, any other 5xx never is.
    let server_errors = sy.handshakes.refused
        + sy.handshakes.server_errors
        + sy.reconnect
            .as_ref()
            .map_or(0, |storm| storm.handshakes.server_errors);
    println!(
        "  5xx (connect storm; non-503 in the reconnect storm) {server_errors:>3}     target 0         {}",
        verdict(server_errors == 0)
    );
    match &sy.reconnect {
        Some(storm) => {
            let back = storm.back_time.as_secs_f64();
            println!(
                "  reconnect storm, all back   {back:>6.1} s               target <= 30 s   {}",
                verdict(back <= 30.0)
            );
            println!(
                "    ({} handshakes answered 503 by the admission and retried, {} other 5xx)",
                storm.handshakes.refused, storm.handshakes.server_errors
            );
        }
        None => println!("  reconnect storm             not measured"),
    }
    let post_p99 = |phase: &PhaseResult| {
        phase
            .published
            .latency
            .quantile(0.99)
            .map(|us| us as f64 / 1000.0)
    };
    let calm = sy.phase(PHASE_FIXED).and_then(post_p99);
    for (label, phase) in [
        ("connect storm", sy.phase(PHASE_CONNECT)),
        (
            "reconnect storm",
            sy.reconnect.as_ref().map(|storm| &storm.phase),
        ),
    ] {
        if let (Some(calm), Some(storm)) = (calm, phase.and_then(post_p99)) {
            println!(
                "  post p99 in the {label:<15} {storm:.2} ms, {:.2}x the calm {}/s phase's {calm:.2} ms",
                storm / calm.max(0.001),
                args.rate
            );
        }
    }
    let kib = sy.rss_per_connection() / 1024.0;
    println!(
        "  RSS per idle socket         {kib:>6.2} KiB             target <= 16 KiB {}",
        verdict(kib <= 16.0)
    );
    if let Some(storm) = &sy.reconnect {
        let kib = storm.rss_after.saturating_sub(sy.rss_before) as f64
            / sy.clients.max(1) as f64
            / 1024.0;
        println!(
            "    after the reconnect storm {kib:>6.2} KiB             target <= 16 KiB {}",
            verdict(kib <= 16.0)
        );
    }
}

async fn run_targets(args: &FanoutArgs) -> anyhow::Result<()> {
    ensure!(
        args.clients > 0 && args.publishers > 0 && args.rate > 0 && args.seconds > 0,
        "--clients, --publishers, --rate and --seconds must be positive"
    );
    ensure!(
        (1..=250).contains(&args.source_addresses),
        "--source-addresses must be 1..=250"
    );
    let client = awc::Client::builder()
        .connector(awc::Connector::new().limit(0))
        .timeout(Duration::from_secs(30))
        .disable_redirects()
        .finish();
    println!(
        "fan-out: {} subscribers of one channel ({} client threads, {} source addresses), {} publishers, {} s per phase; ceiling: bare actix-ws broadcast, {} frames per socket",
        args.clients,
        args.client_threads,
        args.source_addresses,
        args.publishers,
        args.seconds,
        args.bare_buffer
    );
    println!(
        "{:<11} {:<11} {:>9} {:>13} {:>10} {:>10} {:>10} {:>8} {:>8} {:>7}",
        "target",
        "phase",
        "sent/s",
        "deliveries/s",
        "p50",
        "p99",
        "p99.9",
        "gaps",
        "dups",
        "reconn"
    );
    let kinds: Vec<TargetKind> = match args.only {
        Some(kind) => vec![kind],
        None => vec![TargetKind::Bare, TargetKind::Switchyard],
    };
    let mut results = Vec::new();
    let mut failed = false;
    for kind in kinds {
        match measure(args, kind, &client).await {
            Ok(result) => {
                print_target(&result);
                results.push(result);
            }
            Err(error) => {
                println!("{:<11} failed: {error:#}", kind.name());
                failed = true;
            }
        }
    }
    let find = |kind| results.iter().find(|result| result.kind == kind);
    print_targets(args, find(TargetKind::Bare), find(TargetKind::Switchyard));
    ensure!(!failed, "a target could not be measured");
    Ok(())
}

/// `switchyard-bench fanout`: the coordinator. An interrupt (Ctrl-C, SIGTERM) ends the run;
/// the child processes are killed on every way out.
pub async fn run(args: FanoutArgs) -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = run_targets(&args) => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = terminate.recv() => bail!("terminated"),
    }
}

// ---------------------------------------------------------------------------------------------
// The clients process
// ---------------------------------------------------------------------------------------------

/// A request from the control loop to a client thread.
enum Control {
    Status(oneshot::Sender<ClientStatus>),
    /// Drop every socket (true) and keep them away, or let them come back (false) with the
    /// publishers' last numbers posted meanwhile.
    Away(bool, Vec<u64>, oneshot::Sender<()>),
    Handshakes(oneshot::Sender<HandshakeTally>),
    Report {
        phase: usize,
        finals: Vec<u64>,
        reply: oneshot::Sender<PhaseTally>,
    },
}

/// One client thread's sockets and tallies (single-threaded: `Rc<RefCell<_>>`).
struct Worker {
    url: String,
    /// Each socket's bearer token.
    tokens: Vec<String>,
    publishers: usize,
    /// Handshakes in progress; a socket holds a permit until Ready.
    permits: Semaphore,
    /// True while the sockets are to stay away (the reconnect storm).
    away: tokio::sync::watch::Sender<bool>,
    state: RefCell<WorkerState>,
}

struct WorkerState {
    phases: Vec<PhaseTally>,
    /// The phase reported last: socket events that carry no payload (reconnects, losses)
    /// count towards the phase after it.
    current_phase: usize,
    /// The last number received, per (socket, publisher).
    last_n: Vec<u64>,
    ready: u64,
    open: u64,
    live: u64,
    handshakes: HandshakeTally,
    /// The reconnect storm: each publisher's last number posted while the sockets were away
    /// (empty otherwise), and which sockets have all of them.
    targets: Vec<u64>,
    caught: Vec<bool>,
    caught_up: u64,
    last_error: Option<String>,
}

impl WorkerState {
    fn new(sockets: usize, publishers: usize) -> WorkerState {
        WorkerState {
            phases: vec![PhaseTally::default(); MAX_PHASES],
            current_phase: 0,
            last_n: vec![0; sockets * publishers],
            ready: 0,
            open: 0,
            live: 0,
            handshakes: HandshakeTally::default(),
            targets: Vec::new(),
            caught: vec![false; sockets],
            caught_up: 0,
            last_error: None,
        }
    }

    fn current(&mut self) -> &mut PhaseTally {
        &mut self.phases[self.current_phase]
    }

    fn deliver(&mut self, socket: usize, publishers: usize, payload: Payload, now_us: u64) {
        if payload.publisher >= publishers {
            self.current().malformed += 1;
            return;
        }
        let tally = &mut self.phases[payload.phase];
        tally.deliveries += 1;
        tally.first_us.get_or_insert(now_us);
        tally.last_us = Some(now_us);
        tally.latency.record(now_us.saturating_sub(payload.sent_us));
        let last = &mut self.last_n[socket * publishers + payload.publisher];
        if payload.n > *last {
            tally.gaps += payload.n - *last - 1;
            *last = payload.n;
        } else {
            tally.duplicates += 1;
        }
        self.check_caught_up(socket);
    }

    /// Counts `socket` as caught up once it has every message up to the targets.
    fn check_caught_up(&mut self, socket: usize) {
        let publishers = self.targets.len();
        if publishers == 0 || self.caught[socket] {
            return;
        }
        let last = &self.last_n[socket * publishers..(socket + 1) * publishers];
        if last
            .iter()
            .zip(&self.targets)
            .all(|(last, target)| last >= target)
        {
            self.caught[socket] = true;
            self.caught_up += 1;
        }
    }

    /// Closes the books of `phase`: what each socket has not received up to each publisher's
    /// last number counts as gaps (and is not expected any more).
    fn report(&mut self, phase: usize, finals: &[u64]) -> PhaseTally {
        let mut missing = 0;
        for per_socket in self.last_n.chunks_mut(finals.len().max(1)) {
            for (last, &fin) in per_socket.iter_mut().zip(finals) {
                if *last < fin {
                    missing += fin - *last;
                    *last = fin;
                }
            }
        }
        self.phases[phase].gaps += missing;
        self.current_phase = (phase + 1).min(MAX_PHASES - 1);
        self.phases[phase].clone()
    }
}

/// What a received text frame asks of the socket.
enum Reaction {
    Nothing,
    Heartbeat,
    Ready,
}

/// One socket's identity across its reconnections.
struct Link {
    /// Index within the thread.
    socket: usize,
    /// The last log `seq` received (from Ready or an event): where a Resume starts.
    last_seq: Option<u64>,
    ready: bool,
    /// Open and past Ready or Resumed.
    live: bool,
    /// When the current connection attempt began.
    began: Instant,
    /// Reconnect with Resume rather than Identify.
    resume: bool,
}

/// How a socket ended.
enum Ending {
    Closed(u16, String),
    Lost(String),
    /// Dropped on purpose (the reconnect storm).
    Away,
    /// The connection or the upgrade failed (a 503 of the admission among them): retried
    /// after a pause, not counted as lost.
    NotOpened(String),
}

/// What awc's WebSocket connection is (a `Framed` of a crate this one does not depend on):
/// frames in, messages out.
trait Socket:
    Stream<Item = Result<Frame, WsProtocolError>> + Sink<Message, Error = WsProtocolError> + Unpin
{
}

impl<S> Socket for S where
    S: Stream<Item = Result<Frame, WsProtocolError>>
        + Sink<Message, Error = WsProtocolError>
        + Unpin
{
}

impl Worker {
    fn on_text(&self, link: &mut Link, text: &[u8]) -> Reaction {
        let mut state = self.state.borrow_mut();
        let Ok(envelope) = serde_json::from_slice::<Envelope>(text) else {
            state.current().malformed += 1;
            return Reaction::Nothing;
        };
        let data = envelope.d.map_or("null", RawValue::get);
        match (envelope.n.as_ref(), envelope.op) {
            ("core", 11) => Reaction::Heartbeat,
            // Ready, or Resumed after a resume's replay: both carry the seq they reach.
            ("chat", 2) | ("core", 10) => {
                if let Ok(ready) = serde_json::from_str::<ReadyData>(data) {
                    link.last_seq = link.last_seq.max(ready.seq);
                }
                if !link.ready {
                    link.ready = true;
                    state.ready += 1;
                }
                if !link.live {
                    link.live = true;
                    state.live += 1;
                    let took = link.began.elapsed().as_micros() as u64;
                    state.handshakes.latency.record(took);
                }
                Reaction::Ready
            }
            ("chat", 0) => {
                let Ok(event) = serde_json::from_str::<EventData>(data) else {
                    state.current().malformed += 1;
                    return Reaction::Nothing;
                };
                link.last_seq = link.last_seq.max(event.seq);
                if event.kind != "message.new" {
                    return Reaction::Nothing;
                }
                let payload = event
                    .content
                    .and_then(|content| serde_json::from_str::<MessageContent>(content.get()).ok())
                    .and_then(|content| Payload::parse(&content.body));
                match payload {
                    Some(payload) => {
                        state.deliver(link.socket, self.publishers, payload, now_us());
                    }
                    None => state.current().malformed += 1,
                }
                Reaction::Nothing
            }
            _ => Reaction::Nothing,
        }
    }

    /// Hello, Identify or Resume, then frames until the socket ends.
    async fn converse(
        &self,
        link: &mut Link,
        socket: &mut impl Socket,
        permit: tokio::sync::SemaphorePermit<'_>,
    ) -> Ending {
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, socket.next()).await {
            Err(_) => return Ending::Lost(format!("no Hello in {HELLO_TIMEOUT:?}")),
            Ok(None) => return Ending::Lost("closed before Hello".into()),
            Ok(Some(Err(error))) => return Ending::Lost(format!("before Hello: {error}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let interval = match hello {
            Frame::Text(bytes) => serde_json::from_slice::<Envelope>(&bytes)
                .ok()
                .filter(|envelope| envelope.n == "core" && envelope.op == 1)
                .and_then(|envelope| envelope.d)
                .and_then(|data| serde_json::from_str::<HelloData>(data.get()).ok())
                .map(|hello| Duration::from_millis(hello.heartbeat_interval.max(1000))),
            Frame::Close(reason) => return closed(reason),
            _ => None,
        };
        let Some(interval) = interval else {
            return Ending::Lost("the first frame was not Hello".into());
        };
        let greeting = match (link.resume, link.last_seq) {
            (true, Some(seq)) => resume_frame(seq, &self.tokens[link.socket]),
            _ => identify_frame(&self.tokens[link.socket]),
        };
        if let Err(error) = socket.send(Message::Text(greeting.into())).await {
            return Ending::Lost(format!("sending Identify/Resume: {error}"));
        }
        let mut permit = Some(permit);
        let mut away = self.away.subscribe();
        let mut heartbeat =
            tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            let outgoing = tokio::select! {
                frame = socket.next() => match frame {
                    None => return Ending::Lost("ended without a close frame".into()),
                    Some(Err(error)) => return Ending::Lost(error.to_string()),
                    Some(Ok(Frame::Text(bytes) | Frame::Binary(bytes))) => {
                        match self.on_text(link, &bytes) {
                            Reaction::Nothing => None,
                            Reaction::Heartbeat => Some(Message::Text(heartbeat_frame().into())),
                            Reaction::Ready => {
                                permit = None;
                                None
                            }
                        }
                    }
                    Some(Ok(Frame::Ping(data))) => Some(Message::Pong(data)),
                    Some(Ok(Frame::Close(reason))) => return closed(reason),
                    Some(Ok(Frame::Pong(_) | Frame::Continuation(_))) => None,
                },
                _ = heartbeat.tick() => Some(Message::Text(heartbeat_frame().into())),
                _ = away.wait_for(|away| *away) => return Ending::Away,
            };
            if let Some(message) = outgoing {
                if let Err(error) = socket.send(message).await {
                    return Ending::Lost(format!("sending: {error}"));
                }
            }
            // Ready or Resumed came: let the next socket start its handshake.
            if link.live {
                drop(permit.take());
            }
        }
    }

    /// Counts how a socket ended; true when it should reconnect at once (a 4000 close, to
    /// resume, or a 4010, to start afresh), false when after a pause.
    fn settle(&self, link: &mut Link, ending: Ending) -> bool {
        let mut state = self.state.borrow_mut();
        if link.live {
            link.live = false;
            state.live -= 1;
        }
        match ending {
            Ending::Away => {
                state.current().reconnects += 1;
                link.resume = link.last_seq.is_some();
                return true;
            }
            Ending::Closed(4000, _) => {
                state.current().reconnects += 1;
                link.resume = true;
                return true;
            }
            Ending::Closed(4010, _) => {
                state.current().resume_failures += 1;
                link.resume = false;
                return true;
            }
            Ending::Closed(code, reason) => {
                state.current().lost += 1;
                state.last_error = Some(format!("closed {code} {reason}"));
            }
            Ending::Lost(error) => {
                if link.ready {
                    state.current().lost += 1;
                }
                state.last_error = Some(error);
            }
            Ending::NotOpened(error) => state.last_error = Some(error),
        }
        link.resume = link.ready && link.last_seq.is_some();
        false
    }

    /// Keeps socket `link.socket` connected for the life of the process.
    async fn keep_connected(self: Rc<Self>, client: awc::Client, socket: usize) {
        let mut link = Link {
            socket,
            last_seq: None,
            ready: false,
            live: false,
            began: Instant::now(),
            resume: false,
        };
        let mut backoff = Duration::from_millis(50);
        let mut away = self.away.subscribe();
        loop {
            // Away (the reconnect storm): back when told, all at once.
            if away.wait_for(|away| !*away).await.is_err() {
                return;
            }
            let ending = {
                let Ok(permit) = self.permits.acquire().await else {
                    return;
                };
                link.began = Instant::now();
                match client
                    .ws(self.url.as_str())
                    .max_frame_size(1 << 20)
                    .connect()
                    .await
                {
                    Ok((_, mut ws)) => {
                        self.state.borrow_mut().open += 1;
                        let ending = self.converse(&mut link, &mut ws, permit).await;
                        self.state.borrow_mut().open -= 1;
                        ending
                    }
                    Err(error) => {
                        if let awc::error::WsClientError::InvalidResponseStatus(status) = &error {
                            let mut state = self.state.borrow_mut();
                            if status.as_u16() == 503 {
                                state.handshakes.refused += 1;
                            } else if status.is_server_error() {
                                state.handshakes.server_errors += 1;
                            }
                        }
                        Ending::NotOpened(format!("connect: {error}"))
                    }
                }
            };
            if self.settle(&mut link, ending) {
                backoff = Duration::from_millis(50);
                continue;
            }
            actix_web::rt::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

fn closed(reason: Option<CloseReason>) -> Ending {
    match reason {
        Some(reason) => Ending::Closed(
            u16::from(reason.code),
            reason.description.unwrap_or_default(),
        ),
        None => Ending::Closed(u16::from(CloseCode::Normal), String::new()),
    }
}

/// A client thread: its own actix System, `sockets` sockets, spread over the source
/// addresses, answering the control loop.
fn spawn_worker(
    index: usize,
    args: &ClientsArgs,
    tokens: Vec<String>,
) -> anyhow::Result<mpsc::UnboundedSender<Control>> {
    let sockets = tokens.len();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let url = args.url.clone();
    let publishers = args.publishers;
    let concurrency = args.connect_concurrency.max(1);
    let reconnect_concurrency = args.reconnect_concurrency.max(1);
    let sources = args.source_addresses.max(1);
    std::thread::Builder::new()
        .name(format!("fanout-client-{index}"))
        .spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let worker = Rc::new(Worker {
                    url,
                    tokens,
                    publishers,
                    permits: Semaphore::new(concurrency),
                    away: tokio::sync::watch::Sender::new(false),
                    state: RefCell::new(WorkerState::new(sockets, publishers)),
                });
                let clients: Vec<awc::Client> = (0..sources)
                    .map(|k| {
                        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k));
                        awc::Client::builder()
                            .connector(awc::Connector::new().limit(0).local_address(source))
                            .timeout(Duration::from_secs(30))
                            .finish()
                    })
                    .collect();
                for socket in 0..sockets {
                    let client = clients[socket % clients.len()].clone();
                    actix_web::rt::spawn(worker.clone().keep_connected(client, socket));
                }
                while let Some(control) = rx.recv().await {
                    let mut state = worker.state.borrow_mut();
                    match control {
                        Control::Status(reply) => {
                            let _ = reply.send(ClientStatus {
                                ready: state.ready,
                                open: state.open,
                                live: state.live,
                                caught_up: state.caught_up,
                                deliveries: state.phases.iter().map(|p| p.deliveries).collect(),
                                last_error: state.last_error.clone(),
                            });
                        }
                        Control::Report {
                            phase,
                            finals,
                            reply,
                        } => {
                            let _ = reply.send(state.report(phase, &finals));
                        }
                        Control::Away(away, targets, reply) => {
                            if !away {
                                // The first return widens the handshake slots.
                                let have = worker.permits.available_permits();
                                if concurrency < reconnect_concurrency && have <= concurrency {
                                    worker
                                        .permits
                                        .add_permits(reconnect_concurrency - concurrency);
                                }
                                state.targets = targets;
                                state.caught = vec![false; sockets];
                                state.caught_up = 0;
                                for socket in 0..sockets {
                                    state.check_caught_up(socket);
                                }
                            }
                            worker.away.send_replace(away);
                            let _ = reply.send(());
                        }
                        Control::Handshakes(reply) => {
                            let _ = reply.send(std::mem::take(&mut state.handshakes));
                        }
                    }
                }
            });
        })?;
    Ok(tx)
}

/// Parses `report <phase> <n0>,<n1>,…`.
fn parse_report(rest: &str, publishers: usize) -> anyhow::Result<(usize, Vec<u64>)> {
    let (phase, finals) = rest.split_once(' ').context("report <phase> <finals>")?;
    let phase: usize = phase.parse().context("bad phase")?;
    ensure!(phase < MAX_PHASES, "phase {phase} out of range");
    Ok((phase, parse_numbers(finals, publishers)?))
}

/// Parses `<n0>,<n1>,…`, one number per publisher.
fn parse_numbers(text: &str, publishers: usize) -> anyhow::Result<Vec<u64>> {
    let numbers = text
        .split(',')
        .map(|n| n.trim().parse::<u64>().context("bad number"))
        .collect::<anyhow::Result<Vec<u64>>>()?;
    ensure!(
        numbers.len() == publishers,
        "expected {publishers} numbers, one per publisher"
    );
    Ok(numbers)
}

/// `switchyard-bench fanout-clients`: the client threads, and the control loop on this
/// thread: one command per stdin line, one answer per stdout line.
///
/// ```text
///  status                    → status {"ready","open","live","caught_up","deliveries":[per
///                                      phase],"last_error"}
///  report <phase> <n0>,<n1>… → report {PhaseTally}   (n_p: publisher p's last sent number)
///  away                      → away     (every socket dropped, no close frame; they stay away)
///  back <n0>,<n1>…           → back     (all come back and resume; a socket is caught up
///                                        once it has message n_p of each publisher p)
///  handshakes                → handshakes {HandshakeTally}   (since the last ask)
///  quit, or end of file      → exit
/// ```
pub async fn run_clients(args: ClientsArgs) -> anyhow::Result<()> {
    ensure!(
        args.threads > 0 && args.publishers > 0,
        "--threads and --publishers must be positive"
    );
    let mut tokens: Vec<String> = match &args.tokens {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .lines()
            .map(str::to_owned)
            .collect(),
        None => vec![String::new(); args.clients],
    };
    ensure!(
        tokens.len() >= args.clients,
        "{} tokens for {} sockets",
        tokens.len(),
        args.clients
    );
    tokens.truncate(args.clients);
    let mut tokens = tokens.into_iter();
    let workers = (0..args.threads)
        .map(|index| {
            // Sockets split evenly; the first threads take the remainder.
            let sockets =
                args.clients / args.threads + usize::from(index < args.clients % args.threads);
            spawn_worker(index, &args, tokens.by_ref().take(sockets).collect())
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut commands = lines_of(std::io::stdin());
    let mut stdout = std::io::stdout();
    while let Some(line) = commands.recv().await {
        let (command, rest) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        let answer = match command {
            "status" => {
                let mut total = ClientStatus::default();
                for worker in &workers {
                    let (reply, answer) = oneshot::channel();
                    worker
                        .send(Control::Status(reply))
                        .map_err(|_| anyhow!("a client thread ended"))?;
                    total.merge(answer.await.context("a client thread ended")?);
                }
                format!("status {}", serde_json::to_string(&total)?)
            }
            "report" => {
                let (phase, finals) = parse_report(rest, args.publishers)?;
                let mut total = PhaseTally::default();
                for worker in &workers {
                    let (reply, answer) = oneshot::channel();
                    worker
                        .send(Control::Report {
                            phase,
                            finals: finals.clone(),
                            reply,
                        })
                        .map_err(|_| anyhow!("a client thread ended"))?;
                    total.merge(&answer.await.context("a client thread ended")?);
                }
                format!("report {}", serde_json::to_string(&total)?)
            }
            "away" | "back" => {
                let away = command == "away";
                let targets = match away {
                    true => Vec::new(),
                    false => parse_numbers(rest, args.publishers)?,
                };
                for worker in &workers {
                    let (reply, answer) = oneshot::channel();
                    worker
                        .send(Control::Away(away, targets.clone(), reply))
                        .map_err(|_| anyhow!("a client thread ended"))?;
                    answer.await.context("a client thread ended")?;
                }
                command.to_owned()
            }
            "handshakes" => {
                let mut total = HandshakeTally::default();
                for worker in &workers {
                    let (reply, answer) = oneshot::channel();
                    worker
                        .send(Control::Handshakes(reply))
                        .map_err(|_| anyhow!("a client thread ended"))?;
                    total.merge(&answer.await.context("a client thread ended")?);
                }
                format!("handshakes {}", serde_json::to_string(&total)?)
            }
            "quit" => break,
            other => bail!("unknown command {other:?}"),
        };
        writeln!(stdout, "{answer}")?;
        stdout.flush()?;
    }
    // The client threads hold thousands of sockets; the process exit closes them all.
    std::process::exit(0)
}

// ---------------------------------------------------------------------------------------------
// The ceiling: bare-broadcast
// ---------------------------------------------------------------------------------------------

struct Bare {
    registry: Mutex<Registry>,
    buffer: usize,
    heartbeat_interval: u64,
    next_socket: AtomicU64,
    dropped: AtomicU64,
}

struct Registry {
    /// The last publish's number (the frames' `seq` and `s`).
    seq: u64,
    /// Each socket's queue of shared frames.
    sockets: HashMap<u64, mpsc::Sender<Bytes>>,
}

impl Bare {
    /// The registry is consistent after any panic (each update is one map operation or one
    /// counter), so a poisoned lock is used as is.
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn bare_publish(body: Bytes, bare: web::Data<Bare>) -> HttpResponse {
    let Ok(payload) = std::str::from_utf8(&body) else {
        return HttpResponse::BadRequest().finish();
    };
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let mut registry = bare.registry();
    registry.seq += 1;
    let seq = registry.seq;
    let frame = json!({
        "n": "chat",
        "op": 0,
        "d": {
            "type": "message.new",
            "seq": seq,
            "channel": "fanout@bare",
            "sender": "pub@bare",
            "ts": ts,
            "content": {"message_id": format!("m{seq}"), "body": payload},
        },
        "s": seq,
    });
    let frame = Bytes::from(frame.to_string());
    let mut dropped = 0;
    registry
        .sockets
        .retain(|_, queue| match queue.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dropped += 1;
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    drop(registry);
    bare.dropped.fetch_add(dropped, Ordering::Relaxed);
    HttpResponse::Created().json(json!({"message_id": format!("m{seq}"), "seq": seq}))
}

async fn bare_stats(bare: web::Data<Bare>) -> HttpResponse {
    let registry = bare.registry();
    HttpResponse::Ok().json(json!({
        "sockets": registry.sockets.len(),
        "published": registry.seq,
        "dropped": bare.dropped.load(Ordering::Relaxed),
    }))
}

async fn bare_ws(
    req: HttpRequest,
    body: web::Payload,
    bare: web::Data<Bare>,
) -> actix_web::Result<HttpResponse> {
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    actix_web::rt::spawn(bare_socket(session, stream, bare.into_inner()));
    Ok(response)
}

/// Sends a shared frame as a text message. `ByteString`, the type `Session::text` takes, is
/// not re-exported by actix-ws, so it is reached through `Message::Text`; the conversion
/// checks UTF-8 and shares the buffer.
async fn send_shared(session: &mut actix_ws::Session, frame: Bytes) -> anyhow::Result<()> {
    let actix_ws::Message::Text(text) =
        actix_ws::Message::Text(frame.try_into().context("frames are JSON text")?)
    else {
        unreachable!("constructed as Text just above");
    };
    session.text(text).await?;
    Ok(())
}

/// One socket of the ceiling: Hello and Ready, then frames from its queue out and heartbeat
/// ACKs; a queue closed by the publisher (full) closes the socket with 4000.
async fn bare_socket(
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    bare: Arc<Bare>,
) {
    let mut s: u64 = 0;
    let hello =
        json!({"n": "core", "op": 1, "d": {"heartbeat_interval": bare.heartbeat_interval}, "s": s});
    s += 1;
    let ready = json!({"n": "chat", "op": 2, "d": {"fid": "sub@bare", "session_id": "bare", "channels": ["fanout@bare"], "seq": 0}, "s": s});
    if session.text(hello.to_string()).await.is_err()
        || session.text(ready.to_string()).await.is_err()
    {
        return;
    }
    let (queue, mut frames) = mpsc::channel(bare.buffer.max(1));
    let id = bare.next_socket.fetch_add(1, Ordering::Relaxed);
    bare.registry().sockets.insert(id, queue);
    let close = loop {
        tokio::select! {
            frame = frames.recv() => match frame {
                Some(frame) => {
                    if send_shared(&mut session, frame).await.is_err() {
                        break None;
                    }
                }
                None => break Some(CloseReason {
                    code: CloseCode::Other(4000),
                    description: Some("send buffer full".into()),
                }),
            },
            message = stream.recv() => match message {
                Some(Ok(actix_ws::Message::Text(text))) => {
                    match serde_json::from_str::<Envelope>(&text) {
                        Ok(envelope) if envelope.n == "core" && envelope.op == 0 => {
                            s += 1;
                            let ack = json!({"n": "core", "op": 7, "d": [], "s": s});
                            if session.text(ack.to_string()).await.is_err() {
                                break None;
                            }
                        }
                        Ok(envelope) if envelope.n == "core" && envelope.op == 5 => {
                            break Some(CloseReason {
                                code: CloseCode::Other(4010),
                                description: Some("this server cannot resume".into()),
                            });
                        }
                        _ => {}
                    }
                }
                Some(Ok(actix_ws::Message::Ping(data))) => {
                    if session.pong(&data).await.is_err() {
                        break None;
                    }
                }
                Some(Ok(actix_ws::Message::Close(_))) | Some(Err(_)) | None => break None,
                Some(Ok(_)) => {}
            },
        }
    };
    bare.registry().sockets.remove(&id);
    // The peer may be gone already; nothing to do about a failed close.
    let _ = session.close(close).await;
}

/// `switchyard-bench bare-broadcast`: the ceiling server. Prints its address on the first
/// line of stdout; stops at the end of its stdin (when the coordinator goes away).
pub async fn run_bare(args: BareArgs) -> anyhow::Result<()> {
    let bare = web::Data::new(Bare {
        registry: Mutex::new(Registry {
            seq: 0,
            sockets: HashMap::new(),
        }),
        buffer: args.buffer,
        heartbeat_interval: args.heartbeat_interval,
        next_socket: AtomicU64::new(0),
        dropped: AtomicU64::new(0),
    });
    let server = HttpServer::new({
        let bare = bare.clone();
        move || {
            App::new()
                .app_data(bare.clone())
                .route("/ws", web::get().to(bare_ws))
                .route("/publish", web::post().to(bare_publish))
                .route("/stats", web::get().to(bare_stats))
        }
    })
    .shutdown_timeout(1)
    .tcp_nodelay(args.tcp_nodelay)
    .bind(&args.bind)
    .with_context(|| format!("cannot bind {}", args.bind))?;
    let addr = *server.addrs().first().context("bound to no address")?;
    let server = server.run();
    let handle = server.handle();
    let mut stdin = lines_of(std::io::stdin());
    actix_web::rt::spawn(async move {
        while stdin.recv().await.is_some() {}
        handle.stop(false).await;
    });
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{addr}")?;
    stdout.flush()?;
    server.await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_monotonic_and_close() {
        let mut previous = 0;
        for value in (0..2_000_000u64).step_by(7).chain([u64::MAX / 2, u64::MAX]) {
            let bucket = Histogram::bucket(value);
            assert!(bucket >= previous && bucket < BUCKETS, "value {value}");
            previous = bucket;
            let middle = Histogram::value_of(bucket);
            let error = middle.abs_diff(value) as f64 / value.max(1) as f64;
            assert!(error <= 1.0 / 64.0, "value {value} → {middle}");
        }
    }

    #[test]
    fn quantiles_and_wire_form() {
        let mut histogram = Histogram::default();
        for value in 1..=1000 {
            histogram.record(value);
        }
        let back: Histogram =
            serde_json::from_str(&serde_json::to_string(&histogram).expect("serialises"))
                .expect("parses");
        assert_eq!(back.total, 1000);
        let p50 = back.quantile(0.5).expect("not empty");
        assert!((492..=508).contains(&p50), "{p50}");
        assert!(back.quantile(0.999).expect("not empty") >= 990);
    }

    #[test]
    fn gaps_duplicates_and_tails() {
        let mut state = WorkerState::new(1, 2);
        for n in [1, 2, 4, 4, 3, 5] {
            let payload = Payload {
                phase: 0,
                publisher: 1,
                n,
                sent_us: 0,
            };
            assert_eq!(Payload::parse(&payload.encode()), Some(payload));
            state.deliver(0, 2, payload, 10);
        }
        let tally = state.report(0, &[2, 7]);
        // 3 skipped then late (a gap and a duplicate), 4 twice, 6 and 7 never; publisher 0's
        // two messages never came.
        assert_eq!(
            (tally.deliveries, tally.gaps, tally.duplicates),
            (6, 1 + 2 + 2, 2)
        );
    }
}
