//! Crash safety: a child process appends under load and is killed with SIGKILL at random
//! moments. After each kill every acknowledged append is in the log, `seq` has no gap and the
//! chain verifies, and so do the Merkle tree (recomputed and from its tiles) and the latest
//! checkpoint; the next child continues the same log.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::Rng;

use crate::helpers::TestDb;

const ROUNDS: usize = 12;

fn acknowledged(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // A line without its newline was being written at the kill: it was never reported.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete.lines().map(str::to_owned).collect()
}

#[actix_web::test]
async fn acknowledged_appends_survive_sigkill() {
    let db = TestDb::new().await;
    let acks = db.dir.path().join("acks.txt");
    let mut total_acked = 0;
    let mut checkpoints = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard-bench"))
            .args(["crash-writer", "--database-url", &db.url, "--acks"])
            .arg(&acks)
            .args(["--prefix", &format!("r{round}"), "--appenders", "32"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the writer");
        // Wait until it has started appending, then kill it at a random moment.
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut ready)
            .expect("ready line");
        assert_eq!(ready.trim(), "ready", "the writer did not start");
        let pause = rand::thread_rng().gen_range(20..400);
        std::thread::sleep(Duration::from_millis(pause));
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");

        let store = db.store().await;
        let acked = acknowledged(&acks);
        assert!(
            acked.len() > total_acked,
            "round {round}: no progress since the last round"
        );
        total_acked = acked.len();
        let mut present = HashSet::new();
        let mut after = 0;
        loop {
            let page = store.read_after(after, 10_000).await.expect("read");
            let Some(last) = page.last() else { break };
            after = last.seq;
            present.extend(page.into_iter().map(|e| e.event_id));
        }
        let lost: Vec<_> = acked
            .iter()
            .filter(|id| !present.contains(*id))
            .take(5)
            .collect();
        assert!(
            lost.is_empty(),
            "round {round}: acknowledged appends lost: {lost:?}"
        );
        // The chain, the tree recomputed from the entries and read from the tiles, and the
        // latest checkpoint's signature and root all verify; the tiles cover the whole log.
        let key =
            switchyard::federation::signing::ServerKey::load(&db.dir.path().join("signing.key"))
                .expect("the writer's key");
        let report = store
            .verify_log("crash.test/log", &[key.verifying_key().to_bytes()])
            .await
            .expect("verify");
        assert_eq!(report.chain.first_bad, None, "round {round}");
        assert_eq!(report.errors, Vec::<String>::new(), "round {round}");
        assert_eq!(
            report.chain.verified, after,
            "round {round}: seq must be gap-free"
        );
        assert_eq!(
            store.tree_size().await.expect("tree size"),
            after,
            "round {round}"
        );
        checkpoints += u64::from(report.checkpoint_size.is_some());
        store.close().await.expect("close");
    }
    assert!(checkpoints > 0, "no round left a checkpoint to verify");
}
