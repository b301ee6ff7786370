//! The client gateway (DESIGN §5) with real WebSocket clients against the real application:
//! tickets and Identify, heartbeats, fan-out to members only, resume, REST catch-up sharing
//! the socket's cursor, a slow reader, typing and presence, ended sessions, and the REST
//! routes' refusals.

use std::time::Duration;

use awc::ws::{self, Frame};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, TestApp, TestDb};

/// A registered local user.
#[derive(Clone)]
pub struct User {
    pub fid: String,
    pub token: String,
    pub session_id: String,
}

pub async fn call(
    app: &TestApp,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let client = awc::Client::default();
    let url = format!("{}{path}", app.address);
    let mut request = client.request(method.parse().expect("method"), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut res = match body {
        Some(body) => request.send_json(&body).await,
        None => request.send().await,
    }
    .expect("request");
    let bytes = res.body().limit(16 << 20).await.expect("body");
    (
        res.status().as_u16(),
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

pub async fn register(app: &TestApp, username: &str) -> User {
    let (status, body) = call(
        app,
        "POST",
        "/api/v1/auth/register",
        None,
        Some(json!({"username": username, "password": "correct horse"})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    User {
        fid: body["fid"].as_str().expect("fid").into(),
        token: body["token"].as_str().expect("token").into(),
        session_id: body["session_id"].as_str().expect("session").into(),
    }
}

/// `user` creates a channel named `name`: its ref.
pub async fn create_channel(app: &TestApp, user: &User, name: &str) -> String {
    let (status, created) = call(
        app,
        "POST",
        "/api/v1/channels",
        Some(&user.token),
        Some(json!({"name": name})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    created["ref"].as_str().expect("ref").to_owned()
}

/// `user` takes `action` (`invite` with a body, `join`, `leave`) in `channel`: 200, its seq.
pub async fn act(
    app: &TestApp,
    user: &User,
    channel: &str,
    action: &str,
    body: Option<Value>,
) -> u64 {
    let path = format!("/api/v1/channels/{channel}/{action}");
    let (status, answer) = call(app, "POST", &path, Some(&user.token), body).await;
    assert_eq!(status, 200, "{action}: {answer}");
    answer["seq"].as_u64().expect("seq")
}

/// `alice` creates a channel, invites each of `members` and each joins: its ref.
pub async fn channel_with(app: &TestApp, alice: &User, members: &[&User]) -> String {
    let channel = create_channel(app, alice, "General").await;
    for member in members {
        act(
            app,
            alice,
            &channel,
            "invite",
            Some(json!({"fid": member.fid})),
        )
        .await;
        act(app, member, &channel, "join", None).await;
    }
    channel
}

pub async fn post(app: &TestApp, user: &User, channel: &str, body: &str) -> (String, u64) {
    let path = format!("/api/v1/channels/{channel}/messages");
    let (status, answer) = call(
        app,
        "POST",
        &path,
        Some(&user.token),
        Some(json!({"body": body})),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    (
        answer["message_id"].as_str().expect("id").into(),
        answer["seq"].as_u64().expect("seq"),
    )
}

pub async fn ticket(app: &TestApp, user: &User) -> String {
    let (status, body) = call(
        app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&user.token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 30);
    body["ticket"].as_str().expect("ticket").into()
}

/// What a test client reads.
#[derive(Debug)]
pub enum Got {
    Frame(Value),
    Close(Option<u16>),
}

pub struct Ws {
    conn: actix_codec::Framed<awc::BoxedSocket, ws::Codec>,
}

impl Ws {
    pub async fn connect(app: &TestApp, query: &str) -> Ws {
        let url = format!("{}/ws{query}", app.address);
        let (_, conn) = awc::Client::builder()
            .max_http_version(awc::http::Version::HTTP_11)
            .finish()
            .ws(url)
            .max_frame_size(1 << 20)
            .connect()
            .await
            .expect("websocket upgrade");
        Ws { conn }
    }

    /// Connects and reads Hello.
    pub async fn hello(app: &TestApp, query: &str) -> Ws {
        let mut ws = Ws::connect(app, query).await;
        let hello = ws.frame().await;
        assert_eq!(
            (hello["n"].as_str(), hello["op"].as_u64()),
            (Some("core"), Some(1)),
            "{hello}"
        );
        assert_eq!(hello["s"], 0);
        ws
    }

    /// Connects without a ticket and resumes `user`'s session after `seq`.
    pub async fn resume(app: &TestApp, user: &User, seq: u64) -> Ws {
        let mut ws = Ws::hello(app, "").await;
        ws.send(json!({"n": "core", "op": 5, "d": {"s": seq, "token": user.token}}))
            .await;
        ws
    }

    /// Connects with a fresh ticket and waits for Ready: the socket is live.
    pub async fn open(app: &TestApp, user: &User) -> (Ws, Value) {
        let ticket = ticket(app, user).await;
        let mut ws = Ws::hello(app, &format!("?ticket={ticket}")).await;
        let ready = ws.until(|f| f["n"] == "chat" && f["op"] == 2).await;
        (ws, ready["d"].clone())
    }

    pub async fn send(&mut self, frame: Value) {
        self.conn
            .send(ws::Message::Text(frame.to_string().into()))
            .await
            .expect("send");
    }

    /// The next frame or close, within 10 s.
    pub async fn next(&mut self) -> Got {
        loop {
            let item = tokio::time::timeout(Duration::from_secs(10), self.conn.next())
                .await
                .expect("a frame within 10 s");
            match item {
                Some(Ok(Frame::Text(text))) => {
                    return Got::Frame(serde_json::from_slice(&text).expect("JSON frame"))
                }
                Some(Ok(Frame::Close(reason))) => {
                    return Got::Close(reason.map(|r| u16::from(r.code)))
                }
                Some(Ok(Frame::Ping(p))) => {
                    let _ = self.conn.send(ws::Message::Pong(p)).await;
                }
                Some(Ok(other)) => panic!("unexpected frame {other:?}"),
                Some(Err(_)) | None => return Got::Close(None),
            }
        }
    }

    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Got::Frame(frame) => frame,
            closed => panic!("expected a frame, got {closed:?}"),
        }
    }

    /// Skips frames until one matches.
    pub async fn until(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        loop {
            let frame = self.frame().await;
            if want(&frame) {
                return frame;
            }
        }
    }

    /// The next chat event's `d` (heartbeat ACKs and ephemeral signals skipped).
    pub async fn event(&mut self) -> Value {
        self.until(|f| f["n"] == "chat" && f["op"] == 0 && f["d"]["seq"].is_u64())
            .await["d"]
            .clone()
    }

    /// The close code, skipping frames before it.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            if let Got::Close(code) = self.next().await {
                return code;
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.conn.send(ws::Message::Close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.conn.next().await {}
        })
        .await;
    }
}

async fn app() -> TestApp {
    spawn_app_with(TestDb::new().await, |_| {}).await
}

async fn head(app: &TestApp) -> u64 {
    app.store.head().await.expect("head").0
}

#[actix_web::test]
async fn bad_reused_or_expired_tickets_close_with_4001_before_any_frame() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.gateway.ticket_lifetime = Duration::from_secs(1);
    })
    .await;
    let alice = register(&app, "alice").await;

    let mut garbage = Ws::connect(&app, "?ticket=syt_garbage").await;
    assert!(matches!(garbage.next().await, Got::Close(Some(4001))));

    let (status, body) = call(
        &app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let once = body["ticket"].as_str().expect("ticket").to_owned();
    // The first use starts a socket (Hello inside `hello`), kept open meanwhile.
    let _first = Ws::hello(&app, &format!("?ticket={once}")).await;
    let mut reused = Ws::connect(&app, &format!("?ticket={once}")).await;
    assert!(matches!(reused.next().await, Got::Close(Some(4001))));

    let (_, body) = call(
        &app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice.token),
        None,
    )
    .await;
    let late = body["ticket"].as_str().expect("ticket").to_owned();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut expired = Ws::connect(&app, &format!("?ticket={late}")).await;
    assert!(matches!(expired.next().await, Got::Close(Some(4001))));

    // A ticket of a session that ended after it was issued is refused too.
    let carol = register(&app, "carol").await;
    let (_, body) = call(
        &app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&carol.token),
        None,
    )
    .await;
    let orphan = body["ticket"].as_str().expect("ticket").to_owned();
    let (status, _) = call(
        &app,
        "DELETE",
        "/.p2/core/v1/session",
        Some(&carol.token),
        Some(json!({"session_id": carol.session_id})),
    )
    .await;
    assert_eq!(status, 204);
    let mut ended = Ws::connect(&app, &format!("?ticket={orphan}")).await;
    assert!(matches!(ended.next().await, Got::Close(Some(4001))));

    // A ticket needs a live session token.
    let (status, body) = call(&app, "POST", "/api/v1/auth/ws-ticket", None, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_MISSING_TOKEN"))
    );
    let (status, body) = call(
        &app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some("sy_nope"),
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_UNKNOWN_TOKEN"))
    );
}

