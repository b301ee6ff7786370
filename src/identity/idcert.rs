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
//! Actor certificates (DESIGN §4.2) follow the same profile, with the subject `DC…, UID =
//! fid (UTF8String), CN = local name (UTF8String), uniqueIdentifier = session id
//! (IA5String)`, the issuer our server name, `basicConstraints` an empty SEQUENCE (cA false)
//! and `keyUsage` either `digitalSignature` or `contentCommitment`.
//!
//! This module builds the to-be-signed structures; the signature comes from
//! [`ServerKey::sign`](crate::federation::signing::ServerKey::sign), so private keys stay in
//! `federation::signing`. What a certificate *means* is checked in
//! [`checker`](super::checker).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::VerifyingKey;
use rand::Rng;
use x509_cert::attr::AttributeTypeAndValue;
use x509_cert::der::asn1::{
    BitString, Ia5StringRef, OctetString, SetOfVec, UtcTime, Utf8StringRef,
};
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
/// uid (RFC 4519): an actor's federation id.
pub const UID: ObjectIdentifier = ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.1");
/// commonName (X.520): an actor's local name.
pub const COMMON_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.4.3");
/// uniqueIdentifier (RFC 4519): an actor's session id.
pub const UNIQUE_IDENTIFIER: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("0.9.2342.19200300.100.1.44");

/// What an actor certificate lets its key do (exactly one of the two, DESIGN §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ActorUsage {
    DigitalSignature,
    ContentCommitment,
}

impl ActorUsage {
    fn key_usage(self) -> KeyUsage {
        KeyUsage(match self {
            ActorUsage::DigitalSignature => KeyUsages::DigitalSignature.into(),
            ActorUsage::ContentCommitment => KeyUsages::NonRepudiation.into(),
        })
    }
}

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

/// The host part of a server name (no port, no IPv6 brackets).
pub fn host_of(server_name: &str) -> &str {
    match server_name.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => server_name
            .rsplit_once(':')
            .map_or(server_name, |(host, _)| host),
    }
}

fn rdn(oid: ObjectIdentifier, value: Any) -> Result<RelativeDistinguishedName, IdCertError> {
    Ok(RelativeDistinguishedName(SetOfVec::try_from(vec![
        AttributeTypeAndValue { oid, value },
    ])?))
}

/// The `dc` RDNs of a server name: one per label of the host part, most significant first.
fn domain_rdns(server_name: &str) -> Result<Vec<RelativeDistinguishedName>, IdCertError> {
    let mut rdns = Vec::new();
    for label in host_of(server_name)
        .split('.')
        .rev()
        .filter(|l| !l.is_empty())
    {
        rdns.push(rdn(DOMAIN_COMPONENT, Any::from(Ia5StringRef::new(label)?))?);
    }
    if rdns.is_empty() {
        return Err(IdCertError::EmptyName);
    }
    Ok(rdns)
}

/// The name of a server: one `dc` RDN per label of the host part, most significant first.
pub fn server_dn(server_name: &str) -> Result<Name, IdCertError> {
    Ok(RdnSequence(domain_rdns(server_name)?))
}

/// The subject of an actor certificate: the DCs of its server, `UID` = fid, `CN` = local
/// name, `uniqueIdentifier` = session id, one attribute per RDN, in that order.
pub fn actor_dn(fid: &str, session_id: &str) -> Result<Name, IdCertError> {
    let (local, server) = fid.split_once('@').ok_or(IdCertError::EmptyName)?;
    let mut rdns = domain_rdns(server)?;
    rdns.push(rdn(UID, Any::encode_from(&Utf8StringRef::new(fid)?)?)?);
    rdns.push(rdn(
        COMMON_NAME,
        Any::encode_from(&Utf8StringRef::new(local)?)?,
    )?);
    rdns.push(rdn(
        UNIQUE_IDENTIFIER,
        Any::from(Ia5StringRef::new(session_id)?),
    )?);
    Ok(RdnSequence(rdns))
}

/// A random serial: 16 octets, positive, minimal (first octet 0x01..=0x7f).
pub fn random_serial() -> [u8; 16] {
    let mut serial: [u8; 16] = rand::thread_rng().gen();
    serial[0] = serial[0].clamp(1, 0x7f);
    serial
}

/// A random serial for an actor certificate: positive, 63 bits at most, so it fits a signed
/// 64-bit column (DESIGN §4.2).
pub fn random_actor_serial() -> i64 {
    rand::thread_rng().gen_range(1..=i64::MAX)
}

