//! polyproto ID-Certs: X.509 v3 certificates in the profile that the public polyproto SDK
//! (crate `polyproto` 0.21) parses and validates (DESIGN §4, contract).
//!
//! The SDK checks a signature over its own re-encoding of the TBS certificate, so ours must
//! be byte-identical to that encoding:
//! - version v3 written out; serial positive, minimal DER, at most 20 octets;
//! - algorithm `SEQUENCE { 1.3.101.112 }` with no parameters (TBS, outer field and SPKI);
//! - validity as UTCTime; no unique ids;
//! - extensions: exactly basicConstraints then keyUsage, both critical (root: `cA=TRUE`,
//!   `pathLen=0`, `keyCertSign`);
//! - names: one attribute per RDN; `dc` values IA5String, most significant label first,
//!   from the host part of the server name (`chat.example.org:8448` → DC=org, DC=example,
//!   DC=chat).
//!
//! This module builds the to-be-signed structure; the signature comes from
//! [`ServerKey::sign`](crate::federation::signing::ServerKey::sign), so private keys stay in
//! `federation::signing`.

use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use rand::Rng;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::{BitString, Ia5StringRef, OctetString, SetOfVec, UtcTime};
use x509_cert::der::oid::{AssociatedOid, ObjectIdentifier};
use x509_cert::der::{Any, Encode, EncodePem};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::{Name, RdnSequence, RelativeDistinguishedName};
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use crate::federation::signing::ServerKey;

/// id-Ed25519 (RFC 8410).
pub const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
/// domainComponent (RFC 4519).
pub const DOMAIN_COMPONENT: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.25");

#[derive(Debug, thiserror::Error)]
pub enum IdCertError {
    #[error("the server name has no host labels to use as domain components")]
    EmptyName,
    #[error("the validity cannot be written as UTCTime (1950..2049): {0}")]
    Validity(x509_cert::der::Error),
    #[error("DER encoding failed: {0}")]
    Der(#[from] x509_cert::der::Error),
}

fn ed25519() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ED25519,
        parameters: None,
    }
}

/// The name of a server: one `dc` RDN per label of the host part, most significant first.
pub fn server_dn(server_name: &str) -> Result<Name, IdCertError> {
    let host = match server_name.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => server_name
            .rsplit_once(':')
            .map_or(server_name, |(host, _)| host),
    };
    let mut rdns = Vec::new();
    for label in host.split('.').rev().filter(|l| !l.is_empty()) {
        let value = Any::from(Ia5StringRef::new(label)?);
        let attribute = AttributeTypeAndValue {
            oid: DOMAIN_COMPONENT,
            value,
        };
        rdns.push(RelativeDistinguishedName(SetOfVec::try_from(vec![
            attribute,
        ])?));
    }
    if rdns.is_empty() {
        return Err(IdCertError::EmptyName);
    }
    Ok(RdnSequence(rdns))
}

/// A random serial: 16 octets, positive, minimal (first octet 0x01..=0x7f).
pub fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::thread_rng().gen();
    serial[0] = serial[0].clamp(1, 0x7f);
    serial
}

fn critical<T: AssociatedOid + Encode>(value: &T) -> Result<Extension, IdCertError> {
    Ok(Extension {
        extn_id: T::OID,
        critical: true,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

/// The to-be-signed part of a server's self-signed root ID-Cert.
pub fn server_root_tbs(
    server_name: &str,
    public_key: &VerifyingKey,
    serial: &[u8],
    not_before: SystemTime,
    lifetime: Duration,
) -> Result<TbsCertificate, IdCertError> {
    let name = server_dn(server_name)?;
    let utc = |t: SystemTime| {
        UtcTime::from_system_time(t)
            .map(Time::UtcTime)
            .map_err(IdCertError::Validity)
    };
    let extensions = vec![
        critical(&BasicConstraints {
            ca: true,
            path_len_constraint: Some(0),
        })?,
        critical(&KeyUsage(KeyUsages::KeyCertSign.into()))?,
    ];
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(serial)?,
        signature: ed25519(),
        issuer: name.clone(),
        validity: Validity {
            not_before: utc(not_before)?,
            not_after: utc(not_before + lifetime)?,
        },
        subject: name,
        subject_public_key_info: SubjectPublicKeyInfoOwned {
            algorithm: ed25519(),
            subject_public_key: BitString::from_bytes(public_key.as_bytes())?,
        },
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// Issues the server's self-signed root ID-Cert with `key`, valid from `not_before` for
/// `lifetime`. Answers the certificate as PEM.
pub fn issue_server_root(
    key: &ServerKey,
    server_name: &str,
    serial: &[u8],
    not_before: SystemTime,
    lifetime: Duration,
) -> Result<String, IdCertError> {
    let tbs = server_root_tbs(
        server_name,
        &key.verifying_key(),
        serial,
        not_before,
        lifetime,
    )?;
    let signature = key.sign(&tbs.to_der()?);
    let certificate = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ed25519(),
        signature: BitString::from_bytes(&signature.to_bytes())?,
    };
    Ok(certificate.to_pem(x509_cert::der::pem::LineEnding::LF)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_most_significant_label_first_without_port() {
        let name = server_dn("chat.example.org:8448").expect("dn");
        assert_eq!(name.to_string(), "DC=chat,DC=example,DC=org");
        assert_eq!(name.0.len(), 3);
        assert!(matches!(server_dn(":8448"), Err(IdCertError::EmptyName)));
    }

    #[test]
    fn serials_are_positive_and_minimal() {
        for _ in 0..1000 {
            let serial = random_serial();
            assert!((1..=0x7f).contains(&serial[0]));
            SerialNumber::<x509_cert::certificate::Rfc5280>::new(&serial).expect("valid serial");
        }
    }
}
