//! The only place that touches private keys: the server's ed25519 signing key, its key file,
//! and Matrix signed JSON (signing and verifying).
//!
//! Key file: one line, `ed25519 <version> <unpadded base64 seed>` (the format Synapse uses
//! for its signing key), created with mode 0600 on first start. The key id is
//! `ed25519:<version>`.
//!
//! Signed JSON (Matrix appendix "Signing JSON"): the object without `signatures` and
//! `unsigned` is encoded as canonical JSON and signed; the signature goes to
//! `signatures.<server name>.<key id>` as unpadded standard base64, and `unsigned` is put back
//! untouched.
//!
//! Signed requests (DESIGN §3.2, contract): the signature covers eight lines joined by `\n`,
//! with no trailing newline:
//! ```text
//! switchyard-federation-v1
//! <METHOD>
//! <path, with the query string if any>
//! <origin>
//! <destination: the receiver's configured server name>
//! <timestamp, unix seconds, as sent>
//! <key id, as sent>
//! <lowercase hex SHA-256 of the raw body>
//! ```
//! sent as `X-Switchyard-Origin`, `-Timestamp`, `-Key` and `-Signature` (unpadded base64).
//! [`RequestSignature`] is the one code path that builds these bytes, for both directions.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use base64::alphabet::STANDARD;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::Rng;
use serde_json::{Map, Value};

use crate::core::canonical_json::{self, CanonicalJsonError};

/// Unpadded standard base64, the encoding of every key and signature in Matrix formats.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD_NO_PAD.encode(bytes)
}

/// Lenient decoding: padding optional and non-zero trailing bits accepted, as other Matrix
/// implementations do (the specification's own test seed has such bits).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Decodes standard base64, padded or not.
pub fn unb64(text: &str) -> Option<Vec<u8>> {
    LENIENT.decode(text).ok()
}

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the signing key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write the signing key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the signing key file {path} is malformed: {problem}")]
    Malformed {
        path: PathBuf,
        problem: &'static str,
    },
}

/// Why signed JSON does not verify (or cannot be signed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("only JSON objects can be signed")]
    NotAnObject,
    #[error("\"signatures\" must be an object of objects of strings")]
    MalformedSignatures,
    #[error("no signature by {server} with {key_id}")]
    Missing { server: String, key_id: String },
    #[error("the signature is not valid base64 of 64 bytes")]
    BadEncoding,
    #[error("the signature does not match")]
    Mismatch,
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
}

/// A server signing key with its key id.
pub struct ServerKey {
    version: String,
    key: SigningKey,
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("ServerKey")
            .field("key_id", &self.key_id())
            .finish_non_exhaustive()
    }
}

