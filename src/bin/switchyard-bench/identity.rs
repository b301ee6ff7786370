//! `identity`: the figures of actor identity (DESIGN §4), against release servers started
//! here on scratch SQLite databases.
//!
//! ```text
//!  coordinator (this process, one thread)
//!   ├─▶ home.bench   `switchyard serve`: issues the certificates, hosts the posters' channel
//!   └─▶ visit.bench  `switchyard serve`: signs home.bench's actors in by key trial
//! ```
//! 1. Issuance: `--issuances` sessions of one user (logins, prepared first; each costs an
//!    argon2 hash), one ID-CSR each (keys and CSRs made before the clock starts), then
//!    `POST /.p2/core/v1/idcert` with `--concurrency` requests in flight: issuances/s, p50/p99.
//! 2. Sign-in: `--actors` actors of home.bench, a certificate each, sign in on visit.bench
//!    once each (its cache of home.bench's roots and certificates is then warm), then for
//!    `--seconds` each of
//!    `--concurrency` loops asks a challenge, signs it, and posts `session/auth`:
//!    sign-ins/s, p50/p99 of the pair, and how many fetches visit.bench made from home.bench
//!    meanwhile (its `identity_home_fetches_total`; cached means none).
//! 3. Signed against unsigned posts: `--posters` users, each with a certificate, in one
//!    channel; each posts with one request in flight for `--seconds`, unsigned, then signed
//!    (requests and signatures made before the clock starts, so that the figure is the
//!    server's cost), `--rounds` times in alternation after an uncounted warm-up: posts/s,
//!    p50/p99 and home.bench's CPU per post of each; the cost of signing, read two ways:
//!    unsigned/signed posts/s, and signed/unsigned server CPU per post.
//! 4. `GET /.p2/core/v1/idcert/actor/{fid}` (an actor with one certificate) over
//!    `--connections` keep-alive connections for
//!    `--seconds`, next to `GET /health` on the same server (the cheapest route: the stack's
//!    ceiling), with a minimal HTTP/1.1 client: requests/s and p50/p99 of each, and the ratio.
//!
//! Targets (issue 10): issuances/s and sign-ins/s ≥ 2,000; signed ≤ 1.3× the unsigned cost;
//! the certificate route ≥ 20,000 requests/s at 64 connections.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use serde_json::{json, Value};
use x509_cert::der::asn1::{BitString, SetOfVec};
use x509_cert::der::{Any, Decode as _, Encode as _, EncodePem as _};

use crate::common::{self, call, free_port, hammer, process_cpu, string_field, ScratchDir, Timing};

const PASSWORD: &str = "identity-bench-password";

#[derive(clap::Args)]
pub struct IdentityArgs {
    /// The `switchyard` release binary.
    #[arg(long, default_value = "target/release/switchyard")]
    server_bin: PathBuf,
    /// Certificates issued in the issuance figure (one session each).
    #[arg(long, default_value_t = 4000)]
    issuances: usize,
    /// Actors whose certificates sign in again and again in the sign-in figure.
    #[arg(long, default_value_t = 64)]
    actors: usize,
    /// Requests in flight in the issuance and sign-in figures.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Concurrent posters in the signed/unsigned figure.
    #[arg(long, default_value_t = 16)]
    posters: usize,
    /// Keep-alive connections of the certificate-route figure.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds each timed phase runs.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Posts each poster prepares (and signs) before a phase.
    #[arg(long, default_value_t = 5000)]
    presigned: usize,
    /// Rounds of the unsigned/signed alternation, each order in turn (the figure is the
    /// ratio of the means).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Seconds of the uncounted warm-up of the posts phase (each kind once).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// The phases to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "issuance,sign-in,posts,route"
    )]
    phases: Vec<Phase>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Phase {
    Issuance,
    SignIn,
    Posts,
    Route,
}

