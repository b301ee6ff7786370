//! Checkpoints over time (DESIGN §2.1): signed only when the log grew, at most once per
//! interval, every one kept; a key rotation continues the same log under the new key.

use std::time::Duration;

use sea_orm::{ConnectionTrait, Statement};
use switchyard::core::note::{parse_vkey, Checkpoint, Note, ED25519_TYPE};

use super::{append, checkpoint_covering, get};
use crate::helpers::{spawn_app_with, TestApp, TestDb};

const ADMIN: &str = "s3cret";

fn verifies(note_text: &str, vkey: &str) -> bool {
    let (name, key) = parse_vkey(vkey, ED25519_TYPE).expect("vkey");
    let note = Note::parse(note_text).expect("note");
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key).expect("key");
    note.signatures.iter().any(|s| {
        s.name == name
            && ed25519_dalek::Signature::from_slice(&s.bytes)
                .is_ok_and(|sig| key.verify_strict(note.body.as_bytes(), &sig).is_ok())
    })
}

async fn checkpoint_sizes(app: &TestApp) -> Vec<u64> {
    let db = sea_orm::Database::connect(&app.db.url)
        .await
        .expect("connect");
    let rows = db
        .query_all(Statement::from_string(
            db.get_database_backend(),
            "SELECT size FROM log_checkpoints ORDER BY size",
        ))
        .await
        .expect("query");
    rows.iter()
        .map(|r| r.try_get::<i64>("", "size").expect("size") as u64)
        .collect()
}

#[actix_web::test]
async fn signed_when_grown_at_most_once_per_interval_and_all_kept() {
    let interval = Duration::from_millis(250);
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.transparency.checkpoint_interval = interval;
    })
    .await;
    let started = std::time::Instant::now();
    let mut last = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        last = append(&app, "a.example", 5).await;
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    checkpoint_covering(&app, last).await;
    let sizes = checkpoint_sizes(&app).await;
    // The start-up checkpoint, then at most one per interval while the log grew.
    let most = 2 + (elapsed.as_millis() / interval.as_millis()) as usize + 1;
    assert!(
        sizes.len() >= 4 && sizes.len() <= most,
        "{sizes:?} in {elapsed:?}"
    );
    assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{sizes:?}");
    // An idle log signs nothing new.
    actix_web::rt::time::sleep(interval * 3).await;
    assert_eq!(checkpoint_sizes(&app).await, sizes);
    // Every kept checkpoint is served with proofs at its size.
    for &size in &sizes {
        let proof = get(
            &app,
            &format!("/api/v1/log/proof/inclusion?seq=1&size={size}"),
            None,
        )
        .await
        .json();
        let note = proof["checkpoint"]
            .as_str()
            .expect("the checkpoint of that size");
        let checkpoint = Checkpoint::parse(&Note::parse(note).expect("note").body).expect("body");
        assert_eq!(checkpoint.size, size);
    }
}

#[actix_web::test]
async fn a_rotation_continues_the_same_log_under_the_new_key() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = Duration::from_millis(20);
    })
    .await;
    let before = append(&app, "a.example", 10).await;
    checkpoint_covering(&app, before).await;
    let old_size = app.transparency.published_size();
    let old_note = get(&app, "/log/checkpoint", None).await.text();
    let old_vkey = get(&app, "/.well-known/switchyard-server", None)
        .await
        .json()["log_vkey"]
        .as_str()
        .expect("vkey")
        .to_owned();
    assert!(verifies(&old_note, &old_vkey));

    let status = awc::Client::default()
        .post(format!("{}/admin/v1/keys/rotate", app.address))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("rotate")
        .status();
    assert_eq!(status, 200);
    let after = append(&app, "a.example", 10).await;
    checkpoint_covering(&app, after).await;

    let well_known = get(&app, "/.well-known/switchyard-server", None)
        .await
        .json();
    let new_vkey = well_known["log_vkey"].as_str().expect("vkey").to_owned();
    assert_ne!(new_vkey, old_vkey);
    assert_eq!(well_known["log_old_vkeys"], serde_json::json!([old_vkey]));
    let new_note = get(&app, "/log/checkpoint", None).await.text();
    assert!(verifies(&new_note, &new_vkey));
    assert!(!verifies(&new_note, &old_vkey));
    // The old checkpoint is still served, signed by the old key, and the new tree extends it.
    let kept = get(
        &app,
        &format!("/api/v1/log/proof/inclusion?seq=1&size={old_size}"),
        None,
    )
    .await
    .json();
    assert!(verifies(
        kept["checkpoint"].as_str().expect("kept"),
        &old_vkey
    ));
    let new_size = app.transparency.published_size();
    let consistency = get(
        &app,
        &format!("/api/v1/log/proof/consistency?old={old_size}&new={new_size}"),
        None,
    )
    .await
    .json();
    assert_eq!(consistency["old_size"], old_size);
    let hash = |v: &serde_json::Value| -> switchyard::core::merkle::Hash {
        base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v.as_str().expect("b64"),
        )
        .expect("base64")
        .try_into()
        .expect("32 bytes")
    };
    let proof: Vec<_> = consistency["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hash)
        .collect();
    let old_root = Checkpoint::parse(&Note::parse(&old_note).expect("note").body)
        .expect("body")
        .root;
    let new_root = Checkpoint::parse(&Note::parse(&new_note).expect("note").body)
        .expect("body")
        .root;
    switchyard::core::merkle::verify_consistency(old_size, new_size, &old_root, &new_root, &proof)
        .expect("the tree after the rotation extends the one before");
    let report = awc::Client::default()
        .post(format!("{}/api/v1/log/verify", app.address))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("verify")
        .json::<serde_json::Value>()
        .await
        .expect("json");
    assert_eq!(report["valid"], true, "{report}");
}

/// `switchyard replay --into` moves a log between databases: the copy carries the tree's tiles
/// and every signed checkpoint, and verifies against them.
#[actix_web::test]
async fn a_replayed_copy_keeps_its_tree_and_checkpoints() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.transparency.checkpoint_interval = Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", 600).await;
    checkpoint_covering(&app, size).await;
    let sizes = checkpoint_sizes(&app).await;
    let target = TestDb::new().await;
    let copy = target.store().await;
    let report = app.store.replay_into(&copy).await.expect("replay");
    assert!(report.identical(), "{report:?}");
    let key =
        switchyard::federation::signing::ServerKey::load(&app.db.dir.path().join("signing.key"))
            .expect("key");
    let verified = copy
        .verify_log("localhost:8008/log", &[key.verifying_key().to_bytes()])
        .await
        .expect("verify");
    assert_eq!(verified.errors, Vec::<String>::new());
    assert_eq!(verified.checkpoint_size, sizes.last().copied());
    assert_eq!(copy.tree_size().await.expect("tree"), size);
}
