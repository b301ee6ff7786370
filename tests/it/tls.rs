//! Native TLS: HTTPS serving with `server.tls_cert` / `server.tls_key`, and federation
//! between two instances over HTTPS with a private CA (`federation.ca_file`). The CA and the
//! server certificate are made by rcgen (an implementation other than ours); the client side
//! of the first test is awc with rustls, trusting only that CA.

use std::sync::Arc;

use serde_json::Value;

use crate::helpers::{spawn_app_with, TestApp, TestDb};

/// A test CA and a certificate it issued for localhost and 127.0.0.1, as PEM files in
/// `dir`: (ca, cert, key).
fn test_ca(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Switchyard test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .expect("server certificate");
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).expect("write");
    std::fs::write(&paths.1, cert.pem()).expect("write");
    std::fs::write(&paths.2, key.serialize_pem()).expect("write");
    paths
}

/// An instance serving HTTPS with `cert` and `key`; its address is https://.
async fn https_app(name: &'static str, cert: &std::path::Path, key: &std::path::Path) -> TestApp {
    let (cert, key) = (cert.to_owned(), key.to_owned());
    let mut app = spawn_app_with(TestDb::new().await, move |c| {
        c.server.name = name.into();
        c.server.tls_cert = Some(cert);
        c.server.tls_key = Some(key);
    })
    .await;
    app.address = app.address.replacen("http://", "https://", 1);
    app
}

fn client_trusting(ca: &std::path::Path) -> awc::Client {
    let roots = switchyard::tls::certificates(ca).expect("CA");
    let tls = switchyard::tls::client_config(&roots).expect("client TLS");
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(Arc::new(tls)))
        .finish()
}

#[actix_web::test]
async fn serves_https_with_its_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = test_ca(dir.path());
    let app = https_app("tls.test", &cert, &key).await;
    let mut res = client_trusting(&ca)
        .get(format!("{}/health", app.address))
        .send()
        .await
        .expect("an HTTPS request");
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["status"], "ok", "{body}");
    // Plain HTTP to the same port is not served.
    let plain = app.address.replacen("https://", "http://", 1);
    let answer = awc::Client::default()
        .get(format!("{plain}/health"))
        .timeout(std::time::Duration::from_secs(3))
        .send()
        .await;
    assert!(
        answer.map_or(true, |r| r.status() != 200),
        "plain HTTP was served"
    );
}

#[actix_web::test]
async fn a_certificate_without_its_key_or_an_unreadable_one_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, _) = test_ca(dir.path());
    for (tls_cert, tls_key, names) in [
        (Some(cert.clone()), None, "server.tls_cert"),
        (Some(cert.clone()), Some(ca.clone()), "server.tls_cert"),
    ] {
        let db = TestDb::new().await;
        let mut config = db.config();
        config.server.tls_cert = tls_cert;
        config.server.tls_key = tls_key;
        let refused = match config.validate() {
            Err(error) => error.to_string(),
            Ok(()) => switchyard::app::Application::build(config)
                .await
                .err()
                .expect("refused")
                .to_string(),
        };
        assert!(refused.contains(names), "{refused}");
    }
    let db = TestDb::new().await;
    let mut config = db.config();
    config.federation.ca_file = Some(dir.path().join("missing.pem"));
    let refused = switchyard::app::Application::build(config)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(refused.contains("federation.ca_file"), "{refused}");
}

#[actix_web::test]
async fn federation_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = test_ca(dir.path());
    let b = https_app("b.test", &cert, &key).await;
    let notary = |ca_file: Option<std::path::PathBuf>| {
        let b_address = b.address.clone();
        async move {
            spawn_app_with(TestDb::new().await, move |c| {
                c.server.name = "notary.test".into();
                c.federation.resolve.insert("b.test".into(), b_address);
                c.federation.ca_file = ca_file;
            })
            .await
        }
    };
    // Trusting the CA: the notary fetches b.test's keys over HTTPS.
    let a = notary(Some(ca.clone())).await;
    let mut res = awc::Client::default()
        .get(format!("{}/_matrix/key/v2/query/b.test", a.address))
        .send()
        .await
        .expect("query");
    let body: Value = res.json().await.expect("json");
    assert_eq!(res.status(), 200, "{body}");
    let keys = body["server_keys"].as_array().expect("server_keys");
    assert_eq!(keys.len(), 1, "{body}");
    assert_eq!(keys[0]["server_name"], "b.test");
    // The web PKI alone does not trust it: nothing is fetched.
    let c = notary(None).await;
    let mut res = awc::Client::default()
        .get(format!("{}/_matrix/key/v2/query/b.test", c.address))
        .send()
        .await
        .expect("query");
    let body: Value = res.json().await.expect("json");
    assert_eq!(
        body["server_keys"].as_array().map(Vec::len),
        Some(0),
        "a server behind an unknown CA was trusted: {body}"
    );
}
