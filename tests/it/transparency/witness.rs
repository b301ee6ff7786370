//! Witnessing between servers (DESIGN §2.5, C2SP tlog-witness / tlog-cosignature): two
//! instances over loopback that witness each other, and every refusal of
//! `POST /log/add-checkpoint`, each leaving the witness's state as it was.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use switchyard::core::merkle::Hash;
use switchyard::core::note::{checkpoint_body, key_id, signature_line, Checkpoint, Note};
use switchyard::federation::signing::{unb64, ServerKey};

use super::{append, checkpoint_covering, get};
use crate::helpers::{spawn_app_with, TestApp, TestDb};

const A: &str = "a.test";
const B: &str = "b.test";
const TOKEN: &str = "s3cret";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port()
}

/// An instance named `name` on `port`, reaching `peer` over loopback, pushing its checkpoints
/// to `witnesses` and witnessing the logs of `witness_for`.
async fn instance(
    name: &'static str,
    port: u16,
    peer: (&'static str, u16),
    witnesses: &[&str],
    witness_for: &[&str],
) -> TestApp {
    let witnesses: Vec<String> = witnesses.iter().map(|s| s.to_string()).collect();
    let witness_for: Vec<String> = witness_for.iter().map(|s| s.to_string()).collect();
    spawn_app_with(TestDb::new().await, move |c| {
        c.server.name = name.into();
        c.server.bind = format!("127.0.0.1:{port}");
        c.server.admin_token = TOKEN.into();
        c.federation
            .resolve
            .insert(peer.0.into(), format!("http://127.0.0.1:{}", peer.1));
        c.transparency.checkpoint_interval = Duration::from_millis(20);
        c.transparency.witness_interval = Duration::from_millis(50);
        c.transparency.witnesses = witnesses;
        c.transparency.witness_for = witness_for;
    })
    .await
}

/// The server's signing key as published in its well-known document.
async fn server_key(app: &TestApp) -> VerifyingKey {
    let well_known = get(app, "/.well-known/switchyard-server", None)
        .await
        .json();
    let bytes = unb64(well_known["signing_key_public"].as_str().expect("key")).expect("base64");
    VerifyingKey::from_bytes(&bytes.try_into().expect("32 bytes")).expect("a key")
}

/// Checks a `cosignature/v1` line of `name` over `body` from first principles (C2SP
/// tlog-cosignature): key ID `SHA-256(name ‖ 0x0A ‖ 0x04 ‖ key)[..4]`, a non-zero big-endian
/// timestamp, an Ed25519 signature over `cosignature/v1\ntime <t>\n` and the body.
fn check_cosignature(line: &str, name: &str, key: &VerifyingKey, body: &str) {
    let rest = line
        .strip_prefix(&format!("\u{2014} {name} "))
        .and_then(|r| r.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("not a signature line of {name}: {line:?}"));
    let bytes = STANDARD.decode(rest).expect("base64");
    assert_eq!(bytes.len(), 4 + 8 + 64, "key ID, timestamp, signature");
    let mut id = Sha256::new();
    id.update(name.as_bytes());
    id.update([b'\n', 0x04]);
    id.update(key.as_bytes());
    assert_eq!(bytes[..4], id.finalize()[..4], "the key ID of type 0x04");
    let time = u64::from_be_bytes(bytes[4..12].try_into().expect("8 bytes"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        time > 0 && time <= now + 1 && time + 600 > now,
        "time {time}"
    );
    let signature = Signature::from_slice(&bytes[12..]).expect("64 bytes");
    key.verify_strict(
        format!("cosignature/v1\ntime {time}\n{body}").as_bytes(),
        &signature,
    )
    .expect("the cosignature verifies");
}

/// Waits until `app`'s served checkpoint is its latest one and carries a cosignature of
/// `witness`; answers the served note.
async fn cosigned_checkpoint(app: &TestApp, witness: &str) -> Note {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = get(app, "/log/checkpoint", None).await;
        if got.status == 200 {
            let note = Note::parse(&got.text()).expect("a signed note");
            let size = Checkpoint::parse(&note.body).expect("a checkpoint").size;
            if size == app.transparency.published_size()
                && note.signatures.iter().any(|s| s.name == witness)
            {
                return note;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no cosignature of {witness} on the latest checkpoint: {}",
            got.text()
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn two_servers_witness_each_other() {
    let (pa, pb) = (free_port(), free_port());
    let a = instance(A, pa, (B, pb), &[B], &[B]).await;
    let b = instance(B, pb, (A, pa), &[A], &[A]).await;
    let (key_a, key_b) = (server_key(&a).await, server_key(&b).await);

    // The first cosignature (from old size 0), then one that needs a consistency proof.
    for round in 0..2 {
        let size = append(&a, A, 150 + round * 200).await;
        checkpoint_covering(&a, size).await;
        let note = cosigned_checkpoint(&a, B).await;
        assert_eq!(note.signatures[0].name, format!("{A}/log"), "ours first");
        let ours = note.signatures.iter().filter(|s| s.name == B).count();
        assert_eq!(ours, 1, "one cosignature line of B");
        let line = &note
            .signatures
            .iter()
            .find(|s| s.name == B)
            .expect("B")
            .line;
        check_cosignature(line, B, &key_b, &note.body);
    }
    let b_size = checkpoint_covering(&b, append(&b, B, 20).await).await;
    let note = cosigned_checkpoint(&b, A).await;
    let line = &note
        .signatures
        .iter()
        .find(|s| s.name == A)
        .expect("A")
        .line;
    check_cosignature(line, A, &key_a, &note.body);

    let status = get(&a, "/admin/v1/witnesses", Some(TOKEN)).await;
    assert_eq!(status.status, 200);
    let status = status.json();
    let witnesses = status["witnesses"].as_array().expect("witnesses");
    assert_eq!(witnesses.len(), 1);
    assert_eq!(witnesses[0]["server"], B);
    let cosigned = witnesses[0]["cosigned_size"].as_u64().expect("a size");
    assert!(cosigned >= 350, "{status}");
    assert!(witnesses[0]["cosigned_at"].as_str().is_some(), "{status}");
    assert!(witnesses[0]["last_error"].is_null(), "{status}");
    assert!(witnesses[0]["attempts"].as_u64().expect("attempts") >= 2);
    let witnessing = status["witnessing"].as_array().expect("witnessing");
    assert_eq!(witnessing.len(), 1, "{status}");
    assert_eq!(witnessing[0]["origin"], format!("{B}/log"));
    assert!(
        witnessing[0]["size"].as_u64().expect("size") >= b_size,
        "{status}"
    );
    assert!(witnessing[0]["updated_at"].as_str().is_some());

    let pushes = get(&a, "/metrics", None).await.text();
    assert!(
        pushes.contains(&format!(
            "switchyard_witness_pushes_total{{result=\"cosigned\",witness=\"{B}\"}}"
        )),
        "{pushes}"
    );

    let missing = get(&a, "/admin/v1/witnesses", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json()["errcode"], "SY_MISSING_TOKEN");
    let wrong = get(&a, "/admin/v1/witnesses", Some("nope")).await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.json()["errcode"], "SY_FORBIDDEN");
}

/// A POST of an add-checkpoint body: status, `Content-Type`, body.
async fn add_checkpoint(app: &TestApp, body: &str) -> (u16, String, String) {
    let mut res = awc::Client::default()
        .post(format!("{}/log/add-checkpoint", app.address))
        .send_body(body.to_owned())
        .await
        .expect("request");
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = res.body().limit(1 << 20).await.expect("body");
    (
        res.status().as_u16(),
        content_type,
        String::from_utf8(body.to_vec()).expect("UTF-8"),
    )
}

fn request(old: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&STANDARD.encode(hash));
        body.push('\n');
    }
    format!("{body}\n{note}")
}

/// A checkpoint note of `origin` signed by `key` under the note key name `origin`.
fn signed(key: &ServerKey, origin: &str, size: u64, root: &Hash) -> String {
    let body = checkpoint_body(origin, size, root);
    let id = key_id(origin, 0x01, key.verifying_key().as_bytes());
    let line = signature_line(origin, id, &key.sign(body.as_bytes()).to_bytes());
    format!("{body}\n{line}")
}

/// The witness's record of `origin`: size, hex root, note.
async fn witnessed(app: &TestApp, origin: &str) -> Option<(i64, String, String)> {
    use sea_orm::{Database, EntityTrait};
    let db = Database::connect(&app.db.url).await.expect("connect");
    let row = entities::witnessed_logs::Entity::find_by_id(origin)
        .one(&db)
        .await
        .expect("read");
    db.close().await.expect("close");
    row.map(|r| (r.size, r.root_hash, r.note))
}

async fn equivocations(app: &TestApp, origin: &str) -> u64 {
    let metrics = get(app, "/metrics", None).await.text();
    counter(
        &metrics,
        "switchyard_witness_equivocations_total",
        &format!("origin=\"{origin}\""),
    )
}

/// Go's verifier checks B's cosignature on A's checkpoint (C2SP cosignature/v1, which x/mod's
/// note package does not know: verify.go checks it by the spec) along with the rest.
#[actix_web::test]
async fn go_verifier_accepts_the_cosigned_checkpoint() {
    let Some((_dir, binary)) = super::independent::go_verifier() else {
        return;
    };
    let (pa, pb) = (free_port(), free_port());
    let a = instance(A, pa, (B, pb), &[B], &[]).await;
    let b = instance(B, pb, (A, pa), &[], &[A]).await;
    let size = append(&a, A, 300).await;
    checkpoint_covering(&a, size).await;
    cosigned_checkpoint(&a, B).await;
    let vkey = get(&a, "/.well-known/switchyard-server", None).await.json()["log_vkey"]
        .as_str()
        .expect("log_vkey")
        .to_owned();
    let witness_vkey = switchyard::core::note::vkey(
        B,
        switchyard::core::note::COSIGNATURE_TYPE,
        server_key(&b).await.as_bytes(),
    );
    let stdout = super::independent::run_go_verifier(
        &binary,
        vec![
            "-url".into(),
            a.address.clone(),
            "-vkey".into(),
            vkey,
            "-witness-vkey".into(),
            witness_vkey,
        ],
    )
    .await;
    assert!(stdout.contains("cosignatures=1"), "{stdout}");
}

#[actix_web::test]
async fn add_checkpoint_refusals_write_nothing() {
    let (pa, pb) = (free_port(), free_port());
    // A pushes nowhere: every request B sees comes from this test.
    let a = instance(A, pa, (B, pb), &[], &[]).await;
    let b = instance(B, pb, (A, pa), &[], &[A]).await;
    let origin = format!("{A}/log");
    let key_a = ServerKey::load(&a.db.dir.path().join("signing.key")).expect("A's key");
    let key_b = server_key(&b).await;

    // The empty tree: cosigned (twice: the same checkpoint again), only with its root.
    let empty: Hash = Sha256::digest([]).into();
    for _ in 0..2 {
        let (status, _, line) =
            add_checkpoint(&b, &request(0, &[], &signed(&key_a, &origin, 0, &empty))).await;
        assert_eq!(status, 200, "{line}");
    }
    let (status, _, answer) =
        add_checkpoint(&b, &request(0, &[], &signed(&key_a, &origin, 0, &[7; 32]))).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        witnessed(&b, &origin)
            .await
            .map(|(size, root, _)| (size, root)),
        Some((0, hex::encode(empty)))
    );

    let s1 = checkpoint_covering(&a, append(&a, A, 40).await).await;
    let first = a
        .transparency
        .checkpoint_at(s1)
        .await
        .expect("read")
        .expect("s1");
    let (status, content_type, line) = add_checkpoint(&b, &request(0, &[], &first.note)).await;
    assert_eq!(
        (status, content_type.as_str()),
        (200, "text/plain; charset=utf-8"),
        "{line}"
    );
    check_cosignature(&line, B, &key_b, &checkpoint_body(&origin, s1, &first.root));
    let held = witnessed(&b, &origin).await.expect("recorded");
    assert_eq!(
        held,
        (s1 as i64, hex::encode(first.root), first.note.clone())
    );

    let s2 = checkpoint_covering(&a, append(&a, A, 300).await).await;
    let second = a
        .transparency
        .checkpoint_at(s2)
        .await
        .expect("read")
        .expect("s2");
    let proof = a
        .transparency
        .reader()
        .consistency(s1, s2)
        .await
        .expect("proof");
    let mut bent = proof.clone();
    bent[0][0] ^= 1;
    let stranger = ServerKey::generate();
    let unknown = signed(&stranger, "c.test/log", 5, &[1; 32]);
    let forged = signed(&stranger, &origin, s2, &second.root);
    let edited = second
        .note
        .replacen(&format!("\n{s2}\n"), &format!("\n{}\n", s2 + 1), 1);
    let fork = signed(&key_a, &origin, s1, &[0x42; 32]);

    let refusals: Vec<(&str, String, u16, &str)> = vec![
        (
            "unknown log",
            request(0, &[], &unknown),
            404,
            "SY_NOT_FOUND",
        ),
        (
            "signed by another key",
            request(s1, &proof, &forged),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "body edited",
            request(s1, &proof, &edited),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "no signature line",
            format!(
                "old {s1}\n\n{}",
                second.note.split_once("\n\n").expect("body").0
            ),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "old past size",
            request(s2 + 1, &[], &second.note),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "bad proof",
            request(s1, &bent, &second.note),
            422,
            "SY_BAD_PROOF",
        ),
        (
            "no proof",
            request(s1, &[], &second.note),
            422,
            "SY_BAD_PROOF",
        ),
        (
            "too large",
            format!("old 0\n{}", "A".repeat(70_000)),
            413,
            "SY_TOO_LARGE",
        ),
    ];
    for (case, body, want, errcode) in refusals {
        let (status, _, answer) = add_checkpoint(&b, &body).await;
        assert_eq!(status, want, "{case}: {answer}");
        let answer: serde_json::Value = serde_json::from_str(&answer).expect("a JSON error");
        assert_eq!(answer["errcode"], errcode, "{case}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{case}"
        );
        assert_eq!(
            witnessed(&b, &origin).await,
            Some(held.clone()),
            "{case} wrote nothing"
        );
    }
    assert!(witnessed(&b, "c.test/log").await.is_none());

    // A stale `old`: 409 with the size the witness holds, as text/x.tlog.size.
    let (status, content_type, answer) = add_checkpoint(&b, &request(0, &[], &second.note)).await;
    assert_eq!(
        (status, content_type.as_str(), answer.as_str()),
        (409, "text/x.tlog.size", format!("{s1}\n").as_str())
    );
    assert_eq!(witnessed(&b, &origin).await, Some(held.clone()));

    // A fork: validly signed by A, the size B cosigned, another root.
    assert_eq!(
        equivocations(&b, &origin).await,
        0,
        "a bad proof is not an equivocation"
    );
    let (status, _, answer) = add_checkpoint(&b, &request(s1, &[], &fork)).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&answer).expect("JSON")["errcode"],
        "SY_BAD_PROOF"
    );
    assert_eq!(witnessed(&b, &origin).await, Some(held.clone()));
    assert_eq!(equivocations(&b, &origin).await, 1);

    // The same checkpoint again is cosigned again; then the consistent successor.
    let (status, _, line) = add_checkpoint(&b, &request(s1, &[], &first.note)).await;
    assert_eq!(status, 200, "{line}");
    let (status, _, line) = add_checkpoint(&b, &request(s1, &proof, &second.note)).await;
    assert_eq!(status, 200, "{line}");
    check_cosignature(
        &line,
        B,
        &key_b,
        &checkpoint_body(&origin, s2, &second.root),
    );
    assert_eq!(
        witnessed(&b, &origin).await,
        Some((s2 as i64, hex::encode(second.root), second.note.clone()))
    );
    let (status, content_type, answer) =
        add_checkpoint(&b, &request(s1, &proof, &second.note)).await;
    assert_eq!(
        (status, content_type.as_str(), answer),
        (409, "text/x.tlog.size", format!("{s2}\n"))
    );
    assert_eq!(equivocations(&b, &origin).await, 1);
}