fn http_client(connections: usize) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().limit(connections))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// A request with a text body; the status and the body.
async fn send(
    client: &awc::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<(&str, String)>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut request = client.request(method.parse()?, url);
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    let mut response = match body {
        Some((content_type, body)) => {
            request
                .insert_header(("content-type", content_type))
                .send_body(body)
                .await
        }
        None => request.send().await,
    }
    .map_err(|e| anyhow::anyhow!("{method} {url}: {e}"))?;
    let bytes = response.body().limit(1 << 20).await?;
    Ok((response.status().as_u16(), bytes.to_vec()))
}

/// The ID-CSR a polyproto client sends for `fid`'s session `session_id` (raw PKCS #10
/// capability attributes, as the crate writes them).
fn csr(fid: &str, session_id: &str, key: &SigningKey) -> anyhow::Result<String> {
    use x509_cert::attr::Attribute;
    use x509_cert::der::oid::AssociatedOid as _;
    use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
    use x509_cert::request::{CertReq, CertReqInfo, Version};
    use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
    let ed25519 = AlgorithmIdentifierOwned {
        oid: switchyard::identity::idcert::ED25519,
        parameters: None,
    };
    let attribute = |oid, der: Vec<u8>| -> anyhow::Result<Attribute> {
        Ok(Attribute {
            oid,
            values: SetOfVec::try_from(vec![Any::from_der(&der)?])?,
        })
    };
    let usage = KeyUsage(KeyUsages::DigitalSignature.into()).to_der()?;
    let constraints = BasicConstraints {
        ca: false,
        path_len_constraint: None,
    }
    .to_der()?;
    let info = CertReqInfo {
        version: Version::V1,
        subject: switchyard::identity::idcert::actor_dn(fid, session_id)?,
        public_key: SubjectPublicKeyInfoOwned {
            algorithm: ed25519.clone(),
            subject_public_key: BitString::from_bytes(key.verifying_key().as_bytes())?,
        },
        attributes: SetOfVec::try_from(vec![
            attribute(KeyUsage::OID, usage)?,
            attribute(BasicConstraints::OID, constraints)?,
        ])?,
    };
    let signature = key.sign(&info.to_der()?);
    let request = CertReq {
        info,
        algorithm: ed25519,
        signature: BitString::from_bytes(&signature.to_bytes())?,
    };
    Ok(request.to_pem(x509_cert::der::pem::LineEnding::LF)?)
}

/// A user's session on a server, with its certificate's key and serial.
#[derive(Clone)]
struct Certified {
    fid: String,
    token: String,
    key: SigningKey,
    serial: String,
}

/// Runs `work(i)` for `i` in `0..count` with `concurrency` in flight; the timing of each.
async fn run_all<F, Fut>(count: usize, concurrency: usize, work: F) -> Timing
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use futures_util::StreamExt as _;
    let started = Instant::now();
    let work = &work;
    let results: Vec<(Duration, bool)> = futures_util::stream::iter(0..count)
        .map(|i| async move {
            let at = Instant::now();
            let ok = work(i)
                .await
                .map_err(|e| eprintln!("identity: {e:#}"))
                .is_ok();
            (at.elapsed(), ok)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    Timing {
        wall: started.elapsed(),
        failures: results.iter().filter(|(_, ok)| !ok).count(),
        latencies: results
            .into_iter()
            .filter(|(_, ok)| *ok)
            .map(|(d, _)| d)
            .collect(),
    }
}

/// Runs `loops` copies of `work(loop, n)` back to back for `duration`.
async fn run_for<F, Fut>(loops: usize, duration: Duration, work: F) -> Timing
where
    F: Fn(usize, usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let until = started + duration;
    let work = &work;
    let per_loop = futures_util::future::join_all((0..loops).map(|l| async move {
        let mut latencies = Vec::new();
        let mut failures = 0;
        let mut n = 0;
        while Instant::now() < until {
            let at = Instant::now();
            match work(l, n).await {
                Ok(()) => latencies.push(at.elapsed()),
                Err(error) => {
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("identity: {error:#}");
                    }
                }
            }
            n += 1;
        }
        (latencies, failures)
    }))
    .await;
    let wall = started.elapsed();
    let mut timing = Timing {
        latencies: Vec::new(),
        wall,
        failures: 0,
    };
    for (latencies, failures) in per_loop {
        timing.latencies.extend(latencies);
        timing.failures += failures;
    }
    timing
}

