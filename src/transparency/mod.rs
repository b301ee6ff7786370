//! The verifiable log (DESIGN §2): checkpoints signed over the Merkle tree the log writer
//! maintains, the reads that prove things about it, and witnessing between servers.
//!
//! ```text
//!  EventLog (store::log)            the ONE tree maintainer: leaf hashes and tiles written
//!    │ committed batches            in the transaction of their entries (store::tree)
//!    ▼
//!  checkpoint signer (here)         the ONE checkpoint signer: when the log grew, at most every
//!    │ log_checkpoints              `checkpoint_interval`, root read from the tiles, C2SP note
//!    ▼                              signed with the current server key, kept forever
//!  latest checkpoint (memory) ───▶  /log/checkpoint, proofs, tree-head (api::log)
//!    │
//!    └─▶ witness pusher (witness)   pushes grown checkpoints to `transparency.witnesses`,
//!                                   keeps their cosignatures; `witness_for` logs are cosigned
//!                                   by POST /log/add-checkpoint
//! ```
//!
//! Everything here reads the tree through [`reader::TreeReader`] (stored tiles, cached), so
//! roots, proofs and tiles cost a few reads at any size.
//!
//! Several nodes on one database (DESIGN §7): only the node that writes the log signs
//! (`EventLogHandle::role`), and every other node serves what it signed, read from
//! `log_checkpoints` every `checkpoint_interval` ([`Transparency::refresh`]: the newest row
//! and its cosignatures). A node that becomes the writer first adopts the newest stored
//! checkpoint and signs only past it, so the checkpoints continue one chain whoever signs
//! them; a node of a cluster inserts a checkpoint only if none as large is stored (a deposed
//! writer still signing cannot publish a smaller tree after its successor's) and then serves
//! the newest stored one. One node (`Role::Single`) signs and serves as it always did.

pub mod reader;
pub mod witness;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use sea_orm::{EntityTrait, QueryOrder, QueryTrait, Set};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

use crate::clock::now_ms;
use crate::cluster::{Role, RoleWatch};
use crate::config::TransparencyConfig;
use crate::core::merkle::Hash;
use crate::core::note::{self, ED25519_TYPE};
use crate::core::tiles::TileId;
use crate::federation::signing::{unb64, KeyRing};
use crate::store::{EventLogHandle, Store, StoreError};
use crate::telemetry::Metrics;
use entities::{log_checkpoints, log_cosignatures};

pub use reader::{ReadError, TreeReader};

/// A checkpoint we signed, with the cosignatures witnesses returned for it.
#[derive(Clone, Debug)]
pub struct Published {
    pub size: u64,
    pub root: Hash,
    /// The signed note: body, blank line, our signature line.
    pub note: String,
    /// Cosignature lines (each ending in a newline), appended when served.
    pub cosignatures: Vec<String>,
    /// `ed25519:<version>` of the key that signed it.
    pub key_id: String,
    /// ms since the epoch.
    pub signed_at: i64,
}

impl Published {
    /// The note as served: our signature, then every cosignature.
    pub fn served(&self) -> String {
        let mut text = self.note.clone();
        for line in &self.cosignatures {
            text.push_str(line);
        }
        text
    }

