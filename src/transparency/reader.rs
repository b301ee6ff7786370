//! Reads the stored tree: roots, proofs and tiles at any size the tiles cover, each from a
//! handful of tile reads (cached), never from the leaves.

use std::collections::HashMap;
use std::sync::Arc;

use moka::future::Cache;

use crate::core::merkle::{
    consistency_proof_with, inclusion_proof_with, nodes_needed, root_with, Hash, MerkleError, Node,
};
use crate::core::tiles::{TileId, TileNodes, TILE_WIDTH};
use crate::store::tree::hashes_of;
use crate::store::{Store, StoreError};

/// Tiles kept in memory, weighed by their bytes (hashes and inner nodes).
const TILE_CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the stored tree is damaged: tile {0} is missing or short")]
    MissingTile(String),
    #[error(transparent)]
    Merkle(#[from] MerkleError),
}

impl From<StoreError> for ReadError {
    fn from(error: StoreError) -> ReadError {
        ReadError::Store(Arc::new(error))
    }
}

/// A tile at a width, with the nodes inside it and its served bytes.
pub struct Tile {
    pub nodes: TileNodes,
    pub bytes: actix_web::web::Bytes,
}

#[derive(Clone)]
pub struct TreeReader {
    store: Store,
    tiles: Cache<TileId, Arc<Tile>>,
}

impl TreeReader {
    pub fn new(store: Store) -> TreeReader {
        TreeReader {
            store,
            tiles: Cache::builder()
                .weigher(|_, tile: &Arc<Tile>| {
                    u32::try_from(tile.bytes.len() * 2 + 64).unwrap_or(u32::MAX)
                })
                .max_capacity(TILE_CACHE_BYTES)
                .build(),
        }
    }

    /// Tile `id` at exactly its width (a prefix of the stored row). The caller checks that
    /// the tree it reads holds the tile (see [`TileId::within`]).
    pub async fn tile(&self, id: TileId) -> Result<Arc<Tile>, ReadError> {
        let store = self.store.clone();
        self.tiles
            .try_get_with(id, async move {
                let width = usize::from(id.width) * 32;
                let bytes = if id.level == 0 && usize::from(id.width) < TILE_WIDTH {
                    // A prefix of a full tile is read from it; the right edge's partial tile
                    // is not stored and is recomputed from its entries.
                    match store.tile(0, id.index).await?.filter(|b| b.len() >= width) {
                        Some(full) => full,
                        None => {
                            let first = id.index * TILE_WIDTH as u64;
                            store
                                .leaf_hashes(first, u64::from(id.width))
                                .await?
                                .concat()
                        }
                    }
                } else {
                    store
                        .tile(id.level, id.index)
                        .await?
                        .filter(|b| b.len() >= width)
                        .ok_or_else(|| ReadError::MissingTile(id.path()))?
                };
                let bytes = actix_web::web::Bytes::copy_from_slice(&bytes[..width]);
                Ok(Arc::new(Tile {
                    nodes: TileNodes::new(hashes_of(&bytes)),
                    bytes,
                }))
            })
            .await
            .map_err(|e: Arc<ReadError>| (*e).clone())
    }

    /// The hashes of `nodes` in the tree of `size` leaves: one read per tile they fall in.
    async fn nodes(&self, size: u64, nodes: Vec<Node>) -> Result<HashMap<Node, Hash>, ReadError> {
        let mut found = HashMap::with_capacity(nodes.len());
        let mut by_tile: HashMap<TileId, Vec<Node>> = HashMap::new();
        for node in nodes {
            by_tile
                .entry(TileId::for_node(node, size))
                .or_default()
                .push(node);
        }
        for (id, nodes) in by_tile {
            let tile = self.tile(id).await?;
            for node in nodes {
                let hash = tile
                    .nodes
                    .node(node)
                    .ok_or_else(|| ReadError::MissingTile(id.path()))?;
                found.insert(node, hash);
            }
        }
        Ok(found)
    }

    /// Runs a tree computation with the nodes it needs read first.
    async fn compute<T>(
        &self,
        size: u64,
        compute: impl Fn(&mut dyn FnMut(Node) -> Hash) -> T,
    ) -> Result<T, ReadError> {
        let needed = nodes_needed(&compute);
        let nodes = self.nodes(size, needed).await?;
        Ok(compute(&mut |node| {
            nodes.get(&node).copied().unwrap_or_default()
        }))
    }

    /// The root of the tree of `size` leaves.
    pub async fn root(&self, size: u64) -> Result<Hash, ReadError> {
        self.compute(size, |mut f| root_with(size, &mut f)).await
    }

    /// The leaf hash at `index` (which must be below `size`).
    pub async fn leaf_hash(&self, index: u64, size: u64) -> Result<Hash, ReadError> {
        self.compute(size, |f| f(Node { level: 0, index })).await
    }

    /// The inclusion proof of leaf `index` in the tree of `size` leaves.
    pub async fn inclusion(&self, index: u64, size: u64) -> Result<Vec<Hash>, ReadError> {
        Ok(self
            .compute(size, |mut f| inclusion_proof_with(index, size, &mut f))
            .await??)
    }

    /// The consistency proof from `old` to `new` leaves.
    pub async fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, ReadError> {
        Ok(self
            .compute(new, |mut f| consistency_proof_with(old, new, &mut f))
            .await??)
    }
}
