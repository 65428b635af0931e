//! **INSECURE** software TEE for QEMU guests without TDX and for host tests, behind the traits of
//! `init_core::tee`. Never in a release image: `cvm-init` depends on this crate only with its
//! feature `insecure-simulated-tee`.
//!
//! It keeps RTMR0-3 in memory (extend = SHA-384(old ‖ digest)), produces TDREPORTs in the real
//! 1024-byte layout and v4 quotes built with the auditor's own `measure::quote` types (so the
//! auditor's parser reads them). The quotes are signed the way Intel DCAP signs them
//! (`specs/tdx.md` §1.3): an attestation key signs header ‖ body; a QE report whose report data
//! is SHA-256(attestation key ‖ QE auth data) is signed by a PCK key; the certification data is
//! type 6 (QE report) holding type 5 (PEM chain PCK leaf → intermediate → root). The root CA is
//! generated when the TEE is created ([`pck`]), so no two runs share it; get it with
//! [`InsecureSimulatedTee::insecure_root_certificate_der`] to verify such quotes. The QE vendor id
//! is the ASCII marker `INSECURE-SIM-TEE`, the QE report's MRSIGNER is [`QE_MRSIGNER_MARKER`], and
//! the TEE's very first act is extending the marker event
//! [`names::INSECURE_SIMULATED_TEE`] into RTMR3, so
//! RTMR3 can never equal a value a verifier expects from a real boot.

pub mod pck;

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use measure::quote::{
    ATTESTATION_KEY_TYPE_ECDSA_P256, CertificationData, ENCLAVE_REPORT_LEN, EnclaveReport,
    QeReportCertificationData, Quote, QuoteError, QuoteHeader, QuoteSignatureData, ReportData,
    TEE_TYPE_TDX, TdReportVersion,
};
use measure::rtmr::Rtmrs;
use measure::runtime_event::RuntimeEvent;
use measure::tdreport::{REPORT_TYPE_TDX, ReportMac, TdInfo, TdReport, TeeTcbInfo};

use init_core::tee::events::names;
use init_core::tee::{
    BootEventLog, QuoteSource, REPORT_DATA_LEN, Rtmr, RtmrIndex, Sha384Digest, TeeError,
};

/// Payload of the marker event.
pub const MARKER_PAYLOAD: &[u8] =
    b"measurements of this TD are simulated and must never be trusted";
/// 16-byte marker in the quote header's QE vendor id and MRTD prefix.
pub const QUOTE_MARKER: &[u8; 16] = b"INSECURE-SIM-TEE";

/// MRSIGNER of the simulated QE report (never Intel's QE signer).
pub const QE_MRSIGNER_MARKER: &[u8; 32] = b"INSECURE-SIM-TEE-QE-NOT-INTEL-QE";
/// ISVPRODID of the simulated QE report (that of Intel's TD QE).
pub const QE_ISV_PROD_ID: u16 = 2;

/// Offsets inside the 384-byte QE report (`specs/tdx.md` §1.3).
const QE_REPORT_MRSIGNER: usize = 128;
const QE_REPORT_ISV_PROD_ID: usize = 256;
const QE_REPORT_DATA: usize = 320;

/// Errors of the simulated TEE.
#[derive(Debug, thiserror::Error)]
pub enum SimulatedTeeError {
    /// Generating the keys or the PCK chain failed when the TEE was created.
    #[error("create the simulated quote signer")]
    CreateSigner {
        #[source]
        source: Arc<pck::SimulatedPckError>,
    },
    /// Signing the quote or the QE report failed.
    #[error("sign the simulated quote")]
    SignQuote {
        #[source]
        source: pck::SimulatedPckError,
    },
    /// The quote's structures could not be built or encoded.
    #[error("encode the simulated quote")]
    EncodeQuote {
        #[source]
        source: QuoteError,
    },
}

/// The simulated TEE.
#[derive(Debug, Clone)]
pub struct InsecureSimulatedTee {
    rtmrs: Rtmrs,
    mrtd: Sha384Digest,
    marker: RuntimeEvent,
    /// The keys and chain, or why they could not be made (then quotes fail).
    signer: Result<Arc<pck::QuoteSigner>, Arc<pck::SimulatedPckError>>,
}

