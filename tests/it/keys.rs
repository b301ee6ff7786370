//! The Matrix-format key server and the well-known document, checked with an independent
//! implementation of Matrix signed JSON (ruma-signatures).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ruma_common::serde::Base64;
use ruma_common::CanonicalJsonObject;
use serde_json::Value;
use switchyard::core::canonical_json::to_canonical_string;

use crate::helpers::{spawn_app, spawn_app_with, TestDb, STARTUP_EVENTS};

async fn get(url: String) -> (u16, String, Vec<u8>) {
    let mut res = awc::Client::default()
        .get(url)
        .send()
        .await
        .expect("request");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = res.body().await.expect("body").to_vec();
    (res.status().as_u16(), content_type, body)
}

fn ruma_verify(body: &[u8], server: &str, key_id: &str, public_key: &str) -> Result<(), String> {
    let object: CanonicalJsonObject = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let key = Base64::parse(public_key.as_bytes()).map_err(|e| e.to_string())?;
    let map = BTreeMap::from([(
        server.to_owned(),
        BTreeMap::from([(key_id.to_owned(), key)]),
    )]);
    ruma_signatures::verify_json(&map, &object).map_err(|e| e.to_string())
}

#[actix_web::test]
async fn key_server_response_is_exact_and_verifies_independently() {
    let app = spawn_app().await;
    let (status, content_type, body) = get(format!("{}/_matrix/key/v2/server", app.address)).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");

    // The body is canonical JSON, byte for byte.
    let value: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(
        to_canonical_string(&value).expect("canonical").as_bytes(),
        &body[..]
    );

    let server = value["server_name"].as_str().expect("server_name");
    assert_eq!(server, "localhost:8008");
    assert_eq!(
        value["old_verify_keys"],
        serde_json::json!({}),
        "always present"
    );
    let keys = value["verify_keys"].as_object().expect("verify_keys");
    assert_eq!(keys.len(), 1);
    let (key_id, key) = keys.iter().next().expect("one key");
    assert!(key_id.starts_with("ed25519:"));
    let public_key = key["key"].as_str().expect("key");
    assert!(!public_key.ends_with('='), "unpadded base64");

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64;
    let valid_until = value["valid_until_ts"].as_i64().expect("valid_until_ts");
    assert!(
        (valid_until - (now + 86_400_000)).abs() < 60_000,
        "valid for keys.response_lifetime (1 day)"
    );

    ruma_verify(&body, server, key_id, public_key).expect("ruma-signatures accepts our response");

    // One changed byte anywhere in what is signed fails.
    let tampered = String::from_utf8(body.clone()).expect("utf8").replacen(
        &valid_until.to_string(),
        &(valid_until + 1).to_string(),
        1,
    );
    assert!(ruma_verify(tampered.as_bytes(), server, key_id, public_key).is_err());

    // The well-known document names the same key.
    let (status, _, well_known) =
        get(format!("{}/.well-known/switchyard-server", app.address)).await;
    assert_eq!(status, 200);
    let well_known: Value = serde_json::from_slice(&well_known).expect("json");
    assert_eq!(well_known["domain"], "localhost:8008");
    assert_eq!(well_known["key_id"], key_id.as_str());
    assert_eq!(well_known["signing_key_public"], public_key);
    assert_eq!(well_known["api_base_url"], "http://localhost:8008");
    assert_eq!(well_known["protocol_version"], "switchyard-federation-v1");
}

#[actix_web::test]
async fn the_key_survives_a_restart() {
    let db = TestDb::new().await;
    let dir = db.dir.path().to_owned();
    let first = spawn_app_with(db, |_| {}).await;
    let (_, _, a) = get(format!("{}/.well-known/switchyard-server", first.address)).await;
    first.server.stop(true).await;
    let key_file = dir.join("signing.key");
    assert!(key_file.is_file());

    let again = TestDb {
        url: first.db.url.clone(),
        dir: tempfile::tempdir().expect("dir"),
    };
    let second = spawn_app_with(again, |c| c.keys.path = key_file.clone()).await;
    let (_, _, b) = get(format!("{}/.well-known/switchyard-server", second.address)).await;
    let (a, b): (Value, Value) = (
        serde_json::from_slice(&a).expect("a"),
        serde_json::from_slice(&b).expect("b"),
    );
    assert_eq!(a["key_id"], b["key_id"]);
    assert_eq!(a["signing_key_public"], b["signing_key_public"]);
}

#[actix_web::test]
async fn a_malformed_key_file_stops_the_start() {
    let db = TestDb::new().await;
    let path = db.dir.path().join("signing.key");
    std::fs::write(&path, "ed25519 a not-a-seed\n").expect("write");
    let mut config = db.config();
    config.keys.path = path;
    let err = switchyard::app::Application::build(config)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("signing key file"), "{err}");
}

async fn post_rotate(address: &str, token: Option<&str>) -> (u16, Value) {
    let mut request = awc::Client::default().post(format!("{address}/admin/v1/keys/rotate"));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", token.to_owned()));
    }
    let mut res = request.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.expect("json"))
}

