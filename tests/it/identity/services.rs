//! Services (DESIGN §4.5): discovery, management with one primary per service, the
//! sensitive header where the contract asks for it, each change a log event.

use serde_json::{json, Value};

use super::{head, request, Body};
use crate::gateway::{call, register, User};
use crate::helpers::{spawn_app, TestApp, TestDb};

async fn manage(
    app: &TestApp,
    user: &User,
    method: &str,
    path: &str,
    body: Option<Value>,
    sensitive: Option<&str>,
) -> (u16, Value) {
    let reply = request(
        app,
        method,
        path,
        Some(&user.token),
        body.map(Body::Json),
        sensitive,
    )
    .await;
    (reply.status, reply.body)
}

fn service(name: &str, url: &str, primary: bool) -> Value {
    json!({"service": {"service": name, "url": url, "primary": primary}})
}

#[actix_web::test]
async fn services_are_discovered_primary_first_and_managed_with_the_sensitive_header() {
    let app = spawn_app().await;
    let alice = register(&app, "alice").await;
    let discover = format!("/.p2/core/v1/services/discover/{}", alice.fid);

    // Unknown actors are 404; an actor without services 204.
    let (status, body) = call(
        &app,
        "GET",
        "/.p2/core/v1/services/discover/nobody@localhost:8008",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("SY_NOT_FOUND"))
    );
    let (status, body) = call(
        &app,
        "GET",
        "/.p2/core/v1/services/discover/bob@elsewhere.test",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (404, Some("SY_NOT_FOUND"))
    );
    let (status, _) = call(&app, "GET", &discover, None, None).await;
    assert_eq!(status, 204);

    // The first provider is the primary, whatever it asked; a second is not.
    let (status, one) = manage(
        &app,
        &alice,
        "POST",
        "/.p2/core/v1/services",
        Some(service("chat", "https://one.example", false)),
        None,
    )
    .await;
    assert_eq!(status, 201, "{one}");
    assert_eq!(
        one,
        json!({"service": "chat", "url": "https://one.example", "primary": true})
    );
    let (status, two) = manage(
        &app,
        &alice,
        "POST",
        "/.p2/core/v1/services",
        Some(service("chat", "https://two.example", false)),
        None,
    )
    .await;
    assert_eq!((status, two["primary"].as_bool()), (201, Some(false)));
    let (status, _) = manage(
        &app,
        &alice,
        "POST",
        "/.p2/core/v1/services",
        Some(service("files", "https://files.example", false)),
        None,
    )
    .await;
    assert_eq!(status, 201);

    // Refusals, each writing nothing.
    let before = head(&app).await;
    let cases: Vec<(&str, Value, Option<&str>, u16, &str)> = vec![
        (
            "duplicate",
            service("chat", "https://two.example", false),
            None,
            409,
            "SY_ALREADY_EXISTS",
        ),
        (
            "bad name",
            service("C", "https://x.example", false),
            None,
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "bad url",
            service("chat", "ftp://x.example", false),
            None,
            400,
            "SY_INVALID_PARAM",
        ),
        (
            "another primary without the header",
            service("chat", "https://three.example", true),
            None,
            403,
            "SY_SENSITIVE_ACTION",
        ),
        (
            "another primary with a wrong header",
            service("chat", "https://three.example", true),
            Some("nope nope"),
            403,
            "SY_SENSITIVE_ACTION",
        ),
        (
            "malformed body",
            json!({"service": "chat"}),
            None,
            400,
            "SY_BAD_JSON",
        ),
    ];
    for (case, body, sensitive, want_status, want_errcode) in cases {
        let (status, answer) = manage(
            &app,
            &alice,
            "POST",
            "/.p2/core/v1/services",
            Some(body),
            sensitive,
        )
        .await;
        assert_eq!(
            (status, answer["errcode"].as_str()),
            (want_status, Some(want_errcode)),
            "{case}: {answer}"
        );
    }
    let (status, answer) = call(
        &app,
        "POST",
        "/.p2/core/v1/services",
        None,
        Some(service("chat", "https://x.example", false)),
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (401, Some("SY_MISSING_TOKEN"))
    );
    assert_eq!(head(&app).await, before, "no refusal wrote anything");

    // With the header, a new primary takes over.
    let (status, three) = manage(
        &app,
        &alice,
        "POST",
        "/.p2/core/v1/services",
        Some(service("chat", "https://three.example", true)),
        Some("correct horse"),
    )
    .await;
    assert_eq!(
        (status, three["primary"].as_bool()),
        (201, Some(true)),
        "{three}"
    );
    let (status, listed) = call(&app, "GET", &format!("{discover}/chat"), None, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        listed,
        json!([
            {"service": "chat", "url": "https://three.example", "primary": true},
            {"service": "chat", "url": "https://one.example", "primary": false},
            {"service": "chat", "url": "https://two.example", "primary": false},
        ])
    );
    let (_, primary) = call(&app, "GET", &format!("{discover}/chat?limit=1"), None, None).await;
    assert_eq!(
        primary,
        json!([{"service": "chat", "url": "https://three.example", "primary": true}])
    );
    let (_, all) = call(&app, "GET", &discover, None, None).await;
    assert_eq!(all.as_array().map(Vec::len), Some(4));
    let (status, _) = call(&app, "GET", &format!("{discover}/video"), None, None).await;
    assert_eq!(status, 204);
    let (status, body) = call(&app, "GET", &format!("{discover}?limit=0"), None, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_INVALID_PARAM"))
    );

    // Removing a provider that is not primary needs nothing; the primary needs the header,
    // and the oldest remaining provider becomes primary.
    let remove = |url: &str| format!("/.p2/core/v1/services?name=chat&url={}", urlencode(url));
    let (status, removed) = manage(
        &app,
        &alice,
        "DELETE",
        &remove("https://two.example"),
        None,
        None,
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(
        removed,
        json!([{"service": {"service": "chat", "url": "https://two.example", "primary": false}, "new_primary": null}])
    );
    let before = head(&app).await;
    let (status, answer) = manage(
        &app,
        &alice,
        "DELETE",
        &remove("https://three.example"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (403, Some("SY_SENSITIVE_ACTION"))
    );
    let (status, answer) = manage(
        &app,
        &alice,
        "DELETE",
        &remove("https://nowhere.example"),
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (404, Some("SY_NOT_FOUND"))
    );
    let (status, answer) = manage(
        &app,
        &alice,
        "DELETE",
        "/.p2/core/v1/services?name=chat",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("SY_INVALID_PARAM"))
    );
    assert_eq!(head(&app).await, before);
    let (status, removed) = manage(
        &app,
        &alice,
        "DELETE",
        &remove("https://three.example"),
        None,
        Some("correct horse"),
    )
    .await;
    assert_eq!(status, 200, "{removed}");
    assert_eq!(
        removed[0]["new_primary"],
        json!({"service": "chat", "url": "https://one.example", "primary": true})
    );

    // Setting the primary is always sensitive.
    manage(
        &app,
        &alice,
        "POST",
        "/.p2/core/v1/services",
        Some(service("chat", "https://four.example", false)),
        None,
    )
    .await;
    let set = json!({"name": "chat", "url": "https://four.example"});
    let before = head(&app).await;
    let (status, answer) = manage(
        &app,
        &alice,
        "PUT",
        "/.p2/core/v1/services/primary",
        Some(set.clone()),
        None,
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (403, Some("SY_SENSITIVE_ACTION"))
    );
    let (status, answer) = manage(
        &app,
        &alice,
        "PUT",
        "/.p2/core/v1/services/primary",
        Some(json!({"name": "chat", "url": "https://nowhere.example"})),
        Some("correct horse"),
    )
    .await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (404, Some("SY_NOT_FOUND"))
    );
    assert_eq!(head(&app).await, before);
    let (status, changed) = manage(
        &app,
        &alice,
        "PUT",
        "/.p2/core/v1/services/primary",
        Some(set),
        Some("correct horse"),
    )
    .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(
        changed,
        json!([
            {"service": "chat", "url": "https://one.example", "primary": false},
            {"service": "chat", "url": "https://four.example", "primary": true},
        ])
    );
    let (_, primary) = call(&app, "GET", &format!("{discover}/chat?limit=1"), None, None).await;
    assert_eq!(primary[0]["url"], "https://four.example");

    // Every change is a log event, and replay rebuilds the same services.
    let changes = app
        .store
        .read_after(0, 1000)
        .await
        .expect("log")
        .iter()
        .filter(|e| e.event_type.starts_with("service."))
        .count();
    assert_eq!(changes, 8);
    let target = TestDb::new().await;
    let report = app
        .store
        .replay_into(&target.store().await)
        .await
        .expect("replay");
    assert!(report.identical(), "{report:?}");
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
