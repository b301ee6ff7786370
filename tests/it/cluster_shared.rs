//! What the nodes of a cluster share besides the log (DESIGN §7): per-origin quotas that hold
//! for the cluster as a whole, and tickets and challenges any node redeems, once. The
//! components are driven directly, two of each over one PostgreSQL database (two `Store`s act
//! as two nodes); the quota tests also print what the shared bucket costs in round trips.
//! The last test goes through HTTP on two real nodes (`cluster::Cluster`): a ticket and a
//! challenge issued by one node are used up by the other.
//!
//! PostgreSQL only: without `SWITCHYARD_TEST_POSTGRES_URL` each test prints why and passes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use switchyard::clock::Clock;
use switchyard::config::{FederationConfig, IdentityConfig};
use switchyard::federation::inbox::origin::{Admit, Limited, Origins, Policy, PolicySource};
use switchyard::federation::inbox::shared_quota::{batch, SharedBuckets};
use switchyard::gateway::tickets::Tickets;
use switchyard::identity::challenges::Challenges;
use switchyard::identity::IdentityError;
use switchyard::store::Store;
use switchyard::telemetry::Metrics;

use crate::cluster::Cluster;
use crate::gateway::{call, register, ticket, Got, Ws};
use crate::helpers::TestDb;

/// The database and two stores on it, or `None` (after saying why) without PostgreSQL.
async fn two_nodes() -> Option<(TestDb, Store, Store)> {
    match std::env::var("SWITCHYARD_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => {}
        _ => {
            eprintln!("skipped: cluster_shared tests need PostgreSQL (set SWITCHYARD_TEST_POSTGRES_URL; .ci/run does)");
            return None;
        }
    }
    let db = TestDb::new().await;
    let first = db.store().await;
    let second = db.store().await;
    Some((db, first, second))
}

/// A connection of the test's own, to look at (and age) the shared tables.
async fn sql(db: &TestDb) -> DatabaseConnection {
    Database::connect(&db.url).await.expect("connect")
}

async fn count(conn: &DatabaseConnection, query: &str) -> i64 {
    conn.query_one(Statement::from_string(
        conn.get_database_backend(),
        query.to_owned(),
    ))
    .await
    .expect("query")
    .expect("a row")
    .try_get_by_index::<i64>(0)
    .expect("a count")
}

async fn run(conn: &DatabaseConnection, statement: &str) {
    conn.execute_unprepared(statement).await.expect("statement");
}

/// One node's inbox quotas over `store`, with its own metrics.
fn node_quotas(store: &Store, rate_per_minute: u32, burst: u32) -> (Origins, Arc<Metrics>) {
    let config = FederationConfig {
        default_rate_per_minute: rate_per_minute,
        default_burst: burst,
        ..FederationConfig::default()
    };
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let origins =
        Origins::new(&config, vec![]).in_cluster(SharedBuckets::new(store.clone(), &metrics));
    (origins, metrics)
}

fn round_trips(metrics: &Metrics) -> u64 {
    ["granted", "short", "failed"]
        .iter()
        .map(|result| {
            metrics
                .inbox_bucket_refills
                .with_label_values(&[result])
                .get()
        })
        .sum::<u64>()
        + metrics.inbox_bucket_returns.get()
}

async fn admit(origins: &Origins, origin: &str, charge: u32) -> Result<Vec<bool>, Limited> {
    origins
        .actor(origin)
        .send(Admit {
            charge,
            event_ids: vec![],
        })
        .await
        .expect("the origin actor answers")
}