fn is_key_version(v: &str) -> bool {
    (1..=64).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl ServerKey {
    /// A new random key with a random version (`a_` and six random characters).
    pub fn generate() -> ServerKey {
        let mut rng = rand::rngs::OsRng;
        let suffix: String = (0..6)
            .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
            .collect();
        ServerKey {
            version: format!("a_{suffix}"),
            key: SigningKey::generate(&mut rng),
        }
    }

    /// A key from its 32-byte seed (test vectors, key files).
    pub fn from_seed(version: &str, seed: [u8; 32]) -> ServerKey {
        ServerKey {
            version: version.to_owned(),
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// `ed25519:<version>`.
    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.version)
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The public key as unpadded base64.
    pub fn public_b64(&self) -> String {
        b64(self.key.verifying_key().as_bytes())
    }

    /// Reads an existing key file.
    pub fn load(path: &Path) -> Result<ServerKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Reads the key file at `path`, or creates it (mode 0600, parent directories too) with a
    /// new key when it does not exist.
    pub fn load_or_generate(path: &Path) -> Result<ServerKey, KeyFileError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = ServerKey::generate();
                key.write(path)?;
                tracing::info!(key_id = %key.key_id(), path = %path.display(), "generated a new server signing key");
                Ok(key)
            }
            Err(source) => Err(KeyFileError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    fn parse(path: &Path, text: &str) -> Result<ServerKey, KeyFileError> {
        let malformed = |problem| KeyFileError::Malformed {
            path: path.to_owned(),
            problem,
        };
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .ok_or_else(|| malformed("it is empty"))?;
        let mut parts = line.split_whitespace();
        let (Some(algorithm), Some(version), Some(seed), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("want one line: ed25519 <version> <base64 seed>"));
        };
        if algorithm != "ed25519" {
            return Err(malformed("only ed25519 keys are supported"));
        }
        if !is_key_version(version) {
            return Err(malformed(
                "the key version must be 1..64 characters of [A-Za-z0-9_]",
            ));
        }
        let seed: [u8; 32] = unb64(seed)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or_else(|| malformed("the seed must be 32 bytes of base64"))?;
        Ok(ServerKey::from_seed(version, seed))
    }

    /// Writes the key file: a temporary file with mode 0600, fsynced, then renamed over `path`.
    pub fn write(&self, path: &Path) -> Result<(), KeyFileError> {
        let fail = |source| KeyFileError::Write {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let tmp = path.with_extension("tmp");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp).map_err(fail)?;
        writeln!(
            file,
            "ed25519 {} {}",
            self.version,
            b64(self.key.as_bytes())
        )
        .map_err(fail)?;
        file.sync_all().map_err(fail)?;
        std::fs::rename(&tmp, path).map_err(fail)
    }

    /// Signs `object` as Matrix signed JSON, adding `signatures.<server_name>.<key id>`.
    pub fn sign_json(&self, server_name: &str, object: &mut Value) -> Result<(), SignatureError> {
        let map = object.as_object_mut().ok_or(SignatureError::NotAnObject)?;
        let signatures = map.remove("signatures");
        let unsigned = map.remove("unsigned");
        let canonical = canonical_json::to_canonical_string(&Value::Object(map.clone()));
        if let Some(unsigned) = unsigned {
            map.insert("unsigned".into(), unsigned);
        }
        let mut signatures = match signatures {
            Some(Value::Object(s)) => s,
            None => Map::new(),
            Some(_) => return Err(SignatureError::MalformedSignatures),
        };
        let signature = self.key.sign(canonical?.as_bytes());
        let ours = signatures
            .entry(server_name.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        let ours = ours
            .as_object_mut()
            .ok_or(SignatureError::MalformedSignatures)?;
        ours.insert(self.key_id(), Value::String(b64(&signature.to_bytes())));
        map.insert("signatures".into(), Value::Object(signatures));
        Ok(())
    }

    /// Signs raw bytes (signed notes, certificates).
    pub fn sign(&self, message: &[u8]) -> Signature {
        self.key.sign(message)
    }

    /// The `X-Switchyard-Signature` value for a request. `request.key_id` must be this key's
    /// id (see [`ServerKey::key_id`]).
    pub fn sign_request(&self, request: &RequestSignature<'_>) -> String {
        debug_assert_eq!(request.key_id, self.key_id());
        b64(&self.key.sign(&request.signed_bytes()).to_bytes())
    }
}

/// The parts of a federation request that its signature covers.
#[derive(Clone, Copy, Debug)]
pub struct RequestSignature<'a> {
    pub method: &'a str,
    /// The path with its query string, e.g. `/federation/user-lookup?username=alice`.
    pub path: &'a str,
    pub origin: &'a str,
    pub destination: &'a str,
    /// The `X-Switchyard-Timestamp` value, as sent.
    pub timestamp: &'a str,
    /// The `X-Switchyard-Key` value, as sent (`ed25519:<id>`).
    pub key_id: &'a str,
    pub body: &'a [u8],
}

impl RequestSignature<'_> {
    /// The exact bytes that are signed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        use sha2::{Digest, Sha256};
        let body_hash = hex::encode(Sha256::digest(self.body));
        [
            "switchyard-federation-v1",
            self.method,
            self.path,
            self.origin,
            self.destination,
            self.timestamp,
            self.key_id,
            &body_hash,
        ]
        .join("\n")
        .into_bytes()
    }

    /// Checks `signature` (the `X-Switchyard-Signature` value) with `key`.
    pub fn verify(&self, signature: &str, key: &VerifyingKey) -> Result<(), SignatureError> {
        let signature: [u8; 64] = unb64(signature)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(SignatureError::BadEncoding)?;
        key.verify(&self.signed_bytes(), &Signature::from_bytes(&signature))
            .map_err(|_| SignatureError::Mismatch)
    }
}

