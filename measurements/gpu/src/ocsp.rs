//! OCSP responses (RFC 6960) for stapled / cached revocation checking (spec §1.6): the host or
//! a proxy supplies DER `OCSPResponse`s; the verifier checks the responder, the ECDSA-SHA384
//! signature over `tbsResponseData`, the CertID (SHA-1, SHA-256 or SHA-384), the
//! thisUpdate/nextUpdate window at the given time, optionally the nonce, and the status.
//! Without a nonce requirement this is the "stapled" mode NVIDIA's
//! `allow_trust_outpost_ocsp.rego` allows (only the nonce match is relaxed).

use der::Decode as _;
use der::Encode as _;
use der::asn1::{GeneralizedTime, ObjectIdentifier};
use p384::ecdsa::Signature;
use p384::ecdsa::signature::Verifier as _;
use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384};
use thiserror::Error;
use x509_cert::ext::pkix::ExtendedKeyUsage;

use crate::UnixTime;
use crate::certs::ParsedCert;
use crate::der_util::children;

const BASIC_RESPONSE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.1");
const NONCE_EXTENSION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.48.1.2");
const OCSP_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9");
const ECDSA_WITH_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.3");
const SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
const SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
const SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
/// CRLReason certificateHold.
pub const CERTIFICATE_HOLD: u8 = 6;
/// Lifetime assumed when a response has no nextUpdate (as NVAT does).
pub const DEFAULT_LIFETIME_SECS: u64 = 3600;

/// Why a response does not establish "good".
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OcspError {
    /// The DER does not have the OCSPResponse / BasicOCSPResponse shape.
    #[error("OCSP response is malformed ({what})")]
    ParseResponse { what: &'static str },
    /// responseStatus is not successful (0).
    #[error("OCSP responseStatus is {status}")]
    CheckResponseStatus { status: u8 },
    /// No SingleResponse for this certificate (CertID mismatch).
    #[error("no OCSP response for this certificate")]
    FindResponse,
    /// The responder certificate is neither a chain certificate nor delegated by one.
    #[error("OCSP responder is not authorized by the certificate chain")]
    CheckResponder,
    /// The response signature does not verify.
    #[error("OCSP response signature does not verify")]
    VerifySignature,
    /// now is before thisUpdate or after nextUpdate.
    #[error("OCSP response valid {this_update}..{next_update}, not at {now}")]
    CheckWindow {
        this_update: u64,
        next_update: u64,
        now: u64,
    },
    /// The nonce extension is missing or differs.
    #[error("OCSP nonce does not match the request")]
    CheckNonce,
    /// The certificate is revoked.
    #[error("certificate revoked (reason {reason:?})")]
    CheckRevoked { reason: Option<u8> },
    /// The responder does not know the certificate.
    #[error("certificate status unknown to the responder")]
    CheckUnknown,
}

/// A good (or tolerated on-hold) status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcspGood {
    /// certStatus good.
    Good,
    /// revoked with reason certificateHold, tolerated by the caller's explicit choice.
    OnHold,
}

fn generalized_time(tlv: &[u8], what: &'static str) -> Result<u64, OcspError> {
    GeneralizedTime::from_der(tlv)
        .map(|t| t.to_unix_duration().as_secs())
        .map_err(|_| OcspError::ParseResponse { what })
}

fn oid(tlv: &[u8], what: &'static str) -> Result<ObjectIdentifier, OcspError> {
    ObjectIdentifier::from_der(tlv).map_err(|_| OcspError::ParseResponse { what })
}

fn malformed(what: &'static str) -> OcspError {
    OcspError::ParseResponse { what }
}