fn utc(unix_secs: i64) -> Result<Time, IdCertError> {
    let at = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_secs).unwrap_or(0));
    UtcTime::from_system_time(at)
        .map(Time::UtcTime)
        .map_err(IdCertError::Validity)
}

/// The to-be-signed part of an actor certificate issued by `server_name`.
pub fn actor_tbs(
    server_name: &str,
    subject: Name,
    public_key: &VerifyingKey,
    serial: i64,
    not_before: i64,
    not_after: i64,
    usage: ActorUsage,
) -> Result<TbsCertificate, IdCertError> {
    let extensions = vec![
        critical(&BasicConstraints {
            ca: false,
            path_len_constraint: None,
        })?,
        critical(&usage.key_usage())?,
    ];
    Ok(TbsCertificate {
        version: Version::V3,
        serial_number: SerialNumber::new(&serial.to_be_bytes())?,
        signature: ed25519(),
        issuer: server_dn(server_name)?,
        validity: Validity {
            not_before: utc(not_before)?,
            not_after: utc(not_after)?,
        },
        subject,
        subject_public_key_info: SubjectPublicKeyInfoOwned {
            algorithm: ed25519(),
            subject_public_key: BitString::from_bytes(public_key.as_bytes())?,
        },
        issuer_unique_id: None,
        subject_unique_id: None,
        extensions: Some(extensions),
    })
}

/// Signs `tbs` with `key` and answers the certificate as PEM.
pub fn sign_certificate(key: &ServerKey, tbs: TbsCertificate) -> Result<String, IdCertError> {
    let signature = key.sign(&tbs.to_der()?);
    let certificate = Certificate {
        tbs_certificate: tbs,
        signature_algorithm: ed25519(),
        signature: BitString::from_bytes(&signature.to_bytes())?,
    };
    Ok(certificate.to_pem(x509_cert::der::pem::LineEnding::LF)?)
}

/// `sha256:<hex>` of an Ed25519 key's SubjectPublicKeyInfo DER: the fingerprint the log and
/// the key registry name a key by (DESIGN §2.3).
pub fn fingerprint(public_key: &VerifyingKey) -> Result<String, IdCertError> {
    use sha2::{Digest, Sha256};
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: ed25519(),
        subject_public_key: BitString::from_bytes(public_key.as_bytes())?,
    };
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(spki.to_der()?))
    ))
}

/// A certificate serial's bytes (big-endian, positive) as a decimal number.
pub fn serial_decimal(bytes: &[u8]) -> String {
    let mut digits: Vec<u8> = Vec::new();
    let mut number: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    while !number.is_empty() {
        let mut remainder = 0u32;
        let mut quotient = Vec::with_capacity(number.len());
        for byte in &number {
            let value = remainder * 256 + u32::from(*byte);
            let q = (value / 10) as u8;
            remainder = value % 10;
            if !(quotient.is_empty() && q == 0) {
                quotient.push(q);
            }
        }
        digits.push(b'0' + remainder as u8);
        number = quotient;
    }
    if digits.is_empty() {
        return "0".into();
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
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
    sign_certificate(key, tbs)
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
    fn serials_print_as_decimal() {
        assert_eq!(serial_decimal(&[0x01]), "1");
        assert_eq!(serial_decimal(&[0x00, 0x01, 0x00]), "256");
        assert_eq!(
            serial_decimal(&i64::MAX.to_be_bytes()),
            i64::MAX.to_string()
        );
        assert_eq!(
            serial_decimal(&u128::MAX.to_be_bytes()),
            u128::MAX.to_string()
        );
        assert_eq!(
            serial_decimal(&[0xff; 20]),
            "1461501637330902918203684832716283019655932542975"
        );
    }

    #[test]
    fn actor_names_follow_the_profile() {
        let name = actor_dn("alice@chat.example.org:8448", "s1").expect("dn");
        assert_eq!(
            name.to_string(),
            // RFC 4514 prints the last RDN first.
            "UNIQUEIDENTIFIER=s1,CN=alice,UID=alice@chat.example.org:8448,DC=chat,DC=example,DC=org"
        );
        assert_eq!(name.0.len(), 6);
        for serial in [1, 255, 256, i64::MAX, random_actor_serial()] {
            assert!(serial > 0);
            SerialNumber::<x509_cert::certificate::Rfc5280>::new(&serial.to_be_bytes())
                .expect("valid serial");
        }
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
