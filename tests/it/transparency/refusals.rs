//! Every refusal of the public read API (DESIGN §2.2) with its status and errcode, and
//! tampering caught by `POST /api/v1/log/verify`.

use sea_orm::ConnectionTrait;

use super::{append, checkpoint_covering, get};
use crate::helpers::{spawn_app_with, TestDb};

const ADMIN: &str = "s3cret";

#[actix_web::test]
async fn out_of_range_and_malformed_requests_are_refused() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", 20).await;
    checkpoint_covering(&app, size).await;
    let size = app.transparency.published_size();
    let past = size + 1;
    for (path, status, errcode) in [
        (
            "/api/v1/log/proof/inclusion?seq=0".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            format!("/api/v1/log/proof/inclusion?seq={past}"),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            format!("/api/v1/log/proof/inclusion?seq=1&size={past}"),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/inclusion?seq=5&size=4".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/inclusion?seq=1&size=0".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/inclusion".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/inclusion?seq=x".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/inclusion?seq=1&format=pdf".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            format!("/api/v1/log/proof/inclusion?seq={past}&format=tlog-proof"),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/consistency?old=0&new=2".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/consistency?old=3&new=2".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            format!("/api/v1/log/proof/consistency?old=1&new={past}"),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/log/proof/consistency?old=1".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        ("/log/tile/0/001".to_owned(), 404, "SY_NOT_FOUND"),
        (format!("/log/tile/0/000.p/{past}"), 404, "SY_NOT_FOUND"),
        ("/log/tile/1/000.p/1".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/0/0".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/00/000".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/64/000".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/0/x000/000".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/0/000.p/0".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/0/000.p/256".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/0/000.p/05".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/0".to_owned(), 404, "SY_NOT_FOUND"),
        ("/log/tile/entries/000".to_owned(), 401, "SY_MISSING_TOKEN"),
        ("/log/tile/+0/000.p/1".to_owned(), 404, "SY_NOT_FOUND"),
        (
            "/api/v1/log/proof/inclusion?seq=1&seq=2".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/keys?page=18446744073709551615".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/keys?page=1000000001".to_owned(),
            400,
            "SY_INVALID_PARAM",
        ),
    ] {
        let got = get(&app, &path, None).await;
        assert_eq!(got.status, status, "{path}: {}", got.text());
        assert_eq!(got.json()["errcode"], errcode, "{path}");
    }
    let wrong = get(&app, "/log/tile/entries/000.p/1", Some("nope")).await;
    assert_eq!(wrong.status, 403);
    assert_eq!(wrong.json()["errcode"], "SY_FORBIDDEN");
    let bundle = get(&app, "/log/tile/entries/000.p/2", Some(ADMIN)).await;
    assert_eq!(bundle.status, 200);
    let first = u16::from_be_bytes([bundle.body[0], bundle.body[1]]) as usize;
    let leaf: serde_json::Value = serde_json::from_slice(&bundle.body[2..2 + first]).expect("leaf");
    assert_eq!(leaf["seq"], 1);
    let past_bundle = get(
        &app,
        &format!("/log/tile/entries/000.p/{past}"),
        Some(ADMIN),
    )
    .await;
    assert_eq!(past_bundle.status, 404);

    // The verify route is the admin's.
    let status = awc::Client::default()
        .post(format!("{}/api/v1/log/verify", app.address))
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status, 401);
}

async fn verify(app: &crate::helpers::TestApp) -> serde_json::Value {
    let mut res = awc::Client::default()
        .post(format!("{}/api/v1/log/verify", app.address))
        .bearer_auth(ADMIN)
        .send()
        .await
        .expect("post");
    assert_eq!(res.status(), 200);
    res.json().await.expect("json")
}

#[actix_web::test]
async fn an_entry_edited_by_hand_is_named_by_verify() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", 30).await;
    checkpoint_covering(&app, size).await;
    let report = verify(&app).await;
    assert_eq!(report["valid"], true, "{report}");
    assert_eq!(report["errors"], serde_json::json!([]));
    assert_eq!(report["tree_size"], app.transparency.published_size());

    // Edit an entry's content: the chain check names it.
    let db = sea_orm::Database::connect(&app.db.url)
        .await
        .expect("connect");
    db.execute_unprepared(
        "UPDATE events SET content = '{\"body\":\"forged\",\"message_id\":\"m\"}' WHERE seq = 7",
    )
    .await
    .expect("tamper");
    let report = verify(&app).await;
    assert_eq!(report["valid"], false);
    let errors = report["errors"].to_string();
    assert!(errors.contains("entry 7"), "{errors}");

    // The CLI says the same (exit 1, naming the entry).
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["log", "verify"])
        .env("SWITCHYARD__DATABASE__URL", &app.db.url)
        .env(
            "SWITCHYARD__KEYS__PATH",
            app.db.dir.path().join("signing.key"),
        )
        .output()
        .expect("run switchyard log verify");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("seq 7"), "{stdout}");
}

