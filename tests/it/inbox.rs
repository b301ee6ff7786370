//! `POST /federation/inbox` against the real application: a second instance is the origin
//! (it serves its key), and requests are signed with its key file.

use serde_json::{json, Value};
use switchyard::federation::signing::{RequestSignature, ServerKey};

use crate::helpers::{event, spawn_app_with, TestApp, TestDb};

const A: &str = "a.test";
const B: &str = "b.test";

/// The receiver `a.test` and the origin `b.test` (whose key signs our requests).
struct Pair {
    a: TestApp,
    b: TestApp,
    b_key: ServerKey,
}

async fn pair(adjust: impl FnOnce(&mut switchyard::config::Config)) -> Pair {
    let b = spawn_app_with(TestDb::new().await, |c| c.server.name = B.into()).await;
    let b_key = ServerKey::load(&b.db.dir.path().join("signing.key")).expect("b's key");
    let b_address = b.address.clone();
    let a = spawn_app_with(TestDb::new().await, move |c| {
        c.server.name = A.into();
        c.server.admin_token = "s3cret".into();
        c.federation.resolve.insert(B.into(), b_address);
        adjust(c);
    })
    .await;
    Pair { a, b, b_key }
}

/// What a request carries; each field can be spoiled by a test.
#[derive(Clone)]
struct Req {
    origin: Option<String>,
    timestamp: Option<String>,
    key_id: Option<String>,
    signature: Option<String>,
    body: Vec<u8>,
}

fn now_secs() -> i64 {
    switchyard::clock::now_ms() / 1000
}

/// A correctly signed request from `origin` with `key`.
fn signed(key: &ServerKey, origin: &str, destination: &str, timestamp: i64, body: &[u8]) -> Req {
    let timestamp = timestamp.to_string();
    let key_id = key.key_id();
    let signature = key.sign_request(&RequestSignature {
        method: "POST",
        path: "/federation/inbox",
        origin,
        destination,
        timestamp: &timestamp,
        key_id: &key_id,
        body,
    });
    Req {
        origin: Some(origin.into()),
        timestamp: Some(timestamp),
        key_id: Some(key_id),
        signature: Some(signature),
        body: body.to_vec(),
    }
}

impl Pair {
    fn req(&self, body: &Value) -> Req {
        let body = serde_json::to_vec(body).expect("json");
        signed(&self.b_key, B, A, now_secs(), &body)
    }

    async fn send(&self, req: &Req) -> (u16, Option<String>, Value) {
        let mut request = awc::Client::default()
            .post(format!("{}/federation/inbox", self.a.address))
            .insert_header(("Content-Type", "application/json"));
        for (name, value) in [
            ("X-Switchyard-Origin", &req.origin),
            ("X-Switchyard-Timestamp", &req.timestamp),
            ("X-Switchyard-Key", &req.key_id),
            ("X-Switchyard-Signature", &req.signature),
        ] {
            if let Some(value) = value {
                request = request.insert_header((name, value.as_str()));
            }
        }
        let mut res = request.send_body(req.body.clone()).await.expect("request");
        let retry_after = res
            .headers()
            .get("Retry-After")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let body = res.body().limit(1 << 22).await.expect("body");
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        (res.status().as_u16(), retry_after, body)
    }

    async fn head(&self) -> u64 {
        self.a.store.head().await.expect("head").0
    }

    async fn admin_put(&self, origin: &str, policy: Value) -> (u16, Value) {
        let mut res = awc::Client::default()
            .put(format!("{}/admin/v1/origins/{origin}", self.a.address))
            .insert_header(("Authorization", "Bearer s3cret"))
            .send_json(&policy)
            .await
            .expect("put");
        (
            res.status().as_u16(),
            res.json().await.unwrap_or(Value::Null),
        )
    }

    /// `general@a.test`, created by alice@a.test, with bob@b.test invited.
    async fn channel_with_bob_invited(&self) {
        self.a
            .log
            .append(vec![
                event(
                    A,
                    "c1",
                    "channel.new",
                    "alice@a.test",
                    json!({"name": "General"}),
                ),
                event(
                    A,
                    "i1",
                    "channel.invite",
                    "alice@a.test",
                    json!({"invitee": "bob@b.test"}),
                ),
            ])
            .await
            .expect("channel");
    }
}

