//! Delivery leases on several nodes of one PostgreSQL (DESIGN §7, "Outbound delivery"): two
//! `Delivery` instances with node identities on one database and one event log (every node's
//! router sees every committed batch, as in a cluster), delivering to a fake inbox that
//! records which node sent which event to which destination. The cluster core's heartbeat
//! (`cluster_nodes.seen_ms`) is played by the test.
//!
//! PostgreSQL only: skipped unless `SWITCHYARD_TEST_POSTGRES_URL` is set.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use sea_orm::{
    ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};
use serde_json::{json, Value};
use switchyard::cluster::{NodeIdentity, DB_NOW_MS};
use switchyard::config::FederationConfig;
use switchyard::federation::client::Resolver;
use switchyard::federation::delivery::Delivery;
use switchyard::federation::signing::{KeyRing, ServerKey};
use switchyard::store::{delivery_leases, Store};

use crate::helpers::{event, spawn_log, TestLog};

const US: &str = "a.test";
const TTL: Duration = Duration::from_millis(600);
const DESTINATIONS: [&str; 4] = ["d1.test", "d2.test", "d3.test", "d4.test"];

fn postgres() -> bool {
    let set = std::env::var("SWITCHYARD_TEST_POSTGRES_URL").is_ok_and(|url| !url.is_empty());
    if !set {
        eprintln!("skipped: delivery leases need PostgreSQL (set SWITCHYARD_TEST_POSTGRES_URL)");
    }
    set
}

/// What the fake inbox received: `(node, destination, seq)` in arrival order (accepted
/// events), and every request with its arrival time, refused ones included.
#[derive(Clone, Default)]
struct Received(
    Arc<Mutex<Vec<(String, String, u64)>>>,
    Arc<Mutex<Vec<(String, String, Instant)>>>,
    /// While set, every request is answered 503 (the senders retry with backoff).
    Arc<AtomicBool>,
);

impl Received {
    fn all(&self) -> Vec<(String, String, u64)> {
        self.0.lock().expect("lock").clone()
    }

    /// Every request, `(node, destination, arrival)`.
    fn requests(&self) -> Vec<(String, String, Instant)> {
        self.1.lock().expect("lock").clone()
    }

    fn fail(&self, fail: bool) {
        self.2.store(fail, Ordering::SeqCst);
    }

    /// The seqs `destination` received, in arrival order, from any node.
    fn of(&self, destination: &str) -> Vec<u64> {
        self.all()
            .into_iter()
            .filter(|(_, d, _)| d == destination)
            .map(|(_, _, seq)| seq)
            .collect()
    }
}

/// `POST /{node}/{destination}/federation/inbox`: every event accepted and recorded. Each
/// node resolves each destination to its own path, so the inbox knows who sent what.
async fn inbox(
    path: web::Path<(String, String)>,
    body: web::Bytes,
    received: web::Data<Received>,
) -> HttpResponse {
    let (node, destination) = path.into_inner();
    received
        .1
        .lock()
        .expect("lock")
        .push((node.clone(), destination.clone(), Instant::now()));
    if received.2.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .json(json!({"errcode": "SY_UNAVAILABLE", "error": "failing on purpose"}));
    }
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    let mut results = serde_json::Map::new();
    for event in body["events"].as_array().expect("events") {
        let id = event["event_id"].as_str().expect("event_id");
        let seq = id
            .strip_prefix("seq:")
            .and_then(|s| s.parse().ok())
            .expect("seq:<seq> id");
        received
            .0
            .lock()
            .expect("lock")
            .push((node.clone(), destination.clone(), seq));
        results.insert(id.to_owned(), json!({"status": "accepted"}));
    }
    HttpResponse::Ok().json(json!({ "results": results }))
}

struct FakeInbox {
    port: u16,
    received: Received,
    server: actix_web::dev::ServerHandle,
}

