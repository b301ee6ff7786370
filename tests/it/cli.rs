//! The `switchyard` binary itself: configuration errors, an unreachable database, graceful
//! shutdown, `log verify` and `replay`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};

use crate::helpers::{message, TestDb};

fn switchyard(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command.args(args).env_remove("RUST_LOG");
    for (k, v) in envs {
        command.env(k, v);
    }
    command.output().expect("run switchyard")
}

fn write_config(dir: &std::path::Path, body: &str) -> String {
    let path = dir.join("config.toml");
    std::fs::write(&path, body).expect("write config");
    path.display().to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_config_values_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (
            "[storage]\ndurability = \"sometimes\"\n",
            "storage.durability",
        ),
        ("[server]\nbind = \"not an address\"\n", "server.bind"),
        (
            "[database]\nurl = \"mysql://localhost/x\"\n",
            "database.url",
        ),
        ("[server]\nname = \"has space\"\n", "server.name"),
        ("[federation\n", "TOML"),
        // Several nodes need a shared PostgreSQL; the default database is SQLite.
        ("[cluster]\nenabled = true\n", "cluster.enabled"),
        (
            "[database]\nurl = \"postgres://x@127.0.0.1/x\"\n[cluster]\nenabled = true\ninternal_token = \"short\"\n",
            "cluster.internal_token",
        ),
        ("[cluster]\nlease_ttl = \"10ms\"\n", "cluster.lease_ttl"),
        (
            "[server]\nbind = \"0.0.0.0:8008\"\n[database]\nurl = \"postgres://x@127.0.0.1/x\"\n[cluster]\nenabled = true\ninternal_token = \"a-long-enough-secret\"\n",
            "cluster.advertise_url",
        ),
        ("[cluster]\npoll_interval = \"2s\"\n", "cluster.poll_interval"),
    ];
    for (body, key) in cases {
        let config = write_config(dir.path(), body);
        let output = switchyard(&["--config", &config, "migrate"], &[]);
        assert_eq!(output.status.code(), Some(2), "{body}: {}", stderr(&output));
        assert!(stderr(&output).contains(key), "{body}: {}", stderr(&output));
        assert!(!stderr(&output).contains("panicked"));
    }
    // A misspelt section or key names itself, where it came from and what there is.
    for (body, says) in [
        (
            "[sever]\nbind = \"127.0.0.1:1\"\n",
            "unknown section [sever]",
        ),
        (
            "[server]\nbnid = \"127.0.0.1:1\"\n",
            "unknown key server.bnid",
        ),
    ] {
        let config = write_config(dir.path(), body);
        let output = switchyard(&["--config", &config, "migrate"], &[]);
        assert_eq!(output.status.code(), Some(2), "{body}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(says),
            "{body}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains("config.toml"),
            "{}",
            stderr(&output)
        );
    }
    let config = write_config(dir.path(), "");
    for (name, says) in [
        ("SWITCHYARD__SEVER__BIND", "SWITCHYARD__SEVER__"),
        ("SWITCHYARD__SERVER__BNID", "SWITCHYARD__SERVER__BNID"),
    ] {
        let output = switchyard(&["--config", &config, "migrate"], &[(name, "127.0.0.1:1")]);
        assert_eq!(output.status.code(), Some(2), "{name}: {}", stderr(&output));
        assert!(
            stderr(&output).contains(says),
            "{name}: {}",
            stderr(&output)
        );
    }
    // An environment override is checked the same way.
    let config = write_config(dir.path(), "");
    let output = switchyard(
        &["--config", &config, "migrate"],
        &[("SWITCHYARD__STORAGE__MAX_BATCH_EVENTS", "0")],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("storage.max_batch_events"),
        "{}",
        stderr(&output)
    );
    // A missing file.
    let output = switchyard(
        &["--config", "/nonexistent/switchyard.toml", "migrate"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("/nonexistent/switchyard.toml"));
}

#[test]
fn an_unreachable_database_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "[database]\nconnect_timeout = \"2s\"\n");
    // Nothing listens on port 1; the password must not be printed.
    let output = switchyard(
        &["--config", &config, "migrate"],
        &[(
            "SWITCHYARD__DATABASE__URL",
            "postgres://sy:hunter2@127.0.0.1:1/sy",
        )],
    );
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let err = stderr(&output);
    assert!(
        err.contains("cannot open the database postgres://sy:***@127.0.0.1:1/sy"),
        "{err}"
    );
    // What failed, not a pool's "timed out".
    assert!(err.contains("is PostgreSQL running"), "{err}");
    assert!(
        !err.contains("hunter2") && !err.contains("panicked"),
        "{err}"
    );

    // A SQLite file that cannot be created.
    let output = switchyard(
        &["--config", &config, "migrate"],
        &[(
            "SWITCHYARD__DATABASE__URL",
            "sqlite:///proc/switchyard/x.db?mode=rwc",
        )],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("/proc/switchyard"),
        "{}",
        stderr(&output)
    );
    assert!(!stderr(&output).contains("panicked"));
}