/// Sends one event at a time until `until`, pausing briefly when refused; answers what was
/// admitted and what was offered.
async fn flood(origins: &Origins, origin: &str, until: Instant) -> (u64, u64) {
    let (mut admitted, mut offered) = (0, 0);
    while Instant::now() < until {
        offered += 1;
        match admit(origins, origin, 1).await {
            Ok(_) => admitted += 1,
            Err(Limited::RetryAfter(wait)) => {
                actix_web::rt::time::sleep(wait.min(Duration::from_millis(2))).await
            }
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
    }
    (admitted, offered)
}

#[actix_web::test]
async fn two_nodes_together_admit_within_ten_percent_of_the_quota() {
    let Some((_db, first, second)) = two_nodes().await else {
        return;
    };
    // 100 events a second, burst 100 (a batch of 5).
    let (rate_per_minute, burst) = (6_000, 100);
    let (a, metrics_a) = node_quotas(&first, rate_per_minute, burst);
    let (b, metrics_b) = node_quotas(&second, rate_per_minute, burst);
    let started = Instant::now();
    let until = started + Duration::from_secs(3);
    let ((admitted_a, offered_a), (admitted_b, offered_b)) = tokio::join!(
        flood(&a, "busy.example", until),
        flood(&b, "busy.example", until)
    );
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted_a + admitted_b;
    let allowed = f64::from(burst) + f64::from(rate_per_minute) / 60.0 * elapsed;
    let trips = round_trips(&metrics_a) + round_trips(&metrics_b);
    println!(
        "flood, 2 nodes, {rate_per_minute}/min burst {burst} (batch {}), {elapsed:.2} s: \
         admitted {admitted} ({admitted_a} + {admitted_b}) of {allowed:.0} allowed, \
         {} offered; {trips} round trips = {:.0} per 1,000 admitted, {:.1} per 1,000 offered",
        batch(burst),
        offered_a + offered_b,
        trips as f64 * 1000.0 / admitted as f64,
        trips as f64 * 1000.0 / (offered_a + offered_b) as f64,
    );
    println!(
        "  takes granted {} short {}, returns {}",
        metrics_a
            .inbox_bucket_refills
            .with_label_values(&["granted"])
            .get()
            + metrics_b
                .inbox_bucket_refills
                .with_label_values(&["granted"])
                .get(),
        metrics_a
            .inbox_bucket_refills
            .with_label_values(&["short"])
            .get()
            + metrics_b
                .inbox_bucket_refills
                .with_label_values(&["short"])
                .get(),
        metrics_a.inbox_bucket_returns.get() + metrics_b.inbox_bucket_returns.get()
    );
    // Never more than the bucket gave (the database's clock may run a hair apart from ours);
    // never less than 90 % of it.
    assert!(
        (admitted as f64) <= allowed + 1.0,
        "admitted {admitted}, allowed {allowed:.1}"
    );
    assert!(
        (admitted as f64) >= 0.9 * allowed,
        "admitted {admitted}, allowed {allowed:.1}"
    );
    assert!(
        admitted_a > 0 && admitted_b > 0,
        "both nodes admit: {admitted_a} + {admitted_b}"
    );
    // A flood costs round trips per batch refilled, not per request.
    assert!(
        trips < (offered_a + offered_b) / 4,
        "{trips} round trips for {} requests",
        offered_a + offered_b
    );
}

#[actix_web::test]
async fn within_the_quota_a_node_goes_to_the_database_once_per_batch() {
    let Some((_db, first, second)) = two_nodes().await else {
        return;
    };
    for (rate_per_minute, burst, events) in [(100, 100, 100u64), (6_000, 1_000, 1_000)] {
        let (a, metrics_a) = node_quotas(&first, rate_per_minute, burst);
        let (b, metrics_b) = node_quotas(&second, rate_per_minute, burst);
        let origin = format!("steady-{burst}.example");
        for i in 0..events {
            let node = if i % 2 == 0 { &a } else { &b };
            admit(node, &origin, 1)
                .await
                .expect("within the burst, admitted");
        }
        let trips = round_trips(&metrics_a) + round_trips(&metrics_b);
        println!(
            "within quota, 2 nodes alternating, {rate_per_minute}/min burst {burst} (batch {}): \
             {events} events, {trips} round trips = {:.0} per 1,000 events",
            batch(burst),
            trips as f64 * 1000.0 / events as f64
        );
        // Each node takes a batch at a time (and may give one back once).
        let per_node = events / 2;
        let most = 2 * (per_node.div_ceil(u64::from(batch(burst))) + 1);
        assert!(trips <= most, "{trips} round trips, at most {most}");
    }
    // What one round trip costs: a take, timed on its own.
    let takes = 200u32;
    let started = Instant::now();
    for _ in 0..takes {
        first
            .take_origin_tokens("timed.example", 6_000_000, 1_000_000, 1, 1)
            .await
            .expect("take");
    }
    println!(
        "one take (a round trip to the local PostgreSQL, debug build): {:.0} µs on average over {takes}",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(takes)
    );
}

#[actix_web::test]
async fn an_operator_policy_applies_to_the_shared_bucket() {
    let Some((_db, first, second)) = two_nodes().await else {
        return;
    };
    // Slow refill: a token a minute, burst 20 (a batch of 1).
    let (a, _) = node_quotas(&first, 1, 20);
    let (b, _) = node_quotas(&second, 1, 20);
    admit(&a, "quiet.example", 1).await.expect("admitted");
    // A request larger than a batch takes what it needs.
    admit(&b, "quiet.example", 18).await.expect("admitted");
    match admit(&a, "quiet.example", 2).await {
        Err(Limited::RetryAfter(wait)) => assert!(wait > Duration::from_secs(30), "{wait:?}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(matches!(
        admit(&b, "quiet.example", 21).await,
        Err(Limited::OverBurst { burst: 20 })
    ));
    // The operator raises the quota (as the log delivers it to every node).
    let raised = Policy {
        rate_per_minute: 60_000,
        burst: 200,
        blocked: false,
        source: PolicySource::Admin,
    };
    assert!(a.apply_policy("quiet.example", raised, 10));
    assert!(b.apply_policy("quiet.example", raised, 10));
    // The bucket refills at the new rate and holds up to the new burst.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match admit(&a, "quiet.example", 150).await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                actix_web::rt::time::sleep(Duration::from_millis(20)).await
            }
            Err(other) => panic!("the raised quota never admitted 150: {other:?}"),
        }
    }
}

