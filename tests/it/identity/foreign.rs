//! Foreign sessions (DESIGN §4.3) between real instances over loopback: an actor at home on
//! A signs in on B by key trial, takes part in B's channel over REST and the gateway, signs
//! its messages, and is refused once A invalidates its certificate and B's cache window has
//! passed. Every refusal of the sign-in and the extern update, and the fence on the fetches a
//! client can trigger.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Signer, SigningKey};
use serde_json::{json, Value};

use super::{head, issue, request, send_pem, Body};
use crate::gateway::{act, call, create_channel, register, User, Ws};
use crate::helpers::{spawn_app_with, TestApp, TestDb};
use crate::p2::{actor_csr, actor_key};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// An instance named `name` on `port` that reaches each of `peers` over loopback.
pub async fn instance(
    name: &'static str,
    port: u16,
    peers: &[(&'static str, u16)],
    adjust: impl FnOnce(&mut switchyard::config::Config),
) -> TestApp {
    let peers: Vec<(String, u16)> = peers.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect();
    spawn_app_with(TestDb::new().await, move |c| {
        c.server.name = name.into();
        c.server.bind = format!("127.0.0.1:{port}");
        for (peer, port) in peers {
            c.federation
                .resolve
                .insert(peer, format!("http://127.0.0.1:{port}"));
        }
        c.federation.delivery_backoff_base = Duration::from_millis(100);
        c.federation.delivery_max_backoff = Duration::from_millis(500);
        adjust(c);
    })
    .await
}

/// A user of `app` with a certificate for its session: its key and the serial.
pub async fn certified(app: &TestApp, username: &str) -> (User, SigningKey, String) {
    let user = register(app, username).await;
    let key = actor_key();
    let (status, issued) = issue(
        app,
        &user.token,
        &actor_csr(&user.fid, &user.session_id, &key),
        None,
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let serial = issued["serial"].as_str().expect("serial").to_owned();
    (user, key, serial)
}

/// A fresh challenge of `app`.
pub async fn challenge(app: &TestApp) -> String {
    let (status, body) = call(app, "GET", "/.p2/core/v1/challenge", None, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires"].as_i64().is_some());
    body["challenge"].as_str().expect("challenge").to_owned()
}

/// `POST /.p2/core/v1/session/auth` on `app` for `fid` with `serial`, the challenge signed
/// by `key`.
pub async fn sign_in(
    app: &TestApp,
    fid: &str,
    serial: &str,
    key: &SigningKey,
    challenge: &str,
) -> (u16, Value, Option<String>) {
    let signature = hex::encode(key.sign(challenge.as_bytes()).to_bytes());
    let body =
        json!({"challenge": challenge, "fid": fid, "serial": serial, "signature": signature});
    let reply = request(
        app,
        "POST",
        "/.p2/core/v1/session/auth",
        None,
        Some(Body::Json(body)),
        None,
    )
    .await;
    (reply.status, reply.body, reply.retry_after)
}

/// The `signed` object of a message (DESIGN §4.4), its bytes made by an independent
/// canonical JSON encoder (ruma). One argument per signed field, as the contract lists them.
#[allow(clippy::too_many_arguments)]
pub fn sign_message(
    key: &SigningKey,
    serial: &str,
    action: &str,
    body: &str,
    channel: &str,
    message_id: Option<&str>,
    sender: &str,
    ts: i64,
) -> Value {
    let mut signed =
        json!({"action": action, "body": body, "channel": channel, "sender": sender, "ts": ts});
    if let Some(id) = message_id {
        signed["message_id"] = json!(id);
    }
    let canonical = ruma_common::canonical_json::to_canonical_value(&signed)
        .expect("canonical")
        .to_string();
    let signature = base64::engine::general_purpose::STANDARD_NO_PAD
        .encode(key.sign(canonical.as_bytes()).to_bytes());
    json!({"serial": serial, "ts": ts, "signature": signature})
}

pub fn now_ms() -> i64 {
    switchyard::clock::now_ms()
}

/// The foreign session's user on `app`.
fn foreign_user(body: &Value) -> User {
    User {
        fid: body["fid"].as_str().expect("fid").into(),
        token: body["token"].as_str().expect("token").into(),
        session_id: body["session_id"].as_str().expect("session").into(),
    }
}

#[actix_web::test]
async fn an_actor_of_a_signs_in_on_b_takes_part_and_is_refused_once_invalidated() {
    let (port_a, port_b) = (free_port(), free_port());
    let a = instance("a.test", port_a, &[("b.test", port_b)], |_| {}).await;
    let b = instance("b.test", port_b, &[("a.test", port_a)], |c| {
        c.identity.foreign_check_interval = Duration::from_millis(200);
    })
    .await;
    let (alice, key, serial) = certified(&a, "alice").await;

    // Key trial: alice signs B's challenge with her certificate's key.
    let before = head(&b).await;
    let (status, body, _) = sign_in(&b, &alice.fid, &serial, &key, &challenge(&b).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["fid"], alice.fid.as_str());
    assert_eq!(
        body["session_id"],
        alice.session_id.as_str(),
        "the certificate's session"
    );
    let alice_b = foreign_user(&body);
    // B recorded which key it accepted for whom, and a foreign session (its token's hash).
    let recorded = b.store.read_after(before, 10).await.expect("log");
    let kinds: Vec<&str> = recorded.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["actor.foreign_idcert_seen", "session.created"]);
    let seen: Value = serde_json::from_str(recorded[0].content.get()).expect("json");
    assert_eq!(
        (seen["fid"].as_str(), seen["serial"].as_str()),
        (Some(alice.fid.as_str()), Some(serial.as_str()))
    );
    let created: Value = serde_json::from_str(recorded[1].content.get()).expect("json");
    assert_eq!(
        (created["foreign"].as_bool(), created["serial"].as_str()),
        (Some(true), Some(serial.as_str()))
    );
    assert!(!recorded[1].content.get().contains(&alice_b.token));

    // B's answer for alice's certificates is A's, unchanged.
    let path = format!("/.p2/core/v1/idcert/actor/{}", alice.fid);
    let (_, at_a) = call(&a, "GET", &path, None, None).await;
    let (status, at_b) = call(&b, "GET", &path, None, None).await;
    assert_eq!(status, 200);
    // A signs a new window every second, so the two answers may be windows apart; B's must
    // be A's certificate with a window A signed (B re-signs nothing).
    assert_eq!(at_b[0]["id_cert"], at_a[0]["id_cert"]);
    super::certs::check_window(&at_b[0], &super::server_key(&a).await);
    assert_eq!(at_b[0]["id_cert"], at_a[0]["id_cert"]);

    // Bob on B invites alice into a channel of B; she joins and reads it over B's gateway.
    let bob = register(&b, "bob").await;
    let channel = create_channel(&b, &bob, "Visitors").await;
    act(
        &b,
        &bob,
        &channel,
        "invite",
        Some(json!({"fid": alice.fid})),
    )
    .await;
    act(&b, &alice_b, &channel, "join", None).await;
    let (mut alice_ws, ready) = Ws::open(&b, &alice_b).await;
    assert_eq!(ready["fid"], alice.fid.as_str());
    let (mut bob_ws, _) = Ws::open(&b, &bob).await;
    crate::gateway::post(&b, &bob, &channel, "welcome").await;
    assert_eq!(alice_ws.event().await["content"]["body"], "welcome");

    // Alice posts a signed message; bob reads it, signature intact, live and over REST.
    let ts = now_ms();
    let signed = sign_message(
        &key,
        &serial,
        "new",
        "hello from a",
        &channel,
        None,
        &alice.fid,
        ts,
    );
    let (status, posted) = call(
        &b,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(&alice_b.token),
        Some(json!({"body": "hello from a", "signed": signed})),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    let live = bob_ws
        .until(|f| {
            f["op"] == 0
                && f["d"]["type"] == "message.new"
                && f["d"]["sender"] == alice.fid.as_str()
        })
        .await;
    assert_eq!(live["d"]["content"]["signed"], signed);
    let (status, events) = call(
        &b,
        "GET",
        "/.p2/core/v1/events?since=0&limit=1000",
        Some(&bob.token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let caught = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["content"]["message_id"] == posted["message_id"])
        .expect("the message in REST catch-up");
    assert_eq!(caught["content"]["signed"], signed);
    // A signature by another key is refused, and writes nothing.
    let forged = sign_message(
        &actor_key(),
        &serial,
        "new",
        "not alice",
        &channel,
        None,
        &alice.fid,
        now_ms(),
    );
    let before = head(&b).await;
    let (status, body) = call(
        &b,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(&alice_b.token),
        Some(json!({"body": "not alice", "signed": forged})),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_BAD_SIGNATURE"))
    );
    assert_eq!(head(&b).await, before);
    // A foreign session acts in B's channels only, and does not get certificates here.
    let (status, body) = issue(
        &b,
        &alice_b.token,
        &actor_csr(&alice.fid, &alice.session_id, &key),
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("SY_FORBIDDEN"))
    );
    // Nor manages services here, nor posts in a channel of another server; nothing written.
    let before = head(&b).await;
    let (status, body) = call(
        &b,
        "POST",
        "/.p2/core/v1/services",
        Some(&alice_b.token),
        Some(json!({"service": {"service": "chat", "url": "https://x.example", "primary": true}})),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("SY_FORBIDDEN")),
        "{body}"
    );
    let (status, body) = call(
        &b,
        "POST",
        "/api/v1/channels/room@a.test/messages",
        Some(&alice_b.token),
        Some(json!({"body": "elsewhere"})),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("SY_FORBIDDEN")),
        "{body}"
    );
    assert_eq!(head(&b).await, before);

    // A invalidates the certificate (alice ends her session there). B keeps trusting it
    // inside the cache window it holds...
    let (status, _) = call(
        &a,
        "DELETE",
        &format!("/.p2/core/v1/session?session_id={}", alice.session_id),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 204);
    let (status, _) = call(
        &b,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice_b.token),
        None,
    )
    .await;
    assert_eq!(status, 200, "still inside B's cache window");
    // ...and once B's clock is past it, B asks A again: the session ends, its socket closes
    // with 4003 (the periodic check, without any request), and its token is refused.
    b.identity.clock.advance(Duration::from_secs(2 * 3600));
    assert_eq!(alice_ws.closed().await, Some(4003));
    let (status, body) = call(
        &b,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice_b.token),
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_UNKNOWN_TOKEN"))
    );
    // Bob's socket goes on.
    crate::gateway::post(&b, &bob, &channel, "still here").await;
    assert_eq!(bob_ws.event().await["content"]["body"], "still here");
    // And she cannot sign in again with it.
    let (status, body, _) = sign_in(&b, &alice.fid, &serial, &key, &challenge(&b).await).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_BAD_CERT")),
        "{body}"
    );

    // Replay rebuilds B's identity state identically.
    let target = TestDb::new().await;
    let report = b
        .store
        .replay_into(&target.store().await)
        .await
        .expect("replay");
    assert!(report.identical(), "{report:?}");
}