#[actix_web::test]
async fn identify_with_a_token_and_4004_for_a_bad_one() {
    let app = app().await;
    let alice = register(&app, "alice").await;

    let mut ws = Ws::hello(&app, "").await;
    ws.send(json!({"n": "core", "op": 2, "d": {"token": alice.token}}))
        .await;
    let ready = ws.until(|f| f["n"] == "chat" && f["op"] == 2).await;
    assert_eq!(ready["d"]["fid"], alice.fid.as_str());
    assert_eq!(ready["d"]["session_id"], alice.session_id.as_str());
    // Identify twice is refused.
    ws.send(json!({"n": "core", "op": 2, "d": {"token": alice.token}}))
        .await;
    assert_eq!(ws.closed().await, Some(4005));

    let mut bad = Ws::hello(&app, "").await;
    bad.send(json!({"n": "core", "op": 2, "d": {"token": "sy_0000"}}))
        .await;
    assert_eq!(bad.closed().await, Some(4004));

    // Anything but Identify, Resume or a heartbeat before authentication.
    let mut early = Ws::hello(&app, "").await;
    early
        .send(json!({"n": "chat", "op": 1, "d": {"type": "subscribe"}}))
        .await;
    assert_eq!(early.closed().await, Some(4003));

    let mut garbage = Ws::hello(&app, "").await;
    garbage
        .conn
        .send(ws::Message::Text("not json".into()))
        .await
        .expect("send");
    assert_eq!(garbage.closed().await, Some(4002));
}