fn wire(id: &str, kind: &str, content: Value) -> Value {
    json!({"event_id": id, "type": kind, "sender": "bob@b.test", "channel": "general@a.test",
           "ts": 1_700_000_000_000i64, "content": content})
}

fn relay(id: &str, message_id: &str, body: &str) -> Value {
    wire(
        id,
        "message.relay",
        json!({"action": "new", "message_id": message_id, "body": body}),
    )
}

fn errcode(body: &Value) -> Option<&str> {
    body["errcode"].as_str()
}

#[actix_web::test]
async fn requests_refused_before_the_key_lookup_fetch_nothing_and_write_nothing() {
    let p = pair(|c| c.federation.max_body_bytes = 4096).await;
    let head = p.head().await;
    let good = p.req(&json!({"events": [relay("e1", "m1", "hi")]}));

    let mut cases: Vec<(&str, Req, u16, &str)> = Vec::new();
    for header in ["origin", "timestamp", "key", "signature"] {
        let mut r = good.clone();
        match header {
            "origin" => r.origin = None,
            "timestamp" => r.timestamp = None,
            "key" => r.key_id = None,
            _ => r.signature = None,
        }
        cases.push(("missing header", r, 400, "SY_MISSING_HEADER"));
    }
    let spoil = |f: fn(&mut Req)| {
        let mut r = good.clone();
        f(&mut r);
        r
    };
    cases.push((
        "timestamp",
        spoil(|r| r.timestamp = Some("yesterday".into())),
        400,
        "SY_BAD_HEADER",
    ));
    cases.push((
        "timestamp in ms",
        spoil(|r| r.timestamp = Some("1700000000000000".into())),
        400,
        "SY_BAD_HEADER",
    ));
    cases.push((
        "key id",
        spoil(|r| r.key_id = Some("rsa:1".into())),
        400,
        "SY_BAD_HEADER",
    ));
    cases.push((
        "signature",
        spoil(|r| r.signature = Some("not base64!".into())),
        400,
        "SY_BAD_HEADER",
    ));
    cases.push((
        "short signature",
        spoil(|r| r.signature = Some("AAAA".into())),
        400,
        "SY_BAD_HEADER",
    ));
    cases.push((
        "origin",
        spoil(|r| r.origin = Some("not a server".into())),
        400,
        "SY_BAD_HEADER",
    ));
    let body = serde_json::to_vec(&json!({"events": [relay("e1", "m1", "hi")]})).expect("json");
    cases.push((
        "too old",
        signed(&p.b_key, B, A, now_secs() - 310, &body),
        401,
        "SY_STALE_REQUEST",
    ));
    cases.push((
        "from the future",
        signed(&p.b_key, B, A, now_secs() + 310, &body),
        401,
        "SY_STALE_REQUEST",
    ));
    let huge = json!({"events": [relay("e1", "m1", &"x".repeat(5000))]});
    cases.push(("too large", p.req(&huge), 413, "SY_TOO_LARGE"));

    for (name, req, status, code) in cases {
        let (got, _, body) = p.send(&req).await;
        assert_eq!(
            (got, errcode(&body)),
            (status, Some(code)),
            "{name}: {body}"
        );
        assert!(body["error"].is_string(), "{name}");
    }

    // Blocked by the operator: 403 before any key lookup.
    let (status, _) = p
        .admin_put(
            B,
            json!({"rate_per_minute": 100, "burst": 100, "blocked": true}),
        )
        .await;
    assert_eq!(status, 200);
    let head_after_policy = p.head().await;
    assert_eq!(head_after_policy, head + 1, "the policy is a log event");
    let (status, _, body) = p.send(&good).await;
    assert_eq!(
        (status, errcode(&body)),
        (403, Some("SY_FORBIDDEN")),
        "{body}"
    );

    assert_eq!(p.a.inbox.key_fetches(), 0, "no key was fetched");
    assert_eq!(p.head().await, head_after_policy, "nothing was written");
}