/// A signature check waiting to be made: the signed bytes, the signature, the key.
pub struct PendingCheck {
    pub message: Vec<u8>,
    pub signature: Signature,
    pub key: VerifyingKey,
}

impl RequestSignature<'_> {
    /// Decodes `signature` (the `X-Switchyard-Signature` value) into a check that can be
    /// batched with others (see [`verify_all`]).
    pub fn pending_check(
        &self,
        signature: &str,
        key: VerifyingKey,
    ) -> Result<PendingCheck, SignatureError> {
        let signature: [u8; 64] = unb64(signature)
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(SignatureError::BadEncoding)?;
        Ok(PendingCheck {
            message: self.signed_bytes(),
            signature: Signature::from_bytes(&signature),
            key,
        })
    }
}

/// Checks every signature of `checks`: one ed25519 batch verification (about 2.2× cheaper
/// per signature than one by one at 64, on this machine), and only when the batch fails, each
/// one alone to find which. Answers one result per check, in order.
pub fn verify_all(checks: &[PendingCheck]) -> Vec<bool> {
    if checks.len() > 1 {
        let messages: Vec<&[u8]> = checks.iter().map(|c| c.message.as_slice()).collect();
        let signatures: Vec<Signature> = checks.iter().map(|c| c.signature).collect();
        let keys: Vec<VerifyingKey> = checks.iter().map(|c| c.key).collect();
        if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
            return vec![true; checks.len()];
        }
    }
    checks
        .iter()
        .map(|c| c.key.verify(&c.message, &c.signature).is_ok())
        .collect()
}

/// A signing key of ours that was rotated out: public part only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetiredKey {
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    /// Signatures dated at or after this time (ms) are not valid.
    pub expired_ts: i64,
}

/// The server's keys: the current signing key and the retired ones. Rotation swaps the
/// current key and bumps [`KeyRing::generation`], which tells prepared responses to rebuild.
pub struct KeyRing {
    path: PathBuf,
    current: std::sync::RwLock<Arc<ServerKey>>,
    retired: std::sync::RwLock<Vec<RetiredKey>>,
    generation: AtomicU64,
    /// Held for the whole of a rotation so two never interleave.
    pub(crate) rotating: tokio::sync::Mutex<()>,
}

impl KeyRing {
    pub fn new(path: &Path, current: ServerKey, retired: Vec<RetiredKey>) -> KeyRing {
        KeyRing {
            path: path.to_owned(),
            current: std::sync::RwLock::new(Arc::new(current)),
            retired: std::sync::RwLock::new(retired),
            generation: AtomicU64::new(0),
            rotating: tokio::sync::Mutex::new(()),
        }
    }

    /// The key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where a rotation writes the next key before it is recorded in the log.
    pub fn pending_path(path: &Path) -> PathBuf {
        path.with_extension("next")
    }