#[actix_web::test]
async fn heartbeats_are_acknowledged_and_silence_closes_with_4009() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.gateway.heartbeat_interval = Duration::from_millis(400);
        c.gateway.heartbeat_grace = Duration::from_millis(400);
    })
    .await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut ws, _) = Ws::open(&app, &bob).await;
    ws.send(json!({"n": "core", "op": 0, "d": {}})).await;
    let ack = ws.until(|f| f["n"] == "core" && f["op"] == 7).await;
    assert_eq!(ack["d"], json!([]));
    let (_, seq) = post(&app, &alice, &channel, "handed on, maybe lost").await;
    // Silence: the event, a Heartbeat Request (in either order: the post may be slow), then
    // 4009.
    let (mut event, mut request) = (None, None);
    let code = loop {
        match ws.next().await {
            Got::Frame(f) if f["n"] == "chat" && f["op"] == 0 => {
                event = Some(f["d"]["seq"].clone())
            }
            Got::Frame(f) if f["n"] == "core" && f["op"] == 11 => request = f["s"].as_u64(),
            Got::Frame(_) => {}
            Got::Close(code) => break code,
        }
    };
    assert_eq!(event, Some(json!(seq)));
    assert!(request.is_some(), "a Heartbeat Request before the close");
    assert_eq!(code, Some(4009));
    // A socket that died may have lost what it was handed since its heartbeats: the cursor
    // went back, so catch-up gives it again (twice rather than never).
    let (status, events) = call(&app, "GET", "/.p2/core/v1/events", Some(&bob.token), None).await;
    assert_eq!(status, 200, "{events}");
    assert_eq!(
        events
            .as_array()
            .and_then(|e| e.last())
            .map(|e| e["seq"].clone()),
        Some(json!(seq))
    );
}

#[actix_web::test]
async fn members_see_messages_edits_and_deletes_in_order_and_others_see_nothing() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let carol = register(&app, "carol").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut a, ready) = Ws::open(&app, &alice).await;
    assert_eq!(ready["channels"], json!([channel]));
    let (mut b, _) = Ws::open(&app, &bob).await;
    let (mut c, ready) = Ws::open(&app, &carol).await;
    assert_eq!(ready["channels"], json!([]));

    let (m1, seq1) = post(&app, &alice, &channel, "hello bob").await;
    let (m2, _) = post(&app, &bob, &channel, "hi alice").await;
    let path = format!("/api/v1/channels/{channel}/messages/{m1}");
    let (status, body) = call(
        &app,
        "PATCH",
        &path,
        Some(&alice.token),
        Some(json!({"body": "hello, bob"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/api/v1/channels/{channel}/messages/{m2}");
    let (status, body) = call(&app, "DELETE", &path, Some(&bob.token), None).await;
    assert_eq!(status, 200, "{body}");

    for ws in [&mut a, &mut b] {
        let new = ws.event().await;
        assert_eq!(new["type"], "message.new");
        assert_eq!(new["seq"], seq1);
        assert_eq!(new["channel"], channel.as_str());
        assert_eq!(new["sender"], alice.fid.as_str());
        assert_eq!(
            new["content"],
            json!({"message_id": m1, "body": "hello bob"})
        );
        assert!(new["ts"].as_i64().is_some());
        let reply = ws.event().await;
        assert_eq!(
            (reply["type"].as_str(), reply["sender"].as_str()),
            (Some("message.new"), Some(bob.fid.as_str()))
        );
        let edit = ws.event().await;
        assert_eq!(edit["type"], "message.edit");
        assert_eq!(
            edit["content"],
            json!({"message_id": m1, "body": "hello, bob"})
        );
        let delete = ws.event().await;
        assert_eq!(delete["type"], "message.delete");
        assert_eq!(delete["content"], json!({"message_id": m2}));
        assert!(delete["seq"].as_u64() > edit["seq"].as_u64());
    }
    // Carol's next event is her own channel: nothing of alice's came before it.
    create_channel(&app, &carol, "Mine").await;
    let own = c.event().await;
    assert_eq!(
        (own["type"].as_str(), own["sender"].as_str()),
        (Some("channel.new"), Some(carol.fid.as_str()))
    );

    // History, newest first, with the deletion kept as a tombstone.
    let path = format!("/api/v1/channels/{channel}/messages?limit=10");
    let (status, history) = call(&app, "GET", &path, Some(&bob.token), None).await;
    assert_eq!(status, 200, "{history}");
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2);
    assert_eq!(
        (
            messages[0]["message_id"].as_str(),
            messages[0]["deleted"].as_bool()
        ),
        (Some(m2.as_str()), Some(true))
    );
    assert_eq!(messages[0]["body"], Value::Null);
    assert_eq!(messages[1]["body"], "hello, bob");
    let path = format!("/api/v1/channels/{channel}/messages?before={seq1}");
    let (_, older) = call(&app, "GET", &path, Some(&bob.token), None).await;
    assert_eq!(older["messages"], json!([]));
}

#[actix_web::test]
async fn rest_catch_up_returns_exactly_what_the_socket_missed_and_shares_its_cursor() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut b, _) = Ws::open(&app, &bob).await;
    let (_, seen) = post(&app, &alice, &channel, "seen live").await;
    assert_eq!(b.event().await["seq"], seen);
    b.close().await;

    let mut missed = Vec::new();
    for n in 0..3 {
        missed.push(post(&app, &alice, &channel, &format!("missed {n}")).await.1);
    }
    // The cursor is the last event the socket was given.
    let (status, events) = call(&app, "GET", "/.p2/core/v1/events", Some(&bob.token), None).await;
    assert_eq!(status, 200, "{events}");
    let seqs: Vec<u64> = events
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, missed);
    assert_eq!(events[0]["content"]["body"], "missed 0");
    assert_eq!(events[0]["type"], "message.new");
    let (status, _) = call(&app, "GET", "/.p2/core/v1/events", Some(&bob.token), None).await;
    assert_eq!(status, 204);

    // The socket goes on from the shared cursor: nothing replayed, the next one live.
    let (mut b, ready) = Ws::open(&app, &bob).await;
    assert!(ready["seq"].as_u64() >= missed.last().copied());
    let (_, next) = post(&app, &alice, &channel, "after").await;
    let live = b.event().await;
    assert_eq!(live["seq"], next, "no duplicate of the caught-up events");
    b.close().await;

    // Paging with since and limit; a bad limit changes nothing.
    let path = format!("/.p2/core/v1/events?since={seen}&limit=2");
    let (status, page) = call(&app, "GET", &path, Some(&bob.token), None).await;
    assert_eq!(status, 200);
    assert_eq!(page.as_array().map(Vec::len), Some(2));
    assert_eq!(page[0]["seq"], missed[0]);
    for bad in ["limit=0", "limit=1001", "since=x"] {
        let (status, body) = call(
            &app,
            "GET",
            &format!("/.p2/core/v1/events?{bad}"),
            Some(&bob.token),
            None,
        )
        .await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some("SY_INVALID_PARAM")),
            "{bad}"
        );
    }
    let (status, body) = call(&app, "GET", "/.p2/core/v1/events", None, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_MISSING_TOKEN"))
    );
}