#[actix_web::test]
async fn signature_failures_are_refused_and_write_nothing() {
    let p = pair(|_| {}).await;
    let head = p.head().await;
    let body = serde_json::to_vec(&json!({"events": [relay("e1", "m1", "hi")]})).expect("json");

    // A key id the origin does not have.
    let mut unknown = signed(&p.b_key, B, A, now_secs(), &body);
    unknown.key_id = Some("ed25519:nope".into());
    // Signed by another key under the origin's key id.
    let impostor = ServerKey::from_seed(p.b_key.key_id().trim_start_matches("ed25519:"), [7; 32]);
    let forged = signed(&impostor, B, A, now_secs(), &body);
    // Signed for another destination.
    let elsewhere = signed(&p.b_key, B, "c.test", now_secs(), &body);
    // The body changed after signing.
    let mut changed = signed(&p.b_key, B, A, now_secs(), &body);
    changed.body = serde_json::to_vec(&json!({"events": [relay("e1", "m1", "HI")]})).expect("json");
    // Another origin's name with B's signature.
    let mut renamed = signed(&p.b_key, B, A, now_secs(), &body);
    renamed.origin = Some("c.test".into());

    for (name, req, code) in [
        ("unknown key", unknown, "SY_UNKNOWN_KEY"),
        ("forged", forged, "SY_BAD_SIGNATURE"),
        ("other destination", elsewhere, "SY_BAD_SIGNATURE"),
        ("body changed", changed, "SY_BAD_SIGNATURE"),
        ("unreachable origin", renamed, "SY_UNKNOWN_KEY"),
    ] {
        let (status, _, body) = p.send(&req).await;
        assert_eq!(
            (status, errcode(&body)),
            (401, Some(code)),
            "{name}: {body}"
        );
    }
    assert_eq!(p.head().await, head, "nothing was written");
}

#[actix_web::test]
async fn bad_bodies_and_bad_events_are_refused_one_by_one() {
    let p = pair(|_| {}).await;
    p.channel_with_bob_invited().await;
    let head = p.head().await;

    for (name, body) in [
        ("invalid JSON", b"{\"events\": [".to_vec()),
        ("not an object", b"[]".to_vec()),
        (
            "no events",
            serde_json::to_vec(&json!({"events": []})).expect("json"),
        ),
        (
            "101 events",
            serde_json::to_vec(&json!({"events": (0..101)
                .map(|i| relay(&format!("e{i}"), &format!("m{i}"), "x"))
                .collect::<Vec<_>>()}))
            .expect("json"),
        ),
    ] {
        let req = signed(&p.b_key, B, A, now_secs(), &body);
        let (status, _, answer) = p.send(&req).await;
        assert_eq!(
            (status, errcode(&answer)),
            (400, Some("SY_BAD_JSON")),
            "{name}: {answer}"
        );
    }
    assert_eq!(p.head().await, head, "nothing was written");

    // Per event: each bad one rejected with its errcode, the good one accepted.
    let mut foreign = relay("foreign", "m2", "hi");
    foreign["sender"] = json!("mallory@c.test");
    let mut elsewhere = relay("elsewhere", "m3", "hi");
    elsewhere["channel"] = json!("general@c.test");
    let events = json!({"events": [
        wire("j1", "channel.join", json!({})),
        relay("ok", "m1", "hello"),
        foreign,
        elsewhere,
        relay("bad id!", "m4", "x"),
        wire("unknown", "channel.destroy", json!({})),
        wire("shape", "message.relay", json!({"action": "new", "message_id": "m5"})),
        wire("key", "sender_key.distribute", json!({"recipient": "carol@c.test", "device_id": "d", "key": "k"})),
    ]});
    let (status, _, answer) = p.send(&p.req(&events)).await;
    assert_eq!(status, 200, "{answer}");
    let results = &answer["results"];
    assert_eq!(results["j1"]["status"], "accepted", "{answer}");
    assert_eq!(results["ok"]["status"], "accepted", "{answer}");
    assert_eq!(results["ok"]["seq"].as_u64(), Some(head + 2));
    for (id, code) in [
        ("foreign", "SY_FORBIDDEN"),
        ("elsewhere", "SY_FORBIDDEN"),
        ("bad id!", "SY_BAD_EVENT"),
        ("unknown", "SY_UNKNOWN_TYPE"),
        ("shape", "SY_BAD_EVENT"),
        ("key", "SY_FORBIDDEN"),
    ] {
        assert_eq!(results[id]["status"], "rejected", "{id}: {answer}");
        assert_eq!(results[id]["errcode"], code, "{id}: {answer}");
        assert!(results[id]["error"].is_string(), "{id}");
    }
    assert_eq!(
        p.head().await,
        head + 2,
        "only the accepted events were written"
    );

    // A relayed message is a message.new in the log, and in the projection.
    let entries = p.a.store.read_after(head, 10).await.expect("read");
    let kinds: Vec<_> = entries.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["channel.join", "message.new"]);
    assert_eq!(entries[1].origin, B);
    assert_eq!(
        entries[1].content.get(),
        r#"{"body":"hello","message_id":"m1"}"#
    );
}

