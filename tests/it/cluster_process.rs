//! Several nodes as real `switchyard serve` processes on one PostgreSQL (DESIGN §7), for what
//! needs processes: kill -9 of the leader under load, a hung (SIGSTOP) leader and its wake-up,
//! kill -9 of the node delivering to a destination.
//!
//! PostgreSQL only: without `SWITCHYARD_TEST_POSTGRES_URL` each test prints why and passes.

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

use crate::cluster::{postgres, ADMIN_TOKEN, INTERNAL_TOKEN};
use crate::helpers::TestDb;

/// A node process and what it printed.
struct Proc {
    child: Child,
    address: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct ProcCluster {
    db: TestDb,
    config: String,
    lease_ttl: &'static str,
    nodes: Vec<Option<Proc>>,
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal}");
}

impl ProcCluster {
    /// `n` node processes on one fresh database, sharing one key file; `toml` is added to
    /// their configuration file.
    async fn start(n: usize, lease_ttl: &'static str, toml: &str) -> Option<ProcCluster> {
        postgres()?;
        let db = TestDb::new().await;
        let config = db.dir.path().join("cluster.toml");
        std::fs::write(&config, format!("[server]\nbind = \"127.0.0.1:0\"\n{toml}"))
            .expect("write config");
        let mut cluster = ProcCluster {
            db,
            config: config.display().to_string(),
            lease_ttl,
            nodes: (0..n).map(|_| None).collect(),
        };
        for i in 0..n {
            cluster.spawn(i);
        }
        Some(cluster)
    }

