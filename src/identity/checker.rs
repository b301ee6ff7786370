//! The one certificate checker (DESIGN §4.2–§4.4): what an ID-Cert, a home server's root and
//! a cache entry must be before anything trusts them. Pure: no I/O, time is a parameter.
//!
//! - [`check_root`]: a home server's self-signed root ID-Cert (`cA`, `pathLen 0`,
//!   `keyCertSign`, its DCs are the server's host, valid at the time asked);
//! - [`check_actor`]: an actor ID-Cert under that root: signed by the root's key, issued by
//!   the root's name, the actor profile (DCs, `UID` = a fid of that server, `CN` = its local
//!   name, `uniqueIdentifier` = a session id; `basicConstraints` not a CA; `keyUsage`
//!   `digitalSignature` or `contentCommitment`), valid at the time asked;
//! - [`cache_message`] and [`check_cache_window`]: the cache window a server signs over a
//!   certificate it serves (the string of the polyproto crate's `CacheableIdCert`), and
//!   whether a window is signed by the root's key, still open, and not an invalidation.
//!
//! Session sign-in, the extern certificate update and signed-message checks (client API and
//! inbox) all reach certificates through [`super::foreign`] or [`super::actor_certs`], which
//! call these functions; nothing else parses a certificate.

use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use x509_cert::der::asn1::{Ia5StringRef, PrintableStringRef, Utf8StringRef};
use x509_cert::der::{Decode, DecodePem, Encode, Tag, Tagged};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::name::Name;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::{Certificate, Version};

use super::idcert::{
    fingerprint, host_of, serial_decimal, ActorUsage, COMMON_NAME, DOMAIN_COMPONENT, ED25519, UID,
    UNIQUE_IDENTIFIER,
};
use crate::core::ids;

/// Why a certificate is not trusted. The sentence is for the client (`SY_BAD_CERT`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CertError(pub String);

fn bad(message: impl Into<String>) -> CertError {
    CertError(message.into())
}

/// A home server's root ID-Cert, checked.
#[derive(Clone, Debug)]
pub struct RootCert {
    pub key: VerifyingKey,
    /// The root's name (its DCs), which issues its actors' certificates.
    pub name: Name,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// An actor ID-Cert, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActorCert {
    pub fid: String,
    pub session_id: String,
    /// Decimal.
    pub serial: String,
    pub key: VerifyingKey,
    /// `sha256:<hex of the SubjectPublicKeyInfo DER>`.
    pub fingerprint: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub usage: ActorUsage,
    pub pem: String,
}

impl ActorCert {
    /// Whether the certificate's validity contains `at` (unix seconds, both ends included).
    pub fn valid_at(&self, at: i64) -> bool {
        self.not_before <= at && at <= self.not_after
    }
}

/// The Ed25519 key of a SubjectPublicKeyInfo (algorithm without parameters).
pub fn ed25519_key(spki: &SubjectPublicKeyInfoOwned) -> Option<VerifyingKey> {
    if spki.algorithm.oid != ED25519 || spki.algorithm.parameters.is_some() {
        return None;
    }
    let bytes: [u8; 32] = spki.subject_public_key.as_bytes()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()
}

/// The string value of a name attribute (UTF8String, IA5String or PrintableString).
pub fn attribute_text(value: &x509_cert::der::Any) -> Option<String> {
    match value.tag() {
        Tag::Utf8String => value
            .decode_as::<Utf8StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::Ia5String => value
            .decode_as::<Ia5StringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_owned()),
        Tag::PrintableString => value
            .decode_as::<PrintableStringRef<'_>>()
            .ok()
            .map(|s| s.as_str().to_owned()),
        _ => None,
    }
}

/// A name as (OID, text) pairs in order; `None` when an RDN holds more or less than one
/// attribute or a value is not a string.
pub fn name_attributes(
    name: &Name,
) -> Option<Vec<(x509_cert::der::oid::ObjectIdentifier, String)>> {
    name.0
        .iter()
        .map(|rdn| match rdn.0.as_slice() {
            [attribute] => Some((attribute.oid, attribute_text(&attribute.value)?)),
            _ => None,
        })
        .collect()
}

/// The host the DCs of a name spell (most significant label first in the sequence), and the
/// attributes after them.
fn split_domain(
    attributes: &[(x509_cert::der::oid::ObjectIdentifier, String)],
) -> (String, &[(x509_cert::der::oid::ObjectIdentifier, String)]) {
    let dcs = attributes
        .iter()
        .take_while(|(oid, _)| *oid == DOMAIN_COMPONENT)
        .count();
    let host = attributes[..dcs]
        .iter()
        .rev()
        .map(|(_, label)| label.as_str())
        .collect::<Vec<_>>()
        .join(".");
    (host, &attributes[dcs..])
}

