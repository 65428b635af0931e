//! Verifies quotes of cvm-init's **INSECURE** simulated TEE (`cvm_sim_tee`), shaped
//! like Intel DCAP: the PCK chain (leaf → intermediate → root) in the type-6/type-5
//! certification data must end in the trusted simulated root; the QE report must be signed by
//! the PCK leaf key and bind SHA-256(attestation key ‖ QE auth data); the quote must be signed
//! by the attestation key over header ‖ body. (Real TDX quotes need Intel collateral, which a
//! test KMS does not have: it accepts only simulated quotes.)

use der::{Decode as _, Encode as _};
use measure::quote::Quote;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest as _, Sha256};
use x509_cert::Certificate;

/// Which simulated root to trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuoteTrust {
    /// This root certificate (DER).
    Root(Vec<u8>),
    /// A root certificate file (PEM or DER), read at every request (a test may write it after
    /// the KMS started, once the guest published its per-boot root).
    RootFile(std::path::PathBuf),
    /// Any self-signed root whose subject is the simulated TEE's root subject. For demos only:
    /// anyone can mint such a root.
    InsecureAnySimulatedRoot,
}

/// Why a quote was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteCheckError {
    /// The quote has no QE-report certification data with a PEM chain of three certificates.
    #[error("quote has no PCK certificate chain")]
    MissingChain,
    /// A certificate of the chain cannot be decoded.
    #[error("PCK chain certificate {index} cannot be decoded")]
    DecodeCertificate { index: usize },
    /// Certificate `index` is not signed by the next one (the root by itself).
    #[error("PCK chain certificate {index} is not signed by its issuer")]
    ChainSignature { index: usize },
    /// The chain's root is not the trusted root.
    #[error("PCK chain root is not the trusted simulated root")]
    UntrustedRoot,
    /// The trusted root file cannot be read.
    #[error("read the trusted root {path}: {reason}")]
    ReadRoot { path: String, reason: String },
    /// The QE report signature does not verify with the PCK key.
    #[error("QE report signature does not verify")]
    QeReportSignature,
    /// The QE report does not bind the attestation key.
    #[error("QE report does not bind the attestation key")]
    QeReportBinding,
    /// The quote signature does not verify with the attestation key.
    #[error("quote signature does not verify")]
    QuoteSignature,
}

fn split_pem_chain(pem: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(pem);
    let mut out = Vec::new();
    let mut rest: &str = &text;
    while let Some(der) = cvm_keys::kms::pem_block(rest, "CERTIFICATE") {
        out.push(der);
        match rest.find("-----END CERTIFICATE-----") {
            Some(i) => rest = &rest[i + 25..],
            None => break,
        }
    }
    out
}

fn spki_key(cert: &Certificate) -> Option<VerifyingKey> {
    let bits = cert
        .tbs_certificate()
        .subject_public_key_info()
        .subject_public_key
        .as_bytes()?;
    VerifyingKey::from_sec1_bytes(bits).ok()
}

fn signed_by(cert: &Certificate, issuer: &Certificate) -> bool {
    let Some(key) = spki_key(issuer) else {
        return false;
    };
    let Ok(tbs) = cert.tbs_certificate().to_der() else {
        return false;
    };
    let Some(sig) = cert
        .signature()
        .as_bytes()
        .and_then(|b| Signature::from_der(b).ok())
    else {
        return false;
    };
    key.verify(&tbs, &sig).is_ok()
}

fn raw_key(xy: &[u8; 64]) -> Option<VerifyingKey> {
    let mut sec1 = [0u8; 65];
    sec1[0] = 4;
    sec1[1..].copy_from_slice(xy);
    VerifyingKey::from_sec1_bytes(&sec1).ok()
}

fn read_root(trust: &QuoteTrust) -> Result<Option<Vec<u8>>, QuoteCheckError> {
    match trust {
        QuoteTrust::Root(der) => Ok(Some(der.clone())),
        QuoteTrust::InsecureAnySimulatedRoot => Ok(None),
        QuoteTrust::RootFile(path) => {
            let bytes = std::fs::read(path).map_err(|err| QuoteCheckError::ReadRoot {
                path: path.display().to_string(),
                reason: err.to_string(),
            })?;
            let text = String::from_utf8_lossy(&bytes);
            Ok(Some(
                cvm_keys::kms::pem_block(&text, "CERTIFICATE").unwrap_or(bytes),
            ))
        }
    }
}