impl InsecureSimulatedTee {
    /// Creates the TEE and extends the marker event into RTMR3 before anything else. Also
    /// generates a fresh attestation key and PCK chain (root CA included).
    ///
    /// If the OS random number generator fails, the TEE still measures, but every
    /// [`QuoteSource::quote`] fails with that error; use [`Self::try_new`] to fail at once.
    pub fn new() -> Self {
        let signer = pck::QuoteSigner::generate().map(Arc::new).map_err(|err| {
            log::error!("simulated TEE cannot sign quotes: {err}");
            Arc::new(err)
        });
        Self::with_signer(signer)
    }

    /// Like [`Self::new`], but fails if the quote signer cannot be created.
    pub fn try_new() -> Result<Self, SimulatedTeeError> {
        let signer =
            pck::QuoteSigner::generate().map_err(|source| SimulatedTeeError::CreateSigner {
                source: Arc::new(source),
            })?;
        Ok(Self::with_signer(Ok(Arc::new(signer))))
    }

    /// A simulated TEE that signs with the keys of another one of this boot
    /// ([`Self::insecure_export_signer`]), so quotes from the guest API server chain to the root
    /// that PID 1 published. Registers start fresh (marker only), as with [`Self::try_new`].
    pub fn try_with_exported_signer(bytes: &[u8]) -> Result<Self, SimulatedTeeError> {
        let signer = pck::QuoteSigner::from_bytes(bytes).map_err(|source| {
            SimulatedTeeError::CreateSigner {
                source: Arc::new(source),
            }
        })?;
        Ok(Self::with_signer(Ok(Arc::new(signer))))
    }

    /// The quote signer's keys and chain as bytes for [`Self::try_with_exported_signer`].
    /// INSECURE: whoever holds them can sign simulated quotes of this boot.
    pub fn insecure_export_signer(&self) -> Result<Vec<u8>, SimulatedTeeError> {
        self.signer().map(pck::QuoteSigner::to_bytes)
    }

    fn with_signer(signer: Result<Arc<pck::QuoteSigner>, Arc<pck::SimulatedPckError>>) -> Self {
        let marker = RuntimeEvent::new(names::INSECURE_SIMULATED_TEE, MARKER_PAYLOAD.to_vec());
        let mut rtmrs = Rtmrs::new();
        rtmrs.extend(RtmrIndex::R3, &marker.digest());
        let mut mrtd = [0u8; 48];
        mrtd[..16].copy_from_slice(QUOTE_MARKER);
        log::warn!("INSECURE simulated TEE in use: measurements and quotes are not trustworthy");
        Self {
            rtmrs,
            mrtd: Sha384Digest(mrtd),
            marker,
            signer,
        }
    }

    fn signer(&self) -> Result<&pck::QuoteSigner, SimulatedTeeError> {
        self.signer
            .as_deref()
            .map_err(|source| SimulatedTeeError::CreateSigner {
                source: Arc::clone(source),
            })
    }

    /// The DER root CA certificate generated for this TEE, the trust anchor of its quotes'
    /// PCK chains. INSECURE: trusting it accepts quotes that prove nothing about TDX hardware.
    pub fn insecure_root_certificate_der(&self) -> Result<&[u8], SimulatedTeeError> {
        self.signer().map(pck::QuoteSigner::root_der)
    }

    /// [`Self::insecure_root_certificate_der`] as PEM text.
    pub fn insecure_root_certificate_pem(&self) -> Result<String, SimulatedTeeError> {
        self.insecure_root_certificate_der()
            .map(pck::certificate_pem)
    }

    /// The PEM chain (PCK leaf, intermediate, root) that the quotes carry as type-5 data.
    pub fn insecure_pck_chain_pem(&self) -> Result<String, SimulatedTeeError> {
        self.signer().map(pck::QuoteSigner::chain_pem)
    }

    /// The current register values.
    pub fn rtmrs(&self) -> &Rtmrs {
        &self.rtmrs
    }

    /// The marker event extended at creation.
    pub fn marker_event(&self) -> &RuntimeEvent {
        &self.marker
    }
}

impl Default for InsecureSimulatedTee {
    fn default() -> Self {
        Self::new()
    }
}

