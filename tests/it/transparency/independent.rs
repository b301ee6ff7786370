//! What we serve, checked by verifiers no one here wrote: the `signed_note` and `tlog_tiles`
//! crates (Cloudflare's Rust ports of Go's sumdb `note` and `tlog`) in every run, and Go's own
//! `golang.org/x/mod/sumdb` (tests/verifier/verify.go) where Go and x/mod are installed
//! (`.ci/run` installs them).

use std::collections::HashMap;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{
    check_record, check_tree, prove_record, record_hash, tree_hash, Checkpoint, Hash, Tile,
    TileHashReader, TileReader,
};

use super::{append, checkpoint_covering, get};
use crate::helpers::{spawn_app_with, TestApp, TestDb};

const ADMIN: &str = "s3cret";

/// Every tile of the tree of `size`, fetched from the server at the width that tree gives it.
struct FetchedTiles(HashMap<(u8, u64), Vec<u8>>);

impl TileReader for FetchedTiles {
    fn height(&self) -> u8 {
        8
    }

    fn read_tiles(&self, tiles: &[Tile]) -> Result<Vec<Vec<u8>>, tlog_tiles::Error> {
        tiles
            .iter()
            .map(|t| {
                let bytes = self
                    .0
                    .get(&(t.level(), t.level_index()))
                    .ok_or(tlog_tiles::Error::InvalidTile)?;
                let width = t.width() as usize * 32;
                bytes
                    .get(..width)
                    .map(<[u8]>::to_vec)
                    .ok_or(tlog_tiles::Error::InvalidTile)
            })
            .collect()
    }

    fn save_tiles(&self, _tiles: &[Tile], _data: &[Vec<u8>]) {}
}

async fn fetch_tiles(app: &TestApp, size: u64) -> FetchedTiles {
    let mut tiles = HashMap::new();
    for level in 0u8..8 {
        let count = size >> (8 * u32::from(level));
        if count == 0 {
            break;
        }
        for index in 0..=count / 256 {
            let width = (count - index * 256).min(256);
            if width == 0 {
                continue;
            }
            let id = switchyard::core::tiles::TileId {
                level: u32::from(level),
                index,
                width: width as u16,
            };
            let got = get(app, &format!("/log/tile/{}", id.path()), None).await;
            assert_eq!(got.status, 200, "tile {}", id.path());
            assert_eq!(got.body.len(), width as usize * 32, "tile {}", id.path());
            tiles.insert((level, index), got.body);
        }
    }
    FetchedTiles(tiles)
}

fn hashes(value: &serde_json::Value) -> Vec<Hash> {
    value
        .as_array()
        .expect("a proof")
        .iter()
        .map(|h| {
            Hash(
                STANDARD
                    .decode(h.as_str().expect("base64"))
                    .expect("base64")
                    .try_into()
                    .expect("32 bytes"),
            )
        })
        .collect()
}

async fn started(entries: usize) -> (TestApp, u64) {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", entries).await;
    let published = checkpoint_covering(&app, size).await;
    (app, published)
}

#[actix_web::test]
async fn the_sumdb_ports_accept_our_notes_tiles_and_proofs() {
    let (app, _) = started(700).await;
    let vkey = get(&app, "/.well-known/switchyard-server", None)
        .await
        .json()["log_vkey"]
        .as_str()
        .expect("log_vkey")
        .to_owned();
    let verifiers = VerifierList::new(vec![Box::new(StandardVerifier::new(&vkey).expect("vkey"))]);
    let served = get(&app, "/log/checkpoint", None).await.body;
    let note = Note::from_bytes(&served).expect("a signed note");
    note.verify(&verifiers).expect("the log key signed it");
    let checkpoint = Checkpoint::from_bytes(note.text()).expect("a checkpoint");
    let (size, root) = (checkpoint.size(), *checkpoint.hash());
    assert_eq!(checkpoint.origin(), "localhost:8008/log");

    let tiles = fetch_tiles(&app, size).await;
    let reader = TileHashReader::new(size, root, &tiles);
    assert_eq!(tree_hash(size, &reader).expect("tree hash"), root);

    for index in [0, 1, 255, 256, 511, 600, size - 1] {
        let served = get(
            &app,
            &format!("/api/v1/log/proof/inclusion?seq={}", index + 1),
            None,
        )
        .await
        .json();
        let proof = hashes(&served["proof"]);
        assert_eq!(
            proof,
            prove_record(size, index, &reader).expect("their proof")
        );
        let leaf = Hash(
            STANDARD
                .decode(served["leaf_hash"].as_str().expect("leaf"))
                .expect("base64")
                .try_into()
                .expect("32"),
        );
        check_record(&proof, size, root, index, leaf).expect("their check of our proof");
    }
    for old in [1, 2, 256, 300, size - 1, size] {
        let served = get(
            &app,
            &format!("/api/v1/log/proof/consistency?old={old}&new={size}"),
            None,
        )
        .await
        .json();
        let old_root = tree_hash(old, &reader).expect("old root");
        check_tree(&hashes(&served["proof"]), size, root, old, old_root)
            .expect("their check of our consistency proof");
    }

    // Entry bundles: each leaf hashes to the level-0 tile's hash.
    let bundle = get(&app, "/log/tile/entries/001", Some(ADMIN)).await.body;
    let level0 = &tiles.0[&(0, 1)];
    let mut at = 0;
    for i in 0..256 {
        let len = u16::from_be_bytes([bundle[at], bundle[at + 1]]) as usize;
        let leaf = &bundle[at + 2..at + 2 + len];
        assert_eq!(
            record_hash(leaf).0,
            level0[i * 32..(i + 1) * 32],
            "entry {i}"
        );
        at += 2 + len;
    }
    assert_eq!(at, bundle.len());

    // A tile with one hash flipped is refused by their reader.
    let mut forged = FetchedTiles(tiles.0.clone());
    forged.0.get_mut(&(0, 2)).expect("tile 0/002")[5] ^= 1;
    let forged_reader = TileHashReader::new(size, root, &forged);
    assert!(
        tree_hash(size, &forged_reader).is_err()
            || prove_record(size, 520, &forged_reader).is_err()
    );
}

