//! Actor ID-Certs (DESIGN §4.2) against the polyproto crate 0.21: it makes the CSRs and
//! validates what we issue; renewals, invalidation, cache windows, and every refusal.

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use polyproto::api::cacheable_cert::CacheableIdCert;
use polyproto::certs::capabilities::Capabilities;
use polyproto::certs::idcsr::{IdCsr, IdCsrInner};
use polyproto::der::{DecodePem, Encode, EncodePem};
use polyproto::key::PrivateKey;
use polyproto::types::{ActorDN, DomainName, FederationId, LocalName, SessionId};
use serde_json::{json, Value};

use super::{head, issue, send_pem, server_key};
use crate::gateway::{call, register};
use crate::helpers::spawn_app;
use crate::p2::{
    actor_csr, actor_key, validate_actor, Ed25519PrivateKey, Ed25519PublicKey, Ed25519Signature,
};

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The crate's check of a cache window we answered, for one certificate entry.
pub(crate) fn check_window(entry: &Value, key: &VerifyingKey) {
    let cacheable = CacheableIdCert {
        cert: entry["id_cert"].as_str().expect("pem").into(),
        invalidated_at: entry["invalidated_at"].as_u64(),
        cache_not_valid_before: entry["cache_not_valid_before"].as_u64().expect("nvb"),
        cache_not_valid_after: entry["cache_not_valid_after"].as_u64().expect("nva"),
        cache_signature: entry["cache_signature"].as_str().expect("sig").into(),
    };
    cacheable
        .verify::<Ed25519Signature, Ed25519PublicKey>(&Ed25519PublicKey(*key))
        .expect("polyproto verifies our cache signature");
}