#[actix_web::test]
async fn a_new_socket_replays_what_the_session_missed_and_resume_takes_a_seq() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut b, _) = Ws::open(&app, &bob).await;
    let (_, first) = post(&app, &alice, &channel, "one").await;
    assert_eq!(b.event().await["seq"], first);
    b.close().await;
    let (_, second) = post(&app, &alice, &channel, "two").await;
    let (_, third) = post(&app, &alice, &channel, "three").await;

    // Resume with the last seq the client has: exactly the missed ones, then Resumed.
    let mut r = Ws::resume(&app, &bob, first).await;
    assert_eq!(r.event().await["seq"], second);
    assert_eq!(r.event().await["seq"], third);
    let resumed = r.until(|f| f["n"] == "core").await;
    assert_eq!(resumed["op"], 10, "{resumed}");
    assert_eq!(resumed["d"]["replayed"], 2);
    let (_, fourth) = post(&app, &alice, &channel, "four").await;
    assert_eq!(r.event().await["seq"], fourth);
    r.close().await;

    // A ticket URL may resume too; an older seq replays from there.
    let resume_ticket = ticket(&app, &bob).await;
    let mut t = Ws::hello(&app, &format!("?ticket={resume_ticket}&resume={second}")).await;
    assert_eq!(t.event().await["seq"], third);
    assert_eq!(t.event().await["seq"], fourth);
    assert_eq!(t.until(|f| f["n"] == "core").await["op"], 10);
    t.close().await;

    let (_, fifth) = post(&app, &alice, &channel, "five").await;
    // fifth was committed after the last socket closed: a new socket replays it from the
    // session's cursor, then says Ready.
    let ticket = ticket(&app, &bob).await;
    let mut n = Ws::hello(&app, &format!("?ticket={ticket}")).await;
    assert_eq!(n.event().await["seq"], fifth);
    let ready = n.until(|f| f["n"] == "chat").await;
    assert_eq!(ready["op"], 2, "{ready}");
    assert_eq!(ready["d"]["seq"], fifth);
}

#[actix_web::test]
async fn too_much_to_replay_is_4010() {
    // A window of recent events that does not hold the position: the retention applies.
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.gateway.max_replay_events = 3;
        c.gateway.recent_events = 1;
    })
    .await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (_, first) = post(&app, &alice, &channel, "one").await;
    for n in 0..4 {
        post(&app, &alice, &channel, &format!("more {n}")).await;
    }
    let mut r = Ws::resume(&app, &bob, first).await;
    assert_eq!(r.closed().await, Some(4010));
}

#[actix_web::test]
async fn a_reader_that_stops_is_closed_resumable_and_resumes_without_a_gap() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.gateway.outbound_max_frames = 16;
        c.gateway.outbound_max_bytes = 256 * 1024;
    })
    .await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut b, _) = Ws::open(&app, &bob).await;
    // Bob stops reading; alice posts far more than the socket and the queue hold.
    let body = "x".repeat(16 * 1024);
    let mut posted = Vec::new();
    for _ in 0..900 {
        posted.push(post(&app, &alice, &channel, &body).await.1);
    }
    // Now bob reads: some events, then 4000.
    let mut got = Vec::new();
    let code = loop {
        match b.next().await {
            Got::Frame(f) if f["n"] == "chat" && f["op"] == 0 => {
                got.push(f["d"]["seq"].as_u64().expect("seq"))
            }
            Got::Frame(_) => {}
            Got::Close(code) => break code,
        }
    };
    assert_eq!(code, Some(4000), "a resumable close");
    assert!(
        got.len() < posted.len(),
        "closed before everything was sent"
    );
    let last = got.last().copied().unwrap_or(0);
    let mut r = Ws::resume(&app, &bob, last).await;
    loop {
        let f = r.frame().await;
        if f["n"] == "core" && f["op"] == 10 {
            break;
        }
        if f["n"] == "chat" && f["op"] == 0 {
            got.push(f["d"]["seq"].as_u64().expect("seq"));
        }
    }
    assert_eq!(got, posted, "every event once, in order");
    let (_, metrics) = {
        let mut res = awc::Client::default()
            .get(format!("{}/metrics", app.address))
            .send()
            .await
            .expect("metrics");
        (
            res.status(),
            String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8"),
        )
    };
    assert!(
        metrics.contains("gateway_closes_total{code=\"4000\"} 1"),
        "{metrics}"
    );
}

