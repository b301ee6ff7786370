//! Signature checks off the request threads, batched across concurrent requests.
//!
//! ```text
//!  request tasks ──PendingCheck──▶ bounded queue ──▶ verifier threads (federation.verify_threads)
//!       ▲                                              take everything queued (≤ max batch),
//!       └──────────── oneshot: valid or not ◀──────── verify_all: one batch, singles on failure
//! ```
//! A busy origin's checks spread over every verifier thread instead of queueing behind one
//! actor, and under load each thread checks many signatures per batch equation. A full queue
//! answers at once (the inbox turns it into 503 `SY_OVERLOADED`), so nothing queues without
//! bound.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};

use prometheus::Histogram;
use tokio::sync::oneshot;

use crate::federation::signing::{verify_all, PendingCheck};

/// Most checks in one batch equation.
const MAX_BATCH: usize = 128;

struct Job {
    check: PendingCheck,
    reply: oneshot::Sender<bool>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the signature queue is full")]
    Overloaded,
    #[error("the signature verifiers have stopped")]
    Stopped,
}

/// A handle on the verifier threads; they stop when the last handle is dropped.
#[derive(Clone)]
pub struct SignatureVerifier {
    queue: SyncSender<Job>,
}

impl SignatureVerifier {
    /// Starts `threads` verifier threads behind a queue of `capacity` checks.
    pub fn start(threads: usize, capacity: usize, batch_sizes: Histogram) -> SignatureVerifier {
        let (queue, jobs) = mpsc::sync_channel::<Job>(capacity);
        let jobs = Arc::new(Mutex::new(jobs));
        for n in 0..threads.max(1) {
            let jobs = jobs.clone();
            let batch_sizes = batch_sizes.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("sy-verify-{n}"))
                .spawn(move || run(&jobs, &batch_sizes));
            if let Err(error) = spawned {
                tracing::error!(%error, "cannot start a signature verifier thread");
            }
        }
        SignatureVerifier { queue }
    }

    /// Answers whether the signature of `check` is valid.
    pub async fn verify(&self, check: PendingCheck) -> Result<bool, VerifyError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Job { check, reply })
            .map_err(|e| match e {
                TrySendError::Full(_) => VerifyError::Overloaded,
                TrySendError::Disconnected(_) => VerifyError::Stopped,
            })?;
        answer.await.map_err(|_| VerifyError::Stopped)
    }
}

fn run(jobs: &Mutex<Receiver<Job>>, batch_sizes: &Histogram) {
    loop {
        let batch = {
            let jobs = match jobs.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let Ok(first) = jobs.recv() else { return };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            batch
        };
        batch_sizes.observe(batch.len() as f64);
        let (checks, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|job| (job.check, job.reply)).unzip();
        for (valid, reply) in verify_all(&checks).into_iter().zip(replies) {
            let _ = reply.send(valid);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::signing::{RequestSignature, ServerKey};

    #[actix_web::test]
    async fn good_and_bad_signatures_in_one_batch_are_told_apart() {
        let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("b", "b")).expect("h");
        let verifier = SignatureVerifier::start(2, 1024, histogram);
        let key = ServerKey::generate();
        let checks = (0..200).map(|i| {
            let body = format!("body {i}");
            let request = RequestSignature {
                method: "POST",
                path: "/federation/inbox",
                origin: "a.example",
                destination: "b.example",
                timestamp: "1",
                key_id: "ed25519:x",
                body: body.as_bytes(),
            };
            let mut signature = key.sign(&request.signed_bytes()).to_bytes();
            if i % 7 == 3 {
                signature[10] ^= 1;
            }
            let signature = crate::federation::signing::b64(&signature);
            let check = request
                .pending_check(&signature, key.verifying_key())
                .expect("decodes");
            let verifier = verifier.clone();
            async move { (i, verifier.verify(check).await.expect("verified")) }
        });
        for (i, valid) in futures_util::future::join_all(checks).await {
            assert_eq!(valid, i % 7 != 3, "check {i}");
        }
    }
}