#[actix_web::test]
async fn membership_is_enforced_for_channels_homed_here() {
    let p = pair(|_| {}).await;
    p.channel_with_bob_invited().await;
    // Invited, not joined: no message; the join then the message in one request: both.
    let (_, _, answer) = p
        .send(&p.req(&json!({"events": [relay("early", "m0", "too soon")]})))
        .await;
    assert_eq!(
        answer["results"]["early"]["errcode"], "SY_FORBIDDEN",
        "{answer}"
    );
    let (_, _, answer) = p
        .send(&p.req(&json!({"events": [
            wire("join", "channel.join", json!({})),
            relay("m1", "m1", "hello"),
            wire("leave", "channel.leave", json!({})),
            relay("m2", "m2", "gone"),
        ]})))
        .await;
    let results = &answer["results"];
    assert_eq!(results["join"]["status"], "accepted", "{answer}");
    assert_eq!(results["m1"]["status"], "accepted", "{answer}");
    assert_eq!(results["leave"]["status"], "accepted", "{answer}");
    assert_eq!(results["m2"]["errcode"], "SY_FORBIDDEN", "{answer}");
    // Never invited: no join.
    let mut stranger = wire("s1", "channel.join", json!({}));
    stranger["sender"] = json!("eve@b.test");
    let (_, _, answer) = p.send(&p.req(&json!({"events": [stranger]}))).await;
    assert_eq!(
        answer["results"]["s1"]["errcode"], "SY_FORBIDDEN",
        "{answer}"
    );
}

