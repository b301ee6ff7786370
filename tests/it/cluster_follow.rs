//! Every node's identity and transparency state follows the log (DESIGN §7). A cluster's
//! node learns a change made through another node only from the committed entries it reads;
//! a node of a cluster sees exactly that when an entry is appended to its log directly, past
//! the code that would have updated its memory. So each test here appends, on a cluster of
//! one node, what another node would have committed and checks that this node acts on it:
//! the token stops working, the socket closes with 4003, the certificate is answered, the
//! root is known; and that the writer repairs what two nodes' separate locks could let
//! through, and only that. One node (the cluster off) follows nothing: it updates its memory
//! after its own appends, and nobody else appends.
//!
//! The cluster tests need PostgreSQL: without `SWITCHYARD_TEST_POSTGRES_URL` they print why
//! and pass.

use std::time::{Duration, Instant};

use tokio::sync::broadcast::error::RecvError;

use serde_json::{json, Value};
use switchyard::core::event::NewEvent;
use switchyard::federation::signing::ServerKey;
use switchyard::identity::checker::{check_cache_window, CacheWindow};
use switchyard::identity::idcert::{
    actor_dn, actor_tbs, fingerprint, issue_server_root, random_actor_serial, random_serial,
    sign_certificate, ActorUsage,
};

use crate::gateway::{call, register, User, Ws};
use crate::helpers::{spawn_app, spawn_app_with, TestApp, TestDb};
use crate::identity::{issue, server_key};
use crate::p2::{actor_csr, actor_key};

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn server_name(app: &TestApp) -> String {
    app.transparency.server_name().to_owned()
}

fn key_of(app: &TestApp) -> ServerKey {
    ServerKey::load(&app.db.dir.path().join("signing.key")).expect("the server's key")
}

/// One node of a cluster, leading: what is appended to its log directly arrives as another
/// node's commit would. `None` (after saying why) without PostgreSQL.
async fn cluster_of_one() -> Option<TestApp> {
    crate::cluster::postgres()?;
    let app = spawn_app_with(TestDb::new().await, |config| {
        config.cluster.enabled = true;
        config.cluster.node_id = "node0".into();
        config.cluster.internal_token = crate::cluster::INTERNAL_TOKEN.into();
        config.cluster.lease_ttl = Duration::from_millis(1500);
    })
    .await;
    eventually("the node leads", || async {
        app.log.role().borrow().writes()
    })
    .await;
    Some(app)
}

/// Appends `event` straight to the log, as another node's commit would arrive.
async fn append(app: &TestApp, event: NewEvent) -> u64 {
    let outcomes = app.log.append(vec![event]).await.expect("append");
    outcomes[0].seq()
}

fn identity_event(
    app: &TestApp,
    event_id: String,
    kind: &str,
    sender: Option<&str>,
    content: Value,
) -> NewEvent {
    NewEvent {
        event_id,
        origin: server_name(app),
        event_type: kind.into(),
        sender: sender.map(str::to_owned),
        channel: None,
        origin_ts: now_secs() * 1000,
        content,
    }
}

/// The `session.deleted` another node appends when it ends `session_id` (without the
/// invalidation of a certificate this node issued meanwhile: it did not know it).
fn session_deleted(app: &TestApp, fid: &str, session_id: &str) -> NewEvent {
    identity_event(
        app,
        format!("session-end:{session_id}"),
        "session.deleted",
        Some(fid),
        json!({"session_id": session_id, "reason": "deleted"}),
    )
}

