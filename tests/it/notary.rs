//! The notary against other in-process instances over loopback.

use actix_web::{web, App, HttpResponse, HttpServer};
use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};
use switchyard::federation::signing::{unb64, verify_json, ServerKey};

use crate::helpers::{spawn_app_with, TestApp, TestDb, STARTUP_EVENTS};

async fn origin(name: &'static str) -> TestApp {
    spawn_app_with(TestDb::new().await, move |c| c.server.name = name.into()).await
}

async fn notary(db: TestDb, peers: Vec<(&str, String)>) -> TestApp {
    let peers: Vec<(String, String)> = peers.into_iter().map(|(n, a)| (n.to_owned(), a)).collect();
    spawn_app_with(db, move |c| {
        c.server.name = "notary.test".into();
        for (name, address) in peers {
            c.federation.resolve.insert(name, address);
        }
    })
    .await
}

async fn get_json(url: String) -> (u16, Value) {
    let mut res = awc::Client::default()
        .get(url)
        .send()
        .await
        .expect("request");
    (res.status().as_u16(), res.json().await.expect("json"))
}

async fn post_json(url: String, body: &str) -> (u16, Value) {
    let mut res = awc::Client::default()
        .post(url)
        .insert_header(("Content-Type", "application/json"))
        .send_body(body.to_owned())
        .await
        .expect("request");
    (res.status().as_u16(), res.json().await.expect("json"))
}