impl Rtmr for InsecureSimulatedTee {
    fn extend_rtmr(&mut self, index: RtmrIndex, digest: &Sha384Digest) -> Result<(), TeeError> {
        self.rtmrs.extend(index, digest);
        Ok(())
    }

    fn pre_extended_events(&self) -> Vec<RuntimeEvent> {
        vec![self.marker.clone()]
    }
}

impl InsecureSimulatedTee {
    /// The TDREPORT this TEE would produce for `report_data`, with consistent
    /// TEE_TCB_INFO / TDINFO hashes (the MAC stays zero: nothing can verify it).
    pub fn td_report(&self, report_data: &[u8; REPORT_DATA_LEN]) -> TdReport {
        let mut report = TdReport {
            report_mac: ReportMac {
                report_type: [REPORT_TYPE_TDX, 0, 0, 0],
                reserved1: [0; 12],
                cpu_svn: [0; 16],
                tee_tcb_info_hash: Sha384Digest::ZERO,
                tee_info_hash: Sha384Digest::ZERO,
                report_data: ReportData(*report_data),
                reserved2: [0; 32],
                mac: [0; 32],
            },
            tee_tcb_info: TeeTcbInfo {
                valid: [0; 8],
                tee_tcb_svn: [0; 16],
                mr_seam: Sha384Digest::ZERO,
                mr_signer_seam: Sha384Digest::ZERO,
                attributes: 0,
                tee_tcb_svn2: [0; 16],
                reserved: [0; 95],
            },
            reserved: [0; 17],
            td_info: TdInfo {
                attributes: 0,
                xfam: 0,
                mr_td: self.mrtd,
                mr_config_id: Sha384Digest::ZERO,
                mr_owner: Sha384Digest::ZERO,
                mr_owner_config: Sha384Digest::ZERO,
                rtmrs: self.rtmrs,
                servtd_hash: Sha384Digest::ZERO,
                reserved: [0; 64],
            },
        };
        report.report_mac.tee_tcb_info_hash = report.computed_tee_tcb_info_hash();
        report.report_mac.tee_info_hash = report.computed_tee_info_hash();
        report
    }

    /// The signed v4 quote this TEE produces: the real header (QE vendor id [`QUOTE_MARKER`])
    /// and TD 1.0 body, the attestation key's signature over them, and type-6 certification data
    /// (QE report signed by the PCK key, QE auth data, type-5 PEM chain).
    pub fn sim_quote(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<Quote, SimulatedTeeError> {
        let signer = self.signer()?;
        let mut quote = Quote {
            header: QuoteHeader {
                version: 4,
                attestation_key_type: ATTESTATION_KEY_TYPE_ECDSA_P256,
                tee_type: TEE_TYPE_TDX,
                reserved: [0; 4],
                qe_vendor_id: *QUOTE_MARKER,
                user_data: [0; 20],
            },
            body: self
                .td_report(report_data)
                .to_quote_body(TdReportVersion::Td10),
            signature_data: QuoteSignatureData {
                signature: [0; 64],
                attestation_key: signer.attestation_public_key(),
                certification: CertificationData::QeReport(Box::new(qe_report_certification(
                    signer,
                )?)),
                trailing: Vec::new(),
            },
            trailing_len: 0,
        };
        quote.signature_data.signature = signer
            .sign_quote(&quote.signed_bytes())
            .map_err(|source| SimulatedTeeError::SignQuote { source })?;
        Ok(quote)
    }
}

/// QE authentication data of the simulated QE (bytes 00..1F, as Intel's QE sends).
fn qe_auth_data() -> Vec<u8> {
    (0u8..32).collect()
}

/// Type-6 certification data: a QE report binding the attestation key, signed by the PCK key,
/// with the PCK chain as type 5 inside.
fn qe_report_certification(
    signer: &pck::QuoteSigner,
) -> Result<QeReportCertificationData, SimulatedTeeError> {
    let qe_auth_data = qe_auth_data();
    let binding: [u8; 32] = Sha256::new()
        .chain_update(signer.attestation_public_key())
        .chain_update(&qe_auth_data)
        .finalize()
        .into();
    let mut report = [0u8; ENCLAVE_REPORT_LEN];
    report[QE_REPORT_MRSIGNER..QE_REPORT_MRSIGNER + 32].copy_from_slice(QE_MRSIGNER_MARKER);
    report[QE_REPORT_ISV_PROD_ID..QE_REPORT_ISV_PROD_ID + 2]
        .copy_from_slice(&QE_ISV_PROD_ID.to_le_bytes());
    report[QE_REPORT_DATA..QE_REPORT_DATA + 32].copy_from_slice(&binding);
    let qe_report = EnclaveReport::parse(&report)
        .map_err(|source| SimulatedTeeError::EncodeQuote { source })?;
    let qe_report_signature = signer
        .sign_qe_report(&qe_report.to_bytes())
        .map_err(|source| SimulatedTeeError::SignQuote { source })?;
    Ok(QeReportCertificationData {
        qe_report,
        qe_report_signature,
        qe_auth_data,
        certification: CertificationData::PckCertChain {
            pem: signer.chain_pem().into_bytes(),
        },
    })
}

impl QuoteSource for InsecureSimulatedTee {
    fn report(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        Ok(self.td_report(report_data).to_bytes())
    }

