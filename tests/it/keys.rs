//! The Matrix-format key server and the well-known document, checked with an independent
//! implementation of Matrix signed JSON (ruma-signatures).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ruma_common::serde::Base64;
use ruma_common::CanonicalJsonObject;
use serde_json::Value;
use switchyard::core::canonical_json::to_canonical_string;

use crate::helpers::{spawn_app, spawn_app_with, TestDb};

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