/// The value of one sample of `/metrics` (0 when absent).
async fn metric(app: &TestApp, sample: &str) -> u64 {
    let mut res = awc::Client::default()
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    let text = String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8");
    text.lines()
        .find_map(|line| {
            line.strip_prefix(sample)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0)
}

fn key_of(response: &Value, key_id: &str) -> VerifyingKey {
    let bytes: [u8; 32] = unb64(
        response["verify_keys"][key_id]["key"]
            .as_str()
            .expect("key"),
    )
    .expect("b64")
    .try_into()
    .expect("32 bytes");
    VerifyingKey::from_bytes(&bytes).expect("key")
}

async fn own_key(app: &TestApp) -> (String, VerifyingKey) {
    let (_, well_known) = get_json(format!("{}/.well-known/switchyard-server", app.address)).await;
    let key_id = well_known["key_id"].as_str().expect("key_id").to_owned();
    let bytes: [u8; 32] = unb64(well_known["signing_key_public"].as_str().expect("key"))
        .expect("b64")
        .try_into()
        .expect("32");
    (key_id, VerifyingKey::from_bytes(&bytes).expect("key"))
}

const FETCHED_OK: &str = "switchyard_notary_fetches_total{result=\"ok\"}";
const UNREACHABLE: &str = "switchyard_notary_fetches_total{result=\"unreachable\"}";

#[actix_web::test]
async fn fetch_cache_stale_and_restart() {
    let b = origin("b.test").await;
    let db = TestDb::new().await;
    let url = db.url.clone();
    let a = notary(db, vec![("b.test", b.address.clone())]).await;
    let (a_key_id, a_key) = own_key(&a).await;

    // Fresh fetch: B's own response, co-signed by the notary.
    let (status, body) = get_json(format!("{}/_matrix/key/v2/query/b.test", a.address)).await;
    assert_eq!(status, 200, "{body}");
    let responses = body["server_keys"].as_array().expect("server_keys");
    assert_eq!(responses.len(), 1);
    let response = &responses[0];
    assert_eq!(response["server_name"], "b.test");
    let (b_key_id, b_key) = own_key(&b).await;
    assert_eq!(key_of(response, &b_key_id), b_key);
    verify_json(response, "b.test", &b_key_id, &b_key).expect("B's own signature");
    verify_json(response, "notary.test", &a_key_id, &a_key).expect("the notary's co-signature");
    assert_eq!(metric(&a, FETCHED_OK).await, 1);

    // Cache hit: no second fetch.
    let (_, again) = get_json(format!("{}/_matrix/key/v2/query/b.test", a.address)).await;
    assert_eq!(
        again["server_keys"][0]["valid_until_ts"],
        response["valid_until_ts"]
    );
    assert_eq!(metric(&a, FETCHED_OK).await, 1);
    assert_eq!(
        metric(
            &a,
            "switchyard_notary_requests_total{outcome=\"cache_hit\"}"
        )
        .await,
        1
    );

    // A minimum beyond the cached validity forces a refetch (POST form).
    let beyond = response["valid_until_ts"].as_i64().expect("ts") + 1;
    let (status, _) = post_json(
        format!("{}/_matrix/key/v2/query", a.address),
        &json!({"server_keys": {"b.test": {b_key_id.clone(): {"minimum_valid_until_ts": beyond}}}})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(metric(&a, FETCHED_OK).await, 2);

    // Origin stopped: a refetch fails and the last good response is served.
    b.server.stop(true).await;
    let (_, stale) = get_json(format!(
        "{}/_matrix/key/v2/query/b.test?minimum_valid_until_ts={}",
        a.address,
        i64::MAX / 2
    ))
    .await;
    assert_eq!(
        stale["server_keys"].as_array().map(Vec::len),
        Some(1),
        "{stale}"
    );
    assert_eq!(stale["server_keys"][0]["server_name"], "b.test");
    assert_eq!(metric(&a, UNREACHABLE).await, 1);
    // Within the retry backoff the origin is not tried again; the stale answer stands.
    let (_, stale_again) = get_json(format!(
        "{}/_matrix/key/v2/query/b.test?minimum_valid_until_ts={}",
        a.address,
        i64::MAX / 2
    ))
    .await;
    assert_eq!(stale_again["server_keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(metric(&a, UNREACHABLE).await, 1);
    assert_eq!(
        metric(&a, "switchyard_notary_requests_total{outcome=\"stale\"}").await,
        2
    );

    // Restart the notary: the cache is in its log, so B's keys are still known.
    a.server.stop(true).await;
    // (The first instance's database file lives in `a`'s temporary directory, kept alive here.)
    let restarted = notary(
        TestDb {
            url,
            dir: tempfile::tempdir().expect("dir"),
        },
        vec![("b.test", b.address.clone())],
    )
    .await;
    let (_, after) = get_json(format!("{}/_matrix/key/v2/query/b.test", restarted.address)).await;
    assert_eq!(
        after["server_keys"].as_array().map(Vec::len),
        Some(1),
        "{after}"
    );
    verify_json(&after["server_keys"][0], "b.test", &b_key_id, &b_key).expect("still B's response");
}

#[actix_web::test]
async fn a_bad_self_signature_is_refused_and_not_cached() {
    // A server whose response was changed after signing.
    let key = ServerKey::generate();
    let mut response = json!({
        "server_name": "evil.test",
        "verify_keys": { key.key_id(): { "key": key.public_b64() } },
        "old_verify_keys": {},
        "valid_until_ts": 4_000_000_000_000i64,
    });
    key.sign_json("evil.test", &mut response).expect("sign");
    response["valid_until_ts"] = json!(4_000_000_000_001i64);
    let server = HttpServer::new(move || {
        let response = response.clone();
        App::new().route(
            "/_matrix/key/v2/server",
            web::get().to(move || {
                let response = response.clone();
                async move { HttpResponse::Ok().json(response) }
            }),
        )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .expect("bind");
    let address = format!("http://{}", server.addrs()[0]);
    let running = server.run();
    let handle = running.handle();
    actix_web::rt::spawn(running);

    let a = notary(TestDb::new().await, vec![("evil.test", address)]).await;
    let (status, body) = get_json(format!("{}/_matrix/key/v2/query/evil.test", a.address)).await;
    assert_eq!((status, body), (200, json!({"server_keys": []})));
    assert_eq!(
        metric(&a, "switchyard_notary_fetches_total{result=\"invalid\"}").await,
        1
    );
    assert_eq!(
        a.store.head().await.expect("head").0,
        STARTUP_EVENTS,
        "nothing recorded"
    );
    assert!(a
        .store
        .remote_server_keys("evil.test")
        .await
        .expect("read")
        .is_none());
    handle.stop(true).await;
}

#[actix_web::test]
async fn unknown_servers_are_omitted_and_bad_input_is_refused() {
    // Nothing listens on port 1.
    let a = notary(
        TestDb::new().await,
        vec![("gone.test", "http://127.0.0.1:1".into())],
    )
    .await;
    let (status, body) = get_json(format!("{}/_matrix/key/v2/query/gone.test", a.address)).await;
    assert_eq!((status, body), (200, json!({"server_keys": []})));
    let fetch_attempts = metric(&a, UNREACHABLE).await;
    assert_eq!(fetch_attempts, 1);

    // Our own name is answered from our key server.
    let (_, own) = get_json(format!("{}/_matrix/key/v2/query/notary.test", a.address)).await;
    assert_eq!(own["server_keys"][0]["server_name"], "notary.test");

    let get_cases = [
        ("/_matrix/key/v2/query/bad%20name", "SY_INVALID_PARAM"),
        (
            "/_matrix/key/v2/query/b.test?minimum_valid_until_ts=soon",
            "SY_INVALID_PARAM",
        ),
        (
            "/_matrix/key/v2/query/b.test?minimum_valid_until_ts=-5",
            "SY_INVALID_PARAM",
        ),
    ];
    for (path, errcode) in get_cases {
        let (status, body) = get_json(format!("{}{path}", a.address)).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some(errcode)),
            "{path}"
        );
    }
    let post_cases = [
        ("{not json", "SY_BAD_JSON"),
        ("[]", "SY_BAD_JSON"),
        (r#"{"server_keys": []}"#, "SY_BAD_JSON"),
        (r#"{"server_keys": {"b.test": []}}"#, "SY_BAD_JSON"),
        (
            r#"{"server_keys": {"b.test": {"ed25519:a": 5}}}"#,
            "SY_BAD_JSON",
        ),
        (
            r#"{"server_keys": {"b.test": {"ed25519:a": {"minimum_valid_until_ts": "x"}}}}"#,
            "SY_INVALID_PARAM",
        ),
        (
            r#"{"server_keys": {"b.test": {"ed25519:a": {"minimum_valid_until_ts": 1.5}}}}"#,
            "SY_INVALID_PARAM",
        ),
        (r#"{"server_keys": {"bad name": {}}}"#, "SY_INVALID_PARAM"),
    ];
    for (body, errcode) in post_cases {
        let (status, answer) = post_json(format!("{}/_matrix/key/v2/query", a.address), body).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (400, Some(errcode)),
            "{body}"
        );
        assert!(answer["error"].is_string());
    }
    // None of them fetched or wrote anything.
    assert_eq!(metric(&a, UNREACHABLE).await, fetch_attempts);
    assert_eq!(metric(&a, FETCHED_OK).await, 0);
    assert_eq!(a.store.head().await.expect("head").0, STARTUP_EVENTS);
}