#[actix_web::test]
async fn sign_in_and_extern_refusals_have_their_errcodes_and_write_nothing() {
    let (port_a, port_b, port_down) = (free_port(), free_port(), free_port());
    let a = instance("a.test", port_a, &[("b.test", port_b)], |_| {}).await;
    let b = instance(
        "b.test",
        port_b,
        &[("a.test", port_a), ("down.test", port_down)],
        |_| {},
    )
    .await;
    let (alice, key, serial) = certified(&a, "alice").await;
    // A second session of alice's on A with its own certificate.
    let (status, second) = call(
        &a,
        "POST",
        "/api/v1/auth/login",
        None,
        Some(json!({"username": "alice", "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, 200);
    let second_key = actor_key();
    let (status, second_cert) = issue(
        &a,
        second["token"].as_str().expect("token"),
        &actor_csr(
            &alice.fid,
            second["session_id"].as_str().expect("id"),
            &second_key,
        ),
        None,
    )
    .await;
    assert_eq!(status, 201);

    let start = head(&b).await;
    let refused = |status: u16, errcode: &'static str| (status, errcode);
    // Unknown and reused challenges.
    let (status, body, _) = sign_in(&b, &alice.fid, &serial, &key, "not-a-challenge").await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_BAD_CHALLENGE"))
    );
    let used = challenge(&b).await;
    let (status, _, _) = sign_in(&b, &alice.fid, &serial, &actor_key(), &used).await;
    assert_eq!(status, 401, "consumed by a failed attempt");
    let (status, body, _) = sign_in(&b, &alice.fid, &serial, &key, &used).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_BAD_CHALLENGE"))
    );
    type Case = (
        &'static str,
        String,
        String,
        SigningKey,
        (u16, &'static str),
    );
    let cases: Vec<Case> = vec![
        (
            "a malformed fid",
            "not a fid".into(),
            serial.clone(),
            key.clone(),
            refused(400, "SY_INVALID_PARAM"),
        ),
        (
            "a fid of B itself",
            "carol@b.test".into(),
            serial.clone(),
            key.clone(),
            refused(400, "SY_INVALID_PARAM"),
        ),
        (
            "a malformed serial",
            alice.fid.clone(),
            "x1".into(),
            key.clone(),
            refused(401, "SY_BAD_CERT"),
        ),
        (
            "an unknown serial",
            alice.fid.clone(),
            "12345".into(),
            key.clone(),
            refused(401, "SY_BAD_CERT"),
        ),
        (
            "an unknown actor",
            "nobody@a.test".into(),
            serial.clone(),
            key.clone(),
            refused(401, "SY_BAD_CERT"),
        ),
        (
            "a signature by another key",
            alice.fid.clone(),
            serial.clone(),
            actor_key(),
            refused(401, "SY_BAD_SIGNATURE"),
        ),
    ];
    for (case, fid, serial, key, (want_status, want_errcode)) in cases {
        let (status, body, _) = sign_in(&b, &fid, &serial, &key, &challenge(&b).await).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (want_status, Some(want_errcode)),
            "{case}: {body}"
        );
    }
    // The home server down: 503 with Retry-After.
    let (status, body, retry_after) =
        sign_in(&b, "dan@down.test", "1", &key, &challenge(&b).await).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (503, Some("SY_UNAVAILABLE")),
        "{body}"
    );
    assert!(retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n >= 1)));
    // An expired challenge.
    let stale = challenge(&b).await;
    b.identity.clock.advance(Duration::from_secs(301));
    let (status, body, _) = sign_in(&b, &alice.fid, &serial, &key, &stale).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_BAD_CHALLENGE"))
    );
    assert_eq!(head(&b).await, start, "no refusal wrote anything");

    // An invalidated certificate: erin renews on A before B ever saw her (B may use what
    // it cached inside the window, so the certificate is one B never cached as valid).
    let (erin, erin_key, erin_serial) = certified(&a, "erin").await;
    let (status, _) = issue(
        &a,
        &erin.token,
        &actor_csr(&erin.fid, &erin.session_id, &actor_key()),
        Some("correct horse"),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body, _) =
        sign_in(&b, &erin.fid, &erin_serial, &erin_key, &challenge(&b).await).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_BAD_CERT")),
        "{body}"
    );
    assert_eq!(head(&b).await, start);

    // Alice renews; with the renewed certificate she signs in.
    let renewed_key = actor_key();
    let (status, renewed) = issue(
        &a,
        &alice.token,
        &actor_csr(&alice.fid, &alice.session_id, &renewed_key),
        Some("correct horse"),
    )
    .await;
    assert_eq!(status, 201, "{renewed}");
    let renewed_serial = renewed["serial"].as_str().expect("serial");
    // B asked A about alice moments ago: a serial new to it may be answered 503 with
    // Retry-After (one refetch per actor per 2 s), which a client honours.
    let (status, body) = honouring_retry_after(async || {
        let (status, body, retry_after) = sign_in(
            &b,
            &alice.fid,
            renewed_serial,
            &renewed_key,
            &challenge(&b).await,
        )
        .await;
        (status, body, retry_after)
    })
    .await;
    assert_eq!(status, 200, "{body}");
    let alice_b = foreign_user(&body);

    // Extern updates: another session's certificate (403), another root's (400), garbage
    // (400), a local session (403); all write nothing.
    let after_sign_in = head(&b).await;
    let extern_path = "/.p2/core/v1/session/idcert/extern";
    let other_session = second_cert["id_cert"].as_str().expect("pem");
    let foreign_root = another_roots_certificate(&alice.fid, &alice.session_id);
    let carol = register(&b, "carol").await;
    let cases: [(&str, Option<&str>, &str, u16, &str); 5] = [
        (
            "another session's certificate",
            Some(&alice_b.token),
            other_session,
            403,
            "SY_FORBIDDEN",
        ),
        (
            "another root's certificate",
            Some(&alice_b.token),
            &foreign_root,
            400,
            "SY_BAD_CERT",
        ),
        (
            "garbage",
            Some(&alice_b.token),
            "garbage",
            400,
            "SY_BAD_CERT",
        ),
        (
            "a local session",
            Some(&carol.token),
            other_session,
            403,
            "SY_FORBIDDEN",
        ),
        ("no token", None, other_session, 401, "SY_MISSING_TOKEN"),
    ];
    for (case, token, pem, want_status, want_errcode) in cases {
        let (status, body) = send_pem(&b, "PUT", extern_path, token, pem, None).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (want_status, Some(want_errcode)),
            "{case}: {body}"
        );
    }
    assert_eq!(
        head(&b).await,
        after_sign_in + 2,
        "only carol's registration and session"
    );

    // A certificate of the same session, renewed at home: 204, and it signs from now on.
    let third_key = actor_key();
    let (status, third) = issue(
        &a,
        &alice.token,
        &actor_csr(&alice.fid, &alice.session_id, &third_key),
        Some("correct horse"),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = honouring_retry_after(async || {
        let reply = request(
            &b,
            "PUT",
            extern_path,
            Some(&alice_b.token),
            Some(Body::Text(
                third["id_cert"].as_str().expect("pem").to_owned(),
            )),
            None,
        )
        .await;
        (reply.status, reply.body, reply.retry_after)
    })
    .await;
    assert_eq!(status, 204, "{body}");
    let bob = register(&b, "bob").await;
    let channel = create_channel(&b, &bob, "Room").await;
    act(
        &b,
        &bob,
        &channel,
        "invite",
        Some(json!({"fid": alice.fid})),
    )
    .await;
    act(&b, &alice_b, &channel, "join", None).await;
    let third_serial = third["serial"].as_str().expect("serial");
    for (serial, key, want) in [
        (renewed_serial, &renewed_key, 400),
        (third_serial, &third_key, 201),
    ] {
        let signed = sign_message(
            key,
            serial,
            "new",
            "hi",
            &channel,
            None,
            &alice.fid,
            now_ms(),
        );
        let (status, body) = call(
            &b,
            "POST",
            &format!("/api/v1/channels/{channel}/messages"),
            Some(&alice_b.token),
            Some(json!({"body": "hi", "signed": signed})),
        )
        .await;
        assert_eq!(status, want, "{body}");
    }
}