fn fake_inbox() -> FakeInbox {
    let received = Received::default();
    let data = web::Data::new(received.clone());
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/{node}/{destination}/federation/inbox",
            web::post().to(inbox),
        )
    })
    .workers(1)
    .listen(listener)
    .expect("listen")
    .run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    FakeInbox {
        port,
        received,
        server: handle,
    }
}

/// One simulated node: its Delivery, its own database connections, and the heartbeat the
/// cluster core would keep.
struct TestNode {
    delivery: Arc<Delivery>,
    heartbeat: tokio::task::JoinHandle<()>,
}

async fn raw(log: &TestLog) -> DatabaseConnection {
    Database::connect(&log.db.url).await.expect("connect")
}

/// `cluster_nodes.seen_ms` of `node` refreshed every 100 ms on the database's clock, as the
/// cluster core does for a live node.
fn heartbeat(db: DatabaseConnection, node: String) -> tokio::task::JoinHandle<()> {
    actix_web::rt::spawn(async move {
        loop {
            db.execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                format!(
                    "INSERT INTO cluster_nodes \
                     (node_id, advertise_url, role, epoch, applied_seq, started_ms, seen_ms) \
                     VALUES ($1, 'http://127.0.0.1:1', 'follower', 0, 0, {DB_NOW_MS}, {DB_NOW_MS}) \
                     ON CONFLICT (node_id) DO UPDATE SET seen_ms = EXCLUDED.seen_ms"
                ),
                [node.clone().into()],
            ))
            .await
            .expect("heartbeat");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn start_node(log: &TestLog, inbox: &FakeInbox, id: &str) -> TestNode {
    let heartbeat = heartbeat(raw(log).await, id.to_owned());
    // The row exists before the node delivers, as the cluster core writes it at start.
    wait_until(
        "the node's heartbeat row",
        Duration::from_secs(5),
        || async { live_nodes(log).await.contains(&id.to_owned()) },
    )
    .await;
    let delivery = start_delivery(
        log,
        inbox,
        id,
        Some(NodeIdentity {
            node_id: id.to_owned(),
            advertise_url: "http://127.0.0.1:1".into(),
            lease_ttl: TTL,
        }),
    )
    .await;
    TestNode {
        delivery,
        heartbeat,
    }
}

/// A Delivery delivering to the fake inbox under the path of `id`: a cluster node's with
/// `node`, one node's without.
async fn start_delivery(
    log: &TestLog,
    inbox: &FakeInbox,
    id: &str,
    node: Option<NodeIdentity>,
) -> Arc<Delivery> {
    let mut federation = FederationConfig {
        delivery_backoff_base: Duration::from_millis(50),
        delivery_max_backoff: Duration::from_millis(200),
        ..FederationConfig::default()
    };
    for destination in DESTINATIONS {
        federation.resolve.insert(
            destination.to_owned(),
            format!("http://127.0.0.1:{}/{id}/{destination}", inbox.port),
        );
    }
    let store: Store = log.db.store().await;
    let keys = Arc::new(KeyRing::new(
        &log.db.dir.path().join(format!("{id}.key")),
        ServerKey::generate(),
        Vec::new(),
    ));
    Delivery::start(
        US,
        &federation,
        store,
        &log.log,
        keys,
        Arc::new(Resolver::new(&federation)),
        Arc::new(switchyard::telemetry::Metrics::new().expect("metrics")),
        node,
    )
    .await
    .expect("start delivery")
}

impl TestNode {
    /// Dies: no heartbeat, no renewal, nothing released.
    fn kill(&self) {
        self.heartbeat.abort();
        self.delivery.halt();
    }
}

async fn live_nodes(log: &TestLog) -> Vec<String> {
    let db = raw(log).await;
    let rows = db
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT node_id FROM cluster_nodes WHERE seen_ms > {DB_NOW_MS} - 600"),
        ))
        .await
        .expect("nodes");
    db.close().await.expect("close");
    rows.iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("node_id"))
        .collect()
}

