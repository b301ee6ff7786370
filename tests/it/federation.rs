//! Three instances over loopback: A homes a channel with members on B and C; events flow
//! through outbound delivery and the inbox, across a stopped member and a restarted home.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::helpers::{event, spawn_app_with, TestApp, TestDb};

const A: &str = "a.test";
const B: &str = "b.test";
const C: &str = "c.test";
const CHANNEL: &str = "general@a.test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

struct Node {
    name: &'static str,
    port: u16,
    db_url: String,
    dir: std::path::PathBuf,
}

async fn start(node: &Node, ports: &[(&'static str, u16)]) -> TestApp {
    let db = TestDb::new().await;
    let db = TestDb {
        url: node.db_url.clone(),
        dir: db.dir,
    };
    let (name, port, dir) = (node.name, node.port, node.dir.clone());
    let peers: Vec<(String, String)> = ports
        .iter()
        .filter(|(n, _)| *n != name)
        .map(|(n, p)| (n.to_string(), format!("http://127.0.0.1:{p}")))
        .collect();
    spawn_app_with(db, move |c| {
        c.server.name = name.into();
        c.server.admin_token = "s3cret".into();
        c.server.bind = format!("127.0.0.1:{port}");
        c.keys.path = dir.join("signing.key");
        c.federation.resolve.extend(peers);
        c.federation.delivery_backoff_base = Duration::from_millis(100);
        c.federation.delivery_max_backoff = Duration::from_millis(500);
    })
    .await
}

/// The message ids of `channel` in `app`'s log, in log order.
async fn messages(app: &TestApp) -> Vec<String> {
    let entries = app.store.read_after(0, 100_000).await.expect("read");
    entries
        .iter()
        .filter(|e| e.event_type == "message.new" && e.channel.as_deref() == Some(CHANNEL))
        .map(|e| {
            let content: serde_json::Value =
                serde_json::from_str(e.content.get()).expect("content");
            content["message_id"].as_str().expect("id").to_owned()
        })
        .collect()
}

async fn wait_for(app: &TestApp, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = messages(app).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: got {got:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn post(origin: &str, sender: &str, id: &str) -> switchyard::core::event::NewEvent {
    let mut e = event(
        origin,
        id,
        "message.new",
        sender,
        json!({"message_id": id, "body": format!("{sender}: {id}")}),
    );
    e.channel = Some(CHANNEL.into());
    e
}

fn membership(
    origin: &str,
    id: &str,
    kind: &str,
    sender: &str,
    content: serde_json::Value,
) -> switchyard::core::event::NewEvent {
    let mut e = event(origin, id, kind, sender, content);
    e.channel = Some(CHANNEL.into());
    e
}

#[actix_web::test]
async fn a_channel_spans_three_servers_through_outages_and_restarts() {
    let nodes: Vec<Node> = {
        let mut nodes = Vec::new();
        for name in [A, B, C] {
            let db = TestDb::new().await;
            let dir = db.dir.keep();
            nodes.push(Node {
                name,
                port: free_port(),
                db_url: db.url.clone(),
                dir,
            });
        }
        nodes
    };
    let ports: Vec<(&'static str, u16)> = nodes.iter().map(|n| (n.name, n.port)).collect();
    let mut a = start(&nodes[0], &ports).await;
    let mut b = start(&nodes[1], &ports).await;
    let c = start(&nodes[2], &ports).await;

    // A homes the channel and invites bob (B) and carol (C); they join from their servers.
    a.log
        .append(vec![
            membership(
                A,
                "c1",
                "channel.new",
                "alice@a.test",
                json!({"name": "General"}),
            ),
            membership(
                A,
                "i1",
                "channel.invite",
                "alice@a.test",
                json!({"invitee": "bob@b.test"}),
            ),
            membership(
                A,
                "i2",
                "channel.invite",
                "alice@a.test",
                json!({"invitee": "carol@c.test"}),
            ),
        ])
        .await
        .expect("channel");
    b.log
        .append(vec![membership(
            B,
            "j1",
            "channel.join",
            "bob@b.test",
            json!({}),
        )])
        .await
        .expect("bob joins");
    c.log
        .append(vec![membership(
            C,
            "j1",
            "channel.join",
            "carol@c.test",
            json!({}),
        )])
        .await
        .expect("carol joins");

    // A message in A's channel reaches B and C.
    a.log
        .append(vec![post(A, "alice@a.test", "a1")])
        .await
        .expect("a1");
    let mut expected = vec!["a1".to_string()];
    wait_for(&a, &expected).await;
    wait_for(&c, &expected).await;
    wait_for(&b, &expected).await;

    // bob posts on B: it goes to A, which orders it and relays it to C.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // bob's join must have reached A before his message is allowed there.
        let joined = a
            .store
            .membership(CHANNEL, "bob@b.test")
            .await
            .expect("membership");
        if joined == Some(switchyard::core::projection::Membership::Joined) {
            break;
        }
        assert!(Instant::now() < deadline, "bob's join never reached A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.log
        .append(vec![post(B, "bob@b.test", "b1")])
        .await
        .expect("b1");
    expected.push("b1".into());
    wait_for(&a, &expected).await;
    wait_for(&c, &expected).await;
    wait_for(&b, &expected).await;

    // B is stopped; A keeps posting; B comes back and gets everything once, in order.
    b.server.stop(true).await;
    for i in 0..10 {
        let id = format!("a-down-{i}");
        a.log
            .append(vec![post(A, "alice@a.test", &id)])
            .await
            .expect("post");
        expected.push(id);
    }
    wait_for(&c, &expected).await;
    b = start(&nodes[1], &ports).await;
    wait_for(&b, &expected).await;

    // A restarts in the middle of delivery: still once each, in order, everywhere.
    for i in 0..30 {
        let id = format!("a-restart-{i}");
        a.log
            .append(vec![post(A, "alice@a.test", &id)])
            .await
            .expect("post");
        expected.push(id);
    }
    a.server.stop(true).await;
    a = start(&nodes[0], &ports).await;
    wait_for(&a, &expected).await;
    wait_for(&b, &expected).await;
    wait_for(&c, &expected).await;

    // The operator sees both destinations caught up, with no dead letters.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut res = awc::Client::default()
            .get(format!("{}/admin/v1/destinations", a.address))
            .insert_header(("Authorization", "Bearer s3cret"))
            .send()
            .await
            .expect("destinations");
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = res.json().await.expect("json");
        let list = body["destinations"].as_array().expect("list").clone();
        let names: Vec<_> = list.iter().map(|d| d["destination"].clone()).collect();
        assert_eq!(names, [json!(B), json!(C)], "{body}");
        assert!(list.iter().all(|d| d["dead_lettered"] == 0), "{body}");
        if list.iter().all(|d| d["state"] == "idle" && d["lag"] == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... and in /metrics: lag per destination, events per origin.
    let text = |app: &TestApp| {
        let url = format!("{}/metrics", app.address);
        async move {
            let mut res = awc::Client::default()
                .get(url)
                .send()
                .await
                .expect("metrics");
            String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8")
        }
    };
    let metrics = text(&a).await;
    assert!(
        metrics.contains("switchyard_delivery_lag{destination=\"b.test\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_delivery_lag{destination=\"c.test\"} 0"),
        "{metrics}"
    );
    let metrics = text(&c).await;
    assert!(
        metrics.contains("switchyard_inbox_events_total{origin=\"a.test\",result=\"accepted\"}"),
        "{metrics}"
    );
    for node in &nodes {
        let _ = std::fs::remove_dir_all(&node.dir);
    }
}