/// One counter of a Prometheus text page (the sum over its label sets matching `labels`).
async fn counter(
    client: &awc::Client,
    base: &str,
    name: &str,
    labels: &str,
) -> anyhow::Result<f64> {
    let (_, body) = send(client, "GET", &format!("{base}/metrics"), None, None).await?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

fn signed_message(
    key: &SigningKey,
    serial: &str,
    body: &str,
    channel: &str,
    sender: &str,
) -> Value {
    let ts = switchyard::clock::now_ms();
    let bytes = switchyard::identity::signed::SignedMessage {
        action: "new",
        body,
        channel,
        message_id: None,
        sender,
        ts,
    }
    .bytes();
    let signature =
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(key.sign(&bytes).to_bytes());
    json!({"serial": serial, "ts": ts, "signature": signature})
}

/// Logs `username` in once per session wanted (the first registers).
async fn sessions(
    client: &awc::Client,
    base: &str,
    username: &str,
    count: usize,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let registered = call(
        client,
        &format!("{base}/api/v1/auth/register"),
        None,
        &json!({"username": username, "password": PASSWORD}),
    )
    .await?;
    let first = (
        string_field(&registered, "fid")?,
        string_field(&registered, "token")?,
        string_field(&registered, "session_id")?,
    );
    let mut out = vec![first];
    use futures_util::StreamExt as _;
    let more: Vec<anyhow::Result<(String, String, String)>> = futures_util::stream::iter(1..count)
        .map(|_| async {
            let login = call(
                client,
                &format!("{base}/api/v1/auth/login"),
                None,
                &json!({"username": username, "password": PASSWORD}),
            )
            .await?;
            Ok((
                string_field(&login, "fid")?,
                string_field(&login, "token")?,
                string_field(&login, "session_id")?,
            ))
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for session in more {
        out.push(session?);
    }
    Ok(out)
}

/// Issues one certificate per session; answers them certified.
async fn certify(
    client: &awc::Client,
    base: &str,
    sessions: Vec<(String, String, String)>,
    concurrency: usize,
) -> anyhow::Result<(Vec<Certified>, Timing)> {
    let prepared: Vec<(Certified, String)> = sessions
        .into_iter()
        .map(|(fid, token, session_id)| {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let request = csr(&fid, &session_id, &key)?;
            anyhow::Ok((
                Certified {
                    fid,
                    token,
                    key,
                    serial: String::new(),
                },
                request,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let serials: Vec<std::cell::RefCell<String>> = prepared
        .iter()
        .map(|_| std::cell::RefCell::new(String::new()))
        .collect();
    let url = format!("{base}/.p2/core/v1/idcert");
    let timing = run_all(prepared.len(), concurrency, |i| {
        let (certified, request) = &prepared[i];
        let (url, serials) = (&url, &serials);
        async move {
            let (status, body) = send(
                client,
                "POST",
                url,
                Some(&certified.token),
                Some(("application/x-pem-file", request.clone())),
            )
            .await?;
            if status != 201 {
                bail!(
                    "POST /.p2/core/v1/idcert: {status} {}",
                    String::from_utf8_lossy(&body)
                );
            }
            let answer: Value = serde_json::from_slice(&body)?;
            *serials[i].borrow_mut() = string_field(&answer, "serial")?;
            Ok(())
        }
    })
    .await;
    let certified = prepared
        .into_iter()
        .zip(serials)
        .filter(|(_, serial)| !serial.borrow().is_empty())
        .map(|((mut c, _), serial)| {
            c.serial = serial.into_inner();
            c
        })
        .collect();
    Ok((certified, timing))
}

async fn sign_in(client: &awc::Client, base: &str, actor: &Certified) -> anyhow::Result<()> {
    let (status, body) = send(
        client,
        "GET",
        &format!("{base}/.p2/core/v1/challenge"),
        None,
        None,
    )
    .await?;
    ensure!(
        status == 200,
        "challenge: {status} {}",
        String::from_utf8_lossy(&body)
    );
    let challenge: Value = serde_json::from_slice(&body)?;
    let challenge = string_field(&challenge, "challenge")?;
    let signature = hex::encode(actor.key.sign(challenge.as_bytes()).to_bytes());
    let body = json!({"challenge": challenge, "fid": actor.fid, "serial": actor.serial, "signature": signature});
    let (status, answer) = send(
        client,
        "POST",
        &format!("{base}/.p2/core/v1/session/auth"),
        None,
        Some(("application/json", body.to_string())),
    )
    .await?;
    ensure!(
        status == 200,
        "session/auth: {status} {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

/// A user of home.bench with one session and a certificate for it.
async fn certified_user(
    client: &awc::Client,
    home: &str,
    username: &str,
) -> anyhow::Result<Certified> {
    let session = sessions(client, home, username, 1).await?;
    let (mut certified, _) = certify(client, home, session, 1).await?;
    certified.pop().context("a certificate")
}

/// The servers and what every phase shares.
struct Bench {
    args: IdentityArgs,
    client: awc::Client,
    home: String,
    home_port: u16,
    /// home.bench's process, whose CPU the posts phase counts.
    home_pid: u32,
    visit: String,
    seconds: Duration,
}

/// A target line: what, the figure, the target, met or not.
fn target(what: &str, figure: String, goal: &str, met: bool) -> String {
    format!(
        "  {what:<34}{figure:>10}   target {goal:<9} {}",
        if met { "met" } else { "MISSED" }
    )
}

impl Bench {
    /// 1. `POST /.p2/core/v1/idcert` with `--concurrency` in flight.
    async fn issuance(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let prep = Instant::now();
        let logged_in = sessions(&self.client, &self.home, "issuer", args.issuances).await?;
        println!(
            "  prepared {} sessions (logins, argon2 each) in {:.1} s",
            logged_in.len(),
            prep.elapsed().as_secs_f64()
        );
        let (_, mut issued) =
            certify(&self.client, &self.home, logged_in, args.concurrency).await?;
        println!(
            "  {}",
            issued.line(
                &format!("POST /.p2/core/v1/idcert, {} in flight", args.concurrency),
                "issuances",
            )
        );
        Ok(target(
            "issuances/s",
            format!("{:.0}", issued.rate()),
            ">= 2000",
            issued.rate() >= 2000.0 && issued.failures == 0,
        ))
    }

    /// 2. Sign-ins on visit.bench, home.bench's certificates cached.
    async fn sign_ins(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let (client, visit) = (&self.client, &self.visit);
        let mut actors: Vec<Certified> = Vec::with_capacity(args.actors);
        for k in 0..args.actors.max(1) {
            actors.push(certified_user(client, &self.home, &format!("actor{k}")).await?);
        }
        for actor in &actors {
            sign_in(client, visit, actor)
                .await
                .context("warming visit.bench's cache")?;
        }
        let metric = "switchyard_identity_home_fetches_total";
        let fetches_before = counter(client, visit, metric, "").await?;
        let mut signed_in = run_for(args.concurrency, self.seconds, |l, n| {
            let actor = &actors[(l + n) % actors.len()];
            async move { sign_in(client, visit, actor).await }
        })
        .await;
        let fetches = counter(client, visit, metric, "").await? - fetches_before;
        println!(
            "  {}   home fetches meanwhile: {fetches:.0}",
            signed_in.line(
                &format!("challenge + session/auth, {} in flight", args.concurrency),
                "sign-ins"
            )
        );
        Ok(target(
            "sign-ins/s (certificates cached)",
            format!("{:.0}", signed_in.rate()),
            ">= 2000",
            signed_in.rate() >= 2000.0 && signed_in.failures == 0 && fetches == 0.0,
        ))
    }

    /// 3. Signed against unsigned posts, `--rounds` times in alternation.
    async fn posts(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let client = &self.client;
        let mut posters = Vec::new();
        for k in 0..args.posters.max(1) {
            posters.push(certified_user(client, &self.home, &format!("poster{k}")).await?);
        }
        let owner = &posters[0];
        let created = call(
            client,
            &format!("{}/api/v1/channels", self.home),
            Some(&owner.token),
            &json!({"name": "posts"}),
        )
        .await?;
        let channel = string_field(&created, "ref")?;
        let channel_url = format!("{}/api/v1/channels/{channel}", self.home);
        for poster in &posters[1..] {
            call(
                client,
                &format!("{channel_url}/invite"),
                Some(&owner.token),
                &json!({"fid": poster.fid}),
            )
            .await?;
            call(
                client,
                &format!("{channel_url}/join"),
                Some(&poster.token),
                &json!({}),
            )
            .await?;
        }
        let messages = format!("{channel_url}/messages");
        let mut rates = Vec::new();
        // Round 0 warms the server up (its first writes to a fresh table run faster than the
        // rest) and is not counted.
        for round in 0..=args.rounds.max(1) {
            let warmup = round == 0;
            let duration = if warmup {
                Duration::from_secs(args.warmup)
            } else {
                self.seconds
            };
            if duration.is_zero() {
                continue;
            }
            // Unsigned first in odd rounds, signed first in even ones: the database grows
            // during the run, and alternating the order cancels that drift out of the ratio.
            let order = if round % 2 == 1 {
                [false, true]
            } else {
                [true, false]
            };
            for signed in order {
                // Requests are made before the clock starts, signatures included: what is
                // measured is the server's cost, not this client's signing.
                let bodies: Vec<Vec<String>> = posters
                    .iter()
                    .enumerate()
                    .map(|(l, poster)| {
                        (0..args.presigned)
                            .map(|n| {
                                let body = format!("r{round} p{l} n{n}");
                                let mut request = json!({"body": body});
                                if signed {
                                    request["signed"] = signed_message(
                                        &poster.key,
                                        &poster.serial,
                                        &body,
                                        &channel,
                                        &poster.fid,
                                    );
                                }
                                request.to_string()
                            })
                            .collect()
                    })
                    .collect();
                let cpu_before = process_cpu(self.home_pid);
                let mut timing = run_for(args.posters, duration, |l, n| {
                    let poster = &posters[l];
                    let request = bodies[l].get(n).cloned();
                    let messages = &messages;
                    async move {
                        let request =
                            request.context("out of prepared posts: raise --presigned")?;
                        let (status, answer) = send(
                            client,
                            "POST",
                            messages,
                            Some(&poster.token),
                            Some(("application/json", request)),
                        )
                        .await?;
                        ensure!(
                            status == 201,
                            "post: {status} {}",
                            String::from_utf8_lossy(&answer)
                        );
                        Ok(())
                    }
                })
                .await;
                let what = format!(
                    "POST …/messages {}, {} posters ({})",
                    if signed { "signed  " } else { "unsigned" },
                    args.posters,
                    if warmup {
                        "warm-up".to_owned()
                    } else {
                        format!("round {round}")
                    }
                );
                let cpu = process_cpu(self.home_pid).saturating_sub(cpu_before);
                let per_post = cpu.as_secs_f64() * 1e6 / timing.latencies.len().max(1) as f64;
                if !warmup {
                    rates.push((signed, timing.rate(), per_post));
                }
                println!(
                    "  {}   server CPU {per_post:.0} µs/post",
                    timing.line(&what, "posts")
                );
            }
        }
        let mean = |want: bool, pick: fn(&(bool, f64, f64)) -> f64| {
            let picked: Vec<f64> = rates.iter().filter(|r| r.0 == want).map(pick).collect();
            picked.iter().sum::<f64>() / picked.len().max(1) as f64
        };
        // Two readings of "cost", both judged: throughput at 16 posters (what a client
        // sees, on two cores the client shares), and the server's CPU per post.
        let throughput = mean(false, |r| r.1) / mean(true, |r| r.1).max(1e-9);
        let cpu = mean(true, |r| r.2) / mean(false, |r| r.2).max(1e-9);
        Ok(format!(
            "{}\n{}   ({:.0} against {:.0} µs)",
            target(
                "signed cost: posts/s (u/s)",
                format!("{throughput:.2}x"),
                "<= 1.3x",
                throughput <= 1.3,
            ),
            target(
                "signed cost: server CPU/post (s/u)",
                format!("{cpu:.2}x"),
                "<= 1.3x",
                cpu <= 1.3,
            ),
            mean(true, |r| r.2),
            mean(false, |r| r.2),
        ))
    }

    /// 4. The certificate route (an actor with one certificate, as most have) against
    ///    the cheapest route of the same server.
    async fn route(&self) -> anyhow::Result<String> {
        let args = &self.args;
        let reader = certified_user(&self.client, &self.home, "reader").await?;
        let port = self.home_port;
        let mut health = hammer(
            port,
            &|| "/health".to_owned(),
            args.connections,
            self.seconds,
        )
        .await?;
        let path = format!("/.p2/core/v1/idcert/actor/{}", reader.fid);
        let mut certs = hammer(port, &|| path.clone(), args.connections, self.seconds).await?;
        println!(
            "  {}\n  {}",
            health.line(
                &format!("GET /health, {} connections (ceiling)", args.connections),
                "requests",
            ),
            certs.line(
                &format!(
                    "GET /.p2/core/v1/idcert/actor/{{fid}}, {} conns",
                    args.connections
                ),
                "requests",
            )
        );
        let ratio = certs.rate() / health.rate().max(1e-9);
        Ok(format!(
            "{}   ({ratio:.2} of GET /health)",
            target(
                "GET idcert/actor requests/s",
                format!("{:.0}", certs.rate()),
                ">= 20000",
                certs.rate() >= 20_000.0 && certs.failures == 0,
            )
        ))
    }
}

pub async fn run(args: IdentityArgs) -> anyhow::Result<()> {
    ensure!(
        args.server_bin.exists(),
        "{} does not exist: cargo build --release --bin switchyard",
        args.server_bin.display()
    );
    let scratch = ScratchDir::create("identity")?;
    let client = http_client(args.concurrency.max(args.posters) + 8);
    let (home_port, visit_port) = (free_port()?, free_port()?);
    let home = format!("http://127.0.0.1:{home_port}");
    let visit = format!("http://127.0.0.1:{visit_port}");
    let home_server = common::start_switchyard(
        &args.server_bin,
        &scratch.0.join("home"),
        "home.bench",
        home_port,
        "",
        &[],
        &client,
    )
    .await?;
    let _visit_server = common::start_switchyard(
        &args.server_bin,
        &scratch.0.join("visit"),
        "visit.bench",
        visit_port,
        &format!(
            "[identity]\nchallenge_rate_per_second = 1000000\nchallenge_burst = 1000000\n[federation.resolve]\n\"home.bench\" = \"{home}\""
        ),
        &[],        &client,
    )
    .await?;
    println!(
        "identity: release servers on SQLite in {}; {} issuances, {} actors signing in, {} posters, {} connections, {} s phases",
        scratch.0.display(),
        args.issuances,
        args.actors,
        args.posters,
        args.connections,
        args.seconds
    );
    let phases = args.phases.clone();
    let bench = Bench {
        seconds: Duration::from_secs(args.seconds),
        args,
        client,
        home,
        home_port,
        home_pid: home_server.pid(),
        visit,
    };
    let mut targets = Vec::new();
    for phase in phases {
        targets.push(match phase {
            Phase::Issuance => bench.issuance().await?,
            Phase::SignIn => bench.sign_ins().await?,
            Phase::Posts => bench.posts().await?,
            Phase::Route => bench.route().await?,
        });
    }
    println!("targets:");
    for line in targets {
        println!("{line}");
    }
    Ok(())
}