/// The `actor.idcert_issued` another node appends for a certificate it issued to `fid`'s
/// session `session_id` (signed with the key every node shares).
fn issued_elsewhere(app: &TestApp, fid: &str, session_id: &str) -> (i64, NewEvent) {
    let key = actor_key().verifying_key();
    let serial = random_actor_serial();
    let not_before = now_secs() - 60;
    let not_after = not_before + 86_400;
    let tbs = actor_tbs(
        &server_name(app),
        actor_dn(fid, session_id).expect("dn"),
        &key,
        serial,
        not_before,
        not_after,
        ActorUsage::DigitalSignature,
    )
    .expect("tbs");
    let pem = sign_certificate(&key_of(app), tbs).expect("signed");
    let event = identity_event(
        app,
        format!("actor-cert:{serial}"),
        "actor.idcert_issued",
        Some(fid),
        json!({
            "serial": serial.to_string(),
            "fid": fid,
            "session_id": session_id,
            "fingerprint": fingerprint(&key).expect("fingerprint"),
            "not_before": not_before,
            "not_after": not_after,
            "pem": pem,
        }),
    );
    (serial, event)
}

/// `GET /.p2/core/v1/idcert/actor/{fid}`: the entries, each window checked against the key.
async fn actor_entries(app: &TestApp, fid: &str) -> Vec<Value> {
    let (status, body) = call(
        app,
        "GET",
        &format!("/.p2/core/v1/idcert/actor/{fid}"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let home = server_key(app).await;
    let entries = body.as_array().expect("a list").clone();
    for entry in &entries {
        let window = CacheWindow {
            serial: entry["serial"].as_str().expect("serial").into(),
            not_before: entry["cache_not_valid_before"].as_i64().expect("nvb"),
            not_after: entry["cache_not_valid_after"].as_i64().expect("nva"),
            invalidated_at: entry["invalidated_at"].as_i64(),
            signature: entry["cache_signature"].as_str().expect("sig").into(),
        };
        check_cache_window(&window, &home).expect("a window signed by the server");
    }
    entries
}

fn entry_of(entries: &[Value], serial: i64) -> Option<&Value> {
    entries
        .iter()
        .find(|e| e["serial"] == serial.to_string().as_str())
}

/// Waits (at most 10 s) until `done` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut done: impl FnMut() -> F,
) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `actor.idcert_invalidated` events the log holds for `serial`, with their reasons.
async fn invalidations(app: &TestApp, serial: i64) -> Vec<String> {
    app.store
        .read_after(0, 100_000)
        .await
        .expect("read")
        .into_iter()
        .filter(|e| e.event_type == "actor.idcert_invalidated")
        .filter_map(|e| {
            let content: Value = serde_json::from_str(e.content.get()).ok()?;
            (content["serial"] == serial.to_string().as_str())
                .then(|| content["reason"].as_str().unwrap_or_default().to_owned())
        })
        .collect()
}

#[actix_web::test]
async fn a_session_ended_through_another_node_stops_its_token_and_closes_its_sockets_with_4003() {
    let Some(app) = cluster_of_one().await else {
        return;
    };
    let app = &app;
    let alice = register(app, "alice").await;
    let bob = register(app, "bob").await;
    let (mut ws, _) = Ws::open(app, &alice).await;
    let (mut bobs, _) = Ws::open(app, &bob).await;
    // The token is cached here now: the end must evict it, not only miss the projection.
    let (status, _) = call(
        app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 200);

    append(app, session_deleted(app, &alice.fid, &alice.session_id)).await;

    assert_eq!(
        ws.closed().await,
        Some(4003),
        "alice's socket closes as ended"
    );
    for (path, body) in [
        ("/api/v1/auth/ws-ticket", None),
        ("/api/v1/channels", Some(json!({"name": "after the end"}))),
    ] {
        let (status, body) = call(app, "POST", path, Some(&alice.token), body).await;
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(body["errcode"], "SY_UNKNOWN_TOKEN");
    }
    // Another session of the node is untouched: its token works, its socket answers.
    let (status, _) = call(
        app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    bobs.send(json!({"n": "core", "op": 0, "d": {}})).await;
    bobs.until(|f| f["n"] == "core" && f["op"] == 7).await;
}

#[actix_web::test]
async fn ending_a_session_here_closes_its_socket_once_and_its_token_stops() {
    // A node of a cluster reads its own end from the log too: nothing happens twice and
    // nothing is undone. One node ends it as it always did.
    ends_once(&spawn_app().await).await;
    if let Some(app) = cluster_of_one().await {
        ends_once(&app).await;
    }
}

async fn ends_once(app: &TestApp) {
    let alice = register(app, "alice").await;
    let (mut ws, _) = Ws::open(app, &alice).await;
    let head = app.store.head().await.expect("head").0;
    let (status, _) = call(
        app,
        "DELETE",
        "/.p2/core/v1/session",
        Some(&alice.token),
        Some(json!({"session_id": alice.session_id})),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(ws.closed().await, Some(4003));
    let (status, _) = call(
        app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 401);
    // One event, no repair appended after it.
    actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(app.store.head().await.expect("head").0, head + 1);
}

#[actix_web::test]
async fn a_certificate_issued_or_invalidated_through_another_node_is_answered_here() {
    let Some(app) = cluster_of_one().await else {
        return;
    };
    let app = &app;
    let alice = register(app, "alice").await;
    let (serial, event) = issued_elsewhere(app, &alice.fid, &alice.session_id);
    append(app, event).await;

    let entries = actor_entries(app, &alice.fid).await;
    let entry = entry_of(&entries, serial).expect("the certificate is answered");
    assert_eq!(entry["invalidated"], false);
    assert_eq!(entry["session_id"], alice.session_id.as_str());
    // It is this session's certificate here too: a renewal needs the sensitive check.
    let csr = actor_csr(&alice.fid, &alice.session_id, &actor_key());
    let (status, body) = issue(app, &alice.token, &csr, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["errcode"], "SY_SENSITIVE_ACTION");

    let at = now_secs();
    append(
        app,
        identity_event(
            app,
            format!("actor-cert-invalidated:{serial}"),
            "actor.idcert_invalidated",
            Some(&alice.fid),
            json!({"serial": serial.to_string(), "invalidated_at": at, "reason": "revoked"}),
        ),
    )
    .await;
    let entries = actor_entries(app, &alice.fid).await;
    let entry = entry_of(&entries, serial).expect("still answered");
    assert_eq!(entry["invalidated"], true);
    assert_eq!(entry["invalidated_at"], at);
    // No valid certificate left: a new one needs no sensitive check.
    let (status, body) = issue(app, &alice.token, &csr, None).await;
    assert_eq!(status, 201, "{body}");
}

#[actix_web::test]
async fn the_writer_invalidates_what_two_nodes_let_through() {
    let Some(app) = cluster_of_one().await else {
        return;
    };
    let app = &app;
    let alice = register(app, "alice").await;

    // Two issuances for one session through two nodes: the older stops being valid.
    let csr = actor_csr(&alice.fid, &alice.session_id, &actor_key());
    let (status, here) = issue(app, &alice.token, &csr, None).await;
    assert_eq!(status, 201, "{here}");
    let here: i64 = here["serial"]
        .as_str()
        .expect("serial")
        .parse()
        .expect("decimal");
    let (there, event) = issued_elsewhere(app, &alice.fid, &alice.session_id);
    append(app, event).await;
    eventually("the older certificate is invalidated", || async {
        invalidations(app, here).await == ["renewed"]
    })
    .await;
    let entries = actor_entries(app, &alice.fid).await;
    assert_eq!(
        entry_of(&entries, here).expect("answered")["invalidated"],
        true
    );
    assert_eq!(
        entry_of(&entries, there).expect("answered")["invalidated"],
        false
    );

    // The session ends through a node that did not know the certificate: it is invalidated.
    append(app, session_deleted(app, &alice.fid, &alice.session_id)).await;
    eventually("the ended session's certificate is invalidated", || async {
        invalidations(app, there).await == ["session_ended"]
    })
    .await;
    let entries = actor_entries(app, &alice.fid).await;
    assert_eq!(
        entry_of(&entries, there).expect("answered")["invalidated"],
        true
    );

    // A certificate issued through a node that had not yet seen the end: invalidated too.
    let (late, event) = issued_elsewhere(app, &alice.fid, &alice.session_id);
    append(app, event).await;
    eventually(
        "a certificate of an ended session is invalidated",
        || async { invalidations(app, late).await == ["session_ended"] },
    )
    .await;
    // Each repair once, and nothing else.
    assert_eq!(invalidations(app, here).await.len(), 1);
    assert_eq!(invalidations(app, there).await.len(), 1);
}

#[actix_web::test]
async fn a_renewal_read_late_invalidates_nothing() {
    // A certificate and its renewal, both answered before the node's tasks read either: the
    // older issuance, read once the index holds the renewal, is no second certificate beside
    // it. Only on SQLite: blocking this thread also blocks the PostgreSQL connections it
    // opened (their I/O runs here), so the requests would wait for it. (A cluster node's
    // follower runs `ActorCerts::follow`, whose own tests read the entries in this order.)
    let app = spawn_app().await;
    if app.store.backend() != switchyard::config::Backend::Sqlite {
        eprintln!("skipped: blocking the test's thread needs SQLite");
        return;
    }
    renewal_read_late(&app).await;
}

async fn renewal_read_late(app: &TestApp) {
    let alice = register(app, "alice").await;
    let (first, renewed) = issue_and_renew_while_blocked(app, &alice);
    assert_ne!(first, renewed);
    let head = app.store.head().await.expect("head").0;
    // The node's tasks read both now (this thread was blocked until then).
    actix_web::rt::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(invalidations(app, first).await, ["renewed"]);
    assert_eq!(
        invalidations(app, renewed).await,
        Vec::<String>::new(),
        "the newest certificate stays valid"
    );
    assert_eq!(
        app.store.head().await.expect("head").0,
        head,
        "no repair appended"
    );
    let entries = actor_entries(app, &alice.fid).await;
    assert_eq!(
        entry_of(&entries, first).expect("first")["invalidated"],
        true
    );
    assert_eq!(
        entry_of(&entries, renewed).expect("renewed")["invalidated"],
        false
    );
    let held = app
        .identity
        .actor_certs
        .of_session(&alice.session_id, now_secs());
    assert_eq!(held.map(|c| c.serial), Some(renewed));
}

/// Issues `user` a certificate and renews it (`POST /.p2/core/v1/idcert` twice) from a thread
/// of its own while this one, where the node's tasks run, is blocked: those tasks read both
/// issuances only after both were answered, as a follower that lags does. Answers the two
/// serials.
fn issue_and_renew_while_blocked(app: &TestApp, user: &User) -> (i64, i64) {
    let csrs = [
        actor_csr(&user.fid, &user.session_id, &actor_key()),
        actor_csr(&user.fid, &user.session_id, &actor_key()),
    ];
    let (address, token) = (app.address.clone(), user.token.clone());
    let issuer = std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let client = awc::Client::default();
            let mut serials = Vec::new();
            for (csr, sensitive) in csrs.into_iter().zip([None, Some("correct horse")]) {
                let mut request = client
                    .post(format!("{address}/.p2/core/v1/idcert"))
                    .bearer_auth(&token)
                    .insert_header(("Content-Type", "text/plain"));
                if let Some(solution) = sensitive {
                    request = request.insert_header(("X-P2-Sensitive-Solution", solution));
                }
                let mut res = request.send_body(csr).await.expect("request");
                let body: Value =
                    serde_json::from_slice(&res.body().await.expect("body")).expect("json");
                assert_eq!(res.status().as_u16(), 201, "{body}");
                serials.push(
                    body["serial"]
                        .as_str()
                        .expect("serial")
                        .parse::<i64>()
                        .expect("decimal"),
                );
            }
            (serials[0], serials[1])
        })
    });
    issuer.join().expect("the issuing thread")
}

