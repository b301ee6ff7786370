//! Several nodes on one PostgreSQL (DESIGN §7), three real applications in one process over
//! loopback: writes through every node, one gap-free verified chain, sockets fed on every
//! node, resume on another node, the internal route's refusals, the cluster view. (Killing
//! and pausing nodes needs processes: `cluster_process.rs`.)
//!
//! PostgreSQL only: without `SWITCHYARD_TEST_POSTGRES_URL` each test prints why and passes.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::gateway::{act, call, create_channel, post, register, Ws};
use crate::helpers::{spawn_app_with, TestApp, TestDb};

pub const INTERNAL_TOKEN: &str = "cluster-test-internal-token";
pub const ADMIN_TOKEN: &str = "cluster-test-admin-token";

/// `None` (after saying why) when no PostgreSQL is configured.
pub fn postgres() -> Option<String> {
    match std::env::var("SWITCHYARD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("skipped: cluster tests need PostgreSQL (set SWITCHYARD_TEST_POSTGRES_URL; .ci/run does)");
            None
        }
    }
}

pub struct Cluster {
    pub nodes: Vec<TestApp>,
    /// The database and the shared key file (every node signs with the same key); kept for
    /// the cluster's life.
    _db: TestDb,
}

impl Cluster {
    /// `n` nodes on one fresh PostgreSQL database, started one after the other.
    pub async fn start(n: usize) -> Option<Cluster> {
        Self::start_with(n, |_| {}).await
    }

    /// [`Cluster::start`] with `adjust` applied to every node's configuration.
    pub async fn start_with(
        n: usize,
        adjust: impl Fn(&mut switchyard::config::Config),
    ) -> Option<Cluster> {
        postgres()?;
        let db = TestDb::new().await;
        let mut nodes = Vec::new();
        for i in 0..n {
            nodes.push(Self::node(&db, i, &adjust).await);
        }
        Some(Cluster { nodes, _db: db })
    }

    pub async fn node(
        db: &TestDb,
        i: usize,
        adjust: &impl Fn(&mut switchyard::config::Config),
    ) -> TestApp {
        let key = db.dir.path().join("signing.key");
        let own = TestDb {
            url: db.url.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
        };
        spawn_app_with(own, |config| {
            config.cluster.enabled = true;
            config.cluster.node_id = format!("node{i}");
            config.cluster.internal_token = INTERNAL_TOKEN.into();
            config.cluster.lease_ttl = Duration::from_millis(1500);
            config.keys.path = key;
            config.server.admin_token = ADMIN_TOKEN.into();
            config.server.name = "cluster.test".into();
            adjust(config);
        })
        .await
    }

