//! `switchyard log verify`: walks the whole hash chain and names the first bad entry.
//!
//! Each entry must have the next `seq` (no gap), carry the previous entry's `entry_hash` as
//! its `prev_hash`, and its `entry_hash` must equal SHA-256(prev ‖ leaf) recomputed from the
//! stored fields. Any hand edit of any field of any row fails one of these checks.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{entry_from_row, Store, StoreError};
use crate::core::chain::ChainHash;
use crate::core::event::LogEntry;
use entities::events;

const PAGE: u64 = 10_000;

/// The result of a chain walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Entries that verified, from seq 1 on.
    pub verified: u64,
    /// The `entry_hash` of the last verified entry.
    pub head: ChainHash,
    /// The first bad entry and what is wrong with it.
    pub first_bad: Option<BadEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadEntry {
    pub seq: u64,
    pub problem: String,
}

impl Store {
    /// Walks the chain from the first entry to the last.
    pub async fn verify_chain(&self) -> Result<ChainReport, StoreError> {
        self.walk_chain(|_| {}).await
    }

    /// Walks the chain, handing each verified entry to `visit`, in `seq` order, and stops at
    /// the first bad one.
    async fn walk_chain(
        &self,
        mut visit: impl FnMut(&LogEntry),
    ) -> Result<ChainReport, StoreError> {
        let mut verified = 0u64;
        let mut head = ChainHash::GENESIS;
        loop {
            let rows = events::Entity::find()
                .filter(events::Column::Seq.gt(verified as i64))
                .order_by_asc(events::Column::Seq)
                .limit(PAGE)
                .all(self.readers())
                .await?;
            if rows.is_empty() {
                return Ok(ChainReport {
                    verified,
                    head,
                    first_bad: None,
                });
            }
            for row in rows {
                let expected_seq = verified + 1;
                let bad = |problem: String| ChainReport {
                    verified,
                    head,
                    first_bad: Some(BadEntry {
                        seq: expected_seq,
                        problem,
                    }),
                };
                if row.seq != expected_seq as i64 {
                    return Ok(bad(format!(
                        "missing: the next entry found has seq {}",
                        row.seq
                    )));
                }
                let entry = match entry_from_row(row) {
                    Ok(entry) => entry,
                    Err(StoreError::Corrupt { problem, .. }) => return Ok(bad(problem)),
                    Err(other) => return Err(other),
                };
                if entry.prev_hash != head {
                    return Ok(bad(format!(
                        "prev_hash is {} but the previous entry_hash is {head}",
                        entry.prev_hash
                    )));
                }
                let computed = entry.computed_hash();
                if computed != entry.entry_hash {
                    return Ok(bad(format!(
                        "entry_hash is {} but its fields hash to {computed}",
                        entry.entry_hash
                    )));
                }
                visit(&entry);
                verified = expected_seq;
                head = entry.entry_hash;
            }
        }
    }
}

/// The whole log checked: the chain, then the Merkle tree recomputed from the entries and
/// from the stored tiles, both against the latest checkpoint, and that checkpoint's signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogReport {
    pub chain: ChainReport,
    /// The size of the latest checkpoint (checked), if one was signed.
    pub checkpoint_size: Option<u64>,
    /// Every problem found, in words naming what is wrong; empty when the log verifies.
    pub errors: Vec<String>,
}

impl LogReport {
    pub fn valid(&self) -> bool {
        self.errors.is_empty()
    }
}