/// Repeats `attempt` while it is answered 503 with `Retry-After`, waiting as told, for at
/// most 15 s: the last status and body.
async fn honouring_retry_after(
    attempt: impl AsyncFn() -> (u16, Value, Option<String>),
) -> (u16, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body, retry_after) = attempt().await;
        let wait = retry_after.and_then(|s| s.parse::<u64>().ok());
        match wait {
            Some(seconds) if status == 503 && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_secs(seconds)).await;
            }
            _ => return (status, body),
        }
    }
}

/// A certificate for `fid` that names A's issuer but is signed by another key.
fn another_roots_certificate(fid: &str, session_id: &str) -> String {
    use switchyard::federation::signing::ServerKey;
    use switchyard::identity::idcert::{actor_dn, actor_tbs, sign_certificate, ActorUsage};
    let impostor = ServerKey::generate();
    let now = now_ms() / 1000;
    let tbs = actor_tbs(
        "a.test",
        actor_dn(fid, session_id).expect("dn"),
        &actor_key().verifying_key(),
        7,
        now - 60,
        now + 3600,
        ActorUsage::DigitalSignature,
    )
    .expect("tbs");
    sign_certificate(&impostor, tbs).expect("pem")
}

#[actix_web::test]
async fn fetches_a_client_triggers_reach_only_public_addresses_unless_listed() {
    // Nothing listed: not loopback, not localhost.
    let b = crate::helpers::spawn_app_with(TestDb::new().await, |c| {
        c.server.name = "b.test".into();
        c.federation.plain_http_hosts = Vec::new();
    })
    .await;
    let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    trap.set_nonblocking(true).expect("nonblocking");
    let port = trap.local_addr().expect("addr").port();
    let key = actor_key();
    let before = head(&b).await;
    for fid in [format!("x@127.0.0.1:{port}"), format!("x@localhost:{port}")] {
        let (status, body, _) = sign_in(&b, &fid, "1", &key, &challenge(&b).await).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (401, Some("SY_BAD_CERT")),
            "{fid}: {body}"
        );
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("not a public address")),
            "{body}"
        );
        // An anonymous question about an actor we hold nothing of fetches nothing.
        let (status, body) = call(
            &b,
            "GET",
            &format!("/.p2/core/v1/idcert/actor/{fid}"),
            None,
            None,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("SY_NOT_FOUND")),
            "{fid}: {body}"
        );
    }
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "no connection was made"
    );
    assert_eq!(head(&b).await, before);
}

