//! The hash chain over log entries (DESIGN §2, contract).
//!
//! ```text
//!  prev_hash(1) = "sha256:" + 64 × "0"
//!  entry_hash(n) = "sha256:" + hex(SHA-256( raw32(prev_hash(n)) ‖ leaf(n) ))
//!  prev_hash(n+1) = entry_hash(n)
//! ```
//! Changing any byte of any entry changes its `entry_hash` and so breaks the link to every
//! entry after it; `switchyard log verify` walks the chain and names the first bad entry.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 link of the chain, written `sha256:<64 lowercase hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChainHash(pub [u8; 32]);

impl ChainHash {
    /// The `prev_hash` of the first entry.
    pub const GENESIS: ChainHash = ChainHash([0; 32]);

    /// The hash of the entry whose predecessor is `self` and whose leaf is `leaf`.
    pub fn next(&self, leaf: &[u8]) -> ChainHash {
        let mut hasher = Sha256::new();
        hasher.update(self.0);
        hasher.update(leaf);
        ChainHash(hasher.finalize().into())
    }
}

impl fmt::Display for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for ChainHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a chain hash (want \"sha256:\" and 64 lowercase hex digits): {0:?}")]
pub struct BadChainHash(pub String);

impl FromStr for ChainHash {
    type Err = BadChainHash;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadChainHash(s.chars().take(80).collect());
        let hex_part = s.strip_prefix("sha256:").ok_or_else(bad)?;
        if hex_part.len() != 64 || hex_part.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut raw = [0u8; 32];
        hex::decode_to_slice(hex_part, &mut raw).map_err(|_| bad())?;
        Ok(ChainHash(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_sha256_and_64_zeros() {
        assert_eq!(
            ChainHash::GENESIS.to_string(),
            format!("sha256:{}", "0".repeat(64))
        );
    }

    #[test]
    fn next_hashes_raw_prev_bytes_then_leaf() {
        let leaf = br#"{"a":1}"#;
        let mut manual = Sha256::new();
        manual.update([0u8; 32]);
        manual.update(leaf);
        let want: [u8; 32] = manual.finalize().into();
        assert_eq!(ChainHash::GENESIS.next(leaf), ChainHash(want));
    }

    #[test]
    fn parse_round_trips_and_rejects_malformed() {
        let h = ChainHash::GENESIS.next(b"x");
        assert_eq!(h.to_string().parse::<ChainHash>(), Ok(h));
        for bad in [
            "",
            "sha256:",
            "sha1:00",
            "sha256:zz",
            &h.to_string().to_uppercase(),
        ] {
            assert!(bad.parse::<ChainHash>().is_err(), "{bad}");
        }
        assert!(format!("sha256:{}", "A".repeat(64))
            .parse::<ChainHash>()
            .is_err());
    }
}