/// A witness's push status on `app` (the admin route), the first witness's entry.
async fn push_status(app: &TestApp) -> serde_json::Value {
    let got = get(app, "/admin/v1/witnesses", Some(TOKEN)).await;
    assert_eq!(got.status, 200);
    got.json()["witnesses"][0].clone()
}

/// The value of counter `name{labels}` in a Prometheus text answer (0 when absent).
fn counter(metrics: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{{{labels}}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a count"))
}

#[actix_web::test]
async fn the_pusher_waits_out_a_down_witness_and_follows_its_size() {
    let (pa, pb) = (free_port(), free_port());
    // B is not up yet: A's first push fails, and the next one waits a whole interval.
    let a = spawn_app_with(TestDb::new().await, move |c| {
        c.server.name = A.into();
        c.server.bind = format!("127.0.0.1:{pa}");
        c.server.admin_token = TOKEN.into();
        c.federation
            .resolve
            .insert(B.into(), format!("http://127.0.0.1:{pb}"));
        c.transparency.checkpoint_interval = Duration::from_millis(20);
        c.transparency.witness_interval = Duration::from_secs(3);
        c.transparency.witnesses = vec![B.into()];
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = push_status(&a).await;
        if !status["last_error"].is_null() {
            break status;
        }
        assert!(Instant::now() < deadline, "no failed push: {status}");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status["server"], B);
    assert_eq!(status["attempts"], 1, "{status}");
    assert_eq!(status["cosigned_size"], 0);
    assert!(status["cosigned_at"].is_null());

    // Meanwhile B cosigns A's checkpoint for someone else, so A's `old 0` will be stale.
    let b = instance(B, pb, (A, pa), &[], &[A]).await;
    let held = a.transparency.latest().expect("a checkpoint");
    let (code, _, answer) = add_checkpoint(&b, &request(0, &[], &held.note)).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        push_status(&a).await["attempts"],
        1,
        "no retry before the interval"
    );
    let size = checkpoint_covering(&a, append(&a, A, 30).await).await;
    assert!(size > held.size);

    let note = cosigned_checkpoint(&a, B).await;
    let line = &note
        .signatures
        .iter()
        .find(|s| s.name == B)
        .expect("B")
        .line;
    check_cosignature(line, B, &server_key(&b).await, &note.body);
    let status = push_status(&a).await;
    assert!(status["last_error"].is_null(), "{status}");
    assert_eq!(
        status["attempts"], 3,
        "failed, 409, then from B's size: {status}"
    );
    assert!(status["cosigned_size"].as_u64().expect("size") >= size);
    let metrics = get(&a, "/metrics", None).await.text();
    let labels = |result: &str| format!("result=\"{result}\",witness=\"{B}\"");
    assert_eq!(
        counter(
            &metrics,
            "switchyard_witness_pushes_total",
            &labels("unreachable")
        ),
        1,
        "{metrics}"
    );
    assert_eq!(
        counter(
            &metrics,
            "switchyard_witness_pushes_total",
            &labels("conflict")
        ),
        1
    );
    assert_eq!(
        counter(
            &metrics,
            "switchyard_witness_pushes_total",
            &labels("cosigned")
        ),
        1
    );
}