#[actix_web::test]
async fn duplicates_within_and_across_requests_and_a_retry_after_a_failed_append() {
    let p = pair(|_| {}).await;
    p.channel_with_bob_invited().await;
    let (_, _, answer) = p
        .send(&p.req(&json!({"events": [
            wire("join", "channel.join", json!({})),
            relay("e1", "m1", "one"),
            relay("e1", "m1", "one"),
        ]})))
        .await;
    let seq = answer["results"]["e1"]["seq"].as_u64().expect("accepted");
    let head = p.head().await;
    // Again, in a new request: a duplicate, nothing written.
    let (status, _, answer) = p
        .send(&p.req(&json!({"events": [relay("e1", "m1", "one"), relay("e2", "m2", "two")]})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(answer["results"]["e1"], json!({"status": "duplicate"}));
    assert_eq!(answer["results"]["e2"]["seq"].as_u64(), Some(head + 1));
    assert!(seq < head + 1);

    // The log refuses an event (an injected failure): the request fails, nothing is kept,
    // and the sender's retry is accepted rather than called a duplicate.
    if p.a.db.url.starts_with("sqlite:") {
        use sea_orm::{ConnectionTrait, Database};
        let raw = Database::connect(&p.a.db.url).await.expect("raw");
        raw.execute_unprepared(
            "CREATE TRIGGER fail_e3 BEFORE INSERT ON events WHEN NEW.event_id = 'e3' \
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .await
        .expect("trigger");
        let head = p.head().await;
        let (status, retry_after, answer) = p
            .send(&p.req(&json!({"events": [relay("e3", "m3", "three")]})))
            .await;
        assert_eq!(
            (status, errcode(&answer)),
            (503, Some("SY_UNAVAILABLE")),
            "{answer}"
        );
        assert!(retry_after.is_some());
        assert_eq!(p.head().await, head);
        raw.execute_unprepared("DROP TRIGGER fail_e3")
            .await
            .expect("drop trigger");
        let (status, _, answer) = p
            .send(&p.req(&json!({"events": [relay("e3", "m3", "three")]})))
            .await;
        assert_eq!(status, 200);
        assert_eq!(answer["results"]["e3"]["status"], "accepted", "{answer}");
    }
}

#[actix_web::test]
async fn the_quota_is_charged_per_event_and_the_operator_can_change_it() {
    let p = pair(|c| {
        c.federation.default_rate_per_minute = 6;
        c.federation.default_burst = 5;
    })
    .await;
    p.channel_with_bob_invited().await;
    let batch = |from: usize, n: usize| {
        json!({"events": (from..from + n)
            .map(|i| wire(&format!("j{i}"), "channel.join", json!({})))
            .collect::<Vec<_>>()})
    };
    let (status, _, answer) = p.send(&p.req(&batch(0, 4))).await;
    assert_eq!(status, 200, "{answer}");
    let head = p.head().await;
    let (status, retry_after, answer) = p.send(&p.req(&batch(4, 2))).await;
    assert_eq!(
        (status, errcode(&answer)),
        (429, Some("SY_LIMIT_EXCEEDED")),
        "{answer}"
    );
    let wait: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=20).contains(&wait), "{wait}");
    // More events than the burst can ever allow.
    let (status, _, _) = p.send(&p.req(&batch(10, 6))).await;
    assert_eq!(status, 429);
    assert_eq!(p.head().await, head, "nothing was written");

    // The admin API shows the counters and raises the quota at once.
    let mut res = awc::Client::default()
        .get(format!("{}/admin/v1/origins", p.a.address))
        .insert_header(("Authorization", "Bearer s3cret"))
        .send()
        .await
        .expect("list");
    let list: Value = res.json().await.expect("json");
    let b = list["origins"]
        .as_array()
        .and_then(|o| o.iter().find(|o| o["origin"] == B))
        .expect("b.test listed");
    assert_eq!(
        (b["rate_per_minute"].as_u64(), b["burst"].as_u64()),
        (Some(6), Some(5))
    );
    assert_eq!(b["policy_source"], "default");
    assert_eq!(b["limited"].as_u64(), Some(2));
    assert_eq!(b["accepted"].as_u64(), Some(4));
    assert_eq!(b["active"], true);

    let (status, view) = p
        .admin_put(
            B,
            json!({"rate_per_minute": 600, "burst": 50, "blocked": false}),
        )
        .await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["policy_source"], "admin");
    let (status, _, answer) = p.send(&p.req(&batch(20, 30))).await;
    assert_eq!(status, 200, "{answer}");

    // Bad policies and tokens change nothing.
    let head = p.head().await;
    for (body, code) in [
        (
            json!({"rate_per_minute": 0, "burst": 5, "blocked": false}),
            "SY_INVALID_PARAM",
        ),
        (
            json!({"rate_per_minute": -1, "burst": 5, "blocked": false}),
            "SY_BAD_JSON",
        ),
        (
            json!({"rate_per_minute": 5, "blocked": false}),
            "SY_BAD_JSON",
        ),
    ] {
        let (status, answer) = p.admin_put(B, body).await;
        assert_eq!((status, errcode(&answer)), (400, Some(code)), "{answer}");
    }
    let (status, answer) = p
        .admin_put(
            "bad..name",
            json!({"rate_per_minute": 5, "burst": 5, "blocked": false}),
        )
        .await;
    assert_eq!(
        (status, errcode(&answer)),
        (400, Some("SY_INVALID_PARAM")),
        "{answer}"
    );
    let mut res = awc::Client::default()
        .put(format!("{}/admin/v1/origins/{B}", p.a.address))
        .send_json(&json!({"rate_per_minute": 5, "burst": 5, "blocked": true}))
        .await
        .expect("put");
    assert_eq!(res.status(), 401);
    let answer: Value = res.json().await.expect("json");
    assert_eq!(errcode(&answer), Some("SY_MISSING_TOKEN"));
    assert_eq!(p.head().await, head, "nothing was written");
}