/// Checks a simulated quote's signatures and chain against `trust`.
pub fn verify_simulated_quote(quote: &Quote, trust: &QuoteTrust) -> Result<(), QuoteCheckError> {
    let qe = quote
        .qe_report_certification()
        .ok_or(QuoteCheckError::MissingChain)?;
    let chain = split_pem_chain(
        qe.certification
            .pck_cert_chain_pem()
            .ok_or(QuoteCheckError::MissingChain)?,
    );
    if chain.len() != 3 {
        return Err(QuoteCheckError::MissingChain);
    }
    let certs = chain
        .iter()
        .enumerate()
        .map(|(index, der)| {
            Certificate::from_der(der).map_err(|_| QuoteCheckError::DecodeCertificate { index })
        })
        .collect::<Result<Vec<_>, _>>()?;
    for index in 0..3 {
        let issuer = &certs[(index + 1).min(2)];
        if !signed_by(&certs[index], issuer) {
            return Err(QuoteCheckError::ChainSignature { index });
        }
    }
    match read_root(trust)? {
        Some(root) if root == chain[2] => {}
        Some(_) => return Err(QuoteCheckError::UntrustedRoot),
        None => {
            // Self-signed (checked above) and named as the simulated TEE names its roots.
            let tbs = certs[2].tbs_certificate();
            let subject = tbs.subject().to_string();
            if tbs.issuer() != tbs.subject() || !subject.contains("INSECURE SIMULATED TEE") {
                return Err(QuoteCheckError::UntrustedRoot);
            }
        }
    }
    let pck = spki_key(&certs[0]).ok_or(QuoteCheckError::QeReportSignature)?;
    let qe_sig = Signature::from_slice(&qe.qe_report_signature)
        .map_err(|_| QuoteCheckError::QeReportSignature)?;
    pck.verify(&qe.qe_report.to_bytes(), &qe_sig)
        .map_err(|_| QuoteCheckError::QeReportSignature)?;
    let binding: [u8; 32] = Sha256::new()
        .chain_update(quote.signature_data.attestation_key)
        .chain_update(&qe.qe_auth_data)
        .finalize()
        .into();
    let report = qe.qe_report.to_bytes();
    if report.get(320..352) != Some(&binding[..]) {
        return Err(QuoteCheckError::QeReportBinding);
    }
    let attestation_key =
        raw_key(&quote.signature_data.attestation_key).ok_or(QuoteCheckError::QuoteSignature)?;
    let signature = Signature::from_slice(&quote.signature_data.signature)
        .map_err(|_| QuoteCheckError::QuoteSignature)?;
    attestation_key
        .verify(&quote.signed_bytes(), &signature)
        .map_err(|_| QuoteCheckError::QuoteSignature)
}

#[cfg(test)]
mod tests {
    use cvm_sim_tee::InsecureSimulatedTee;
    use init_core::tee::QuoteSource as _;

    use super::*;

    #[test]
    fn simulated_quotes_verify_against_their_root_only() {
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        let root = tee.insecure_root_certificate_der().unwrap().to_vec();
        let bytes = tee.quote(&[3; 64]).unwrap();
        let quote = Quote::parse(&bytes).unwrap();
        verify_simulated_quote(&quote, &QuoteTrust::Root(root.clone())).unwrap();
        verify_simulated_quote(&quote, &QuoteTrust::InsecureAnySimulatedRoot).unwrap();
        let other = InsecureSimulatedTee::try_new().unwrap();
        let other_root = other.insecure_root_certificate_der().unwrap().to_vec();
        assert_eq!(
            verify_simulated_quote(&quote, &QuoteTrust::Root(other_root)),
            Err(QuoteCheckError::UntrustedRoot)
        );
        // A root file, PEM.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.pem");
        std::fs::write(&path, tee.insecure_root_certificate_pem().unwrap()).unwrap();
        verify_simulated_quote(&quote, &QuoteTrust::RootFile(path.clone())).unwrap();
        assert!(matches!(
            verify_simulated_quote(&quote, &QuoteTrust::RootFile(dir.path().join("none"))),
            Err(QuoteCheckError::ReadRoot { .. })
        ));
        // Tampered body (report data) breaks the quote signature.
        let mut tampered = bytes.clone();
        tampered[48 + 520] ^= 1;
        let tampered = Quote::parse(&tampered).unwrap();
        assert_eq!(
            verify_simulated_quote(&tampered, &QuoteTrust::Root(root)),
            Err(QuoteCheckError::QuoteSignature)
        );
    }
}
