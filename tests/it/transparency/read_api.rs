//! `/log/checkpoint`, tiles, entry bundles and proofs (DESIGN §2.1–§2.2).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use switchyard::core::merkle::{verify_consistency, verify_inclusion, Hash};
use switchyard::core::note::{parse_vkey, Checkpoint, Note, ED25519_TYPE};

use super::{append, checkpoint_covering, get};
use crate::helpers::{spawn_app_with, TestDb};

fn hash(value: &serde_json::Value) -> Hash {
    STANDARD
        .decode(value.as_str().expect("a base64 string"))
        .expect("base64")
        .try_into()
        .expect("32 bytes")
}

#[actix_web::test]
async fn checkpoints_proofs_and_tiles_agree() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", 600).await;
    checkpoint_covering(&app, size).await;

    let well_known = get(&app, "/.well-known/switchyard-server", None)
        .await
        .json();
    let vkey = well_known["log_vkey"].as_str().expect("log_vkey");
    let (name, key) = parse_vkey(vkey, ED25519_TYPE).expect("a valid vkey");
    assert_eq!(name, "localhost:8008/log");

    let got = get(&app, "/log/checkpoint", None).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.content_type, "text/plain; charset=utf-8");
    let note = Note::parse(&got.text()).expect("a signed note");
    let checkpoint = Checkpoint::parse(&note.body).expect("a checkpoint");
    assert_eq!(checkpoint.origin, name);
    assert_eq!(checkpoint.size, size);
    let signature = &note.signatures[0];
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&key).expect("key");
    let sig = ed25519_dalek::Signature::from_slice(&signature.bytes).expect("64 bytes");
    verifying
        .verify_strict(note.body.as_bytes(), &sig)
        .expect("the checkpoint is signed with the log key");

    for seq in [1, 2, 255, 256, 257, size] {
        let proof = get(
            &app,
            &format!("/api/v1/log/proof/inclusion?seq={seq}"),
            None,
        )
        .await
        .json();
        assert_eq!(proof["tree_size"], size);
        assert_eq!(hash(&proof["root_hash"]), checkpoint.root);
        let path: Vec<Hash> = proof["proof"]
            .as_array()
            .expect("proof")
            .iter()
            .map(hash)
            .collect();
        verify_inclusion(
            seq - 1,
            size,
            &hash(&proof["leaf_hash"]),
            &path,
            &checkpoint.root,
        )
        .expect("inclusion verifies");
        assert!(proof["checkpoint"].as_str().is_some());
    }
    let consistency = get(
        &app,
        &format!("/api/v1/log/proof/consistency?old=300&new={size}"),
        None,
    )
    .await
    .json();
    let path: Vec<Hash> = consistency["proof"]
        .as_array()
        .expect("proof")
        .iter()
        .map(hash)
        .collect();
    verify_consistency(
        300,
        size,
        &hash(&consistency["old_root"]),
        &checkpoint.root,
        &path,
    )
    .expect("consistency verifies");

    let full = get(&app, "/log/tile/0/000", None).await;
    assert_eq!(full.status, 200);
    assert_eq!(full.body.len(), 256 * 32);
    assert_eq!(full.cache_control, "public, max-age=31536000, immutable");
    assert_eq!(full.content_type, "application/octet-stream");
    let partial = get(&app, &format!("/log/tile/0/002.p/{}", size - 512), None).await;
    assert_eq!(partial.status, 200);
    assert_eq!(partial.body.len(), (size as usize - 512) * 32);
    let level1 = get(&app, "/log/tile/1/000.p/2", None).await;
    assert_eq!(level1.status, 200);
    assert_eq!(level1.body.len(), 64);
}
