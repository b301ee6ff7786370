//! The verifiable log (DESIGN §2): the tree and checkpoints through the served endpoints,
//! checked by independent verifiers where one exists.

mod audit;
mod checkpoints;
mod independent;
mod read_api;
mod refusals;
mod vectors;
mod witness;

use std::time::Duration;

use crate::helpers::{message, TestApp};

/// Appends `n` messages from `origin` directly to the log; answers the last `seq`.
pub async fn append(app: &TestApp, origin: &str, n: usize) -> u64 {
    let prefix = crate::helpers::rand_suffix();
    let mut last = 0;
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let events = chunk
            .iter()
            .map(|i| message(origin, &format!("{prefix}-{i}")))
            .collect();
        let outcomes = app.log.append(events).await.expect("append");
        last = outcomes.last().expect("an outcome").seq();
    }
    last
}

/// Waits until a checkpoint covers `size` entries; answers the latest checkpoint's size.
pub async fn checkpoint_covering(app: &TestApp, size: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let published = app.transparency.published_size();
        if published >= size {
            return published;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint covers {size} entries (latest: {published})"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A GET: status, `Content-Type`, `Cache-Control` and the body bytes.
pub struct Got {
    pub status: u16,
    pub content_type: String,
    pub cache_control: String,
    pub disposition: String,
    pub body: Vec<u8>,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8")
    }
}

pub async fn get(app: &TestApp, path: &str, token: Option<&str>) -> Got {
    let mut request = awc::Client::default().get(format!("{}{path}", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let mut res = request.send().await.expect("request");
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (content_type, cache_control) = (header("content-type"), header("cache-control"));
    let disposition = header("content-disposition");
    let body = res.body().limit(256 << 20).await.expect("body").to_vec();
    Got {
        status: res.status().as_u16(),
        content_type,
        cache_control,
        disposition,
        body,
    }
}