/// The actor a subject names: `(fid, session id)`, if it is exactly [DCs of the fid's host,
/// UID = fid, CN = its local name, uniqueIdentifier = a session id of 1..32 visible ASCII].
pub fn actor_subject(name: &Name) -> Result<(String, String), String> {
    let attributes =
        name_attributes(name).ok_or("each RDN must hold one string attribute".to_string())?;
    let (host, rest) = split_domain(&attributes);
    let [(uid, fid), (cn, local), (unique, session)] = rest else {
        return Err("the subject must be DCs, then UID, CN and uniqueIdentifier".into());
    };
    if (*uid, *cn, *unique) != (UID, COMMON_NAME, UNIQUE_IDENTIFIER) {
        return Err("the subject must be DCs, then UID, CN and uniqueIdentifier".into());
    }
    let (fid_local, fid_server) =
        ids::parse_fid(fid).ok_or(format!("UID {fid:?} is not a federation id"))?;
    if host_of(fid_server) != host {
        return Err(format!("the DCs name {host:?}, not the host of {fid:?}"));
    }
    if fid_local != local {
        return Err(format!("CN {local:?} is not the local name of {fid:?}"));
    }
    if !(1..=32).contains(&session.len()) || !session.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the session id must be 1..32 visible ASCII characters".into());
    }
    Ok((fid.clone(), session.clone()))
}

/// The DER of a certificate's two extensions, checked to be exactly `basicConstraints` then
/// `keyUsage`, both critical; answers them decoded.
fn capabilities(cert: &Certificate) -> Result<(BasicConstraints, KeyUsage), CertError> {
    use x509_cert::der::oid::AssociatedOid;
    let extensions = cert.tbs_certificate.extensions.as_deref().unwrap_or(&[]);
    let [constraints, usage] = extensions else {
        return Err(bad(
            "the certificate must carry exactly basicConstraints and keyUsage",
        ));
    };
    if constraints.extn_id != BasicConstraints::OID
        || usage.extn_id != KeyUsage::OID
        || !constraints.critical
        || !usage.critical
    {
        return Err(bad(
            "the extensions must be basicConstraints then keyUsage, both critical",
        ));
    }
    let constraints = BasicConstraints::from_der(constraints.extn_value.as_bytes())
        .map_err(|e| bad(format!("basicConstraints does not decode: {e}")))?;
    let usage = KeyUsage::from_der(usage.extn_value.as_bytes())
        .map_err(|e| bad(format!("keyUsage does not decode: {e}")))?;
    Ok((constraints, usage))
}

fn parse(pem: &str) -> Result<Certificate, CertError> {
    let cert = Certificate::from_pem(pem.trim())
        .map_err(|e| bad(format!("not a PEM X.509 certificate: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let ed25519 = |alg: &x509_cert::spki::AlgorithmIdentifierOwned| {
        alg.oid == ED25519 && alg.parameters.is_none()
    };
    if tbs.version != Version::V3 || !ed25519(&tbs.signature) || !ed25519(&cert.signature_algorithm)
    {
        return Err(bad("the certificate must be X.509 v3 signed with Ed25519"));
    }
    Ok(cert)
}

fn signature_of(cert: &Certificate) -> Result<Signature, CertError> {
    let bytes: [u8; 64] = cert
        .signature
        .as_bytes()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("the signature is not 64 bytes"))?;
    Ok(Signature::from_bytes(&bytes))
}

fn verify_signed_by(cert: &Certificate, key: &VerifyingKey) -> Result<(), CertError> {
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| bad(format!("the certificate does not re-encode: {e}")))?;
    key.verify(&tbs, &signature_of(cert)?)
        .map_err(|_| bad("the certificate's signature does not verify with the root's key"))
}

