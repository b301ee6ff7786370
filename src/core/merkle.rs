//! Merkle tree hashing, proofs and verification as specified by
//! [RFC 9162 §2.1](https://www.rfc-editor.org/rfc/rfc9162#section-2.1)
//! (Certificate Transparency 2.0, which restates RFC 6962 §2.1), over SHA-256.
//!
//! This module is pure maths: no I/O, no storage, no async.
//!
//! # Leaf and node prefixes
//!
//! ```text
//! leaf_hash(d)    = SHA-256(0x00 ‖ d)
//! node_hash(l, r) = SHA-256(0x01 ‖ l ‖ r)
//! empty_root()    = SHA-256("")
//! ```
//!
//! The one-byte prefixes separate the two domains. Without them an interior
//! node would hash the 64 bytes `l ‖ r` exactly as a leaf holding those 64
//! bytes does, so a proof could present an interior node as a leaf (a second
//! preimage of the root) and "prove" the inclusion of data that was never
//! appended. With the prefixes no leaf hash can ever equal a node hash.
//!
//! # Tree shape
//!
//! The Merkle Tree Hash `MTH` of `n > 1` leaves splits them at `k`, the
//! largest power of two smaller than `n`, and hashes the two halves
//! recursively; so every left subtree is perfect and the right edge holds the
//! remainder. Six leaves:
//!
//! ```text
//!                 root
//!              /        \
//!          h0123         h45
//!         /     \       /   \
//!       h01     h23    l4   l5
//!      /   \   /   \
//!     l0   l1 l2   l3
//! ```
//!
//! # The frontier
//!
//! A tree of `n` leaves is a row of perfect subtrees, one for each set bit of
//! `n`, largest on the left. [`Frontier`] keeps only their roots, at most 64
//! hashes. Appending a leaf works like adding one in binary: the new leaf is
//! a subtree of size 1, and while the rightmost stored subtree has the same
//! size the two merge (the carry):
//!
//! ```text
//! size 6 = 0b110    [ h0123 | h45 ]
//! push l6
//! size 7 = 0b111    [ h0123 | h45 | l6 ]            nothing to merge
//! push l7
//! size 8 = 0b1000   carry: node(l6, l7)       = h67
//!                          node(h45, h67)     = h4567
//!                          node(h0123, h4567) = h01234567
//!                   [ h01234567 ]
//! ```
//!
//! The root folds the stored subtrees from the right, which reproduces the
//! split rule above: `root(7) = node(h0123, node(h45, l6))`.
//!
//! # Proofs
//!
//! * An *inclusion proof* (audit path) for leaf `m` lists the sibling hashes
//!   on the way from that leaf up to the root, bottom first. See
//!   [`inclusion_proof`] and [`verify_inclusion`].
//! * A *consistency proof* between sizes `m < n` lists the fewest subtree
//!   hashes from which both the old and the new root can be recomputed,
//!   showing that the first `m` leaves are unchanged. See
//!   [`consistency_proof`] and [`verify_consistency`].
//!
//! Generation works from the full list of leaf hashes and is meant for tests
//! and for rebuilding; verification needs only the sizes, the roots and the
//! proof.
//!
//! A proof binds hashes to roots, not to sizes: the same proof usually also
//! verifies when a neighbouring size is claimed, because the path has the
//! same shape. Take each size together with its root from one trusted
//! source, such as a signed tree head.

use sha2::{Digest, Sha256};

/// A SHA-256 digest: a leaf hash, an interior node hash or a tree root.
pub type Hash = [u8; 32];

/// Domain separation prefix of a leaf hash.
const LEAF_PREFIX: u8 = 0x00;
/// Domain separation prefix of an interior node hash.
const NODE_PREFIX: u8 = 0x01;

/// Why a proof could not be generated or did not verify.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    /// The leaf index does not address a leaf of the tree.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    /// The proof has the wrong number of hashes for the given index and sizes.
    #[error("proof has {actual} hashes, expected {expected}")]
    WrongProofSize { expected: usize, actual: usize },
    /// The root recomputed from the proof differs from the one supplied.
    #[error(
        "computed root {} does not match expected root {}",
        hex::encode(.computed),
        hex::encode(.expected)
    )]
    RootMismatch { expected: Hash, computed: Hash },
    /// The old tree is larger than the new one.
    #[error("old tree size {old} is larger than new tree size {new}")]
    SizeOrder { old: u64, new: u64 },
    /// A consistency proof was asked for from the empty tree, which every
    /// tree trivially extends, so such a proof proves nothing.
    #[error("a consistency proof from the empty tree is meaningless")]
    EmptyOldTree,
}

