//! The server root ID-Cert against the public polyproto SDK (crate `polyproto` 0.21): it must
//! parse, validate as a home server certificate, and re-encode to exactly our bytes.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Verifier, VerifyingKey};
use polyproto::certs::idcert::IdCertHs;
use polyproto::certs::PublicKeyInfo;
use polyproto::der::asn1::BitString;
use polyproto::der::{DecodePem, Encode};
use polyproto::errors::{CertificateConversionError, InvalidInput, PublicKeyError};
use polyproto::key::PublicKey;
use polyproto::signature::Signature;
use polyproto::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SignatureBitStringEncoding};
use switchyard::federation::signing::ServerKey;
use switchyard::identity::idcert::{issue_server_root, random_serial};

#[derive(Debug, PartialEq, Eq, Clone)]
struct Ed25519Signature(ed25519_dalek::Signature);

impl fmt::Display for Ed25519Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

impl SignatureBitStringEncoding for Ed25519Signature {
    fn to_bitstring(&self) -> polyproto::der::Result<BitString> {
        BitString::from_bytes(&self.0.to_bytes())
    }
}

impl Signature for Ed25519Signature {
    type Signature = ed25519_dalek::Signature;

    fn as_signature(&self) -> &Self::Signature {
        &self.0
    }

    fn algorithm_identifier() -> AlgorithmIdentifierOwned {
        AlgorithmIdentifierOwned {
            oid: ObjectIdentifier::new_unwrap("1.3.101.112"),
            parameters: None,
        }
    }

    fn from_bytes(signature: &[u8]) -> Result<Self, InvalidInput> {
        let bytes: [u8; 64] = signature
            .try_into()
            .map_err(|_| InvalidInput::Malformed("64 bytes".into()))?;
        Ok(Ed25519Signature(ed25519_dalek::Signature::from_bytes(
            &bytes,
        )))
    }

    fn as_bytes(&self) -> Vec<u8> {
        self.0.to_bytes().to_vec()
    }
}

#[derive(Debug, PartialEq, Eq, Clone)]
struct Ed25519PublicKey(VerifyingKey);

impl PublicKey<Ed25519Signature> for Ed25519PublicKey {
    fn verify_signature(
        &self,
        signature: &Ed25519Signature,
        data: &[u8],
    ) -> Result<(), PublicKeyError> {
        self.0
            .verify(data, &signature.0)
            .map_err(|_| PublicKeyError::BadSignature)
    }

    fn public_key_info(&self) -> Result<PublicKeyInfo, PublicKeyError> {
        Ok(PublicKeyInfo {
            algorithm: Ed25519Signature::algorithm_identifier(),
            public_key_bitstring: BitString::from_bytes(self.0.as_bytes())
                .map_err(|_| PublicKeyError::BadPublicKeyInfo)?,
        })
    }

    fn try_from_public_key_info(info: PublicKeyInfo) -> Result<Self, CertificateConversionError> {
        let bytes: [u8; 32] = info
            .public_key_bitstring
            .raw_bytes()
            .try_into()
            .map_err(|_| InvalidInput::Malformed("32 bytes".into()))?;
        let key =
            VerifyingKey::from_bytes(&bytes).map_err(|e| InvalidInput::Malformed(e.to_string()))?;
        Ok(Ed25519PublicKey(key))
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[test]
fn the_server_root_id_cert_parses_validates_and_re_encodes_identically() {
    let key = ServerKey::generate();
    let now = SystemTime::now();
    for server_name in ["chat.example.org:8448", "localhost:8008", "a.b.c.example"] {
        let pem = issue_server_root(
            &key,
            server_name,
            &random_serial(),
            now,
            Duration::from_secs(365 * 86_400),
        )
        .expect("issue");
        let cert = IdCertHs::<Ed25519Signature, Ed25519PublicKey>::from_pem_unchecked(&pem)
            .unwrap_or_else(|e| panic!("{server_name}: polyproto cannot parse our ID-Cert: {e}"));
        cert.full_verify_home_server(unix(now) + 60)
            .unwrap_or_else(|e| {
                panic!("{server_name}: polyproto does not validate our ID-Cert: {e}")
            });
        assert_eq!(cert.id_cert_tbs.subject_public_key.0, key.verifying_key());

        // polyproto's own encoding of what it parsed is our DER, byte for byte.
        let ours = x509_cert::Certificate::from_pem(&pem)
            .expect("x509")
            .to_der()
            .expect("der");
        let theirs = x509_cert::Certificate::try_from(cert)
            .expect("back to X.509")
            .to_der()
            .expect("der");
        assert_eq!(hex::encode(&theirs), hex::encode(&ours), "{server_name}");
    }
}

#[test]
fn a_tampered_or_expired_id_cert_is_refused() {
    let key = ServerKey::generate();
    let now = SystemTime::now();
    let pem = issue_server_root(
        &key,
        "chat.example.org",
        &random_serial(),
        now,
        Duration::from_secs(3600),
    )
    .expect("issue");
    let cert =
        IdCertHs::<Ed25519Signature, Ed25519PublicKey>::from_pem_unchecked(&pem).expect("parse");
    assert!(
        cert.full_verify_home_server(unix(now) + 7200).is_err(),
        "expired"
    );
    assert!(
        cert.full_verify_home_server(unix(now) - 7200).is_err(),
        "not yet valid"
    );

    // Signed by another key than the one it certifies.
    let other = ServerKey::generate();
    let mut forged = IdCertHs::<Ed25519Signature, Ed25519PublicKey>::from_pem_unchecked(
        &issue_server_root(
            &other,
            "chat.example.org",
            &random_serial(),
            now,
            Duration::from_secs(3600),
        )
        .expect("issue"),
    )
    .expect("parse");
    forged.id_cert_tbs.subject_public_key = Ed25519PublicKey(key.verifying_key());
    assert!(forged.full_verify_home_server(unix(now) + 60).is_err());
}
