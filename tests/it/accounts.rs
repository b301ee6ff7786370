//! Registration and login (DESIGN §5) against the real application.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, TestApp, TestDb};

async fn post(app: &TestApp, path: &str, body: &Value) -> (u16, Value) {
    let mut res = awc::Client::default()
        .post(format!("{}{path}", app.address))
        .send_json(body)
        .await
        .expect("request");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[actix_web::test]
async fn register_then_login_with_tokens_stored_only_as_hashes() {
    let app = spawn_app().await;
    let (status, body) = post(
        &app,
        "/api/v1/auth/register",
        &json!({"username": "alice", "password": "correct horse"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["fid"], "alice@localhost:8008");
    let token = body["token"].as_str().expect("token").to_owned();
    let session = body["session_id"].as_str().expect("session").to_owned();
    assert!((1..=32).contains(&session.len()));

    let (status, login) = post(
        &app,
        "/api/v1/auth/login",
        &json!({"username": "alice", "password": "correct horse"}),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["fid"], "alice@localhost:8008");
    assert_ne!(login["token"], body["token"], "a new session per login");

    // Only the hash of a token is stored, and it finds its session.
    let found = app
        .store
        .session_by_token_hash(&switchyard::identity::accounts::token_hash(&token))
        .await
        .expect("lookup")
        .expect("session");
    assert_eq!(
        (found.session_id.as_str(), found.fid.as_str()),
        (session.as_str(), "alice@localhost:8008")
    );
    let entries = app.store.read_after(0, 100).await.expect("read");
    assert!(
        entries.iter().all(|e| !e.content.get().contains(&token)),
        "no token in the log"
    );
    assert!(
        entries
            .iter()
            .all(|e| !e.content.get().contains("correct horse")),
        "no password in the log"
    );
}

#[actix_web::test]
async fn bad_registrations_and_logins_are_refused_and_write_nothing() {
    let app = spawn_app().await;
    let (status, _) = post(
        &app,
        "/api/v1/auth/register",
        &json!({"username": "bob", "password": "long enough"}),
    )
    .await;
    assert_eq!(status, 201);
    let head = app.store.head().await.expect("head").0;
    for (path, body, want, code) in [
        (
            "/api/v1/auth/register",
            json!({"username": "bob", "password": "another one"}),
            409,
            "SY_USERNAME_TAKEN",
        ),
        (
            "/api/v1/auth/register",
            json!({"username": "Bob!", "password": "long enough"}),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/auth/register",
            json!({"username": "carol", "password": "short"}),
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "/api/v1/auth/register",
            json!({"username": "carol"}),
            400,
            "SY_BAD_JSON",
        ),
        (
            "/api/v1/auth/login",
            json!({"username": "bob", "password": "wrong password"}),
            401,
            "SY_BAD_CREDENTIALS",
        ),
        (
            "/api/v1/auth/login",
            json!({"username": "nobody", "password": "long enough"}),
            401,
            "SY_BAD_CREDENTIALS",
        ),
        (
            "/api/v1/auth/login",
            json!({"username": 5, "password": "long enough"}),
            400,
            "SY_BAD_JSON",
        ),
    ] {
        let (status, answer) = post(&app, path, &body).await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (want, Some(code)),
            "{body}: {answer}"
        );
    }
    assert_eq!(
        app.store.head().await.expect("head").0,
        head,
        "nothing was written"
    );

    let closed = spawn_app_with(TestDb::new().await, |c| {
        c.server.registration_mode = switchyard::config::RegistrationMode::Closed
    })
    .await;
    let head = closed.store.head().await.expect("head").0;
    let (status, answer) = post(
        &closed,
        "/api/v1/auth/register",
        &json!({"username": "dave", "password": "long enough"}),
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (403, Some("SY_FORBIDDEN"))
    );
    assert_eq!(closed.store.head().await.expect("head").0, head);
}

async fn delete_session(app: &TestApp, token: Option<&str>, session_id: &str) -> (u16, Value) {
    let mut request = awc::Client::default().delete(format!("{}/.p2/core/v1/session", app.address));
    if let Some(token) = token {
        request = request.insert_header(("Authorization", format!("Bearer {token}")));
    }
    let mut res = request
        .send_json(&json!({"session_id": session_id}))
        .await
        .expect("request");
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[actix_web::test]
async fn a_deleted_session_token_stops_working_and_others_are_refused() {
    let app = spawn_app().await;
    let creds = json!({"username": "erin", "password": "long enough"});
    let (_, first) = post(&app, "/api/v1/auth/register", &creds).await;
    let (_, second) = post(&app, "/api/v1/auth/login", &creds).await;
    let (_, other) = post(
        &app,
        "/api/v1/auth/register",
        &json!({"username": "frank", "password": "long enough"}),
    )
    .await;
    let token = |v: &Value| v["token"].as_str().expect("token").to_owned();
    let session = |v: &Value| v["session_id"].as_str().expect("session").to_owned();
    let head = app.store.head().await.expect("head").0;

    // Refusals write nothing: no token, an unknown token, someone else's session.
    for (bearer, target, want, code) in [
        (None, session(&first), 401, "SY_MISSING_TOKEN"),
        (
            Some("sy_nonsense".to_owned()),
            session(&first),
            401,
            "SY_UNKNOWN_TOKEN",
        ),
        (Some(token(&other)), session(&first), 404, "SY_NOT_FOUND"),
        (
            Some(token(&second)),
            "nosuchsession".to_owned(),
            404,
            "SY_NOT_FOUND",
        ),
    ] {
        let (status, body) = delete_session(&app, bearer.as_deref(), &target).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (want, Some(code)),
            "{body}"
        );
    }
    assert_eq!(app.store.head().await.expect("head").0, head);

    // The second session ends the first: its token stops working, the second's does not.
    let (status, _) = delete_session(&app, Some(&token(&second)), &session(&first)).await;
    assert_eq!(status, 204);
    let (status, body) = delete_session(&app, Some(&token(&first)), &session(&second)).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_UNKNOWN_TOKEN"))
    );
    let (status, _) = delete_session(&app, Some(&token(&second)), &session(&second)).await;
    assert_eq!(status, 204, "a session can end itself");
    let (status, _) = delete_session(&app, Some(&token(&second)), &session(&second)).await;
    assert_eq!(status, 401);
}

#[actix_web::test]
async fn a_json_body_without_content_type_is_read_and_another_type_is_415() {
    let app = spawn_app().await;
    let body = json!({"username": "dora", "password": "correct horse"}).to_string();
    // Another declared type: 415 with what to send, nothing written.
    let head = app.store.head().await.expect("head").0;
    let mut res = awc::Client::default()
        .post(format!("{}/api/v1/auth/register", app.address))
        .insert_header(("Content-Type", "text/plain"))
        .send_body(body.clone())
        .await
        .expect("request");
    let answer: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(
        (res.status().as_u16(), answer["errcode"].as_str()),
        (415, Some("SY_BAD_CONTENT_TYPE")),
        "{answer}"
    );
    assert!(answer["error"]
        .as_str()
        .is_some_and(|e| e.contains("application/json")));
    assert_eq!(
        app.store.head().await.expect("head").0,
        head,
        "nothing was written"
    );
    // No Content-Type at all: read as JSON.
    let mut res = awc::Client::default()
        .post(format!("{}/api/v1/auth/register", app.address))
        .send_body(body)
        .await
        .expect("request");
    let answer: Value = res.json().await.unwrap_or(Value::Null);
    assert_eq!(res.status().as_u16(), 201, "{answer}");
}