/// Hashes a leaf: `SHA-256(0x00 ‖ leaf)`.
#[must_use]
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([LEAF_PREFIX])
        .chain_update(leaf)
        .finalize()
        .into()
}

/// A hasher holding `0x00`: feed it a leaf and finalize for its [`leaf_hash`] (lets a leaf be
/// hashed in parts, by different threads).
#[must_use]
pub fn leaf_hasher() -> Sha256 {
    Sha256::new().chain_update([LEAF_PREFIX])
}

/// Hashes an interior node from its children: `SHA-256(0x01 ‖ left ‖ right)`.
#[must_use]
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([NODE_PREFIX])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The root of the empty tree: `SHA-256("")`.
#[must_use]
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The right edge of an append-only Merkle tree: enough state to append
/// leaves and compute the current root in `O(log n)` time and memory.
///
/// See the [module documentation](self) for how it works.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves appended so far.
    size: u64,
    /// Roots of the perfect subtrees making up the tree, one per set bit of
    /// `size`, the largest (leftmost) first.
    subtree_roots: Vec<Hash>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tree holding the given leaf hashes, in order.
    pub fn from_leaves(leaf_hashes: impl IntoIterator<Item = Hash>) -> Self {
        let mut frontier = Self::new();
        frontier.extend(leaf_hashes);
        frontier
    }

    /// Appends one leaf, given by its [`leaf_hash`].
    pub fn push(&mut self, leaf_hash: Hash) {
        // Each trailing one bit of `size` is a stored subtree as large as the
        // one being carried; merge them, smallest first, like a binary carry.
        let merges = self.size.trailing_ones() as usize;
        let keep = self.subtree_roots.len() - merges;
        let merged = self
            .subtree_roots
            .drain(keep..)
            .rev()
            .fold(leaf_hash, |right, left| node_hash(&left, &right));
        self.subtree_roots.push(merged);
        self.size += 1;
    }

    /// Number of leaves in the tree.
    #[must_use]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The Merkle Tree Hash of all leaves appended so far.
    #[must_use]
    pub fn root(&self) -> Hash {
        self.subtree_roots
            .iter()
            .rev()
            .copied()
            .reduce(|right, left| node_hash(&left, &right))
            .unwrap_or_else(empty_root)
    }
}

impl Extend<Hash> for Frontier {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, leaf_hashes: I) {
        for leaf_hash in leaf_hashes {
            self.push(leaf_hash);
        }
    }
}

/// A perfect subtree of the tree: the `2^level` leaves from `index << level` on. Level 0 is a
/// leaf hash; every hash a proof or a root needs is made of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Node {
    pub level: u32,
    pub index: u64,
}

impl Node {
    fn leaves(self) -> std::ops::Range<usize> {
        let start = (self.index << self.level) as usize;
        start..start + (1usize << self.level)
    }
}

/// The Merkle Tree Hash `MTH(D[n])` of RFC 9162 §2.1.1, computed recursively
/// from all the leaf hashes. `O(n)` time; [`Frontier`] is the incremental way.
#[must_use]
pub fn root_of(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes {
        [] => empty_root(),
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaf_hashes.split_at(split_point(leaf_hashes.len()));
            node_hash(&root_of(left), &root_of(right))
        }
    }
}

/// The root of the tree of `size` leaves, from the perfect subtrees `node` gives.
pub fn root_with(size: u64, node: &mut impl FnMut(Node) -> Hash) -> Hash {
    if size == 0 {
        return empty_root();
    }
    range_hash(0, size, node)
}

/// `MTH(D[start:end])` for a range the RFC's recursion reaches: `start` is a multiple of the
/// largest power of two not above `end - start`, so each perfect part is one [`Node`].
fn range_hash(start: u64, end: u64, node: &mut impl FnMut(Node) -> Hash) -> Hash {
    let n = end - start;
    if n.is_power_of_two() {
        let level = n.trailing_zeros();
        return node(Node {
            level,
            index: start >> level,
        });
    }
    let k = split_point_u64(n);
    let left = range_hash(start, start + k, node);
    let right = range_hash(start + k, end, node);
    node_hash(&left, &right)
}

/// The inclusion proof `PATH(m, D[n])` of RFC 9162 §2.1.3.1 for the leaf at
/// `index`: sibling hashes from the leaf level up to just below the root.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] unless `index < leaf_hashes.len()`.
pub fn inclusion_proof(index: u64, leaf_hashes: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
    inclusion_proof_with(index, leaf_hashes.len() as u64, &mut |n: Node| {
        root_of(&leaf_hashes[n.leaves()])
    })
}