#[actix_web::test]
async fn log_verify_and_replay_commands() {
    let db = TestDb::new().await;
    let key_path = db.dir.path().join("signing.key");
    {
        let app = crate::helpers::spawn_app_with(
            TestDb {
                url: db.url.clone(),
                dir: tempfile::tempdir().expect("dir"),
            },
            |c| c.keys.path = key_path.clone(),
        )
        .await;
        for i in 0..10 {
            app.log
                .append(vec![message("a.example", &format!("e{i}"))])
                .await
                .expect("append");
        }
        app.server.stop(true).await;
    }
    let config = write_config(db.dir.path(), "");
    let key = db.dir.path().join("signing.key").display().to_string();
    let env = [
        ("SWITCHYARD__DATABASE__URL", db.url.as_str()),
        ("SWITCHYARD__KEYS__PATH", key.as_str()),
    ];

    let output = switchyard(&["--config", &config, "log", "verify"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).contains("chain ok: 11 entries"));

    let output = switchyard(&["--config", &config, "replay"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        stdout.contains("replayed 11 log entries") && stdout.contains("projections are identical"),
        "{stdout}"
    );

    let raw = Database::connect(&db.url).await.expect("raw");
    raw.execute_unprepared("UPDATE events SET origin_ts = origin_ts + 1 WHERE seq = 6")
        .await
        .expect("tamper");
    let output = switchyard(&["--config", &config, "log", "verify"], &env);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("chain broken at seq 6"),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// `switchyard serve` on a SQLite file in `dir`, port 0, JSON logs at info: the child, its
/// stderr lines (drained on a thread) and the port from its "listening" line.
fn serve(dir: &std::path::Path) -> (std::process::Child, std::sync::mpsc::Receiver<String>, u16) {
    let config = write_config(dir, "[server]\nbind = \"127.0.0.1:0\"\n");
    let url = format!("sqlite://{}?mode=rwc", dir.join("db.sqlite").display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["--config", &config, "serve"])
        .env("SWITCHYARD__DATABASE__URL", &url)
        .env("SWITCHYARD__KEYS__PATH", dir.join("signing.key"))
        .env("RUST_LOG", "info")
        .env("SWITCHYARD__LOG__FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let port = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("the server did not start");
        if line.contains("switchyard is listening") {
            let line: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
            break u16::try_from(line["port"].as_u64().expect("a port")).expect("a port number");
        }
    };
    (child, lines, port)
}

fn sigterm(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[test]
fn sigterm_stops_the_server_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, lines, _) = serve(dir.path());
    sigterm(&child);
    let exit = child.wait().expect("wait");
    let rest: Vec<String> = lines.iter().collect();
    assert!(exit.success(), "exit {exit:?}: {rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("event log drained")),
        "{rest:?}"
    );
}

/// SIGTERM with a WebSocket open: the socket gets the resumable close (4000) within a
/// second, and the process exits at once rather than after `server.shutdown_timeout`.
#[actix_web::test]
async fn sigterm_closes_open_sockets_with_4000_at_once_and_exits_promptly() {
    use awc::ws::{Frame, Message};
    use futures_util::{SinkExt, StreamExt};

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, lines, port) = serve(dir.path());
    let base = format!("http://127.0.0.1:{port}");
    let client = awc::Client::default();
    let mut registered = client
        .post(format!("{base}/api/v1/auth/register"))
        .send_json(&serde_json::json!({"username": "alice", "password": "correct horse"}))
        .await
        .expect("register");
    assert_eq!(registered.status(), 201);
    let token = registered.json::<serde_json::Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let (_, mut ws) = client
        .ws(format!("ws://127.0.0.1:{port}/ws"))
        .connect()
        .await
        .expect("upgrade");
    let identify = serde_json::json!({"n": "core", "op": 2, "d": {"token": token}});
    ws.send(Message::Text(identify.to_string().into()))
        .await
        .expect("identify");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame in 10 s")
            .expect("open")
            .expect("a frame");
        if let Frame::Text(text) = frame {
            let frame: serde_json::Value = serde_json::from_slice(&text).expect("json");
            if frame["n"] == "chat" && frame["op"] == 2 {
                break;
            }
        }
    }

    let started = Instant::now();
    sigterm(&child);
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Frame::Close(reason)))) => break reason.map(|r| u16::from(r.code)),
            Ok(Some(Ok(_))) => continue,
            other => panic!("no close frame: {:?}", other.map(|f| f.map(|f| f.is_ok()))),
        }
    };
    assert_eq!(code, Some(4000));
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "closed after {:?}",
        started.elapsed()
    );
    let exited = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still running 5 s after SIGTERM (shutdown_timeout is 30 s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "exit {exited:?}");
    let rest: Vec<String> = lines.try_iter().collect();
    assert!(
        rest.iter()
            .any(|l| l.contains("closing gateway sockets with 4000")),
        "{rest:?}"
    );
}

#[test]
fn keys_rotate_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), "");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("db.sqlite").display()
    );
    let key_path = dir.path().join("signing.key");
    let key_path = key_path.display().to_string();
    let env = [
        ("SWITCHYARD__DATABASE__URL", url.as_str()),
        ("SWITCHYARD__KEYS__PATH", key_path.as_str()),
    ];

    let output = switchyard(&["--config", &config, "migrate"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    // `migrate` does not create a key; the first rotation starts from a generated one.
    let output = switchyard(&["--config", &config, "keys", "rotate"], &env);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(stdout.starts_with("rotated: ed25519:"), "{stdout}");
    let key = switchyard::federation::signing::ServerKey::load(std::path::Path::new(&key_path))
        .expect("key file");
    assert!(
        stdout.contains(&format!("rotated: {} is the signing key now", key.key_id())),
        "{stdout}"
    );
    assert!(stdout.contains("issued root ID-Cert serial "), "{stdout}");
    // The log verifies and holds the rotation and the new key's ID-Cert.
    let output = switchyard(&["--config", &config, "log", "verify"], &env);
    assert!(String::from_utf8_lossy(&output.stdout).contains("chain ok: 2 entries"));
}
