use std::time::Duration;

use serde_json::json;
use switchyard::core::event::EventError;
use switchyard::store::{AppendError, AppendOutcome};

use crate::helpers::{event, message, spawn_log};

#[actix_web::test]
async fn concurrent_appenders_get_gap_free_seqs_and_a_valid_chain() {
    let app = spawn_log().await;
    let appenders = 8;
    let per_appender = 1000;
    let tasks: Vec<_> = (0..appenders)
        .map(|w| {
            let log = app.log.clone();
            actix_web::rt::spawn(async move {
                let mut seqs = Vec::with_capacity(per_appender);
                for i in 0..per_appender {
                    let outcome = log
                        .append(vec![message("a.example", &format!("w{w}-{i}"))])
                        .await
                        .expect("append");
                    match outcome[..] {
                        [AppendOutcome::Appended { seq }] => seqs.push(seq),
                        ref other => panic!("unexpected outcome {other:?}"),
                    }
                }
                seqs
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.expect("task");
        // Each appender sees its own appends in increasing order.
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        all.extend(seqs);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (1..=(appenders * per_appender) as u64).collect();
    assert_eq!(all, expected, "seq must be exactly 1..8000");

    let report = app.store.verify_chain().await.expect("verify");
    assert_eq!(report.first_bad, None);
    assert_eq!(report.verified, 8000);
    let (head, hash) = app.store.head().await.expect("head");
    assert_eq!((head, hash), (8000, report.head));
}

#[actix_web::test]
async fn duplicates_return_the_first_seq_and_add_nothing() {
    let app = spawn_log().await;
    let first = app
        .log
        .append(vec![message("a.example", "e1"), message("a.example", "e2")])
        .await
        .expect("append");
    assert_eq!(
        first,
        vec![
            AppendOutcome::Appended { seq: 1 },
            AppendOutcome::Appended { seq: 2 }
        ]
    );

    // Across appends, inside one append, and the same event_id from another origin (distinct).
    let again = app
        .log
        .append(vec![
            message("a.example", "e2"),
            message("a.example", "e3"),
            message("a.example", "e3"),
            message("b.example", "e1"),
        ])
        .await
        .expect("append");
    assert_eq!(
        again,
        vec![
            AppendOutcome::Duplicate { seq: 2 },
            AppendOutcome::Appended { seq: 3 },
            AppendOutcome::Duplicate { seq: 3 },
            AppendOutcome::Appended { seq: 4 },
        ]
    );

    // Many concurrent repeats of one event: one entry, every caller told its seq.
    let repeats: Vec<_> = (0..32)
        .map(|_| {
            let log = app.log.clone();
            actix_web::rt::spawn(async move {
                log.append(vec![message("c.example", "same")])
                    .await
                    .expect("append")
            })
        })
        .collect();
    let mut appended = 0;
    for task in repeats {
        let outcome = task.await.expect("task");
        assert_eq!(outcome[0].seq(), 5);
        appended += matches!(outcome[0], AppendOutcome::Appended { .. }) as usize;
    }
    assert_eq!(appended, 1);

    let entries = app.store.read_after(0, 100).await.expect("read");
    assert_eq!(entries.len(), 5);
    assert_eq!(
        app.store.verify_chain().await.expect("verify").first_bad,
        None
    );
}

#[actix_web::test]
async fn an_invalid_event_rejects_its_whole_append_and_writes_nothing() {
    let app = spawn_log().await;
    let mut bad = message("a.example", "bad");
    bad.content = json!({"message_id": "m"}); // no body
    let err = app
        .log
        .append(vec![message("a.example", "ok"), bad])
        .await
        .expect_err("invalid");
    assert!(
        matches!(
            err,
            AppendError::Invalid {
                index: 1,
                error: EventError::BadContent { .. }
            }
        ),
        "{err:?}"
    );

    let mut unknown = message("a.example", "u");
    unknown.event_type = "message.relay".into();
    let err = app
        .log
        .append(vec![unknown])
        .await
        .expect_err("unknown type");
    assert!(matches!(
        err,
        AppendError::Invalid {
            index: 0,
            error: EventError::UnknownType(_)
        }
    ));

    let mut bad_id = message("a.example", "x");
    bad_id.event_id = "has space".into();
    let err = app.log.append(vec![bad_id]).await.expect_err("bad id");
    assert!(matches!(
        err,
        AppendError::Invalid {
            index: 0,
            error: EventError::BadEventId
        }
    ));

    assert_eq!(
        app.store.head().await.expect("head").0,
        0,
        "nothing was written"
    );
    assert!(app.store.read_after(0, 10).await.expect("read").is_empty());
}

#[actix_web::test]
async fn projections_follow_the_log() {
    use entities::{channels, members, messages};
    use sea_orm::{Database, EntityTrait, QueryOrder};

    let app = spawn_log().await;
    let o = "a.example";
    let (alice, bob) = ("alice@a.example", "bob@b.example");
    let events = vec![
        event(o, "c1", "channel.new", alice, json!({"name": "General"})),
        event(o, "i1", "channel.invite", alice, json!({"invitee": bob})),
        event(o, "j1", "channel.join", bob, json!({})),
        event(
            o,
            "m1",
            "message.new",
            bob,
            json!({"message_id": "m1", "body": "hello"}),
        ),
        event(
            o,
            "m2",
            "message.new",
            bob,
            json!({"message_id": "m2", "body": "second"}),
        ),
        // A repeated message id: the first one wins.
        event(
            o,
            "m1b",
            "message.new",
            bob,
            json!({"message_id": "m1", "body": "impostor"}),
        ),
        event(
            o,
            "m1e",
            "message.edit",
            bob,
            json!({"message_id": "m1", "body": "hello!"}),
        ),
        event(o, "m2d", "message.delete", bob, json!({"message_id": "m2"})),
        // Editing a deleted message changes nothing.
        event(
            o,
            "m2e",
            "message.edit",
            bob,
            json!({"message_id": "m2", "body": "back"}),
        ),
        event(o, "l1", "channel.leave", bob, json!({})),
    ];
    app.log.append(events).await.expect("append");

    let db = Database::connect(&app.db.url).await.expect("connect");
    let channel = channels::Entity::find().all(&db).await.expect("channels");
    assert_eq!(channel.len(), 1);
    assert_eq!(
        (
            channel[0].channel_ref.as_str(),
            channel[0].name.as_str(),
            channel[0].created_seq
        ),
        ("general@a.example", "General", 1)
    );

    let members = members::Entity::find()
        .order_by_asc(members::Column::Fid)
        .all(&db)
        .await
        .expect("members");
    let states: Vec<(&str, &str, i64)> = members
        .iter()
        .map(|m| (m.fid.as_str(), m.state.as_str(), m.updated_seq))
        .collect();
    assert_eq!(states, vec![(alice, "joined", 1), (bob, "left", 10)]);

    let messages = messages::Entity::find()
        .order_by_asc(messages::Column::MessageId)
        .all(&db)
        .await
        .expect("messages");
    assert_eq!(messages.len(), 2);
    let (m1, m2) = (&messages[0], &messages[1]);
    assert_eq!(
        (
            m1.body.as_deref(),
            m1.created_seq,
            m1.edited_seq,
            m1.deleted_seq
        ),
        (Some("hello!"), 4, Some(7), None)
    );
    assert_eq!(
        (
            m2.body.as_deref(),
            m2.created_seq,
            m2.edited_seq,
            m2.deleted_seq
        ),
        (None, 5, None, Some(8))
    );

    // And a rebuild from the log gives the same rows.
    let report = app
        .store
        .replay_into(&crate::helpers::TestDb::new().await.store().await)
        .await
        .expect("replay");
    assert!(report.identical(), "{report:?}");
}

#[actix_web::test]
async fn a_slow_subscriber_never_blocks_the_writer_and_learns_what_it_missed() {
    let db = crate::helpers::TestDb::new().await;
    let app = crate::helpers::spawn_log_with(db, |c| c.storage.publish_buffer = 4).await;
    let mut slow = app.log.subscribe();
    // 50 separate commits while the subscriber reads nothing: every append still completes.
    for i in 0..50 {
        tokio::time::timeout(
            Duration::from_secs(5),
            app.log.append(vec![message("a.example", &format!("e{i}"))]),
        )
        .await
        .expect("the writer must not wait for a subscriber")
        .expect("append");
    }
    match slow.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
            assert!(missed >= 46, "missed {missed}")
        }
        other => panic!("expected Lagged, got {other:?}"),
    }
    // What it still holds is the newest; the rest is in the log.
    let next = slow.recv().await.expect("batch");
    assert!(next.entries[0].seq > 46);
    assert_eq!(app.store.read_after(0, 1000).await.expect("read").len(), 50);
}

/// PostgreSQL only: a database that does not exist, or a wrong password, is said plainly at
/// once, not as a pool's "timed out" after `connect_timeout`.
#[actix_web::test]
async fn an_unopenable_postgres_database_is_named_at_once() {
    let Ok(admin_url) = std::env::var("SWITCHYARD_TEST_POSTGRES_URL") else {
        eprintln!("skipped: needs PostgreSQL (set SWITCHYARD_TEST_POSTGRES_URL; .ci/run does)");
        return;
    };
    let (base, _) = admin_url.rsplit_once('/').expect("a database path");
    let mut config = switchyard::config::DatabaseConfig::default();
    config.url = format!("{base}/sy_no_such_database");
    let started = std::time::Instant::now();
    let error = switchyard::store::Store::connect(&config, Default::default())
        .await
        .err()
        .expect("no such database");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let said = error.to_string();
    assert!(
        said.contains("\"sy_no_such_database\" does not exist") && said.contains("CREATE DATABASE"),
        "{said}"
    );
}