/// [`inclusion_proof`] in a tree of `size` leaves whose perfect subtrees `node` gives (from
/// stored tiles, say): `O(log n)` calls.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] unless `index < size`.
pub fn inclusion_proof_with(
    index: u64,
    size: u64,
    node: &mut impl FnMut(Node) -> Hash,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let mut proof = Vec::new();
    push_path(index, 0, size, node, &mut proof);
    Ok(proof)
}

/// The consistency proof `PROOF(m, D[n])` of RFC 9162 §2.1.4.1 between the
/// tree of the first `old_size` leaves and the tree of all `leaf_hashes`.
/// Empty when the two sizes are equal.
///
/// # Errors
///
/// [`MerkleError::SizeOrder`] if `old_size > leaf_hashes.len()`, and
/// [`MerkleError::EmptyOldTree`] if `old_size == 0`, as
/// [`verify_consistency`] would reject any proof for it.
pub fn consistency_proof(old_size: u64, leaf_hashes: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
    consistency_proof_with(old_size, leaf_hashes.len() as u64, &mut |n: Node| {
        root_of(&leaf_hashes[n.leaves()])
    })
}

/// [`consistency_proof`] between sizes `old_size` and `new_size` of a tree whose perfect
/// subtrees `node` gives.
///
/// # Errors
///
/// As [`consistency_proof`].
pub fn consistency_proof_with(
    old_size: u64,
    new_size: u64,
    node: &mut impl FnMut(Node) -> Hash,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::SizeOrder {
            old: old_size,
            new: new_size,
        });
    }
    if old_size == 0 {
        return Err(MerkleError::EmptyOldTree);
    }
    let mut proof = Vec::new();
    push_subproof(old_size, 0, new_size, true, node, &mut proof);
    Ok(proof)
}

/// The perfect subtrees a computation over the tree will ask for, found by running it once
/// with placeholder hashes (the shape of a proof never depends on the hashes). Lets a caller
/// fetch everything first (one read per tile), then compute.
pub fn nodes_needed<T>(compute: impl FnOnce(&mut dyn FnMut(Node) -> Hash) -> T) -> Vec<Node> {
    let mut nodes = Vec::new();
    compute(&mut |n| {
        nodes.push(n);
        [0; 32]
    });
    nodes.sort_unstable();
    nodes.dedup();
    nodes
}

/// Checks that `proof` shows the leaf with hash `leaf_hash` at `index` in the
/// tree of `tree_size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
///
/// The proof binds the leaf to the root; `tree_size` is bound only through
/// the root (see the [module documentation](self#proofs)). The path of
/// leaf 0 in a 3-leaf tree, `[l1, l2]`, has the shape of a path in a 4-leaf
/// tree too, so it also verifies against the 3-leaf root with `tree_size` 4.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] unless `index < tree_size`,
/// [`MerkleError::WrongProofSize`] if the proof has too few or too many
/// hashes for that position, and [`MerkleError::RootMismatch`] if it leads to
/// a root other than `root`.
pub fn verify_inclusion(
    index: u64,
    tree_size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= tree_size {
        return Err(MerkleError::IndexOutOfRange {
            index,
            size: tree_size,
        });
    }
    check_proof_size(proof, inclusion_proof_size(index, tree_size))?;

    let mut computed = *leaf_hash;
    climb(index, tree_size - 1, proof, |sibling, hash| {
        computed = match sibling {
            Sibling::Left => node_hash(hash, &computed),
            Sibling::Right => node_hash(&computed, hash),
        };
    });
    check_root(root, &computed)
}

/// Checks that `proof` shows the tree of `size2` leaves with root `root2` to
/// extend the tree of `size1` leaves with root `root1` (RFC 9162 §2.1.4.2).
///
/// The RFC covers `0 < size1 < size2`. The other cases follow the
/// transparency-dev test vectors: equal sizes need an empty proof and equal
/// roots, and a proof from the empty tree is refused outright, even for
/// `size2 == 0`, as it could not show anything.
///
/// # Errors
///
/// * [`MerkleError::SizeOrder`] if `size1 > size2`;
/// * [`MerkleError::EmptyOldTree`] if `size1 == 0`;
/// * [`MerkleError::WrongProofSize`] if the proof has too few or too many
///   hashes for the two sizes (none at all when they are equal);
/// * [`MerkleError::RootMismatch`] if the proof leads to a root other than
///   `root1` or `root2`.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    root1: &Hash,
    root2: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if size1 > size2 {
        return Err(MerkleError::SizeOrder {
            old: size1,
            new: size2,
        });
    }
    if size1 == 0 {
        return Err(MerkleError::EmptyOldTree);
    }
    if size1 == size2 {
        check_proof_size(proof, 0)?;
        return check_root(root2, root1);
    }
    check_proof_size(proof, consistency_proof_size(size1, size2))?;

    // The climb starts from the root of the largest perfect subtree that
    // ends with the old tree's last leaf. When the old tree is itself
    // perfect, that root is `root1` and the proof leaves it out (step 2);
    // otherwise it is the proof's first hash (step 5). Non-empty by the size
    // check above, as the expected size counts it.
    let (seed, path) = if size1.is_power_of_two() {
        (root1, proof)
    } else {
        (&proof[0], &proof[1..])
    };
    // Steps 3 and 4: start at the level of that subtree's root.
    let levels_inside_seed = size1.trailing_zeros();
    let mut old_root = *seed;
    let mut new_root = *seed;
    climb(
        (size1 - 1) >> levels_inside_seed,
        (size2 - 1) >> levels_inside_seed,
        path,
        |sibling, hash| match sibling {
            // Hashes left of the path are in both trees.
            Sibling::Left => {
                old_root = node_hash(hash, &old_root);
                new_root = node_hash(hash, &new_root);
            }
            // Hashes right of the path hold only leaves appended since.
            Sibling::Right => new_root = node_hash(&new_root, hash),
        },
    );
    check_root(root1, &old_root)?;
    check_root(root2, &new_root)
}