#[actix_web::test]
async fn an_allowance_a_node_stops_using_goes_back_to_the_bucket() {
    let Some((db, first, _second)) = two_nodes().await else {
        return;
    };
    let conn = sql(&db).await;
    // A token a minute, burst 100: the first take is a batch of 5, one of them spent.
    let (a, metrics_a) = node_quotas(&first, 1, 100);
    admit(&a, "idle.example", 1).await.expect("admitted");
    let tokens = || {
        count(
            &conn,
            "SELECT floor(tokens)::bigint FROM origin_buckets WHERE origin = 'idle.example'",
        )
    };
    assert_eq!(tokens().await, 95);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics_a.inbox_bucket_returns.get() == 0 {
        assert!(
            Instant::now() < deadline,
            "the unused allowance was never given back"
        );
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tokens().await, 99);
    assert_eq!(metrics_a.inbox_bucket_returns.get(), 1);
}

#[actix_web::test]
async fn a_bucket_that_cannot_be_reached_answers_unavailable() {
    let Some((_db, first, _second)) = two_nodes().await else {
        return;
    };
    let (a, metrics_a) = node_quotas(&first, 100, 100);
    admit(&a, "cut.example", 1).await.expect("admitted");
    first.clone().close().await.expect("close the pool");
    // The allowance held still pays; past it the bucket must be asked, and cannot be.
    for _ in 0..4 {
        admit(&a, "cut.example", 1)
            .await
            .expect("paid from the allowance");
    }
    assert_eq!(admit(&a, "cut.example", 1).await, Err(Limited::Unavailable));
    assert_eq!(
        metrics_a
            .inbox_bucket_refills
            .with_label_values(&["failed"])
            .get(),
        1
    );
}

