//! Witnessing between servers (DESIGN §2.5; C2SP tlog-witness and tlog-cosignature): both
//! sides of `POST /log/add-checkpoint`, and the one owner of the witness state.
//!
//! ```text
//!  witness side (logs of `transparency.witness_for`)      pusher side (`transparency.witnesses`)
//!
//!  POST /log/add-checkpoint                               latest checkpoint grew past what a
//!    │ parse: `old N`, ≤ 63 proof lines, blank, note        witness cosigned (watch_signed), at
//!    │   malformed ─────────────────────────────▶ 400       most every `witness_interval`
//!    │ origin `<server>/log`, server in witness_for           │
//!    │   else ──────────────────────────────────▶ 404       ▼
//!    │ a signature of a current key of <server>           POST <witness>/log/add-checkpoint
//!    │   (KeyResolver, note key ID type 0x01)               old <cosigned>, proof, our note
//!    │   none / one fails ──────────────────────▶ 403         │ 409 `<size>\n` → once more
//!    │ old ≤ size, else ────────────────────────▶ 400         │   from that size
//!    ├─ per-origin lock ─────────────────────────┐            │ 200 → cosignature lines,
//!    │ old = size we last cosigned, else 409 text/x.tlog.size │   checked, kept
//!    │ consistency from the stored checkpoint:   │            │   (Transparency::add_cosignature)
//!    │   bad proof ─────────────────────────────▶ 422         ▼
//!    │   same size, other root = FORK ──────────▶ 422     status per witness (memory):
//!    │     logged at error level, counted          │        cosigned size and time, last
//!    │ witnessed_logs: UPDATE … WHERE size = old   │        error, attempts; counted in
//!    ├───────────────────────────────────────────┘         witness_pushes{witness,result}
//!    ▼
//!  200: our cosignature/v1 line (name = our server name, key ID type 0x04, time, signature)
//! ```
//!
//! Several nodes on one database (DESIGN §7): only the node that writes the log pushes
//! (`Transparency::role`); the others follow what the writer's witnesses cosigned through
//! `log_cosignatures` and push from there once they write. The witness side needs no leader:
//! any node answers an add-checkpoint, and the conditional update below keeps one cosigned
//! size per log across nodes.
//!
//! Rules enforced here, and only here:
//! - **Whose logs.** We witness a log when its origin line is `<server>/log` with `<server>` in
//!   `transparency.witness_for`. Its verifier key is derived from that server's signing keys as
//!   our [`KeyResolver`] knows them (DESIGN §3.1): any current key whose note key ID
//!   `SHA-256("<server>/log" ‖ 0x0A ‖ 0x01 ‖ key)[..4]` matches a signature line named
//!   `<server>/log`. Signatures of other names or IDs are ignored (C2SP signed-note); a matching
//!   one that fails to verify refuses the whole note. An unknown key ID refetches the server's
//!   keys once (rate-limited by the resolver), so a key rotation is followed.
//! - **One cosigned size per log, moved atomically.** `witnessed_logs` holds the latest
//!   checkpoint we cosigned per origin. A request must name it as `old` (or 0 before the first);
//!   the check and the update happen under a per-origin lock, and the UPDATE is conditional on
//!   the size still being `old`, so two nodes on one database cannot roll it back either. It is
//!   written before we answer.
//! - **Forks.** A checkpoint of the size we cosigned with another root is a fork (the log
//!   equivocated): refused with 422 (C2SP tlog-witness HEAD; v1.0.0 said 409), logged at error
//!   level with both roots and the note, and counted in
//!   `switchyard_witness_equivocations_total{origin}`. Only this case is counted: a proof that
//!   fails to verify from a smaller size is equally refused (422), but it may as well be a
//!   broken client as a lying log, so it is not called an equivocation.
//! - **Cosignatures.** Ours are `cosignature/v1` (C2SP tlog-cosignature) with our current
//!   server signing key, key name = our server name, a non-zero timestamp in seconds.
//!   Cosignatures we receive are kept only from lines named after the witness; when the
//!   witness's keys can be resolved, each must verify with one of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};

use crate::clock::now_ms;
use crate::config::FederationConfig;
use crate::core::merkle::{empty_root, verify_consistency, Hash};
use crate::core::note::{self, Checkpoint, Note, COSIGNATURE_TYPE, ED25519_TYPE};
use crate::federation::client::{FetchError, OutboundClient, Resolver};
use crate::federation::keys::resolver::{KeyLookupError, KeyResolver};
use crate::store::StoreError;
use crate::telemetry::Metrics;
use crate::transparency::{Published, ReadError, Transparency};
use entities::{log_cosignatures, witnessed_logs};