    fn quote(&mut self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Vec<u8>, TeeError> {
        self.sim_quote(report_data)
            .and_then(|quote| {
                quote
                    .to_bytes()
                    .map_err(|source| SimulatedTeeError::EncodeQuote { source })
            })
            .map_err(|err| TeeError::GetQuote {
                source: Box::new(err),
            })
    }
}

impl BootEventLog for InsecureSimulatedTee {
    /// There is no firmware log: empty.
    fn boot_event_log(&mut self) -> Result<Vec<u8>, TeeError> {
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use measure::runtime_event::replay_rtmr3;

    use super::*;
    use init_core::tee::events::{RuntimeEventLog, app_info_events};
    use init_core::tee::testing::RecordingSink;

    #[test]
    fn marker_is_extended_first_and_logged_first() {
        let tee = InsecureSimulatedTee::new();
        let marker = RuntimeEvent::new("insecure-simulated-tee", MARKER_PAYLOAD.to_vec());
        assert_eq!(
            *tee.rtmrs().register(RtmrIndex::R3),
            replay_rtmr3([&marker])
        );
        assert_ne!(*tee.rtmrs().register(RtmrIndex::R3), Sha384Digest::ZERO);

        let mut sink = RecordingSink::default();
        let identity = init_core::identity::AppIdentity {
            compose_hash: init_core::identity::ComposeHash([1; 32]),
            app_id: init_core::identity::AppId([1; 20]),
            instance_id_seed: vec![],
            instance_id: None,
        };
        let mut log = RuntimeEventLog::new(tee, &mut sink).unwrap();
        let plan = app_info_events(&identity, Default::default());
        log.emit_plan(plan.clone()).unwrap();
        // The log (marker first) replays to RTMR3; the plan alone does not.
        let rtmr3 = *log.rtmr().rtmrs().register(RtmrIndex::R3);
        assert_eq!(log.events()[0], marker);
        assert_eq!(replay_rtmr3(log.events()), rtmr3);
        assert_ne!(replay_rtmr3(&plan), rtmr3);
        drop(log);
        assert!(sink.lines[0].starts_with("{\"event\":\"insecure-simulated-tee\""));
    }

    #[test]
    fn exported_signer_signs_with_the_same_chain() {
        let first = InsecureSimulatedTee::try_new().unwrap();
        let bytes = first.insecure_export_signer().unwrap();
        let second = InsecureSimulatedTee::try_with_exported_signer(&bytes).unwrap();
        assert_eq!(
            first.insecure_root_certificate_der().unwrap(),
            second.insecure_root_certificate_der().unwrap()
        );
        assert_eq!(
            first.insecure_pck_chain_pem().unwrap(),
            second.insecure_pck_chain_pem().unwrap()
        );
        let a = first.sim_quote(&[7; REPORT_DATA_LEN]).unwrap();
        let b = second.sim_quote(&[7; REPORT_DATA_LEN]).unwrap();
        assert_eq!(
            a.signature_data.attestation_key,
            b.signature_data.attestation_key
        );
        // A fresh TEE has another chain; damaged bytes are refused with the reason.
        let other = InsecureSimulatedTee::try_new().unwrap();
        assert_ne!(
            other.insecure_root_certificate_der().unwrap(),
            first.insecure_root_certificate_der().unwrap()
        );
        for (bad, reason) in [
            (&bytes[..10], "no signer magic"),
            (&bytes[..40], "truncated key"),
            (&bytes[..bytes.len() - 1], "truncated certificate"),
        ] {
            let err = InsecureSimulatedTee::try_with_exported_signer(bad).unwrap_err();
            let chain = format!("{:?}", err);
            assert!(chain.contains(reason), "{chain}");
        }
        let mut long = bytes.clone();
        long.push(0);
        InsecureSimulatedTee::try_with_exported_signer(&long).unwrap_err();
    }

    #[test]
    fn quote_and_report_parse_with_the_auditors_parsers() {
        let mut tee = InsecureSimulatedTee::new();
        tee.extend_rtmr(RtmrIndex::R2, &Sha384Digest([5; 48]))
            .unwrap();
        let rd = [0x77; 64];
        let bytes = tee.quote(&rd).unwrap();
        // Known offsets (dstack-guest.md §4.2 gives them relative to the body at 48) …
        let body = 48;
        assert_eq!(&bytes[0..2], &[4, 0]);
        assert_eq!(&bytes[12..28], QUOTE_MARKER);
        assert_eq!(&bytes[body + 136..body + 184], &tee.mrtd.0);
        assert_eq!(
            &bytes[body + 424..body + 472],
            &tee.rtmrs().register(RtmrIndex::R2).0
        );
        assert_eq!(
            &bytes[body + 472..body + 520],
            &tee.rtmrs().register(RtmrIndex::R3).0
        );
        assert_eq!(&bytes[body + 520..body + 584], &rd);
        // … and the auditor's parser.
        let quote = Quote::parse(&bytes).unwrap();
        assert_eq!(quote.rtmrs(), tee.rtmrs());
        assert_eq!(quote.body.report_data, ReportData(rd));
        assert_eq!(quote.header.qe_vendor_id, *QUOTE_MARKER);
        assert_eq!(quote.trailing_len, 0);
        let qe = quote.qe_report_certification().unwrap();
        assert_eq!(
            qe.certification.cert_type(),
            measure::quote::CERT_TYPE_PCK_CHAIN
        );
        assert_eq!(
            quote.signature_data.certification.pck_cert_chain_pem(),
            Some(tee.insecure_pck_chain_pem().unwrap().as_bytes())
        );

        let report_bytes = tee.report(&rd).unwrap();
        assert_eq!(report_bytes.len(), 1024);
        assert_eq!(report_bytes[0], 0x81);
        assert_eq!(&report_bytes[128..192], &rd);
        assert_eq!(
            &report_bytes[864..912],
            &tee.rtmrs().register(RtmrIndex::R3).0
        );
        let report = TdReport::parse(&report_bytes).unwrap();
        assert!(report.hashes_match());
        assert_eq!(report.td_info.rtmrs, *tee.rtmrs());
        assert!(tee.boot_event_log().unwrap().is_empty());
    }

    /// The first check (in DCAP order, `specs/tdx.md` §1.4 steps 4-6 and 8) that a quote fails.
    #[derive(Debug, PartialEq, Eq)]
    enum Failed {
        /// Certificate `index` of the chain (0 = leaf) is not signed by the next (or the root).
        Chain { index: usize },
        /// The QE report signature does not verify with the PCK leaf key.
        QeReportSignature,
        /// The QE report does not bind the attestation key and QE auth data.
        Binding,
        /// The quote signature over header ‖ body does not verify with the attestation key.
        QuoteSignature,
    }

    fn pem_certificates(pem: &[u8]) -> Vec<Vec<u8>> {
        use base64::Engine as _;
        let text = std::str::from_utf8(pem).unwrap();
        text.split("-----BEGIN CERTIFICATE-----")
            .skip(1)
            .map(|block| {
                let body = block.split("-----END CERTIFICATE-----").next().unwrap();
                let b64: String = body.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap()
            })
            .collect()
    }

    fn public_key_of(cert_der: &[u8]) -> p256::ecdsa::VerifyingKey {
        use der::Decode as _;
        let cert = x509_cert::Certificate::from_der(cert_der).unwrap();
        let spki = cert.tbs_certificate().subject_public_key_info();
        p256::ecdsa::VerifyingKey::from_sec1_bytes(spki.subject_public_key.raw_bytes()).unwrap()
    }

    /// Whether `cert_der` is signed (ECDSA P-256 / SHA-256) by the key of `issuer_der`, and names
    /// it as issuer.
    fn signed_by(cert_der: &[u8], issuer_der: &[u8]) -> bool {
        use der::{Decode as _, Encode as _};
        use p256::ecdsa::signature::Verifier as _;
        let Ok(cert) = x509_cert::Certificate::from_der(cert_der) else {
            return false;
        };
        let Ok(issuer) = x509_cert::Certificate::from_der(issuer_der) else {
            return false;
        };
        let Ok(signature) = p256::ecdsa::Signature::from_der(cert.signature().raw_bytes()) else {
            return false;
        };
        cert.signature_algorithm().oid.to_string() == "1.2.840.10045.4.3.2"
            && cert.tbs_certificate().issuer() == issuer.tbs_certificate().subject()
            && public_key_of(issuer_der)
                .verify(&cert.tbs_certificate().to_der().unwrap(), &signature)
                .is_ok()
    }

    fn raw_key(raw: &[u8; 64]) -> Option<p256::ecdsa::VerifyingKey> {
        let mut sec1 = vec![0x04];
        sec1.extend_from_slice(raw);
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()
    }

    fn raw_signature_verifies(
        key: &p256::ecdsa::VerifyingKey,
        message: &[u8],
        rs: &[u8; 64],
    ) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        p256::ecdsa::Signature::from_slice(rs).is_ok_and(|sig| key.verify(message, &sig).is_ok())
    }