#[actix_web::test]
async fn a_ticket_issued_on_one_node_is_redeemed_on_another_exactly_once() {
    let Some((db, first, second)) = two_nodes().await else {
        return;
    };
    let conn = sql(&db).await;
    let lifetime = Duration::from_secs(30);
    let a = Tickets::in_cluster(lifetime, 2, first);
    let b = Tickets::in_cluster(lifetime, 2, second);

    let ticket = a
        .issue("alice@cluster.test", "s1", 7)
        .await
        .expect("stored")
        .expect("issued");
    // The table keeps a hash of it, not the ticket.
    assert_eq!(
        count(
            &conn,
            &format!("SELECT count(*) FROM cluster_tickets WHERE ticket = '{ticket}'")
        )
        .await,
        0
    );
    assert_eq!(
        count(&conn, "SELECT count(*) FROM cluster_tickets").await,
        1
    );
    let grant = b
        .redeem(&ticket)
        .await
        .expect("reached")
        .expect("redeemed on the other node");
    assert_eq!(
        (
            grant.fid.as_str(),
            grant.session_id.as_str(),
            grant.created_seq
        ),
        ("alice@cluster.test", "s1", 7)
    );
    assert!(a.redeem(&ticket).await.expect("reached").is_none());
    assert!(b.redeem(&ticket).await.expect("reached").is_none());
    assert!(a.redeem("syt_unknown").await.expect("reached").is_none());

    // Two nodes redeeming one ticket at once: one wins.
    for round in 0..20 {
        let ticket = a
            .issue("bob@cluster.test", &format!("race{round}"), 1)
            .await
            .expect("stored")
            .expect("issued");
        let (on_a, on_b) = tokio::join!(a.redeem(&ticket), b.redeem(&ticket));
        let wins = [on_a.expect("reached"), on_b.expect("reached")]
            .iter()
            .filter(|grant| grant.is_some())
            .count();
        assert_eq!(wins, 1, "round {round}");
    }

    // A session's live tickets are capped for the cluster, whichever node issues them.
    for node in [&a, &b] {
        node.issue("carol@cluster.test", "s2", 1)
            .await
            .expect("stored")
            .expect("issued");
    }
    assert!(b
        .issue("carol@cluster.test", "s2", 1)
        .await
        .expect("stored")
        .is_none());

    // An expired ticket is refused everywhere.
    let old = a
        .issue("dave@cluster.test", "s3", 1)
        .await
        .expect("stored")
        .expect("issued");
    run(
        &conn,
        "UPDATE cluster_tickets SET expires_ms = expires_ms - 60000 WHERE session_id = 's3'",
    )
    .await;
    assert!(b.redeem(&old).await.expect("reached").is_none());
    assert!(a.redeem(&old).await.expect("reached").is_none());

    // A session that ends on one node: its tickets go, for every node.
    let doomed = a
        .issue("erin@cluster.test", "s4", 1)
        .await
        .expect("stored")
        .expect("issued");
    b.session_ended("s4");
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(
        &conn,
        "SELECT count(*) FROM cluster_tickets WHERE session_id = 's4'",
    )
    .await
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "the ended session's tickets stayed"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(a.redeem(&doomed).await.expect("reached").is_none());
}

fn identity_config(max_challenges: u64) -> IdentityConfig {
    IdentityConfig {
        max_challenges,
        ..IdentityConfig::default()
    }
}