impl Store {
    /// Walks the chain (as [`Store::verify_chain`]) while recomputing the Merkle tree, and
    /// checks the latest checkpoint three ways: its signature by one of `log_keys` (the
    /// server's public keys, current and retired), its root against the tree recomputed from
    /// the entries, and against the tree the stored tiles give. Any hand edit of an entry, a
    /// tile or a checkpoint fails one of them.
    pub async fn verify_log(
        &self,
        origin: &str,
        log_keys: &[[u8; 32]],
    ) -> Result<LogReport, StoreError> {
        use crate::core::merkle::leaf_hash;
        use crate::core::note::{self, Checkpoint, Note};
        use crate::core::tiles::TileEdge;
        use entities::log_checkpoints;
        use sha2::{Digest, Sha256};
        use std::collections::HashMap;

        let latest = log_checkpoints::Entity::find()
            .order_by_desc(log_checkpoints::Column::Size)
            .one(self.readers())
            .await?;
        let mut errors = Vec::new();
        let mut checkpoint = None;
        if let Some(row) = &latest {
            let size = row.size as u64;
            let parsed = Note::parse(&row.note)
                .ok()
                .and_then(|n| Checkpoint::parse(&n.body).map(|c| (n, c)));
            match parsed {
                None => errors.push(format!("checkpoint {size}: the stored note is malformed")),
                Some((note_text, body)) => {
                    if body.origin != origin
                        || body.size != size
                        || hex::encode(body.root) != row.root_hash
                    {
                        errors.push(format!(
                            "checkpoint {size}: the note says {} at size {} with root {}, the row says size {size} root {}",
                            body.origin,
                            body.size,
                            hex::encode(body.root),
                            row.root_hash
                        ));
                    }
                    let signed = note_text.signatures.iter().any(|s| {
                        log_keys.iter().any(|key| {
                            s.name == origin
                                && s.key_id == note::key_id(origin, note::ED25519_TYPE, key)
                                && ed25519_dalek::VerifyingKey::from_bytes(key)
                                    .ok()
                                    .zip(ed25519_dalek::Signature::from_slice(&s.bytes).ok())
                                    .is_some_and(|(k, sig)| {
                                        k.verify_strict(note_text.body.as_bytes(), &sig).is_ok()
                                    })
                        })
                    });
                    if !signed {
                        errors.push(format!(
                            "checkpoint {size}: no valid signature by the server's log keys"
                        ));
                    }
                    checkpoint = Some((size, body.root));
                }
            }
        }
        // The tree recomputed from the entries: its root at the checkpoint, and a digest of
        // every tile it fills, to compare with the stored tiles afterwards.
        let mut edge = TileEdge::new();
        let mut expected: HashMap<(u32, u64), [u8; 32]> = HashMap::new();
        let mut root_at_checkpoint = None;
        let chain = self
            .walk_chain(|entry| {
                edge.push(leaf_hash(entry.leaf().as_bytes()));
                for tile in edge.take_completed() {
                    expected.insert(
                        (tile.level, tile.index),
                        Sha256::digest(tile.hashes.concat()).into(),
                    );
                }
                if checkpoint.is_some_and(|(size, _)| size == entry.seq) {
                    root_at_checkpoint = Some(edge.root());
                }
            })
            .await?;
        if chain.first_bad.is_none() {
            // The level-0 partial tile is not stored (it is read from the entries).
            for tile in edge.partial_rows().into_iter().filter(|t| t.level > 0) {
                expected.insert(
                    (tile.level, tile.index),
                    Sha256::digest(tile.hashes.concat()).into(),
                );
            }
            errors.extend(self.compare_tiles(expected).await?);
        }
        if let Some(bad) = &chain.first_bad {
            errors.push(format!("entry {}: {}", bad.seq, bad.problem));
        }
        if let Some((size, root)) = checkpoint {
            match root_at_checkpoint {
                None if chain.first_bad.is_none() => errors.push(format!(
                    "checkpoint {size} covers more entries than the log holds ({})",
                    chain.verified
                )),
                None => {}
                Some(recomputed) if recomputed != root => errors.push(format!(
                    "checkpoint {size}: its root {} differs from the tree recomputed from the entries ({})",
                    hex::encode(root),
                    hex::encode(recomputed)
                )),
                Some(_) => {}
            }
            match super::tree::load_edge(self.readers(), size).await {
                Ok(edge) if edge.root() != root => errors.push(format!(
                    "checkpoint {size}: the stored Merkle tiles give root {}, the checkpoint {}",
                    hex::encode(edge.root()),
                    hex::encode(root)
                )),
                Ok(_) => {}
                Err(StoreError::Corrupt { problem, .. }) => {
                    errors.push(format!("the stored Merkle tiles: {problem}"))
                }
                Err(other) => return Err(other),
            }
        }
        Ok(LogReport {
            chain,
            checkpoint_size: checkpoint.map(|(size, _)| size),
            errors,
        })
    }
}

impl Store {
    /// Compares every stored tile with the digest of the tile recomputed from the entries;
    /// names each tile that differs, is missing, or has no entries under it.
    async fn compare_tiles(
        &self,
        mut expected: std::collections::HashMap<(u32, u64), [u8; 32]>,
    ) -> Result<Vec<String>, StoreError> {
        use sha2::{Digest, Sha256};
        let mut errors = Vec::new();
        let mut after = None;
        loop {
            let rows = super::tree::tiles_after(self.readers(), after, 1000).await?;
            let Some(last) = rows.last() else { break };
            after = Some((last.0, last.1));
            for (level, idx, bytes) in rows {
                let digest: [u8; 32] = Sha256::digest(&bytes).into();
                match expected.remove(&(level, idx)) {
                    Some(want) if want == digest => {}
                    Some(_) => errors.push(format!(
                        "Merkle tile {level}/{idx} differs from the tree recomputed from the entries"
                    )),
                    None => errors.push(format!(
                        "Merkle tile {level}/{idx} is stored but no entries are under it"
                    )),
                }
            }
        }
        let mut missing: Vec<_> = expected.into_keys().collect();
        missing.sort_unstable();
        errors.extend(
            missing
                .into_iter()
                .map(|(level, idx)| format!("Merkle tile {level}/{idx} is missing")),
        );
        Ok(errors)
    }
}