#[actix_web::test]
async fn an_origin_policy_survives_a_restart() {
    let p = pair(|_| {}).await;
    let (status, _) = p
        .admin_put(
            B,
            json!({"rate_per_minute": 42, "burst": 7, "blocked": true}),
        )
        .await;
    assert_eq!(status, 200);
    p.a.server.stop(true).await;
    let again = TestDb {
        url: p.a.db.url.clone(),
        dir: tempfile::tempdir().expect("dir"),
    };
    let key_file = p.a.db.dir.path().join("signing.key");
    let restarted = spawn_app_with(again, |c| {
        c.server.name = A.into();
        c.server.admin_token = "s3cret".into();
        c.keys.path = key_file;
    })
    .await;
    let mut res = awc::Client::default()
        .get(format!("{}/admin/v1/origins/{B}", restarted.address))
        .insert_header(("Authorization", "Bearer s3cret"))
        .send()
        .await
        .expect("get");
    let view: Value = res.json().await.expect("json");
    assert_eq!(
        (
            view["rate_per_minute"].as_u64(),
            view["burst"].as_u64(),
            &view["blocked"],
            &view["policy_source"]
        ),
        (Some(42), Some(7), &json!(true), &json!("admin")),
        "{view}"
    );
    drop(p.b);
}

#[actix_web::test]
async fn the_pre_verify_bucket_refuses_a_flood_before_any_key_lookup() {
    let p = pair(|c| {
        c.federation.preverify_rate_per_second = 1;
        c.federation.preverify_burst = 2;
    })
    .await;
    let head = p.head().await;
    // Fresh requests with a bad signature: the first two reach the signature check.
    let mut req = p.req(&json!({"events": [relay("e1", "m1", "hi")]}));
    req.signature = Some(switchyard::federation::signing::b64(&[0u8; 64]));
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(p.send(&req).await);
    }
    let (status, retry_after, body) = &answers[2];
    assert_eq!(
        (*status, errcode(body)),
        (429, Some("SY_LIMIT_EXCEEDED")),
        "{body}"
    );
    assert!(retry_after.is_some());
    // The first two reached the key lookup and failed the signature (the first with one
    // refetch of the key, in case it had rotated); the third fetched nothing.
    assert_eq!((answers[0].0, answers[1].0), (401, 401));
    assert_eq!(p.a.inbox.key_fetches(), 2);
    assert_eq!(p.head().await, head);
}

#[actix_web::test]
async fn user_lookup_is_signed_like_the_inbox() {
    let p = pair(|_| {}).await;
    let mut res = awc::Client::default()
        .post(format!("{}/api/v1/auth/register", p.a.address))
        .send_json(&json!({"username": "alice", "password": "long enough"}))
        .await
        .expect("register");
    assert_eq!(res.status(), 201);
    let _ = res.body().await;

    let path = "/federation/user-lookup?username=alice".to_string();
    let (status, body) = lookup(&p, &path, &path, Some(&p.b_key)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"found": true, "username": "alice", "user_id": "alice@a.test", "server_domain": A})
    );
    let unknown = "/federation/user-lookup?username=nobody".to_string();
    let (status, body) = lookup(&p, &unknown, &unknown, Some(&p.b_key)).await;
    assert_eq!((status, body), (200, json!({"found": false})));

    // Unsigned, or signed over another query: refused.
    let (status, body) = lookup(&p, &path, &path, None).await;
    assert_eq!((status, errcode(&body)), (400, Some("SY_MISSING_HEADER")));
    let (status, body) = lookup(&p, &path, &unknown, Some(&p.b_key)).await;
    assert_eq!(
        (status, errcode(&body)),
        (401, Some("SY_BAD_SIGNATURE")),
        "{body}"
    );
    // Signed, but without the query the route needs.
    let bare = "/federation/user-lookup".to_string();
    let (status, body) = lookup(&p, &bare, &bare, Some(&p.b_key)).await;
    assert_eq!(
        (status, errcode(&body)),
        (400, Some("SY_INVALID_PARAM")),
        "{body}"
    );
}