/// The size of the left subtree of a tree of `n >= 2` leaves: the largest
/// power of two smaller than `n`.
fn split_point(n: usize) -> usize {
    1 << (n - 1).ilog2()
}

/// The size of the left subtree of a tree of `n >= 2` leaves (u64).
fn split_point_u64(n: u64) -> u64 {
    1 << (n - 1).ilog2()
}

/// Appends `PATH(m, D[start:end])` to `proof`, bottom-up; `m` counts from `start`.
fn push_path(
    m: u64,
    start: u64,
    end: u64,
    node: &mut impl FnMut(Node) -> Hash,
    proof: &mut Vec<Hash>,
) {
    let n = end - start;
    if n <= 1 {
        return;
    }
    let k = split_point_u64(n);
    if m < k {
        push_path(m, start, start + k, node, proof);
        proof.push(range_hash(start + k, end, node));
    } else {
        push_path(m - k, start + k, end, node, proof);
        proof.push(range_hash(start, start + k, node));
    }
}

/// Appends `SUBPROOF(m, D[start:end], b)` to `proof` for `0 < m <= n`, bottom-up.
/// `is_whole_old_tree` is the RFC's `b`: whether `D[0:m]` is the complete
/// old tree, whose root the verifier already knows.
fn push_subproof(
    m: u64,
    start: u64,
    end: u64,
    is_whole_old_tree: bool,
    node: &mut impl FnMut(Node) -> Hash,
    proof: &mut Vec<Hash>,
) {
    let n = end - start;
    if m == n {
        if !is_whole_old_tree {
            proof.push(range_hash(start, end, node));
        }
        return;
    }
    let k = split_point_u64(n);
    if m <= k {
        push_subproof(m, start, start + k, is_whole_old_tree, node, proof);
        proof.push(range_hash(start + k, end, node));
    } else {
        push_subproof(m - k, start + k, end, false, node, proof);
        proof.push(range_hash(start, start + k, node));
    }
}

/// The number of hashes in the inclusion proof of leaf `index < size`.
///
/// Up to the level where the paths of `index` and of the last leaf
/// `size - 1` meet, every level has a sibling. Above it the path runs along
/// the tree's right edge, which has a sibling only where the path is a right
/// child, i.e. at each remaining set bit of `index`.
fn inclusion_proof_size(index: u64, size: u64) -> usize {
    let below_join = u64::BITS - (index ^ (size - 1)).leading_zeros();
    let on_right_edge = index.checked_shr(below_join).unwrap_or(0).count_ones();
    (below_join + on_right_edge) as usize
}

/// The number of hashes in the consistency proof for `0 < size1 < size2`:
/// the inclusion proof of the old tree's last leaf, less the levels inside
/// the largest perfect subtree ending with that leaf, plus the root of that
/// subtree unless it is the whole old tree.
fn consistency_proof_size(size1: u64, size2: u64) -> usize {
    let levels_inside_seed = size1.trailing_zeros() as usize;
    let seed = usize::from(!size1.is_power_of_two());
    inclusion_proof_size(size1 - 1, size2) - levels_inside_seed + seed
}

/// On which side of the path being climbed a proof hash lies.
enum Sibling {
    Left,
    Right,
}

