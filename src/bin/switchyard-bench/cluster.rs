//! `cluster`: several `switchyard serve` nodes on one PostgreSQL (DESIGN §7), as processes on
//! this machine, against one node with `cluster.enabled = false` on the same PostgreSQL.
//!
//! ```text
//!  coordinator (switchyard-bench cluster)
//!   │ per configuration: a fresh PostgreSQL database (dropped after), then
//!   ├─▶ node0 … node{n-1}: release `switchyard serve` on 127.0.0.1:<port>, cluster.enabled,
//!   │     one key file, node_id "node<i>", lease_ttl --lease-ttl (2 s)
//!   │     ▲ POST /api/v1/channels/{id}/messages   appends: --clients keep-alive HTTP/1.1
//!   │     │                                       clients, each round-robin over the nodes
//!   │     │ GET /admin/v1/cluster, GET /metrics
//!   ├─▶ fanout-clients, one process per node (the `fanout` subscriber sockets, unchanged):
//!   │     --sockets sockets on its node, one user each, Identify with the user's token
//!   └── fake destination, in this process: POST /federation/inbox answers every event
//!         "accepted" and records when each request arrived and the seqs it carried
//! ```
//!
//! The phases, for each node count of `--nodes` (1, 2, 3), each on a fresh database:
//! - **appends**: `--clients` (64) clients, one request in flight each, post
//!   `{"body"}` messages to one channel as one user for `--append-seconds`; client `c`'s
//!   `k`-th request goes to node `(c + k) mod n`. Events/s counts 201s only; p50/p99 are per
//!   request, from writing the request to reading the whole answer. The baseline is the same
//!   run against one node with `cluster.enabled = false` on the same PostgreSQL server (its
//!   own fresh database). The same latencies split by the role of the node posted to give the
//!   **forwarded appends** under load (a post to a follower is forwarded to the leader and
//!   answered after the commit); a second run with one client (`--light-seconds`) gives them
//!   unloaded. Beside them, `cluster_forward_seconds` from the followers' `/metrics` (the
//!   follower's own time from forwarding to the leader's answer), its p50/p99 interpolated
//!   within the histogram's buckets (1, 2, 5, 10, 20, 50 ms…), per run.
//! - **sockets** (commit-to-socket): `--sockets` (1,000) sockets on every node, one user
//!   each (registered, invited and joined before the clock starts); one publisher posts
//!   `--rate` (20) messages/s for `--socket-seconds` to the leader (or a follower,
//!   `--post-to`). Latency = the receive time at the socket − the time the post was **sent**
//!   (the unix clock of this machine, carried in the message body), so it includes the
//!   post's own commit; the publisher's post latency (send to 201) is printed beside it.
//!   Per node, with its role: deliveries, p50/p99, gaps, duplicates.
//! - **failover** (the largest node count ≥ 2 only): light load (`--light-rate` posts/s
//!   round-robin over the live nodes, each post its own request), then `--failovers` times:
//!   kill -9 the leader, poll the survivors' `GET /admin/v1/cluster` every 20 ms until one
//!   names another leader (the time from the kill), note when a post sent after the kill is
//!   first acknowledged, restart the killed node and wait until it follows.
//! - **lease takeover** (the same configuration): a channel with `bob@dest.test` invited, so
//!   every event goes to the fake destination; light load on it; `--lease-kills` times:
//!   kill -9 the node whose lease on `dest.test` the cluster view shows valid, then time
//!   until the view (asked of a survivor) shows a valid lease held by another node and until
//!   the destination receives a request again (any request arriving after the kill comes from
//!   the new holder: the killed one's connections died with it); restart it. At the end,
//!   every acknowledged post must have reached the destination (at least once).
//!
//! Every node, PostgreSQL, the fake destination, the clients and the sockets' processes
//! share this machine's cores: the figures are what one machine does, not what a cluster of
//! machines would.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use anyhow::{anyhow, ensure, Context as _};
use futures_util::StreamExt as _;
use sea_orm::{ConnectionTrait as _, Database};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::common::{self, call, free_port, string_field, ChildGuard, ScratchDir, Timing};
use crate::fanout::{self, ClientsProcess, PhaseTally, PublishTally, PublishTo, Until};

/// The admin token every node is given (`server.admin_token`).
const ADMIN_TOKEN: &str = "cluster-bench-admin-token";
/// `cluster.internal_token` of every node (at least 16 characters).
const INTERNAL_TOKEN: &str = "cluster-bench-internal-token";
/// The server name every node serves.
const SERVER_NAME: &str = "cluster.bench";
/// The fake destination's server name (`[federation.resolve]` points it at this process).
const DESTINATION: &str = "dest.test";
/// Every user's password.
const PASSWORD: &str = "cluster-bench-password";
/// Registrations, invitations and joins in flight at once while setting up.
const SETUP_CONCURRENCY: usize = 64;
/// How often the failover and lease phases ask for the cluster view.
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    Append,
    Sockets,
    Failover,
    Lease,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PostTo {
    Leader,
    Follower,
}

#[derive(clap::Args)]
pub struct ClusterArgs {
    /// The PostgreSQL server; its user must be able to CREATE DATABASE (one fresh database
    /// per configuration, dropped after).
    #[arg(long, default_value = "postgres://sy:sy@127.0.0.1/postgres")]
    postgres_url: String,
    /// Node counts to measure, each on a fresh database.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    nodes: Vec<usize>,
    /// Phases to run (failover and lease run on the largest node count of at least 2).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "append,sockets,failover,lease"
    )]
    phases: Vec<Phase>,
    /// The Switchyard server binary.
    #[arg(long, default_value = "target/release/switchyard")]
    server_bin: PathBuf,
    /// Concurrent appending clients, one request in flight each.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds of each append run.
    #[arg(long, default_value_t = 8)]
    append_seconds: u64,
    /// Seconds of the one-client run (unloaded latency to the leader and to followers).
    #[arg(long, default_value_t = 3)]
    light_seconds: u64,
    /// WebSocket sockets per node (one user each).
    #[arg(long, default_value_t = 1000)]
    sockets: usize,
    /// Messages per second posted while the sockets listen.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Seconds of posting while the sockets listen.
    #[arg(long, default_value_t = 10)]
    socket_seconds: u64,
    /// Which node the sockets phase posts to.
    #[arg(long, value_enum, default_value = "leader")]
    post_to: PostTo,
    /// Threads of each node's clients process.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Leader kills (kill -9) in the failover phase.
    #[arg(long, default_value_t = 10)]
    failovers: usize,
    /// Kills of the destination's lease holder in the lease phase.
    #[arg(long, default_value_t = 3)]
    lease_kills: usize,
    /// Posts per second, round-robin over the live nodes, during failovers and lease kills.
    #[arg(long, default_value_t = 20)]
    light_rate: u32,
    /// `cluster.lease_ttl` of every node.
    #[arg(long, default_value = "2s")]
    lease_ttl: String,
}

pub async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    ensure!(
        args.nodes.iter().all(|n| (1..=9).contains(n)),
        "--nodes: 1 to 9 nodes"
    );
    ensure!(
        args.clients > 0 && args.sockets > 0,
        "--clients and --sockets must be positive"
    );
    let databases = Databases {
        admin_url: args.postgres_url.clone(),
        live: RefCell::new(Vec::new()),
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        result = run_all(&args, &databases) => result,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = terminate.recv() => Err(anyhow!("terminated")),
    };
    // The nodes of an abandoned run are gone by now (their guards dropped); their databases
    // go too.
    let leftovers: Vec<String> = databases.live.borrow().clone();
    for name in leftovers {
        if let Err(error) = databases.drop(&name).await {
            eprintln!("cluster: cannot drop database {name}: {error:#}");
        }
    }
    result
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL databases
// ---------------------------------------------------------------------------------------------