async fn current_key(address: &str) -> (String, String) {
    let (_, _, body) = get(format!("{address}/.well-known/switchyard-server")).await;
    let v: Value = serde_json::from_slice(&body).expect("json");
    (
        v["key_id"].as_str().expect("id").to_owned(),
        v["signing_key_public"].as_str().expect("key").to_owned(),
    )
}

#[actix_web::test]
async fn admin_rotation_refuses_bad_tokens_and_changes_nothing() {
    // Admin API off (empty token): 403.
    let off = spawn_app().await;
    let before = current_key(&off.address).await;
    let (status, body) = post_rotate(&off.address, Some("Bearer anything")).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (403, Some("SY_FORBIDDEN"))
    );

    let on = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = "s3cret".into()
    })
    .await;
    let before_on = current_key(&on.address).await;
    for (token, want_status, want_errcode) in [
        (None, 401, "SY_MISSING_TOKEN"),
        (Some("s3cret"), 401, "SY_MISSING_TOKEN"),
        (Some("Basic s3cret"), 401, "SY_MISSING_TOKEN"),
        (Some("Bearer wrong"), 403, "SY_FORBIDDEN"),
        (Some("Bearer s3cret2"), 403, "SY_FORBIDDEN"),
    ] {
        let (status, body) = post_rotate(&on.address, token).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (want_status, Some(want_errcode)),
            "{token:?}"
        );
        assert!(body["error"].is_string());
    }
    // Nothing written, nothing changed.
    assert_eq!(current_key(&off.address).await, before);
    assert_eq!(current_key(&on.address).await, before_on);
    assert_eq!(off.store.head().await.expect("head").0, STARTUP_EVENTS);
    assert_eq!(on.store.head().await.expect("head").0, STARTUP_EVENTS);
    assert!(!on.db.dir.path().join("signing.next").exists());
}