/// A `GET` of `path` on A, signed by `key` (as B) over `signed_path`, or unsigned.
async fn lookup(p: &Pair, path: &str, signed_path: &str, key: Option<&ServerKey>) -> (u16, Value) {
    let mut request = awc::Client::default().get(format!("{}{path}", p.a.address));
    if let Some(key) = key {
        let timestamp = now_secs().to_string();
        let key_id = key.key_id();
        let signature = key.sign_request(&RequestSignature {
            method: "GET",
            path: signed_path,
            origin: B,
            destination: A,
            timestamp: &timestamp,
            key_id: &key_id,
            body: b"",
        });
        request = request
            .insert_header(("X-Switchyard-Origin", B))
            .insert_header(("X-Switchyard-Timestamp", timestamp))
            .insert_header(("X-Switchyard-Key", key_id))
            .insert_header(("X-Switchyard-Signature", signature));
    }
    let mut res = request.send().await.expect("lookup");
    (
        res.status().as_u16(),
        res.json::<Value>().await.unwrap_or(Value::Null),
    )
}

/// Collects what a Channel actor delivers.
struct Collector(tokio::sync::mpsc::UnboundedSender<switchyard::gateway::channel::Delivered>);

impl actix::Actor for Collector {
    type Context = actix::Context<Self>;
}

impl actix::Handler<switchyard::gateway::channel::Delivered> for Collector {
    type Result = ();

    fn handle(&mut self, msg: switchyard::gateway::channel::Delivered, _: &mut Self::Context) {
        let _ = self.0.send(msg);
    }
}