struct Databases {
    admin_url: String,
    /// Databases created and not dropped yet.
    live: RefCell<Vec<String>>,
}

impl Databases {
    /// A fresh database: its URL and name.
    async fn create(&self, label: &str) -> anyhow::Result<(String, String)> {
        let name = format!(
            "sy_bench_cluster_{label}_{}_{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let admin = Database::connect(&self.admin_url)
            .await
            .with_context(|| format!("cannot connect to {}", redact(&self.admin_url)))?;
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .with_context(|| format!("CREATE DATABASE {name}"))?;
        admin.close().await?;
        self.live.borrow_mut().push(name.clone());
        let (base, _) = self
            .admin_url
            .rsplit_once('/')
            .context("--postgres-url has no database path")?;
        Ok((format!("{base}/{name}"), name))
    }

    async fn drop(&self, name: &str) -> anyhow::Result<()> {
        let admin = Database::connect(&self.admin_url).await?;
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .with_context(|| format!("DROP DATABASE {name}"))?;
        admin.close().await?;
        self.live.borrow_mut().retain(|live| live != name);
        Ok(())
    }
}

/// The URL with its password replaced.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Node processes
// ---------------------------------------------------------------------------------------------

struct NodeProc {
    port: u16,
    dir: PathBuf,
    guard: Option<ChildGuard>,
}

/// The node processes of one configuration, on one database.
struct Cluster {
    bin: PathBuf,
    client: awc::Client,
    nodes: Vec<NodeProc>,
    /// Environment every node gets (the node id is added per node).
    env: Vec<(String, String)>,
    /// TOML appended to every node's configuration.
    extra: String,
    enabled: bool,
    _dir: ScratchDir,
}

impl Cluster {
    /// Starts `n` nodes one after the other (the first generates the shared key file) and,
    /// with the cluster enabled, waits until they have a leader and every node is live.
    async fn start(
        args: &ClusterArgs,
        bin: &Path,
        client: &awc::Client,
        db_url: &str,
        n: usize,
        enabled: bool,
        destination_port: u16,
    ) -> anyhow::Result<Cluster> {
        let dir = ScratchDir::create("cluster")?;
        let mut env = vec![
            ("SWITCHYARD__DATABASE__URL".to_owned(), db_url.to_owned()),
            (
                "SWITCHYARD__KEYS__PATH".to_owned(),
                dir.0.join("signing.key").display().to_string(),
            ),
            (
                "SWITCHYARD__SERVER__ADMIN_TOKEN".to_owned(),
                ADMIN_TOKEN.to_owned(),
            ),
            // Password hashes at argon2's least cost: thousands of users are registered
            // before the sockets phase, and no figure includes a hash.
            (
                "SWITCHYARD__SERVER__PASSWORD_HASH_MEMORY_KIB".to_owned(),
                "8".to_owned(),
            ),
            (
                "SWITCHYARD__SERVER__PASSWORD_HASH_PASSES".to_owned(),
                "1".to_owned(),
            ),
            (
                "SWITCHYARD__CLUSTER__ENABLED".to_owned(),
                enabled.to_string(),
            ),
        ];
        if enabled {
            env.extend([
                (
                    "SWITCHYARD__CLUSTER__INTERNAL_TOKEN".to_owned(),
                    INTERNAL_TOKEN.to_owned(),
                ),
                (
                    "SWITCHYARD__CLUSTER__LEASE_TTL".to_owned(),
                    args.lease_ttl.clone(),
                ),
            ]);
        }
        let extra = format!(
            "[gateway]\nheartbeat_interval = \"30s\"\n[federation.resolve]\n\"{DESTINATION}\" = \"http://127.0.0.1:{destination_port}\"\n"
        );
        let nodes = (0..n)
            .map(|i| {
                Ok(NodeProc {
                    port: free_port()?,
                    dir: dir.0.join(format!("node{i}")),
                    guard: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let mut cluster = Cluster {
            bin: bin.to_owned(),
            client: client.clone(),
            nodes,
            env,
            extra,
            enabled,
            _dir: dir,
        };
        for i in 0..n {
            cluster.spawn(i).await?;
        }
        if enabled {
            cluster.settled(Duration::from_secs(30)).await?;
        }
        Ok(cluster)
    }

    fn base(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].port)
    }

    fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Starts node `i` (again, after a kill: same port, same directory) and waits for
    /// `/health`.
    async fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_str()))
            .collect();
        let node_id = format!("node{i}");
        if self.enabled {
            env.push(("SWITCHYARD__CLUSTER__NODE_ID", &node_id));
        }
        let guard = common::start_switchyard(
            &self.bin,
            &self.nodes[i].dir,
            SERVER_NAME,
            self.nodes[i].port,
            &self.extra,
            &env,
            &self.client,
        )
        .await
        .with_context(|| format!("starting node{i}"))?;
        self.nodes[i].guard = Some(guard);
        Ok(())
    }