    /// The index of the one node that leads, once exactly one does.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let leaders: Vec<usize> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(_, n)| n.log.role().borrow().writes())
                .map(|(i, _)| i)
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
            assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every node has applied `seq`.
    pub async fn applied(&self, seq: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.nodes.iter().any(|n| n.log.committed_head() < seq) {
            assert!(Instant::now() < deadline, "a node did not apply {seq}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The whole log read from the database: seq 1..=head with no gap, each entry linked to the
/// one before; and the server's own verification (chain, tree, latest checkpoint).
pub async fn assert_log_intact(node: &TestApp) -> u64 {
    let head = node.store.head().await.expect("head").0;
    let mut after = 0;
    let mut prev = None;
    while after < head {
        let entries = node.store.read_after(after, 1000).await.expect("read");
        for entry in &entries {
            assert_eq!(entry.seq, after + 1, "a gap after {after}");
            if let Some(prev) = prev {
                assert_eq!(entry.prev_hash, prev, "the chain breaks at {}", entry.seq);
            }
            prev = Some(entry.entry_hash);
            after = entry.seq;
        }
    }
    let (status, report) = call(node, "POST", "/api/v1/log/verify", Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["valid"], true, "{report}");
    head
}

#[actix_web::test]
async fn writes_through_every_node_are_gap_free_and_the_chain_verifies() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let leader = cluster.leader().await;
    let nodes = &cluster.nodes;
    // Registered through one node, the session works on every node.
    let alice = register(&nodes[(leader + 1) % 3], "alice").await;
    let bob = register(&nodes[(leader + 2) % 3], "bob").await;
    let channel = create_channel(&nodes[leader], &alice, "General").await;
    act(
        &nodes[(leader + 1) % 3],
        &alice,
        &channel,
        "invite",
        Some(json!({"fid": bob.fid})),
    )
    .await;
    act(&nodes[(leader + 2) % 3], &bob, &channel, "join", None).await;
    let mut seqs = Vec::new();
    for round in 0..20 {
        for (i, node) in nodes.iter().enumerate() {
            let user = if round % 2 == 0 { &alice } else { &bob };
            let (id, seq) =
                post(node, user, &channel, &format!("round {round} via node {i}")).await;
            // Read-your-writes on the node that answered: it has applied its own commit.
            assert!(
                node.log.committed_head() >= seq,
                "node {i} answered before applying {seq}"
            );
            let path = format!("/api/v1/channels/{channel}/messages?limit=5");
            let (status, page) = call(node, "GET", &path, Some(&user.token), None).await;
            assert_eq!(status, 200, "{page}");
            assert!(
                page.to_string().contains(&id),
                "node {i} does not show {id} it committed"
            );
            seqs.push(seq);
        }
    }
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), seqs.len(), "two posts got one seq");
    let head = assert_log_intact(&nodes[0]).await;
    cluster.applied(head).await;
    // Every node publishes the same head, and every node's view of the log is the same.
    for node in nodes {
        let (_, answer) = call(node, "GET", "/api/v1/log/head", None, None).await;
        assert_eq!(answer["entry_count"], head);
    }
    // The cluster metrics the alert rules and the dashboard use are served by every node.
    let wanted = crate::helpers::metrics_in_dashboards("cluster_");
    assert!(!wanted.is_empty());
    for node in nodes {
        let missing = crate::helpers::metrics_missing(&node.address, &wanted).await;
        assert!(missing.is_empty(), "absent from /metrics: {missing:?}");
    }
    // The followers forwarded; the leader committed everything.
    let (status, view) = call(
        &nodes[0],
        "GET",
        "/admin/v1/cluster",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["enabled"], true);
    assert_eq!(view["leader"]["node_id"], format!("node{leader}"));
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
}

#[actix_web::test]
async fn a_socket_on_one_node_gets_what_another_commits_and_resumes_on_a_third() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let nodes = &cluster.nodes;
    let alice = register(&nodes[0], "alice").await;
    let bob = register(&nodes[1], "bob").await;
    let channel = create_channel(&nodes[0], &alice, "General").await;
    act(
        &nodes[0],
        &alice,
        &channel,
        "invite",
        Some(json!({"fid": bob.fid})),
    )
    .await;
    act(&nodes[2], &bob, &channel, "join", None).await;
    // Bob listens on node 2; Alice posts on node 0.
    let (mut ws, _) = Ws::open(&nodes[2], &bob).await;
    let mut posted = Vec::new();
    for i in 0..30 {
        posted.push(post(&nodes[0], &alice, &channel, &format!("m{i}")).await.1);
    }
    let mut seen = Vec::new();
    while seen.len() < 15 {
        let event = ws.event().await;
        if event["type"] == "message.new" {
            seen.push(event["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(
        seen,
        posted[..15],
        "node 2's socket: in order, no gap, no duplicate"
    );
    // The socket drops; Bob resumes on node 1 from the last seq he saw.
    drop(ws);
    let mut ws = Ws::resume(&nodes[1], &bob, seen[14]).await;
    let mut rest = Vec::new();
    while rest.len() < 15 {
        let event = ws.event().await;
        if event["type"] == "message.new" {
            rest.push(event["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(rest, posted[15..], "the resume on node 1 continues exactly");
    // REST catch-up on node 2 pages through the same entries.
    let (status, page) = call(
        &nodes[2],
        "GET",
        &format!("/.p2/core/v1/events?since={}&limit=1000", posted[0] - 1),
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    let caught: Vec<u64> = page
        .as_array()
        .expect("array")
        .iter()
        .filter(|e| e["type"] == "message.new")
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(caught, posted, "REST catch-up on node 2");
    ws.close().await;
}

#[actix_web::test]
async fn the_internal_route_refuses_strangers_and_followers_say_not_leader() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let leader = cluster.leader().await;
    let follower = &cluster.nodes[1 - leader];
    let head = follower.store.head().await.expect("head").0;
    let event = json!({"events": [{
        "event_id": "x1", "origin": "cluster.test", "type": "message.new",
        "sender": null, "channel": null, "origin_ts": 1, "content": {}
    }]});
    let client = awc::Client::default();
    let send = |node: &TestApp, token: Option<&str>, body: Value| {
        let mut request = client.post(format!("{}/internal/v1/append", node.address));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let mut res = request.send_json(&body).await.expect("request");
            let body: Value = res.json().await.unwrap_or(Value::Null);
            (
                res.status().as_u16(),
                res.headers().get("retry-after").is_some(),
                body,
            )
        }
    };
    let (status, _, body) = send(follower, None, event.clone()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_MISSING_TOKEN"))
    );
    let (status, _, body) = send(follower, Some("wrong"), event.clone()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("SY_FORBIDDEN"))
    );
    let (status, retry, body) = send(follower, Some(INTERNAL_TOKEN), event.clone()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (503, Some("SY_NOT_LEADER"))
    );
    assert!(retry, "503 carries Retry-After");
    let leader = &cluster.nodes[leader];
    let (status, _, body) = send(leader, Some(INTERNAL_TOKEN), json!({"events": 3})).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_BAD_JSON"))
    );
    let mut bad = event.clone();
    bad["events"][0]["type"] = json!("no.such.type");
    let (status, _, body) = send(leader, Some(INTERNAL_TOKEN), bad).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_INVALID_PARAM")),
        "{body}"
    );
    // Key rotation through one node would leave the others with a retired key: refused.
    let (status, body) = call(
        leader,
        "POST",
        "/admin/v1/keys/rotate",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (409, Some("SY_CONFLICT")),
        "{body}"
    );
    assert_eq!(
        leader.store.head().await.expect("head").0,
        head,
        "nothing was written"
    );
    // Another method: 405 in the one error format.
    let mut res = client
        .get(format!("{}/internal/v1/append", leader.address))
        .send()
        .await
        .expect("request");
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (res.status().as_u16(), body["errcode"].as_str()),
        (405, Some("SY_METHOD_NOT_ALLOWED")),
        "{body}"
    );
    // On one node the route does not exist.
    let single = crate::helpers::spawn_app().await;
    let (status, _, body) = send(&single, Some(INTERNAL_TOKEN), event).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("SY_NOT_FOUND"))
    );
}