fn validity(cert: &Certificate) -> (i64, i64) {
    let secs = |t: x509_cert::time::Time| {
        i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    let validity = &cert.tbs_certificate.validity;
    (secs(validity.not_before), secs(validity.not_after))
}

/// Checks `pem` as the root ID-Cert of `server_name`, valid at `at` (unix seconds), or
/// starting at most `skew` seconds after it (its server's clock may run ahead of ours).
pub fn check_root(pem: &str, server_name: &str, at: i64, skew: i64) -> Result<RootCert, CertError> {
    let cert = parse(pem)?;
    let tbs = &cert.tbs_certificate;
    if tbs.issuer != tbs.subject {
        return Err(bad("a root ID-Cert is self-issued"));
    }
    let attributes = name_attributes(&tbs.subject)
        .ok_or_else(|| bad("each RDN must hold one string attribute"))?;
    let (host, rest) = split_domain(&attributes);
    if !rest.is_empty() || host != host_of(server_name) {
        return Err(bad(format!(
            "the root's name must be the DCs of {server_name}"
        )));
    }
    let (constraints, usage) = capabilities(&cert)?;
    if !constraints.ca
        || constraints.path_len_constraint != Some(0)
        || !usage.0.contains(KeyUsages::KeyCertSign)
    {
        return Err(bad("a root ID-Cert is a CA with pathLen 0 and keyCertSign"));
    }
    let key = ed25519_key(&tbs.subject_public_key_info)
        .ok_or_else(|| bad("the root's key is not Ed25519"))?;
    verify_signed_by(&cert, &key)?;
    let (not_before, not_after) = validity(&cert);
    if !(not_before - skew <= at && at <= not_after) {
        return Err(bad(format!(
            "the root ID-Cert of {server_name} is not valid at {at}"
        )));
    }
    Ok(RootCert {
        key,
        name: tbs.subject.clone(),
        not_before,
        not_after,
    })
}

/// Checks `pem` as an actor ID-Cert issued by `root`, valid at `at` (unix seconds).
pub fn check_actor(pem: &str, root: &RootCert, at: i64) -> Result<ActorCert, CertError> {
    let cert = parse(pem)?;
    let tbs = &cert.tbs_certificate;
    if tbs.issuer != root.name {
        return Err(bad(
            "the certificate is not issued by the actor's home server",
        ));
    }
    verify_signed_by(&cert, &root.key)?;
    let (fid, session_id) = actor_subject(&tbs.subject).map_err(CertError)?;
    let (constraints, usage) = capabilities(&cert)?;
    let signing = usage.0.contains(KeyUsages::DigitalSignature);
    let committing = usage.0.contains(KeyUsages::NonRepudiation);
    if constraints.ca
        || constraints.path_len_constraint.is_some()
        || usage.0.contains(KeyUsages::KeyCertSign)
        || signing == committing
    {
        return Err(bad(
            "an actor certificate is no CA and has digitalSignature or contentCommitment",
        ));
    }
    let key = ed25519_key(&tbs.subject_public_key_info)
        .ok_or_else(|| bad("the actor's key is not Ed25519"))?;
    let (not_before, not_after) = validity(&cert);
    if !(not_before <= at && at <= not_after) {
        return Err(bad(format!(
            "the certificate is valid from {not_before} to {not_after}, not at {at}"
        )));
    }
    Ok(ActorCert {
        fid,
        session_id,
        serial: serial_decimal(tbs.serial_number.as_bytes()),
        fingerprint: fingerprint(&key).map_err(|e| bad(e.to_string()))?,
        key,
        not_before,
        not_after,
        usage: if signing {
            ActorUsage::DigitalSignature
        } else {
            ActorUsage::ContentCommitment
        },
        pem: pem.to_owned(),
    })
}

/// The string a cache signature covers (the crate's `CacheableIdCert` rule):
/// `"<serial> <not valid before> <not valid after>"`, then `" <invalidated at>"` when the
/// certificate is invalidated.
pub fn cache_message(
    serial: &str,
    not_before: i64,
    not_after: i64,
    invalidated_at: Option<i64>,
) -> String {
    match invalidated_at {
        Some(at) => format!("{serial} {not_before} {not_after} {at}"),
        None => format!("{serial} {not_before} {not_after}"),
    }
}

/// A cache window as a server answered it for one of its actors' certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheWindow {
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
    pub invalidated_at: Option<i64>,
    /// Hex of the Ed25519 signature over [`cache_message`].
    pub signature: String,
}

/// Checks that `window` is signed by `root_key`. Whether it is still open, and whether the
/// certificate is invalidated, is the caller's question (see [`CacheWindow::open_at`]).
pub fn check_cache_window(window: &CacheWindow, root_key: &VerifyingKey) -> Result<(), CertError> {
    let signature: [u8; 64] = hex::decode(&window.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| bad("cache_signature must be hex of 64 bytes"))?;
    let message = cache_message(
        &window.serial,
        window.not_before,
        window.not_after,
        window.invalidated_at,
    );
    root_key
        .verify(message.as_bytes(), &Signature::from_bytes(&signature))
        .map_err(|_| bad("the cache signature does not verify with the home server's key"))
}

impl CacheWindow {
    /// Whether a foreign server may still use this entry at `at` (unix seconds).
    pub fn open_at(&self, at: i64) -> bool {
        self.not_before <= at && at < self.not_after
    }
}

/// The fid an actor certificate names, unchecked (to know whose home to ask).
pub fn subject_fid(pem: &str) -> Option<String> {
    let cert = Certificate::from_pem(pem.trim()).ok()?;
    actor_subject(&cert.tbs_certificate.subject)
        .ok()
        .map(|(fid, _)| fid)
}