#[actix_web::test]
async fn a_stopped_application_lets_its_log_go() {
    // Once an application has stopped and its handles are gone, nothing it started keeps its
    // log open: the log's broadcast closes, which ends every subscriber still waiting.
    closes_when_stopped(spawn_app().await).await;
    if let Some(app) = cluster_of_one().await {
        closes_when_stopped(app).await;
    }
}

async fn closes_when_stopped(app: TestApp) {
    let mut committed = app.log.subscribe();
    app.shutdown.clone().stop().await;
    // Every handle of the test's goes; the database stays until the end.
    let db = {
        let app = app;
        app.db
    };
    let closed = actix_web::rt::time::timeout(Duration::from_secs(10), async move {
        loop {
            if let Err(RecvError::Closed) = committed.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the log is still open 10 s after the stop");
    drop(db);
}

#[actix_web::test]
async fn a_root_certificate_issued_by_another_node_is_served_for_its_time() {
    let Some(app) = cluster_of_one().await else {
        return;
    };
    let app = &app;
    let key = key_of(app);
    let serial = random_serial();
    let lifetime = Duration::from_secs(30 * 86_400);
    // Later than the start-up certificate, so it is the one valid now.
    let not_before_ms = (now_secs() + 1) * 1000;
    let start = std::time::UNIX_EPOCH + Duration::from_millis(not_before_ms as u64);
    let pem = issue_server_root(&key, &server_name(app), &serial, start, lifetime).expect("root");
    let serial = hex::encode(serial);
    append(
        app,
        identity_event(
            app,
            format!("idcert:{serial}"),
            "server.idcert_issued",
            None,
            json!({
                "key_id": key.key_id(),
                "serial": serial,
                "not_before": not_before_ms,
                "not_after": not_before_ms + lifetime.as_millis() as i64,
                "pem": pem,
            }),
        ),
    )
    .await;
    let at = not_before_ms / 1000 + 5;
    let mut res = awc::Client::default()
        .get(format!(
            "{}/.p2/core/v1/idcert/server?timestamp={at}",
            app.address
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 200);
    let served = String::from_utf8(res.body().await.expect("body").to_vec()).expect("PEM");
    assert_eq!(served, pem, "the other node's root is served for its time");
}

#[actix_web::test]
async fn a_node_serves_the_checkpoint_and_cosignatures_another_node_stored() {
    use sea_orm::{ConnectionTrait, Statement};
    use switchyard::core::note;

    // The signer of this node waits an hour after its first checkpoint: whatever is newer
    // below was signed by "another node".
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.transparency.checkpoint_interval = Duration::from_secs(3600);
    })
    .await;
    let first = crate::transparency::checkpoint_covering(&app, 1).await;
    let head = crate::transparency::append(&app, "a.example", 7).await;
    assert!(head > first);
    assert_eq!(
        app.transparency.published_size(),
        first,
        "not signed here yet"
    );

    let origin = format!("{}/log", server_name(&app));
    let key = key_of(&app);
    let root = app.transparency.reader().root(head).await.expect("root");
    let body = note::checkpoint_body(&origin, head, &root);
    let key_id = note::key_id(&origin, note::ED25519_TYPE, key.verifying_key().as_bytes());
    let text = format!(
        "{body}\n{}",
        note::signature_line(&origin, key_id, &key.sign(body.as_bytes()).to_bytes())
    );
    let cosignature = "\u{2014} witness.example AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n";
    let db = sea_orm::Database::connect(&app.db.url)
        .await
        .expect("connect");
    let backend = db.get_database_backend();
    db.execute(Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DbBackend::Postgres => "INSERT INTO log_checkpoints (size, root_hash, note, key_id, created_at) VALUES ($1, $2, $3, $4, $5)",
            _ => "INSERT INTO log_checkpoints (size, root_hash, note, key_id, created_at) VALUES (?, ?, ?, ?, ?)",
        },
        [
            (head as i64).into(),
            hex::encode(root).into(),
            text.clone().into(),
            key.key_id().into(),
            (now_secs() * 1000).into(),
        ],
    ))
    .await
    .expect("insert the checkpoint");

    assert!(
        app.transparency.refresh().await.expect("refresh"),
        "a newer checkpoint"
    );
    assert_eq!(app.transparency.published_size(), head);
    let served = crate::transparency::get(&app, "/log/checkpoint", None).await;
    assert_eq!(served.status, 200);
    assert_eq!(served.text(), text);
    assert!(
        !app.transparency.refresh().await.expect("refresh"),
        "nothing new"
    );

    // A cosignature the writer's witness returned later is served too.
    db.execute(Statement::from_sql_and_values(
        backend,
        match backend {
            sea_orm::DbBackend::Postgres => "INSERT INTO log_cosignatures (size, witness, line, cosigned_at) VALUES ($1, $2, $3, $4)",
            _ => "INSERT INTO log_cosignatures (size, witness, line, cosigned_at) VALUES (?, ?, ?, ?)",
        },
        [
            (head as i64).into(),
            "witness.example".into(),
            cosignature.into(),
            (now_secs() * 1000).into(),
        ],
    ))
    .await
    .expect("insert the cosignature");
    assert!(app.transparency.refresh().await.expect("refresh"));
    let served = crate::transparency::get(&app, "/log/checkpoint", None).await;
    assert_eq!(served.text(), format!("{text}{cosignature}"));
    // An older stored checkpoint never replaces a newer one.
    assert_eq!(app.transparency.published_size(), head);
}