#[actix_web::test]
async fn a_leader_that_stops_hands_over_and_appends_keep_working() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let leader = cluster.leader().await;
    let alice = register(&cluster.nodes[(leader + 1) % 3], "alice").await;
    let survivor = &cluster.nodes[(leader + 1) % 3];
    let channel = create_channel(survivor, &alice, "General").await;
    post(survivor, &alice, &channel, "before").await;
    let stopped = Instant::now();
    cluster.nodes[leader].shutdown.clone().stop().await;
    // Posting during the hand-over waits for the new leader rather than failing.
    let (_, seq) = post(survivor, &alice, &channel, "during").await;
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "the hand-over took {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    let new_leader = loop {
        let leaders: Vec<usize> = (0..3)
            .filter(|i| *i != leader && cluster.nodes[*i].log.role().borrow().writes())
            .collect();
        if leaders.len() == 1 {
            break leaders[0];
        }
        assert!(Instant::now() < deadline, "no new leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(new_leader, leader);
    let head = assert_log_intact(survivor).await;
    assert!(head >= seq);
}

/// A signed inbox request from `origin` (its `key`) to the cluster.
async fn send_inbox(
    node: &TestApp,
    key: &switchyard::federation::signing::ServerKey,
    origin: &str,
    body: &Value,
) -> (u16, Value) {
    use switchyard::federation::signing::RequestSignature;
    let body = serde_json::to_vec(body).expect("json");
    let timestamp = (switchyard::clock::now_ms() / 1000).to_string();
    let key_id = key.key_id();
    let signature = key.sign_request(&RequestSignature {
        method: "POST",
        path: "/federation/inbox",
        origin,
        destination: "cluster.test",
        timestamp: &timestamp,
        key_id: &key_id,
        body: &body,
    });
    let mut res = awc::Client::default()
        .post(format!("{}/federation/inbox", node.address))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Switchyard-Origin", origin))
        .insert_header(("X-Switchyard-Timestamp", timestamp.as_str()))
        .insert_header(("X-Switchyard-Key", key_id.as_str()))
        .insert_header(("X-Switchyard-Signature", signature.as_str()))
        .send_body(body)
        .await
        .expect("request");
    let answer = res.json::<Value>().await.unwrap_or(Value::Null);
    (res.status().as_u16(), answer)
}