/// The valid leases per holder, on the database's clock.
async fn holders(log: &TestLog) -> BTreeMap<String, Vec<String>> {
    let db = raw(log).await;
    let now = db
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            format!("SELECT {DB_NOW_MS}"),
        ))
        .await
        .expect("now")
        .expect("row")
        .try_get_by_index::<i64>(0)
        .expect("ms");
    db.close().await.expect("close");
    let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (destination, node, until) in delivery_leases(&log.store).await.expect("leases") {
        if let Some(node) = node.filter(|_| until > now) {
            holders.entry(node).or_default().push(destination);
        }
    }
    holders
}

async fn n1_destinations(log: &TestLog) -> Vec<String> {
    let held = holders(log).await.remove("n1").unwrap_or_default();
    assert_eq!(held.len(), 2, "n1 holds two leases before it dies");
    held
}

async fn wait_until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One message of ours per destination, each in a channel homed there (so it is routed to
/// that server).
fn round_events(round: &str) -> Vec<switchyard::core::event::NewEvent> {
    DESTINATIONS
        .iter()
        .map(|destination| {
            let id = format!("{round}-{destination}");
            let mut e = event(
                US,
                &id,
                "message.new",
                &format!("alice@{US}"),
                json!({"message_id": id, "body": "hello"}),
            );
            e.channel = Some(format!("general@{destination}"));
            e
        })
        .collect()
}

/// [`round_events`] appended: the seqs per destination.
async fn post_round(log: &TestLog, round: &str) -> HashMap<String, u64> {
    let outcomes = log.log.append(round_events(round)).await.expect("append");
    DESTINATIONS
        .iter()
        .zip(outcomes)
        .map(|(d, outcome)| (d.to_string(), outcome.seq()))
        .collect()
}

/// Every expected seq reached `destination`, first arrivals in log order (repeats allowed:
/// at least once).
fn assert_in_order(received: &Received, destination: &str, expected: &[u64]) {
    let mut first: Vec<u64> = Vec::new();
    for seq in received.of(destination) {
        if !first.contains(&seq) {
            first.push(seq);
        }
    }
    assert_eq!(
        first, expected,
        "{destination}: first arrivals must be every event in order"
    );
}

async fn everything_arrived(received: &Received, expected: &HashMap<String, Vec<u64>>) -> bool {
    expected.iter().all(|(destination, seqs)| {
        let got = received.of(destination);
        seqs.iter().all(|seq| got.contains(seq))
    })
}

#[actix_web::test]
async fn leases_spread_over_the_nodes_and_each_destination_has_one_sender() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();

    // Alone, the first node takes every destination.
    let n1 = start_node(&log, &inbox, "n1").await;
    for (d, seq) in post_round(&log, "r0").await {
        expected.entry(d).or_default().push(seq);
    }
    wait_until(
        "n1 to hold every lease",
        Duration::from_secs(10),
        || async { n1.delivery.leases_held() == 4 },
    )
    .await;

    // A newcomer: n1 is above its share of ceil(4 / 2) and releases two, which n2 takes.
    let n2 = start_node(&log, &inbox, "n2").await;
    wait_until("two leases each", Duration::from_secs(10), || async {
        n1.delivery.leases_held() == 2 && n2.delivery.leases_held() == 2
    })
    .await;
    let by_node = holders(&log).await;
    assert_eq!(by_node.get("n1").map(Vec::len), Some(2), "{by_node:?}");
    assert_eq!(by_node.get("n2").map(Vec::len), Some(2), "{by_node:?}");

    // Stable: no lease moves while both nodes live.
    tokio::time::sleep(TTL * 2).await;
    assert_eq!(
        holders(&log).await,
        by_node,
        "leases moved between live nodes"
    );

    let sent_before = inbox.received.all().len();
    for round in 1..=10 {
        for (d, seq) in post_round(&log, &format!("r{round}")).await {
            expected.entry(d).or_default().push(seq);
        }
    }
    wait_until("every event delivered", Duration::from_secs(20), || {
        everything_arrived(&inbox.received, &expected)
    })
    .await;
    for destination in DESTINATIONS {
        assert_in_order(&inbox.received, destination, &expected[destination]);
    }
    // Since the spread settled, each destination heard from its lease holder only.
    for (node, destination, seq) in &inbox.received.all()[sent_before..] {
        assert!(
            by_node[node].contains(destination),
            "{node} sent seq {seq} to {destination}, which it does not hold: {by_node:?}"
        );
    }

    // A graceful stop releases at once, and the cluster core marks the node stopped: n1
    // takes n2's destinations at its next tick, well before they would have expired.
    let stopped = Instant::now();
    n2.delivery.stop().await;
    n2.heartbeat.abort();
    let db = raw(&log).await;
    db.execute(Statement::from_string(
        DbBackend::Postgres,
        "UPDATE cluster_nodes SET role = 'stopped' WHERE node_id = 'n2'",
    ))
    .await
    .expect("mark n2 stopped");
    db.close().await.expect("close");
    assert_eq!(n2.delivery.leases_held(), 0);
    let freed = delivery_leases(&log.store).await.expect("leases");
    assert!(
        freed
            .iter()
            .all(|(_, node, _)| node.as_deref() != Some("n2")),
        "n2's leases are released: {freed:?}"
    );
    wait_until(
        "n1 to take the released leases",
        Duration::from_secs(10),
        || async { n1.delivery.leases_held() == 4 },
    )
    .await;
    assert!(
        stopped.elapsed() < TTL,
        "took {:?} to take over released leases",
        stopped.elapsed()
    );
    n1.delivery.stop().await;
    n1.heartbeat.abort();
    inbox.server.stop(false).await;
}