/// Checks one DER OCSPResponse for `subject` (issued by `issuer`). `chain_above` are the
/// certificates above `subject` up to the pinned root (already verified by the caller); the
/// responder must be one of them or carry id-kp-OCSPSigning and be signed by one of them.
/// With `nonce`, the response must echo it; `allow_hold` tolerates certificateHold.
pub fn check_response(
    response: &[u8],
    subject: &ParsedCert,
    issuer: &ParsedCert,
    chain_above: &[ParsedCert],
    now: UnixTime,
    nonce: Option<&[u8]>,
    allow_hold: bool,
) -> Result<OcspGood, OcspError> {
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT … }
    let top = children(response).ok_or(malformed("outer"))?;
    let [(0x30, outer, _)] = top.as_slice() else {
        return Err(malformed("outer"));
    };
    let parts = children(outer).ok_or(malformed("OCSPResponse"))?;
    let status = match parts.first() {
        Some((0x0A, [status], _)) => *status,
        _ => return Err(malformed("responseStatus")),
    };
    if status != 0 {
        return Err(OcspError::CheckResponseStatus { status });
    }
    let Some((0xA0, explicit, _)) = parts.get(1) else {
        return Err(malformed("responseBytes"));
    };
    let bytes = children(explicit).ok_or(malformed("responseBytes"))?;
    let [(0x30, response_bytes, _)] = bytes.as_slice() else {
        return Err(malformed("responseBytes"));
    };
    let rb = children(response_bytes).ok_or(malformed("responseBytes"))?;
    let [(0x06, _, type_tlv), (0x04, basic_der, _)] = rb.as_slice() else {
        return Err(malformed("responseBytes"));
    };
    if oid(type_tlv, "responseType")? != BASIC_RESPONSE {
        return Err(malformed("responseType is not id-pkix-ocsp-basic"));
    }
    // BasicOCSPResponse ::= SEQUENCE { tbsResponseData, signatureAlgorithm, signature, certs [0] }
    let basic_top = children(basic_der).ok_or(malformed("BasicOCSPResponse"))?;
    let [(0x30, basic, _)] = basic_top.as_slice() else {
        return Err(malformed("BasicOCSPResponse"));
    };
    let basic = children(basic).ok_or(malformed("BasicOCSPResponse"))?;
    let (tbs, tbs_tlv) = match basic.first() {
        Some((0x30, tbs, tlv)) => (*tbs, *tlv),
        _ => return Err(malformed("tbsResponseData")),
    };
    let algorithm = match basic.get(1) {
        Some((0x30, alg, _)) => children(alg).ok_or(malformed("signatureAlgorithm"))?,
        _ => return Err(malformed("signatureAlgorithm")),
    };
    match algorithm.first() {
        Some((0x06, _, tlv)) if oid(tlv, "signatureAlgorithm")? == ECDSA_WITH_SHA384 => {}
        _ => return Err(OcspError::VerifySignature),
    }
    let signature = match basic.get(2) {
        Some((0x03, [0, sig @ ..], _)) => {
            Signature::from_der(sig).map_err(|_| OcspError::VerifySignature)?
        }
        _ => return Err(malformed("signature")),
    };
    let mut embedded = Vec::new();
    if let Some((0xA0, certs, _)) = basic.get(3) {
        let seq = children(certs).ok_or(malformed("certs"))?;
        let [(0x30, list, _)] = seq.as_slice() else {
            return Err(malformed("certs"));
        };
        for (index, (_, _, tlv)) in children(list)
            .ok_or(malformed("certs"))?
            .into_iter()
            .enumerate()
        {
            embedded
                .push(ParsedCert::from_der(tlv.to_vec(), index).map_err(|_| malformed("certs"))?);
        }
    }

    // The responder: a chain certificate itself, or a delegate signed by one (with EKU).
    let responder = match embedded.first() {
        None => issuer.clone(),
        Some(cert) if chain_above.iter().any(|c| c.der == cert.der) => cert.clone(),
        Some(cert) => {
            let tbs_cert = cert.cert.tbs_certificate();
            let delegated = chain_above.iter().any(|authority| {
                tbs_cert.issuer().to_der().ok()
                    == authority.cert.tbs_certificate().subject().to_der().ok()
                    && crate::certs::signed_by(cert, authority)
            });
            let eku_ok = matches!(
                tbs_cert.get_extension::<ExtendedKeyUsage>(),
                Ok(Some((_, eku))) if eku.0.contains(&OCSP_SIGNING)
            );
            let valid = cert.not_before() <= now.0 && now.0 <= cert.not_after();
            if !(delegated && eku_ok && valid) {
                return Err(OcspError::CheckResponder);
            }
            cert.clone()
        }
    };
    let key = responder
        .p384_key(0)
        .map_err(|_| OcspError::CheckResponder)?;
    key.verify(tbs_tlv, &signature)
        .map_err(|_| OcspError::VerifySignature)?;

    // ResponseData ::= SEQUENCE { [0] version?, responderID, producedAt, responses, [1] ext? }
    let fields = children(tbs).ok_or(malformed("ResponseData"))?;
    let mut rest = fields.as_slice();
    if let Some((0xA0, _, _)) = rest.first() {
        rest = &rest[1..];
    }
    let [
        (0xA1 | 0xA2, _, _),
        (0x18, _, _),
        (0x30, responses, _),
        extensions @ ..,
    ] = rest
    else {
        return Err(malformed("ResponseData"));
    };
    if let Some(expected) = nonce {
        let echoed = extensions
            .first()
            .filter(|(tag, _, _)| *tag == 0xA1)
            .and_then(|(_, ext, _)| find_extension(ext, NONCE_EXTENSION));
        let matches = echoed.is_some_and(|value| {
            // RFC 8954: the value is an OCTET STRING; accept a raw echo as well.
            value == expected
                || children(value).is_some_and(
                    |c| matches!(c.as_slice(), [(0x04, inner, _)] if *inner == expected),
                )
        });
        if !matches {
            return Err(OcspError::CheckNonce);
        }
    }

    for (_, single, _) in children(responses).ok_or(malformed("responses"))? {
        let parts = children(single).ok_or(malformed("SingleResponse"))?;
        let [
            (0x30, cert_id, _),
            (status_tag, status_body, _),
            (0x18, _, this_tlv),
            more @ ..,
        ] = parts.as_slice()
        else {
            return Err(malformed("SingleResponse"));
        };
        if !cert_id_matches(cert_id, subject, issuer)? {
            continue;
        }
        let this_update = generalized_time(this_tlv, "thisUpdate")?;
        let next_update = match more.first() {
            Some((0xA0, explicit, _)) => generalized_time(explicit, "nextUpdate")?,
            _ => this_update.saturating_add(DEFAULT_LIFETIME_SECS),
        };
        if now.0 < this_update || now.0 > next_update {
            return Err(OcspError::CheckWindow {
                this_update,
                next_update,
                now: now.0,
            });
        }
        return match status_tag {
            0x80 => Ok(OcspGood::Good),
            0xA1 => {
                let info = children(status_body).ok_or(malformed("RevokedInfo"))?;
                let reason = info.get(1).and_then(|(tag, explicit, _)| {
                    (*tag == 0xA0)
                        .then(|| children(explicit))
                        .flatten()
                        .and_then(|c| match c.as_slice() {
                            [(0x0A, [r], _)] => Some(*r),
                            _ => None,
                        })
                });
                if allow_hold && reason == Some(CERTIFICATE_HOLD) {
                    Ok(OcspGood::OnHold)
                } else {
                    Err(OcspError::CheckRevoked { reason })
                }
            }
            _ => Err(OcspError::CheckUnknown),
        };
    }
    Err(OcspError::FindResponse)
}