// ----- three nodes on one PostgreSQL (skipped without SWITCHYARD_TEST_POSTGRES_URL) -----

use crate::cluster::{assert_log_intact, Cluster};

/// The `server.idcert_issued` entries of the log.
async fn root_issuances(node: &TestApp) -> usize {
    node.store
        .read_after(0, 100_000)
        .await
        .expect("read")
        .iter()
        .filter(|e| e.event_type == "server.idcert_issued")
        .count()
}

#[actix_web::test]
async fn a_session_ended_through_one_node_closes_its_socket_on_another_and_its_token_everywhere() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let nodes = &cluster.nodes;
    let alice = register(&nodes[0], "alice").await;
    let (mut ws, _) = Ws::open(&nodes[1], &alice).await;
    // Cached on every node before the end.
    for node in nodes {
        let (status, _) = call(
            node,
            "POST",
            "/api/v1/auth/ws-ticket",
            Some(&alice.token),
            None,
        )
        .await;
        assert_eq!(status, 200);
    }
    let (status, _) = call(
        &nodes[2],
        "DELETE",
        "/.p2/core/v1/session",
        Some(&alice.token),
        Some(json!({"session_id": alice.session_id})),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(
        ws.closed().await,
        Some(4003),
        "closed on the node that did not end it"
    );
    cluster.applied(nodes[2].log.committed_head()).await;
    for node in nodes {
        let (status, body) = call(
            node,
            "POST",
            "/api/v1/auth/ws-ticket",
            Some(&alice.token),
            None,
        )
        .await;
        assert_eq!(status, 401, "{body}");
    }
}