#[actix_web::test]
async fn issued_certificates_validate_with_polyproto_and_renewals_invalidate_the_old_one() {
    let app = spawn_app().await;
    let alice = register(&app, "alice").await;
    let home = server_key(&app).await;
    let key = actor_key();
    let csr = actor_csr(&alice.fid, &alice.session_id, &key);
    let (status, issued) = issue(&app, &alice.token, &csr, None).await;
    assert_eq!(status, 201, "{issued}");
    let pem = issued["id_cert"].as_str().expect("pem");
    let (not_before, not_after) = (
        issued["not_before"].as_u64().expect("nb"),
        issued["not_after"].as_u64().expect("na"),
    );
    assert_eq!(
        not_after - not_before,
        30 * 86_400,
        "identity.actor_cert_lifetime"
    );

    // The crate validates it as an actor certificate under our root, at the right times.
    let cert = validate_actor(pem, &home, now());
    assert_eq!(cert.id_cert_tbs.subject_public_key.0, key.verifying_key());
    assert_eq!(
        cert.id_cert_tbs.serial_number.to_string(),
        issued["serial"].as_str().expect("serial")
    );
    for outside in [not_before - 1, not_after + 1] {
        assert!(
            !crate::p2::actor_valid_at(pem, &home, outside),
            "valid at {outside}"
        );
    }
    // Its re-encoding of what it parsed is our DER, byte for byte.
    let ours = x509_cert::Certificate::from_pem(pem)
        .expect("x509")
        .to_der()
        .expect("der");
    let theirs = x509_cert::Certificate::try_from(cert)
        .expect("back to X.509")
        .to_der()
        .expect("der");
    assert_eq!(hex::encode(theirs), hex::encode(ours));

    // The actor's certificates, with cache windows the crate verifies.
    let path = format!("/.p2/core/v1/idcert/actor/{}", alice.fid);
    let (status, entries) = call(&app, "GET", &path, None, None).await;
    assert_eq!(status, 200, "{entries}");
    let entries = entries.as_array().expect("list").clone();
    assert_eq!(entries.len(), 1);
    let entry = &entries[0];
    assert_eq!(entry["serial"], issued["serial"]);
    assert_eq!(entry["session_id"], alice.session_id.as_str());
    assert_eq!(entry["invalidated"], false);
    assert_eq!(entry["invalidated_at"], Value::Null);
    let window = entry["cache_not_valid_after"].as_i64().expect("nva")
        - entry["cache_not_valid_before"].as_i64().expect("nvb");
    assert_eq!(window, 3600, "identity.cert_cache_ttl");
    check_window(entry, &home);

    // A renewal needs the sensitive header: without it, or wrong, nothing is written.
    let renewed_key = actor_key();
    let renewal = actor_csr(&alice.fid, &alice.session_id, &renewed_key);
    for solution in [None, Some("wrong password")] {
        let before = head(&app).await;
        let (status, body) = issue(&app, &alice.token, &renewal, solution).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["errcode"], "SY_SENSITIVE_ACTION");
        assert_eq!(head(&app).await, before, "nothing written");
    }
    let (status, renewed) = issue(&app, &alice.token, &renewal, Some("correct horse")).await;
    assert_eq!(status, 201, "{renewed}");
    assert_ne!(renewed["serial"], issued["serial"]);
    validate_actor(renewed["id_cert"].as_str().expect("pem"), &home, now());

    // Newest first; the old one invalidated, its window signed with invalidated_at.
    let (_, entries) = call(&app, "GET", &path, None, None).await;
    let entries = entries.as_array().expect("list").clone();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["serial"], renewed["serial"]);
    assert_eq!(entries[0]["invalidated"], false);
    assert_eq!(entries[1]["serial"], issued["serial"]);
    assert_eq!(entries[1]["invalidated"], true);
    assert!(entries[1]["invalidated_at"].as_u64().is_some());
    for entry in &entries {
        check_window(entry, &home);
    }
    // Filters: this session's, and by time (before the first: nothing).
    let (_, by_session) = call(
        &app,
        "GET",
        &format!("{path}?session_id={}", alice.session_id),
        None,
        None,
    )
    .await;
    assert_eq!(by_session.as_array().map(Vec::len), Some(2));
    let (_, other_session) =
        call(&app, "GET", &format!("{path}?session_id=nope"), None, None).await;
    assert_eq!(other_session, json!([]));
    let (_, past) = call(
        &app,
        "GET",
        &format!("{path}?timestamp={}", not_before - 100),
        None,
        None,
    )
    .await;
    assert_eq!(past, json!([]));

    // Ending the session invalidates its certificate.
    let (status, body) = call(
        &app,
        "DELETE",
        &format!("/.p2/core/v1/session?session_id={}", alice.session_id),
        Some(&alice.token),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let (_, entries) = call(&app, "GET", &path, None, None).await;
    assert!(entries
        .as_array()
        .expect("list")
        .iter()
        .all(|e| e["invalidated"] == true));
    let events = app.store.read_after(0, 1000).await.expect("log");
    let invalidations: Vec<&str> = events
        .iter()
        .filter(|e| e.event_type == "actor.idcert_invalidated")
        .map(|e| e.content.get())
        .collect();
    assert_eq!(invalidations.len(), 2, "{invalidations:?}");
    assert!(invalidations[0].contains("\"reason\":\"renewed\""));
    assert!(invalidations[1].contains("\"reason\":\"session_ended\""));

    // Unknown actors are 404; a malformed fid or timestamp 400.
    let (status, body) = call(
        &app,
        "GET",
        "/.p2/core/v1/idcert/actor/nobody@localhost:8008",
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
        "/.p2/core/v1/idcert/actor/not-a-fid",
        None,
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_INVALID_PARAM"))
    );
    let (status, body) = call(&app, "GET", &format!("{path}?timestamp=soon"), None, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("SY_INVALID_PARAM"))
    );
}

#[actix_web::test]
async fn the_server_certificate_answers_the_crates_cacheable_id_cert() {
    let app = spawn_app().await;
    let home = server_key(&app).await;
    let mut res = awc::Client::default()
        .get(format!("{}/.p2/core/v1/idcert/server", app.address))
        .insert_header(("Accept", "application/json"))
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 200);
    let cacheable: CacheableIdCert = res.json().await.expect("the crate's wire type");
    cacheable
        .verify::<Ed25519Signature, Ed25519PublicKey>(&Ed25519PublicKey(home))
        .expect("cache signature");
    cacheable
        .try_to_homeserver_idcert::<Ed25519Signature, Ed25519PublicKey>(
            now(),
            &Ed25519PublicKey(home),
        )
        .expect("a home server ID-Cert");
    assert_eq!(
        cacheable.cache_not_valid_after - cacheable.cache_not_valid_before,
        3600
    );
}

