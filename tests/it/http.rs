use crate::helpers::spawn_app;

#[actix_web::test]
async fn health_config_metrics_and_unknown_routes() {
    let app = spawn_app().await;
    let client = awc::Client::default();

    let mut res = client
        .get(format!("{}/health", app.address))
        .send()
        .await
        .expect("health");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let mut res = client
        .get(format!("{}/api/v1/config", app.address))
        .send()
        .await
        .expect("config");
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["app_name"], "Switchyard");
    assert_eq!(body["registration_mode"], "open");
    assert_eq!(body["brand_primary_color"], "#3b5bdb");
    assert!(body["app_description"].is_string() && body["brand_accent_color"].is_string());

    app.log
        .append(vec![crate::helpers::message("a.example", "e1")])
        .await
        .expect("append");
    let mut res = client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .expect("metrics");
    assert_eq!(res.status(), 200);
    let text = String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8");
    assert!(
        text.contains("# TYPE switchyard_log_batch_events histogram"),
        "{text}"
    );
    assert!(text.contains("# TYPE switchyard_log_append_seconds histogram"));
    assert!(text.contains("switchyard_log_events_appended_total{type=\"message.new\"} 1"));
    assert!(
        text.contains("switchyard_log_head_seq 2"),
        "the ID-Cert of the start, then e1"
    );

    let mut res = client
        .get(format!("{}/no/such/route", app.address))
        .send()
        .await
        .expect("404");
    assert_eq!(res.status(), 404);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["errcode"], "SY_NOT_FOUND");
    assert!(body["error"]
        .as_str()
        .is_some_and(|e| e.contains("/no/such/route")));
}