#[actix_web::test]
async fn typing_and_presence_are_ephemeral_and_typing_expires() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.gateway.typing_ttl = Duration::from_millis(300);
    })
    .await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let carol = register(&app, "carol").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut a, _) = Ws::open(&app, &alice).await;
    let (mut b, _) = Ws::open(&app, &bob).await;
    let before = head(&app).await;

    a.send(json!({"n": "chat", "op": 1, "d": {"type": "typing.start", "channel": channel}}))
        .await;
    let start = b.until(|f| f["n"] == "chat" && f["op"] == 0).await["d"].clone();
    assert_eq!(
        (start["type"].as_str(), start["sender"].as_str()),
        (Some("typing.start"), Some(alice.fid.as_str()))
    );
    assert_eq!(start["channel"], channel.as_str());
    assert!(start.get("seq").is_none(), "ephemeral: no seq");
    let stop = b.until(|f| f["n"] == "chat" && f["op"] == 0).await["d"].clone();
    assert_eq!(stop["type"], "typing.stop", "expired without renewal");

    a.send(json!({"n": "chat", "op": 1, "d": {"type": "presence.update", "status": "idle"}}))
        .await;
    let presence = b.until(|f| f["n"] == "chat" && f["op"] == 0).await["d"].clone();
    assert_eq!(presence["type"], "presence.update");
    assert_eq!(presence["content"], json!({"status": "idle"}));
    assert_eq!(head(&app).await, before, "nothing ephemeral is logged");

    // Refusals do not close the socket.
    a.send(json!({"n": "chat", "op": 1, "d": {"type": "presence.update", "status": "asleep"}}))
        .await;
    let refused = a.until(|f| f["n"] == "chat" && f["op"] == 3).await;
    assert_eq!(refused["d"]["errcode"], "SY_INVALID_PARAM");
    let (mut c, _) = Ws::open(&app, &carol).await;
    c.send(json!({"n": "chat", "op": 1, "d": {"type": "typing.start", "channel": channel}}))
        .await;
    let refused = c.until(|f| f["n"] == "chat" && f["op"] == 3).await;
    assert_eq!(refused["d"]["errcode"], "SY_FORBIDDEN");
    c.send(json!({"n": "chat", "op": 1, "d": {"type": "subscribe", "channel": channel}}))
        .await;
    let refused = c.until(|f| f["n"] == "chat" && f["op"] == 3).await;
    assert_eq!(refused["d"]["type"], "subscribe");
}

#[actix_web::test]
async fn an_invite_and_a_join_reach_live_sockets_and_leaving_stops_delivery() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let (mut b, _) = Ws::open(&app, &bob).await;
    let channel = create_channel(&app, &alice, "Later").await;
    act(
        &app,
        &alice,
        &channel,
        "invite",
        Some(json!({"fid": bob.fid})),
    )
    .await;
    let invite = b.event().await;
    assert_eq!(
        (
            invite["type"].as_str(),
            invite["content"]["invitee"].as_str()
        ),
        (Some("channel.invite"), Some(bob.fid.as_str()))
    );
    // Invited only: messages are not visible yet.
    let (_, hidden) = post(&app, &alice, &channel, "before bob joins").await;
    act(&app, &bob, &channel, "join", None).await;
    let join = b.event().await;
    assert_eq!(join["type"], "channel.join");
    assert!(join["seq"].as_u64() > Some(hidden));
    let (_, seen) = post(&app, &alice, &channel, "after").await;
    assert_eq!(b.event().await["seq"], seen);
    act(&app, &bob, &channel, "leave", None).await;
    assert_eq!(b.event().await["type"], "channel.leave");
    post(&app, &alice, &channel, "gone").await;
    // Bob's next event is from a channel of his own.
    create_channel(&app, &bob, "Bob's").await;
    let own = b.event().await;
    assert_eq!(
        (own["type"].as_str(), own["sender"].as_str()),
        (Some("channel.new"), Some(bob.fid.as_str()))
    );
}

