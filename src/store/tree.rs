//! The Merkle tree's stored tiles (DESIGN §2.1): written by the log writer in the transaction
//! of the entries they cover, read by everything else.
//!
//! `log_tiles (level, idx) → hashes` holds every full tile once and, for levels 1 and up, the
//! right edge's partial tile, rewritten when it grows (once per 256 entries; a partial tile is
//! a prefix of the full one, so one row serves every width up to what it holds). The level-0
//! partial tile — the leaf hashes of at most 255 entries — is not stored: readers recompute it
//! from those entries, so most commits write no tile at all. A tree of size `n` is readable at
//! any size `≤ n`: tiles, proofs and roots are reads of at most one tile per level plus at
//! most 255 entries, never a rebuild.

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::log::LogWriter;
use super::{bulk, Store, StoreError};
use crate::core::event::LogEntry;
use crate::core::merkle::{leaf_hash, Hash};
use crate::core::tiles::{TileEdge, TileRow, TILE_WIDTH};

const COLUMNS: [&str; 3] = ["level", "idx", "hashes"];
/// Entries hashed per transaction when the tree catches up with an older log.
const BACKFILL_PAGE: u64 = 20_000;

/// Upserts tiles (full ones once, partial ones as they grow).
pub(crate) async fn write_tiles(
    db: &impl ConnectionTrait,
    rows: &[TileRow],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut values = Vec::with_capacity(rows.len() * COLUMNS.len());
    for row in rows {
        values.extend([
            Value::Int(Some(row.level as i32)),
            Value::BigInt(Some(row.index as i64)),
            Value::Bytes(Some(Box::new(row.hashes.concat()))),
        ]);
    }
    bulk::insert_rows(
        db,
        "log_tiles",
        &COLUMNS,
        values,
        "ON CONFLICT (level, idx) DO UPDATE SET hashes = excluded.hashes",
    )
    .await?;
    Ok(())
}

/// The stored hashes of tile `(level, index)`, however many it holds.
pub(crate) async fn read_tile(
    db: &impl ConnectionTrait,
    level: u32,
    index: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT hashes FROM log_tiles WHERE level = $1 AND idx = $2",
        _ => "SELECT hashes FROM log_tiles WHERE level = ? AND idx = ?",
    };
    let row = db
        .query_one(Statement::from_sql_and_values(
            backend,
            sql,
            [
                Value::Int(Some(level as i32)),
                Value::BigInt(Some(index as i64)),
            ],
        ))
        .await?;
    match row {
        None => Ok(None),
        Some(row) => {
            let bytes: Vec<u8> = row.try_get("", "hashes")?;
            if bytes.is_empty() || bytes.len() % 32 != 0 || bytes.len() > 32 * TILE_WIDTH {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    problem: format!(
                        "tile {level}/{index} holds {} bytes, not 1..=256 hashes",
                        bytes.len()
                    ),
                });
            }
            Ok(Some(bytes))
        }
    }
}

/// Splits tile bytes into hashes.
pub fn hashes_of(bytes: &[u8]) -> Vec<Hash> {
    bytes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect()
}

/// The leaves the stored full level-0 tiles cover (a multiple of 256). Only full level-0 tiles
/// are stored; the partial one is recomputed from the entries (see [`leaf_hashes`]).
pub(crate) async fn stored_full(db: &impl ConnectionTrait) -> Result<u64, StoreError> {
    let backend = db.get_database_backend();
    let row = db
        .query_one(Statement::from_string(
            backend,
            "SELECT idx, hashes FROM log_tiles WHERE level = 0 ORDER BY idx DESC LIMIT 1",
        ))
        .await?;
    match row {
        None => Ok(0),
        Some(row) => {
            let idx: i64 = row.try_get("", "idx")?;
            let hashes: Vec<u8> = row.try_get("", "hashes")?;
            if hashes.len() != 32 * TILE_WIDTH {
                return Err(StoreError::Corrupt {
                    seq: 0,
                    problem: format!("the level-0 Merkle tile {idx} is not full"),
                });
            }
            Ok((idx as u64 + 1) * TILE_WIDTH as u64)
        }
    }
}

/// The leaf hashes of the entries `after + 1 ..= after + count`, recomputed from the log:
/// the level-0 partial tile (at most 255 entries) is never stored.
pub(crate) async fn leaf_hashes(
    db: &impl ConnectionTrait,
    after: u64,
    count: u64,
) -> Result<Vec<Hash>, StoreError> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
    let rows = entities::events::Entity::find()
        .filter(entities::events::Column::Seq.gt(after as i64))
        .filter(entities::events::Column::Seq.lte((after + count) as i64))
        .order_by_asc(entities::events::Column::Seq)
        .all(db)
        .await?;
    let mut hashes = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        let entry = super::entry_from_row(row)?;
        if entry.seq != after + i as u64 + 1 {
            break;
        }
        hashes.push(leaf_hash(entry.leaf().as_bytes()));
    }
    if hashes.len() as u64 != count {
        return Err(StoreError::Corrupt {
            seq: (after + hashes.len() as u64 + 1) as i64,
            problem: "missing from the log".into(),
        });
    }
    Ok(hashes)
}