/// Where witnesses take checkpoints (C2SP tlog-witness submission prefix `/log`).
pub const ADD_CHECKPOINT_PATH: &str = "/log/add-checkpoint";
/// The largest add-checkpoint body we read.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// C2SP tlog-witness: "The client MUST NOT send more than 63 consistency proof lines."
pub const MAX_PROOF_LINES: usize = 63;
/// The content type of a 409 answer, whose body is the cosigned size and a newline.
pub const SIZE_CONTENT_TYPE: &str = "text/x.tlog.size";
/// Pushes to one witness never come closer together than this, whatever the configuration.
const MIN_PUSH_INTERVAL: Duration = Duration::from_millis(10);
/// How much of a refusing witness's answer is kept in the status.
const MAX_ERROR_DETAIL: usize = 300;

/// Why an add-checkpoint request was refused. [`WitnessError::Conflict`] is answered with
/// its own `text/x.tlog.size` body; the others are API errors (see `api::witness`).
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    /// The body is not an add-checkpoint request (400).
    #[error("{0}")]
    Malformed(String),
    /// Not a log we witness (404).
    #[error("this server does not witness the log {0:?}")]
    UnknownLog(String),
    /// No signature of the log's key verifies, or one of its signatures fails (403).
    #[error("{0}")]
    Unverified(String),
    /// The log's server keys cannot be fetched now (503).
    #[error("the keys of {server} cannot be fetched to check this checkpoint")]
    KeysUnavailable {
        server: String,
        #[source]
        source: KeyLookupError,
    },
    /// `old` is past the checkpoint (400).
    #[error("old size {old} is larger than the checkpoint's size {size}")]
    OldPastSize { old: u64, size: u64 },
    /// `old` is not the size we last cosigned (409 with that size).
    #[error("the latest checkpoint cosigned for {origin} has size {size}")]
    Conflict { origin: String, size: u64 },
    /// The consistency proof does not hold (422).
    #[error("{0}")]
    BadProof(String),
    /// Same size as the checkpoint we cosigned, another root (422, counted).
    #[error(
        "{origin} already has a cosigned checkpoint of size {size} with another root hash: \
         refused as a fork of the log"
    )]
    Fork { origin: String, size: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one of our witnesses has done for us (memory; the cosigned size survives a restart
/// through `log_cosignatures`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushStatus {
    /// The size of the newest checkpoint the witness cosigned for us (0: none yet).
    pub cosigned_size: u64,
    /// When we received that cosignature, ms since the epoch.
    pub cosigned_at: Option<i64>,
    /// Why the last push failed; `None` after a success.
    pub last_error: Option<String>,
    /// add-checkpoint requests sent to the witness since the start.
    pub attempts: u64,
}

/// A log we witness: its server and the lock that makes check-and-update one step.
struct WitnessedLog {
    server: String,
    lock: tokio::sync::Mutex<()>,
}

/// A server that witnesses our log.
struct OurWitness {
    server: String,
    status: Mutex<PushStatus>,
}

/// Both sides of witnessing for one instance.
pub struct Witness {
    transparency: Arc<Transparency>,
    keys: Arc<KeyResolver>,
    metrics: Arc<Metrics>,
    /// By origin line (`<server>/log`), one per server of `witness_for`.
    logs: HashMap<String, WitnessedLog>,
    /// One per server of `witnesses`, in configuration order.
    witnesses: Vec<OurWitness>,
}

impl Witness {
    /// Loads what our witnesses cosigned so far and starts one pusher per witness.
    pub async fn start(
        transparency: Arc<Transparency>,
        keys: Arc<KeyResolver>,
        resolver: Arc<Resolver>,
        federation: &FederationConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Witness>, StoreError> {
        let config = transparency.config().clone();
        let logs = config
            .witness_for
            .iter()
            .map(|server| {
                (
                    format!("{server}/log"),
                    WitnessedLog {
                        server: server.clone(),
                        lock: tokio::sync::Mutex::new(()),
                    },
                )
            })
            .collect();
        let mut witnesses: Vec<OurWitness> = Vec::new();
        for server in &config.witnesses {
            if server == transparency.server_name() || witnesses.iter().any(|w| &w.server == server)
            {
                tracing::warn!(%server, "transparency.witnesses: ignoring ourselves or a repeat");
                continue;
            }
            let last = log_cosignatures::Entity::find()
                .filter(log_cosignatures::Column::Witness.eq(server.as_str()))
                .order_by_desc(log_cosignatures::Column::Size)
                .one(transparency.store().readers())
                .await?;
            witnesses.push(OurWitness {
                server: server.clone(),
                status: Mutex::new(PushStatus {
                    cosigned_size: last.as_ref().map_or(0, |c| c.size as u64),
                    cosigned_at: last.map(|c| c.cosigned_at),
                    last_error: None,
                    attempts: 0,
                }),
            });
        }
        let witness = Arc::new(Witness {
            transparency,
            keys,
            metrics,
            logs,
            witnesses,
        });
        for index in 0..witness.witnesses.len() {
            actix_web::rt::spawn(push_when_grown(
                Arc::downgrade(&witness),
                index,
                resolver.clone(),
                federation.clone(),
                config.witness_interval.max(MIN_PUSH_INTERVAL),
            ));
        }
        Ok(witness)
    }

    /// Takes the size witness `index` last cosigned from `log_cosignatures` when it is past
    /// the status's: on a cluster, the node that pushed it may have been another.
    async fn reload_status(&self, index: usize) {
        let witness = &self.witnesses[index];
        let stored = log_cosignatures::Entity::find()
            .filter(log_cosignatures::Column::Witness.eq(witness.server.as_str()))
            .order_by_desc(log_cosignatures::Column::Size)
            .one(self.transparency.store().readers())
            .await;
        match stored {
            Ok(Some(row)) => {
                let mut status = lock(&witness.status);
                if row.size as u64 > status.cosigned_size {
                    status.cosigned_size = row.size as u64;
                    status.cosigned_at = Some(row.cosigned_at);
                }
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(witness = %witness.server, %error, "cannot read what the witness cosigned")
            }
        }
    }

    /// Each of our witnesses with what it has done for us, in configuration order.
    pub fn push_status(&self) -> Vec<(String, PushStatus)> {
        self.witnesses
            .iter()
            .map(|w| (w.server.clone(), lock(&w.status).clone()))
            .collect()
    }

    /// The logs we witness: the latest checkpoint we cosigned for each, by origin.
    pub async fn witnessed(&self) -> Result<Vec<witnessed_logs::Model>, StoreError> {
        Ok(witnessed_logs::Entity::find()
            .order_by_asc(witnessed_logs::Column::Origin)
            .all(self.transparency.store().readers())
            .await?)
    }

    // ----- witness side -------------------------------------------------------------------

    /// Handles an add-checkpoint body: checks it in the order of the module doc, records the
    /// checkpoint as the one we cosigned for its log, and answers our cosignature line.
    pub async fn add_checkpoint(
        &self,
        client: &OutboundClient,
        body: &[u8],
    ) -> Result<String, WitnessError> {
        let request = AddCheckpoint::parse(body)?;
        let checkpoint = &request.checkpoint;
        let origin = checkpoint.origin.as_str();
        let log = self
            .logs
            .get(origin)
            .ok_or_else(|| WitnessError::UnknownLog(origin.to_owned()))?;
        self.verify_log_signature(client, &log.server, origin, &request.note)
            .await?;
        if request.old > checkpoint.size {
            return Err(WitnessError::OldPastSize {
                old: request.old,
                size: checkpoint.size,
            });
        }
        let _one_at_a_time = log.lock.lock().await;
        let held = self.held(origin).await?;
        let held_size = held.as_ref().map_or(0, |(size, _)| *size);
        if request.old != held_size {
            return Err(WitnessError::Conflict {
                origin: origin.to_owned(),
                size: held_size,
            });
        }
        self.check_consistency(&request, held.map(|(_, root)| root))?;
        self.record(&request, held.map(|(size, _)| size)).await?;
        tracing::debug!(origin, size = checkpoint.size, "checkpoint cosigned");
        Ok(self.cosign(&request.note.body))
    }

    /// 403 unless a signature named `origin` verifies with a current key of `server`.
    async fn verify_log_signature(
        &self,
        client: &OutboundClient,
        server: &str,
        origin: &str,
        note: &Note,
    ) -> Result<(), WitnessError> {
        let named: Vec<_> = note
            .signatures
            .iter()
            .filter(|s| s.name == origin)
            .collect();
        if named.is_empty() {
            return Err(WitnessError::Unverified(format!(
                "the checkpoint carries no signature named {origin}"
            )));
        }
        for refetched in [false, true] {
            let keys = self
                .keys
                .current_keys(client, server)
                .await
                .map_err(|source| WitnessError::KeysUnavailable {
                    server: server.to_owned(),
                    source,
                })?;
            let mut verified = false;
            for signature in &named {
                for key in keys.iter().filter(|k| {
                    note::key_id(origin, ED25519_TYPE, k.as_bytes()) == signature.key_id
                }) {
                    if !verifies(key, note.body.as_bytes(), &signature.bytes) {
                        return Err(WitnessError::Unverified(format!(
                            "the signature of {origin} key {} does not verify over the checkpoint",
                            hex::encode(signature.key_id)
                        )));
                    }
                    verified = true;
                }
            }
            if verified {
                return Ok(());
            }
            if refetched {
                break;
            }
            // The server may have rotated its key since we cached its keys.
            self.keys.signature_failed(server).await;
        }
        Err(WitnessError::Unverified(format!(
            "no signature on the checkpoint is from a current signing key of {server}"
        )))
    }

    /// The size and root of the checkpoint we last cosigned for `origin`.
    async fn held(&self, origin: &str) -> Result<Option<(u64, Hash)>, StoreError> {
        let Some(row) = witnessed_logs::Entity::find_by_id(origin)
            .one(self.transparency.store().readers())
            .await?
        else {
            return Ok(None);
        };
        let root = hex::decode(&row.root_hash)
            .ok()
            .and_then(|b| Hash::try_from(b).ok())
            .ok_or_else(|| StoreError::Corrupt {
                seq: row.size,
                problem: format!("the witnessed root hash of {origin} is unreadable"),
            })?;
        Ok(Some((row.size as u64, root)))
    }

    /// The checkpoint follows the one we cosigned (`held_root`, of size `request.old`).
    fn check_consistency(
        &self,
        request: &AddCheckpoint,
        held_root: Option<Hash>,
    ) -> Result<(), WitnessError> {
        let checkpoint = &request.checkpoint;
        if checkpoint.size == 0 && checkpoint.root != empty_root() {
            return Err(WitnessError::BadProof(
                "a checkpoint of size 0 must carry the root of the empty tree".into(),
            ));
        }
        let held_root = match (request.old, held_root) {
            (0, _) => {
                return match request.proof.is_empty() {
                    true => Ok(()),
                    false => Err(WitnessError::BadProof(
                        "from old size 0 the consistency proof must be empty".into(),
                    )),
                };
            }
            (_, Some(root)) => root,
            // `old` equals the held size, so a non-zero `old` has a stored row.
            (old, None) => {
                return Err(StoreError::Corrupt {
                    seq: old as i64,
                    problem: format!("no witnessed checkpoint of {}", checkpoint.origin),
                }
                .into())
            }
        };
        if request.old == checkpoint.size && held_root != checkpoint.root {
            self.metrics
                .witness_equivocations
                .with_label_values(&[checkpoint.origin.as_str()])
                .inc();
            tracing::error!(
                origin = %checkpoint.origin,
                size = checkpoint.size,
                cosigned_root = %STANDARD.encode(held_root),
                offered_root = %STANDARD.encode(checkpoint.root),
                note = %request.note_text,
                "log equivocation: a validly signed checkpoint of the size we cosigned has another root; refused"
            );
            return Err(WitnessError::Fork {
                origin: checkpoint.origin.clone(),
                size: checkpoint.size,
            });
        }
        verify_consistency(
            request.old,
            checkpoint.size,
            &held_root,
            &checkpoint.root,
            &request.proof,
        )
        .map_err(|e| {
            WitnessError::BadProof(format!(
                "the consistency proof from size {} to {} does not verify: {e}",
                request.old, checkpoint.size
            ))
        })
    }

    /// Makes the request's checkpoint the one we cosigned, if the stored size is still `held`
    /// (`None`: no row yet), else 409 with the size now stored.
    async fn record(&self, request: &AddCheckpoint, held: Option<u64>) -> Result<(), WitnessError> {
        let checkpoint = &request.checkpoint;
        let db = self.transparency.store().readers();
        let now = now_ms();
        let written = match held {
            None => witnessed_logs::Entity::insert(witnessed_logs::ActiveModel {
                origin: Set(checkpoint.origin.clone()),
                size: Set(checkpoint.size as i64),
                root_hash: Set(hex::encode(checkpoint.root)),
                note: Set(request.note_text.clone()),
                updated_at: Set(now),
            })
            .on_conflict(
                OnConflict::column(witnessed_logs::Column::Origin)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await
            .map_err(StoreError::from)?,
            Some(held_size) => {
                witnessed_logs::Entity::update_many()
                    .col_expr(
                        witnessed_logs::Column::Size,
                        Expr::value(checkpoint.size as i64),
                    )
                    .col_expr(
                        witnessed_logs::Column::RootHash,
                        Expr::value(hex::encode(checkpoint.root)),
                    )
                    .col_expr(
                        witnessed_logs::Column::Note,
                        Expr::value(request.note_text.clone()),
                    )
                    .col_expr(witnessed_logs::Column::UpdatedAt, Expr::value(now))
                    .filter(witnessed_logs::Column::Origin.eq(checkpoint.origin.as_str()))
                    .filter(witnessed_logs::Column::Size.eq(held_size as i64))
                    .exec(db)
                    .await
                    .map_err(StoreError::from)?
                    .rows_affected
            }
        };
        if written == 1 {
            return Ok(());
        }
        // Another node sharing the database moved it first.
        let size = self
            .held(&checkpoint.origin)
            .await?
            .map_or(0, |(size, _)| size);
        Err(WitnessError::Conflict {
            origin: checkpoint.origin.clone(),
            size,
        })
    }

    /// Our `cosignature/v1` line over a checkpoint body.
    fn cosign(&self, body: &str) -> String {
        let key = self.transparency.keys().current();
        let name = self.transparency.server_name();
        // C2SP: "the timestamp MUST NOT be zero".
        let timestamp = u64::try_from(now_ms() / 1000).unwrap_or(0).max(1);
        let signature = key.sign(note::cosignature_message(timestamp, body).as_bytes());
        let key_id = note::key_id(name, COSIGNATURE_TYPE, key.verifying_key().as_bytes());
        note::cosignature_line(name, key_id, timestamp, &signature.to_bytes())
    }

    // ----- pusher side --------------------------------------------------------------------

    /// One push of `published` to witness `index`: from the size it cosigned, and once more
    /// from the size a 409 names.
    async fn push(&self, client: &OutboundClient, index: usize, published: &Published) {
        let witness = &self.witnesses[index];
        let old = lock(&witness.status).cosigned_size;
        let mut answer = self.post(client, witness, published, old).await;
        if let Err(PushError::Conflict { held }) = answer {
            tracing::debug!(witness = %witness.server, held, "following the witness's size");
            answer = self.post(client, witness, published, held).await;
        }
        let answer = match answer {
            Ok(lines) => self
                .transparency
                .add_cosignature(published.size, &witness.server, &lines)
                .await
                .map_err(PushError::Store),
            Err(error) => Err(error),
        };
        let mut status = lock(&witness.status);
        match answer {
            Ok(()) => {
                status.cosigned_size = published.size;
                status.cosigned_at = Some(now_ms());
                status.last_error = None;
                tracing::debug!(witness = %witness.server, size = published.size, "cosigned");
            }
            Err(error) => {
                tracing::warn!(witness = %witness.server, size = published.size, %error, "witness push failed; retrying at the next interval");
                status.last_error = Some(error.to_string());
            }
        }
    }

    /// POSTs `published` from `old` and reads the answer: the witness's cosignature lines.
    async fn post(
        &self,
        client: &OutboundClient,
        witness: &OurWitness,
        published: &Published,
        old: u64,
    ) -> Result<String, PushError> {
        let counted = |result: &'static str| {
            self.metrics
                .witness_pushes
                .with_label_values(&[witness.server.as_str(), result])
                .inc();
        };
        let answer = self
            .try_post(client, witness, published, old)
            .await
            .inspect_err(|e| counted(e.label()));
        if answer.is_ok() {
            counted("cosigned");
        }
        answer
    }

    async fn try_post(
        &self,
        client: &OutboundClient,
        witness: &OurWitness,
        published: &Published,
        old: u64,
    ) -> Result<String, PushError> {
        if old > published.size {
            return Err(PushError::Ahead {
                held: old,
                size: published.size,
            });
        }
        let proof = if old == 0 || old == published.size {
            Vec::new()
        } else {
            self.transparency
                .reader()
                .consistency(old, published.size)
                .await
                .map_err(PushError::Proof)?
        };
        lock(&witness.status).attempts += 1;
        let answer = client
            .post(
                &witness.server,
                ADD_CHECKPOINT_PATH,
                &[("Content-Type", "text/plain; charset=utf-8")],
                request_body(old, &proof, &published.note).into_bytes(),
            )
            .await?;
        let text = String::from_utf8_lossy(&answer.body);
        match answer.status.as_u16() {
            200 => {
                let body = note::checkpoint_body(
                    self.transparency.origin(),
                    published.size,
                    &published.root,
                );
                self.check_cosignatures(client, &witness.server, &body, &text)
                    .await
            }
            409 => match parse_size(&text) {
                Some(held) => Err(PushError::Conflict { held }),
                None => Err(PushError::Invalid(format!(
                    "a 409 without a size: {}",
                    excerpt(&text)
                ))),
            },
            status => Err(PushError::Refused {
                status,
                detail: excerpt(&text),
            }),
        }
    }

    /// The cosignature lines of `witness` in a 200 answer over checkpoint `body`, checked
    /// against the witness's current keys when they can be fetched.
    async fn check_cosignatures(
        &self,
        client: &OutboundClient,
        witness: &str,
        body: &str,
        answer: &str,
    ) -> Result<String, PushError> {
        if answer.is_empty() || answer.starts_with('\n') || answer.contains("\n\n") {
            return Err(PushError::Invalid(format!(
                "not signature lines: {}",
                excerpt(answer)
            )));
        }
        let note = Note::parse(&format!("{body}\n{answer}"))
            .map_err(|e| PushError::Invalid(e.to_string()))?;
        let mut theirs = Vec::new();
        for signature in note.signatures.iter().filter(|s| s.name == witness) {
            let timestamp = match signature.bytes.get(..8).map(<[u8; 8]>::try_from) {
                Some(Ok(t)) if signature.bytes.len() == 8 + 64 => u64::from_be_bytes(t),
                _ => {
                    return Err(PushError::Invalid(
                        "a cosignature line is not key ID, timestamp and Ed25519 signature".into(),
                    ))
                }
            };
            if timestamp == 0 {
                return Err(PushError::Invalid("a cosignature has time 0".into()));
            }
            theirs.push((signature, timestamp));
        }
        if theirs.is_empty() {
            return Err(PushError::Invalid(format!(
                "no cosignature line named {witness}"
            )));
        }
        let keys = match self.keys.current_keys(client, witness).await {
            Ok(keys) => keys,
            // Nothing unchecked is served: keep none now, push again at the next interval.
            Err(error) => {
                return Err(PushError::Unchecked(format!(
                    "the keys of {witness} cannot be fetched to check its cosignature: {error}"
                )))
            }
        };
        let mut kept = String::new();
        let mut seen = std::collections::HashSet::new();
        for (signature, timestamp) in theirs {
            // One line per witness key: repeats are dropped, not served.
            if !seen.insert(signature.key_id) {
                continue;
            }
            let message = note::cosignature_message(timestamp, body);
            for key in keys.iter().filter(|k| {
                note::key_id(witness, COSIGNATURE_TYPE, k.as_bytes()) == signature.key_id
            }) {
                if !verifies(key, message.as_bytes(), &signature.bytes[8..]) {
                    return Err(PushError::Invalid(format!(
                        "the cosignature of {witness} key {} does not verify",
                        hex::encode(signature.key_id)
                    )));
                }
                kept.push_str(&signature.line);
            }
        }
        if kept.is_empty() {
            self.keys.signature_failed(witness).await;
            return Err(PushError::Invalid(format!(
                "no cosignature is from a current signing key of {witness}"
            )));
        }
        Ok(kept)
    }
}

/// The pusher of witness `index`: while this node writes the log, waits for a checkpoint past
/// what the witness cosigned and pushes it at most once per `interval`; a failure waits for
/// the next interval. While it does not, it pushes nothing (the writer does) and takes the
/// witness's cosigned size from the database as checkpoints come, so that its status, and
/// its first push should it become the writer, start from what the writer achieved.
async fn push_when_grown(
    witness: Weak<Witness>,
    index: usize,
    resolver: Arc<Resolver>,
    federation: FederationConfig,
    interval: Duration,
) {
    // awc clients are per thread: this task's own, on the arbiter it runs on.
    let client = OutboundClient::new(resolver, &federation);
    let Some((mut signed, mut role)) = witness
        .upgrade()
        .map(|w| (w.transparency.watch_signed(), w.transparency.role()))
    else {
        return;
    };
    // A role that can no longer change (the log is going) is not waited on.
    let mut role_open = true;
    let mut writes = role.borrow_and_update().writes();
    let mut last_push: Option<tokio::time::Instant> = None;
    loop {
        loop {
            let size = *signed.borrow_and_update();
            let Some(w) = witness.upgrade() else { return };
            if writes && size > lock(&w.witnesses[index].status).cosigned_size {
                break;
            }
            drop(w);
            tokio::select! {
                changed = signed.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    if !writes {
                        let Some(w) = witness.upgrade() else { return };
                        w.reload_status(index).await;
                    }
                }
                changed = role.changed(), if role_open => match changed {
                    Ok(()) => {
                        let now_writes = role.borrow_and_update().writes();
                        if now_writes && !writes {
                            let Some(w) = witness.upgrade() else { return };
                            w.reload_status(index).await;
                        }
                        writes = now_writes;
                    }
                    Err(_) => role_open = false,
                },
            }
        }
        if let Some(last) = last_push {
            tokio::time::sleep_until(last + interval).await;
        }
        if !role.borrow().writes() {
            continue;
        }
        let Some(w) = witness.upgrade() else { return };
        last_push = Some(tokio::time::Instant::now());
        if let Some(published) = w.transparency.latest() {
            w.push(&client, index, &published).await;
        }
    }
}

/// Why a push did not bring back a cosignature.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error(transparent)]
    Unreachable(#[from] FetchError),
    #[error("the witness has cosigned size {held}")]
    Conflict { held: u64 },
    #[error("the witness has cosigned size {held}, past our latest checkpoint ({size})")]
    Ahead { held: u64, size: u64 },
    #[error("the witness refused the checkpoint ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("the witness's answer is not a valid cosignature: {0}")]
    Invalid(String),
    /// The witness's keys could not be fetched: its cosignature is not kept unchecked.
    #[error("{0}")]
    Unchecked(String),
    #[error("cannot build the consistency proof: {0}")]
    Proof(ReadError),
    #[error("cannot store the cosignature: {0}")]
    Store(StoreError),
}

impl PushError {
    /// The `result` label of `witness_pushes`.
    fn label(&self) -> &'static str {
        match self {
            PushError::Unreachable(_) | PushError::Unchecked(_) => "unreachable",
            PushError::Conflict { .. } => "conflict",
            PushError::Ahead { .. } => "ahead",
            PushError::Refused { .. } => "refused",
            PushError::Invalid(_) => "invalid",
            PushError::Proof(_) | PushError::Store(_) => "error",
        }
    }
}