#[actix_web::test]
async fn ending_a_session_closes_its_sockets() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let (mut ws, _) = Ws::open(&app, &alice).await;
    let (status, _) = call(
        &app,
        "DELETE",
        "/.p2/core/v1/session",
        Some(&alice.token),
        Some(json!({"session_id": alice.session_id})),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(ws.closed().await, Some(4003));
    let (status, _) = call(
        &app,
        "POST",
        "/api/v1/auth/ws-ticket",
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn channel_routes_refuse_bad_requests_and_write_nothing() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let carol = register(&app, "carol").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let id = channel.split('@').next().expect("id").to_owned();
    let (message, _) = post(&app, &alice, &channel, "alice's").await;
    let before = head(&app).await;

    // (method, path, caller, body, status, errcode)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a User>,
        Option<Value>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/api/v1/channels".into(),
            None,
            Some(json!({"name": "x"})),
            401,
            "SY_MISSING_TOKEN",
        ),
        (
            "POST",
            "/api/v1/channels".into(),
            Some(&alice),
            Some(json!({"name": "  "})),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "POST",
            "/api/v1/channels".into(),
            Some(&alice),
            Some(json!({"name": "x".repeat(101)})),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "POST",
            "/api/v1/channels".into(),
            Some(&alice),
            Some(json!({"title": "x"})),
            400,
            "SY_BAD_JSON",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/invite"),
            Some(&carol),
            Some(json!({"fid": "dave@localhost:8008"})),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/invite"),
            Some(&alice),
            Some(json!({"fid": "nobody@localhost:8008"})),
            404,
            "SY_NOT_FOUND",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/invite"),
            Some(&alice),
            Some(json!({"fid": "not a fid"})),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/invite"),
            Some(&alice),
            Some(json!({"fid": bob.fid})),
            409,
            "SY_ALREADY_MEMBER",
        ),
        (
            "POST",
            "/api/v1/channels/nope/invite".into(),
            Some(&alice),
            Some(json!({"fid": bob.fid})),
            404,
            "SY_NOT_FOUND",
        ),
        (
            "POST",
            "/api/v1/channels/bad!id/join".into(),
            Some(&alice),
            None,
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/join"),
            Some(&carol),
            None,
            403,
            "SY_FORBIDDEN",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/join"),
            Some(&bob),
            None,
            409,
            "SY_ALREADY_MEMBER",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/leave"),
            Some(&carol),
            None,
            403,
            "SY_FORBIDDEN",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/messages"),
            Some(&carol),
            Some(json!({"body": "hi"})),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/messages"),
            Some(&bob),
            Some(json!({"body": ""})),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "POST",
            format!("/api/v1/channels/{id}/messages"),
            Some(&bob),
            Some(json!({"body": "x".repeat(65 * 1024)})),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "PATCH",
            format!("/api/v1/channels/{id}/messages/{message}"),
            Some(&bob),
            Some(json!({"body": "mine now"})),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "PATCH",
            format!("/api/v1/channels/{id}/messages/nosuch"),
            Some(&alice),
            Some(json!({"body": "x"})),
            404,
            "SY_NOT_FOUND",
        ),
        (
            "DELETE",
            format!("/api/v1/channels/{id}/messages/{message}"),
            Some(&bob),
            None,
            403,
            "SY_FORBIDDEN",
        ),
        (
            "DELETE",
            format!("/api/v1/channels/{id}/messages/{message}"),
            Some(&carol),
            None,
            403,
            "SY_FORBIDDEN",
        ),
        (
            "GET",
            format!("/api/v1/channels/{id}/messages"),
            Some(&carol),
            None,
            403,
            "SY_FORBIDDEN",
        ),
        (
            "GET",
            format!("/api/v1/channels/{id}/messages?limit=0"),
            Some(&alice),
            None,
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "GET",
            format!("/api/v1/channels/{id}/messages?limit=101"),
            Some(&alice),
            None,
            400,
            "SY_INVALID_PARAM",
        ),
    ];
    for (method, path, user, body, status, errcode) in cases {
        let token = user.map(|u| u.token.as_str());
        let (got, answer) = call(&app, method, &path, token, body).await;
        assert_eq!(
            (got, answer["errcode"].as_str()),
            (status, Some(errcode)),
            "{method} {path}: {answer}"
        );
        assert!(answer["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert_eq!(head(&app).await, before, "{method} {path} wrote nothing");
    }
}

#[actix_web::test]
async fn a_post_the_log_cannot_commit_is_503_and_keeps_nothing() {
    let app = app().await;
    if !app.db.url.starts_with("sqlite:") {
        return; // the failure is injected with an SQLite trigger
    }
    let alice = register(&app, "alice").await;
    let channel = channel_with(&app, &alice, &[]).await;
    use sea_orm::{ConnectionTrait, Database};
    let raw = Database::connect(&app.db.url).await.expect("raw");
    raw.execute_unprepared(
        "CREATE TRIGGER fail_posts BEFORE INSERT ON events WHEN NEW.type = 'message.new' \
         BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
    )
    .await
    .expect("trigger");
    let before = head(&app).await;
    let path = format!("/api/v1/channels/{channel}/messages");
    let (status, body) = call(
        &app,
        "POST",
        &path,
        Some(&alice.token),
        Some(json!({"body": "lost?"})),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (503, Some("SY_UNAVAILABLE")),
        "{body}"
    );
    assert_eq!(head(&app).await, before, "nothing written");
    let (_, history) = call(&app, "GET", &path, Some(&alice.token), None).await;
    assert_eq!(history["messages"], json!([]));
    raw.execute_unprepared("DROP TRIGGER fail_posts")
        .await
        .expect("drop");
    post(&app, &alice, &channel, "kept").await;
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// Two instances over loopback: a remote invite goes through federation, and a remote
/// member's message arrives through the inbox and reaches local sockets.
#[actix_web::test]
async fn a_remote_members_message_reaches_local_sockets_through_the_inbox() {
    let (port_a, port_b) = (free_port(), free_port());
    let start = |name: &'static str, port: u16, peer: (&'static str, u16)| async move {
        spawn_app_with(TestDb::new().await, move |c| {
            c.server.name = name.into();
            c.server.bind = format!("127.0.0.1:{port}");
            c.federation
                .resolve
                .insert(peer.0.into(), format!("http://127.0.0.1:{}", peer.1));
            c.federation.delivery_backoff_base = Duration::from_millis(100);
            c.federation.delivery_max_backoff = Duration::from_millis(500);
        })
        .await
    };
    let a = start("a.test", port_a, ("b.test", port_b)).await;
    let b = start("b.test", port_b, ("a.test", port_a)).await;
    let alice = register(&a, "alice").await;
    let bob = register(&b, "bob").await;
    let (mut bob_ws, _) = Ws::open(&b, &bob).await;
    let channel = create_channel(&a, &alice, "Across").await;
    act(
        &a,
        &alice,
        &channel,
        "invite",
        Some(json!({"fid": bob.fid})),
    )
    .await;

    // The invite travels to b.test and reaches bob's socket there.
    let invite = bob_ws.event().await;
    assert_eq!(
        (invite["type"].as_str(), invite["channel"].as_str()),
        (Some("channel.invite"), Some(channel.as_str()))
    );
    let (mut alice_ws, _) = Ws::open(&a, &alice).await;
    act(&b, &bob, &channel, "join", None).await;
    let join = alice_ws.event().await;
    assert_eq!(
        (join["type"].as_str(), join["sender"].as_str()),
        (Some("channel.join"), Some(bob.fid.as_str()))
    );

    // Bob posts on his server; it reaches alice's socket through a.test's inbox.
    let (message_id, _) = post(&b, &bob, &channel, "hello from b").await;
    let arrived = alice_ws.event().await;
    assert_eq!(arrived["type"], "message.new");
    assert_eq!(arrived["sender"], bob.fid.as_str());
    assert_eq!(
        arrived["content"],
        json!({"message_id": message_id, "body": "hello from b"})
    );
    // And alice's answer reaches bob's socket on b.test.
    let (reply, _) = post(&a, &alice, &channel, "welcome").await;
    let back = bob_ws
        .until(|f| {
            f["n"] == "chat"
                && f["op"] == 0
                && f["d"]["type"] == "message.new"
                && f["d"]["sender"] == alice.fid.as_str()
        })
        .await;
    assert_eq!(back["d"]["content"]["message_id"], reply.as_str());
}

#[actix_web::test]
async fn a_session_gets_a_bounded_number_of_tickets_per_lifetime() {
    let app = spawn_app_with(TestDb::new().await, |c| c.gateway.max_sockets_per_user = 2).await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    for _ in 0..2 {
        ticket(&app, &alice).await;
    }
    let mut res = awc::Client::default()
        .post(format!("{}/api/v1/auth/ws-ticket", app.address))
        .bearer_auth(&alice.token)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 429);
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("30")
    );
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["errcode"], "SY_LIMIT_EXCEEDED");
    // Another session is not affected.
    ticket(&app, &bob).await;
}