    pub fn current(&self) -> Arc<ServerKey> {
        // A poisoned lock holds a complete value (it is only ever replaced whole).
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn retired(&self) -> Vec<RetiredKey> {
        self.retired
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The public key that was our signing key at `at_ms`: each retired key was current from
    /// the previous one's `expired_ts` until its own; the current key since the last one.
    /// (The first key has no recorded start: it answers for any time before it expired.)
    pub fn verifying_key_at(&self, at_ms: i64) -> Option<VerifyingKey> {
        match self.retired_at(at_ms) {
            Some(k) => unb64(&k.public_key)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .and_then(|b| VerifyingKey::from_bytes(&b).ok()),
            None => Some(self.current().verifying_key()),
        }
    }

    /// The id of the key that was current at `at_ms`.
    pub fn key_id_at(&self, at_ms: i64) -> String {
        match self.retired_at(at_ms) {
            Some(k) => k.key_id,
            None => self.current().key_id(),
        }
    }

    /// The retired key that was current at `at_ms`: the first to expire after it.
    fn retired_at(&self, at_ms: i64) -> Option<RetiredKey> {
        let mut retired = self.retired();
        retired.sort_by_key(|k| k.expired_ts);
        retired.into_iter().find(|k| at_ms < k.expired_ts)
    }

    /// Makes `next` the current key and retires the previous one.
    pub(crate) fn install(&self, next: ServerKey, retired: RetiredKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        self.retired
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(retired);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// Checks the signature of `server`'s `key_id` on the Matrix signed JSON `object`.
pub fn verify_json(
    object: &Value,
    server: &str,
    key_id: &str,
    key: &VerifyingKey,
) -> Result<(), SignatureError> {
    let map = object.as_object().ok_or(SignatureError::NotAnObject)?;
    let signature = map
        .get("signatures")
        .map(|s| s.as_object().ok_or(SignatureError::MalformedSignatures))
        .transpose()?
        .and_then(|s| s.get(server))
        .and_then(|s| s.get(key_id))
        .ok_or_else(|| SignatureError::Missing {
            server: server.to_owned(),
            key_id: key_id.to_owned(),
        })?
        .as_str()
        .ok_or(SignatureError::MalformedSignatures)?;
    let signature: [u8; 64] = unb64(signature)
        .and_then(|bytes| bytes.try_into().ok())
        .ok_or(SignatureError::BadEncoding)?;
    let mut unsigned = map.clone();
    unsigned.remove("signatures");
    unsigned.remove("unsigned");
    let canonical = canonical_json::to_canonical_string(&Value::Object(unsigned))?;
    key.verify(canonical.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The Matrix specification's signing test vectors (appendix, "Cryptographic test vectors").
    fn vector_key() -> ServerKey {
        let seed: [u8; 32] = unb64("YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1")
            .expect("b64")
            .try_into()
            .expect("32 bytes");
        ServerKey::from_seed("1", seed)
    }

    #[test]
    fn matrix_signing_vectors_reproduce() {
        let key = vector_key();
        assert_eq!(
            key.public_b64(),
            "XGX0JRS2Af3be3knz2fBiRbApjm2Dh61gXDJA8kcJNI"
        );
        let mut empty = json!({});
        key.sign_json("domain", &mut empty).expect("sign");
        assert_eq!(
            empty,
            json!({"signatures": {"domain": {"ed25519:1": "K8280/U9SSy9IVtjBuVeLr+HpOB4BQFWbg+UZaADMtTdGYI7Geitb76LTrr5QV/7Xg4ahLwYGYZzuHGZKM5ZAQ"}}})
        );
        let mut data = json!({"one": 1, "two": "Two"});
        key.sign_json("domain", &mut data).expect("sign");
        assert_eq!(
            data["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        verify_json(&data, "domain", "ed25519:1", &key.verifying_key()).expect("verifies");
    }

    #[test]
    fn unsigned_is_kept_and_not_signed() {
        let key = vector_key();
        let mut data = json!({"one": 1, "two": "Two", "unsigned": {"age": 5}});
        key.sign_json("domain", &mut data).expect("sign");
        assert_eq!(data["unsigned"]["age"], 5);
        assert_eq!(
            data["signatures"]["domain"]["ed25519:1"],
            "KqmLSbO39/Bzb0QIYE82zqLwsA+PDzYIpIRA2sRQ4sL53+sN6/fpNSoqE7BP7vBZhG6kYdD13EIMJpvhJI+6Bw"
        );
        data["unsigned"]["age"] = json!(6);
        verify_json(&data, "domain", "ed25519:1", &key.verifying_key())
            .expect("unsigned may change");
    }

    #[test]
    fn verification_failures() {
        let key = vector_key();
        let mut data = json!({"one": 1});
        key.sign_json("domain", &mut data).expect("sign");
        let vk = key.verifying_key();
        let mut changed = data.clone();
        changed["one"] = json!(2);
        assert_eq!(
            verify_json(&changed, "domain", "ed25519:1", &vk),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify_json(&data, "other", "ed25519:1", &vk),
            Err(SignatureError::Missing { .. })
        ));
        let mut garbled = data.clone();
        garbled["signatures"]["domain"]["ed25519:1"] = json!("!!");
        assert_eq!(
            verify_json(&garbled, "domain", "ed25519:1", &vk),
            Err(SignatureError::BadEncoding)
        );
        let other = ServerKey::generate();
        assert_eq!(
            verify_json(&data, "domain", "ed25519:1", &other.verifying_key()),
            Err(SignatureError::Mismatch)
        );
    }

    fn request<'a>(body: &'a [u8], timestamp: &'a str) -> RequestSignature<'a> {
        RequestSignature {
            method: "POST",
            path: "/federation/inbox",
            origin: "a.example:8448",
            destination: "b.example",
            timestamp,
            key_id: "ed25519:1",
            body,
        }
    }

    #[test]
    fn request_signature_covers_the_eight_contract_lines() {
        let body = br#"{"events":[]}"#;
        let req = request(body, "1700000000");
        let expected = format!(
            "switchyard-federation-v1\nPOST\n/federation/inbox\na.example:8448\nb.example\n1700000000\ned25519:1\n{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(body))
        );
        assert_eq!(
            String::from_utf8(req.signed_bytes()).expect("utf8"),
            expected
        );
        // The empty body hashes to SHA-256("") (user-lookup is signed with it).
        let empty = RequestSignature {
            method: "GET",
            path: "/federation/user-lookup?username=alice",
            body: b"",
            ..req
        };
        assert!(String::from_utf8(empty.signed_bytes())
            .expect("utf8")
            .ends_with("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));

        let key = vector_key();
        let signature = key.sign_request(&req);
        assert!(!signature.ends_with('='));
        assert_eq!(
            signature,
            b64(&key.key.sign(expected.as_bytes()).to_bytes())
        );
        req.verify(&signature, &key.verifying_key())
            .expect("verifies");
    }

    #[test]
    fn a_request_signature_binds_every_line() {
        let key = vector_key();
        let vk = key.verifying_key();
        let body = br#"{"events":[]}"#;
        let signed = request(body, "1700000000");
        let signature = key.sign_request(&signed);
        let changed = [
            RequestSignature {
                method: "GET",
                ..signed
            },
            RequestSignature {
                path: "/federation/inbox2",
                ..signed
            },
            RequestSignature {
                origin: "c.example",
                ..signed
            },
            RequestSignature {
                destination: "c.example",
                ..signed
            },
            RequestSignature {
                timestamp: "1700000001",
                ..signed
            },
            RequestSignature {
                key_id: "ed25519:2",
                ..signed
            },
            RequestSignature {
                body: br#"{"events":[1]}"#,
                ..signed
            },
        ];
        for request in changed {
            assert_eq!(
                request.verify(&signature, &vk),
                Err(SignatureError::Mismatch),
                "{request:?}"
            );
        }
        assert_eq!(
            signed.verify("not base64!", &vk),
            Err(SignatureError::BadEncoding)
        );
        assert_eq!(
            signed.verify(&b64(&[0u8; 10]), &vk),
            Err(SignatureError::BadEncoding)
        );
    }

    #[test]
    fn key_file_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/signing.key");
        let first = ServerKey::load_or_generate(&path).expect("generate");
        let again = ServerKey::load_or_generate(&path).expect("load");
        assert_eq!(first.key_id(), again.key_id());
        assert_eq!(first.public_b64(), again.public_b64());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!format!("{first:?}").contains(&b64(first.key.as_bytes())));
    }

    #[test]
    fn malformed_key_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.key");
        for text in [
            "",
            "rsa a AAAA",
            "ed25519 a",
            "ed25519 bad-version! YJDBA9Xnr2sVqXD9Vj7XVUnmFZcZrlw8Md7kMW+3XA1",
            "ed25519 a notbase64",
            "ed25519 a AAAA",
        ] {
            std::fs::write(&path, text).expect("write");
            assert!(
                matches!(
                    ServerKey::load_or_generate(&path),
                    Err(KeyFileError::Malformed { .. })
                ),
                "{text:?}"
            );
        }
    }
}