/// The notBefore of a PEM certificate (unix seconds), unchecked: to ask for the root of its
/// issue time.
pub fn not_before(pem: &str) -> Option<i64> {
    let cert = Certificate::from_pem(pem.trim()).ok()?;
    Some(validity(&cert).0)
}

/// The subject key of a certificate we issued ourselves (read back from the log, so not
/// checked again).
pub fn subject_key(pem: &str) -> Option<VerifyingKey> {
    let cert = Certificate::from_pem(pem.trim()).ok()?;
    ed25519_key(&cert.tbs_certificate.subject_public_key_info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::federation::signing::ServerKey;
    use crate::identity::idcert::{
        actor_dn, actor_tbs, issue_server_root, random_serial, sign_certificate,
    };
    use std::time::{Duration, UNIX_EPOCH};

    const NOW: i64 = 1_800_000_000;

    fn root_pem(key: &ServerKey, server: &str) -> String {
        issue_server_root(
            key,
            server,
            &random_serial(),
            UNIX_EPOCH + Duration::from_secs(NOW as u64 - 60),
            Duration::from_secs(86_400),
        )
        .expect("root")
    }

    fn actor(
        key: &ServerKey,
        server: &str,
        fid: &str,
        usage: ActorUsage,
    ) -> (String, VerifyingKey) {
        let actor_key = ServerKey::generate().verifying_key();
        let tbs = actor_tbs(
            server,
            actor_dn(fid, "s1").expect("dn"),
            &actor_key,
            42,
            NOW,
            NOW + 3600,
            usage,
        )
        .expect("tbs");
        (sign_certificate(key, tbs).expect("sign"), actor_key)
    }

    #[test]
    fn an_actor_certificate_checks_against_its_root() {
        let home = ServerKey::generate();
        let root =
            check_root(&root_pem(&home, "a.example:8448"), "a.example:8448", NOW, 0).expect("root");
        assert_eq!(root.key, home.verifying_key());
        let (pem, key) = actor(
            &home,
            "a.example:8448",
            "alice@a.example:8448",
            ActorUsage::DigitalSignature,
        );
        let cert = check_actor(&pem, &root, NOW + 10).expect("actor");
        assert_eq!(cert.fid, "alice@a.example:8448");
        assert_eq!(cert.session_id, "s1");
        assert_eq!(cert.serial, "42");
        assert_eq!(cert.key, key);
        assert!(cert.fingerprint.starts_with("sha256:"));
        assert!(check_actor(&pem, &root, NOW + 7200).is_err(), "expired");
        assert!(check_actor(&pem, &root, NOW - 1).is_err(), "not yet valid");

        // Another server's root with the same name does not verify it.
        let other = check_root(
            &root_pem(&ServerKey::generate(), "a.example"),
            "a.example",
            NOW,
            0,
        )
        .expect("other");
        // A root that starts a little after now counts within the skew, not beyond it.
        let ahead = root_pem(&home, "a.example");
        assert!(check_root(&ahead, "a.example", NOW - 100, 0).is_err());
        assert!(check_root(&ahead, "a.example", NOW - 100, 300).is_ok());
        assert!(check_actor(&pem, &other, NOW + 10).is_err());
        // A root is refused for another server's name, and an actor cert is no root.
        assert!(check_root(&root_pem(&home, "a.example"), "b.example", NOW, 0).is_err());
        assert!(check_root(&pem, "a.example", NOW + 10, 0).is_err());
        // The content commitment usage is an actor's too.
        let (committing, _) = actor(
            &home,
            "a.example",
            "bob@a.example",
            ActorUsage::ContentCommitment,
        );
        assert_eq!(
            check_actor(&committing, &root, NOW + 10)
                .expect("actor")
                .usage,
            ActorUsage::ContentCommitment
        );
    }

    #[test]
    fn cache_windows_are_signed_over_the_crate_string() {
        assert_eq!(cache_message("7", 1, 2, None), "7 1 2");
        assert_eq!(cache_message("7", 1, 2, Some(3)), "7 1 2 3");
        let home = ServerKey::generate();
        let mut window = CacheWindow {
            serial: "7".into(),
            not_before: 1,
            not_after: 2,
            invalidated_at: None,
            signature: hex::encode(home.sign(b"7 1 2").to_bytes()),
        };
        check_cache_window(&window, &home.verifying_key()).expect("valid");
        assert!(window.open_at(1) && !window.open_at(2));
        window.invalidated_at = Some(3);
        assert!(check_cache_window(&window, &home.verifying_key()).is_err());
    }
}
