//! The transparency-dev / RFC 9162 vectors (tests/data/merkle, from ../shared/testdata) through
//! the served endpoints: for every vector directory, our server's proof for the same leaf
//! index and tree sizes has the vector's shape and verifies; and each negative vector's
//! mutation (found by comparing it with the directory's happy path), applied to what we
//! served, makes it fail. The hashes differ (our leaves are log entries), the positions and
//! the mutations are the vectors'.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use switchyard::core::merkle::{empty_root, verify_consistency, verify_inclusion, Hash};

use super::{append, checkpoint_covering, get};
use crate::helpers::{spawn_app_with, TestApp, TestDb};

const VECTORS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/merkle");

/// A vector hash. A few negative vectors hold values that are not 32 bytes ("WrongRoot", "");
/// those map to a fixed 32-byte value that matches nothing, which is what they stand for.
fn h(v: &Value) -> Hash {
    let bytes = STANDARD
        .decode(v.as_str().unwrap_or_default())
        .expect("base64");
    bytes.clone().try_into().unwrap_or_else(|_| {
        let mut out = [0x5a; 32];
        for (o, b) in out.iter_mut().zip(&bytes) {
            *o ^= b;
        }
        out
    })
}

fn list(v: &Value) -> Vec<Hash> {
    v.as_array()
        .map(|a| a.iter().map(h).collect())
        .unwrap_or_default()
}

fn flip(mut hash: Hash) -> Hash {
    hash[0] ^= 1;
    hash
}

/// The vector's proof mutation applied to ours: an inserted hash (a vector root or leaf is
/// mapped to ours, anything else is kept as garbage), a truncation, or per-position bit flips.
fn mutate(
    ours: &[Hash],
    happy: &[Hash],
    vector: &[Hash],
    map: impl Fn(&Hash) -> Hash,
) -> Vec<Hash> {
    if vector == happy {
        return ours.to_vec();
    }
    if vector.len() == happy.len() + 1 && vector[1..] == *happy {
        return [vec![map(&vector[0])], ours.to_vec()].concat();
    }
    if vector.len() == happy.len() + 1 && vector[..happy.len()] == *happy {
        return [ours.to_vec(), vec![map(&vector[happy.len()])]].concat();
    }
    if vector.len() < happy.len() && happy.starts_with(vector) {
        return ours[..vector.len()].to_vec();
    }
    if vector.len() == happy.len() {
        return ours
            .iter()
            .zip(vector.iter().zip(happy))
            .map(|(o, (v, hp))| {
                let mut out = *o;
                for i in 0..32 {
                    out[i] ^= v[i] ^ hp[i];
                }
                out
            })
            .collect();
    }
    // Anything else (an empty proof against a non-empty one, a proof from elsewhere).
    vector.iter().map(&map).collect()
}

fn cases(kind: &str) -> Vec<(String, Value, Vec<(String, Value)>)> {
    let mut dirs = Vec::new();
    for dir in std::fs::read_dir(Path::new(VECTORS).join(kind)).expect("vectors") {
        let dir = dir.expect("entry").path();
        let happy = dir.join("happy-path.json");
        if !happy.exists() {
            continue; // edge cases without a tree: covered by core::merkle's unit tests
        }
        let read = |p: &Path| -> Value {
            serde_json::from_str(&std::fs::read_to_string(p).expect("read")).expect("json")
        };
        let mut negatives = Vec::new();
        for file in std::fs::read_dir(&dir).expect("dir") {
            let file = file.expect("file").path();
            if file != happy {
                negatives.push((file.display().to_string(), read(&file)));
            }
        }
        dirs.push((dir.display().to_string(), read(&happy), negatives));
    }
    assert!(!dirs.is_empty(), "no {kind} vectors in {VECTORS}");
    dirs
}

async fn app_with_entries(n: usize) -> TestApp {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", n).await;
    checkpoint_covering(&app, size).await;
    app
}

#[actix_web::test]
async fn inclusion_vectors_through_the_endpoint() {
    let app = app_with_entries(16).await;
    let mut checked = 0;
    for (dir, happy, negatives) in cases("inclusion") {
        let (index, size) = (
            happy["leafIdx"].as_u64().expect("idx"),
            happy["treeSize"].as_u64().expect("size"),
        );
        let served = get(
            &app,
            &format!("/api/v1/log/proof/inclusion?seq={}&size={size}", index + 1),
            None,
        )
        .await
        .json();
        let (proof, root, leaf) = (
            list(&served["proof"]),
            h(&served["root_hash"]),
            h(&served["leaf_hash"]),
        );
        assert_eq!(
            proof.len(),
            list(&happy["proof"]).len(),
            "{dir}: the proof's shape"
        );
        verify_inclusion(index, size, &leaf, &proof, &root)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let (happy_root, happy_leaf) = (h(&happy["root"]), h(&happy["leafHash"]));
        for (file, vector) in negatives {
            let map = |x: &Hash| {
                if *x == happy_root {
                    root
                } else if *x == happy_leaf {
                    leaf
                } else {
                    *x
                }
            };
            let v_root = h(&vector["root"]);
            let m_root = if v_root == happy_root {
                root
            } else if v_root == empty_root() {
                empty_root()
            } else {
                flip(root)
            };
            let m_leaf = if h(&vector["leafHash"]) == happy_leaf {
                leaf
            } else {
                flip(leaf)
            };
            let m_proof = mutate(&proof, &list(&happy["proof"]), &list(&vector["proof"]), map);
            let result = verify_inclusion(
                vector["leafIdx"].as_u64().expect("idx"),
                vector["treeSize"].as_u64().expect("size"),
                &m_leaf,
                &m_proof,
                &m_root,
            );
            assert_eq!(
                result.is_err(),
                vector["wantErr"] == true,
                "{file}: {result:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} negative vectors");
}

#[actix_web::test]
async fn consistency_vectors_through_the_endpoint() {
    let app = app_with_entries(16).await;
    let mut checked = 0;
    for (dir, happy, negatives) in cases("consistency") {
        let (old, new) = (
            happy["size1"].as_u64().expect("size1"),
            happy["size2"].as_u64().expect("size2"),
        );
        let served = get(
            &app,
            &format!("/api/v1/log/proof/consistency?old={old}&new={new}"),
            None,
        )
        .await
        .json();
        let (proof, root1, root2) = (
            list(&served["proof"]),
            h(&served["old_root"]),
            h(&served["new_root"]),
        );
        assert_eq!(
            proof.len(),
            list(&happy["proof"]).len(),
            "{dir}: the proof's shape"
        );
        verify_consistency(old, new, &root1, &root2, &proof)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let (h1, h2) = (h(&happy["root1"]), h(&happy["root2"]));
        let map = |x: &Hash| {
            if *x == h1 {
                root1
            } else if *x == h2 {
                root2
            } else {
                *x
            }
        };
        for (file, vector) in negatives {
            let root_of = |field: &str, ours: Hash| {
                let v = h(&vector[field]);
                if v == h1 {
                    root1
                } else if v == h2 {
                    root2
                } else {
                    flip(ours)
                }
            };
            let m_proof = mutate(&proof, &list(&happy["proof"]), &list(&vector["proof"]), map);
            let result = verify_consistency(
                vector["size1"].as_u64().expect("size1"),
                vector["size2"].as_u64().expect("size2"),
                &root_of("root1", root1),
                &root_of("root2", root2),
                &m_proof,
            );
            assert_eq!(
                result.is_err(),
                vector["wantErr"] == true,
                "{file}: {result:?}"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} negative vectors");
}
