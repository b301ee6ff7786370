//! Signed messages (DESIGN §4.4): checked on the client API against the session's
//! certificate, required when the operator says so, carried unchanged through the log, the
//! gateway, REST catch-up and federation, and checked again by every server a relay reaches.

use std::time::Duration;

use base64::Engine;
use ed25519_dalek::{Verifier, VerifyingKey};
use serde_json::{json, Value};
use switchyard::federation::signing::{RequestSignature, ServerKey};

use super::foreign::{certified, instance, now_ms, sign_message};
use super::head;
use crate::gateway::{act, call, channel_with, create_channel, register};
use crate::helpers::{spawn_app_with, TestApp, TestDb};
use crate::p2::actor_key;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

async fn post(app: &TestApp, token: &str, channel: &str, body: Value) -> (u16, Value) {
    call(
        app,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(token),
        Some(body),
    )
    .await
}

/// Checks a `signed` object as a client would: ruma's canonical JSON, the author's key.
fn verifies(
    content: &Value,
    action: &str,
    channel: &str,
    sender: &str,
    key: &VerifyingKey,
) -> bool {
    let signed = &content["signed"];
    let mut object = json!({"action": action, "body": content["body"], "channel": channel,
        "sender": sender, "ts": signed["ts"]});
    if action == "edit" {
        object["message_id"] = content["message_id"].clone();
    }
    let bytes = ruma_common::canonical_json::to_canonical_value(&object)
        .expect("canonical")
        .to_string();
    let signature: [u8; 64] = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(signed["signature"].as_str().expect("signature"))
        .expect("base64")
        .try_into()
        .expect("64 bytes");
    key.verify(
        bytes.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&signature),
    )
    .is_ok()
}

