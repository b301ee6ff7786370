//! `switchyard log verify`: walks the whole hash chain and names the first bad entry.
//!
//! Each entry must have the next `seq` (no gap), carry the previous entry's `entry_hash` as
//! its `prev_hash`, and its `entry_hash` must equal SHA-256(prev ‖ leaf) recomputed from the
//! stored fields. Any hand edit of any field of any row fails one of these checks.

use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::{entry_from_row, Store, StoreError};
use crate::core::chain::ChainHash;
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
                verified = expected_seq;
                head = entry.entry_hash;
            }
        }
    }
}