    fn spawn(&mut self, i: usize) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(["--config", &self.config, "serve"])
            .env("SWITCHYARD__DATABASE__URL", &self.db.url)
            .env("SWITCHYARD__DATABASE__MAX_CONNECTIONS", "4")
            .env(
                "SWITCHYARD__KEYS__PATH",
                self.db.dir.path().join("signing.key"),
            )
            .env("SWITCHYARD__SERVER__NAME", "cluster.test")
            .env("SWITCHYARD__SERVER__ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SWITCHYARD__SERVER__WORKERS", "1")
            .env("SWITCHYARD__CLUSTER__ENABLED", "true")
            .env("SWITCHYARD__CLUSTER__NODE_ID", format!("node{i}"))
            .env("SWITCHYARD__CLUSTER__INTERNAL_TOKEN", INTERNAL_TOKEN)
            .env("SWITCHYARD__CLUSTER__LEASE_TTL", self.lease_ttl)
            .env("SWITCHYARD__LOG__FORMAT", "json")
            .env("RUST_LOG", "warn,switchyard=info")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn switchyard");
        let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var("SWITCHYARD_TEST_NODE_LOGS").is_ok() {
                    eprintln!("node{i}: {line}");
                }
                let _ = lines_tx.send(line);
            }
        });
        let port = loop {
            let line = lines
                .recv_timeout(Duration::from_secs(60))
                .expect("the node did not start");
            if line.contains("switchyard is listening") {
                let line: Value = serde_json::from_str(&line).expect("a JSON log line");
                break line["port"].as_u64().expect("a port");
            }
        };
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        self.nodes[i] = Some(Proc {
            child,
            address: format!("http://127.0.0.1:{port}"),
        });
    }

    fn address(&self, i: usize) -> Option<String> {
        self.nodes[i].as_ref().map(|p| p.address.clone())
    }

    /// The cluster view as node `i` answers it.
    async fn view(&self, i: usize) -> Option<Value> {
        let address = self.address(i)?;
        let mut res = awc::Client::default()
            .get(format!("{address}/admin/v1/cluster"))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        res.json::<Value>().await.ok()
    }

    /// The index of the node that leads, as the live node `asking` sees it, once there is one
    /// other than `not`.
    async fn leader(&self, asking: usize, not: Option<usize>, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(view) = self.view(asking).await {
                if let Some(id) = view["leader"]["node_id"].as_str() {
                    let index: usize = id.trim_start_matches("node").parse().expect("node id");
                    if Some(index) != not {
                        return index;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until node `i` says it follows.
    async fn follows(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(view) = self.view(i).await {
                if view["role"] == "follower" {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node{i} did not rejoin as a follower"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn request(
    address: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Option<(u16, Value)> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut request = client.request(method.parse().expect("method"), format!("{address}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut res = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .ok()?;
    let bytes = res.body().limit(16 << 20).await.ok()?;
    Some((
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

/// Registers `name` through node `i`: its token.
async fn register(cluster: &ProcCluster, i: usize, name: &str) -> String {
    let address = cluster.address(i).expect("live node");
    let (status, body) = request(
        &address,
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({"username": name, "password": "correct horse"})),
    )
    .await
    .expect("register");
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("token").to_owned()
}

async fn create_channel(address: &str, token: &str) -> String {
    let (status, body) = request(
        address,
        "POST",
        "/api/v1/channels",
        Some(token),
        Some(json!({"name": "General"})),
    )
    .await
    .expect("channel");
    assert_eq!(status, 201, "{body}");
    body["ref"].as_str().expect("ref").to_owned()
}

/// Acknowledged posts: (seq, body).
type Acked = Rc<RefCell<Vec<(u64, String)>>>;

/// Posts in a loop through every node in `targets` (round robin) until `stop`; records what
/// was acknowledged. Refusals while a node is down or an election runs are expected.
fn load(
    targets: Rc<RefCell<Vec<Option<String>>>>,
    token: String,
    channel: String,
    stop: Rc<RefCell<bool>>,
) -> (Acked, actix_web::rt::task::JoinHandle<u64>) {
    let acked: Acked = Rc::default();
    let record = acked.clone();
    let task = actix_web::rt::spawn(async move {
        let mut refused = 0;
        let mut n = 0u64;
        while !*stop.borrow() {
            let live: Vec<String> = targets.borrow().iter().flatten().cloned().collect();
            for address in live {
                n += 1;
                let body = format!("load message {n}");
                let path = format!("/api/v1/channels/{channel}/messages");
                match request(
                    &address,
                    "POST",
                    &path,
                    Some(&token),
                    Some(json!({"body": body})),
                )
                .await
                {
                    Some((201, answer)) => record
                        .borrow_mut()
                        .push((answer["seq"].as_u64().expect("seq"), body)),
                    _ => refused += 1,
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        refused
    });
    (acked, task)
}

/// Every acknowledged post is in the log at its seq; the log has no gap and its chain links;
/// `switchyard log verify` agrees (chain, tree, latest checkpoint).
async fn assert_acknowledged_kept(cluster: &ProcCluster, acked: &[(u64, String)]) {
    let store = cluster.db.store().await;
    let head = store.head().await.expect("head").0;
    let mut after = 0;
    let mut prev = None;
    let mut by_seq = std::collections::HashMap::new();
    while after < head {
        for entry in store.read_after(after, 1000).await.expect("read") {
            assert_eq!(entry.seq, after + 1, "a gap after {after}");
            if let Some(prev) = prev {
                assert_eq!(entry.prev_hash, prev, "the chain breaks at {}", entry.seq);
            }
            prev = Some(entry.entry_hash);
            after = entry.seq;
            by_seq.insert(entry.seq, entry.content.get().to_owned());
        }
    }
    for (seq, body) in acked {
        let content = by_seq
            .get(seq)
            .unwrap_or_else(|| panic!("acknowledged seq {seq} is missing"));
        assert!(
            content.contains(&format!("\"{body}\"")),
            "seq {seq} holds {content}, not {body:?}"
        );
    }
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", &cluster.config, "log", "verify"])
        .env("SWITCHYARD__DATABASE__URL", &cluster.db.url)
        .env(
            "SWITCHYARD__KEYS__PATH",
            cluster.db.dir.path().join("signing.key"),
        )
        .env("SWITCHYARD__SERVER__NAME", "cluster.test")
        .output()
        .expect("log verify");
    assert!(
        output.status.success(),
        "log verify: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[actix_web::test]
async fn killing_the_leader_under_load_elects_another_within_5s_and_loses_nothing() {
    let Some(mut cluster) = ProcCluster::start(3, "2s", "").await else {
        return;
    };
    let token = register(&cluster, 0, "alice").await;
    let channel = create_channel(&cluster.address(1).expect("node1"), &token).await;
    let targets = Rc::new(RefCell::new(
        (0..3).map(|i| cluster.address(i)).collect::<Vec<_>>(),
    ));
    let stop = Rc::new(RefCell::new(false));
    let (acked, load) = load(targets.clone(), token, channel, stop.clone());
    let mut failovers = Vec::new();
    for round in 0..3 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        let asking = (0..3)
            .find(|i| cluster.nodes[*i].is_some())
            .expect("a live node");
        let leader = cluster.leader(asking, None, Duration::from_secs(10)).await;
        targets.borrow_mut()[leader] = None;
        let before = acked.borrow().len();
        signal(
            &cluster.nodes[leader].as_ref().expect("leader").child,
            "-KILL",
        );
        let killed = Instant::now();
        cluster.nodes[leader] = None;
        let survivor = (0..3).find(|i| *i != leader).expect("survivor");
        let next = cluster
            .leader(survivor, Some(leader), Duration::from_secs(10))
            .await;
        let took = killed.elapsed();
        failovers.push(took);
        assert!(
            took < Duration::from_secs(5),
            "round {round}: a new leader after {took:?}"
        );
        assert_ne!(next, leader);
        // The old leader comes back and follows.
        cluster.spawn(leader);
        cluster.follows(leader, Duration::from_secs(10)).await;
        targets.borrow_mut()[leader] = cluster.address(leader);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            acked.borrow().len() > before,
            "round {round}: nothing was acknowledged after the kill"
        );
    }
    *stop.borrow_mut() = true;
    let refused = load.await.expect("load");
    eprintln!(
        "failovers: {failovers:?}; acknowledged {}, refused {refused}",
        acked.borrow().len()
    );
    assert_acknowledged_kept(&cluster, &acked.borrow()).await;
}

#[actix_web::test]
async fn a_hung_leader_is_replaced_within_two_leases_and_rejoins_when_it_wakes() {
    let Some(cluster) = ProcCluster::start(3, "2s", "").await else {
        return;
    };
    let token = register(&cluster, 0, "alice").await;
    let leader = cluster.leader(0, None, Duration::from_secs(10)).await;
    let channel = create_channel(&cluster.address(leader).expect("leader"), &token).await;
    let targets = Rc::new(RefCell::new(
        (0..3).map(|i| cluster.address(i)).collect::<Vec<_>>(),
    ));
    let stop = Rc::new(RefCell::new(false));
    let (acked, load) = load(
        targets.clone(),
        token.clone(),
        channel.clone(),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    // The leader hangs with its connections open.
    targets.borrow_mut()[leader] = None;
    signal(
        &cluster.nodes[leader].as_ref().expect("leader").child,
        "-STOP",
    );
    let paused = Instant::now();
    let survivor = (leader + 1) % 3;
    let next = cluster
        .leader(survivor, Some(leader), Duration::from_secs(10))
        .await;
    let took = paused.elapsed();
    assert!(
        took <= Duration::from_secs(4),
        "replaced after {took:?} (2 × lease_ttl = 4 s)"
    );
    assert_ne!(next, leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // It wakes: it cannot commit, learns it was deposed and follows.
    signal(
        &cluster.nodes[leader].as_ref().expect("leader").child,
        "-CONT",
    );
    cluster.follows(leader, Duration::from_secs(10)).await;
    targets.borrow_mut()[leader] = cluster.address(leader);
    let address = cluster.address(leader).expect("woken node");
    let (status, body) = request(
        &address,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(&token),
        Some(json!({"body": "from the woken node"})),
    )
    .await
    .expect("post");
    assert_eq!(status, 201, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    *stop.borrow_mut() = true;
    load.await.expect("load");
    // The woken node can lead again (its writer connection, terminated while it slept, is
    // replaced): the other two die, and it takes over.
    for other in (0..3).filter(|i| *i != leader) {
        signal(&cluster.nodes[other].as_ref().expect("node").child, "-KILL");
    }
    let killed = Instant::now();
    let again = cluster
        .leader(leader, Some(next), Duration::from_secs(10))
        .await;
    assert_eq!(again, leader, "the woken node did not take the lead");
    let took_again = killed.elapsed();
    assert!(
        took_again < Duration::from_secs(5),
        "it led again after {took_again:?}"
    );
    let (status, body) = request(
        &address,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(&token),
        Some(json!({"body": "led by the woken node"})),
    )
    .await
    .expect("post");
    assert_eq!(status, 201, "{body}");
    acked.borrow_mut().push((
        body["seq"].as_u64().expect("seq"),
        "led by the woken node".into(),
    ));
    eprintln!(
        "hung leader replaced after {took:?}, led again {took_again:?} after the others died; acknowledged {}",
        acked.borrow().len()
    );
    assert_acknowledged_kept(&cluster, &acked.borrow()).await;
}

/// Events a fake destination received, in arrival order: (seq, arrival).
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<u64>>>);

async fn destination_inbox(body: web::Bytes, received: web::Data<Received>) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut results = serde_json::Map::new();
    for event in body["events"].as_array().into_iter().flatten() {
        let id = event["event_id"].as_str().unwrap_or_default();
        if let Some(seq) = id.strip_prefix("seq:").and_then(|s| s.parse().ok()) {
            received.0.lock().expect("lock").push(seq);
        }
        results.insert(id.to_owned(), json!({"status": "accepted"}));
    }
    HttpResponse::Ok().json(json!({ "results": results }))
}

#[actix_web::test]
async fn killing_the_lease_holder_moves_the_destination_and_delivers_everything_in_order() {
    if postgres().is_none() {
        return;
    }
    let received = Received::default();
    let data = web::Data::new(received.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/federation/inbox", web::post().to(destination_inbox))
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    actix_web::rt::spawn(server);
    let toml = format!("[federation.resolve]\n\"dest.test\" = \"http://127.0.0.1:{port}\"\n");
    let Some(mut cluster) = ProcCluster::start(3, "2s", &toml).await else {
        return;
    };
    let token = register(&cluster, 0, "alice").await;
    let address = cluster.address(0).expect("node0");
    let channel = create_channel(&address, &token).await;
    let (status, body) = request(
        &address,
        "POST",
        &format!("/api/v1/channels/{channel}/invite"),
        Some(&token),
        Some(json!({"fid": "bob@dest.test"})),
    )
    .await
    .expect("invite");
    assert_eq!(status, 200, "{body}");
    let mut posted = vec![body["seq"].as_u64().expect("seq")];
    let post = |address: String, n: usize| {
        let (token, channel) = (token.clone(), channel.clone());
        async move {
            let (status, body) = request(
                &address,
                "POST",
                &format!("/api/v1/channels/{channel}/messages"),
                Some(&token),
                Some(json!({"body": format!("m{n}")})),
            )
            .await?;
            (status == 201).then(|| body["seq"].as_u64().expect("seq"))
        }
    };
    for n in 0..20 {
        posted.extend(post(cluster.address(n % 3).expect("node"), n).await);
    }
    // Whoever holds the destination's lease is killed mid-stream.
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        let view = cluster.view(0).await.expect("view");
        let holder = view["leases"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|l| l["destination"] == "dest.test" && l["valid"] == true)
            .and_then(|l| l["node_id"].as_str().map(str::to_owned));
        if let Some(holder) = holder {
            break holder
                .trim_start_matches("node")
                .parse::<usize>()
                .expect("node id");
        }
        assert!(
            Instant::now() < deadline,
            "nobody took the destination's lease: {view}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    signal(
        &cluster.nodes[holder].as_ref().expect("holder").child,
        "-KILL",
    );
    let killed = Instant::now();
    cluster.nodes[holder] = None;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != holder).collect();
    // Posting goes on through the survivors (an election may be under way if it led).
    for n in 20..60 {
        let i = survivors[n % 2];
        if let Some(seq) = post(cluster.address(i).expect("survivor"), n).await {
            posted.push(seq);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let moved = loop {
        let got = received.0.lock().expect("lock").clone();
        if posted.iter().all(|s| got.contains(s)) {
            break killed.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "the destination did not receive everything: missing {:?}",
            posted
                .iter()
                .filter(|s| !got.contains(s))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let view = cluster.view(survivors[0]).await.expect("view");
    let lease = view["leases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|l| l["destination"] == "dest.test")
        .cloned()
        .unwrap_or(Value::Null);
    assert_ne!(lease["node_id"], format!("node{holder}"), "{view}");
    // At least once, in order: with repeats removed (first arrival kept), the seqs ascend.
    let got = received.0.lock().expect("lock").clone();
    let mut first = Vec::new();
    for seq in got {
        if !first.contains(&seq) {
            first.push(seq);
        }
    }
    let mut sorted = first.clone();
    sorted.sort_unstable();
    assert_eq!(
        first, sorted,
        "the destination received events out of order"
    );
    eprintln!("lease moved and everything delivered {moved:?} after the kill");
}