#[actix_web::test]
async fn a_challenge_issued_on_one_node_is_redeemed_on_another_exactly_once() {
    let Some((db, first, second)) = two_nodes().await else {
        return;
    };
    let conn = sql(&db).await;
    let clock = Arc::new(Clock::default());
    let a = Challenges::in_cluster(&identity_config(1_000), clock.clone(), first);
    let b = Challenges::in_cluster(&identity_config(1_000), clock.clone(), second);
    let address: IpAddr = "192.0.2.10".parse().expect("ip");

    let issued = a.issue(address).await.expect("issued");
    assert_eq!(issued.challenge.len(), 64);
    let now_secs = clock.now_secs();
    assert!(
        (issued.expires - now_secs - 300).abs() <= 2,
        "expires {} at {now_secs}",
        issued.expires
    );
    b.redeem(&issued.challenge)
        .await
        .expect("redeemed on the other node");
    for node in [&a, &b] {
        assert!(matches!(
            node.redeem(&issued.challenge).await,
            Err(IdentityError::BadChallenge(_))
        ));
    }
    assert!(matches!(
        a.redeem("not-one-of-ours").await,
        Err(IdentityError::BadChallenge(_))
    ));

    for round in 0..20 {
        let challenge = b.issue(address).await.expect("issued").challenge;
        let (on_a, on_b) = tokio::join!(a.redeem(&challenge), b.redeem(&challenge));
        assert_eq!(
            usize::from(on_a.is_ok()) + usize::from(on_b.is_ok()),
            1,
            "round {round}"
        );
    }

    let old = a.issue(address).await.expect("issued").challenge;
    run(
        &conn,
        "UPDATE cluster_challenges SET expires_ms = expires_ms - 600000",
    )
    .await;
    match b.redeem(&old).await {
        Err(IdentityError::BadChallenge(message)) => {
            assert!(message.contains("expired"), "{message}")
        }
        other => panic!("expected an expired challenge, got {other:?}"),
    }
    // The tidy-up deletes what expired.
    let fresh = a.issue(address).await.expect("issued").challenge;
    run(
        &conn,
        &format!(
            "UPDATE cluster_challenges SET expires_ms = expires_ms - 600000 \
             WHERE challenge <> '{fresh}'"
        ),
    )
    .await;
    b.tidy();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count(&conn, "SELECT count(*) FROM cluster_challenges").await > 1 {
        assert!(Instant::now() < deadline, "expired challenges stayed");
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    a.redeem(&fresh).await.expect("the live one is kept");
}

#[actix_web::test]
async fn a_node_refuses_challenges_past_the_cluster_s_bound() {
    let Some((_db, first, second)) = two_nodes().await else {
        return;
    };
    let clock = Arc::new(Clock::default());
    let a = Challenges::in_cluster(&identity_config(3), clock.clone(), first);
    let b = Challenges::in_cluster(&identity_config(3), clock, second);
    let address: IpAddr = "192.0.2.11".parse().expect("ip");
    a.issue(address).await.expect("first");
    a.issue(address).await.expect("second");
    // Node b counts the table: two outstanding, room for one.
    b.issue(address).await.expect("third");
    match b.issue(address).await {
        Err(IdentityError::Overloaded { retry_after, .. }) => assert!(retry_after >= 1),
        other => panic!("expected a refusal past the bound, got {other:?}"),
    }
}

#[actix_web::test]
async fn through_http_a_ticket_and_a_challenge_from_one_node_are_redeemed_on_another_once() {
    let Some(cluster) = Cluster::start(2).await else {
        return;
    };
    let nodes = &cluster.nodes;
    let alice = register(&nodes[0], "alice").await;
    // A ticket from node 0 opens a socket on node 1, and is used up for node 0 too.
    let issued = ticket(&nodes[0], &alice).await;
    let mut ws = Ws::hello(&nodes[1], &format!("?ticket={issued}")).await;
    ws.until(|f| f["n"] == "chat" && f["op"] == 2).await;
    let mut reused = Ws::connect(&nodes[0], &format!("?ticket={issued}")).await;
    assert!(matches!(reused.next().await, Got::Close(Some(4001))));

    // A challenge from node 0 is taken by an answer on node 1 (which then refuses the fid,
    // a later step), and is unknown to node 0 afterwards.
    let (status, body) = call(&nodes[0], "GET", "/.p2/core/v1/challenge", None, None).await;
    assert_eq!(status, 200, "{body}");
    let answer = serde_json::json!({
        "challenge": body["challenge"],
        "fid": "alice@cluster.test",
        "serial": "1",
        "signature": "00".repeat(64),
    });
    let (status, body) = call(
        &nodes[1],
        "POST",
        "/.p2/core/v1/session/auth",
        None,
        Some(answer.clone()),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_INVALID_PARAM")),
        "{body}"
    );
    let (status, body) = call(
        &nodes[0],
        "POST",
        "/.p2/core/v1/session/auth",
        None,
        Some(answer),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_BAD_CHALLENGE")),
        "{body}"
    );
}