    /// Verifies a quote the way DCAP does, against `root_der` instead of Intel's root.
    fn verify(bytes: &[u8], root_der: &[u8]) -> Result<(), Failed> {
        let quote = Quote::parse(bytes).unwrap();
        let qe = quote.qe_report_certification().unwrap();
        let chain = pem_certificates(
            quote
                .signature_data
                .certification
                .pck_cert_chain_pem()
                .unwrap(),
        );
        assert_eq!(chain.len(), 3);
        // Each certificate is signed by the next; the last by the trusted root, which must be it.
        for index in 0..chain.len() {
            let issuer = chain.get(index + 1).map_or(root_der, Vec::as_slice);
            if !signed_by(&chain[index], issuer) {
                return Err(Failed::Chain { index });
            }
        }
        if chain[2] != root_der {
            return Err(Failed::Chain { index: 2 });
        }
        if !raw_signature_verifies(
            &public_key_of(&chain[0]),
            &qe.qe_report.to_bytes(),
            &qe.qe_report_signature,
        ) {
            return Err(Failed::QeReportSignature);
        }
        let binding: [u8; 32] = Sha256::new()
            .chain_update(quote.signature_data.attestation_key)
            .chain_update(&qe.qe_auth_data)
            .finalize()
            .into();
        if qe.qe_report.report_data.0[..32] != binding
            || qe.qe_report.report_data.0[32..] != [0; 32]
        {
            return Err(Failed::Binding);
        }
        let Some(attestation_key) = raw_key(&quote.signature_data.attestation_key) else {
            return Err(Failed::QuoteSignature);
        };
        if !raw_signature_verifies(
            &attestation_key,
            &quote.signed_bytes(),
            &quote.signature_data.signature,
        ) {
            return Err(Failed::QuoteSignature);
        }
        Ok(())
    }