#[actix_web::test]
async fn a_home_that_redirects_is_not_followed() {
    // A listed home that answers every question with a redirect to another local port.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    trap.set_nonblocking(true).expect("nonblocking");
    let trap_port = trap.local_addr().expect("addr").port();
    let home = actix_web::HttpServer::new(move || {
        actix_web::App::new().default_service(actix_web::web::to(move || async move {
            actix_web::HttpResponse::Found()
                .insert_header(("Location", format!("http://127.0.0.1:{trap_port}/")))
                .finish()
        }))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind");
    let home_port = home.addrs()[0].port();
    let home = home.run();
    let handle = home.handle();
    actix_web::rt::spawn(home);
    let b = instance(
        "b.test",
        free_port(),
        &[("redirect.test", home_port)],
        |_| {},
    )
    .await;
    let (status, body, retry_after) = sign_in(
        &b,
        "x@redirect.test",
        "1",
        &actor_key(),
        &challenge(&b).await,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (503, Some("SY_UNAVAILABLE")),
        "{body}"
    );
    assert!(retry_after.is_some());
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the redirect was not followed"
    );
    handle.stop(false).await;
}

#[actix_web::test]
async fn a_home_that_stalls_its_answer_is_given_up_on_in_time() {
    // A listed home that sends the head of a 200 and then nothing.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    let home_port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            use std::io::{Read, Write};
            let mut stream = stream;
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n[");
            held.push(stream);
        }
    });
    let b = instance("b.test", free_port(), &[("stall.test", home_port)], |c| {
        c.federation.request_timeout = Duration::from_secs(1);
    })
    .await;
    let started = std::time::Instant::now();
    let (status, body, retry_after) =
        sign_in(&b, "x@stall.test", "1", &actor_key(), &challenge(&b).await).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (503, Some("SY_UNAVAILABLE")),
        "{body}"
    );
    assert!(retry_after.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "given up on after {:?}",
        started.elapsed()
    );
}