#[actix_web::test]
async fn the_client_api_checks_signatures_and_can_require_them() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.identity.require_signed_messages = true;
    })
    .await;
    let (alice, key, serial) = certified(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let channel = channel_with(&app, &alice, &[&bob]).await;
    let sign = |body: &str, ts: i64| {
        sign_message(&key, &serial, "new", body, &channel, None, &alice.fid, ts)
    };

    let ok = sign("hello", now_ms());
    let (status, posted) = post(
        &app,
        &alice.token,
        &channel,
        json!({"body": "hello", "signed": ok}),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
    let message_id = posted["message_id"].as_str().expect("id").to_owned();
    // Carried unchanged to REST catch-up (the gateway tests read the same object).
    let (_, events) = call(
        &app,
        "GET",
        "/.p2/core/v1/events?since=0&limit=1000",
        Some(&bob.token),
        None,
    )
    .await;
    let event = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["content"]["message_id"] == message_id.as_str())
        .expect("the message")
        .clone();
    assert_eq!(event["content"]["signed"], ok);
    assert!(verifies(
        &event["content"],
        "new",
        &channel,
        &alice.fid,
        &key.verifying_key()
    ));

    let other_key = actor_key();
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "unsigned",
            json!({"body": "x"}),
            400,
            "SY_SIGNATURE_REQUIRED",
        ),
        (
            "another key",
            json!({"body": "x", "signed": sign_message(&other_key, &serial, "new", "x", &channel, None, &alice.fid, now_ms())}),
            400,
            "SY_BAD_SIGNATURE",
        ),
        (
            "another body",
            json!({"body": "y", "signed": sign("x", now_ms())}),
            400,
            "SY_BAD_SIGNATURE",
        ),
        (
            "another serial",
            json!({"body": "x", "signed": sign_message(&key, "42", "new", "x", &channel, None, &alice.fid, now_ms())}),
            400,
            "SY_BAD_SIGNATURE",
        ),
        (
            "stale",
            json!({"body": "x", "signed": sign("x", now_ms() - 600_000)}),
            400,
            "SY_BAD_SIGNATURE",
        ),
        (
            "signed as an edit",
            json!({"body": "x", "signed": sign_message(&key, &serial, "edit", "x", &channel, Some("m"), &alice.fid, now_ms())}),
            400,
            "SY_BAD_SIGNATURE",
        ),
        (
            "a malformed signed",
            json!({"body": "x", "signed": {"serial": serial, "ts": 1}}),
            400,
            "SY_BAD_JSON",
        ),
    ];
    for (case, body, want_status, want_errcode) in cases {
        let before = head(&app).await;
        let (status, answer) = post(&app, &alice.token, &channel, body).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (want_status, Some(want_errcode)),
            "{case}: {answer}"
        );
        assert_eq!(head(&app).await, before, "{case}: nothing written");
    }
    // A session without a certificate cannot sign.
    let before = head(&app).await;
    let (status, answer) = post(
        &app,
        &bob.token,
        &channel,
        json!({"body": "x", "signed": sign_message(&key, &serial, "new", "x", &channel, None, &bob.fid, now_ms())}),
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("SY_BAD_SIGNATURE")),
        "{answer}"
    );
    assert_eq!(head(&app).await, before);

    // Edits: signed over the message id too.
    let path = format!("/api/v1/channels/{channel}/messages/{message_id}");
    let (status, answer) = call(
        &app,
        "PATCH",
        &path,
        Some(&alice.token),
        Some(json!({"body": "edited"})),
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("SY_SIGNATURE_REQUIRED"))
    );
    let wrong = sign_message(
        &key,
        &serial,
        "new",
        "edited",
        &channel,
        None,
        &alice.fid,
        now_ms(),
    );
    let (status, answer) = call(
        &app,
        "PATCH",
        &path,
        Some(&alice.token),
        Some(json!({"body": "edited", "signed": wrong})),
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("SY_BAD_SIGNATURE"))
    );
    let edit = sign_message(
        &key,
        &serial,
        "edit",
        "edited",
        &channel,
        Some(&message_id),
        &alice.fid,
        now_ms(),
    );
    let (status, answer) = call(
        &app,
        "PATCH",
        &path,
        Some(&alice.token),
        Some(json!({"body": "edited", "signed": edit})),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let entry = app
        .store
        .read_after(answer["seq"].as_u64().expect("seq") - 1, 1)
        .await
        .expect("log")
        .remove(0);
    let content: Value = serde_json::from_str(entry.content.get()).expect("json");
    assert_eq!(content["signed"], edit);
    assert!(verifies(
        &content,
        "edit",
        &channel,
        &alice.fid,
        &key.verifying_key()
    ));
}

/// A request to `to`'s inbox from `from`, signed with `from`'s key file.
async fn inbox(
    from: &TestApp,
    from_name: &str,
    to: &TestApp,
    to_name: &str,
    events: Value,
) -> (u16, Value) {
    let key = ServerKey::load(&from.db.dir.path().join("signing.key")).expect("key");
    let body = serde_json::to_vec(&json!({"events": events})).expect("json");
    let timestamp = (now_ms() / 1000).to_string();
    let key_id = key.key_id();
    let signature = key.sign_request(&RequestSignature {
        method: "POST",
        path: "/federation/inbox",
        origin: from_name,
        destination: to_name,
        timestamp: &timestamp,
        key_id: &key_id,
        body: &body,
    });
    let mut res = awc::Client::default()
        .post(format!("{}/federation/inbox", to.address))
        .insert_header(("Content-Type", "application/json"))
        .insert_header(("X-Switchyard-Origin", from_name))
        .insert_header(("X-Switchyard-Timestamp", timestamp.as_str()))
        .insert_header(("X-Switchyard-Key", key_id.as_str()))
        .insert_header(("X-Switchyard-Signature", signature.as_str()))
        .send_body(body)
        .await
        .expect("request");
    let answer = res.body().await.expect("body");
    (
        res.status().as_u16(),
        serde_json::from_slice(&answer).unwrap_or(Value::Null),
    )
}