    fn signed_quote() -> (InsecureSimulatedTee, Vec<u8>) {
        let mut tee = InsecureSimulatedTee::try_new().unwrap();
        tee.extend_rtmr(RtmrIndex::R3, &Sha384Digest([3; 48]))
            .unwrap();
        let bytes = tee.quote(&[0x42; 64]).unwrap();
        (tee, bytes)
    }

    // v4 offsets with 32-byte QE auth data (specs/tdx.md §1.3).
    const BODY: usize = 0x30;
    const SIGNATURE: usize = 0x27C;
    const ATTESTATION_KEY: usize = 0x2BC;
    const CERT_TYPE: usize = 0x2FC;
    const QE_REPORT: usize = 0x302;
    const QE_REPORT_SIGNATURE: usize = 0x482;
    const QE_AUTH_DATA_SIZE: usize = 0x4C2;
    const INNER_CERT_TYPE: usize = 0x4E4;

    #[test]
    fn quote_is_signed_like_dcap() {
        let (tee, bytes) = signed_quote();
        let quote = Quote::parse(&bytes).unwrap();
        assert_eq!(quote.trailing_len, 0);
        assert_eq!(&bytes[CERT_TYPE..CERT_TYPE + 2], &6u16.to_le_bytes());
        assert_eq!(
            &bytes[QE_AUTH_DATA_SIZE..QE_AUTH_DATA_SIZE + 2],
            &32u16.to_le_bytes()
        );
        assert_eq!(
            &bytes[INNER_CERT_TYPE..INNER_CERT_TYPE + 2],
            &5u16.to_le_bytes()
        );
        assert_eq!(&bytes[BODY + 520..BODY + 584], &[0x42; 64]);
        assert_eq!(
            &bytes[ATTESTATION_KEY..ATTESTATION_KEY + 64],
            &quote.signature_data.attestation_key
        );
        let qe = quote.qe_report_certification().unwrap();
        assert_eq!(
            &bytes[QE_REPORT..QE_REPORT + 384],
            &qe.qe_report.to_bytes()[..]
        );
        assert_eq!(qe.qe_report.mr_signer, *QE_MRSIGNER_MARKER);
        assert_eq!(qe.qe_report.isv_prod_id, QE_ISV_PROD_ID);
        assert_eq!(qe.qe_auth_data, (0u8..32).collect::<Vec<_>>());
        let root = tee.insecure_root_certificate_der().unwrap();
        assert_eq!(verify(&bytes, root), Ok(()));
        // The quote is a fixed function of the TEE's state: the same report data, the same quote
        // (ECDSA nonces are deterministic, RFC 6979).
        let mut tee = tee;
        assert_eq!(tee.quote(&[0x42; 64]).unwrap(), bytes);
    }

