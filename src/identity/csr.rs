//! ID-CSRs (DESIGN §4.2): a PKCS #10 request for an actor certificate, as the polyproto crate
//! writes it. Pure: parsing and checks, no I/O.
//!
//! [`parse`] refuses what is not a request at all (400 `SY_BAD_CSR`): it does not parse, its
//! key or algorithms are not Ed25519, or its own signature fails. [`IdCsr::for_actor`] then
//! refuses what is a request, but not one we grant (403 `SY_FORBIDDEN`): a subject other than
//! exactly the caller's, or capabilities other than an actor's. The crate carries
//! capabilities as raw PKCS #10 attributes (2.5.29.19, 2.5.29.15); an `extensionRequest`
//! (RFC 2985) holding the same extensions is accepted too.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use x509_cert::der::asn1::BitString;
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Decode, DecodePem, Encode};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::request::CertReq;

use super::checker::{actor_subject, ed25519_key};
use super::idcert::{ActorUsage, ED25519};

/// PKCS #9 extensionRequest.
const EXTENSION_REQUEST: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.14");

/// Not a usable request (400 `SY_BAD_CSR`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("the body is not a PEM PKCS #10 certificate signing request: {0}")]
    Parse(String),
    #[error("the request's key and signature must be Ed25519")]
    NotEd25519,
    #[error("the request's signature does not verify with its own key")]
    Signature,
}

/// A request we do not grant (403 `SY_FORBIDDEN`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CsrRefused(pub String);

/// A parsed, self-consistent ID-CSR.
#[derive(Debug, Clone)]
pub struct IdCsr {
    pub key: VerifyingKey,
    request: CertReq,
}

/// Parses a PEM ID-CSR and checks its own signature.
pub fn parse(pem: &str) -> Result<IdCsr, CsrError> {
    let request = CertReq::from_pem(pem.trim()).map_err(|e| CsrError::Parse(e.to_string()))?;
    if request.algorithm.oid != ED25519 || request.algorithm.parameters.is_some() {
        return Err(CsrError::NotEd25519);
    }
    let key = ed25519_key(&request.info.public_key).ok_or(CsrError::NotEd25519)?;
    let signature: [u8; 64] = request
        .signature
        .as_bytes()
        .and_then(|b| b.try_into().ok())
        .ok_or(CsrError::Signature)?;
    let info = request
        .info
        .to_der()
        .map_err(|e| CsrError::Parse(e.to_string()))?;
    key.verify(&info, &Signature::from_bytes(&signature))
        .map_err(|_| CsrError::Signature)?;
    Ok(IdCsr { key, request })
}

/// The capabilities a request asks for: its basicConstraints and keyUsage, from raw
/// attributes or an extensionRequest.
fn requested(request: &CertReq) -> Result<(Option<BasicConstraints>, Option<KeyUsage>), String> {
    let mut constraints = None;
    let mut usage = None;
    let mut take = |oid: ObjectIdentifier, der: &[u8]| -> Result<(), String> {
        if oid == BasicConstraints::OID {
            let value = BasicConstraints::from_der(der)
                .map_err(|e| format!("basicConstraints does not decode: {e}"))?;
            if constraints.replace(value).is_some() {
                return Err("basicConstraints is requested twice".into());
            }
        } else if oid == KeyUsage::OID {
            let value =
                KeyUsage::from_der(der).map_err(|e| format!("keyUsage does not decode: {e}"))?;
            if usage.replace(value).is_some() {
                return Err("keyUsage is requested twice".into());
            }
        } else {
            return Err(format!("the capability {oid} is not an actor's"));
        }
        Ok(())
    };
    for attribute in request.info.attributes.iter() {
        for value in attribute.values.iter() {
            let der = value.to_der().map_err(|e| e.to_string())?;
            if attribute.oid == EXTENSION_REQUEST {
                let extensions = Vec::<Extension>::from_der(&der)
                    .map_err(|e| format!("the extensionRequest does not decode: {e}"))?;
                for extension in extensions {
                    take(extension.extn_id, extension.extn_value.as_bytes())?;
                }
            } else {
                take(attribute.oid, &der)?;
            }
        }
    }
    Ok((constraints, usage))
}

impl IdCsr {
    /// The DER of the request's SubjectPublicKeyInfo key bits.
    pub fn key_bits(&self) -> &BitString {
        &self.request.info.public_key.subject_public_key
    }

    /// Checks that the request names exactly `fid` and `session_id` (DCs of the fid's host,
    /// UID, CN, uniqueIdentifier) and asks for an actor's capabilities; answers the usage to
    /// certify.
    pub fn for_actor(&self, fid: &str, session_id: &str) -> Result<ActorUsage, CsrRefused> {
        let (named_fid, named_session) =
            actor_subject(&self.request.info.subject).map_err(CsrRefused)?;
        if named_fid != fid {
            return Err(CsrRefused(format!(
                "the request names {named_fid}; this session is {fid}'s"
            )));
        }
        if named_session != session_id {
            return Err(CsrRefused(format!(
                "the request names session {named_session:?}; this session is {session_id:?}"
            )));
        }
        let (constraints, usage) = requested(&self.request).map_err(CsrRefused)?;
        if constraints.is_some_and(|c| c.ca || c.path_len_constraint.is_some()) {
            return Err(CsrRefused(
                "an actor certificate cannot be a certificate authority".into(),
            ));
        }
        let usage = usage.ok_or_else(|| {
            CsrRefused(
                "the request must ask for keyUsage digitalSignature or contentCommitment".into(),
            )
        })?;
        let signing = usage.0.contains(KeyUsages::DigitalSignature);
        let committing = usage.0.contains(KeyUsages::NonRepudiation);
        let others = usage.0 & !(KeyUsages::DigitalSignature | KeyUsages::NonRepudiation);
        if signing == committing || !others.is_empty() {
            return Err(CsrRefused(
                "an actor's keyUsage is exactly digitalSignature or contentCommitment".into(),
            ));
        }
        Ok(if signing {
            ActorUsage::DigitalSignature
        } else {
            ActorUsage::ContentCommitment
        })
    }
}