#[actix_web::test]
async fn a_remote_servers_quota_holds_for_the_cluster_and_its_policy_reaches_every_node() {
    if postgres().is_none() {
        return;
    }
    // The remote server b.test, serving its key.
    let b = spawn_app_with(TestDb::new().await, |c| c.server.name = "b.test".into()).await;
    let b_key =
        switchyard::federation::signing::ServerKey::load(&b.db.dir.path().join("signing.key"))
            .expect("b's key");
    let b_address = b.address.clone();
    let Some(cluster) = Cluster::start_with(3, move |c| {
        c.federation
            .resolve
            .insert("b.test".into(), b_address.clone());
        c.federation.default_rate_per_minute = 60;
        c.federation.default_burst = 30;
    })
    .await
    else {
        return;
    };
    let nodes = &cluster.nodes;
    let leader = cluster.leader().await;
    nodes[leader]
        .log
        .append(vec![
            crate::helpers::event(
                "cluster.test",
                "c1",
                "channel.new",
                "alice@cluster.test",
                json!({"name": "General"}),
            ),
            crate::helpers::event(
                "cluster.test",
                "i1",
                "channel.invite",
                "alice@cluster.test",
                json!({"invitee": "bob@b.test"}),
            ),
        ])
        .await
        .expect("channel");
    let join = |i: usize| {
        json!({"events": [{"event_id": format!("j{i}"), "type": "channel.join",
            "sender": "bob@b.test", "channel": "general@cluster.test",
            "ts": 1_700_000_000_000i64, "content": {}}]})
    };
    // Two events at a time through every node in turn, as fast as they are answered: on one
    // node the burst (30) and the rate (1/s) would allow about 30 + t; three nodes with a
    // quota each would allow three times that.
    let started = Instant::now();
    let (mut accepted, mut limited) = (0u64, 0u64);
    for i in 0..120 {
        let (status, answer) = send_inbox(&nodes[i % 3], &b_key, "b.test", &join(i)).await;
        match status {
            200 => accepted += 1,
            429 => {
                assert_eq!(answer["errcode"], "SY_LIMIT_EXCEEDED", "{answer}");
                limited += 1;
            }
            other => panic!("{other}: {answer}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let allowed = 30.0 + seconds;
    eprintln!(
        "accepted {accepted}, limited {limited} in {seconds:.2} s; the cluster allows {allowed:.1}"
    );
    assert!(
        (accepted as f64) <= allowed * 1.1 + 1.0,
        "the quota leaked across nodes: {accepted} accepted, {allowed:.1} allowed"
    );
    assert!(
        accepted as f64 >= allowed * 0.9 - 1.0,
        "the quota starved: {accepted} of {allowed:.1}"
    );
    // An operator raises the quota through one node; every node applies it.
    let mut res = awc::Client::default()
        .put(format!(
            "{}/admin/v1/origins/b.test",
            nodes[(leader + 1) % 3].address
        ))
        .insert_header(("Authorization", format!("Bearer {ADMIN_TOKEN}")))
        .send_json(&json!({"rate_per_minute": 60000, "burst": 1000, "blocked": false}))
        .await
        .expect("put");
    assert_eq!(res.status(), 200, "{:?}", res.body().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (i, node) in nodes.iter().enumerate() {
        let (status, answer) = send_inbox(node, &b_key, "b.test", &join(1000 + i)).await;
        assert_eq!(
            status, 200,
            "node {i} did not apply the new policy: {answer}"
        );
    }
}

#[actix_web::test]
async fn with_no_leader_a_write_is_503_with_retry_after_and_writes_nothing() {
    use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
    if postgres().is_none() {
        return;
    }
    let db = TestDb::new().await;
    db.store().await; // migrated, so the lock can be taken before any node starts
                      // Someone else holds the leader's advisory lock (store::cluster::LEADER_LOCK) and the
                      // leader row names nobody: the node can neither lead nor depose anyone.
    let holder = Database::connect(&db.url).await.expect("connect");
    holder
        .execute(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_advisory_lock(6014409299061989732)",
        ))
        .await
        .expect("lock");
    let node = Cluster::node(&db, 0, &|_| {}).await;
    let head = node.store.head().await.expect("head").0;
    let started = Instant::now();
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(30))
        .finish();
    let mut res = client
        .post(format!("{}/api/v1/auth/register", node.address))
        .send_json(&json!({"username": "alice", "password": "correct horse"}))
        .await
        .expect("register");
    let waited = started.elapsed();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (res.status().as_u16(), body["errcode"].as_str()),
        (503, Some("SY_UNAVAILABLE")),
        "{body}"
    );
    assert!(
        res.headers().get("retry-after").is_some(),
        "503 carries Retry-After"
    );
    assert!(
        waited >= Duration::from_secs(5),
        "it waited for an election first ({waited:?})"
    );
    assert_eq!(
        node.store.head().await.expect("head").0,
        head,
        "nothing was written"
    );
    assert!(!node.log.role().borrow().writes());
    // The lock is released: the node leads and the same registration goes through.
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !node.log.role().borrow().writes() {
        assert!(
            Instant::now() < deadline,
            "the node did not take the free lock"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    register(&node, "alice").await;
}
