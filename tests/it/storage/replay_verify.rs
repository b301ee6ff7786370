use sea_orm::{ConnectionTrait, Database};
use serde_json::json;

use crate::helpers::{event, message, spawn_log, TestDb};

async fn seed(app: &crate::helpers::TestLog) {
    let o = "a.example";
    app.log
        .append(vec![
            event(
                o,
                "c1",
                "channel.new",
                "alice@a.example",
                json!({"name": "General"}),
            ),
            event(
                o,
                "i1",
                "channel.invite",
                "alice@a.example",
                json!({"invitee": "bob@b.example"}),
            ),
            event(o, "j1", "channel.join", "bob@b.example", json!({})),
        ])
        .await
        .expect("append");
    for i in 0..20 {
        app.log
            .append(vec![message(o, &format!("m{i}"))])
            .await
            .expect("append");
    }
    app.log
        .append(vec![
            event(
                o,
                "e1",
                "message.edit",
                "alice@a.example",
                json!({"message_id": "m3", "body": "edited"}),
            ),
            event(
                o,
                "d1",
                "message.delete",
                "alice@a.example",
                json!({"message_id": "m4"}),
            ),
        ])
        .await
        .expect("append");
    let mut policy = event(
        o,
        "p1",
        "origin.policy",
        "alice@a.example",
        json!({"origin": "b.example", "rate_per_minute": 10, "burst": 5, "blocked": true}),
    );
    policy.channel = None;
    policy.sender = None;
    app.log.append(vec![policy]).await.expect("append");
    let key = "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI";
    let mut rotation = event(
        o,
        "key-rotation:ed25519:a_2",
        "server.key_rotated",
        "alice@a.example",
        json!({"old_key_id": "ed25519:a_1", "old_key": key, "expired_ts": 7, "new_key_id": "ed25519:a_2", "new_key": key}),
    );
    rotation.channel = None;
    rotation.sender = None;
    app.log.append(vec![rotation]).await.expect("append");
    let mut fetched = event(
        o,
        "keys-fetched:0123abcd",
        "server.keys_fetched",
        "alice@a.example",
        json!({"server_name": "b.example", "valid_until_ts": 9, "fetched_ts": 1,
            "response": {"server_name": "b.example", "verify_keys": {"ed25519:x": {"key": key}}, "valid_until_ts": 9}}),
    );
    fetched.channel = None;
    fetched.sender = None;
    app.log.append(vec![fetched]).await.expect("append");
    let mut cert = event(
        o,
        "idcert:01ab",
        "server.idcert_issued",
        "alice@a.example",
        json!({"key_id": "ed25519:a_2", "serial": "01ab", "not_before": 1000, "not_after": 9000,
            "pem": "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n"}),
    );
    cert.channel = None;
    cert.sender = None;
    app.log.append(vec![cert]).await.expect("append");
    let mut account = event(
        o,
        "account:alice",
        "account.registered",
        "alice@a.example",
        json!({"username": "alice", "password_hash": "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaA"}),
    );
    account.channel = None;
    let mut session = event(
        o,
        "session:s1",
        "session.created",
        "alice@a.example",
        json!({"session_id": "s1", "token_hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}),
    );
    session.channel = None;
    let mut second = session.clone();
    second.event_id = "session:s2".into();
    second.content = json!({"session_id": "s2", "token_hash": "ca7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"});
    let mut ended = event(
        o,
        "session-end:s2",
        "session.deleted",
        "alice@a.example",
        json!({"session_id": "s2"}),
    );
    ended.channel = None;
    app.log
        .append(vec![account, session, second, ended])
        .await
        .expect("append");

    // Identity: an actor certificate issued then invalidated, another server's certificate
    // seen by a foreign session that changes certificates, and services.
    let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    let fingerprint = format!("sha256:{}", "ab".repeat(32));
    let identity = |id: &str, kind: &str, sender: &str, content: serde_json::Value| {
        let mut e = event(o, id, kind, sender, content);
        e.channel = None;
        e
    };
    app.log
        .append(vec![
            identity("actor-cert:77", "actor.idcert_issued", "alice@a.example", json!({
                "serial": "77", "fid": "alice@a.example", "session_id": "s1",
                "fingerprint": fingerprint, "not_before": 1, "not_after": 9, "pem": pem})),
            identity("actor-cert:78", "actor.idcert_issued", "alice@a.example", json!({
                "serial": "78", "fid": "alice@a.example", "session_id": "s1",
                "fingerprint": fingerprint, "not_before": 2, "not_after": 9, "pem": pem})),
            identity("actor-cert-invalidated:77", "actor.idcert_invalidated", "alice@a.example",
                json!({"serial": "77", "invalidated_at": 2, "reason": "renewed"})),
            identity("foreign-cert:1", "actor.foreign_idcert_seen", "bob@b.example", json!({
                "serial": "123456789012345678901234567890", "fid": "bob@b.example",
                "session_id": "home-session", "fingerprint": fingerprint, "not_before": 1,
                "not_after": 9, "pem": pem})),
            identity("session:f1", "session.created", "bob@b.example", json!({
                "session_id": "f1", "token_hash": "da7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
                "foreign": true, "serial": "123456789012345678901234567890",
                "home_session_id": "home-session"})),
            identity("session-cert:f1:5", "session.idcert_updated", "bob@b.example",
                json!({"session_id": "f1", "serial": "5"})),
            identity("service:1", "service.added", "alice@a.example",
                json!({"service": "chat", "url": "https://one.example", "primary": true})),
            identity("service:2", "service.added", "alice@a.example",
                json!({"service": "chat", "url": "https://two.example", "primary": false})),
            identity("service:3", "service.added", "alice@a.example",
                json!({"service": "chat", "url": "https://three.example", "primary": false})),
            identity("service:4", "service.primary_set", "alice@a.example",
                json!({"service": "chat", "url": "https://two.example"})),
            identity("service:5", "service.removed", "alice@a.example",
                json!({"service": "chat", "url": "https://two.example", "new_primary": "https://three.example"})),
        ])
        .await
        .expect("append");
}

#[actix_web::test]
async fn replay_reproduces_identical_projections() {
    let app = spawn_log().await;
    seed(&app).await;
    let target = TestDb::new().await;
    let report = app
        .store
        .replay_into(&target.store().await)
        .await
        .expect("replay");
    assert_eq!(report.events, 44);
    assert!(report.identical(), "{report:?}");
    for table in &report.tables {
        assert!(
            table.live_rows > 0,
            "{} is empty: the workload should touch every projection",
            table.table
        );
    }
    // The copied log verifies on its own.
    let copy = target.store().await;
    assert_eq!(copy.verify_chain().await.expect("verify").verified, 44);
    // Replaying into a non-empty database is refused.
    assert!(app.store.replay_into(&copy).await.is_err());
}

#[actix_web::test]
async fn replay_reports_a_projection_edited_by_hand() {
    let app = spawn_log().await;
    seed(&app).await;
    let raw = Database::connect(&app.db.url)
        .await
        .expect("raw connection");
    raw.execute_unprepared("UPDATE messages SET body = 'forged' WHERE message_id = 'm7'")
        .await
        .expect("tamper");
    let report = app
        .store
        .replay_into(&TestDb::new().await.store().await)
        .await
        .expect("replay");
    assert!(!report.identical());
    let messages = report
        .tables
        .iter()
        .find(|t| t.table == "messages")
        .expect("messages");
    let diff = messages.first_difference.as_deref().expect("a difference");
    assert!(diff.contains("forged") && diff.contains("m7"), "{diff}");
}

#[actix_web::test]
async fn verify_finds_the_first_tampered_row() {
    let app = spawn_log().await;
    seed(&app).await;
    assert_eq!(
        app.store.verify_chain().await.expect("verify").first_bad,
        None
    );
    let raw = Database::connect(&app.db.url)
        .await
        .expect("raw connection");

    raw.execute_unprepared(
        r#"UPDATE events SET content = '{"body":"forged","message_id":"m5"}' WHERE seq = 9"#,
    )
    .await
    .expect("tamper");
    let report = app.store.verify_chain().await.expect("verify");
    let bad = report.first_bad.expect("tampering found");
    assert_eq!((bad.seq, report.verified), (9, 8));
    assert!(bad.problem.contains("entry_hash"), "{}", bad.problem);

    // A removed row is a gap, found before the later tampering.
    raw.execute_unprepared("DELETE FROM events WHERE seq = 4")
        .await
        .expect("delete");
    let bad = app
        .store
        .verify_chain()
        .await
        .expect("verify")
        .first_bad
        .expect("gap found");
    assert_eq!(bad.seq, 4);
    assert!(bad.problem.contains("missing"), "{}", bad.problem);
}