#[actix_web::test]
async fn one_root_for_the_cluster_and_an_actor_certificate_answered_by_every_node() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let nodes = &cluster.nodes;
    // Three nodes started; only the writer issued the root, and every node serves it.
    cluster.leader().await;
    assert_eq!(root_issuances(&nodes[0]).await, 1);
    let mut roots = Vec::new();
    for node in nodes {
        let mut res = awc::Client::default()
            .get(format!("{}/.p2/core/v1/idcert/server", node.address))
            .send()
            .await
            .expect("request");
        assert_eq!(res.status().as_u16(), 200);
        roots.push(res.body().await.expect("body"));
    }
    assert!(
        roots.windows(2).all(|w| w[0] == w[1]),
        "one root everywhere"
    );

    let alice = register(&nodes[0], "alice").await;
    let csr = actor_csr(&alice.fid, &alice.session_id, &actor_key());
    let (status, issued) = issue(&nodes[1], &alice.token, &csr, None).await;
    assert_eq!(status, 201, "{issued}");
    let serial: i64 = issued["serial"]
        .as_str()
        .expect("serial")
        .parse()
        .expect("decimal");
    cluster.applied(nodes[1].log.committed_head()).await;
    for node in nodes {
        let entries = actor_entries(node, &alice.fid).await;
        let entry = entry_of(&entries, serial).expect("answered by every node");
        assert_eq!(entry["invalidated"], false);
    }
    // Another node knows the session holds it: a renewal there is a sensitive action.
    let renewal = actor_csr(&alice.fid, &alice.session_id, &actor_key());
    let (status, body) = issue(&nodes[2], &alice.token, &renewal, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(root_issuances(&nodes[0]).await, 1);
}