#[actix_web::test]
async fn a_dead_nodes_destinations_are_taken_over_and_get_every_event_in_order() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let n1 = start_node(&log, &inbox, "n1").await;
    let n2 = start_node(&log, &inbox, "n2").await;
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();
    for (d, seq) in post_round(&log, "r0").await {
        expected.entry(d).or_default().push(seq);
    }
    wait_until("two leases each", Duration::from_secs(10), || async {
        n1.delivery.leases_held() == 2 && n2.delivery.leases_held() == 2
    })
    .await;

    // Events flow while n1 dies in the middle of them.
    let writer = {
        let log = log.log.clone();
        actix_web::rt::spawn(async move {
            let mut seqs: Vec<(String, u64)> = Vec::new();
            for round in 1..=30 {
                let outcomes = log
                    .append(round_events(&format!("w{round}")))
                    .await
                    .expect("append");
                for (d, outcome) in DESTINATIONS.iter().zip(outcomes) {
                    seqs.push((d.to_string(), outcome.seq()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seqs
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let n1_held = n1_destinations(&log).await;
    let died = Instant::now();
    n1.kill();
    wait_until(
        "n2 to take over n1's destinations",
        Duration::from_secs(10),
        || async {
            let by_node = holders(&log).await;
            by_node.get("n2").map(Vec::len) == Some(4)
        },
    )
    .await;
    let took = died.elapsed();
    assert!(took < TTL * 2, "takeover took {took:?}, over 2 × lease_ttl");
    assert_eq!(n2.delivery.leases_held(), 4);

    for (d, seq) in writer.await.expect("writer") {
        expected.entry(d).or_default().push(seq);
    }
    wait_until("every event delivered", Duration::from_secs(20), || {
        everything_arrived(&inbox.received, &expected)
    })
    .await;
    for destination in DESTINATIONS {
        assert_in_order(&inbox.received, destination, &expected[destination]);
    }
    // n1 delivered its destinations until it died; n2 carried them on (the writer went on
    // well past the death).
    let all = inbox.received.all();
    for destination in &n1_held {
        for node in ["n1", "n2"] {
            assert!(
                all.iter().any(|(n, d, _)| n == node && d == destination),
                "{node} sent nothing to {destination}"
            );
        }
    }
    eprintln!("takeover of {n1_held:?} after {took:?}");
    n2.delivery.stop().await;
    n2.heartbeat.abort();
    inbox.server.stop(false).await;
}

#[actix_web::test]
async fn writes_without_a_valid_lease_are_refused() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let store = &log.store;
    let d = "d1.test".to_owned();
    store
        .register_delivery_leases(std::slice::from_ref(&d))
        .await
        .expect("register");
    // Registering again is harmless.
    store
        .register_delivery_leases(std::slice::from_ref(&d))
        .await
        .expect("register again");

    // Nobody holds it: no write.
    assert!(!store
        .set_delivery_cursor_leased(&d, 5, "n1")
        .await
        .expect("write"));
    assert_eq!(store.delivery_cursor(&d).await.expect("read"), None);

    assert_eq!(
        store
            .claim_delivery_leases("n1", TTL, 10)
            .await
            .expect("claim"),
        vec![d.clone()]
    );
    assert!(
        store
            .claim_delivery_leases("n2", TTL, 10)
            .await
            .expect("claim")
            .is_empty(),
        "a held lease is not claimable"
    );
    // Another node's write is refused; the holder's first write creates the row.
    assert!(!store
        .set_delivery_cursor_leased(&d, 5, "n2")
        .await
        .expect("write"));
    assert_eq!(store.delivery_cursor(&d).await.expect("read"), None);
    assert!(store
        .set_delivery_cursor_leased(&d, 5, "n1")
        .await
        .expect("write"));
    assert!(store
        .set_delivery_cursor_leased(&d, 7, "n1")
        .await
        .expect("write"));
    assert_eq!(store.delivery_cursor(&d).await.expect("read"), Some(7));
    assert!(!store
        .add_dead_letter_leased(&d, 6, "e6", "SY_BAD", "bad", "n2")
        .await
        .expect("dead letter"));
    assert!(store
        .add_dead_letter_leased(&d, 6, "e6", "SY_BAD", "bad", "n1")
        .await
        .expect("dead letter"));
    assert_eq!(store.dead_letters(&d, 10).await.expect("read").len(), 1);

    // Expired: even the former holder is refused, cannot renew, and another node takes it.
    tokio::time::sleep(TTL + Duration::from_millis(100)).await;
    assert!(!store
        .set_delivery_cursor_leased(&d, 9, "n1")
        .await
        .expect("write"));
    assert!(!store
        .add_dead_letter_leased(&d, 8, "e8", "SY_BAD", "bad", "n1")
        .await
        .expect("dead letter"));
    assert!(store
        .renew_delivery_leases("n1", TTL, std::slice::from_ref(&d))
        .await
        .expect("renew")
        .is_empty());
    assert_eq!(
        store
            .claim_delivery_leases("n2", TTL, 10)
            .await
            .expect("claim"),
        vec![d.clone()]
    );
    assert!(!store
        .set_delivery_cursor_leased(&d, 9, "n1")
        .await
        .expect("write"));
    assert_eq!(store.delivery_cursor(&d).await.expect("read"), Some(7));
    assert_eq!(store.dead_letters(&d, 10).await.expect("read").len(), 1);
    // The holder renews; a release frees it for anyone.
    assert_eq!(
        store
            .renew_delivery_leases("n2", TTL, std::slice::from_ref(&d))
            .await
            .expect("renew"),
        vec![d.clone()]
    );
    assert_eq!(
        store
            .release_delivery_leases("n2", None)
            .await
            .expect("release"),
        1
    );
    assert_eq!(
        delivery_leases(store).await.expect("leases"),
        vec![(d.clone(), None, 0)]
    );
    assert!(!store
        .set_delivery_cursor_leased(&d, 9, "n2")
        .await
        .expect("write"));
}

#[actix_web::test]
async fn a_node_whose_lease_is_taken_stops_delivering_it() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let n1 = start_node(&log, &inbox, "n1").await;
    let first = post_round(&log, "r0").await;
    wait_until(
        "n1 to deliver the first round",
        Duration::from_secs(10),
        || async {
            DESTINATIONS
                .iter()
                .all(|d| inbox.received.of(d).contains(&first[*d]))
        },
    )
    .await;

    // As if n1 had paused past its lease and another node had taken d1 meanwhile.
    let db = raw(&log).await;
    db.execute(Statement::from_string(
        DbBackend::Postgres,
        format!(
            "UPDATE delivery_leases SET node_id = 'thief', until_ms = {DB_NOW_MS} + 60000 \
             WHERE destination = 'd1.test'"
        ),
    ))
    .await
    .expect("steal");
    wait_until("n1 to notice the loss", TTL * 2, || async {
        n1.delivery.leases_held() == 3
    })
    .await;
    let before = inbox.received.of("d1.test").len();
    let second = post_round(&log, "r1").await;
    wait_until(
        "the others to get the second round",
        Duration::from_secs(10),
        || async {
            DESTINATIONS[1..]
                .iter()
                .all(|d| inbox.received.of(d).contains(&second[*d]))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        inbox.received.of("d1.test").len(),
        before,
        "n1 sent to a destination whose lease it lost"
    );
    // The cursor of d1 stays where n1 left it (the thief's to move now).
    let cursor = log.store.delivery_cursor("d1.test").await.expect("cursor");
    assert!(cursor.is_some_and(|c| c < second["d1.test"]), "{cursor:?}");

    n1.delivery.stop().await;
    n1.heartbeat.abort();
    db.close().await.expect("close");
    inbox.server.stop(false).await;
}

/// The destinations view of `delivery` as the admin route answers it.
async fn view_json(delivery: &Delivery) -> Vec<Value> {
    let views = delivery.views().await.expect("views");
    match serde_json::to_value(views).expect("json") {
        Value::Array(list) => list,
        other => panic!("not a list: {other}"),
    }
}

/// What every node agrees on about a destination: everything but this node's memory.
fn shared(view: &Value) -> Value {
    json!({
        "destination": view["destination"],
        "cursor": view["cursor"],
        "lag": view["lag"],
        "dead_letters": view["dead_letters"],
        "lease_node": view["lease_node"],
    })
}

#[actix_web::test]
async fn every_node_lists_every_destination_and_who_holds_its_lease() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let n1 = start_node(&log, &inbox, "n1").await;
    let n2 = start_node(&log, &inbox, "n2").await;
    let mut expected: HashMap<String, Vec<u64>> = HashMap::new();
    for round in 0..3 {
        for (d, seq) in post_round(&log, &format!("r{round}")).await {
            expected.entry(d).or_default().push(seq);
        }
    }
    wait_until("two leases each", Duration::from_secs(10), || async {
        n1.delivery.leases_held() == 2 && n2.delivery.leases_held() == 2
    })
    .await;
    wait_until("every event delivered", Duration::from_secs(20), || {
        everything_arrived(&inbox.received, &expected)
    })
    .await;
    // The cursors are written after each batch: wait until both nodes see them settled.
    let last: HashMap<String, u64> = expected
        .iter()
        .map(|(d, seqs)| (d.clone(), seqs.iter().copied().max().unwrap_or(0)))
        .collect();
    wait_until("the cursors to settle", Duration::from_secs(10), || async {
        let mut settled = true;
        for (node, delivery) in [("n1", &n1.delivery), ("n2", &n2.delivery)] {
            let view = view_json(delivery).await;
            settled &= view.len() == DESTINATIONS.len()
                && view.iter().all(|v| {
                    let d = v["destination"].as_str().unwrap_or_default();
                    v["cursor"].as_u64() >= last.get(d).copied()
                        && (v["lease_node"] != json!(node) || v["state"] == json!("idle"))
                });
        }
        settled
    })
    .await;

    let by_node = holders(&log).await;
    let holder = |destination: &str| {
        by_node
            .iter()
            .find(|(_, held)| held.iter().any(|d| d == destination))
            .map(|(node, _)| node.clone())
    };
    let v1 = view_json(&n1.delivery).await;
    let v2 = view_json(&n2.delivery).await;
    // Behind a load balancer, either node answers the same list, whoever delivers what.
    let names = |view: &[Value]| -> Vec<String> {
        view.iter()
            .map(|v| v["destination"].as_str().expect("name").to_owned())
            .collect()
    };
    assert_eq!(names(&v1), DESTINATIONS.to_vec(), "{v1:?}");
    assert_eq!(names(&v2), names(&v1));
    assert_eq!(
        v1.iter().map(shared).collect::<Vec<_>>(),
        v2.iter().map(shared).collect::<Vec<_>>(),
        "the nodes disagree"
    );
    for (node, view) in [("n1", &v1), ("n2", &v2)] {
        for v in view.iter() {
            let d = v["destination"].as_str().expect("name");
            let lease_node = holder(d);
            assert_eq!(v["lease_node"], json!(lease_node), "{node}: {v}");
            assert!(lease_node.is_some(), "every lease is held: {v}");
            assert_eq!(v["lag"], json!(0), "{v}");
            assert_eq!(v["dead_letters"], json!([]), "{v}");
            if lease_node.as_deref() == Some(node) {
                // This node's memory of what it delivers.
                assert_eq!(v["state"], json!("idle"), "{node}: {v}");
                assert!(v["delivered"].as_u64().is_some(), "{node}: {v}");
                assert_eq!(v["dead_lettered"], json!(0), "{node}: {v}");
            } else {
                for field in ["state", "last_error", "delivered", "dead_lettered"] {
                    assert_eq!(v[field], Value::Null, "{node}: {field} of {v}");
                }
            }
        }
    }

    // A free lease is listed with no holder.
    n2.delivery.stop().await;
    n2.heartbeat.abort();
    n1.delivery.halt();
    n1.heartbeat.abort();
    let view = view_json(&n1.delivery).await;
    assert_eq!(names(&view), DESTINATIONS.to_vec());
    for v in &view {
        let d = v["destination"].as_str().expect("name");
        if by_node
            .get("n2")
            .is_some_and(|held| held.iter().any(|h| h == d))
        {
            assert_eq!(v["lease_node"], Value::Null, "released: {v}");
        }
    }
    inbox.server.stop(false).await;
}

#[actix_web::test]
async fn one_nodes_destinations_view_keeps_its_fields() {
    // Any database: one node needs no leases.
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let delivery = start_delivery(&log, &inbox, "solo", None).await;
    let sent = post_round(&log, "r0").await;
    wait_until("every event delivered", Duration::from_secs(20), || async {
        DESTINATIONS
            .iter()
            .all(|d| inbox.received.of(d).contains(&sent[*d]))
    })
    .await;
    let view = view_json(&delivery).await;
    assert_eq!(view.len(), DESTINATIONS.len(), "{view:?}");
    for v in &view {
        let mut fields: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "cursor",
                "dead_lettered",
                "dead_letters",
                "delivered",
                "destination",
                "lag",
                "last_error",
                "state"
            ],
            "{v}"
        );
        assert!(v["state"].is_string(), "{v}");
        assert!(v["delivered"].is_u64(), "{v}");
        assert!(v["dead_lettered"].is_u64(), "{v}");
    }
    delivery.stop().await;
    inbox.server.stop(false).await;
}

#[actix_web::test]
async fn a_dropped_delivery_renews_nothing_and_sends_nothing() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let TestNode {
        delivery,
        heartbeat,
    } = start_node(&log, &inbox, "n1").await;
    let first = post_round(&log, "r0").await;
    wait_until("n1 to deliver", Duration::from_secs(10), || async {
        delivery.leases_held() == 4
            && DESTINATIONS
                .iter()
                .all(|d| inbox.received.of(d).contains(&first[*d]))
    })
    .await;

    // Dropped without a stop, as an application that failed to build after starting its
    // delivery; the process (its heartbeat) lives on.
    drop(delivery);
    let dropped = Instant::now();
    let before = inbox.received.requests().len();
    let second = post_round(&log, "r1").await;
    wait_until("n1's leases to expire", TTL * 3, || async {
        holders(&log).await.is_empty()
    })
    .await;
    assert!(
        dropped.elapsed() > TTL / 3,
        "the leases were not held after the drop (a release?)"
    );
    tokio::time::sleep(TTL).await;
    assert!(
        holders(&log).await.is_empty(),
        "a dropped delivery renewed its leases"
    );
    let late = &inbox.received.requests()[before..];
    assert!(late.is_empty(), "a dropped delivery sent: {late:?}");
    for d in DESTINATIONS {
        assert!(!inbox.received.of(d).contains(&second[d]));
    }
    heartbeat.abort();
    inbox.server.stop(false).await;
}

#[actix_web::test]
async fn a_worker_stops_sending_when_its_lease_may_have_run_out() {
    if !postgres() {
        return;
    }
    let log = spawn_log().await;
    let inbox = fake_inbox();
    let n1 = start_node(&log, &inbox, "n1").await;
    let first = post_round(&log, "r0").await;
    wait_until("n1 to deliver", Duration::from_secs(10), || async {
        n1.delivery.leases_held() == 4
            && DESTINATIONS
                .iter()
                .all(|d| inbox.received.of(d).contains(&first[*d]))
    })
    .await;

    // The destinations fail: every worker retries its batch with backoff (≤ 200 ms).
    inbox.received.fail(true);
    let failing = Instant::now();
    let second = post_round(&log, "r1").await;
    wait_until("retries", Duration::from_secs(10), || async {
        inbox
            .received
            .requests()
            .iter()
            .filter(|(_, _, at)| *at > failing)
            .count()
            >= 8
    })
    .await;

    // The lease task's renewal hangs (rows locked by another transaction; no error): the
    // workers must stop sending by `lease_ttl` after the last renewal, before the leases may
    // have expired on the database and another node taken them.
    let db = raw(&log).await;
    let lock = db.begin().await.expect("begin");
    lock.execute(Statement::from_string(
        DbBackend::Postgres,
        "SELECT destination FROM delivery_leases FOR UPDATE",
    ))
    .await
    .expect("lock the leases");
    let locked = Instant::now();
    tokio::time::sleep(TTL * 2).await;
    let requests = inbox.received.requests();
    // A successful renewal ran before the lock, so it was sent before `locked`: the lease is
    // trusted until `locked + TTL` at most; a request sent just before reaches the inbox a
    // little later.
    let limit = locked + TTL + Duration::from_millis(150);
    let late: Vec<_> = requests.iter().filter(|(_, _, at)| *at > limit).collect();
    assert!(
        late.is_empty(),
        "sent {:?} after the lease may have run out: {late:?}",
        late.iter()
            .map(|(_, _, at)| at.duration_since(locked))
            .collect::<Vec<_>>()
    );
    assert!(
        requests
            .iter()
            .any(|(_, _, at)| *at > failing && *at < locked),
        "the workers were retrying before the lock"
    );
    // The operator sees why (views read the lease rows without locking them).
    for v in view_json(&n1.delivery).await {
        assert_eq!(v["state"], json!("backoff"), "{v}");
        assert!(
            v["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("lease")),
            "{v}"
        );
    }

    // The database answers again: the hung renewal finds the leases expired, they are taken
    // anew, and delivery resumes from the stored cursors.
    inbox.received.fail(false);
    lock.rollback().await.expect("rollback");
    wait_until("the second round", Duration::from_secs(20), || async {
        DESTINATIONS
            .iter()
            .all(|d| inbox.received.of(d).contains(&second[*d]))
    })
    .await;
    n1.delivery.stop().await;
    n1.heartbeat.abort();
    db.close().await.expect("close");
    inbox.server.stop(false).await;
}
