//! Offline DCAP quote verification (`specs/tdx.md` §1.4) through dcap-qvl (pure Rust): quote and
//! QE-report signatures, QE-report binding, PCK chain to the pinned Intel SGX Root CA, CRLs and
//! TCB status from stored collateral, at an explicit "now". Behind the `dcap-verify` feature so
//! the init does not link it.
//!
//! dcap-qvl reports failures as text; [`QuoteVerdict::Rejected`] classifies them into
//! [`RejectReason`] (pinned to dcap-qvl 0.7.1, whose messages the tests cover) and keeps the text.

use serde::Serialize;

/// Errors of this module (bad inputs, as opposed to a quote that fails verification).
#[derive(Debug, thiserror::Error)]
pub enum QuoteVerifyError {
    /// The collateral is not dcap-qvl `QuoteCollateralV3` JSON.
    #[error("collateral is not QuoteCollateralV3 JSON")]
    ParseCollateral {
        /// The JSON decoder's reason.
        #[source]
        source: serde_json::Error,
    },
}

/// Stored verification collateral (PCK CRLs, TCB info, QE identity and their signatures).
#[derive(Debug, Clone)]
pub struct Collateral(dcap_qvl::QuoteCollateralV3);

impl Collateral {
    /// Parses dcap-qvl's `QuoteCollateralV3` JSON.
    pub fn from_json(text: &str) -> Result<Self, QuoteVerifyError> {
        serde_json::from_str(text)
            .map(Self)
            .map_err(|source| QuoteVerifyError::ParseCollateral { source })
    }
}

/// Why a quote was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RejectReason {
    /// The quote could not be decoded.
    DecodeQuote,
    /// The quote signature over header and body does not verify with the attestation key.
    QuoteSignature,
    /// The QE report signature does not verify with the PCK key.
    QeReportSignature,
    /// The QE report does not bind the attestation key and QE auth data.
    QeReportBinding,
    /// The PCK certificate chain does not lead to the trusted root.
    CertificateChain,
    /// Collateral or certificates are expired or not yet valid at "now".
    CollateralTime,
    /// The collateral does not match the quote or its signatures do not verify.
    Collateral,
    /// TD attributes or QE identity rejected by policy (debug TD, reserved bits, …).
    Policy,
    /// Any other failure.
    Other,
}

/// The verification result, as data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum QuoteVerdict {
    /// All checks passed; the TCB status still needs a policy decision.
    Verified {
        /// Merged TCB status (e.g. `UpToDate`, `SWHardeningNeeded`, `OutOfDate`).
        tcb_status: String,
        /// Intel security advisories that apply.
        advisory_ids: Vec<String>,
    },
    /// A check failed.
    Rejected {
        /// Classified reason.
        reason: RejectReason,
        /// dcap-qvl's message chain.
        detail: String,
    },
}

impl QuoteVerdict {
    /// True for a verified quote whose TCB status is `UpToDate`.
    pub fn is_up_to_date(&self) -> bool {
        matches!(self, Self::Verified { tcb_status, .. } if tcb_status == "UpToDate")
    }
}

fn classify(detail: &str) -> RejectReason {
    let lower = detail.to_ascii_lowercase();
    if lower.contains("expired")
        || lower.contains("in the future")
        || lower.contains("not yet valid")
    {
        RejectReason::CollateralTime
    } else if lower.contains("certificate chain") || lower.contains("issuer") {
        RejectReason::CertificateChain
    } else if lower.contains("qe report hash") {
        RejectReason::QeReportBinding
    } else if lower.contains("qe_report") || lower.contains("qe report signature") {
        RejectReason::QeReportSignature
    } else if lower.contains("isv enclave report signature") {
        RejectReason::QuoteSignature
    } else if lower.contains("decode") || lower.contains("parse") || lower.contains("unsupported") {
        RejectReason::DecodeQuote
    } else if lower.contains("debug") || lower.contains("attribute") || lower.contains("policy") {
        RejectReason::Policy
    } else if lower.contains("tcb") || lower.contains("fmspc") || lower.contains("identity") {
        RejectReason::Collateral
    } else {
        RejectReason::Other
    }
}

fn verdict(
    result: Result<dcap_qvl::verify::VerifiedReport, impl std::fmt::Display>,
) -> QuoteVerdict {
    match result {
        Ok(report) => QuoteVerdict::Verified {
            tcb_status: report.status,
            advisory_ids: report.advisory_ids,
        },
        Err(err) => {
            let detail = format!("{err:#}");
            QuoteVerdict::Rejected {
                reason: classify(&detail),
                detail,
            }
        }
    }
}