#[actix_web::test]
async fn accepted_events_are_published_to_their_channel_actor_once_serialised() {
    use actix::Actor;
    use switchyard::gateway::channel::Delivered;

    let p = pair(|_| {}).await;
    p.channel_with_bob_invited().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
    let first = Collector(tx).start();
    let second = Collector(tx2).start();
    p.a.channels
        .subscribe("general@a.test", 1, std::sync::Arc::new(first.recipient()))
        .await;
    p.a.channels
        .subscribe("general@a.test", 2, std::sync::Arc::new(second.recipient()))
        .await;
    // Another channel's subscriber sees nothing of general@a.test.
    let (tx3, mut rx3) = tokio::sync::mpsc::unbounded_channel();
    p.a.channels
        .subscribe(
            "other@a.test",
            3,
            std::sync::Arc::new(Collector(tx3).start().recipient()),
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    let (_, _, answer) = p
        .send(&p.req(&json!({"events": [
            wire("join", "channel.join", json!({})),
            relay("m1", "m1", "hello"),
        ]})))
        .await;
    let seq = answer["results"]["m1"]["seq"].as_u64().expect("accepted");

    // Events committed just before the subscription may still arrive (the router is
    // asynchronous); a session tells them apart by seq. Wait for the message.
    async fn until_seq(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Delivered>,
        seq: u64,
    ) -> std::sync::Arc<switchyard::gateway::channel::ChannelEvent> {
        loop {
            let delivered = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("delivered in time")
                .expect("open");
            match delivered {
                Delivered::Event(event) if event.seq == seq => return event,
                Delivered::Event(event) => assert!(event.seq < seq, "in seq order"),
                gap => panic!("unexpected {gap:?}"),
            }
        }
    }
    let mine = until_seq(&mut rx, seq).await;
    let frame: Value = serde_json::from_slice(&mine.json).expect("json");
    assert_eq!(
        frame,
        json!({"type": "message.new", "seq": seq, "channel": "general@a.test",
               "sender": "bob@b.test", "ts": 1_700_000_000_000i64,
               "content": {"body": "hello", "message_id": "m1"}})
    );
    // Both subscribers hold the very same bytes.
    let theirs = until_seq(&mut rx2, seq).await;
    assert!(std::sync::Arc::ptr_eq(&mine, &theirs));
    assert!(rx3.try_recv().is_err());
}

#[actix_web::test]
async fn only_authors_edit_and_a_home_server_never_speaks_for_our_users() {
    let p = pair(|_| {}).await;
    p.channel_with_bob_invited().await;
    // alice (ours) posts; bob joins and posts.
    let mut alice_post = event(
        A,
        "a-m1",
        "message.new",
        "alice@a.test",
        json!({"message_id": "a1", "body": "alice's"}),
    );
    alice_post.channel = Some("general@a.test".into());
    p.a.log.append(vec![alice_post]).await.expect("alice posts");
    let edit = |id: &str, message_id: &str, body: &str| {
        wire(
            id,
            "message.relay",
            json!({"action": "edit", "message_id": message_id, "body": body}),
        )
    };
    let (_, _, answer) = p
        .send(&p.req(&json!({"events": [
            wire("join", "channel.join", json!({})),
            relay("b1", "b1", "bob's"),
            edit("b1-edit", "b1", "bob's, edited"),
            edit("steal", "a1", "bob was here"),
            wire("del", "message.relay", json!({"action": "delete", "message_id": "a1"})),
            edit("ghost", "nope", "x"),
        ]})))
        .await;
    let results = &answer["results"];
    assert_eq!(results["b1-edit"]["status"], "accepted", "{answer}");
    for id in ["steal", "del", "ghost"] {
        assert_eq!(results[id]["errcode"], "SY_FORBIDDEN", "{id}: {answer}");
    }
    // Reusing alice's message id in a new message does not make bob its author.
    let (_, _, answer) = p
        .send(&p.req(&json!({"events": [
            relay("reuse", "a1", "bob's copy"),
            edit("hijack", "a1", "bob was here"),
        ]})))
        .await;
    assert_eq!(
        answer["results"]["hijack"]["errcode"], "SY_FORBIDDEN",
        "{answer}"
    );
    let kept =
        p.a.store
            .message("general@a.test", "a1")
            .await
            .expect("read")
            .expect("alice's message");
    assert_eq!(kept.body.as_deref(), Some("alice's"));

    // b.test's own channel: it cannot relay events of a.test's users, even with a member here.
    let mut invite = wire("inv", "channel.invite", json!({"invitee": "alice@a.test"}));
    invite["channel"] = json!("room@b.test");
    let mut forged = relay("forged", "f1", "not alice");
    forged["channel"] = json!("room@b.test");
    forged["sender"] = json!("alice@a.test");
    let (_, _, answer) = p.send(&p.req(&json!({"events": [invite, forged]}))).await;
    assert_eq!(answer["results"]["inv"]["status"], "accepted", "{answer}");
    assert_eq!(
        answer["results"]["forged"]["errcode"], "SY_FORBIDDEN",
        "{answer}"
    );
}

/// The alert rules and the dashboard under `config/` name only metrics the server serves:
/// after a little of everything (a delivery, an inbox request, a refused socket), each one
/// not about a cluster is in `/metrics` (the cluster ones: `cluster::`).
#[actix_web::test]
async fn every_metric_the_alerts_and_dashboard_use_is_served() {
    let p = pair(|_| {}).await;
    p.channel_with_bob_invited().await;
    let (status, _, answer) = p
        .send(&p.req(&json!({"events": [wire("j1", "channel.join", json!({}))]})))
        .await;
    assert_eq!(status, 200, "{answer}");
    let mut ws = crate::gateway::Ws::connect(&p.a, "?ticket=nonsense").await;
    assert_eq!(ws.closed().await, Some(4001));
    let wanted: Vec<String> = crate::helpers::metrics_in_dashboards("")
        .into_iter()
        .filter(|m| !m.starts_with("cluster_"))
        .collect();
    assert!(wanted.len() >= 8, "{wanted:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let missing = crate::helpers::metrics_missing(&p.a.address, &wanted).await;
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "named by config/prometheus or config/grafana, absent from /metrics: {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