/// DESIGN §5 (storms): a session that has never connected starts at the head. Its Ready
/// carries its channels, it is not replayed what happened since its login, and REST catch-up
/// for it then has nothing.
#[actix_web::test]
async fn a_first_connect_starts_at_the_head_with_its_channels() {
    let app = spawn_app_with(TestDb::new().await, |_| {}).await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    for i in 0..30 {
        post(&app, &alice, &channel, &format!("before {i}")).await;
    }
    let (head, _) = app.store.head().await.expect("head");
    let ticket = ticket(&app, &bob).await;
    let mut ws = Ws::hello(&app, &format!("?ticket={ticket}")).await;
    let ready = loop {
        let frame = ws.frame().await;
        assert!(
            !(frame["n"] == "chat" && frame["op"] == 0),
            "a first connect replayed {frame}"
        );
        if frame["n"] == "chat" && frame["op"] == 2 {
            break frame;
        }
    };
    assert_eq!(ready["d"]["seq"], head, "{ready}");
    assert_eq!(ready["d"]["channels"], json!([channel]), "{ready}");
    let (_, seq) = post(&app, &alice, &channel, "after").await;
    let event = ws.event().await;
    assert_eq!(event["seq"], seq, "only new events: {event}");
    let (status, _) = call(&app, "GET", "/.p2/core/v1/events", Some(&bob.token), None).await;
    assert_eq!(status, 204, "REST catch-up has nothing for it");

    // A session that caught up over REST first (204, nothing moved) is not a first connect
    // afterwards: what was posted in between reaches its first socket.
    let carol = register(&app, "carol").await;
    act(
        &app,
        &alice,
        &channel,
        "invite",
        Some(json!({"fid": carol.fid})),
    )
    .await;
    act(&app, &carol, &channel, "join", None).await;
    let (status, _) = call(
        &app,
        "GET",
        "/.p2/core/v1/events?limit=1000",
        Some(&carol.token),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, "GET", "/.p2/core/v1/events", Some(&carol.token), None).await;
    assert_eq!(status, 204);
    let (_, between) = post(&app, &alice, &channel, "between").await;
    let carol_ticket = super::gateway::ticket(&app, &carol).await;
    let mut c = Ws::hello(&app, &format!("?ticket={carol_ticket}")).await;
    let mut replayed = Vec::new();
    loop {
        let frame = c.frame().await;
        if frame["n"] == "chat" && frame["op"] == 0 {
            replayed.push(frame["d"]["seq"].as_u64().expect("seq"));
        } else if frame["n"] == "chat" && frame["op"] == 2 {
            break;
        }
    }
    assert_eq!(
        replayed,
        vec![between],
        "the first socket after REST replays what it missed"
    );
}