    #[test]
    fn chain_names_say_insecure_and_only_cas_may_sign() {
        use der::Decode as _;
        let (tee, bytes) = signed_quote();
        let quote = Quote::parse(&bytes).unwrap();
        let pem = quote
            .signature_data
            .certification
            .pck_cert_chain_pem()
            .unwrap();
        assert_eq!(pem, tee.insecure_pck_chain_pem().unwrap().as_bytes());
        let chain = pem_certificates(pem);
        let subjects = [
            pck::LEAF_SUBJECT,
            pck::INTERMEDIATE_SUBJECT,
            pck::ROOT_SUBJECT,
        ];
        for (der, (subject, ca)) in chain.iter().zip(subjects.iter().zip([false, true, true])) {
            let cert = x509_cert::Certificate::from_der(der).unwrap();
            let name = cert.tbs_certificate().subject().to_string();
            assert!(name.contains("INSECURE simulated PCK"), "{name}");
            assert!(name.contains("INSECURE SIMULATED TEE"), "{name}");
            assert_eq!(cert.tbs_certificate().subject(), &subject.parse().unwrap());
            let (critical, constraints) = cert
                .tbs_certificate()
                .get_extension::<x509_cert::ext::pkix::BasicConstraints>()
                .unwrap()
                .unwrap();
            assert!(critical);
            assert_eq!(constraints.ca, ca, "{name}");
        }
        // The root is self-signed and is the one the TEE exposes, in DER and PEM.
        let root = tee.insecure_root_certificate_der().unwrap();
        assert_eq!(chain[2], root);
        assert!(signed_by(root, root));
        assert_eq!(
            pem_certificates(tee.insecure_root_certificate_pem().unwrap().as_bytes()),
            [root]
        );
        // The leaf is not signed by the root directly, nor the intermediate by itself.
        assert!(!signed_by(&chain[0], root));
        assert!(!signed_by(&chain[1], &chain[1]));
    }