/// A parsed add-checkpoint body.
struct AddCheckpoint {
    old: u64,
    proof: Vec<Hash>,
    /// The checkpoint note as received (kept in `witnessed_logs`).
    note_text: String,
    note: Note,
    checkpoint: Checkpoint,
}

impl AddCheckpoint {
    /// `old <N>\n`, up to 63 base64 hash lines, a blank line, then the checkpoint note.
    fn parse(body: &[u8]) -> Result<AddCheckpoint, WitnessError> {
        let malformed = |what: &str| WitnessError::Malformed(what.to_owned());
        if body.len() > MAX_REQUEST_BYTES {
            return Err(malformed("the body is over 64 KiB"));
        }
        let text =
            std::str::from_utf8(body).map_err(|_| malformed("the body is not UTF-8 text"))?;
        let (first, mut rest) = text
            .split_once('\n')
            .ok_or_else(|| malformed("the body must start with a line `old <size>`"))?;
        let old = first
            .strip_prefix("old ")
            .and_then(parse_decimal)
            .ok_or_else(|| {
                malformed("the first line must be `old <size>` (decimal, no leading zeroes)")
            })?;
        let mut proof = Vec::new();
        loop {
            let (line, after) = rest.split_once('\n').ok_or_else(|| {
                malformed("the body has no blank line between the proof and the checkpoint")
            })?;
            rest = after;
            if line.is_empty() {
                break;
            }
            if proof.len() == MAX_PROOF_LINES {
                return Err(malformed("more than 63 consistency proof lines"));
            }
            let hash = STANDARD
                .decode(line)
                .ok()
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or_else(|| {
                    WitnessError::Malformed(format!(
                        "consistency proof line {} is not a base64 SHA-256 hash",
                        proof.len() + 1
                    ))
                })?;
            proof.push(hash);
        }
        let note = Note::parse(rest).map_err(|e| {
            WitnessError::Malformed(format!("the checkpoint is not a signed note: {e}"))
        })?;
        let checkpoint = Checkpoint::parse(&note.body)
            .ok_or_else(|| malformed("the note is not a checkpoint (origin, size, root hash)"))?;
        if i64::try_from(checkpoint.size).is_err() {
            return Err(malformed("the checkpoint's size is too large"));
        }
        Ok(AddCheckpoint {
            old,
            proof,
            note_text: rest.to_owned(),
            note,
            checkpoint,
        })
    }
}