/// Deep resume: 10,000 missed events arrive over one socket, complete, in order, once, paced
/// by its outbound bound, then Resumed; no 4010 within the retention. Inside the window of
/// recent events they come from memory; with a window too small, from the log in pages, just
/// as exact.
#[actix_web::test]
async fn a_resume_of_ten_thousand_events_is_complete_and_in_order() {
    for (window, source) in [(100_000, "memory"), (100, "log")] {
        let app = spawn_app_with(TestDb::new().await, |c| c.gateway.recent_events = window).await;
        let alice = register(&app, "alice").await;
        let bob = register(&app, "bob").await;
        let channel = channel_with(&app, &alice, &[&bob]).await;
        let (_, from) = post(&app, &alice, &channel, "before").await;
        let mut expected = Vec::new();
        for chunk in 0..20 {
            let events = (0..500)
                .map(|i| switchyard::core::event::NewEvent {
                    event_id: format!("deep-{chunk}-{i}"),
                    origin: "localhost:8008".into(),
                    event_type: "message.new".into(),
                    sender: Some(alice.fid.clone()),
                    channel: Some(channel.clone()),
                    origin_ts: 1,
                    content: json!({"message_id": format!("deep-{chunk}-{i}"), "body": "x"}),
                })
                .collect();
            let outcomes = app.log.append(events).await.expect("append");
            expected.extend(outcomes.iter().map(|o| o.seq()));
        }
        // The window follows publications: let it see the last batch.
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        let mut r = Ws::resume(&app, &bob, from).await;
        let mut got = Vec::with_capacity(expected.len());
        let resumed = loop {
            let frame = r.frame().await;
            if frame["n"] == "chat" && frame["op"] == 0 {
                got.push(frame["d"]["seq"].as_u64().expect("seq"));
            } else if frame["n"] == "core" && frame["op"] == 10 {
                break frame;
            }
        };
        assert_eq!(
            got.len(),
            expected.len(),
            "{source}: every missed event, once"
        );
        assert_eq!(got, expected, "{source}: in order");
        assert_eq!(resumed["d"]["replayed"], expected.len(), "{resumed}");
        let (_, metrics) = call_text(&app, "/metrics").await;
        assert!(
            metrics.contains(&format!(
                "switchyard_gateway_replays_total{{source=\"{source}\"}} 1"
            )),
            "{source}: {}",
            metrics
                .lines()
                .filter(|l| l.contains("replays"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A GET answering text.
async fn call_text(app: &TestApp, path: &str) -> (u16, String) {
    let mut res = awc::Client::default()
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .expect("request");
    let body = res.body().limit(16 << 20).await.expect("body");
    (
        res.status().as_u16(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

/// Admission: beyond `gateway.handshake_rate_per_second` a handshake is 503 with
/// `Retry-After` before anything is consumed (the refused ticket still works afterwards); no
/// 500 anywhere.
#[actix_web::test]
async fn excess_handshakes_are_503_with_retry_after_and_change_nothing() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.gateway.handshake_rate_per_second = 1;
        c.gateway.handshake_burst = 2;
    })
    .await;
    let bob = register(&app, "bob").await;
    let (first, _) = Ws::open(&app, &bob).await;
    let (second, _) = Ws::open(&app, &bob).await;
    let refused_ticket = ticket(&app, &bob).await;
    let url = format!(
        "{}/ws?ticket={refused_ticket}",
        app.address.replace("http://", "ws://")
    );
    match awc::Client::default().ws(url.as_str()).connect().await {
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => {
            assert_eq!(status.as_u16(), 503)
        }
        Err(other) => panic!("expected 503, got {other}"),
        Ok(_) => panic!("a handshake beyond the admission rate was accepted"),
    }
    let mut res = awc::Client::default()
        .get(format!("{}/ws?ticket={refused_ticket}", app.address))
        .insert_header(("Connection", "Upgrade"))
        .insert_header(("Upgrade", "websocket"))
        .insert_header(("Sec-WebSocket-Version", "13"))
        .insert_header(("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status().as_u16(), 503);
    assert!(res.headers().get("retry-after").is_some());
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["errcode"], "SY_OVERLOADED");
    // After the delay the same ticket is still good: the refusal consumed nothing.
    actix_web::rt::time::sleep(Duration::from_millis(2100)).await;
    let mut ws = Ws::hello(&app, &format!("?ticket={refused_ticket}")).await;
    let ready = ws.until(|f| f["n"] == "chat" && f["op"] == 2).await;
    assert_eq!(ready["d"]["fid"], bob.fid.as_str());
    drop((first, second));
}

/// A graceful stop (what `serve` does on SIGTERM) closes every socket with 4000 within a
/// second; the next instance on the same database takes their Resume with no gap and no
/// duplicate.
#[actix_web::test]
async fn a_graceful_stop_closes_sockets_with_4000_and_they_resume_on_the_next_instance() {
    let db = TestDb::new().await;
    let (url, key_path) = (db.url.clone(), db.dir.path().join("signing.key"));
    let app = spawn_app_with(db, |_| {}).await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let (mut b, _) = Ws::open(&app, &bob).await;
    let (mut a, _) = Ws::open(&app, &alice).await;
    let mut last = 0;
    for i in 0..3 {
        let (_, seq) = post(&app, &alice, &channel, &format!("before {i}")).await;
        assert_eq!(b.event().await["seq"], seq);
        last = seq;
    }
    let started = std::time::Instant::now();
    let stopping = actix_web::rt::spawn(app.shutdown.clone().stop());
    assert_eq!(b.closed().await, Some(4000));
    assert_eq!(a.closed().await, Some(4000));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    stopping.await.expect("stopped");

    let next = spawn_app_with(
        TestDb {
            url,
            dir: tempfile::tempdir().expect("dir"),
        },
        |c| c.keys.path = key_path,
    )
    .await;
    let mut posted = Vec::new();
    for i in 0..2 {
        posted.push(post(&next, &alice, &channel, &format!("after {i}")).await.1);
    }
    let mut r = Ws::resume(&next, &bob, last).await;
    let mut got = Vec::new();
    loop {
        let frame = r.frame().await;
        if frame["n"] == "chat" && frame["op"] == 0 {
            got.push(frame["d"]["seq"].as_u64().expect("seq"));
        } else if frame["n"] == "core" && frame["op"] == 10 {
            break;
        }
    }
    assert_eq!(got, posted, "no gap, no duplicate");
}

/// Stores of one session's cursor that meet in one flush (two first sockets and two REST
/// catch-ups at once) are written as one row: PostgreSQL refuses a statement that updates a
/// row twice, which would fail every store of the batch. All four succeed, and the session
/// is no longer new afterwards.
#[actix_web::test]
async fn simultaneous_first_connects_and_catch_ups_of_one_session_all_succeed() {
    let app = app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    post(&app, &alice, &channel, "before").await;
    let rest = || call(&app, "GET", "/.p2/core/v1/events", Some(&bob.token), None);
    let ((first, _), (second, _), (a, _), (b, _)) =
        futures_util::join!(Ws::open(&app, &bob), Ws::open(&app, &bob), rest(), rest());
    assert!(a / 100 == 2 && b / 100 == 2, "REST catch-ups: {a}, {b}");
    drop((first, second));
    // Stored: a later post is owed to the session, over REST.
    let (_, seq) = post(&app, &alice, &channel, "after").await;
    let (status, events) = rest().await;
    assert_eq!(status, 200);
    assert_eq!(
        events[events.as_array().expect("array").len() - 1]["seq"],
        seq
    );
}