#[actix_web::test]
async fn serials_stay_unique_over_many_issuances() {
    let app = spawn_app().await;
    let alice = register(&app, "alice").await;
    let mut serials = std::collections::HashSet::new();
    for _ in 0..40 {
        let (status, login) = call(
            &app,
            "POST",
            "/api/v1/auth/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse"})),
        )
        .await;
        assert_eq!(status, 200);
        let session_id = login["session_id"].as_str().expect("session");
        let csr = actor_csr(&alice.fid, session_id, &actor_key());
        let (status, issued) =
            issue(&app, login["token"].as_str().expect("token"), &csr, None).await;
        assert_eq!(status, 201, "{issued}");
        let serial: i64 = issued["serial"]
            .as_str()
            .expect("serial")
            .parse()
            .expect("63 bits");
        assert!(serial > 0);
        assert!(serials.insert(serial), "serial {serial} issued twice");
    }
    let rows = app.store.actor_idcerts_unexpired(0).await.expect("rows");
    assert_eq!(rows.len(), 40);
}

/// A CSR the crate builds with other capabilities (a CA's).
fn csr_with_capabilities(fid: &str, session_id: &str, capabilities: Capabilities) -> String {
    let key = Ed25519PrivateKey(actor_key());
    let local = fid.split('@').next().expect("local");
    let subject = ActorDN::new_validated(
        FederationId::new(fid).expect("fid"),
        LocalName::new(local).expect("local"),
        DomainName::new("localhost").expect("domain"),
        SessionId::new_validated(session_id).expect("session"),
        None,
    )
    .expect("dn");
    let inner = IdCsrInner::<Ed25519Signature, Ed25519PublicKey>::new(
        &polyproto::types::PolyprotoDistinguishedName::ActorDn(subject),
        &key.pubkey(),
        &capabilities,
    )
    .expect("inner");
    let signature = key.sign(&inner.clone().to_der().expect("der"));
    IdCsr {
        inner_csr: inner,
        signature_algorithm: key.algorithm_identifier(),
        signature,
    }
    .to_pem(polyproto::der::pem::LineEnding::LF)
    .expect("pem")
}

/// A well-formed PKCS #10 request for a P-256 key (not Ed25519).
fn p256_csr() -> String {
    use x509_cert::der::asn1::BitString;
    use x509_cert::request::{CertReq, CertReqInfo, Version};
    use x509_cert::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SubjectPublicKeyInfoOwned};
    let ec = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
    let mut point = vec![4u8];
    point.extend([7u8; 64]);
    CertReq {
        info: CertReqInfo {
            version: Version::V1,
            subject: "CN=alice".parse().expect("name"),
            public_key: SubjectPublicKeyInfoOwned {
                algorithm: AlgorithmIdentifierOwned {
                    oid: ec,
                    parameters: None,
                },
                subject_public_key: BitString::from_bytes(&point).expect("bits"),
            },
            attributes: Default::default(),
        },
        algorithm: AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        },
        signature: BitString::from_bytes(&[1u8; 70]).expect("bits"),
    }
    .to_pem(x509_cert::der::pem::LineEnding::LF)
    .expect("pem")
}

#[actix_web::test]
async fn every_refusal_of_an_issuance_has_its_errcode_and_writes_nothing() {
    let app = spawn_app().await;
    let alice = register(&app, "alice").await;
    let bob = register(&app, "bob").await;
    let key = actor_key();
    let good = actor_csr(&alice.fid, &alice.session_id, &key);
    let broken = {
        let mut request = x509_cert::request::CertReq::from_pem(&good).expect("csr");
        let mut signature = request.signature.raw_bytes().to_vec();
        signature[5] ^= 1;
        request.signature = x509_cert::der::asn1::BitString::from_bytes(&signature).expect("bits");
        request
            .to_pem(x509_cert::der::pem::LineEnding::LF)
            .expect("pem")
    };
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("garbage", "not a CSR".into(), 400, "SY_BAD_CSR"),
        ("non-Ed25519 key", p256_csr(), 400, "SY_BAD_CSR"),
        ("broken CSR signature", broken, 400, "SY_BAD_CSR"),
        (
            "another actor's fid",
            actor_csr(&bob.fid, &alice.session_id, &key),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "another session id",
            actor_csr(&alice.fid, &bob.session_id, &key),
            403,
            "SY_FORBIDDEN",
        ),
        (
            "a CA's capabilities",
            csr_with_capabilities(
                &alice.fid,
                &alice.session_id,
                Capabilities::default_home_server(),
            ),
            403,
            "SY_FORBIDDEN",
        ),
    ];
    for (case, csr, status, errcode) in cases {
        let before = head(&app).await;
        let (got, body) = issue(&app, &alice.token, &csr, None).await;
        assert_eq!(
            (got, body["errcode"].as_str()),
            (status, Some(errcode)),
            "{case}: {body}"
        );
        assert_eq!(head(&app).await, before, "{case}: nothing written");
    }
    // No token, a bad token.
    let (status, body) = send_pem(&app, "POST", "/.p2/core/v1/idcert", None, &good, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_MISSING_TOKEN"))
    );
    let (status, body) = issue(&app, "sy_nope", &good, None).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("SY_UNKNOWN_TOKEN"))
    );
    // A JSON string holding the PEM is accepted too.
    let (status, body) = send_pem(
        &app,
        "POST",
        "/.p2/core/v1/idcert",
        Some(&alice.token),
        &serde_json::to_string(&good).expect("json"),
        None,
    )
    .await;
    assert_eq!(status, 201, "{body}");
}