fn find_extension(explicit: &[u8], wanted: ObjectIdentifier) -> Option<&[u8]> {
    let seq = children(explicit)?;
    let [(0x30, list, _)] = seq.as_slice() else {
        return None;
    };
    children(list)?.into_iter().find_map(|(_, ext, _)| {
        let parts = children(ext)?;
        let (0x06, _, id) = parts.first()? else {
            return None;
        };
        if ObjectIdentifier::from_der(id).ok()? != wanted {
            return None;
        }
        match parts.last()? {
            (0x04, value, _) => Some(*value),
            _ => None,
        }
    })
}

fn cert_id_matches(
    cert_id: &[u8],
    subject: &ParsedCert,
    issuer: &ParsedCert,
) -> Result<bool, OcspError> {
    let parts = children(cert_id).ok_or(malformed("CertID"))?;
    let [
        (0x30, alg, _),
        (0x04, name_hash, _),
        (0x04, key_hash, _),
        (0x02, serial, _),
    ] = parts.as_slice()
    else {
        return Err(malformed("CertID"));
    };
    let alg = children(alg).ok_or(malformed("CertID hashAlgorithm"))?;
    let Some((0x06, _, alg_oid)) = alg.first() else {
        return Err(malformed("CertID hashAlgorithm"));
    };
    let name = issuer
        .cert
        .tbs_certificate()
        .subject()
        .to_der()
        .map_err(|_| malformed("issuer name"))?;
    let key = issuer
        .cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .raw_bytes()
        .to_vec();
    let hash = |data: &[u8]| -> Option<Vec<u8>> {
        match oid(alg_oid, "CertID hashAlgorithm").ok()? {
            SHA1 => Some(Sha1::digest(data).to_vec()),
            SHA256 => Some(Sha256::digest(data).to_vec()),
            SHA384 => Some(Sha384::digest(data).to_vec()),
            _ => None,
        }
    };
    let (Some(expected_name), Some(expected_key)) = (hash(&name), hash(&key)) else {
        return Ok(false);
    };
    // INTEGER content may carry a leading zero the certificate's serial bytes also carry.
    Ok(*name_hash == expected_name.as_slice()
        && *key_hash == expected_key.as_slice()
        && *serial == subject.serial().as_slice())
}