    #[test]
    fn each_tee_has_its_own_root() {
        let (one, quote_one) = signed_quote();
        let (two, quote_two) = signed_quote();
        let root_one = one.insecure_root_certificate_der().unwrap();
        let root_two = two.insecure_root_certificate_der().unwrap();
        assert_ne!(root_one, root_two);
        assert_ne!(public_key_of(root_one), public_key_of(root_two));
        assert_eq!(verify(&quote_two, root_two), Ok(()));
        // A quote does not verify against another TEE's root.
        assert_eq!(
            verify(&quote_one, root_two),
            Err(Failed::Chain { index: 2 })
        );
        // Clones share the root (they are the same TEE).
        assert_eq!(
            one.clone().insecure_root_certificate_der().unwrap(),
            root_one
        );
    }

    #[test]
    fn tampering_fails_the_matching_check() {
        let (tee, bytes) = signed_quote();
        let root = tee.insecure_root_certificate_der().unwrap();
        let flipped = |offset: usize| {
            let mut bytes = bytes.clone();
            bytes[offset] ^= 0x01;
            bytes
        };
        // Body: RTMR3 and report data.
        assert_eq!(
            verify(&flipped(BODY + 472), root),
            Err(Failed::QuoteSignature)
        );
        assert_eq!(
            verify(&flipped(BODY + 583), root),
            Err(Failed::QuoteSignature)
        );
        // Header.
        assert_eq!(verify(&flipped(12), root), Err(Failed::QuoteSignature));
        // Quote signature (r and s).
        assert_eq!(
            verify(&flipped(SIGNATURE), root),
            Err(Failed::QuoteSignature)
        );
        assert_eq!(
            verify(&flipped(SIGNATURE + 63), root),
            Err(Failed::QuoteSignature)
        );
        // Attestation key: no longer bound by the QE report.
        assert_eq!(
            verify(&flipped(ATTESTATION_KEY + 10), root),
            Err(Failed::Binding)
        );
        // QE auth data: the binding breaks too.
        assert_eq!(
            verify(&flipped(QE_AUTH_DATA_SIZE + 2), root),
            Err(Failed::Binding)
        );
        // QE report (MRENCLAVE, report data) and its signature.
        assert_eq!(
            verify(&flipped(QE_REPORT + 64), root),
            Err(Failed::QeReportSignature)
        );
        assert_eq!(
            verify(&flipped(QE_REPORT + 320), root),
            Err(Failed::QeReportSignature)
        );
        assert_eq!(
            verify(&flipped(QE_REPORT_SIGNATURE + 5), root),
            Err(Failed::QeReportSignature)
        );
        assert_eq!(verify(&bytes, root), Ok(()));
    }

    #[test]
    fn tampered_certificates_fail_the_chain() {
        use base64::Engine as _;
        let (tee, bytes) = signed_quote();
        let root = tee.insecure_root_certificate_der().unwrap();
        let quote = Quote::parse(&bytes).unwrap();
        let chain = pem_certificates(
            quote
                .signature_data
                .certification
                .pck_cert_chain_pem()
                .unwrap(),
        );
        for index in 0..chain.len() {
            // Flip the serial number (outer and TBS headers 4 bytes each, version 5, then
            // INTEGER of one byte): still valid DER, but no longer what the issuer signed.
            let mut tampered_chain = chain.clone();
            assert_eq!(chain[index][13..15], [0x02, 0x01], "cert {index}");
            tampered_chain[index][15] ^= 0x80;
            let pem: String = tampered_chain
                .iter()
                .map(|der| pck::certificate_pem(der))
                .collect();
            let mut tampered = quote.clone();
            let CertificationData::QeReport(qe) = &mut tampered.signature_data.certification else {
                panic!("type 6 expected");
            };
            qe.certification = CertificationData::PckCertChain {
                pem: pem.into_bytes(),
            };
            let tampered = tampered.to_bytes().unwrap();
            assert_eq!(
                verify(&tampered, root),
                Err(Failed::Chain { index }),
                "cert {index}"
            );
        }
        // The PEM helper round-trips.
        let der = base64::engine::general_purpose::STANDARD.encode(&chain[0]);
        assert!(
            pck::certificate_pem(&chain[0])
                .replace('\n', "")
                .contains(&der)
        );
    }

    #[test]
    fn signing_keys_are_redacted_in_debug() {
        let tee = InsecureSimulatedTee::try_new().unwrap();
        let debug = format!("{tee:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(!debug.contains("SigningKey"), "{debug}");
    }
}