/// Every stored tile, in `(level, idx)` order, a page at a time: `(level, idx, bytes)`.
pub(crate) async fn tiles_after(
    db: &impl ConnectionTrait,
    after: Option<(u32, u64)>,
    limit: u64,
) -> Result<Vec<(u32, u64, Vec<u8>)>, StoreError> {
    let backend = db.get_database_backend();
    let (level, idx) = after.map_or((-1i64, -1i64), |(l, i)| (l as i64, i as i64));
    let sql = match backend {
        DbBackend::Postgres => {
            "SELECT level, idx, hashes FROM log_tiles WHERE level > $1 OR (level = $2 AND idx > $3) \
             ORDER BY level, idx LIMIT $4"
        }
        _ => {
            "SELECT level, idx, hashes FROM log_tiles WHERE level > ? OR (level = ? AND idx > ?) \
             ORDER BY level, idx LIMIT ?"
        }
    };
    let rows = db
        .query_all(Statement::from_sql_and_values(
            backend,
            sql,
            [
                Value::Int(Some(level as i32)),
                Value::Int(Some(level as i32)),
                Value::BigInt(Some(idx)),
                Value::BigInt(Some(limit as i64)),
            ],
        ))
        .await?;
    rows.into_iter()
        .map(|row| {
            let level: i32 = row.try_get("", "level")?;
            let idx: i64 = row.try_get("", "idx")?;
            let hashes: Vec<u8> = row.try_get("", "hashes")?;
            Ok((level as u32, idx as u64, hashes))
        })
        .collect()
}

/// The right edge of the stored tree at `size` (which the tiles must cover).
pub(crate) async fn load_edge(
    db: &impl ConnectionTrait,
    size: u64,
) -> Result<TileEdge, StoreError> {
    let mut partial = Vec::new();
    for tile in TileEdge::partial_tiles(size) {
        let width = usize::from(tile.width);
        if width == 0 {
            partial.push(Vec::new());
            continue;
        }
        if tile.level == 0 {
            let first = tile.index * TILE_WIDTH as u64;
            partial.push(leaf_hashes(db, first, width as u64).await?);
            continue;
        }
        let bytes = read_tile(db, tile.level, tile.index)
            .await?
            .unwrap_or_default();
        if bytes.len() < width * 32 {
            return Err(StoreError::Corrupt {
                seq: size as i64,
                problem: format!(
                    "the Merkle tile {}/{} holds {} hashes; a tree of {size} needs {width}",
                    tile.level,
                    tile.index,
                    bytes.len() / 32
                ),
            });
        }
        partial.push(hashes_of(&bytes[..width * 32]));
    }
    TileEdge::from_partials(size, partial).map_err(|e| StoreError::Corrupt {
        seq: size as i64,
        problem: e.to_string(),
    })
}

/// Brings the stored tree up to the log's head: a log written before the tree existed, or
/// one restored from a backup without its tiles, is hashed once, in pages, through the
/// writer's connection before the writer starts. Refuses a tree larger than the log (entries
/// were deleted by hand).
pub(crate) async fn catch_up(store: &Store, writer: &LogWriter) -> Result<(), StoreError> {
    {
        let (head, _) = store.head().await?;
        let mut size = stored_full(store.readers()).await?;
        if size > head {
            return Err(StoreError::Corrupt {
                seq: head as i64,
                problem: format!(
                    "the Merkle tree covers {size} entries but the log holds {head}: entries \
                     were removed from the log"
                ),
            });
        }
        if head - size < TILE_WIDTH as u64 {
            // Every full tile is stored; the rest is the level-0 partial tile, read from the
            // entries whenever it is needed.
            return Ok(());
        }
        tracing::warn!(
            tree = size,
            log = head,
            "the Merkle tree is behind the log; hashing the missing entries"
        );
        let mut edge = load_edge(store.readers(), size).await?;
        while size < head {
            let entries: Vec<LogEntry> = store.read_after(size, BACKFILL_PAGE).await?;
            for entry in &entries {
                if entry.seq != size + 1 {
                    return Err(StoreError::Corrupt {
                        seq: (size + 1) as i64,
                        problem: "missing from the log".into(),
                    });
                }
                edge.push(leaf_hash(entry.leaf().as_bytes()));
                size += 1;
            }
            writer.write_tiles(&edge.take_changes()).await?;
        }
        tracing::info!(size, "the Merkle tree covers the log");
        Ok(())
    }
}

impl Store {
    /// Stored tile bytes (for the tile routes and the proof reader).
    pub async fn tile(&self, level: u32, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        read_tile(self.readers(), level, index).await
    }

    /// The leaves the stored tree covers: the log's head when every full tile under it is
    /// stored (the level-0 partial tile comes from the entries), else the full tiles' leaves.
    pub async fn tree_size(&self) -> Result<u64, StoreError> {
        let full = stored_full(self.readers()).await?;
        let (head, _) = self.head().await?;
        Ok(if head >= full && head - full < TILE_WIDTH as u64 {
            head
        } else {
            full
        })
    }

    /// The leaf hashes of entries `after + 1 ..= after + count` (the level-0 partial tile).
    pub async fn leaf_hashes(&self, after: u64, count: u64) -> Result<Vec<Hash>, StoreError> {
        leaf_hashes(self.readers(), after, count).await
    }
}
