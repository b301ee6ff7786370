//! C2SP tlog-tiles over the log's Merkle tree (DESIGN §2.1–§2.2): tile addressing and paths,
//! the writer's right edge, and the nodes a stored tile answers.
//!
//! A tile of level `L` holds up to 256 consecutive hashes of tree level `8·L`: a level-0 tile
//! holds leaf hashes, a level-1 tile the roots of 256 full level-0 tiles, and so on. A tile
//! with fewer than 256 hashes is *partial* (`.p/<W>`); a partial tile is a prefix of the full
//! tile it grows into, so one stored row serves every width up to what it holds.
//!
//! ```text
//!  tree level 16   ·  ·  ·            level-2 tile: hashes of 65,536 leaves each
//!  tree level 8    ▪ ▪ ▪ ▪ ▪ ·        level-1 tile: roots of full level-0 tiles
//!  tree levels 1–7    (inside tiles: recomputed from the 256 hashes below)
//!  tree level 0    ■■■■■…■ ■■■■■…■ ■■■…     level-0 tiles: leaf hashes, 256 per tile
//! ```
//!
//! Pure: no I/O. The writer (`store::log`) keeps a [`TileEdge`]; readers compute any
//! perfect subtree from a tile with [`TileNodes`].

use crate::core::merkle::{node_hash, Hash, Node};

/// Tree levels per tile (the `H` of tlog-tiles; C2SP fixes it at 8).
pub const TILE_HEIGHT: u32 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: usize = 1 << TILE_HEIGHT;
/// Tile levels a 64-bit tree can have.
pub const MAX_TILE_LEVEL: u32 = 63;
/// The largest leaf an entry bundle can carry (its length is a big-endian u16).
pub const MAX_LEAF_BYTES: usize = u16::MAX as usize;

/// One tile: level, index within the level, and width (1..=256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TileId {
    pub level: u32,
    pub index: u64,
    pub width: u16,
}

/// Hashes of tile level `level` in a tree of `size` leaves.
pub fn hashes_at(level: u32, size: u64) -> u64 {
    size.checked_shr(TILE_HEIGHT * level).unwrap_or(0)
}

impl TileId {
    /// Whether the tree of `size` leaves holds this tile at this width: a full tile once its
    /// 256 hashes exist, a partial one only at the width the tree gives it (the right edge).
    pub fn within(&self, size: u64) -> bool {
        let count = hashes_at(self.level, size);
        let start = self.index.saturating_mul(TILE_WIDTH as u64);
        if usize::from(self.width) == TILE_WIDTH {
            count >= start.saturating_add(TILE_WIDTH as u64)
        } else {
            count > start && count - start >= u64::from(self.width)
        }
    }

    /// The tile holding perfect subtree `node` in a tree of `size` leaves, at the width it
    /// has in that tree.
    pub fn for_node(node: Node, size: u64) -> TileId {
        let level = node.level / TILE_HEIGHT;
        let within = node.level % TILE_HEIGHT;
        let first = node.index << within;
        let index = first / TILE_WIDTH as u64;
        let count = hashes_at(level, size);
        let width = (count - index * TILE_WIDTH as u64).min(TILE_WIDTH as u64) as u16;
        TileId {
            level,
            index,
            width,
        }
    }

    /// The C2SP path under `/log/tile/`: `<L>/<N>[.p/<W>]`, `N` in x-grouped three digits.
    pub fn path(&self) -> String {
        let mut path = format!("{}/{}", self.level, index_path(self.index));
        if usize::from(self.width) < TILE_WIDTH {
            path.push_str(&format!(".p/{}", self.width));
        }
        path
    }
}