/// Builds tests/verifier/verify.go into a temporary directory: `None` (with the reason
/// printed) where Go or x/mod is not installed.
pub(super) fn go_verifier() -> Option<(tempfile::TempDir, String)> {
    let x_mod = std::path::Path::new("/usr/share/gocode/src/golang.org/x/mod/sumdb/tlog");
    let go = std::process::Command::new("go").arg("version").output();
    if go.is_err() || !x_mod.exists() {
        assert!(
            std::env::var_os("SWITCHYARD_REQUIRE_GO").is_none(),
            "SWITCHYARD_REQUIRE_GO is set but Go or golang.org/x/mod is missing"
        );
        println!(
            "SKIPPED: Go's verifier needs `go` and golang.org/x/mod (apt-get install golang-go golang-golang-x-mod-dev; .ci/run does)"
        );
        return None;
    }
    let out = tempfile::tempdir().expect("tempdir");
    let build = std::process::Command::new("sh")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/verifier/run.sh"
        ))
        .arg(out.path())
        .output()
        .expect("build the Go verifier");
    assert!(
        build.status.success(),
        "building the Go verifier failed: {}",
        String::from_utf8_lossy(&build.stderr)
    );
    let binary = String::from_utf8_lossy(&build.stdout).trim().to_owned();
    Some((out, binary))
}

/// Runs the Go verifier with `args`; panics with its output unless it accepts.
pub(super) async fn run_go_verifier(binary: &str, args: Vec<String>) -> String {
    let binary = binary.to_owned();
    let run = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new(binary)
            .args(args)
            .output()
            .expect("run the Go verifier")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "Go's verifier refused what we serve: {stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    println!("Go's verifier: {stdout}");
    stdout
}

/// Go's reference code (x/mod's sumdb note and tlog) over the whole read API, through
/// tests/verifier/verify.go. Skipped, saying why, where Go or x/mod is not installed.
#[actix_web::test]
async fn go_sumdb_accepts_what_we_serve() {
    let Some((out, binary)) = go_verifier() else {
        return;
    };
    let (app, size) = started(700).await;
    let vkey = get(&app, "/.well-known/switchyard-server", None)
        .await
        .json()["log_vkey"]
        .as_str()
        .expect("log_vkey")
        .to_owned();
    // A tlog-proof@v1 as the CLI prints it, for the verifier to check too.
    let proof = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["log", "proof", "--seq", "300"])
        .env("SWITCHYARD__DATABASE__URL", &app.db.url)
        .output()
        .expect("switchyard log proof");
    assert!(
        proof.status.success(),
        "{}",
        String::from_utf8_lossy(&proof.stderr)
    );
    let proof_file = out.path().join("entry-300.tlog-proof");
    std::fs::write(&proof_file, &proof.stdout).expect("write the proof");

    let stdout = run_go_verifier(
        &binary,
        vec![
            "-url".into(),
            app.address.clone(),
            "-vkey".into(),
            vkey,
            "-admin-token".into(),
            ADMIN.into(),
            "-proof-file".into(),
            proof_file.display().to_string(),
        ],
    )
    .await;
    assert!(stdout.starts_with(&format!("ok size={size} ")), "{stdout}");
}
