//! The server root ID-Cert against the public polyproto SDK (crate `polyproto` 0.21): it must
//! parse, validate as a home server certificate, and re-encode to exactly our bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use polyproto::certs::idcert::IdCertHs;
use polyproto::der::{DecodePem, Encode};
use switchyard::federation::signing::ServerKey;
use switchyard::identity::idcert::{issue_server_root, random_serial};

use crate::p2::{Ed25519PublicKey, Ed25519Signature};

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[test]
fn the_server_root_id_cert_parses_validates_and_re_encodes_identically() {
    let key = ServerKey::generate();
    let now = SystemTime::now();
    for server_name in ["chat.example.org:8448", "localhost:8008", "a.b.c.example"] {
        let pem = issue_server_root(
            &key,
            server_name,
            &random_serial(),
            now,
            Duration::from_secs(365 * 86_400),
        )
        .expect("issue");
        let cert = IdCertHs::<Ed25519Signature, Ed25519PublicKey>::from_pem_unchecked(&pem)
            .unwrap_or_else(|e| panic!("{server_name}: polyproto cannot parse our ID-Cert: {e}"));
        cert.full_verify_home_server(unix(now) + 60)
            .unwrap_or_else(|e| {
                panic!("{server_name}: polyproto does not validate our ID-Cert: {e}")
            });
        assert_eq!(cert.id_cert_tbs.subject_public_key.0, key.verifying_key());

        // polyproto's own encoding of what it parsed is our DER, byte for byte.
        let ours = x509_cert::Certificate::from_pem(&pem)
            .expect("x509")
            .to_der()
            .expect("der");
        let theirs = x509_cert::Certificate::try_from(cert)
            .expect("back to X.509")
            .to_der()
            .expect("der");
        assert_eq!(hex::encode(&theirs), hex::encode(&ours), "{server_name}");
    }
}

#[test]
fn a_tampered_or_expired_id_cert_is_refused() {
    let key = ServerKey::generate();
    let now = SystemTime::now();
    let pem = issue_server_root(
        &key,
        "chat.example.org",
        &random_serial(),
        now,
        Duration::from_secs(3600),
    )
    .expect("issue");
    let cert =
        IdCertHs::<Ed25519Signature, Ed25519PublicKey>::from_pem_unchecked(&pem).expect("parse");
    assert!(
        cert.full_verify_home_server(unix(now) + 7200).is_err(),
        "expired"
    );
    assert!(
        cert.full_verify_home_server(unix(now) - 7200).is_err(),
        "not yet valid"
    );

    // Signed by another key than the one it certifies.
    let other = ServerKey::generate();
    let mut forged = IdCertHs::<Ed25519Signature, Ed25519PublicKey>::from_pem_unchecked(
        &issue_server_root(
            &other,
            "chat.example.org",
            &random_serial(),
            now,
            Duration::from_secs(3600),
        )
        .expect("issue"),
    )
    .expect("parse");
    forged.id_cert_tbs.subject_public_key = Ed25519PublicKey(key.verifying_key());
    assert!(forged.full_verify_home_server(unix(now) + 60).is_err());
}

type ServerCert = IdCertHs<Ed25519Signature, Ed25519PublicKey>;

async fn get_text(url: String) -> (u16, String) {
    let mut res = awc::Client::default()
        .get(url)
        .send()
        .await
        .expect("request");
    let body = res.body().await.expect("body").to_vec();
    (
        res.status().as_u16(),
        String::from_utf8(body).expect("utf8"),
    )
}

async fn served_cert(address: &str, query: &str) -> (u16, String) {
    get_text(format!("{address}/.p2/core/v1/idcert/server{query}")).await
}

/// Parses and validates a served certificate with polyproto; answers it and its key.
fn check(pem: &str, at: u64) -> (ServerCert, String) {
    let cert = ServerCert::from_pem_unchecked(pem).expect("polyproto parses the served cert");
    cert.full_verify_home_server(at)
        .expect("polyproto validates the served cert");
    let key =
        switchyard::federation::signing::b64(cert.id_cert_tbs.subject_public_key.0.as_bytes());
    (cert, key)
}

async fn signing_key(address: &str) -> String {
    let (_, body) = get_text(format!("{address}/.well-known/switchyard-server")).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    v["signing_key_public"].as_str().expect("key").to_owned()
}