#[actix_web::test]
async fn a_tile_or_checkpoint_edited_by_hand_fails_verify() {
    let app = spawn_app_with(TestDb::new().await, |c| {
        c.server.admin_token = ADMIN.into();
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", 300).await;
    checkpoint_covering(&app, size).await;
    let db = sea_orm::Database::connect(&app.db.url)
        .await
        .expect("connect");
    // One hash of a stored tile changed: named, though no checkpoint root depends on it alone.
    flip_a_tile_hash(&db, 0).await;
    let report = verify(&app).await;
    assert_eq!(report["valid"], false);
    assert!(
        report["errors"]
            .to_string()
            .contains("Merkle tile 0/0 differs"),
        "{report}"
    );
    flip_a_tile_hash(&db, 0).await;
    assert_eq!(verify(&app).await["valid"], true);

    // A forged root in the newest checkpoint: its signature no longer covers it.
    db.execute_unprepared(&format!(
        "UPDATE log_checkpoints SET root_hash = '{}' WHERE size = (SELECT MAX(size) FROM log_checkpoints)",
        "00".repeat(32)
    ))
    .await
    .expect("tamper");
    let report = verify(&app).await;
    assert_eq!(report["valid"], false);
    assert!(
        report["errors"].to_string().contains("the row says"),
        "{report}"
    );
}

/// DESIGN §2: a leaf is at most 65,535 bytes; the client API caps a body at 16 KiB and refuses
/// any event whose entry could pass the bound (a body of control characters, six bytes each
/// once escaped), writing nothing.
#[actix_web::test]
async fn entries_that_could_not_be_bundled_are_refused_and_write_nothing() {
    use crate::gateway::{call, create_channel, register};
    let app = spawn_app_with(TestDb::new().await, |_| {}).await;
    let alice = register(&app, "alice").await;
    let channel = create_channel(&app, &alice, "big").await;
    let path = format!("/api/v1/channels/{channel}/messages");
    let head = app.store.head().await.expect("head").0;
    for (body, status, errcode) in [
        ("x".repeat(16 * 1024 + 1), 400, "SY_INVALID_PARAM"),
        ("\u{1}".repeat(16 * 1024), 413, "SY_TOO_LARGE"),
    ] {
        let (got, answer) = call(
            &app,
            "POST",
            &path,
            Some(&alice.token),
            Some(serde_json::json!({ "body": body })),
        )
        .await;
        assert_eq!(got, status, "{answer}");
        assert_eq!(answer["errcode"], errcode);
        assert_eq!(
            app.store.head().await.expect("head").0,
            head,
            "nothing written"
        );
    }
    // The largest body that fits is accepted.
    let (got, answer) = call(
        &app,
        "POST",
        &path,
        Some(&alice.token),
        Some(serde_json::json!({ "body": "\"".repeat(16 * 1024) })),
    )
    .await;
    assert_eq!(got, 201, "{answer}");
}

/// A log whose tree no longer matches the checkpoint it last signed does not start: signing
/// on would publish a fork.
#[actix_web::test]
async fn a_server_does_not_start_on_a_tree_that_forks_its_checkpoint() {
    let db = TestDb::new().await;
    let url = db.url.clone();
    let dir = db.dir.path().to_owned();
    let config = |db: &TestDb| {
        let mut c = db.config();
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
        c
    };
    let app = spawn_app_with(db, |c| {
        c.transparency.checkpoint_interval = std::time::Duration::from_millis(20);
    })
    .await;
    let size = append(&app, "a.example", 300).await;
    checkpoint_covering(&app, size).await;
    app.server.stop(true).await;
    let db = sea_orm::Database::connect(&url).await.expect("connect");
    // (Deleted tiles would be rebuilt from the entries at start; a changed one cannot be.)
    // The level-1 tile holds the root of tile 0/0: the tree's root at the checkpoint changes.
    flip_a_tile_hash(&db, 1).await;
    let again = TestDb {
        url,
        dir: tempfile::tempdir().expect("dir"),
    };
    let mut config = config(&again);
    config.keys.path = dir.join("signing.key");
    let error = match switchyard::app::Application::build(config).await {
        Ok(_) => panic!("the server started on a damaged tree"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("Merkle"), "{error}");
}

/// Flips one bit of the first hash of tile `level`/0, by hand (twice restores it).
async fn flip_a_tile_hash(db: &sea_orm::DatabaseConnection, level: u32) {
    let backend = db.get_database_backend();
    let row = db
        .query_one(sea_orm::Statement::from_string(
            backend,
            format!("SELECT hashes FROM log_tiles WHERE level = {level} AND idx = 0"),
        ))
        .await
        .expect("query")
        .expect("the tile");
    let mut hashes: Vec<u8> = row.try_get("", "hashes").expect("bytes");
    hashes[0] ^= 1;
    let sql = match backend {
        sea_orm::DbBackend::Postgres => {
            format!("UPDATE log_tiles SET hashes = $1 WHERE level = {level} AND idx = 0")
        }
        _ => format!("UPDATE log_tiles SET hashes = ? WHERE level = {level} AND idx = 0"),
    };
    db.execute(sea_orm::Statement::from_sql_and_values(
        backend,
        sql,
        [sea_orm::Value::Bytes(Some(Box::new(hashes)))],
    ))
    .await
    .expect("change a tile by hand");
}