/// `1234067` → `x001/x234/067`; `5` → `005`.
pub fn index_path(index: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = index;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    let last = groups.len() - 1;
    groups
        .iter()
        .rev()
        .enumerate()
        .map(|(i, g)| {
            if i == last {
                format!("{g:03}")
            } else {
                format!("x{g:03}")
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Parses `<N>[.p/<W>]` (the part after the level, or after `entries/`) given as path
/// segments. Strict: every group three digits, `x` on all but the last, no overflow, no
/// leading zero group (`x000/...`), width 1..=255.
pub fn parse_index_width(segments: &[&str]) -> Option<(u64, u16)> {
    let (last, groups) = segments.split_last()?;
    let (index_segments, width) = match groups.last() {
        // `…/067.p/<W>`: the partial marker sits on the last index group.
        Some(group) if group.ends_with(".p") => {
            if last.starts_with('0') {
                return None;
            }
            let width: u16 = parse_digits(last)?.try_into().ok()?;
            if width == 0 || usize::from(width) >= TILE_WIDTH {
                return None;
            }
            let mut index_segments: Vec<&str> = groups.to_vec();
            let marked = index_segments.pop()?;
            index_segments.push(marked.strip_suffix(".p")?);
            (index_segments, width)
        }
        _ => {
            let mut index_segments = groups.to_vec();
            index_segments.push(last);
            (index_segments, TILE_WIDTH as u16)
        }
    };
    let (final_group, upper) = index_segments.split_last()?;
    let mut index: u64 = 0;
    for (i, group) in upper.iter().enumerate() {
        let digits = group.strip_prefix('x')?;
        let value = three_digits(digits)?;
        if i == 0 && value == 0 {
            return None;
        }
        index = index.checked_mul(1000)?.checked_add(value)?;
    }
    index = index
        .checked_mul(1000)?
        .checked_add(three_digits(final_group)?)?;
    Some((index, width))
}

fn three_digits(text: &str) -> Option<u64> {
    (text.len() == 3).then_some(())?;
    parse_digits(text)
}

fn parse_digits(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || text.len() > 19 {
        return None;
    }
    text.parse().ok()
}

/// A tile's hashes and every node above them inside the tile: node lookups are O(1) once
/// built (255 hashes for a full tile).
#[derive(Debug)]
pub struct TileNodes {
    /// `rows[r]` holds the nodes of height `r` inside the tile (row 0 = the tile's hashes).
    rows: Vec<Vec<Hash>>,
}

impl TileNodes {
    pub fn new(hashes: Vec<Hash>) -> TileNodes {
        let mut rows = vec![hashes];
        while rows.last().is_some_and(|row| row.len() > 1) {
            let below = rows.last().map(Vec::as_slice).unwrap_or_default();
            let row = below
                .chunks_exact(2)
                .map(|pair| node_hash(&pair[0], &pair[1]))
                .collect();
            rows.push(row);
        }
        TileNodes { rows }
    }

    pub fn hashes(&self) -> &[Hash] {
        &self.rows[0]
    }

    /// Perfect subtree `node`, which must lie in this tile (see [`TileId::for_node`]).
    pub fn node(&self, node: Node) -> Option<Hash> {
        let within = (node.level % TILE_HEIGHT) as usize;
        let first = (node.index << within) % TILE_WIDTH as u64;
        self.rows
            .get(within)?
            .get((first >> within) as usize)
            .copied()
    }
}

/// A tile the writer must store: full when `hashes.len() == 256`, else the right edge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TileRow {
    pub level: u32,
    pub index: u64,
    pub hashes: Vec<Hash>,
}

/// The right edge of the tiled tree: the partial tile of every level. The writer pushes each
/// new leaf hash and stores the tiles that changed, in the transaction that commits the
/// entries: a full tile is written once, the partial ones are rewritten as they grow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TileEdge {
    size: u64,
    /// `partial[L]`: the hashes of level `L`'s rightmost, not yet full tile.
    partial: Vec<Vec<Hash>>,
    /// Tiles that filled up since the last [`TileEdge::take_changes`].
    completed: Vec<TileRow>,
    /// The lowest level whose partial tile has not been taken since it changed.
    dirty: Vec<bool>,
}

/// Why stored tiles do not make a right edge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tile level {level}: {problem}")]
pub struct EdgeError {
    pub level: u32,
    pub problem: String,
}

impl TileEdge {
    pub fn new() -> TileEdge {
        TileEdge::default()
    }

    /// The edge of a tree of `size` leaves from its partial tiles (`partial[L]` = the first
    /// `hashes_at(L, size) % 256` hashes of level `L`'s rightmost tile).
    pub fn from_partials(size: u64, partial: Vec<Vec<Hash>>) -> Result<TileEdge, EdgeError> {
        for (level, hashes) in partial.iter().enumerate() {
            let expected = (hashes_at(level as u32, size) % TILE_WIDTH as u64) as usize;
            if hashes.len() != expected {
                return Err(EdgeError {
                    level: level as u32,
                    problem: format!(
                        "holds {} hashes where a tree of {size} leaves has {expected}",
                        hashes.len()
                    ),
                });
            }
        }
        let levels = partial.len();
        Ok(TileEdge {
            size,
            partial,
            completed: Vec::new(),
            dirty: vec![false; levels],
        })
    }

    /// The tiles `from_partials` needs for a tree of `size`: (level, index, width).
    pub fn partial_tiles(size: u64) -> Vec<TileId> {
        (0..=MAX_TILE_LEVEL)
            .map(|level| (level, hashes_at(level, size)))
            .take_while(|&(_, count)| count > 0)
            .map(|(level, count)| TileId {
                level,
                index: count / TILE_WIDTH as u64,
                width: (count % TILE_WIDTH as u64) as u16,
            })
            .collect()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends one leaf hash.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut carry = leaf_hash;
        let mut level = 0usize;
        loop {
            if self.partial.len() == level {
                self.partial.push(Vec::with_capacity(TILE_WIDTH));
                self.dirty.push(false);
            }
            self.partial[level].push(carry);
            self.dirty[level] = true;
            if self.partial[level].len() < TILE_WIDTH {
                break;
            }
            let full = std::mem::replace(&mut self.partial[level], Vec::with_capacity(TILE_WIDTH));
            let count = hashes_at(level as u32, self.size + 1);
            carry = subtree_root(&full);
            self.completed.push(TileRow {
                level: level as u32,
                index: count / TILE_WIDTH as u64 - 1,
                hashes: full,
            });
            level += 1;
        }
        self.size += 1;
    }

    /// The tiles to store since the last call: every tile that filled up, then every partial
    /// tile of level 1 and up that changed (non-empty ones only). The level-0 partial tile is
    /// not stored: it holds the leaf hashes of at most 255 entries, which a reader recomputes
    /// from those entries, so a commit writes no tile unless one fills up (1 in 256 entries).
    pub fn take_changes(&mut self) -> Vec<TileRow> {
        let mut rows = std::mem::take(&mut self.completed);
        for (level, hashes) in self.partial.iter().enumerate().skip(1) {
            if self.dirty[level] && !hashes.is_empty() {
                rows.push(TileRow {
                    level: level as u32,
                    index: hashes_at(level as u32, self.size) / TILE_WIDTH as u64,
                    hashes: hashes.clone(),
                });
            }
        }
        self.dirty.iter_mut().for_each(|d| *d = false);
        rows
    }

    /// The tiles that filled up since the last call (not the partial ones).
    pub fn take_completed(&mut self) -> Vec<TileRow> {
        std::mem::take(&mut self.completed)
    }

    /// The non-empty partial tiles of the right edge, as they are now.
    pub fn partial_rows(&self) -> Vec<TileRow> {
        self.partial
            .iter()
            .enumerate()
            .filter(|(_, hashes)| !hashes.is_empty())
            .map(|(level, hashes)| TileRow {
                level: level as u32,
                index: hashes_at(level as u32, self.size) / TILE_WIDTH as u64,
                hashes: hashes.clone(),
            })
            .collect()
    }

    /// The root of the tree (hashes at most 255 nodes per level; for checkpoints and checks).
    pub fn root(&self) -> Hash {
        let size = self.size;
        crate::core::merkle::root_with(size, &mut |node: Node| {
            let tile = TileId::for_node(node, size);
            let hashes = &self.partial[tile.level as usize];
            TileNodes::new(hashes.clone())
                .node(node)
                .unwrap_or_default()
        })
    }
}

/// The root of a full tile's 256 hashes.
fn subtree_root(hashes: &[Hash]) -> Hash {
    let mut row: Vec<Hash> = hashes.to_vec();
    while row.len() > 1 {
        row = row
            .chunks_exact(2)
            .map(|pair| node_hash(&pair[0], &pair[1]))
            .collect();
    }
    row[0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::merkle::{inclusion_proof, inclusion_proof_with, leaf_hash, root_of};

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn paths_are_x_grouped() {
        assert_eq!(index_path(5), "005");
        assert_eq!(index_path(1234067), "x001/x234/067");
        assert_eq!(index_path(1000), "x001/000");
        let tile = TileId {
            level: 1,
            index: 1234067,
            width: 17,
        };
        assert_eq!(tile.path(), "1/x001/x234/067.p/17");
        assert_eq!(
            parse_index_width(&["x001", "x234", "067.p", "17"]),
            Some((1234067, 17))
        );
        assert_eq!(parse_index_width(&["005"]), Some((5, 256)));
        for bad in [
            &["5"][..],
            &["0005"],
            &["x000", "005"],
            &["001", "005"],
            &["005.p", "0"],
            &["005.p", "256"],
            &["005.p", "x"],
            &["005.p", "05"],
            &["x001"],
        ] {
            assert_eq!(parse_index_width(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_edge_matches_the_recursive_tree_at_every_size() {
        let all = leaves(70_000);
        let mut edge = TileEdge::new();
        let mut stored: std::collections::HashMap<(u32, u64), Vec<Hash>> = Default::default();
        for (i, leaf) in all.iter().enumerate() {
            edge.push(*leaf);
            let size = i as u64 + 1;
            if size % 4999 == 0 || size < 260 || size == 65_536 || size == 70_000 {
                for row in edge.take_changes() {
                    stored.insert((row.level, row.index), row.hashes);
                }
                assert_eq!(edge.root(), root_of(&all[..size as usize]), "size {size}");
                // Rebuilding the edge from the stored tiles gives the same edge.
                // Level 0's partial tile is not stored: it comes from the leaves.
                let tail = |t: TileId| all[(t.index as usize * 256)..size as usize].to_vec();
                let partial = TileEdge::partial_tiles(size)
                    .into_iter()
                    .map(|t| match t.level {
                        0 => tail(t),
                        _ => stored
                            .get(&(t.level, t.index))
                            .map(|h| h[..t.width as usize].to_vec())
                            .unwrap_or_default(),
                    })
                    .collect();
                let rebuilt = TileEdge::from_partials(size, partial).expect("edge");
                assert_eq!(rebuilt.root(), edge.root());
                // Proofs from stored tiles equal proofs from all leaves.
                let index = (size * 7919) % size;
                let from_tiles = inclusion_proof_with(index, size, &mut |node| {
                    let tile = TileId::for_node(node, size);
                    let hashes = match (tile.level, tile.width) {
                        (0, w) if w < 256 => tail(tile),
                        _ => stored[&(tile.level, tile.index)][..tile.width as usize].to_vec(),
                    };
                    TileNodes::new(hashes).node(node).expect("node in tile")
                })
                .expect("proof");
                assert_eq!(
                    from_tiles,
                    inclusion_proof(index, &all[..size as usize]).expect("proof")
                );
            }
        }
    }

    #[test]
    fn within_bounds() {
        let full = TileId {
            level: 0,
            index: 0,
            width: 256,
        };
        assert!(!full.within(255));
        assert!(full.within(256));
        let partial = TileId {
            level: 0,
            index: 1,
            width: 3,
        };
        assert!(!partial.within(258));
        assert!(partial.within(259));
        assert!(partial.within(300));
        assert!(!TileId {
            level: 1,
            index: 0,
            width: 1
        }
        .within(255));
        assert!(TileId {
            level: 1,
            index: 0,
            width: 1
        }
        .within(256));
    }
}
