//! C2SP signed notes, tlog-checkpoints and tlog-cosignatures (DESIGN §2.1, §2.5): the text
//! formats only. Signing and checking signatures with keys happens in `federation::signing`
//! and in `transparency`, over the bytes built here.
//!
//! ```text
//! example.org/log                        ┐
//! 4711                                   │ body (the checkpoint): origin, size, root
//! 3mJk…base64 root…=                     ┘
//!                                        ← one blank line
//! — example.org/log AbCdEf…              ← key ID (4) ‖ Ed25519 signature (64), base64
//! — witness.example AbCd…                ← cosignature/v1: key ID ‖ u64 time ‖ signature
//! ```

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::core::merkle::Hash;

/// Key ID type byte of an Ed25519 note signature.
pub const ED25519_TYPE: u8 = 0x01;
/// Key ID type byte of a `cosignature/v1` (C2SP tlog-cosignature).
pub const COSIGNATURE_TYPE: u8 = 0x04;
/// The most signature lines a note may carry that we accept (C2SP signed-note lets a verifier
/// bound this; Go's reference stops at 100).
pub const MAX_SIGNATURES: usize = 100;
/// The longest note we read.
pub const MAX_NOTE_BYTES: usize = 64 * 1024;

/// `SHA-256(name ‖ 0x0A ‖ type ‖ public key)[..4]`.
pub fn key_id(name: &str, key_type: u8, public_key: &[u8; 32]) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', key_type])
        .chain_update(public_key)
        .finalize();
    [digest[0], digest[1], digest[2], digest[3]]
}

/// A verifier key: `<name>+<8 hex digits of the key ID>+<base64(type ‖ public key)>`.
pub fn vkey(name: &str, key_type: u8, public_key: &[u8; 32]) -> String {
    let mut typed = Vec::with_capacity(33);
    typed.push(key_type);
    typed.extend_from_slice(public_key);
    format!(
        "{name}+{}+{}",
        hex::encode(key_id(name, key_type, public_key)),
        STANDARD.encode(typed)
    )
}

/// Parses a verifier key of `key_type`, checking its key ID: `(name, public key)`.
pub fn parse_vkey(vkey: &str, key_type: u8) -> Option<(String, [u8; 32])> {
    let (name, rest) = vkey.split_once('+')?;
    let (id_hex, key_b64) = rest.split_once('+')?;
    if !is_key_name(name) || id_hex.len() != 8 {
        return None;
    }
    let typed = STANDARD.decode(key_b64).ok()?;
    let (&kind, key) = typed.split_first()?;
    let key: [u8; 32] = key.try_into().ok()?;
    (kind == key_type && hex::encode(key_id(name, key_type, &key)) == id_hex)
        .then(|| (name.to_owned(), key))
}

/// A key name: non-empty, no whitespace, no `+` (C2SP signed-note).
pub fn is_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('+') && !name.chars().any(char::is_whitespace)
}

/// The checkpoint body: `<origin>\n<size>\n<base64 root>\n`.
pub fn checkpoint_body(origin: &str, size: u64, root: &Hash) -> String {
    format!("{origin}\n{size}\n{}\n", STANDARD.encode(root))
}

/// One signature line, newline included: `— <name> <base64(key ID ‖ signature bytes)>`.
pub fn signature_line(name: &str, key_id: [u8; 4], signature: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(4 + signature.len());
    bytes.extend_from_slice(&key_id);
    bytes.extend_from_slice(signature);
    format!("\u{2014} {name} {}\n", STANDARD.encode(bytes))
}

/// What a `cosignature/v1` signs: `cosignature/v1\ntime <t>\n` then the checkpoint body.
pub fn cosignature_message(timestamp: u64, body: &str) -> String {
    format!("cosignature/v1\ntime {timestamp}\n{body}")
}

/// A cosignature line: key ID ‖ big-endian timestamp ‖ Ed25519 signature.
pub fn cosignature_line(name: &str, key_id: [u8; 4], timestamp: u64, signature: &[u8]) -> String {
    let mut bytes = Vec::with_capacity(8 + signature.len());
    bytes.extend_from_slice(&timestamp.to_be_bytes());
    bytes.extend_from_slice(signature);
    signature_line(name, key_id, &bytes)
}

/// One signature of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    /// The bytes after the key ID (a signature, or a timestamp and a signature).
    pub bytes: Vec<u8>,
    /// The line as it came, newline included (served back unchanged).
    pub line: String,
}