/// Verifies a quote against stored collateral at `now_unix_secs`, with the Intel SGX Root CA.
pub fn verify_quote(quote: &[u8], collateral: &Collateral, now_unix_secs: u64) -> QuoteVerdict {
    verdict(dcap_qvl::verify::verify(
        quote,
        &collateral.0,
        now_unix_secs,
    ))
}

/// Verifies a quote with another root CA (DER), e.g. a simulated TEE's test root. A quote that
/// passes this proves nothing about real TDX hardware.
pub fn insecure_verify_quote_with_root(
    quote: &[u8],
    collateral: &Collateral,
    now_unix_secs: u64,
    root_ca_der: &[u8],
) -> QuoteVerdict {
    verdict(
        dcap_qvl::verify::QuoteVerifier::new(root_ca_der.to_vec()).verify(
            quote,
            &collateral.0,
            now_unix_secs,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUOTE: &[u8] = include_bytes!("../testdata/dcap-qvl-tdx_quote");
    const COLLATERAL: &str = include_str!("../testdata/dcap-qvl-tdx_quote_collateral.json");
    /// 2025-06-20T00:00Z: inside the sample collateral's validity.
    const STORED_NOW: u64 = 1_750_377_600;

    fn collateral() -> Collateral {
        Collateral::from_json(COLLATERAL).unwrap()
    }

    fn reason(verdict: &QuoteVerdict) -> Option<RejectReason> {
        match verdict {
            QuoteVerdict::Rejected { reason, .. } => Some(*reason),
            QuoteVerdict::Verified { .. } => None,
        }
    }

    #[test]
    fn sample_is_up_to_date_at_stored_time() {
        let verdict = verify_quote(QUOTE, &collateral(), STORED_NOW);
        assert_eq!(
            verdict,
            QuoteVerdict::Verified {
                tcb_status: "UpToDate".to_owned(),
                advisory_ids: vec![]
            }
        );
        assert!(verdict.is_up_to_date());
    }

    #[test]
    fn sample_collateral_is_expired_later_and_not_valid_earlier() {
        // 2027-01-01: the CRLs' nextUpdate has passed.
        let verdict = verify_quote(QUOTE, &collateral(), 1_798_761_600);
        assert_eq!(
            reason(&verdict),
            Some(RejectReason::CollateralTime),
            "{verdict:?}"
        );
        let verdict = verify_quote(QUOTE, &collateral(), 1_700_000_000);
        assert_eq!(
            reason(&verdict),
            Some(RejectReason::CollateralTime),
            "{verdict:?}"
        );
    }

    #[test]
    fn tampered_byte_classes_are_rejected_with_reason() {
        let cases = [
            ("body", 0x100, RejectReason::QuoteSignature),
            ("quote signature", 0x27C + 5, RejectReason::QuoteSignature),
            ("attestation key", 0x2BC + 3, RejectReason::QeReportBinding),
            ("QE report", 0x302 + 10, RejectReason::QeReportSignature),
            (
                "QE report signature",
                0x482 + 5,
                RejectReason::QeReportSignature,
            ),
            ("QE auth data", 0x4C4 + 1, RejectReason::QeReportBinding),
            ("PCK chain", 0x4EA + 200, RejectReason::CertificateChain),
            (
                "PCK chain signature",
                0x4EA + 1500,
                RejectReason::CertificateChain,
            ),
        ];
        let collateral = collateral();
        for (name, offset, expected) in cases {
            let mut quote = QUOTE.to_vec();
            quote[offset] ^= 1;
            let verdict = verify_quote(&quote, &collateral, STORED_NOW);
            assert_eq!(reason(&verdict), Some(expected), "{name}: {verdict:?}");
        }
    }

    #[test]
    fn other_root_rejects_intel_chain() {
        // The GCP-style root of another vendor is not in the chain: use the leaf's own bytes as a
        // bogus root (any DER that is not Intel's root).
        let verdict =
            insecure_verify_quote_with_root(QUOTE, &collateral(), STORED_NOW, b"not a certificate");
        assert!(reason(&verdict).is_some(), "{verdict:?}");
    }

    #[test]
    fn bad_collateral_json_is_an_error() {
        assert!(matches!(
            Collateral::from_json("{}"),
            Err(QuoteVerifyError::ParseCollateral { .. })
        ));
    }
}