#[actix_web::test]
async fn admin_rotation_moves_the_old_key_to_old_verify_keys() {
    let db = TestDb::new().await;
    let key_file = db.dir.path().join("signing.key");
    let app = spawn_app_with(db, |c| c.server.admin_token = "s3cret".into()).await;
    let (old_id, old_key) = current_key(&app.address).await;

    let (status, body) = post_rotate(&app.address, Some("Bearer s3cret")).await;
    assert_eq!(status, 200, "{body}");
    let new_id = body["key_id"].as_str().expect("key_id").to_owned();
    assert_ne!(new_id, old_id);
    assert_eq!(body["old_key_id"], old_id.as_str());
    let expired_ts = body["expired_ts"].as_i64().expect("expired_ts");

    let (_, _, response) = get(format!("{}/_matrix/key/v2/server", app.address)).await;
    let value: Value = serde_json::from_slice(&response).expect("json");
    let (now_id, now_key) = current_key(&app.address).await;
    assert_eq!(now_id, new_id);
    assert_eq!(value["verify_keys"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(value["verify_keys"][&new_id]["key"], now_key.as_str());
    assert_eq!(
        value["old_verify_keys"][&old_id],
        serde_json::json!({"key": old_key, "expired_ts": expired_ts})
    );
    ruma_verify(&response, "localhost:8008", &new_id, &now_key).expect("signed by the new key");
    assert!(
        ruma_verify(&response, "localhost:8008", &old_id, &old_key).is_err(),
        "not by the old one"
    );

    // Recorded in the log; the key file holds the new key.
    // After the first start's ID-Cert: the rotation, then the new key's ID-Cert.
    let entries = app
        .store
        .read_after(STARTUP_EVENTS, 10)
        .await
        .expect("read");
    let kinds: Vec<_> = entries.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(kinds, ["server.key_rotated", "server.idcert_issued"]);
    assert_eq!(entries[0].event_id, format!("key-rotation:{new_id}"));
    let on_disk = switchyard::federation::signing::ServerKey::load(&key_file).expect("key file");
    assert_eq!(on_disk.key_id(), new_id);

    // A restart keeps both.
    app.server.stop(true).await;
    let again = TestDb {
        url: app.db.url.clone(),
        dir: tempfile::tempdir().expect("dir"),
    };
    let restarted = spawn_app_with(again, |c| c.keys.path = key_file.clone()).await;
    let (_, _, response) = get(format!("{}/_matrix/key/v2/server", restarted.address)).await;
    let value: Value = serde_json::from_slice(&response).expect("json");
    assert_eq!(value["verify_keys"][&new_id]["key"], now_key.as_str());
    assert_eq!(value["old_verify_keys"][&old_id]["expired_ts"], expired_ts);
}

#[actix_web::test]
async fn an_interrupted_rotation_is_finished_or_discarded_at_start() {
    use switchyard::federation::keys::rotation::open_key_ring;
    use switchyard::federation::signing::{KeyRing, ServerKey};

    let db = TestDb::new().await;
    let store = db.store().await;
    let path = db.dir.path().join("signing.key");
    let original = ServerKey::load_or_generate(&path).expect("key");

    // Crashed before the log recorded it: the pending key is discarded.
    let abandoned = ServerKey::generate();
    abandoned
        .write(&KeyRing::pending_path(&path))
        .expect("pending");
    let ring = open_key_ring(&path, "localhost:8008", &store)
        .await
        .expect("ring");
    assert_eq!(ring.current().key_id(), original.key_id());
    assert!(!KeyRing::pending_path(&path).exists());

    // Crashed after the log recorded it: the rename is finished.
    let app = spawn_app_with(
        TestDb {
            url: db.url.clone(),
            dir: tempfile::tempdir().expect("dir"),
        },
        |_| {},
    )
    .await;
    let next = ServerKey::generate();
    next.write(&KeyRing::pending_path(&path)).expect("pending");
    let mut event = crate::helpers::event(
        "localhost:8008",
        &format!("key-rotation:{}", next.key_id()),
        "server.key_rotated",
        "x@localhost:8008",
        serde_json::json!({"old_key_id": original.key_id(), "old_key": original.public_b64(), "expired_ts": 5,
            "new_key_id": next.key_id(), "new_key": next.public_b64()}),
    );
    event.sender = None;
    event.channel = None;
    app.log.append(vec![event]).await.expect("append");
    let ring = open_key_ring(&path, "localhost:8008", &store)
        .await
        .expect("ring");
    assert_eq!(ring.current().key_id(), next.key_id());
    assert!(!KeyRing::pending_path(&path).exists());
    assert_eq!(ring.retired().len(), 1);
    assert_eq!(ring.retired()[0].key_id, original.key_id());
}

async fn pem_key(address: &str, query: &str) -> (u16, String) {
    let mut res = awc::Client::default()
        .get(format!("{address}/.p2/core/v1/key/server{query}"))
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (
        status,
        String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8"),
    )
}

fn pem_to_b64(pem: &str) -> String {
    use ed25519_dalek::pkcs8::DecodePublicKey;
    let key =
        ed25519_dalek::VerifyingKey::from_public_key_pem(pem).expect("PEM SubjectPublicKeyInfo");
    switchyard::federation::signing::b64(key.as_bytes())
}

#[actix_web::test]
async fn polyproto_server_key_now_at_a_time_and_rotated_by_put() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = "s3cret".into()
    })
    .await;
    let (_, old_key) = current_key(&app.address).await;
    let (status, pem) = pem_key(&app.address, "").await;
    assert_eq!(status, 200);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    assert_eq!(pem_to_b64(&pem), old_key);

    // PUT needs the admin token; without it nothing changes.
    let put = |token: Option<&'static str>| {
        let mut request =
            awc::Client::default().put(format!("{}/.p2/core/v1/key/server", app.address));
        if let Some(token) = token {
            request = request.insert_header(("Authorization", token));
        }
        async move {
            let mut res = request.send().await.expect("request");
            (
                res.status().as_u16(),
                String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8"),
            )
        }
    };
    let head = app.store.head().await.expect("head").0;
    let (status, body) = put(None).await;
    let body: Value = serde_json::from_str(&body).expect("json error");
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_MISSING_TOKEN"))
    );
    assert_eq!(current_key(&app.address).await.1, old_key);
    assert_eq!(app.store.head().await.expect("head").0, head);

    // The answer is the new key's root ID-Cert (polyproto core API).
    let (status, cert) = put(Some("Bearer s3cret")).await;
    assert_eq!(status, 200, "{cert}");
    assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
    let (_, new_key) = current_key(&app.address).await;
    assert_ne!(new_key, old_key);
    let (_, _, keys) = get(format!("{}/_matrix/key/v2/server", app.address)).await;
    let keys: Value = serde_json::from_slice(&keys).expect("json");
    let (_, old) = keys["old_verify_keys"]
        .as_object()
        .and_then(|o| o.iter().next())
        .expect("one old key");
    let expired_secs = old["expired_ts"].as_i64().expect("expired_ts") / 1000;

    assert_eq!(pem_to_b64(&pem_key(&app.address, "").await.1), new_key);
    let before = format!("?timestamp={}", expired_secs - 1);
    assert_eq!(pem_to_b64(&pem_key(&app.address, &before).await.1), old_key);
    let after = format!("?timestamp={}", expired_secs + 1);
    assert_eq!(pem_to_b64(&pem_key(&app.address, &after).await.1), new_key);

    for bad in ["?timestamp=soon", "?timestamp=-5", "?timestamp=1.5"] {
        let mut res = awc::Client::default()
            .get(format!("{}/.p2/core/v1/key/server{bad}", app.address))
            .send()
            .await
            .expect("request");
        let body: Value = res.json().await.expect("json");
        assert_eq!(
            (res.status().as_u16(), body["errcode"].as_str()),
            (400, Some("SY_INVALID_PARAM")),
            "{bad}"
        );
    }
}