/// Walks `proof` up the tree as RFC 9162 §2.1.3.2 step 4 and §2.1.4.2 step 6
/// do, telling `visit` on which side each hash lies. `node` is the index of
/// the path's node on the current level and `last` that of the level's last
/// node; the caller has checked the proof's length, so `last` reaches 0
/// exactly with the final hash.
fn climb(mut node: u64, mut last: u64, proof: &[Hash], mut visit: impl FnMut(Sibling, &Hash)) {
    for hash in proof {
        if node & 1 == 1 || node == last {
            visit(Sibling::Left, hash);
            // A last node that is a left child has no sibling: it moves up
            // unchanged until it becomes a right child or the leftmost node.
            while node & 1 == 0 && node != 0 {
                node >>= 1;
                last >>= 1;
            }
        } else {
            visit(Sibling::Right, hash);
        }
        node >>= 1;
        last >>= 1;
    }
    debug_assert_eq!(last, 0, "the proof size was checked by the caller");
}

fn check_proof_size(proof: &[Hash], expected: usize) -> Result<(), MerkleError> {
    if proof.len() == expected {
        Ok(())
    } else {
        Err(MerkleError::WrongProofSize {
            expected,
            actual: proof.len(),
        })
    }
}

fn check_root(expected: &Hash, computed: &Hash) -> Result<(), MerkleError> {
    if expected == computed {
        Ok(())
    } else {
        Err(MerkleError::RootMismatch {
            expected: *expected,
            computed: *computed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
    use serde_json::Value;
    use std::fs;
    use std::path::{Path, PathBuf};

    /// RFC 9162 test vectors from transparency-dev/merkle; see its README.md.
    const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/merkle");

    /// The eight classic leaves of the RFC 6962 test suites, hex encoded.
    const CLASSIC_LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];

    /// The roots of the first 1..=8 classic leaves, from the vectors' README.
    const CLASSIC_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn hash_from_hex(hex_str: &str) -> Hash {
        hex::decode(hex_str).unwrap().try_into().unwrap()
    }

    fn classic_leaf_hashes() -> Vec<Hash> {
        CLASSIC_LEAVES
            .iter()
            .map(|leaf| leaf_hash(&hex::decode(leaf).unwrap()))
            .collect()
    }

    /// Distinct, deterministic leaf hashes for the property tests.
    fn leaves(count: u64) -> Vec<Hash> {
        (0..count).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    fn flip_bit(hash: &Hash, bit: usize) -> Hash {
        let mut flipped = *hash;
        flipped[bit / 8] ^= 1 << (bit % 8);
        flipped
    }

    /// A few bit positions spread over a hash: first, middle, last.
    const BITS_TO_FLIP: [usize; 3] = [0, 129, 255];

    #[test]
    fn primitives_match_known_digests() {
        assert_eq!(
            empty_root(),
            hash_from_hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        );
        assert_eq!(root_of(&[]), empty_root());
        assert_eq!(Frontier::new().root(), empty_root());
        // The leaf hash of the empty leaf is the root of the one-leaf tree.
        assert_eq!(leaf_hash(b""), hash_from_hex(CLASSIC_ROOTS[0]));
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        let mut preimage = vec![0x01];
        preimage.extend_from_slice(&a);
        preimage.extend_from_slice(&b);
        assert_eq!(node_hash(&a, &b), <Hash>::from(Sha256::digest(&preimage)));
        // Domain separation: a 64-byte leaf never hashes like a node.
        assert_ne!(leaf_hash(&preimage[1..]), node_hash(&a, &b));
    }

    #[test]
    fn classic_roots_from_root_of_and_frontier() {
        let leaf_hashes = classic_leaf_hashes();
        let mut frontier = Frontier::new();
        for (size, (leaf, want)) in leaf_hashes.iter().zip(CLASSIC_ROOTS).enumerate() {
            let want = hash_from_hex(want);
            frontier.push(*leaf);
            assert_eq!(
                root_of(&leaf_hashes[..=size]),
                want,
                "root_of size {}",
                size + 1
            );
            assert_eq!(frontier.root(), want, "Frontier size {}", size + 1);
            assert_eq!(frontier.size(), size as u64 + 1);
        }
    }

    #[test]
    fn frontier_matches_root_of_at_every_size() {
        let all = leaves(300);
        let mut frontier = Frontier::new();
        for size in 1..=all.len() {
            frontier.push(all[size - 1]);
            assert_eq!(frontier.root(), root_of(&all[..size]), "size {size}");
            assert_eq!(
                frontier.subtree_roots.len(),
                (size as u64).count_ones() as usize,
                "one stored subtree per set bit of the size"
            );
        }
        assert_eq!(frontier, Frontier::from_leaves(all.iter().copied()));
    }

    #[test]
    fn frontier_clones_are_independent() {
        let all = leaves(11);
        let mut original = Frontier::from_leaves(all[..10].iter().copied());
        let snapshot = original.clone();
        original.push(all[10]);
        assert_eq!(snapshot.size(), 10);
        assert_eq!(snapshot.root(), root_of(&all[..10]));
        assert_eq!(original.root(), root_of(&all));
    }

    #[test]
    fn proof_generation_rejects_bad_sizes() {
        let all = leaves(5);
        assert_eq!(
            inclusion_proof(5, &all),
            Err(MerkleError::IndexOutOfRange { index: 5, size: 5 })
        );
        assert_eq!(
            inclusion_proof(0, &[]),
            Err(MerkleError::IndexOutOfRange { index: 0, size: 0 })
        );
        assert_eq!(
            consistency_proof(6, &all),
            Err(MerkleError::SizeOrder { old: 6, new: 5 })
        );
        assert_eq!(consistency_proof(0, &all), Err(MerkleError::EmptyOldTree));
        assert_eq!(consistency_proof(5, &all), Ok(Vec::new()));
        assert_eq!(inclusion_proof(0, &all[..1]), Ok(Vec::new()));
    }

    /// The largest tree size the round-trip tests cover.
    const MAX_SIZE: u64 = 70;

    /// `MAX_SIZE + 1` leaves and, at position `k`, the root of the first `k`
    /// of them, so tests can check claims about neighbouring sizes.
    fn leaves_and_prefix_roots() -> (Vec<Hash>, Vec<Hash>) {
        let all = leaves(MAX_SIZE + 1);
        let roots = (0..=all.len()).map(|size| root_of(&all[..size])).collect();
        (all, roots)
    }

    #[test]
    fn inclusion_proofs_round_trip_and_reject_tampering() {
        let (all, roots) = leaves_and_prefix_roots();
        for size in 1..=MAX_SIZE {
            let tree = &all[..size as usize];
            let root = roots[size as usize];
            for index in 0..size {
                let leaf = &tree[index as usize];
                let proof = inclusion_proof(index, tree).unwrap();
                let context = format!("index {index}, size {size}");
                assert_eq!(proof.len(), inclusion_proof_size(index, size), "{context}");
                assert_eq!(
                    verify_inclusion(index, size, leaf, &proof, &root),
                    Ok(()),
                    "{context}"
                );

                for bit in BITS_TO_FLIP {
                    for position in 0..proof.len() {
                        let mut tampered = proof.clone();
                        tampered[position] = flip_bit(&tampered[position], bit);
                        assert!(
                            verify_inclusion(index, size, leaf, &tampered, &root).is_err(),
                            "{context}: bit {bit} of proof[{position}]"
                        );
                    }
                    let bad_root = flip_bit(&root, bit);
                    assert!(verify_inclusion(index, size, leaf, &proof, &bad_root).is_err());
                    let bad_leaf = flip_bit(leaf, bit);
                    assert!(verify_inclusion(index, size, &bad_leaf, &proof, &root).is_err());
                }
                for claimed_index in [index.wrapping_sub(1), index + 1] {
                    assert!(
                        verify_inclusion(claimed_index, size, leaf, &proof, &root).is_err(),
                        "{context}: claimed index {claimed_index}"
                    );
                }
                // The size is bound by the root, not by the proof (see
                // `verify_inclusion`), so a claimed size comes with the root
                // of the tree that really has that size.
                for claimed_size in [size - 1, size + 1] {
                    let claimed_root = roots[claimed_size as usize];
                    assert!(
                        verify_inclusion(index, claimed_size, leaf, &proof, &claimed_root).is_err(),
                        "{context}: claimed size {claimed_size}"
                    );
                }
                let mut too_long = proof.clone();
                too_long.push(root);
                assert!(verify_inclusion(index, size, leaf, &too_long, &root).is_err());
                if let Some((_, too_short)) = proof.split_last() {
                    assert!(verify_inclusion(index, size, leaf, too_short, &root).is_err());
                }
            }
        }
    }

    #[test]
    fn inclusion_proof_does_not_bind_the_tree_size_by_itself() {
        let tree = leaves(3);
        let proof = inclusion_proof(0, &tree).unwrap();
        assert_eq!(
            verify_inclusion(0, 4, &tree[0], &proof, &root_of(&tree)),
            Ok(())
        );
    }

    #[test]
    fn consistency_proofs_round_trip_and_reject_tampering() {
        let (all, roots) = leaves_and_prefix_roots();
        for size2 in 1..=MAX_SIZE {
            let tree = &all[..size2 as usize];
            let root2 = roots[size2 as usize];
            for size1 in 1..=size2 {
                let root1 = roots[size1 as usize];
                let proof = consistency_proof(size1, tree).unwrap();
                let context = format!("size1 {size1}, size2 {size2}");
                if size1 < size2 {
                    assert_eq!(
                        proof.len(),
                        consistency_proof_size(size1, size2),
                        "{context}"
                    );
                    assert!(
                        verify_consistency(size1, size2, &root2, &root1, &proof).is_err(),
                        "{context}: swapped roots"
                    );
                } else {
                    assert!(proof.is_empty(), "{context}");
                }
                assert_eq!(
                    verify_consistency(size1, size2, &root1, &root2, &proof),
                    Ok(()),
                    "{context}"
                );

                for bit in BITS_TO_FLIP {
                    for position in 0..proof.len() {
                        let mut tampered = proof.clone();
                        tampered[position] = flip_bit(&tampered[position], bit);
                        assert!(
                            verify_consistency(size1, size2, &root1, &root2, &tampered).is_err(),
                            "{context}: bit {bit} of proof[{position}]"
                        );
                    }
                    let bad_root1 = flip_bit(&root1, bit);
                    let bad_root2 = flip_bit(&root2, bit);
                    assert!(verify_consistency(size1, size2, &bad_root1, &root2, &proof).is_err());
                    assert!(verify_consistency(size1, size2, &root1, &bad_root2, &proof).is_err());
                }
                // As with inclusion, claimed sizes come with the roots of the
                // trees that really have them.
                let claims = [
                    (size1 - 1, size2),
                    (size1 + 1, size2),
                    (size1, size2 - 1),
                    (size1, size2 + 1),
                ];
                for (claimed1, claimed2) in claims {
                    let (claimed_root1, claimed_root2) =
                        (roots[claimed1 as usize], roots[claimed2 as usize]);
                    assert!(
                        verify_consistency(
                            claimed1,
                            claimed2,
                            &claimed_root1,
                            &claimed_root2,
                            &proof
                        )
                        .is_err(),
                        "{context}: claimed sizes {claimed1}, {claimed2}"
                    );
                }
                let mut too_long = proof.clone();
                too_long.push(root2);
                assert!(verify_consistency(size1, size2, &root1, &root2, &too_long).is_err());
                if let Some((_, too_short)) = proof.split_last() {
                    assert!(verify_consistency(size1, size2, &root1, &root2, too_short).is_err());
                }
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let root = leaf_hash(b"x");
        let other = leaf_hash(b"y");
        assert_eq!(
            verify_consistency(2, 1, &root, &root, &[]),
            Err(MerkleError::SizeOrder { old: 2, new: 1 })
        );
        assert_eq!(
            verify_consistency(0, 0, &root, &root, &[]),
            Err(MerkleError::EmptyOldTree)
        );
        assert_eq!(
            verify_consistency(0, 3, &empty_root(), &root, &[]),
            Err(MerkleError::EmptyOldTree)
        );
        assert_eq!(verify_consistency(4, 4, &root, &root, &[]), Ok(()));
        assert_eq!(
            verify_consistency(4, 4, &root, &root, &[root]),
            Err(MerkleError::WrongProofSize {
                expected: 0,
                actual: 1
            })
        );
        assert_eq!(
            verify_consistency(4, 4, &root, &other, &[]),
            Err(MerkleError::RootMismatch {
                expected: other,
                computed: root
            })
        );
        assert_eq!(
            verify_consistency(1, 2, &root, &other, &[]),
            Err(MerkleError::WrongProofSize {
                expected: 1,
                actual: 0
            })
        );
    }

    /// What became of one test vector.
    enum Outcome {
        Verified,
        Rejected(MerkleError),
        /// The named field is not a 32-byte hash, so it cannot even be
        /// represented as a [`Hash`]: a decoder at the API boundary rejects it.
        Malformed(&'static str),
    }

    impl std::fmt::Display for Outcome {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                Self::Verified => f.write_str("verified"),
                Self::Rejected(err) => write!(f, "rejected: {err}"),
                Self::Malformed(field) => write!(f, "malformed: {field} is not a 32-byte hash"),
            }
        }
    }

    /// Decodes a base64 hash field.
    ///
    /// The vectors also carry values that are not 32 bytes long: empty
    /// strings, `WrongRoot`-style junk, and the `don't care 1` / `don't care
    /// 2` placeholder roots of the `additional` consistency cases. The junk
    /// is `None` (malformed). The placeholders are opaque roots that the
    /// upstream verifier compares but never hashes, and some of those cases
    /// must succeed, so they map to a hash derived from their text: equal
    /// placeholders stay equal, different ones differ.
    fn decode_hash(case: &Value, field: &str) -> Option<Hash> {
        let bytes = BASE64.decode(case[field].as_str().unwrap()).unwrap();
        if bytes.starts_with(b"don't care") {
            return Some(Sha256::digest(&bytes).into());
        }
        bytes.try_into().ok()
    }

    fn decode_proof(case: &Value) -> Option<Vec<Hash>> {
        match &case["proof"] {
            Value::Null => Some(Vec::new()),
            Value::Array(items) => items
                .iter()
                .map(|item| {
                    BASE64
                        .decode(item.as_str().unwrap())
                        .unwrap()
                        .try_into()
                        .ok()
                })
                .collect(),
            other => panic!("proof is neither null nor an array: {other}"),
        }
    }

    fn as_u64(case: &Value, field: &str) -> u64 {
        case[field].as_u64().unwrap()
    }

    fn run_inclusion(case: &Value) -> Outcome {
        let Some(root) = decode_hash(case, "root") else {
            return Outcome::Malformed("root");
        };
        let Some(leaf) = decode_hash(case, "leafHash") else {
            return Outcome::Malformed("leafHash");
        };
        let Some(proof) = decode_proof(case) else {
            return Outcome::Malformed("proof");
        };
        let (index, size) = (as_u64(case, "leafIdx"), as_u64(case, "treeSize"));
        match verify_inclusion(index, size, &leaf, &proof, &root) {
            Ok(()) => Outcome::Verified,
            Err(err) => Outcome::Rejected(err),
        }
    }

    fn run_consistency(case: &Value) -> Outcome {
        let Some(root1) = decode_hash(case, "root1") else {
            return Outcome::Malformed("root1");
        };
        let Some(root2) = decode_hash(case, "root2") else {
            return Outcome::Malformed("root2");
        };
        let Some(proof) = decode_proof(case) else {
            return Outcome::Malformed("proof");
        };
        let (size1, size2) = (as_u64(case, "size1"), as_u64(case, "size2"));
        match verify_consistency(size1, size2, &root1, &root2, &proof) {
            Ok(()) => Outcome::Verified,
            Err(err) => Outcome::Rejected(err),
        }
    }

    /// Where a happy path is about the classic leaves, the proof we
    /// generate must be exactly the one in the vector. Returns whether the
    /// case was compared.
    fn matches_generated_proof(kind: &str, case: &Value) -> bool {
        let classic = classic_leaf_hashes();
        let Some(want) = decode_proof(case) else {
            return false;
        };
        let generated = if kind == "inclusion" {
            let index = as_u64(case, "leafIdx");
            let Some(tree) = classic.get(..as_u64(case, "treeSize") as usize) else {
                return false;
            };
            let is_classic = decode_hash(case, "root") == Some(root_of(tree))
                && decode_hash(case, "leafHash") == tree.get(index as usize).copied();
            if !is_classic {
                return false;
            }
            inclusion_proof(index, tree)
        } else {
            let size1 = as_u64(case, "size1");
            let Some(tree) = classic.get(..as_u64(case, "size2") as usize) else {
                return false;
            };
            let is_classic = decode_hash(case, "root2") == Some(root_of(tree))
                && decode_hash(case, "root1") == tree.get(..size1 as usize).map(root_of);
            if !is_classic {
                return false;
            }
            consistency_proof(size1, tree)
        };
        assert_eq!(generated, Ok(want), "generated proof differs for {case}");
        true
    }

    fn json_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                json_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "json") {
                found.push(path);
            }
        }
    }

    #[test]
    fn every_test_vector_verifies_or_fails_as_expected() {
        let root_dir = Path::new(VECTORS_DIR);
        let mut files = Vec::new();
        json_files(root_dir, &mut files);
        files.sort();
        assert!(
            !files.is_empty(),
            "no test vectors found under {VECTORS_DIR}"
        );

        let (mut verified, mut rejected, mut malformed, mut generated) = (0, 0, 0, 0);
        for file in &files {
            let relative = file.strip_prefix(root_dir).unwrap();
            let kind = relative.iter().next().unwrap().to_str().unwrap();
            let case: Value = serde_json::from_str(&fs::read_to_string(file).unwrap()).unwrap();
            let outcome = match kind {
                "inclusion" => run_inclusion(&case),
                "consistency" => run_consistency(&case),
                other => panic!("unknown vector kind {other} in {}", relative.display()),
            };
            let want_err = case["wantErr"].as_bool().unwrap();
            assert_eq!(
                !matches!(outcome, Outcome::Verified),
                want_err,
                "{}: {} was {outcome}",
                relative.display(),
                case["desc"]
            );
            match outcome {
                Outcome::Verified => verified += 1,
                Outcome::Rejected(_) => rejected += 1,
                Outcome::Malformed(_) => malformed += 1,
            }
            if !want_err && matches_generated_proof(kind, &case) {
                generated += 1;
            }
        }
        println!(
            "{} vector files: {verified} verified, {rejected} rejected by the verifier, \
             {malformed} malformed; {generated} happy paths regenerated",
            files.len()
        );
        assert!(verified > 0 && rejected > 0 && generated > 0);
    }
}
