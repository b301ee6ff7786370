//! The key resolver against live instances over loopback.

use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use serde_json::Value;
use switchyard::config::{FederationConfig, TrustedNotary};
use switchyard::federation::client::{OutboundClient, Resolver};
use switchyard::federation::keys::resolver::{KeyLookupError, KeyResolver};
use switchyard::federation::signing::unb64;

use crate::helpers::{spawn_app_with, TestApp, TestDb};

fn outbound(routes: &[(&str, &str)]) -> OutboundClient {
    let mut config = FederationConfig::default();
    for (name, address) in routes {
        config
            .resolve
            .insert((*name).to_owned(), (*address).to_owned());
    }
    OutboundClient::new(Arc::new(Resolver::new(&config)), &config)
}

async fn server(name: &'static str, token: &'static str) -> TestApp {
    spawn_app_with(TestDb::new().await, move |c| {
        c.server.name = name.into();
        c.server.admin_token = token.into();
    })
    .await
}

async fn current_key(app: &TestApp) -> (String, String, VerifyingKey) {
    let mut res = awc::Client::default()
        .get(format!("{}/.well-known/switchyard-server", app.address))
        .send()
        .await
        .expect("well-known");
    let v: Value = res.json().await.expect("json");
    let b64 = v["signing_key_public"].as_str().expect("key").to_owned();
    let bytes: [u8; 32] = unb64(&b64).expect("b64").try_into().expect("32");
    (
        v["key_id"].as_str().expect("id").to_owned(),
        b64,
        VerifyingKey::from_bytes(&bytes).expect("key"),
    )
}

#[actix_web::test]
async fn an_old_key_verifies_only_signatures_dated_before_it_expired() {
    let b = server("b.test", "t").await;
    let (old_id, _, old_key) = current_key(&b).await;
    let mut res = awc::Client::default()
        .post(format!("{}/admin/v1/keys/rotate", b.address))
        .insert_header(("Authorization", "Bearer t"))
        .send()
        .await
        .expect("rotate");
    let rotated: Value = res.json().await.expect("json");
    let expired_ts = rotated["expired_ts"].as_i64().expect("expired_ts");
    let (new_id, _, new_key) = current_key(&b).await;

    let resolver = KeyResolver::new(Vec::new());
    let client = outbound(&[("b.test", &b.address)]);
    assert_eq!(
        resolver
            .key(&client, "b.test", &old_id, expired_ts - 1)
            .await,
        Ok(old_key)
    );
    assert!(matches!(
        resolver.key(&client, "b.test", &old_id, expired_ts).await,
        Err(KeyLookupError::Expired { .. })
    ));
    assert_eq!(
        resolver
            .key(&client, "b.test", &new_id, expired_ts + 1_000)
            .await,
        Ok(new_key)
    );
    assert_eq!(resolver.fetches(), 1, "one fetch served every lookup");
}

#[actix_web::test]
async fn one_fetch_in_flight_per_server() {
    let b = server("b.test", "").await;
    let (key_id, _, key) = current_key(&b).await;
    let resolver = Arc::new(KeyResolver::new(Vec::new()));
    let client = std::rc::Rc::new(outbound(&[("b.test", &b.address)]));
    let lookups: Vec<_> = (0..20)
        .map(|_| {
            let (resolver, client, key_id) = (resolver.clone(), client.clone(), key_id.clone());
            async move { resolver.key(&client, "b.test", &key_id, 0).await }
        })
        .collect();
    for result in futures_util::future::join_all(lookups).await {
        assert_eq!(result, Ok(key));
    }
    assert_eq!(resolver.fetches(), 1);
}

#[actix_web::test]
async fn failures_are_cached_and_unknown_keys_refetched_once() {
    let resolver = KeyResolver::new(Vec::new());
    let client = outbound(&[("gone.test", "http://127.0.0.1:1")]);
    for _ in 0..3 {
        assert_eq!(
            resolver.key(&client, "gone.test", "ed25519:a", 0).await,
            Err(KeyLookupError::Unreachable("gone.test".into()))
        );
    }
    assert_eq!(resolver.fetches(), 1, "no new attempt during the backoff");

    let b = server("b.test", "").await;
    let resolver = KeyResolver::new(Vec::new());
    let client = outbound(&[("b.test", &b.address)]);
    for _ in 0..3 {
        assert!(matches!(
            resolver.key(&client, "b.test", "ed25519:nope", 0).await,
            Err(KeyLookupError::UnknownKey { .. })
        ));
    }
    assert_eq!(resolver.fetches(), 2, "the first fetch and one refetch");
}

#[actix_web::test]
async fn trusted_notaries_answer_when_the_server_cannot() {
    let b = server("b.test", "").await;
    let (b_key_id, _, b_key) = current_key(&b).await;
    let notary = spawn_app_with(TestDb::new().await, {
        let address = b.address.clone();
        move |c| {
            c.server.name = "notary.test".into();
            c.federation.resolve.insert("b.test".into(), address);
        }
    })
    .await;
    // The notary learns B's keys, then B goes away.
    awc::Client::default()
        .get(format!("{}/_matrix/key/v2/query/b.test", notary.address))
        .send()
        .await
        .expect("prime");
    b.server.stop(true).await;
    let (n_key_id, n_key_b64, _) = current_key(&notary).await;

    let routes = [
        ("b.test", "http://127.0.0.1:1"),
        ("notary.test", notary.address.as_str()),
    ];
    let pinned = TrustedNotary {
        server_name: "notary.test".into(),
        verify_keys: [(n_key_id.clone(), n_key_b64)].into_iter().collect(),
    };
    let resolver = KeyResolver::new(vec![pinned]);
    assert_eq!(
        resolver
            .key(&outbound(&routes), "b.test", &b_key_id, 0)
            .await,
        Ok(b_key)
    );

    // A notary whose pinned key does not match is not believed.
    let wrong = TrustedNotary {
        server_name: "notary.test".into(),
        verify_keys: [(
            n_key_id,
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI".to_owned(),
        )]
        .into_iter()
        .collect(),
    };
    let resolver = KeyResolver::new(vec![wrong]);
    assert_eq!(
        resolver
            .key(&outbound(&routes), "b.test", &b_key_id, 0)
            .await,
        Err(KeyLookupError::Unreachable("b.test".into()))
    );
}

#[actix_web::test]
async fn a_signature_failure_refetches_at_most_once_a_minute() {
    let b = server("b.test", "").await;
    let (key_id, _, key) = current_key(&b).await;
    let resolver = KeyResolver::new(Vec::new());
    let client = outbound(&[("b.test", &b.address)]);
    assert_eq!(resolver.key(&client, "b.test", &key_id, 0).await, Ok(key));
    resolver.signature_failed("b.test").await;
    assert_eq!(resolver.key(&client, "b.test", &key_id, 0).await, Ok(key));
    assert_eq!(resolver.fetches(), 2, "refetched after the failure");
    resolver.signature_failed("b.test").await;
    assert_eq!(resolver.key(&client, "b.test", &key_id, 0).await, Ok(key));
    assert_eq!(resolver.fetches(), 2, "not again within the interval");
}