#[cfg(test)]
mod tests {
    //! A synthetic P-384 PKI built with a tiny DER writer: root → CA (the certificate whose
    //! status is checked), responses signed by the root or by a delegated responder.

    use der::Encode as _;
    use p384::ecdsa::signature::Signer as _;
    use p384::ecdsa::{Signature, SigningKey};

    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(u8::try_from(len).unwrap());
        } else if len < 0x100 {
            out.extend([0x81, u8::try_from(len).unwrap()]);
        } else {
            out.extend([
                0x82,
                u8::try_from(len >> 8).unwrap(),
                u8::try_from(len & 0xff).unwrap(),
            ]);
        }
        out.extend_from_slice(content);
        out
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        tlv(0x30, &parts.concat())
    }

    fn oid_der(text: &str) -> Vec<u8> {
        ObjectIdentifier::new(text).unwrap().to_der().unwrap()
    }

    fn name(cn: &str) -> Vec<u8> {
        seq(&[tlv(
            0x31,
            &seq(&[oid_der("2.5.4.3"), tlv(0x0C, cn.as_bytes())]),
        )])
    }

    fn time(text: &str) -> Vec<u8> {
        tlv(0x18, text.as_bytes())
    }

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_slice(&[seed; 48]).unwrap()
    }

    fn sign(signer: &SigningKey, tbs: &[u8]) -> Vec<u8> {
        let signature: Signature = signer.sign(tbs);
        let mut bits = vec![0u8];
        bits.extend_from_slice(signature.to_der().as_bytes());
        tlv(0x03, &bits)
    }

    fn ecdsa_sha384() -> Vec<u8> {
        seq(&[oid_der("1.2.840.10045.4.3.3")])
    }

    /// A certificate `cn` (serial `serial`) for `subject_key`, issued by `issuer_cn` with
    /// `issuer_key`; `ca` adds basicConstraints CA, `ocsp_signing` the EKU.
    fn cert(
        cn: &str,
        serial: u8,
        subject_key: &SigningKey,
        issuer_cn: &str,
        issuer_key: &SigningKey,
        ca: bool,
        ocsp_signing: bool,
    ) -> ParsedCert {
        let point = subject_key.verifying_key().to_sec1_point(false);
        let mut bits = vec![0u8];
        bits.extend_from_slice(point.as_bytes());
        let spki = seq(&[
            seq(&[oid_der("1.2.840.10045.2.1"), oid_der("1.3.132.0.34")]),
            tlv(0x03, &bits),
        ]);
        let mut extensions = Vec::new();
        if ca {
            extensions.push(seq(&[
                oid_der("2.5.29.19"),
                tlv(0x01, &[0xff]),
                tlv(0x04, &seq(&[tlv(0x01, &[0xff])])),
            ]));
        }
        if ocsp_signing {
            extensions.push(seq(&[
                oid_der("2.5.29.37"),
                tlv(0x04, &seq(&[oid_der("1.3.6.1.5.5.7.3.9")])),
            ]));
        }
        let mut tbs_parts = vec![
            tlv(0xA0, &tlv(0x02, &[2])),
            tlv(0x02, &[serial]),
            ecdsa_sha384(),
            name(issuer_cn),
            seq(&[time("20240101000000Z"), time("20300101000000Z")]),
            name(cn),
            spki,
        ];
        if !extensions.is_empty() {
            tbs_parts.push(tlv(0xA3, &seq(&extensions)));
        }
        let tbs = seq(&tbs_parts);
        let der = seq(&[tbs.clone(), ecdsa_sha384(), sign(issuer_key, &tbs)]);
        ParsedCert::from_der(der, 0).unwrap()
    }

    struct Pki {
        root_key: SigningKey,
        root: ParsedCert,
        ca: ParsedCert,
    }

    fn pki() -> Pki {
        let root_key = key(7);
        let root = cert("Root", 1, &root_key, "Root", &root_key, true, false);
        let ca = cert("CA", 0x42, &key(9), "Root", &root_key, true, false);
        Pki { root_key, root, ca }
    }

    struct Options<'a> {
        serial: u8,
        status: Vec<u8>,
        this_update: &'a str,
        next_update: Option<&'a str>,
        nonce: Option<&'a [u8]>,
        signer: &'a SigningKey,
        embedded: Option<&'a ParsedCert>,
        response_status: u8,
    }

    fn good<'a>(signer: &'a SigningKey) -> Options<'a> {
        Options {
            serial: 0x42,
            status: tlv(0x80, &[]),
            this_update: "20240601000000Z",
            next_update: Some("20240608000000Z"),
            nonce: None,
            signer,
            embedded: None,
            response_status: 0,
        }
    }

    fn response(issuer: &ParsedCert, o: &Options<'_>) -> Vec<u8> {
        let issuer_name = issuer.cert.tbs_certificate().subject().to_der().unwrap();
        let issuer_key = issuer
            .cert
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
            .to_vec();
        let cert_id = seq(&[
            seq(&[oid_der("1.3.14.3.2.26"), tlv(0x05, &[])]),
            tlv(0x04, &Sha1::digest(&issuer_name)),
            tlv(0x04, &Sha1::digest(&issuer_key)),
            tlv(0x02, &[o.serial]),
        ]);
        let mut single = vec![cert_id, o.status.clone(), time(o.this_update)];
        if let Some(next) = o.next_update {
            single.push(tlv(0xA0, &time(next)));
        }
        let mut data = vec![
            tlv(0xA1, &name("Responder")),
            time("20240601000000Z"),
            seq(&[seq(&single)]),
        ];
        if let Some(nonce) = o.nonce {
            data.push(tlv(
                0xA1,
                &seq(&[seq(&[
                    oid_der("1.3.6.1.5.5.7.48.1.2"),
                    tlv(0x04, &tlv(0x04, nonce)),
                ])]),
            ));
        }
        let tbs = seq(&data);
        let mut basic = vec![tbs.clone(), ecdsa_sha384(), sign(o.signer, &tbs)];
        if let Some(cert) = o.embedded {
            basic.push(tlv(0xA0, &seq(std::slice::from_ref(&cert.der))));
        }
        let basic = seq(&basic);
        seq(&[
            tlv(0x0A, &[o.response_status]),
            tlv(
                0xA0,
                &seq(&[oid_der("1.3.6.1.5.5.7.48.1.1"), tlv(0x04, &basic)]),
            ),
        ])
    }

    const NOW: UnixTime = UnixTime(1_717_300_000); // 2024-06-02

    fn check(
        p: &Pki,
        der: &[u8],
        nonce: Option<&[u8]>,
        allow_hold: bool,
    ) -> Result<OcspGood, OcspError> {
        check_response(
            der,
            &p.ca,
            &p.root,
            std::slice::from_ref(&p.root),
            NOW,
            nonce,
            allow_hold,
        )
    }

    #[test]
    fn good_response_signed_by_the_issuer_verifies() {
        let p = pki();
        let der = response(&p.root, &good(&p.root_key));
        assert_eq!(check(&p, &der, None, false), Ok(OcspGood::Good));
    }

    #[test]
    fn revoked_unknown_and_hold() {
        let p = pki();
        let revoked = |reason: u8| Options {
            status: tlv(
                0xA1,
                &[time("20240515000000Z"), tlv(0xA0, &tlv(0x0A, &[reason]))].concat(),
            ),
            ..good(&p.root_key)
        };
        let key_compromise = response(&p.root, &revoked(1));
        assert_eq!(
            check(&p, &key_compromise, None, true),
            Err(OcspError::CheckRevoked { reason: Some(1) })
        );
        let hold = response(&p.root, &revoked(CERTIFICATE_HOLD));
        assert_eq!(
            check(&p, &hold, None, false),
            Err(OcspError::CheckRevoked { reason: Some(6) })
        );
        assert_eq!(check(&p, &hold, None, true), Ok(OcspGood::OnHold));
        let unknown = response(
            &p.root,
            &Options {
                status: tlv(0x82, &[]),
                ..good(&p.root_key)
            },
        );
        assert_eq!(
            check(&p, &unknown, None, false),
            Err(OcspError::CheckUnknown)
        );
    }

    #[test]
    fn window_signature_certid_status_and_nonce() {
        let p = pki();
        let stale = response(
            &p.root,
            &Options {
                this_update: "20240501000000Z",
                next_update: Some("20240502000000Z"),
                ..good(&p.root_key)
            },
        );
        assert!(matches!(
            check(&p, &stale, None, false),
            Err(OcspError::CheckWindow { .. })
        ));
        // No nextUpdate: thisUpdate + 1 h.
        let short = response(
            &p.root,
            &Options {
                this_update: "20240601000000Z",
                next_update: None,
                ..good(&p.root_key)
            },
        );
        assert!(matches!(
            check(&p, &short, None, false),
            Err(OcspError::CheckWindow { .. })
        ));
        let forged = response(&p.root, &good(&key(3)));
        assert_eq!(
            check(&p, &forged, None, false),
            Err(OcspError::VerifySignature)
        );
        let other = response(
            &p.root,
            &Options {
                serial: 0x43,
                ..good(&p.root_key)
            },
        );
        assert_eq!(check(&p, &other, None, false), Err(OcspError::FindResponse));
        let unauthorized = response(
            &p.root,
            &Options {
                response_status: 6,
                ..good(&p.root_key)
            },
        );
        assert_eq!(
            check(&p, &unauthorized, None, false),
            Err(OcspError::CheckResponseStatus { status: 6 })
        );
        let with_nonce = response(
            &p.root,
            &Options {
                nonce: Some(&[5; 32]),
                ..good(&p.root_key)
            },
        );
        assert_eq!(
            check(&p, &with_nonce, Some(&[5; 32]), false),
            Ok(OcspGood::Good)
        );
        assert_eq!(
            check(&p, &with_nonce, Some(&[6; 32]), false),
            Err(OcspError::CheckNonce)
        );
        let der = response(&p.root, &good(&p.root_key));
        assert_eq!(
            check(&p, &der, Some(&[5; 32]), false),
            Err(OcspError::CheckNonce)
        );
        for len in 0..der.len() {
            check(&p, &der[..len], None, false).unwrap_err();
        }
    }

    #[test]
    fn delegated_responder_needs_the_eku() {
        let p = pki();
        let responder_key = key(11);
        let delegate = cert(
            "Responder",
            5,
            &responder_key,
            "Root",
            &p.root_key,
            false,
            true,
        );
        let der = response(
            &p.root,
            &Options {
                embedded: Some(&delegate),
                ..good(&responder_key)
            },
        );
        assert_eq!(check(&p, &der, None, false), Ok(OcspGood::Good));
        let plain = cert(
            "Responder",
            5,
            &responder_key,
            "Root",
            &p.root_key,
            false,
            false,
        );
        let der = response(
            &p.root,
            &Options {
                embedded: Some(&plain),
                ..good(&responder_key)
            },
        );
        assert_eq!(check(&p, &der, None, false), Err(OcspError::CheckResponder));
        let rogue_key = key(13);
        let rogue = cert(
            "Responder",
            5,
            &responder_key,
            "Root",
            &rogue_key,
            false,
            true,
        );
        let der = response(
            &p.root,
            &Options {
                embedded: Some(&rogue),
                ..good(&responder_key)
            },
        );
        assert_eq!(check(&p, &der, None, false), Err(OcspError::CheckResponder));
    }
}