/// A signed note split into its body and its signature lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// The text signed, ending with its newline.
    pub body: String,
    pub signatures: Vec<NoteSignature>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    #[error("the note is over {MAX_NOTE_BYTES} bytes")]
    TooLong,
    #[error("the note is not UTF-8 text without control characters")]
    NotText,
    #[error("the note has no blank line between its text and its signatures")]
    NoSignatures,
    #[error("malformed signature line: {0}")]
    BadLine(String),
    #[error("the note has more than {MAX_SIGNATURES} signatures")]
    TooManySignatures,
}

impl Note {
    /// Parses a note (C2SP signed-note): text, one blank line, signature lines.
    pub fn parse(text: &str) -> Result<Note, NoteError> {
        if text.len() > MAX_NOTE_BYTES {
            return Err(NoteError::TooLong);
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(NoteError::NotText);
        }
        let split = text.rfind("\n\n").ok_or(NoteError::NoSignatures)?;
        let body = &text[..split + 1];
        let lines = &text[split + 2..];
        if lines.is_empty() || !lines.ends_with('\n') {
            return Err(NoteError::NoSignatures);
        }
        let mut signatures = Vec::new();
        for line in lines.split_inclusive('\n') {
            if signatures.len() == MAX_SIGNATURES {
                return Err(NoteError::TooManySignatures);
            }
            let bad = || NoteError::BadLine(line.trim_end().to_owned());
            let rest = line
                .strip_prefix("\u{2014} ")
                .and_then(|r| r.strip_suffix('\n'))
                .ok_or_else(bad)?;
            let (name, b64) = rest.split_once(' ').ok_or_else(bad)?;
            if !is_key_name(name) || b64.contains(' ') {
                return Err(bad());
            }
            let bytes = STANDARD.decode(b64).map_err(|_| bad())?;
            if bytes.len() < 5 {
                return Err(bad());
            }
            signatures.push(NoteSignature {
                name: name.to_owned(),
                key_id: [bytes[0], bytes[1], bytes[2], bytes[3]],
                bytes: bytes[4..].to_vec(),
                line: line.to_owned(),
            });
        }
        Ok(Note {
            body: body.to_owned(),
            signatures,
        })
    }
}

/// A checkpoint body's fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// Parses a tlog-checkpoint body: origin, decimal size, base64 root; extension lines (from
    /// other implementations) are allowed and ignored.
    pub fn parse(body: &str) -> Option<Checkpoint> {
        let mut lines = body.strip_suffix('\n')?.split('\n');
        let origin = lines.next().filter(|o| !o.is_empty())?;
        let size = lines.next()?;
        if size.is_empty()
            || !size.bytes().all(|b| b.is_ascii_digit())
            || (size.len() > 1 && size.starts_with('0'))
        {
            return None;
        }
        let size = size.parse().ok()?;
        let root: Hash = STANDARD.decode(lines.next()?).ok()?.try_into().ok()?;
        if lines.any(str::is_empty) {
            return None;
        }
        Some(Checkpoint {
            origin: origin.to_owned(),
            size,
            root,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vkey_round_trips_and_checks_its_id() {
        let key = [7u8; 32];
        let v = vkey("example.org/log", ED25519_TYPE, &key);
        assert_eq!(
            parse_vkey(&v, ED25519_TYPE),
            Some(("example.org/log".into(), key))
        );
        assert_eq!(parse_vkey(&v, COSIGNATURE_TYPE), None);
        let tampered = v.replacen("+", "+0", 1);
        assert_eq!(parse_vkey(&tampered, ED25519_TYPE), None);
    }

    #[test]
    fn notes_parse_and_refuse() {
        let body = checkpoint_body("example.org/log", 3, &[1; 32]);
        let line = signature_line("example.org/log", [1, 2, 3, 4], &[9; 64]);
        let note = Note::parse(&format!("{body}\n{line}")).expect("note");
        assert_eq!(note.body, body);
        assert_eq!(note.signatures[0].key_id, [1, 2, 3, 4]);
        assert_eq!(note.signatures[0].bytes, vec![9; 64]);
        assert_eq!(note.signatures[0].line, line);
        let checkpoint = Checkpoint::parse(&note.body).expect("checkpoint");
        assert_eq!(checkpoint.size, 3);
        for bad in [
            format!("{body}{line}"),
            format!("{body}\n"),
            format!("{body}\n- example.org/log AAAAAAAA\n"),
            format!("{body}\n\u{2014} example.org/log AAAA\n"),
        ] {
            assert!(Note::parse(&bad).is_err(), "{bad:?}");
        }
        assert!(Checkpoint::parse("o\n01\nAAAA\n").is_none());
        assert!(Checkpoint::parse("o\n1\n").is_none());
    }
}