#[actix_web::test]
async fn the_served_id_cert_follows_rotations_times_and_restarts() {
    use crate::helpers::{spawn_app_with, TestDb};

    let db = TestDb::new().await;
    let key_file = db.dir.path().join("signing.key");
    let app = spawn_app_with(db, |c| {
        c.server.name = "chat.example.org".into();
        c.server.admin_token = "s3cret".into();
        c.server.public_base_url = "https://chat.example.org/".into();
    })
    .await;
    let now = unix(SystemTime::now());

    // The current certificate: polyproto validates it, and it certifies the signing key.
    let (status, first_pem) = served_cert(&app.address, "").await;
    assert_eq!(status, 200, "{first_pem}");
    let (first, first_key) = check(&first_pem, now);
    assert_eq!(first_key, signing_key(&app.address).await);
    let x509 = x509_cert::Certificate::from_pem(&first_pem).expect("x509");
    assert_eq!(
        x509.tbs_certificate.subject.to_string(),
        "DC=chat,DC=example,DC=org"
    );

    // The well-known names the polyproto API base.
    let (status, body) = get_text(format!("{}/.well-known/polyproto-core", app.address)).await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json"),
        serde_json::json!({"api": "https://chat.example.org/.p2/core/"})
    );

    // Rotation by PUT answers the new key's certificate; GET now serves it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut res = awc::Client::default()
        .put(format!("{}/.p2/core/v1/key/server", app.address))
        .insert_header(("Authorization", "Bearer s3cret"))
        .send()
        .await
        .expect("rotate");
    assert_eq!(res.status(), 200);
    let rotated_pem = String::from_utf8(res.body().await.expect("body").to_vec()).expect("utf8");
    let (rotated, rotated_key) = check(&rotated_pem, now + 2);
    assert_ne!(rotated_key, first_key);
    assert_eq!(rotated_key, signing_key(&app.address).await);
    assert_ne!(
        rotated.id_cert_tbs.serial_number,
        first.id_cert_tbs.serial_number
    );
    assert_eq!(served_cert(&app.address, "").await.1, rotated_pem);

    // By time: before the rotation the first certificate, after it the new one; before the
    // first certificate nothing; a malformed timestamp is refused.
    let expired_secs = {
        let rows = app.store.retired_server_keys().await.expect("retired");
        rows[0].expired_ts / 1000
    };
    let before = format!("?timestamp={}", expired_secs - 1);
    assert_eq!(
        served_cert(&app.address, &before).await,
        (200, first_pem.clone())
    );
    let after = format!("?timestamp={}", expired_secs + 1);
    assert_eq!(
        served_cert(&app.address, &after).await,
        (200, rotated_pem.clone())
    );
    let (status, body) = served_cert(&app.address, "?timestamp=1000").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("SY_NOT_FOUND"), "{body}");
    let (status, body) = served_cert(&app.address, "?timestamp=yesterday").await;
    assert_eq!(status, 400);
    assert!(body.contains("SY_INVALID_PARAM"), "{body}");

    // A restart serves the same certificates and issues none.
    let head = app.store.head().await.expect("head").0;
    app.server.stop(true).await;
    let again = TestDb {
        url: app.db.url.clone(),
        dir: tempfile::tempdir().expect("dir"),
    };
    let restarted = spawn_app_with(again, |c| {
        c.server.name = "chat.example.org".into();
        c.keys.path = key_file.clone();
    })
    .await;
    assert_eq!(served_cert(&restarted.address, "").await.1, rotated_pem);
    assert_eq!(served_cert(&restarted.address, &before).await.1, first_pem);
    assert_eq!(restarted.store.head().await.expect("head").0, head);
}

#[actix_web::test]
async fn a_certificate_near_its_end_is_reissued_at_start() {
    use crate::helpers::{spawn_app_with, TestDb};

    let db = TestDb::new().await;
    let key_file = db.dir.path().join("signing.key");
    // A first start with a 1h lifetime, then a restart with a 3h lifetime: the existing
    // certificate has less than the new renewal margin (a third: 1h) left, so it is renewed.
    let app = spawn_app_with(db, |c| c.keys.idcert_lifetime = Duration::from_secs(3600)).await;
    let (_, short) = served_cert(&app.address, "").await;
    app.server.stop(true).await;
    let again = TestDb {
        url: app.db.url.clone(),
        dir: tempfile::tempdir().expect("dir"),
    };
    let restarted = spawn_app_with(again, |c| {
        c.keys.path = key_file.clone();
        c.keys.idcert_lifetime = Duration::from_secs(3 * 3600);
    })
    .await;
    let (status, long) = served_cert(&restarted.address, "").await;
    assert_eq!(status, 200);
    assert_ne!(long, short, "reissued");
    let (cert, _) = check(&long, unix(SystemTime::now()));
    let validity = &cert.id_cert_tbs.validity;
    let span = validity.not_after.to_unix_duration() - validity.not_before.to_unix_duration();
    assert_eq!(span, Duration::from_secs(3 * 3600));
}