/// Runs `openssl` with `args` in `dir`; its stdout.
fn openssl(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// OpenSSL 3 (another implementation) makes the key and the CSR, verifies the certificate
/// chain we issue, and signs a message the server then accepts.
#[actix_web::test]
async fn openssl_makes_the_csr_verifies_the_chain_and_signs_a_message() {
    let available = std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).starts_with("OpenSSL 3"));
    if !available {
        eprintln!(
            "skipped: OpenSSL 3 is not installed (apt-get install openssl); .ci/run installs it"
        );
        return;
    }
    let app = spawn_app().await;
    let alice = register(&app, "alice").await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path();
    openssl(
        path,
        &["genpkey", "-algorithm", "ed25519", "-out", "alice.key"],
    );
    let subject = format!(
        "/DC=localhost/UID={}/CN=alice/0.9.2342.19200300.100.1.44={}",
        alice.fid, alice.session_id
    );
    openssl(
        path,
        &[
            "req",
            "-new",
            "-key",
            "alice.key",
            "-out",
            "alice.csr",
            "-subj",
            &subject,
            "-addext",
            "keyUsage=critical,digitalSignature",
        ],
    );
    let csr = std::fs::read_to_string(path.join("alice.csr")).expect("csr");
    let (status, issued) = issue(&app, &alice.token, &csr, None).await;
    assert_eq!(status, 201, "{issued}");
    std::fs::write(
        path.join("alice.pem"),
        issued["id_cert"].as_str().expect("pem"),
    )
    .expect("write");
    let mut res = awc::Client::default()
        .get(format!("{}/.p2/core/v1/idcert/server", app.address))
        .send()
        .await
        .expect("root");
    std::fs::write(path.join("root.pem"), res.body().await.expect("body")).expect("write");
    let verified = openssl(path, &["verify", "-CAfile", "root.pem", "alice.pem"]);
    assert_eq!(String::from_utf8_lossy(&verified).trim(), "alice.pem: OK");

    // A message signed by OpenSSL over the canonical JSON of DESIGN §4.4.
    let (status, created) = call(
        &app,
        "POST",
        "/api/v1/channels",
        Some(&alice.token),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(status, 201);
    let channel = created["ref"].as_str().expect("ref");
    let ts = switchyard::clock::now_ms();
    let signed = format!(
        r#"{{"action":"new","body":"signed by openssl","channel":"{channel}","sender":"{}","ts":{ts}}}"#,
        alice.fid
    );
    std::fs::write(path.join("message"), &signed).expect("write");
    let signature = openssl(
        path,
        &[
            "pkeyutl",
            "-sign",
            "-inkey",
            "alice.key",
            "-rawin",
            "-in",
            "message",
        ],
    );
    use base64::Engine;
    let signature = base64::engine::general_purpose::STANDARD_NO_PAD.encode(signature);
    let (status, posted) = call(
        &app,
        "POST",
        &format!("/api/v1/channels/{channel}/messages"),
        Some(&alice.token),
        Some(json!({"body": "signed by openssl", "signed": {"serial": issued["serial"], "ts": ts, "signature": signature}})),
    )
    .await;
    assert_eq!(status, 201, "{posted}");
}