    /// The base64 of our signature line's bytes (key ID ‖ signature).
    pub fn signature_b64(&self) -> &str {
        self.note
            .rsplit_once(' ')
            .map(|(_, sig)| sig.trim_end())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransparencyError {
    /// A size or index outside the published tree (400 `SY_INVALID_PARAM`).
    #[error("{0}")]
    OutOfRange(String),
    /// Nothing there (404 `SY_NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct Transparency {
    server_name: String,
    /// `<server_name>/log`: the checkpoint origin line and note key name.
    origin: String,
    store: Store,
    /// Checkpoints are written through the log's writer (see `insert_checkpoint`).
    log: EventLogHandle,
    keys: Arc<KeyRing>,
    reader: TreeReader,
    config: TransparencyConfig,
    latest: RwLock<Option<Arc<Published>>>,
    /// The newest checkpoint's size, for waiters (the witness pusher).
    signed: watch::Sender<u64>,
    /// Whether this node writes the log (and so signs), and whether it is a cluster's node.
    role: RoleWatch,
    metrics: Arc<Metrics>,
}

impl Transparency {
    /// Loads the latest checkpoint and starts the signer.
    pub async fn start(
        server_name: &str,
        config: &TransparencyConfig,
        store: &Store,
        log: &EventLogHandle,
        keys: Arc<KeyRing>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Transparency>, StoreError> {
        let committed = log.subscribe();
        let latest = load_latest(store).await?;
        if let Some(latest) = &latest {
            check_against_log(store, latest).await?;
        }
        let (signed, _) = watch::channel(latest.as_ref().map_or(0, |p| p.size));
        let role = log.role();
        let transparency = Arc::new(Transparency {
            server_name: server_name.to_owned(),
            origin: format!("{server_name}/log"),
            store: store.clone(),
            log: log.clone(),
            keys,
            reader: TreeReader::new(store.clone()),
            config: config.clone(),
            latest: RwLock::new(latest.map(Arc::new)),
            signed,
            role: role.clone(),
            metrics,
        });
        actix_web::rt::spawn(sign_when_grown(
            Arc::downgrade(&transparency),
            store.clone(),
            config.checkpoint_interval,
            committed,
            role,
        ));
        Ok(transparency)
    }

    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn reader(&self) -> &TreeReader {
        &self.reader
    }

    pub fn config(&self) -> &TransparencyConfig {
        &self.config
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn keys(&self) -> &KeyRing {
        &self.keys
    }

    /// The latest checkpoint, if one was signed yet.
    pub fn latest(&self) -> Option<Arc<Published>> {
        self.latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Follows the size of the latest checkpoint.
    pub fn watch_signed(&self) -> watch::Receiver<u64> {
        self.signed.subscribe()
    }

    /// This node's role: it signs and pushes to witnesses while `role.borrow().writes()`.
    pub fn role(&self) -> RoleWatch {
        self.role.clone()
    }

    /// Serves the newest checkpoint stored (with its cosignatures) if it is newer than the one
    /// served, or the same with other cosignatures: how a node that does not sign serves what
    /// the writer signed, and where a node that becomes the writer continues from. Two
    /// indexed reads. Answers whether what is served changed.
    pub async fn refresh(&self) -> Result<bool, StoreError> {
        match load_latest(&self.store).await? {
            Some(stored) => Ok(self.adopt(stored)),
            None => Ok(false),
        }
    }

    /// Serves `stored` unless what is served is newer or the same.
    fn adopt(&self, stored: Published) -> bool {
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = latest.as_ref() {
            let same = current.size == stored.size && current.cosignatures == stored.cosignatures;
            if current.size > stored.size || same {
                return false;
            }
        }
        let size = stored.size;
        *latest = Some(Arc::new(stored));
        drop(latest);
        self.metrics.log_checkpoint_size.set(size as i64);
        self.signed.send_if_modified(|signed| {
            let grew = size > *signed;
            *signed = (*signed).max(size);
            grew
        });
        true
    }

    /// The size of the latest checkpoint (0 before the first).
    pub fn published_size(&self) -> u64 {
        self.latest().map_or(0, |p| p.size)
    }

    /// The verifier key of our log under the current server key.
    pub fn vkey(&self) -> String {
        let key = self.keys.current();
        note::vkey(&self.origin, ED25519_TYPE, key.verifying_key().as_bytes())
    }

    /// The verifier keys of our log under each retired server key.
    pub fn old_vkeys(&self) -> Vec<String> {
        self.keys
            .retired()
            .iter()
            .filter_map(|k| unb64(&k.public_key))
            .filter_map(|b| <[u8; 32]>::try_from(b).ok())
            .map(|key| note::vkey(&self.origin, ED25519_TYPE, &key))
            .collect()
    }

    /// The public keys our log has been signed with: the current server key and the retired
    /// ones (a rotation continues the same log under the new key).
    pub fn log_keys(&self) -> Vec<[u8; 32]> {
        let mut keys = vec![self.keys.current().verifying_key().to_bytes()];
        keys.extend(
            self.keys
                .retired()
                .iter()
                .filter_map(|k| unb64(&k.public_key))
                .filter_map(|b| <[u8; 32]>::try_from(b).ok()),
        );
        keys
    }

    /// Checks the whole log: chain, tree, latest checkpoint (see [`Store::verify_log`]).
    pub async fn verify(&self) -> Result<crate::store::verify::LogReport, StoreError> {
        self.store.verify_log(&self.origin, &self.log_keys()).await
    }

    /// Signs a checkpoint over the first `size` entries and makes it the latest.
    async fn sign(&self, size: u64) -> Result<Arc<Published>, TransparencyError> {
        let root = self.reader.root(size).await?;
        let key = self.keys.current();
        let body = note::checkpoint_body(&self.origin, size, &root);
        let public = key.verifying_key();
        let key_id = note::key_id(&self.origin, ED25519_TYPE, public.as_bytes());
        let signature = key.sign(body.as_bytes());
        let text = format!(
            "{body}\n{}",
            note::signature_line(&self.origin, key_id, &signature.to_bytes())
        );
        let signed_at = now_ms();
        if *self.role.borrow() != Role::Single {
            // Another node may have signed as far or further (this node was deposed
            // meanwhile): insert only past every stored checkpoint, then serve the newest.
            let insert = insert_if_newest(size, &root, &text, &key.key_id(), signed_at);
            self.log
                .write_beside(|backend| vec![backend.build(&insert)])
                .await?;
            self.refresh().await?;
            return self
                .latest()
                .ok_or_else(|| TransparencyError::NotFound("no checkpoint is stored".into()));
        }
        let row = log_checkpoints::ActiveModel {
            size: Set(size as i64),
            root_hash: Set(hex::encode(root)),
            note: Set(text.clone()),
            key_id: Set(key.key_id()),
            created_at: Set(signed_at),
        };
        self.log
            .write_beside(|backend| vec![log_checkpoints::Entity::insert(row).build(backend)])
            .await?;
        let published = Arc::new(Published {
            size,
            root,
            note: text,
            cosignatures: Vec::new(),
            key_id: key.key_id(),
            signed_at,
        });
        *self.latest.write().unwrap_or_else(|e| e.into_inner()) = Some(published.clone());
        self.metrics.log_checkpoint_size.set(size as i64);
        self.signed.send_replace(size);
        tracing::debug!(size, "checkpoint signed");
        Ok(published)
    }

    /// Records a witness's cosignature of checkpoint `size` and serves it from now on.
    pub(crate) async fn add_cosignature(
        &self,
        size: u64,
        witness: &str,
        lines: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let row = log_cosignatures::ActiveModel {
            size: Set(size as i64),
            witness: Set(witness.to_owned()),
            line: Set(lines.to_owned()),
            cosigned_at: Set(now),
        };
        let upsert = log_cosignatures::Entity::insert(row).on_conflict(
            sea_orm::sea_query::OnConflict::columns([
                log_cosignatures::Column::Size,
                log_cosignatures::Column::Witness,
            ])
            .update_columns([
                log_cosignatures::Column::Line,
                log_cosignatures::Column::CosignedAt,
            ])
            .to_owned(),
        );
        self.log
            .write_beside(|backend| vec![upsert.build(backend)])
            .await?;
        let mut latest = self.latest.write().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = latest.as_ref().filter(|p| p.size == size) {
            let mut updated = (**current).clone();
            let prefix = format!("\u{2014} {witness} ");
            updated.cosignatures.retain(|l| !l.starts_with(&prefix));
            updated
                .cosignatures
                .extend(lines.split_inclusive('\n').map(str::to_owned));
            *latest = Some(Arc::new(updated));
        }
        Ok(())
    }

    /// The published checkpoint of exactly `size`, with its cosignatures, if there is one.
    pub async fn checkpoint_at(&self, size: u64) -> Result<Option<Published>, StoreError> {
        if let Some(latest) = self.latest().filter(|p| p.size == size) {
            return Ok(Some((*latest).clone()));
        }
        let Some(row) = log_checkpoints::Entity::find_by_id(size as i64)
            .one(self.store.readers())
            .await?
        else {
            return Ok(None);
        };
        published_from(&self.store, row).await.map(Some)
    }

    /// Checks that `size` (a tree size a caller named) is within the published tree.
    pub fn check_size(&self, size: u64, what: &str) -> Result<u64, TransparencyError> {
        let published = self.published_size();
        if size == 0 || size > published {
            return Err(TransparencyError::OutOfRange(format!(
                "{what} must be between 1 and the latest checkpoint's size ({published})"
            )));
        }
        Ok(size)
    }

    /// A hash tile's bytes, if the latest checkpoint holds it at that width.
    pub async fn tile(&self, id: TileId) -> Result<actix_web::web::Bytes, TransparencyError> {
        if !id.within(self.published_size()) {
            return Err(TransparencyError::NotFound(format!(
                "tile {} is not in the latest checkpoint",
                id.path()
            )));
        }
        Ok(self.reader.tile(id).await?.bytes.clone())
    }

    /// An entry bundle: each leaf of tile `index`'s entries as a big-endian u16 length and the
    /// leaf bytes.
    pub async fn entry_bundle(&self, index: u64, width: u16) -> Result<Vec<u8>, TransparencyError> {
        let id = TileId {
            level: 0,
            index,
            width,
        };
        if !id.within(self.published_size()) {
            return Err(TransparencyError::NotFound(format!(
                "entry bundle {} is not in the latest checkpoint",
                id.path()
            )));
        }
        let first = index * crate::core::tiles::TILE_WIDTH as u64;
        let entries = self.store.read_after(first, u64::from(width)).await?;
        let mut bundle = Vec::with_capacity(entries.len() * 600);
        for (i, entry) in entries.iter().enumerate() {
            if entry.seq != first + i as u64 + 1 {
                return Err(StoreError::Corrupt {
                    seq: (first + i as u64 + 1) as i64,
                    problem: "missing from the log".into(),
                }
                .into());
            }
            let leaf = entry.leaf();
            let len = u16::try_from(leaf.len()).map_err(|_| StoreError::Corrupt {
                seq: entry.seq as i64,
                problem: "the leaf is over 65,535 bytes".into(),
            })?;
            bundle.extend_from_slice(&len.to_be_bytes());
            bundle.extend_from_slice(leaf.as_bytes());
        }
        if entries.len() != usize::from(width) {
            return Err(StoreError::Corrupt {
                seq: (first + entries.len() as u64 + 1) as i64,
                problem: "missing from the log".into(),
            }
            .into());
        }
        Ok(bundle)
    }
}

/// A C2SP `c2sp.org/tlog-proof@v1` for entry `seq` against `published`: the leaf's index,
/// its inclusion proof, a blank line, the checkpoint note with its cosignatures.
pub async fn tlog_proof(
    reader: &TreeReader,
    published: &Published,
    seq: u64,
) -> Result<String, TransparencyError> {
    if seq == 0 || seq > published.size {
        return Err(TransparencyError::OutOfRange(format!(
            "seq must be between 1 and the latest checkpoint's size ({})",
            published.size
        )));
    }
    let proof = reader.inclusion(seq - 1, published.size).await?;
    let mut text = format!("c2sp.org/tlog-proof@v1\nindex {}\n", seq - 1);
    for hash in &proof {
        text.push_str(&base64::engine::general_purpose::STANDARD.encode(hash));
        text.push('\n');
    }
    text.push('\n');
    text.push_str(&published.served());
    Ok(text)
}

async fn published_from(
    store: &Store,
    row: log_checkpoints::Model,
) -> Result<Published, StoreError> {
    let corrupt = |problem: &str| StoreError::Corrupt {
        seq: row.size,
        problem: format!("checkpoint {}: {problem}", row.size),
    };
    let root: Hash = hex::decode(&row.root_hash)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| corrupt("unreadable root"))?;
    let cosignatures = log_cosignatures::Entity::find()
        .filter(sea_orm::ColumnTrait::eq(
            &log_cosignatures::Column::Size,
            row.size,
        ))
        .order_by_asc(log_cosignatures::Column::Witness)
        .all(store.readers())
        .await?
        .into_iter()
        .flat_map(|c| {
            c.line
                .split_inclusive('\n')
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect();
    Ok(Published {
        size: row.size as u64,
        root,
        note: row.note,
        cosignatures,
        key_id: row.key_id,
        signed_at: row.created_at,
    })
}

use sea_orm::QueryFilter;

/// Refuses to start on a log that no longer matches the checkpoint we published last (a
/// partial restore, entries or tiles edited by hand): signing on would publish a fork.
async fn check_against_log(store: &Store, latest: &Published) -> Result<(), StoreError> {
    let (head, _) = store.head().await?;

    let corrupt = |problem: String| StoreError::Corrupt {
        seq: latest.size as i64,
        problem,
    };
    if latest.size > head {
        return Err(corrupt(format!(
            "the latest signed checkpoint covers {} entries but the log holds {head}: \
             restore the whole database, not part of it",
            latest.size
        )));
    }
    let root = TreeReader::new(store.clone())
        .root(latest.size)
        .await
        .map_err(|e| corrupt(format!("cannot read the Merkle tree: {e}")))?;
    if root != latest.root {
        return Err(corrupt(format!(
            "the Merkle tree at size {} does not match the signed checkpoint of that size: \
             run `switchyard log verify`",
            latest.size
        )));
    }
    Ok(())
}

/// The latest checkpoint in the database, with its cosignatures.
pub async fn load_latest(store: &Store) -> Result<Option<Published>, StoreError> {
    let row = log_checkpoints::Entity::find()
        .order_by_desc(log_checkpoints::Column::Size)
        .one(store.readers())
        .await?;
    match row {
        None => Ok(None),
        Some(row) => published_from(store, row).await.map(Some),
    }
}

/// `INSERT` of a checkpoint row that inserts nothing when a checkpoint of `size` or larger is
/// stored already.
fn insert_if_newest(
    size: u64,
    root: &Hash,
    note: &str,
    key_id: &str,
    signed_at: i64,
) -> sea_orm::sea_query::InsertStatement {
    use sea_orm::sea_query::{Expr, Query};
    use sea_orm::ColumnTrait as _;
    let size = i64::try_from(size).unwrap_or(i64::MAX);
    let larger = Query::select()
        .expr(Expr::val(1))
        .from(log_checkpoints::Entity)
        .and_where(log_checkpoints::Column::Size.gte(size))
        .to_owned();
    let values = Query::select()
        .exprs([
            Expr::val(size),
            Expr::val(hex::encode(root)),
            Expr::val(note),
            Expr::val(key_id),
            Expr::val(signed_at),
        ])
        .and_where(Expr::exists(larger).not())
        .to_owned();
    let mut insert = Query::insert();
    insert.into_table(log_checkpoints::Entity).columns([
        log_checkpoints::Column::Size,
        log_checkpoints::Column::RootHash,
        log_checkpoints::Column::Note,
        log_checkpoints::Column::KeyId,
        log_checkpoints::Column::CreatedAt,
    ]);
    // Five columns, five values: the only way this fails.
    let _ = insert.select_from(values);
    insert
}

/// What woke the signer while it waited.
enum Woken {
    /// The log grew past the latest checkpoint.
    Grew,
    /// This node stopped writing the log.
    Demoted,
    /// The instance or the log is gone.
    Gone,
}

/// The signer: a new checkpoint whenever the log has grown, at most once per interval, while
/// this node writes the log; while it does not, it serves the newest stored checkpoint
/// ([`follow_checkpoints`]). Holds the instance weakly (the instance holds the log it
/// follows); ends with the log.
async fn sign_when_grown(
    transparency: std::sync::Weak<Transparency>,
    store: Store,
    interval: Duration,
    mut committed: tokio::sync::broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    mut role: RoleWatch,
) {
    let mut head = match store.head().await {
        Ok((seq, _)) => seq,
        Err(error) => {
            tracing::error!(%error, "the checkpoint signer cannot read the log's head");
            0
        }
    };
    let mut last_signed: Option<tokio::time::Instant> = None;
    // A role that can no longer change (its sender is gone with the log) is not waited on.
    let mut role_open = true;
    loop {
        if !role.borrow_and_update().writes() {
            if !follow_checkpoints(
                &transparency,
                interval,
                &mut committed,
                &mut role,
                &mut role_open,
            )
            .await
            {
                return;
            }
            // Continue from what the previous writer signed, past the head it reached.
            let Some(signer) = transparency.upgrade() else {
                return;
            };
            if let Err(error) = signer.refresh().await {
                tracing::error!(%error, "the new writer cannot read the latest checkpoint");
            }
            if let Ok((seq, _)) = store.head().await {
                head = head.max(seq);
            }
            last_signed = None;
            tracing::info!(
                size = signer.published_size(),
                head,
                "this node writes the log: signing checkpoints from the latest stored one"
            );
            continue;
        }
        match wait_for_growth(
            &transparency,
            &store,
            &mut head,
            &mut committed,
            &mut role,
            &mut role_open,
        )
        .await
        {
            Woken::Grew => {}
            Woken::Demoted => continue,
            Woken::Gone => return,
        }
        if let Some(last) = last_signed {
            tokio::time::sleep_until(last + interval).await;
        }
        // Cover whatever committed while waiting.
        loop {
            match committed.try_recv() {
                Ok(batch) => {
                    if let Some(last) = batch.entries.last() {
                        head = head.max(last.seq);
                    }
                }
                Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => {
                    if let Ok((seq, _)) = store.head().await {
                        head = head.max(seq);
                    }
                }
                Err(_) => break,
            }
        }
        if !role.borrow().writes() {
            continue;
        }
        last_signed = Some(tokio::time::Instant::now());
        let Some(signer) = transparency.upgrade() else {
            return;
        };
        if let Err(error) = signer.sign(head).await {
            tracing::error!(%error, size = head, "cannot sign a checkpoint; retrying");
            signer.metrics.log_checkpoint_failures.inc();
            drop(signer);
            tokio::time::sleep(Duration::from_secs(1).max(interval)).await;
        }
    }
}

/// Waits for the log to grow past the latest checkpoint (`head` follows the committed
/// batches), or for this node to stop writing.
async fn wait_for_growth(
    transparency: &std::sync::Weak<Transparency>,
    store: &Store,
    head: &mut u64,
    committed: &mut tokio::sync::broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    role: &mut RoleWatch,
    role_open: &mut bool,
) -> Woken {
    loop {
        match transparency.upgrade().map(|t| t.published_size()) {
            None => return Woken::Gone,
            Some(size) if *head > size => return Woken::Grew,
            Some(_) => {}
        }
        tokio::select! {
            received = committed.recv() => match received {
                Ok(batch) => {
                    if let Some(last) = batch.entries.last() {
                        *head = (*head).max(last.seq);
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    if let Ok((seq, _)) = store.head().await {
                        *head = (*head).max(seq);
                    }
                }
                Err(RecvError::Closed) => return Woken::Gone,
            },
            changed = role.changed(), if *role_open => match changed {
                Ok(()) if !role.borrow_and_update().writes() => return Woken::Demoted,
                Ok(()) => {}
                Err(_) => *role_open = false,
            },
        }
    }
}

/// While this node does not write the log: serves the newest stored checkpoint, read every
/// `interval` (the writer signs at most that often), and keeps the subscription drained.
/// Answers `true` when this node writes, `false` when the instance or the log is gone.
async fn follow_checkpoints(
    transparency: &std::sync::Weak<Transparency>,
    interval: Duration,
    committed: &mut tokio::sync::broadcast::Receiver<Arc<crate::store::CommittedBatch>>,
    role: &mut RoleWatch,
    role_open: &mut bool,
) -> bool {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let Some(transparency) = transparency.upgrade() else {
                    return false;
                };
                if let Err(error) = transparency.refresh().await {
                    tracing::warn!(%error, "cannot read the latest checkpoint");
                }
            }
            received = committed.recv() => {
                if let Err(RecvError::Closed) = received {
                    return false;
                }
            }
            changed = role.changed(), if *role_open => match changed {
                Ok(()) if role.borrow_and_update().writes() => return true,
                Ok(()) => {}
                Err(_) => {
                    *role_open = false;
                    return role.borrow().writes();
                }
            },
        }
    }
}