/// Waits until `app`'s log holds a `message.new` whose body is `body`: its content.
async fn arrived(app: &TestApp, body: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let entries = app.store.read_after(0, 10_000).await.expect("log");
        if let Some(content) = entries
            .iter()
            .filter(|e| e.event_type == "message.new")
            .map(|e| serde_json::from_str::<Value>(e.content.get()).expect("json"))
            .find(|c| c["body"] == body)
        {
            return content;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{body:?} never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[actix_web::test]
async fn a_signed_message_is_checked_by_every_server_it_is_relayed_to() {
    let (port_a, port_b, port_c) = (free_port(), free_port(), free_port());
    let a = instance(
        "a.test",
        port_a,
        &[("b.test", port_b), ("c.test", port_c)],
        |_| {},
    )
    .await;
    let b = instance(
        "b.test",
        port_b,
        &[("a.test", port_a), ("c.test", port_c)],
        |_| {},
    )
    .await;
    let c = instance(
        "c.test",
        port_c,
        &[("a.test", port_a), ("b.test", port_b)],
        |_| {},
    )
    .await;
    // A channel homed on A with bob (of B) and carol (of C).
    let alice = register(&a, "alice").await;
    let (bob, bob_key, bob_serial) = certified(&b, "bob").await;
    let carol = register(&c, "carol").await;
    let channel = create_channel(&a, &alice, "Relay").await;
    for (app, user) in [(&b, &bob), (&c, &carol)] {
        act(
            &a,
            &alice,
            &channel,
            "invite",
            Some(json!({"fid": user.fid})),
        )
        .await;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, _) = call(
                app,
                "POST",
                &format!("/api/v1/channels/{channel}/join"),
                Some(&user.token),
                None,
            )
            .await;
            if status == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the invite never reached {}",
                user.fid
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Bob posts, signed, on B: B relays to A (the home), which relays to C. Both check the
    // signature with bob's certificate from B, and keep it unchanged.
    let signed = sign_message(
        &bob_key,
        &bob_serial,
        "new",
        "signed across",
        &channel,
        None,
        &bob.fid,
        now_ms(),
    );
    let (status, answer) = post(
        &b,
        &bob.token,
        &channel,
        json!({"body": "signed across", "signed": signed}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    for app in [&a, &c] {
        let content = arrived(app, "signed across").await;
        assert_eq!(content["signed"], signed);
        assert!(verifies(
            &content,
            "new",
            &channel,
            &bob.fid,
            &bob_key.verifying_key()
        ));
        let seen = app.store.read_after(0, 10_000).await.expect("log");
        assert!(
            seen.iter()
                .any(|e| e.event_type == "actor.foreign_idcert_seen"
                    && e.content.get().contains(&bob_serial)),
            "the server recorded the certificate it checked"
        );
    }

    // B relays a message whose signature is forged: A rejects that event alone.
    let forged = sign_message(
        &actor_key(),
        &bob_serial,
        "new",
        "forged",
        &channel,
        None,
        &bob.fid,
        now_ms(),
    );
    let unsigned_ok = json!({"event_id": "seq:900001", "type": "message.relay", "sender": bob.fid,
        "channel": channel, "ts": now_ms(), "content": {"action": "new", "message_id": "ok1", "body": "plain"}});
    let forged_event = json!({"event_id": "seq:900002", "type": "message.relay", "sender": bob.fid,
        "channel": channel, "ts": now_ms(), "content": {"action": "new", "message_id": "f1", "body": "forged", "signed": forged}});
    let before = head(&a).await;
    let (status, answer) = inbox(
        &b,
        "b.test",
        &a,
        "a.test",
        json!([unsigned_ok, forged_event]),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"]["seq:900001"]["status"], "accepted");
    assert_eq!(answer["results"]["seq:900002"]["status"], "rejected");
    assert_eq!(
        answer["results"]["seq:900002"]["errcode"],
        "SY_BAD_SIGNATURE"
    );
    assert_eq!(head(&a).await, before + 1, "only the unsigned message");
}