/// Waits until `node` serves a checkpoint covering `size`; answers its note.
async fn served_checkpoint(node: &TestApp, size: u64) -> String {
    crate::transparency::checkpoint_covering(node, size).await;
    let got = crate::transparency::get(node, "/log/checkpoint", None).await;
    assert_eq!(got.status, 200);
    got.text()
}

#[actix_web::test]
async fn followers_serve_the_leaders_checkpoints_and_a_new_leader_continues_them() {
    let Some(cluster) = Cluster::start(3).await else {
        return;
    };
    let nodes = &cluster.nodes;
    let leader = cluster.leader().await;
    let alice = register(&nodes[(leader + 1) % 3], "alice").await;
    let channel = crate::gateway::create_channel(&nodes[leader], &alice, "General").await;
    let (_, seq) = crate::gateway::post(&nodes[(leader + 2) % 3], &alice, &channel, "one").await;
    // Every node serves a checkpoint covering it, the same one once they agree.
    for node in nodes {
        served_checkpoint(node, seq).await;
    }
    let latest = nodes[leader].transparency.published_size();
    eventually(
        "every node serves the leader's latest checkpoint",
        || async {
            nodes
                .iter()
                .all(|n| n.transparency.published_size() == latest)
        },
    )
    .await;
    let before = served_checkpoint(&nodes[(leader + 1) % 3], latest).await;

    // The leader goes; the next one signs past what it signed, on the same tree.
    nodes[leader].shutdown.clone().stop().await;
    let survivor = &nodes[(leader + 1) % 3];
    let other = &nodes[(leader + 2) % 3];
    let (_, seq) = crate::gateway::post(survivor, &alice, &channel, "two").await;
    let after = served_checkpoint(survivor, seq).await;
    served_checkpoint(other, seq).await;
    assert_log_intact(survivor).await;
    let (old, new) = (checkpoint_of(&before), checkpoint_of(&after));
    assert!(new.size > old.size);
    let got = crate::transparency::get(
        survivor,
        &format!(
            "/api/v1/log/proof/consistency?old={}&new={}",
            old.size, new.size
        ),
        None,
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.text());
    let proof: Vec<[u8; 32]> = got.json()["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(|h| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(h.as_str().expect("b64"))
                .expect("b64")
                .try_into()
                .expect("32 bytes")
        })
        .collect();
    switchyard::core::merkle::verify_consistency(old.size, new.size, &old.root, &new.root, &proof)
        .expect("the new leader's checkpoint extends the old leader's");
}

fn checkpoint_of(text: &str) -> switchyard::core::note::Checkpoint {
    let note = switchyard::core::note::Note::parse(text).expect("a signed note");
    switchyard::core::note::Checkpoint::parse(&note.body).expect("a checkpoint")
}
