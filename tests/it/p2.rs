//! The polyproto crate (0.21, written by others) on our side of the tests: Ed25519 glue for
//! its traits, ID-CSRs made the way a polyproto client makes them, and its checks of the
//! certificates we issue.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, Verifier, VerifyingKey};
use polyproto::certs::capabilities::ActorCapabilities;
use polyproto::certs::idcert::{IdCertActor, IdCertBehaviors};
use polyproto::certs::idcsr::{IdCsr, IdCsrActor};
use polyproto::certs::PublicKeyInfo;
use polyproto::der::asn1::BitString;
use polyproto::errors::{CertificateConversionError, InvalidInput, PublicKeyError};
use polyproto::key::{PrivateKey, PublicKey};
use polyproto::signature::Signature;
use polyproto::spki::{AlgorithmIdentifierOwned, ObjectIdentifier, SignatureBitStringEncoding};
use polyproto::types::{ActorDN, DomainName, FederationId, LocalName, SessionId};

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Ed25519Signature(pub ed25519_dalek::Signature);

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
pub struct Ed25519PublicKey(pub VerifyingKey);

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

/// An actor's private key, for the crate's CSR builder.
#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Ed25519PrivateKey(pub SigningKey);

impl PrivateKey<Ed25519Signature> for Ed25519PrivateKey {
    type PublicKey = Ed25519PublicKey;

    fn pubkey(&self) -> Ed25519PublicKey {
        Ed25519PublicKey(self.0.verifying_key())
    }

    fn sign(&self, data: &[u8]) -> Ed25519Signature {
        Ed25519Signature(self.0.sign(data))
    }
}

pub type ActorCert = IdCertActor<Ed25519Signature, Ed25519PublicKey>;

/// A new actor key.
pub fn actor_key() -> SigningKey {
    SigningKey::generate(&mut rand::rngs::OsRng)
}

/// The ID-CSR (PEM) a polyproto client makes for `fid`'s session `session_id`.
pub fn actor_csr(fid: &str, session_id: &str, key: &SigningKey) -> String {
    let federation_id = FederationId::new(fid).expect("the crate takes the fid");
    let local = fid.split('@').next().expect("local");
    let host = fid
        .split('@')
        .nth(1)
        .and_then(|s| s.split(':').next())
        .expect("host");
    let subject = ActorDN::new_validated(
        federation_id,
        LocalName::new(local).expect("local name"),
        DomainName::new(host).expect("domain name"),
        SessionId::new_validated(session_id).expect("session id"),
        None,
    )
    .expect("actor DN");
    let csr = IdCsrActor::new(
        subject,
        &Ed25519PrivateKey(key.clone()),
        ActorCapabilities::default(),
    )
    .expect("CSR");
    IdCsr::from(csr)
        .to_pem(polyproto::der::pem::LineEnding::LF)
        .expect("PEM")
}

/// The crate's full check of an actor certificate under `home`'s key at `at` (unix s).
pub fn validate_actor(pem: &str, home: &VerifyingKey, at: u64) -> ActorCert {
    ActorCert::try_from_pem(pem, at, &Ed25519PublicKey(*home))
        .unwrap_or_else(|e| panic!("polyproto does not validate the actor ID-Cert at {at}: {e}"))
}

/// Whether the crate takes the actor certificate under `home`'s key at `at` (unix s).
pub fn actor_valid_at(pem: &str, home: &VerifyingKey, at: u64) -> bool {
    ActorCert::try_from_pem(pem, at, &Ed25519PublicKey(*home)).is_ok()
}