/// The add-checkpoint body of a push.
fn request_body(old: u64, proof: &[Hash], note: &str) -> String {
    let mut body = format!("old {old}\n");
    for hash in proof {
        body.push_str(&STANDARD.encode(hash));
        body.push('\n');
    }
    body.push('\n');
    body.push_str(note);
    body
}

/// A size as C2SP writes it: ASCII decimal without leading zeroes, at most `i64::MAX`.
fn parse_decimal(text: &str) -> Option<u64> {
    let valid = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    valid
        .then(|| text.parse::<i64>().ok())
        .flatten()
        .map(|n| n as u64)
}

/// The body of a 409 answer: `<size>\n`.
fn parse_size(text: &str) -> Option<u64> {
    text.strip_suffix('\n').and_then(parse_decimal)
}

/// Whether `signature` (64 bytes) is `key`'s over `message`.
fn verifies(key: &VerifyingKey, message: &[u8], signature: &[u8]) -> bool {
    Signature::from_slice(signature).is_ok_and(|s| key.verify_strict(message, &s).is_ok())
}

fn excerpt(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(MAX_ERROR_DETAIL) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// A status lock; a poisoned one still holds a whole value (fields are set one by one).
fn lock(status: &Mutex<PushStatus>) -> std::sync::MutexGuard<'_, PushStatus> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note_text() -> String {
        let body = note::checkpoint_body("a.test/log", 5, &[3; 32]);
        format!(
            "{body}\n{}",
            note::signature_line("a.test/log", [1, 2, 3, 4], &[7; 64])
        )
    }

    #[test]
    fn requests_round_trip() {
        let proof = vec![[1u8; 32], [2u8; 32]];
        let body = request_body(3, &proof, &note_text());
        let parsed = AddCheckpoint::parse(body.as_bytes()).expect("parses");
        assert_eq!(parsed.old, 3);
        assert_eq!(parsed.proof, proof);
        assert_eq!(parsed.note_text, note_text());
        assert_eq!(parsed.checkpoint.size, 5);
        let empty =
            AddCheckpoint::parse(request_body(0, &[], &note_text()).as_bytes()).expect("parses");
        assert!(empty.proof.is_empty());
    }

    #[test]
    fn malformed_requests_are_refused() {
        let note = note_text();
        let line = STANDARD.encode([1u8; 32]);
        for bad in [
            format!("old 01\n\n{note}"),
            format!("old -1\n\n{note}"),
            format!("old 1\n{note}"),
            format!("old\n\n{note}"),
            format!("old 1\nAAAA\n\n{note}"),
            format!("old 1\n{}\n{note}", format!("{line}\n").repeat(64)),
            "old 1\n\nnot a note\n".to_owned(),
            format!("old 1\n\n{}", note.replace("\n5\n", "\n05\n")),
        ] {
            assert!(
                matches!(
                    AddCheckpoint::parse(bad.as_bytes()),
                    Err(WitnessError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
        let sixty_three = format!("old 1\n{}\n{note}", format!("{line}\n").repeat(63));
        assert_eq!(
            AddCheckpoint::parse(sixty_three.as_bytes())
                .expect("63 lines")
                .proof
                .len(),
            63
        );
    }

    #[test]
    fn sizes_are_strict_decimals() {
        assert_eq!(parse_size("0\n"), Some(0));
        assert_eq!(parse_size("42\n"), Some(42));
        for bad in [
            "42",
            "042\n",
            "\n",
            "4 2\n",
            "-1\n",
            "99999999999999999999\n",
        ] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }
}
