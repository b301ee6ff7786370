//! The auditor API and the key registry (DESIGN §2.3–§2.4): listings, filters, one entry and
//! a key's history with inclusion proofs checked against the checkpoint, exports in JSON and
//! CSV read back, and every refusal with its status and errcode.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePublicKey;
use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use switchyard::core::merkle::{leaf_hash, verify_inclusion, Hash};
use switchyard::core::note::{Checkpoint, Note};
use switchyard::identity::idcert::fingerprint;

use super::{append, checkpoint_covering, get};
use crate::gateway::{call, register};
use crate::helpers::{spawn_app_with, TestApp, TestDb};
use crate::identity::{head, issue, server_key};
use crate::p2::{actor_csr, actor_key};

const ADMIN: &str = "audit-s3cret";

async fn spawn() -> TestApp {
    spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await
}

fn hash(value: &Value) -> Hash {
    STANDARD
        .decode(value.as_str().expect("a base64 hash"))
        .expect("base64")
        .try_into()
        .expect("32 bytes")
}

/// Checks the `inclusion` of an entry shown by the API: the leaf is the stored entry's, the
/// path leads to the root of the signed checkpoint it carries.
async fn check_inclusion(app: &TestApp, entry: &Value) {
    let seq = entry["id"].as_u64().expect("id");
    let inclusion = &entry["inclusion"];
    assert!(inclusion.is_object(), "no inclusion proof in {entry}");
    assert_eq!(inclusion["seq"], seq);
    let stored = app.store.read_after(seq - 1, 1).await.expect("read");
    let leaf = leaf_hash(stored[0].leaf().as_bytes());
    assert_eq!(
        hash(&inclusion["leaf_hash"]),
        leaf,
        "the proof is of this entry"
    );
    let note = Note::parse(
        inclusion["checkpoint"]
            .as_str()
            .expect("the checkpoint note"),
    )
    .expect("a note");
    let checkpoint = Checkpoint::parse(&note.body).expect("a checkpoint");
    assert_eq!(
        checkpoint.size,
        inclusion["tree_size"].as_u64().expect("size")
    );
    assert_eq!(hash(&inclusion["root_hash"]), checkpoint.root);
    let path: Vec<Hash> = inclusion["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hash)
        .collect();
    verify_inclusion(seq - 1, checkpoint.size, &leaf, &path, &checkpoint.root)
        .expect("the inclusion proof verifies against the checkpoint root");
}

fn ids(body: &Value) -> Vec<u64> {
    body["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["id"].as_u64().expect("id"))
        .collect()
}

fn errcode(app_reply: &super::Got) -> String {
    app_reply.json()["errcode"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[actix_web::test]
async fn the_log_is_listed_filtered_and_shown_entry_by_entry() {
    let app = spawn().await;
    append(&app, "a.example", 30).await;
    let last = append(&app, "b.example", 10).await;
    checkpoint_covering(&app, last).await;

    // Newest first, the default page of 50, the shape of DESIGN §2.3.
    let got = get(&app, "/api/v1/log", Some(ADMIN)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let body = got.json();
    assert_eq!(body["total"], last);
    assert_eq!(
        (body["page"].as_u64(), body["per_page"].as_u64()),
        (Some(1), Some(50))
    );
    assert_eq!(ids(&body), (1..=last).rev().collect::<Vec<_>>());
    let newest = &body["entries"][0];
    for field in [
        "id",
        "timestamp",
        "event_type",
        "payload",
        "previous_hash",
        "entry_hash",
        "event_id",
        "origin",
        "sender",
        "channel",
    ] {
        assert!(newest.get(field).is_some(), "{field} missing from {newest}");
    }
    assert_eq!(newest["origin"], "b.example");
    assert_eq!(newest["event_type"], "message.new");
    assert!(newest["payload"].is_object());
    assert!(newest["timestamp"].as_str().expect("ts").ends_with('Z'));
    assert_eq!(body["entries"][1]["entry_hash"], newest["previous_hash"]);

    // Pages.
    let body = get(&app, "/api/v1/log?page=2&per_page=7", Some(ADMIN))
        .await
        .json();
    assert_eq!(ids(&body), (last - 13..=last - 7).rev().collect::<Vec<_>>());
    let body = get(&app, "/api/v1/log?page=100", Some(ADMIN)).await.json();
    assert_eq!(ids(&body), Vec::<u64>::new());
    assert_eq!(body["total"], last);

    // event_type and search (event id prefix, a hash: the entry and its successor).
    let body = get(
        &app,
        "/api/v1/log?event_type=message.new&per_page=200",
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(body["total"], 40);
    let target = &get(
        &app,
        &format!("/api/v1/log?per_page=1&page={}", last - 4),
        Some(ADMIN),
    )
    .await
    .json()["entries"][0];
    let seq = target["id"].as_u64().expect("id");
    let body = get(
        &app,
        &format!(
            "/api/v1/log?search={}",
            target["event_id"].as_str().expect("id")
        ),
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(ids(&body), vec![seq]);
    let body = get(
        &app,
        &format!(
            "/api/v1/log?search={}",
            target["entry_hash"].as_str().expect("h")
        ),
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(ids(&body), vec![seq + 1, seq]);

    // The audit trail: origin, fid, dates.
    let body = get(
        &app,
        "/api/v1/log/audit-trail?origin=b.example&per_page=200",
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(body["total"], 10);
    let body = get(
        &app,
        "/api/v1/log/audit-trail?fid=alice@a.example&per_page=200",
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(body["total"], 30);
    let after = get(
        &app,
        "/api/v1/log/audit-trail?start_date=2000-01-01T00:00:00Z&end_date=2999-01-01T00:00:00%2B02:00",
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(after["total"], last);
    let before = get(
        &app,
        "/api/v1/log/audit-trail?end_date=2000-01-01T00:00:00Z",
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(before["total"], 0);

    // One entry with its inclusion proof; a message needs the admin token.
    let got = get(&app, &format!("/api/v1/log/{seq}"), Some(ADMIN)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let entry = got.json();
    assert_eq!(entry["entry_hash"], target["entry_hash"]);
    check_inclusion(&app, &entry).await;
    for (token, status, code) in [
        (None, 401, "SY_MISSING_TOKEN"),
        (Some("nope"), 403, "SY_FORBIDDEN"),
    ] {
        let got = get(&app, &format!("/api/v1/log/{seq}"), token).await;
        assert_eq!((got.status, errcode(&got).as_str()), (status, code));
    }
}

#[actix_web::test]
async fn an_entry_past_the_latest_checkpoint_has_no_inclusion_yet() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = std::time::Duration::from_secs(3600);
    })
    .await;
    // The first checkpoint comes at once (covering at least the startup entry); the next
    // not before an hour.
    checkpoint_covering(&app, 1).await;
    let last = append(&app, "a.example", 3).await;
    assert!(app.transparency.published_size() < last);
    let got = get(&app, &format!("/api/v1/log/{last}"), Some(ADMIN)).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let entry = got.json();
    assert_eq!(entry["id"], last);
    assert_eq!(entry["inclusion"], Value::Null);
    let got = get(&app, "/api/v1/log/1", None).await;
    check_inclusion(&app, &got.json()).await;
}

#[actix_web::test]
async fn every_refusal_has_its_status_and_errcode_and_writes_nothing() {
    let app = spawn().await;
    let last = append(&app, "a.example", 5).await;
    checkpoint_covering(&app, last).await;
    let before = head(&app).await;
    let unknown = format!("sha256:{}", "0".repeat(64));
    let admin_routes = [
        "/api/v1/log",
        "/api/v1/log/audit-trail?origin=a.example",
        "/api/v1/audit/export",
        "/api/v1/log/2",
    ];
    for path in admin_routes {
        for (token, status, code) in [
            (None, 401, "SY_MISSING_TOKEN"),
            (Some("wrong"), 403, "SY_FORBIDDEN"),
        ] {
            let got = get(&app, path, token).await;
            assert_eq!(
                (got.status, errcode(&got).as_str()),
                (status, code),
                "{path} with {token:?}"
            );
        }
    }
    let bad = [
        ("/api/v1/log?per_page=0", Some(ADMIN)),
        ("/api/v1/log?per_page=201", Some(ADMIN)),
        ("/api/v1/log?per_page=ten", Some(ADMIN)),
        ("/api/v1/log?page=0", Some(ADMIN)),
        ("/api/v1/log?event_type=no.such", Some(ADMIN)),
        ("/api/v1/log/audit-trail", Some(ADMIN)),
        ("/api/v1/log/audit-trail?page=1&per_page=5", Some(ADMIN)),
        ("/api/v1/log/audit-trail?start_date=yesterday", Some(ADMIN)),
        ("/api/v1/log/audit-trail?end_date=2024-01-01", Some(ADMIN)),
        (
            "/api/v1/log/audit-trail?start_date=2024-01-02T00:00:00Z&end_date=2024-01-01T00:00:00Z",
            Some(ADMIN),
        ),
        (
            "/api/v1/log/audit-trail?fingerprint=sha256:abc",
            Some(ADMIN),
        ),
        ("/api/v1/log/audit-trail?fid=nobody", Some(ADMIN)),
        ("/api/v1/log/audit-trail?origin=not%20a%20host", Some(ADMIN)),
        ("/api/v1/audit/export?format=xml", Some(ADMIN)),
        ("/api/v1/audit/export?page_size=1001", Some(ADMIN)),
        ("/api/v1/audit/export?page=0&page_size=10", Some(ADMIN)),
        ("/api/v1/log/abc", None),
        ("/api/v1/log/0", None),
        ("/api/v1/log/-3", None),
        ("/api/v1/log/by-fingerprint/sha256:xyz", None),
        ("/api/v1/log/by-fingerprint/deadbeef", None),
        ("/api/v1/keys?per_page=500", None),
        ("/api/v1/keys?page=0", None),
        ("/api/v1/keys/search", None),
        ("/api/v1/keys/search?pseudonym=", None),
        ("/api/v1/keys/not-a-fingerprint", None),
        ("/api/v1/keys/sha256:12/status", None),
    ];
    for (path, token) in bad {
        let got = get(&app, path, token).await;
        assert_eq!(
            (got.status, errcode(&got).as_str()),
            (400, "SY_INVALID_PARAM"),
            "{path}: {}",
            got.text()
        );
    }
    for path in [
        format!("/api/v1/log/{}", last + 1000),
        format!("/api/v1/keys/{unknown}"),
        format!("/api/v1/keys/{unknown}/status"),
    ] {
        let got = get(&app, &path, Some(ADMIN)).await;
        assert_eq!(
            (got.status, errcode(&got).as_str()),
            (404, "SY_NOT_FOUND"),
            "{path}"
        );
    }
    // A key no event names has an empty history, not an error.
    let got = get(&app, &format!("/api/v1/log/by-fingerprint/{unknown}"), None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["entries"], serde_json::json!([]));
    assert_eq!(head(&app).await, before, "reads wrote nothing");
}

/// The registry row of `fingerprint` in a `{"keys": [...]}` answer.
fn row<'a>(body: &'a Value, fingerprint: &str) -> &'a Value {
    body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["fingerprint"] == fingerprint)
        .unwrap_or_else(|| panic!("{fingerprint} not in {body}"))
}

#[actix_web::test]
async fn actor_certificates_issued_renewed_and_ended_show_in_the_registry_and_the_log() {
    let app = spawn().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let (first_key, second_key, bob_key) = (actor_key(), actor_key(), actor_key());
    let fp = |k: &ed25519_dalek::SigningKey| fingerprint(&k.verifying_key()).expect("fp");
    let (first, second, bobs) = (fp(&first_key), fp(&second_key), fp(&bob_key));

    let (status, issued) = issue(
        &app,
        &alice.token,
        &actor_csr(&alice.fid, &alice.session_id, &first_key),
        None,
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let (status, renewed) = issue(
        &app,
        &alice.token,
        &actor_csr(&alice.fid, &alice.session_id, &second_key),
        Some("correct horse"),
    )
    .await;
    assert_eq!(status, 201, "{renewed}");
    let (status, body) = issue(
        &app,
        &bob.token,
        &actor_csr(&bob.fid, &bob.session_id, &bob_key),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = call(
        &app,
        "DELETE",
        &format!("/.p2/core/v1/session?session_id={}", alice.session_id),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let last = head(&app).await;
    checkpoint_covering(&app, last).await;

    // The registry: the server key and the three certificates, with their states.
    let got = get(&app, "/api/v1/keys", None).await;
    assert_eq!(got.status, 200, "{}", got.text());
    let keys = got.json();
    assert_eq!(keys["total"], 4);
    assert_eq!(keys["keys"][0]["kind"], "server", "server keys first");
    let home = fingerprint(&server_key(&app).await).expect("fp");
    assert_eq!(row(&keys, &home)["status"], "active");
    for (fp, status, serial) in [
        (&first, "invalidated", &issued["serial"]),
        (&second, "invalidated", &renewed["serial"]),
        (&bobs, "active", &body_serial(&app, &bob.fid).await),
    ] {
        let row = row(&keys, fp);
        assert_eq!(row["kind"], "actor");
        assert_eq!(row["algorithm"], "ed25519");
        assert_eq!(row["status"], status, "{row}");
        assert_eq!(&row["serial"], serial);
        assert!(row["registered_at"].as_str().is_some(), "{row}");
        assert!(row["expires_at"].as_str().is_some(), "{row}");
    }
    assert_eq!(row(&keys, &first)["pseudonym"], alice.fid.as_str());
    assert_eq!(row(&keys, &first)["session_id"], alice.session_id.as_str());
    // Newest first after the server key: bob's, then alice's renewal, then her first.
    let order: Vec<&str> = keys["keys"].as_array().expect("keys")[1..]
        .iter()
        .map(|k| k["fingerprint"].as_str().expect("fp"))
        .collect();
    assert_eq!(order, vec![bobs.as_str(), second.as_str(), first.as_str()]);
    let page = get(&app, "/api/v1/keys?page=2&per_page=3", None)
        .await
        .json();
    assert_eq!(page["keys"].as_array().expect("keys").len(), 1);
    assert_eq!(page["keys"][0]["fingerprint"], first.as_str());

    // Search by pseudonym, case-insensitive.
    let found = get(&app, "/api/v1/keys/search?pseudonym=ALIce", None)
        .await
        .json();
    assert_eq!(found["total"], 2, "{found}");
    let found = get(&app, "/api/v1/keys/search?pseudonym=LocalHost", None)
        .await
        .json();
    assert_eq!(
        found["total"], 4,
        "the server's name and every fid match: {found}"
    );
    let found = get(&app, "/api/v1/keys/search?pseudonym=%25", None)
        .await
        .json();
    assert_eq!(found["total"], 0, "LIKE wildcards are literal: {found}");

    // One key: its PEM, its registering entry; its status.
    let detail = get(&app, &format!("/api/v1/keys/{first}"), None)
        .await
        .json();
    let pem = detail["public_key"].as_str().expect("pem");
    assert_eq!(
        VerifyingKey::from_public_key_pem(pem).expect("an SPKI PEM"),
        first_key.verifying_key()
    );
    let registering = detail["log_entry_id"].as_u64().expect("log_entry_id");
    let entry = get(&app, &format!("/api/v1/log/{registering}"), None).await;
    assert_eq!(
        entry.status,
        200,
        "identity events are public: {}",
        entry.text()
    );
    let entry = entry.json();
    assert_eq!(entry["event_type"], "actor.idcert_issued");
    assert_eq!(entry["payload"]["fingerprint"], first.as_str());
    check_inclusion(&app, &entry).await;
    let status = get(&app, &format!("/api/v1/keys/{bobs}/status"), None)
        .await
        .json();
    assert_eq!(status["fingerprint"], bobs.as_str());
    assert_eq!(status["status"], "active");
    assert_eq!(status["expires_at"], row(&keys, &bobs)["expires_at"]);
    // Upper-case hex names the same key.
    let upper = format!("sha256:{}", first["sha256:".len()..].to_uppercase());
    let status = get(&app, &format!("/api/v1/keys/{upper}/status"), None)
        .await
        .json();
    assert_eq!(status["status"], "invalidated");

    // Each key's whole history, oldest first, every entry proven in the checkpoint.
    for (fp, reason) in [(&first, "renewed"), (&second, "session_ended")] {
        let got = get(&app, &format!("/api/v1/log/by-fingerprint/{fp}"), None).await;
        assert_eq!(got.status, 200, "{}", got.text());
        let history = got.json();
        let entries = history["entries"].as_array().expect("entries");
        let types: Vec<&str> = entries
            .iter()
            .map(|e| e["event_type"].as_str().expect("type"))
            .collect();
        assert_eq!(
            types,
            vec!["actor.idcert_issued", "actor.idcert_invalidated"],
            "{fp}"
        );
        assert_eq!(entries[1]["payload"]["reason"], reason);
        assert!(entries[0]["id"].as_u64() < entries[1]["id"].as_u64());
        for entry in entries {
            check_inclusion(&app, entry).await;
        }
        // The same through the admin's audit trail (newest first) and search.
        let trail = get(
            &app,
            &format!("/api/v1/log/audit-trail?fingerprint={fp}"),
            Some(ADMIN),
        )
        .await
        .json();
        let mut oldest_first = ids(&trail);
        oldest_first.reverse();
        assert_eq!(oldest_first, ids(&history));
        let searched = get(&app, &format!("/api/v1/log?search={fp}"), Some(ADMIN))
            .await
            .json();
        assert_eq!(ids(&searched), ids(&trail));
    }
    // A fingerprint prefix finds the issuance.
    let prefix = &bobs[..20];
    let searched = get(&app, &format!("/api/v1/log?search={prefix}"), Some(ADMIN))
        .await
        .json();
    assert_eq!(searched["total"], 1, "{searched}");
    assert_eq!(
        searched["entries"][0]["payload"]["fingerprint"],
        bobs.as_str()
    );
    // fid names alice's events: her registration, sessions, certificates.
    let trail = get(
        &app,
        &format!(
            "/api/v1/log/audit-trail?fid={}&event_type=actor.idcert_issued",
            alice.fid
        ),
        Some(ADMIN),
    )
    .await
    .json();
    assert_eq!(trail["total"], 2);
}

/// The serial of the one certificate of `fid`.
async fn body_serial(app: &TestApp, fid: &str) -> Value {
    let (_, entries) = call(
        app,
        "GET",
        &format!("/.p2/core/v1/idcert/actor/{fid}"),
        None,
        None,
    )
    .await;
    entries[0]["serial"].clone()
}

#[actix_web::test]
async fn server_keys_are_listed_before_and_after_a_rotation() {
    let app = spawn().await;
    let old = fingerprint(&server_key(&app).await).expect("fp");
    let keys = get(&app, "/api/v1/keys", None).await.json();
    assert_eq!(keys["total"], 1);
    let server = row(&keys, &old);
    assert_eq!(server["kind"], "server");
    assert_eq!(server["pseudonym"], "localhost:8008");
    assert_eq!(server["status"], "active");
    assert!(
        server["serial"].as_str().is_some(),
        "the root ID-Cert's serial"
    );
    assert!(server["expires_at"].as_str().is_some());

    let (status, rotated) = call(&app, "POST", "/admin/v1/keys/rotate", Some(ADMIN), None).await;
    assert_eq!(status, 200, "{rotated}");
    let new = fingerprint(&server_key(&app).await).expect("fp");
    assert_ne!(new, old);
    checkpoint_covering(&app, head(&app).await).await;

    let keys = get(&app, "/api/v1/keys", None).await.json();
    assert_eq!(keys["total"], 2);
    assert_eq!(
        keys["keys"][0]["fingerprint"],
        new.as_str(),
        "the current key first"
    );
    assert_eq!(keys["keys"][0]["status"], "active");
    assert_eq!(keys["keys"][1]["fingerprint"], old.as_str());
    assert_eq!(keys["keys"][1]["status"], "invalidated");
    let expired = keys["keys"][1]["expires_at"].as_str().expect("expires_at");
    assert_eq!(
        switchyard::clock::parse_rfc3339_ms(expired),
        rotated["expired_ts"].as_i64()
    );

    // The old key: registered by its first root ID-Cert; its history ends with the rotation.
    let detail = get(&app, &format!("/api/v1/keys/{old}"), None).await.json();
    let pem = detail["public_key"].as_str().expect("pem");
    assert_eq!(
        fingerprint(&VerifyingKey::from_public_key_pem(pem).expect("pem")).expect("fp"),
        old
    );
    let history = get(&app, &format!("/api/v1/log/by-fingerprint/{old}"), None)
        .await
        .json();
    let entries = history["entries"].as_array().expect("entries");
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["event_type"].as_str().expect("t"))
        .collect();
    assert_eq!(types, vec!["server.idcert_issued", "server.key_rotated"]);
    assert_eq!(detail["log_entry_id"], entries[0]["id"]);
    for entry in entries {
        check_inclusion(&app, entry).await;
    }
    // The new key: brought in by the rotation, then certified.
    let detail = get(&app, &format!("/api/v1/keys/{new}"), None).await.json();
    let history = get(&app, &format!("/api/v1/log/by-fingerprint/{new}"), None)
        .await
        .json();
    let entries = history["entries"].as_array().expect("entries");
    let types: Vec<&str> = entries
        .iter()
        .map(|e| e["event_type"].as_str().expect("t"))
        .collect();
    assert_eq!(types, vec!["server.key_rotated", "server.idcert_issued"]);
    assert_eq!(detail["log_entry_id"], entries[0]["id"]);
    assert_eq!(entries[1]["payload"]["key_id"], rotated["key_id"]);
    let status = get(&app, &format!("/api/v1/keys/{old}/status"), None)
        .await
        .json();
    assert_eq!(status["status"], "invalidated");
}

/// A GET of an export: status, `Content-Type`, `Content-Disposition` and the body text.
async fn export(app: &TestApp, query: &str) -> (u16, String, String, String) {
    let got = get(app, &format!("/api/v1/audit/export?{query}"), Some(ADMIN)).await;
    let text = got.text();
    (got.status, got.content_type, got.disposition, text)
}

/// RFC 4180 records (quoted fields with doubled quotes and line breaks inside).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field) = (Vec::new(), String::new());
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {
                assert_eq!(chars.next(), Some('\n'), "records end in CRLF");
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    assert!(
        record.is_empty() && field.is_empty(),
        "the last record ends in CRLF"
    );
    records
}

#[actix_web::test]
async fn exports_in_json_and_csv_read_back_as_the_listed_entries() {
    let app = spawn().await;
    let alice = register(&app, "alice").await;
    let (status, body) = issue(
        &app,
        &alice.token,
        &actor_csr(&alice.fid, &alice.session_id, &actor_key()),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let last = append(&app, "a.example", 20).await;

    let listed = get(&app, "/api/v1/log?per_page=200", Some(ADMIN))
        .await
        .json();
    let mut expected = listed["entries"].as_array().expect("entries").clone();
    expected.reverse();
    assert_eq!(expected.len() as u64, last);

    let (status, content_type, disposition, text) = export(&app, "format=json").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "application/json");
    assert_eq!(
        disposition,
        "attachment; filename=\"switchyard-audit.json\""
    );
    let exported: Vec<Value> = serde_json::from_str(&text).expect("one JSON array");
    assert_eq!(exported, expected, "oldest first, the entries as listed");

    let (status, content_type, disposition, text) = export(&app, "format=csv").await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(content_type, "text/csv; charset=utf-8");
    assert_eq!(disposition, "attachment; filename=\"switchyard-audit.csv\"");
    let records = parse_csv(&text);
    assert_eq!(
        records[0],
        [
            "id",
            "timestamp",
            "event_type",
            "payload",
            "previous_hash",
            "entry_hash",
            "event_id",
            "origin",
            "sender",
            "channel"
        ]
    );
    assert_eq!(records.len() - 1, expected.len());
    for (record, entry) in records[1..].iter().zip(&expected) {
        let text = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_default();
        assert_eq!(record[0], entry["id"].to_string());
        assert_eq!(record[1], text(&entry["timestamp"]));
        assert_eq!(record[2], text(&entry["event_type"]));
        let payload: Value = serde_json::from_str(&record[3]).expect("payload JSON");
        assert_eq!(payload, entry["payload"]);
        assert_eq!(record[4], text(&entry["previous_hash"]));
        assert_eq!(record[5], text(&entry["entry_hash"]));
        assert_eq!(record[6], text(&entry["event_id"]));
        assert_eq!(record[7], text(&entry["origin"]));
        assert_eq!(record[8], text(&entry["sender"]));
        assert_eq!(record[9], text(&entry["channel"]));
    }

    // Filters apply to the export: only alice's certificate issuance.
    let (_, _, _, text) = export(
        &app,
        &format!(
            "format=json&event_type=actor.idcert_issued&fid={}",
            alice.fid
        ),
    )
    .await;
    let exported: Vec<Value> = serde_json::from_str(&text).expect("JSON");
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["sender"], alice.fid.as_str());
    // Nothing matching: an empty array, a lone header.
    let (_, _, _, text) = export(&app, "format=json&origin=nobody.example").await;
    assert_eq!(
        serde_json::from_str::<Vec<Value>>(&text).expect("JSON"),
        Vec::<Value>::new()
    );
    let (_, _, _, text) = export(&app, "format=csv&origin=nobody.example").await;
    assert_eq!(parse_csv(&text).len(), 1);
}

#[actix_web::test]
async fn a_large_export_streams_in_windows_of_at_most_a_thousand() {
    let app = spawn().await;
    let before = head(&app).await;
    let last = append(&app, "bulk.example", 3_500).await;
    assert_eq!(last - before, 3_500);
    let seqs = |text: &str| -> Vec<u64> {
        serde_json::from_str::<Vec<Value>>(text)
            .expect("one JSON array")
            .iter()
            .map(|e| e["id"].as_u64().expect("id"))
            .collect()
    };

    // Everything, across four keyset pages of the store.
    let (status, _, _, text) = export(&app, "origin=bulk.example").await;
    assert_eq!(status, 200);
    assert_eq!(seqs(&text), (before + 1..=last).collect::<Vec<_>>());

    // Windows of the filtered order.
    let (_, _, _, text) = export(&app, "origin=bulk.example&page=2&page_size=1000").await;
    assert_eq!(
        seqs(&text),
        (before + 1001..=before + 2000).collect::<Vec<_>>()
    );
    let (_, _, _, text) = export(&app, "origin=bulk.example&page=4&page_size=1000").await;
    assert_eq!(seqs(&text), (before + 3001..=last).collect::<Vec<_>>());
    let (_, _, _, text) = export(&app, "origin=bulk.example&page=5&page_size=1000").await;
    assert_eq!(seqs(&text), Vec::<u64>::new());
    let (_, _, _, text) = export(&app, "origin=bulk.example&page=3&page_size=999").await;
    assert_eq!(
        seqs(&text),
        (before + 1999..=before + 2997).collect::<Vec<_>>()
    );
    let (_, _, _, text) = export(&app, "page=1&page_size=7").await;
    assert_eq!(seqs(&text), (1..=7).collect::<Vec<_>>());

    let (_, _, _, text) =
        export(&app, "format=csv&origin=bulk.example&page=2&page_size=1000").await;
    let records = parse_csv(&text);
    assert_eq!(records.len(), 1001);
    assert_eq!(records[1][0], (before + 1001).to_string());
    assert_eq!(records[1000][0], (before + 2000).to_string());
}