    /// kill -9 of node `i`, reaped.
    fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let mut guard = self.nodes[i]
            .guard
            .take()
            .with_context(|| format!("node{i} is not running"))?;
        // std's Child::kill is SIGKILL on Unix.
        guard.child_mut().kill()?;
        guard.child_mut().wait()?;
        Ok(())
    }

    fn live(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|i| self.nodes[*i].guard.is_some())
            .collect()
    }

    fn ensure_running(&mut self) -> anyhow::Result<()> {
        for (i, node) in self.nodes.iter_mut().enumerate() {
            if let Some(guard) = &mut node.guard {
                guard
                    .ensure_running()
                    .with_context(|| format!("node{i} (log: {})", node.dir.display()))?;
            }
        }
        Ok(())
    }

    /// `GET /admin/v1/cluster` of node `i`.
    async fn view(&self, i: usize) -> Option<Value> {
        let mut response = self
            .client
            .get(format!("{}/admin/v1/cluster", self.base(i)))
            .insert_header(("authorization", format!("Bearer {ADMIN_TOKEN}")))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json::<Value>().limit(1 << 20).await.ok()
    }

    /// The leader named by the first live node that names one other than `not`, polled
    /// every [`POLL`]; its index and epoch.
    async fn leader(&self, not: Option<usize>, within: Duration) -> anyhow::Result<(usize, u64)> {
        let deadline = Instant::now() + within;
        loop {
            for i in self.live() {
                if let Some(view) = self.view(i).await {
                    if let Some(found) = leader_of(&view).filter(|(l, _)| Some(*l) != not) {
                        return Ok(found);
                    }
                }
            }
            ensure!(
                Instant::now() < deadline,
                "no leader (other than {not:?}) within {within:?}"
            );
            actix_web::rt::time::sleep(POLL).await;
        }
    }

    /// Waits until a leader is named and every running node is live in the view as leader or
    /// follower; the leader's index.
    async fn settled(&self, within: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + within;
        let mut last = Value::Null;
        loop {
            let live = self.live();
            if let Some(&asking) = live.first() {
                if let Some(view) = self.view(asking).await {
                    let ready = view["nodes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|node| {
                            node["live"] == true
                                && (node["role"] == "leader" || node["role"] == "follower")
                                && node["node_id"]
                                    .as_str()
                                    .and_then(node_index)
                                    .is_some_and(|i| live.contains(&i))
                        })
                        .count();
                    if let Some((leader, _)) = leader_of(&view) {
                        if ready == live.len() && live.contains(&leader) {
                            return Ok(leader);
                        }
                    }
                    last = view;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "the cluster did not settle within {within:?}; last view: {last}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until node `i` says it follows.
    async fn follows(&self, i: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(view) = self.view(i).await {
                if view["role"] == "follower" {
                    return Ok(());
                }
            }
            ensure!(
                Instant::now() < deadline,
                "node{i} did not rejoin as a follower within {within:?}"
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn node_index(node_id: &str) -> Option<usize> {
    node_id.strip_prefix("node")?.parse().ok()
}

/// The leader a cluster view names (index, epoch), if any.
fn leader_of(view: &Value) -> Option<(usize, u64)> {
    let leader = &view["leader"];
    let index = node_index(leader["node_id"].as_str()?)?;
    Some((index, leader["epoch"].as_u64().unwrap_or(0)))
}

/// The valid lease on `destination` in a cluster view: the holder's index.
fn lease_holder(view: &Value, destination: &str) -> Option<usize> {
    view["leases"]
        .as_array()?
        .iter()
        .find(|lease| lease["destination"] == destination && lease["valid"] == true)
        .and_then(|lease| lease["node_id"].as_str())
        .and_then(node_index)
}

// ---------------------------------------------------------------------------------------------
// Users and channels
// ---------------------------------------------------------------------------------------------

struct User {
    fid: String,
    token: String,
}

async fn register(client: &awc::Client, base: &str, username: &str) -> anyhow::Result<User> {
    let answer = call(
        client,
        &format!("{base}/api/v1/auth/register"),
        None,
        &json!({"username": username, "password": PASSWORD}),
    )
    .await?;
    Ok(User {
        fid: string_field(&answer, "fid")?,
        token: string_field(&answer, "token")?,
    })
}

/// Creates a channel as `owner`: its id.
async fn create_channel(
    client: &awc::Client,
    base: &str,
    owner: &User,
    name: &str,
) -> anyhow::Result<String> {
    let answer = call(
        client,
        &format!("{base}/api/v1/channels"),
        Some(&owner.token),
        &json!({"name": name}),
    )
    .await?;
    string_field(&answer, "id")
}

// ---------------------------------------------------------------------------------------------
// Appends: keep-alive HTTP/1.1 clients with the least work per request
// ---------------------------------------------------------------------------------------------

/// Reads one answer (head and a Content-Length body) from `stream`: its status and whether
/// the connection stays open.
async fn read_answer(stream: &mut TcpStream, buffer: &mut [u8]) -> anyhow::Result<(u16, bool)> {
    let mut filled = 0;
    let (head_end, length, status, keep) = loop {
        let n = stream.read(&mut buffer[filled..]).await?;
        ensure!(n > 0, "the server closed the connection");
        filled += n;
        if let Some(end) = buffer[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            let head = std::str::from_utf8(&buffer[..end])?;
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|code| code.parse().ok())
                .with_context(|| format!("no status in {:?}", head.lines().next()))?;
            let mut length = None;
            let mut keep = true;
            for line in head.lines().skip(1) {
                let Some((name, value)) = line.split_once(':') else {
                    continue;
                };
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("connection")
                    && value.trim().eq_ignore_ascii_case("close")
                {
                    keep = false;
                }
            }
            break (end + 4, length.context("no Content-Length")?, status, keep);
        }
        ensure!(filled < buffer.len(), "an answer's head is over 64 KiB");
    };
    ensure!(
        head_end + length <= buffer.len(),
        "an answer is over 64 KiB"
    );
    while filled < head_end + length {
        let n = stream.read(&mut buffer[filled..]).await?;
        ensure!(n > 0, "the server closed the connection");
        filled += n;
    }
    Ok((status, keep))
}

/// What one append run saw, per node posted to.
struct AppendRun {
    per_node: Vec<Timing>,
    wall: Duration,
}

impl AppendRun {
    /// The latencies of the nodes `which` selects, merged.
    fn merged(&self, which: impl Fn(usize) -> bool) -> Timing {
        let mut timing = Timing {
            latencies: Vec::new(),
            wall: self.wall,
            failures: 0,
        };
        for (_, node) in self.per_node.iter().enumerate().filter(|(i, _)| which(*i)) {
            timing.latencies.extend(&node.latencies);
            timing.failures += node.failures;
        }
        timing
    }
}

/// `clients` clients, each with one request in flight, posting messages to `channel` as
/// `token` for `duration`; client `c`'s `k`-th request goes to node `(c + k) mod n`.
async fn append_load(
    ports: &[u16],
    channel: &str,
    token: &str,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<AppendRun> {
    let n = ports.len();
    let path = format!("/api/v1/channels/{channel}/messages");
    let started = Instant::now();
    let until = started + duration;
    let tasks = (0..clients).map(|c| {
        let path = &path;
        async move {
            let mut streams: Vec<Option<TcpStream>> = (0..n).map(|_| None).collect();
            let mut latencies = vec![Vec::new(); n];
            let mut failures = vec![0usize; n];
            let mut buffer = vec![0u8; 64 * 1024];
            let mut request = Vec::with_capacity(512);
            let mut k = 0usize;
            let mut last_error = None;
            while Instant::now() < until {
                let node = (c + k) % n;
                k += 1;
                let body = format!("{{\"body\":\"append {c}-{k}\"}}");
                request.clear();
                write!(
                    request,
                    "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len(),
                    port = ports[node],
                )?;
                let at = Instant::now();
                let outcome = async {
                    let stream = match &mut streams[node] {
                        Some(stream) => stream,
                        slot => {
                            let stream = TcpStream::connect(("127.0.0.1", ports[node])).await?;
                            stream.set_nodelay(true)?;
                            slot.insert(stream)
                        }
                    };
                    stream.write_all(&request).await?;
                    read_answer(stream, &mut buffer).await
                }
                .await;
                match outcome {
                    Ok((status, keep)) => {
                        if !keep {
                            streams[node] = None;
                        }
                        if status == 201 {
                            latencies[node].push(at.elapsed());
                        } else {
                            failures[node] += 1;
                            last_error = Some(format!("node{node} answered {status}"));
                            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err(error) => {
                        failures[node] += 1;
                        streams[node] = None;
                        last_error = Some(format!("node{node}: {error:#}"));
                        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            anyhow::Ok((latencies, failures, last_error))
        }
    });
    let mut per_node: Vec<Timing> = (0..n)
        .map(|_| Timing {
            latencies: Vec::new(),
            wall: Duration::ZERO,
            failures: 0,
        })
        .collect();
    let mut last_error = None;
    for result in futures_util::future::join_all(tasks).await {
        let (latencies, failures, error) = result?;
        for (i, node) in per_node.iter_mut().enumerate() {
            node.latencies.extend(&latencies[i]);
            node.failures += failures[i];
        }
        last_error = error.or(last_error);
    }
    let wall = started.elapsed();
    for node in &mut per_node {
        node.wall = wall;
    }
    if let Some(error) = last_error {
        eprintln!("cluster: appends: last failure: {error}");
    }
    Ok(AppendRun { per_node, wall })
}

/// `switchyard_cluster_forward_seconds` buckets summed over `nodes`: (upper bound, cumulative
/// count), in the exposition's order.
async fn forward_buckets(cluster: &Cluster, nodes: &[usize]) -> anyhow::Result<Vec<(f64, f64)>> {
    let mut sum: Vec<(f64, f64)> = Vec::new();
    for &i in nodes {
        let url = format!("{}/metrics", cluster.base(i));
        let mut response = cluster
            .client
            .get(&url)
            .send()
            .await
            .map_err(|error| anyhow!("GET {url}: {error}"))?;
        let body = response.body().limit(16 << 20).await?;
        let text = std::str::from_utf8(&body).context("metrics are not UTF-8")?;
        let buckets: Vec<(f64, f64)> = text
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("switchyard_cluster_forward_seconds_bucket{le=\"")?;
                let (le, rest) = rest.split_once("\"}")?;
                let le = match le {
                    "+Inf" => f64::INFINITY,
                    le => le.parse().ok()?,
                };
                Some((le, rest.trim().parse().ok()?))
            })
            .collect();
        if sum.is_empty() {
            sum = buckets;
        } else {
            for (mine, theirs) in sum.iter_mut().zip(buckets) {
                mine.1 += theirs.1;
            }
        }
    }
    Ok(sum)
}

/// The histogram of what happened between two bucket readings: (count, p50, p99), the
/// quantiles interpolated linearly within their bucket (as Prometheus's
/// `histogram_quantile`); a quantile in the +Inf bucket is the last finite bound.
fn bucket_quantiles(before: &[(f64, f64)], after: &[(f64, f64)]) -> Option<(u64, f64, f64)> {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .enumerate()
        .map(|(k, (le, count))| (*le, count - before.get(k).map_or(0.0, |b| b.1)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let quantile = |q: f64| {
        let rank = q * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &delta {
            if count >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
                return lower.0 + (le - lower.0) * within;
            }
            lower = (le, count);
        }
        lower.0
    };
    Some((total as u64, quantile(0.50), quantile(0.99)))
}

/// The append figures of one configuration.
struct AppendFigures {
    total: Timing,
    /// Under load: posts to the leader, posts to followers.
    leader: Timing,
    followers: Timing,
    /// One client.
    light_leader: Timing,
    light_followers: Timing,
    /// `cluster_forward_seconds` over the followers, per run: (count, p50 s, p99 s).
    forward_load: Option<(u64, f64, f64)>,
    forward_light: Option<(u64, f64, f64)>,
}

async fn append_phase(
    args: &ClusterArgs,
    cluster: &mut Cluster,
    leader: Option<usize>,
) -> anyhow::Result<AppendFigures> {
    let owner = register(&cluster.client, &cluster.base(0), "poster").await?;
    let channel = create_channel(&cluster.client, &cluster.base(0), &owner, "appends").await?;
    let ports: Vec<u16> = cluster.nodes.iter().map(|node| node.port).collect();
    let followers: Vec<usize> = (0..cluster.len())
        .filter(|i| Some(*i) != leader)
        .filter(|_| leader.is_some())
        .collect();
    let is_leader = |i: usize| leader.is_none_or(|l| l == i);

    let before = forward_buckets(cluster, &followers).await?;
    let run = append_load(
        &ports,
        &channel,
        &owner.token,
        args.clients,
        Duration::from_secs(args.append_seconds),
    )
    .await?;
    let after = forward_buckets(cluster, &followers).await?;
    cluster.ensure_running()?;
    let light = append_load(
        &ports,
        &channel,
        &owner.token,
        1,
        Duration::from_secs(args.light_seconds),
    )
    .await?;
    let light_after = forward_buckets(cluster, &followers).await?;
    cluster.ensure_running()?;
    if cluster.enabled {
        let now = cluster.settled(Duration::from_secs(10)).await?;
        if Some(now) != leader {
            eprintln!(
                "cluster: the leader changed during the append runs (node{} → node{now}): the split by role is not exact",
                leader.unwrap_or(0)
            );
        }
    }
    Ok(AppendFigures {
        total: run.merged(|_| true),
        leader: run.merged(is_leader),
        followers: run.merged(|i| !is_leader(i)),
        light_leader: light.merged(is_leader),
        light_followers: light.merged(|i| !is_leader(i)),
        forward_load: bucket_quantiles(&before, &after),
        forward_light: bucket_quantiles(&after, &light_after),
    })
}

// ---------------------------------------------------------------------------------------------
// Sockets: commit-to-socket latency on every node
// ---------------------------------------------------------------------------------------------

/// What one node's sockets saw.
struct NodeSockets {
    node: usize,
    role: &'static str,
    tally: PhaseTally,
}

struct SocketFigures {
    /// Sockets per node.
    sockets: usize,
    setup: Duration,
    connect: Duration,
    posted_on: usize,
    posted_role: &'static str,
    published: PublishTally,
    publish_time: Duration,
    per_node: Vec<NodeSockets>,
}

/// Spawns the `fanout-clients` process of node `i` (the `fanout` subscriber sockets).
fn spawn_clients(
    args: &ClusterArgs,
    cluster: &Cluster,
    i: usize,
    tokens: &Path,
) -> anyhow::Result<ClientsProcess> {
    // This very program, even if a build has replaced its file since it started.
    ClientsProcess::start(
        Command::new("/proc/self/exe")
            .arg("fanout-clients")
            .args([
                "--url",
                &format!("ws://127.0.0.1:{}/ws", cluster.nodes[i].port),
            ])
            .args(["--clients", &args.sockets.to_string()])
            .args(["--publishers", "1"])
            .args(["--threads", &args.client_threads.max(1).to_string()])
            .args(["--connect-concurrency", "32"])
            .arg("--tokens")
            .arg(tokens),
    )
}

async fn sockets_phase(
    args: &ClusterArgs,
    cluster: &mut Cluster,
    leader: Option<usize>,
) -> anyhow::Result<SocketFigures> {
    let n = cluster.len();
    let client = cluster.client.clone();
    let setting_up = Instant::now();
    let owner = register(&client, &cluster.base(0), "publisher").await?;
    let channel = create_channel(&client, &cluster.base(0), &owner, "sockets").await?;
    let bases: Vec<String> = (0..n).map(|i| cluster.base(i)).collect();
    // User k of node i registers and joins through node i, and is invited through node
    // (i + k) mod n.
    let users: Vec<(usize, usize)> = (0..n)
        .flat_map(|i| (0..args.sockets).map(move |k| (i, k)))
        .collect();
    let tokens: Vec<(usize, String)> = futures_util::stream::iter(users)
        .map(|(i, k)| {
            let (client, bases, owner, channel) = (&client, &bases, &owner, &channel);
            async move {
                let user = register(client, &bases[i], &format!("s{i}x{k}")).await?;
                let inviter = &bases[(i + k) % n];
                call(
                    client,
                    &format!("{inviter}/api/v1/channels/{channel}/invite"),
                    Some(&owner.token),
                    &json!({"fid": user.fid}),
                )
                .await?;
                call(
                    client,
                    &format!("{}/api/v1/channels/{channel}/join", bases[i]),
                    Some(&user.token),
                    &json!({}),
                )
                .await?;
                anyhow::Ok((i, user.token))
            }
        })
        .buffered(SETUP_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let setup = setting_up.elapsed();
    let mut processes = Vec::with_capacity(n);
    let connecting = Instant::now();
    for i in 0..n {
        let path = cluster.nodes[i].dir.join("tokens");
        let lines: Vec<&str> = tokens
            .iter()
            .filter(|(node, _)| *node == i)
            .map(|(_, token)| token.as_str())
            .collect();
        std::fs::write(&path, lines.join("\n"))?;
        processes.push(spawn_clients(args, cluster, i, &path)?);
    }
    // Every socket live (Ready) on every node.
    let limit = Duration::from_secs(60 + (n * args.sockets) as u64 / 100);
    let mut reported = Instant::now();
    loop {
        cluster.ensure_running()?;
        let mut live = 0;
        let mut last_error = None;
        for process in &mut processes {
            process.guard.ensure_running()?;
            let status = process.status().await?;
            live += status.live;
            last_error = status.last_error.or(last_error);
        }
        if live >= (n * args.sockets) as u64 {
            break;
        }
        let describe = format!(
            "{live} of {} sockets live{}",
            n * args.sockets,
            last_error
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default()
        );
        ensure!(
            connecting.elapsed() < limit,
            "not connected in {limit:?}: {describe}"
        );
        if reported.elapsed() >= Duration::from_secs(5) {
            eprintln!("cluster: {describe}");
            reported = Instant::now();
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let connect = connecting.elapsed();

    let leader_index = leader.unwrap_or(0);
    let posted_on = match args.post_to {
        PostTo::Follower if n > 1 => (leader_index + 1) % n,
        _ => leader_index,
    };
    let role = |i: usize| match leader {
        None => "single",
        Some(l) if l == i => "leader",
        Some(_) => "follower",
    };
    let publish = Rc::new(PublishTo::Switchyard {
        url: format!(
            "{}/api/v1/channels/{channel}/messages",
            cluster.base(posted_on)
        ),
        tokens: vec![owner.token.clone()],
    });
    let mut next_n = vec![1u64];
    let (_, publish_time, published) = fanout::publish_phase(
        &client,
        &publish,
        fanout::PHASE_FIXED,
        Until::Elapsed(Duration::from_secs(args.socket_seconds)),
        Some(args.rate),
        &mut next_n,
    )
    .await?;
    let mut per_node = Vec::with_capacity(n);
    for (i, process) in processes.iter_mut().enumerate() {
        fanout::drain(
            process,
            fanout::PHASE_FIXED,
            published.sent * args.sockets as u64,
        )
        .await?;
        let tally = process
            .report(fanout::PHASE_FIXED, &[next_n[0] - 1])
            .await?;
        per_node.push(NodeSockets {
            node: i,
            role: role(i),
            tally,
        });
    }
    // The sockets first (they would reconnect to the nodes), then on.
    drop(processes);
    cluster.ensure_running()?;
    Ok(SocketFigures {
        sockets: args.sockets,
        setup,
        connect,
        posted_on,
        posted_role: role(posted_on),
        published,
        publish_time,
        per_node,
    })
}

// ---------------------------------------------------------------------------------------------
// Light load for the kills
// ---------------------------------------------------------------------------------------------

/// One post of the light load.
struct LightPost {
    sent: Instant,
    answered: Instant,
    /// The seq of an acknowledged post.
    seq: Option<u64>,
}

/// Posts at `rate`/s, round-robin over the nodes present in `targets`, each post its own
/// request (a slow one holds up nothing), until stopped.
struct LightLoad {
    targets: Rc<RefCell<Vec<Option<String>>>>,
    posts: Rc<RefCell<Vec<LightPost>>>,
    stop: Rc<Cell<bool>>,
    task: actix_web::rt::task::JoinHandle<()>,
}

impl LightLoad {
    fn start(cluster: &Cluster, channel: &str, token: &str, rate: u32) -> LightLoad {
        let targets = Rc::new(RefCell::new(
            (0..cluster.len())
                .map(|i| Some(cluster.base(i)))
                .collect::<Vec<_>>(),
        ));
        let posts: Rc<RefCell<Vec<LightPost>>> = Rc::default();
        let stop = Rc::new(Cell::new(false));
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(5))
            .finish();
        let (channel, token) = (channel.to_owned(), token.to_owned());
        let task = actix_web::rt::spawn({
            let (targets, posts, stop) = (targets.clone(), posts.clone(), stop.clone());
            async move {
                let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
                let mut ticker = actix_web::rt::time::interval(interval);
                let mut k = 0usize;
                while !stop.get() {
                    ticker.tick().await;
                    let live: Vec<String> = targets.borrow().iter().flatten().cloned().collect();
                    if live.is_empty() {
                        continue;
                    }
                    let base = &live[k % live.len()];
                    k += 1;
                    let request = client
                        .post(format!("{base}/api/v1/channels/{channel}/messages"))
                        .insert_header(("authorization", format!("Bearer {token}")))
                        .insert_header(("content-type", "application/json"));
                    let body = json!({"body": format!("light {k}")}).to_string();
                    let posts = posts.clone();
                    actix_web::rt::spawn(async move {
                        let sent = Instant::now();
                        let seq = match request.send_body(body).await {
                            Ok(mut response) if response.status().as_u16() == 201 => response
                                .json::<Value>()
                                .await
                                .ok()
                                .and_then(|answer| answer["seq"].as_u64()),
                            Ok(mut response) => {
                                let _ = response.body().await;
                                None
                            }
                            Err(_) => None,
                        };
                        posts.borrow_mut().push(LightPost {
                            sent,
                            answered: Instant::now(),
                            seq,
                        });
                    });
                }
            }
        });
        LightLoad {
            targets,
            posts,
            stop,
            task,
        }
    }

    fn set_target(&self, i: usize, base: Option<String>) {
        self.targets.borrow_mut()[i] = base;
    }

    /// From `since` to the first acknowledgement of a post sent at or after it.
    fn acknowledged_after(&self, since: Instant) -> Option<Duration> {
        self.posts
            .borrow()
            .iter()
            .filter(|post| post.sent >= since && post.seq.is_some())
            .map(|post| post.answered - since)
            .min()
    }

    /// Stops posting and waits for the posts in flight: (acknowledged seqs, refused or
    /// failed posts).
    async fn finish(self) -> (Vec<u64>, usize) {
        self.stop.set(true);
        let _ = self.task.await;
        // Posts in flight end within the client's timeout.
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        let deadline = Instant::now() + Duration::from_secs(6);
        let mut count = self.posts.borrow().len();
        while Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(250)).await;
            let now = self.posts.borrow().len();
            if now == count {
                break;
            }
            count = now;
        }
        let posts = self.posts.borrow();
        let acked: Vec<u64> = posts.iter().filter_map(|post| post.seq).collect();
        (acked.clone(), posts.len() - acked.len())
    }
}

// ---------------------------------------------------------------------------------------------
// Failover
// ---------------------------------------------------------------------------------------------

struct FailoverRound {
    killed: usize,
    old_epoch: u64,
    new_leader: usize,
    new_epoch: u64,
    elected: Duration,
    writes_back: Option<Duration>,
}

struct FailoverFigures {
    rounds: Vec<FailoverRound>,
    acknowledged: usize,
    refused: usize,
}

async fn failover_phase(
    args: &ClusterArgs,
    cluster: &mut Cluster,
) -> anyhow::Result<FailoverFigures> {
    let client = cluster.client.clone();
    let owner = register(&client, &cluster.base(0), "failover").await?;
    let channel = create_channel(&client, &cluster.base(0), &owner, "failover").await?;
    let load = LightLoad::start(cluster, &channel, &owner.token, args.light_rate);
    let mut rounds = Vec::with_capacity(args.failovers);
    for round in 0..args.failovers {
        actix_web::rt::time::sleep(Duration::from_millis(500)).await;
        cluster.ensure_running()?;
        let leader = cluster.settled(Duration::from_secs(30)).await?;
        let (_, old_epoch) = cluster.leader(None, Duration::from_secs(5)).await?;
        load.set_target(leader, None);
        cluster.kill(leader)?;
        let killed = Instant::now();
        let (new_leader, new_epoch) = cluster
            .leader(Some(leader), Duration::from_secs(30))
            .await
            .with_context(|| format!("failover round {}", round + 1))?;
        let elected = killed.elapsed();
        cluster.spawn(leader).await?;
        cluster.follows(leader, Duration::from_secs(30)).await?;
        load.set_target(leader, Some(cluster.base(leader)));
        let writes_back = load.acknowledged_after(killed);
        eprintln!(
            "cluster: failover {}: node{leader} killed, node{new_leader} leads after {:.3} s",
            round + 1,
            elected.as_secs_f64()
        );
        rounds.push(FailoverRound {
            killed: leader,
            old_epoch,
            new_leader,
            new_epoch,
            elected,
            writes_back,
        });
    }
    let (acked, refused) = load.finish().await;
    Ok(FailoverFigures {
        rounds,
        acknowledged: acked.len(),
        refused,
    })
}

// ---------------------------------------------------------------------------------------------
// Lease takeover: the fake destination
// ---------------------------------------------------------------------------------------------

/// What the fake destination received: each request's arrival and the seqs it carried.
#[derive(Clone, Default)]
struct Arrivals(Arc<Mutex<Vec<Arrival>>>);

/// One request to the fake destination: when it arrived, the seqs it carried.
type Arrival = (Instant, Vec<u64>);

impl Arrivals {
    fn first_after(&self, since: Instant) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(at, _)| *at)
            .find(|at| *at > since)
    }

    fn seqs(&self) -> HashSet<u64> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|(_, seqs)| seqs.iter().copied())
            .collect()
    }
}

async fn destination_inbox(body: web::Bytes, arrivals: web::Data<Arrivals>) -> HttpResponse {
    let at = Instant::now();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut results = serde_json::Map::new();
    let mut seqs = Vec::new();
    for event in body["events"].as_array().into_iter().flatten() {
        let id = event["event_id"].as_str().unwrap_or_default();
        if let Some(seq) = id.strip_prefix("seq:").and_then(|s| s.parse().ok()) {
            seqs.push(seq);
        }
        results.insert(id.to_owned(), json!({"status": "accepted"}));
    }
    arrivals
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((at, seqs));
    HttpResponse::Ok().json(json!({ "results": results }))
}

/// The fake destination on 127.0.0.1:<port>, one worker.
fn start_destination() -> anyhow::Result<(u16, Arrivals, actix_web::dev::ServerHandle)> {
    let arrivals = Arrivals::default();
    let data = web::Data::new(arrivals.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 << 20))
            .route("/federation/inbox", web::post().to(destination_inbox))
    })
    .workers(1)
    .listen(listener)?
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    Ok((port, arrivals, handle))
}

struct LeaseRound {
    killed: usize,
    was_leader: bool,
    lease_moved: Option<(usize, Duration)>,
    received_again: Option<Duration>,
}

struct LeaseFigures {
    rounds: Vec<LeaseRound>,
    acknowledged: usize,
    missing: usize,
    refused: usize,
}

async fn lease_phase(
    args: &ClusterArgs,
    cluster: &mut Cluster,
    arrivals: &Arrivals,
) -> anyhow::Result<LeaseFigures> {
    let client = cluster.client.clone();
    let owner = register(&client, &cluster.base(0), "leases").await?;
    let channel = create_channel(&client, &cluster.base(0), &owner, "leases").await?;
    call(
        &client,
        &format!("{}/api/v1/channels/{channel}/invite", cluster.base(0)),
        Some(&owner.token),
        &json!({"fid": format!("bob@{DESTINATION}")}),
    )
    .await?;
    let load = LightLoad::start(cluster, &channel, &owner.token, args.light_rate);
    let mut rounds = Vec::with_capacity(args.lease_kills);
    for round in 0..args.lease_kills {
        cluster.ensure_running()?;
        let leader = cluster.settled(Duration::from_secs(30)).await?;
        // A holder, and deliveries flowing since this round began.
        let began = Instant::now();
        let deadline = began + Duration::from_secs(30);
        let holder = loop {
            let asking = cluster.live()[0];
            let holder = cluster
                .view(asking)
                .await
                .and_then(|view| lease_holder(&view, DESTINATION));
            if let Some(holder) = holder {
                if arrivals.first_after(began).is_some() {
                    break holder;
                }
            }
            ensure!(
                Instant::now() < deadline,
                "lease round {}: no valid lease on {DESTINATION} with deliveries within 30 s",
                round + 1
            );
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        };
        load.set_target(holder, None);
        cluster.kill(holder)?;
        let killed = Instant::now();
        let deadline = killed + Duration::from_secs(30);
        let mut lease_moved = None;
        let mut received_again = None;
        while lease_moved.is_none() || received_again.is_none() {
            if received_again.is_none() {
                received_again = arrivals.first_after(killed).map(|at| at - killed);
            }
            if lease_moved.is_none() {
                for i in cluster.live() {
                    let Some(view) = cluster.view(i).await else {
                        continue;
                    };
                    if let Some(now) = lease_holder(&view, DESTINATION).filter(|h| *h != holder) {
                        lease_moved = Some((now, killed.elapsed()));
                    }
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            actix_web::rt::time::sleep(POLL).await;
        }
        eprintln!(
            "cluster: lease {}: node{holder} killed, lease moved {:?}, received again {:?}",
            round + 1,
            lease_moved,
            received_again
        );
        rounds.push(LeaseRound {
            killed: holder,
            was_leader: holder == leader,
            lease_moved,
            received_again,
        });
        cluster.spawn(holder).await?;
        cluster.follows(holder, Duration::from_secs(30)).await?;
        load.set_target(holder, Some(cluster.base(holder)));
    }
    let (acked, refused) = load.finish().await;
    // Everything acknowledged reaches the destination (at least once).
    let deadline = Instant::now() + Duration::from_secs(20);
    let missing = loop {
        let got = arrivals.seqs();
        let missing = acked.iter().filter(|seq| !got.contains(seq)).count();
        if missing == 0 || Instant::now() >= deadline {
            break missing;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(LeaseFigures {
        rounds,
        acknowledged: acked.len(),
        missing,
        refused,
    })
}

// ---------------------------------------------------------------------------------------------
// The run and its printing
// ---------------------------------------------------------------------------------------------

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn us_ms(us: Option<u64>) -> String {
    us.map_or_else(|| "-".to_owned(), |us| format!("{:.2}", us as f64 / 1000.0))
}

fn latency_pair(timing: &mut Timing) -> String {
    if timing.latencies.is_empty() {
        return format!("{:>8} {:>8}", "-", "-");
    }
    format!(
        "{:>8.2} {:>8.2}",
        ms(timing.percentile(0.50)),
        ms(timing.percentile(0.99))
    )
}

fn forward_pair(figures: Option<(u64, f64, f64)>) -> String {
    figures.map_or_else(
        || "-".to_owned(),
        |(count, p50, p99)| format!("{:.2} / {:.2} ms ({count})", p50 * 1e3, p99 * 1e3),
    )
}

fn seconds(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

fn median(mut values: Vec<Duration>) -> Option<Duration> {
    values.sort_unstable();
    match values.len() {
        0 => None,
        n if n % 2 == 1 => Some(values[n / 2]),
        n => Some((values[n / 2 - 1] + values[n / 2]) / 2),
    }
}

/// Everything one configuration measured.
struct ConfigResult {
    label: String,
    nodes: usize,
    append: Option<AppendFigures>,
    sockets: Option<SocketFigures>,
    failover: Option<FailoverFigures>,
    lease: Option<LeaseFigures>,
}

/// Runs one configuration on a fresh database: `n` nodes, the cluster on or off.
async fn run_config(
    args: &ClusterArgs,
    bin: &Path,
    databases: &Databases,
    client: &awc::Client,
    n: usize,
    enabled: bool,
    kills: bool,
) -> anyhow::Result<ConfigResult> {
    let label = match (enabled, n) {
        (false, _) => "baseline".to_owned(),
        (true, 1) => "1 node".to_owned(),
        (true, n) => format!("{n} nodes"),
    };
    let (url, name) = databases
        .create(&format!("{}{n}", if enabled { "n" } else { "off" }))
        .await?;
    let result = async {
        let (destination_port, arrivals, destination) = start_destination()?;
        let mut cluster =
            Cluster::start(args, bin, client, &url, n, enabled, destination_port).await?;
        let mut leader = match enabled {
            true => Some(cluster.settled(Duration::from_secs(30)).await?),
            false => None,
        };
        let phase = |p: Phase| args.phases.contains(&p);
        let append = match phase(Phase::Append) {
            true => {
                eprintln!("cluster: {label}: appends");
                Some(append_phase(args, &mut cluster, leader).await?)
            }
            false => None,
        };
        let sockets = match enabled && phase(Phase::Sockets) {
            true => {
                eprintln!("cluster: {label}: sockets");
                if leader.is_some() {
                    leader = Some(cluster.settled(Duration::from_secs(30)).await?);
                }
                Some(sockets_phase(args, &mut cluster, leader).await?)
            }
            false => None,
        };
        let failover = match kills && phase(Phase::Failover) && args.failovers > 0 {
            true => {
                eprintln!("cluster: {label}: failover");
                Some(failover_phase(args, &mut cluster).await?)
            }
            false => None,
        };
        let lease = match kills && phase(Phase::Lease) && args.lease_kills > 0 {
            true => {
                eprintln!("cluster: {label}: lease takeover");
                Some(lease_phase(args, &mut cluster, &arrivals).await?)
            }
            false => None,
        };
        drop(cluster);
        destination.stop(false).await;
        anyhow::Ok(ConfigResult {
            label: label.clone(),
            nodes: n,
            append,
            sockets,
            failover,
            lease,
        })
    }
    .await;
    databases.drop(&name).await?;
    result
}

async fn run_all(args: &ClusterArgs, databases: &Databases) -> anyhow::Result<()> {
    ensure!(
        args.server_bin.exists(),
        "{} not found (cargo build --release --bins)",
        args.server_bin.display()
    );
    // A copy of the server binary: nodes restarted after a kill run the same build even if
    // the tree is rebuilt meanwhile.
    let bin_dir = ScratchDir::create("cluster-bin")?;
    let server_bin = bin_dir.0.join("switchyard");
    std::fs::copy(&args.server_bin, &server_bin)
        .with_context(|| format!("copying {}", args.server_bin.display()))?;
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let mut node_counts = args.nodes.clone();
    node_counts.sort_unstable();
    node_counts.dedup();
    let kill_config = node_counts.iter().copied().filter(|n| *n >= 2).max();
    println!(
        "Switchyard cluster benchmark: `switchyard serve` nodes ({}) on one PostgreSQL server ({}),\n\
         a fresh database per configuration. All nodes, PostgreSQL and this benchmark's clients share\n\
         this machine's {cores} cores: these are one machine's figures, not a cluster of machines'.\n\
         cluster.lease_ttl {}; appends: POST /api/v1/channels/{{id}}/messages as one user, {} clients\n\
         with one request in flight each, client c's k-th request to node (c + k) mod n, {} s per run.",
        args.server_bin.display(),
        redact(&args.postgres_url),
        args.lease_ttl,
        args.clients,
        args.append_seconds,
    );
    let mut results = Vec::new();
    if args.phases.contains(&Phase::Append) {
        eprintln!("cluster: baseline (one node, cluster.enabled = false)");
        let mut result = run_config(args, &server_bin, databases, &client, 1, false, false).await?;
        print_config(&mut result, None);
        results.push(result);
    }
    for &n in &node_counts {
        eprintln!("cluster: {n} node(s)");
        let mut result = run_config(
            args,
            &server_bin,
            databases,
            &client,
            n,
            true,
            Some(n) == kill_config,
        )
        .await?;
        let baseline = results
            .first()
            .filter(|r: &&ConfigResult| r.label == "baseline")
            .and_then(|r| r.append.as_ref())
            .map(|a| a.total.rate());
        print_config(&mut result, baseline);
        results.push(result);
    }
    print_summary(args, &mut results);
    Ok(())
}

fn print_config(result: &mut ConfigResult, baseline: Option<f64>) {
    println!();
    println!("== {} ==", result.label);
    if let Some(append) = &mut result.append {
        let total = &mut append.total;
        println!(
            "appends            {:>9.0} events/s   p50 {:.2} ms   p99 {:.2} ms   ({} in {:.1} s, {} failed){}",
            total.rate(),
            ms(total.percentile(0.50)),
            ms(total.percentile(0.99)),
            total.latencies.len(),
            total.wall.as_secs_f64(),
            total.failures,
            baseline.map_or(String::new(), |b| format!(
                "   {:.2}x the baseline",
                total.rate() / b.max(1e-9)
            ))
        );
    }
    if let Some(sockets) = &result.sockets {
        let mut all = fanout::Histogram::default();
        for node in &sockets.per_node {
            all.merge(&node.tally.latency);
        }
        println!(
            "sockets            {} per node (set up in {:.1} s, all live {:.1} s after the clients started), posted on node{} ({}): send-to-socket p50 {} ms   p99 {} ms over all nodes",
            sockets.sockets,
            sockets.setup.as_secs_f64(),
            sockets.connect.as_secs_f64(),
            sockets.posted_on,
            sockets.posted_role,
            us_ms(all.quantile(0.50)),
            us_ms(all.quantile(0.99)),
        );
    }
    if let Some(failover) = &result.failover {
        for (k, round) in failover.rounds.iter().enumerate() {
            println!(
                "failover {:>2}        node{} (leader, epoch {}) killed → node{} leads (epoch {}) after {}; a post acknowledged {}",
                k + 1,
                round.killed,
                round.old_epoch,
                round.new_leader,
                round.new_epoch,
                seconds(round.elected),
                round.writes_back.map_or("-".to_owned(), seconds),
            );
        }
    }
    if let Some(lease) = &result.lease {
        for (k, round) in lease.rounds.iter().enumerate() {
            println!(
                "lease kill {:>2}      node{} ({}) held {DESTINATION} → lease valid on {} after {}; destination received again after {}",
                k + 1,
                round.killed,
                if round.was_leader { "leader" } else { "follower" },
                round
                    .lease_moved
                    .map_or("-".to_owned(), |(node, _)| format!("node{node}")),
                round.lease_moved.map_or("-".to_owned(), |(_, at)| seconds(at)),
                round.received_again.map_or("-".to_owned(), seconds),
            );
        }
    }
}

fn print_summary(args: &ClusterArgs, results: &mut [ConfigResult]) {
    let baseline = results
        .iter()
        .find(|r| r.label == "baseline")
        .and_then(|r| r.append.as_ref())
        .map(|a| a.total.rate());
    println!();
    println!(
        "1. Appends spread over all nodes ({} clients, POST …/messages, p50/p99 per request in ms)",
        args.clients
    );
    println!(
        "{:<10} {:>10} {:>8} {:>8} {:>12} {:>8}",
        "config", "events/s", "p50", "p99", "vs baseline", "failed"
    );
    for result in results.iter_mut() {
        let Some(append) = &mut result.append else {
            continue;
        };
        let rate = append.total.rate();
        println!(
            "{:<10} {:>10.0} {} {:>12} {:>8}",
            result.label,
            rate,
            latency_pair(&mut append.total),
            baseline.map_or("-".to_owned(), |b| format!("{:.2}", rate / b.max(1e-9))),
            append.total.failures,
        );
    }

    println!();
    println!(
        "2. Forwarded appends: posts to followers (forwarded to the leader, answered after its commit)\n   against posts to the leader, p50/p99 per request in ms; cluster_forward_seconds from the\n   followers' /metrics (their own forward time, interpolated in the buckets; count)"
    );
    println!(
        "{:<10} {:<12} {:>17} {:>17}   cluster_forward_seconds",
        "", "", "to the leader", "to followers"
    );
    println!(
        "{:<10} {:<12} {:>8} {:>8} {:>8} {:>8}   p50 / p99 (count)",
        "config", "load", "p50", "p99", "p50", "p99"
    );
    for result in results.iter_mut() {
        if result.nodes < 2 || result.label == "baseline" {
            continue;
        }
        let Some(append) = &mut result.append else {
            continue;
        };
        println!(
            "{:<10} {:<12} {} {}   {}",
            result.label,
            format!("{} clients", args.clients),
            latency_pair(&mut append.leader),
            latency_pair(&mut append.followers),
            forward_pair(append.forward_load),
        );
        println!(
            "{:<10} {:<12} {} {}   {}",
            result.label,
            "1 client",
            latency_pair(&mut append.light_leader),
            latency_pair(&mut append.light_followers),
            forward_pair(append.forward_light),
        );
    }

    println!();
    println!(
        "3. Commit-to-socket: {} messages/s for {} s to {} sockets per node (one user each, Identify\n   with its token); latency = receive time at the socket − the time the post was SENT (so it\n   includes the post's own commit; the post latency is given beside it), ms",
        args.rate, args.socket_seconds, args.sockets
    );
    println!(
        "{:<10} {:<16} {:<16} {:>11} {:>8} {:>8} {:>5} {:>5}   post p50 / p99",
        "config", "posted on", "sockets on", "deliveries", "p50", "p99", "gaps", "dups"
    );
    for result in results.iter() {
        let Some(sockets) = &result.sockets else {
            continue;
        };
        let mut all = fanout::Histogram::default();
        let (mut deliveries, mut gaps, mut dups) = (0, 0, 0);
        for node in &sockets.per_node {
            all.merge(&node.tally.latency);
            deliveries += node.tally.deliveries;
            gaps += node.tally.gaps;
            dups += node.tally.duplicates;
        }
        let posted = format!("node{} ({})", sockets.posted_on, sockets.posted_role);
        let post = format!(
            "{} / {} ms ({} posts in {:.1} s, {} busy, {} errors)",
            us_ms(sockets.published.latency.quantile(0.50)),
            us_ms(sockets.published.latency.quantile(0.99)),
            sockets.published.sent,
            sockets.publish_time.as_secs_f64(),
            sockets.published.busy,
            sockets.published.errors,
        );
        for node in &sockets.per_node {
            println!(
                "{:<10} {:<16} {:<16} {:>11} {:>8} {:>8} {:>5} {:>5}",
                result.label,
                posted,
                format!("node{} ({})", node.node, node.role),
                node.tally.deliveries,
                us_ms(node.tally.latency.quantile(0.50)),
                us_ms(node.tally.latency.quantile(0.99)),
                node.tally.gaps,
                node.tally.duplicates,
            );
        }
        println!(
            "{:<10} {:<16} {:<16} {:>11} {:>8} {:>8} {:>5} {:>5}   {post}",
            result.label,
            posted,
            "all",
            deliveries,
            us_ms(all.quantile(0.50)),
            us_ms(all.quantile(0.99)),
            gaps,
            dups,
        );
    }

    if let Some(result) = results.iter().find(|r| r.failover.is_some()) {
        let Some(failover) = &result.failover else {
            unreachable!("found with a failover")
        };
        let elected: Vec<Duration> = failover.rounds.iter().map(|r| r.elected).collect();
        let back: Vec<Duration> = failover
            .rounds
            .iter()
            .filter_map(|r| r.writes_back)
            .collect();
        println!();
        println!(
            "4. Failover, {}: kill -9 of the leader under {} posts/s, {} times; time from the kill until a\n   survivor's GET /admin/v1/cluster names another leader, and until a post sent after the kill\n   is acknowledged",
            result.label, args.light_rate, failover.rounds.len()
        );
        println!(
            "   new leader named: median {}, max {}, min {}",
            median(elected.clone()).map_or("-".to_owned(), seconds),
            elected
                .iter()
                .max()
                .copied()
                .map_or("-".to_owned(), seconds),
            elected
                .iter()
                .min()
                .copied()
                .map_or("-".to_owned(), seconds),
        );
        println!(
            "   writes acknowledged again: median {}, max {} ({} of {} rounds); {} posts acknowledged, {} refused or failed",
            median(back.clone()).map_or("-".to_owned(), seconds),
            back.iter().max().copied().map_or("-".to_owned(), seconds),
            back.len(),
            failover.rounds.len(),
            failover.acknowledged,
            failover.refused,
        );
    }

    if let Some(result) = results.iter().find(|r| r.lease.is_some()) {
        let Some(lease) = &result.lease else {
            unreachable!("found with a lease phase")
        };
        let moved: Vec<Duration> = lease
            .rounds
            .iter()
            .filter_map(|r| r.lease_moved.map(|(_, at)| at))
            .collect();
        let again: Vec<Duration> = lease
            .rounds
            .iter()
            .filter_map(|r| r.received_again)
            .collect();
        println!();
        println!(
            "5. Lease takeover, {}: kill -9 of the node holding {DESTINATION}'s delivery lease under {} posts/s,\n   {} times (lease_ttl {}; DESIGN §7: within 2 × lease_ttl)",
            result.label, args.light_rate, lease.rounds.len(), args.lease_ttl
        );
        println!(
            "   lease valid on another node: median {}, max {} ({} of {} rounds)",
            median(moved.clone()).map_or("-".to_owned(), seconds),
            moved.iter().max().copied().map_or("-".to_owned(), seconds),
            moved.len(),
            lease.rounds.len(),
        );
        println!(
            "   destination received again:  median {}, max {} ({} of {} rounds)",
            median(again.clone()).map_or("-".to_owned(), seconds),
            again.iter().max().copied().map_or("-".to_owned(), seconds),
            again.len(),
            lease.rounds.len(),
        );
        println!(
            "   {} posts acknowledged, {} of them not at the destination 20 s after the last; {} refused or failed",
            lease.acknowledged, lease.missing, lease.refused
        );
    }
}
