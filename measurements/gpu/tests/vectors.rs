//! Every vector folder of `shared/vectors/nvidia` (copied to `testdata/`) gives the verdict its
//! README states, at the stated verification time, with OCSP skipped; each tampering the spec
//! lists (§4) is rejected for the right reason.

#[cfg(test)]
mod tests {
    use nv_verify::certs::{self, ChainError};
    use nv_verify::policy::{CcState, GateDecision, GateFailure, GateInput, GpuPolicy};
    use nv_verify::report::{AttestationReport, OpaqueError, ReportError};
    use nv_verify::rim::{Rim, RimError};
    use nv_verify::{
        CertStatus, ChainKind, DeviceKind, Failure, FixedRims, GpuEvidence, MeasurementResult,
        OcspMode, OcspStatus, RimBundle, RimKind, UnixTime, VerifyOptions, verify_gpu,
    };

    /// 2024-06-01: inside every 2023/2024 RIM signer window.
    const T_2024_06: u64 = 1_717_200_000;
    /// 2025-06-01: the 535 folder's driver signer (from 2025-05-24) and VBIOS signer (to 2025-06-22).
    const T_2025_06: u64 = 1_748_736_000;
    /// 2026-01-01: after the 2023 RIM signers expired.
    const T_2026_01: u64 = 1_767_225_600;
    /// 2026-06-01: inside the LS10 switch RIM signer window.
    const T_2026_06: u64 = 1_780_272_000;

    const NONCE_545: &str = "4cff7f5380ead8fad8ec2c531c110aca4302a88f603792801a8ca29ee151af2e";
    const NONCE_535: &str = "27a328247bf7935c993341cf587be6f05986ccce4fe7ba2c54100bd616a58f66";
    const NONCE_931: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

    const DRIVER_545: &str = "hopper_2023_545/driver_rim_GH100_545.00_test.swidtag";
    const VBIOS_545_TEST: &str = "hopper_2023_545/vbios_rim_1010_0200_882_96005E0001_test.swidtag";
    const VBIOS_545_PROD: &str = "hopper_2023_545/vbios_rim_1010_0200_882_96005E0001_PROD.swidtag";

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn nonce(text: &str) -> [u8; 32] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    fn evidence(dir: &str) -> GpuEvidence {
        GpuEvidence {
            report: data(&format!("{dir}/attestation_report.bin")),
            cert_chain: data(&format!("{dir}/cert_chain.pem")),
            arch: None,
        }
    }

    fn rims(driver: Option<&str>, vbios: Option<&str>) -> FixedRims {
        FixedRims {
            driver: driver.map(data),
            vbios: vbios.map(data),
        }
    }

    fn options(nonce_hex: &str, now: u64) -> VerifyOptions {
        VerifyOptions {
            nonce: nonce(nonce_hex),
            now: UnixTime(now),
            ocsp: OcspMode::Skip,
        }
    }

    fn mismatch(index: u32, source_rim: RimKind) -> impl Fn(&Failure) -> bool {
        move |f| {
            matches!(f, Failure::CompareMeasurement { index: i, source_rim: s, .. }
                if *i == index && *s == source_rim)
        }
    }

    fn rim_failure(kind: RimKind, id: &str, error: RimError) -> Failure {
        Failure::VerifyRim {
            kind,
            id: id.into(),
            error,
        }
    }

    fn expired(subject_prefix: &str, not_after: u64) -> impl Fn(&Failure) -> bool + '_ {
        move |f| {
            matches!(f, Failure::VerifyRim { error: RimError::VerifyChain(ChainError::CheckExpiry { index: 0, subject, not_after: n }), .. }
                if subject.starts_with(subject_prefix) && *n == not_after)
        }
    }

    // ---- hopper_2023_545

    #[test]
    fn hopper_2023_545_passes_with_test_rims_in_2024() {
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &rims(Some(DRIVER_545), Some(VBIOS_545_TEST)),
            &options(NONCE_545, T_2024_06),
        );
        assert_eq!(verdict.failures, vec![]);
        let c = &verdict.claims;
        assert_eq!(c.measurement_result, MeasurementResult::Success);
        assert!(c.secure_boot && c.debug_disabled && c.signature_verified && c.nonce_match);
        assert_eq!(c.cert_chain, CertStatus::Valid);
        assert_eq!(c.fwid_match, None, "2023 firmware has no FWID field");
        assert_eq!(c.ocsp, OcspStatus::Skipped);
        assert_eq!(c.driver_version.as_deref(), Some("545.00"));
        assert_eq!(c.vbios_version.as_deref(), Some("96.00.5E.00.01"));
        assert_eq!(
            c.driver_rim.id.as_deref(),
            Some("NV_GPU_DRIVER_GH100_545.00")
        );
        assert_eq!(
            c.vbios_rim.id.as_deref(),
            Some("NV_GPU_VBIOS_1010_0200_882_96005E0001")
        );
        assert_eq!(c.driver_rim.active_measurements, 21);
        assert!(c.vbios_index_no_conflict);
        assert_eq!(c.hwmodel.as_deref(), Some("GH100 A01 GSP BROM"));
        assert_eq!(c.oemid.as_deref(), Some("5703"));
    }

    #[test]
    fn hopper_2023_545_prod_vbios_rim_mismatches_at_1_2_3_9() {
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &rims(Some(DRIVER_545), Some(VBIOS_545_PROD)),
            &options(NONCE_545, T_2024_06),
        );
        let indexes: Vec<u32> = verdict
            .failures
            .iter()
            .map(|f| match f {
                Failure::CompareMeasurement {
                    index,
                    source_rim: RimKind::Vbios,
                    ..
                } => *index,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(indexes, vec![1, 2, 3, 9]);
        assert_eq!(
            verdict.claims.measurement_result,
            MeasurementResult::Mismatch
        );
        assert!(!verdict.claims.secure_boot);
    }

    #[test]
    fn hopper_2023_545_fails_after_rim_signers_expired() {
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &rims(Some(DRIVER_545), Some(VBIOS_545_TEST)),
            &options(NONCE_545, T_2026_01),
        );
        assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
        // Driver signer expired 2025-06-26, VBIOS signer 2025-06-22.
        assert!(expired("CN=HCC RIM L4 Signer", 1_750_918_212)(
            &verdict.failures[0]
        ));
        assert!(expired("CN=HCC RIM L4 Signer", 1_750_585_134)(
            &verdict.failures[1]
        ));
        assert_eq!(verdict.claims.driver_rim.cert_chain, CertStatus::Expired);
        assert_eq!(
            verdict.claims.measurement_result,
            MeasurementResult::NotEvaluated
        );
    }

    // ---- nvat_hopper_535

    #[test]
    fn nvat_hopper_535_tampered_driver_rim_fails_at_the_digest() {
        let verdict = verify_gpu(
            &evidence("nvat_hopper_535"),
            &rims(
                Some("nvat_hopper_535/NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml"),
                Some("nvat_hopper_535/NV_GPU_VBIOS_1010_0200_882_96005E0001.swidtag"),
            ),
            &options(NONCE_535, T_2025_06),
        );
        assert_eq!(
            verdict.failures,
            vec![rim_failure(
                RimKind::Driver,
                "NV_GPU_DRIVER_GH100_535.86.09",
                RimError::VerifyDigest
            )]
        );
        // The production VBIOS RIM verified and all its golden values matched.
        assert!(verdict.claims.vbios_rim.signature_verified);
        assert_eq!(verdict.claims.vbios_rim.cert_chain, CertStatus::Valid);
        assert!(!verdict.claims.driver_rim.signature_verified);
    }

    #[test]
    fn nvat_hopper_535_signed_mismatch_vbios_rim_fails_at_index_9() {
        let verdict = verify_gpu(
            &evidence("nvat_hopper_535"),
            &rims(
                None,
                Some(
                    "nvat_hopper_535/NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml",
                ),
            ),
            &options(NONCE_535, T_2024_06),
        );
        assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
        assert_eq!(
            verdict.failures[0],
            Failure::FindRim {
                kind: RimKind::Driver,
                id: "NV_GPU_DRIVER_GH100_535.86.09".into()
            }
        );
        assert!(mismatch(9, RimKind::Vbios)(&verdict.failures[1]));
    }

    #[test]
    fn nvat_hopper_535_zero_nonce_is_a_nonce_mismatch() {
        let verdict = verify_gpu(
            &evidence("nvat_hopper_535"),
            &rims(
                None,
                Some("nvat_hopper_535/NV_GPU_VBIOS_1010_0200_882_96005E0001.swidtag"),
            ),
            &options(&"00".repeat(32), T_2024_06),
        );
        assert_eq!(
            verdict.failures[0],
            Failure::CheckNonce {
                expected: "00".repeat(32),
                actual: NONCE_535.into()
            }
        );
        assert!(verdict.claims.signature_verified);
    }

    // ---- nvat_hopper_570_rimexpired

    #[test]
    fn nvat_hopper_570_rim_expired_and_tampered() {
        let verdict = verify_gpu(
            &evidence("nvat_hopper_570_rimexpired"),
            &rims(
                Some("nvat_hopper_570_rimexpired/NV_GPU_DRIVER_GH100_570.124.03_expired.xml"),
                None,
            ),
            &options(NONCE_931, T_2026_01),
        );
        assert_eq!(verdict.claims.fwid_match, Some(true));
        assert!(verdict.claims.signature_verified);
        assert_eq!(verdict.claims.cert_chain, CertStatus::Valid);
        assert_eq!(verdict.failures.len(), 3, "{:?}", verdict.failures);
        assert_eq!(
            verdict.failures[0],
            rim_failure(
                RimKind::Driver,
                "NV_GPU_DRIVER_GH100_570.124.03",
                RimError::VerifyDigest
            )
        );
        // Signer valid only 2025-01-01..2025-01-02.
        assert!(expired("CN=RIM L4 Signer", 1_735_776_000)(
            &verdict.failures[1]
        ));
        assert_eq!(verdict.claims.driver_rim.cert_chain, CertStatus::Expired);
        assert_eq!(
            verdict.failures[2],
            Failure::FindRim {
                kind: RimKind::Vbios,
                id: "NV_GPU_VBIOS_1010_0205_862_96005E0004".into()
            }
        );
    }

    // ---- nvat_hopper_invalid_sig

    #[test]
    fn nvat_hopper_invalid_sig_fails_signature_and_fwid() {
        let verdict = verify_gpu(
            &evidence("nvat_hopper_invalid_sig"),
            &FixedRims::default(),
            &options(NONCE_931, T_2026_01),
        );
        assert_eq!(verdict.failures[0], Failure::VerifyReportSignature);
        assert!(matches!(verdict.failures[1], Failure::CheckFwid { .. }));
        assert_eq!(verdict.claims.driver_version.as_deref(), Some("560.00"));
        assert_eq!(
            verdict.claims.vbios_version.as_deref(),
            Some("96.00.A5.00.01")
        );
    }

    // ---- nvat_serialized_evidence

    #[test]
    fn nvat_serialized_gpu_evidence_verifies_up_to_the_missing_rims() {
        for (file, count, driver) in [
            ("evidence_hopper_590_12.json", 1, "590.12"),
            ("hopper_evidence.json", 1, "590.12"),
            ("hopper_evidence_cert_hold.json", 1, "570.86.10"),
            ("multi_gpu_hopper.json", 4, "590.12"),
        ] {
            let entries = nv_verify::evidence::parse_nvat_json(&data(&format!(
                "nvat_serialized_evidence/{file}"
            )))
            .unwrap();
            assert_eq!(entries.len(), count, "{file}");
            for entry in entries {
                let verdict = verify_gpu(
                    &entry.evidence,
                    &FixedRims::default(),
                    &VerifyOptions {
                        nonce: entry.nonce,
                        now: UnixTime(T_2026_01),
                        ocsp: OcspMode::Skip,
                    },
                );
                let c = &verdict.claims;
                assert!(
                    c.signature_verified && c.nonce_match && c.report_parsed,
                    "{file}"
                );
                assert_eq!(c.cert_chain, CertStatus::Valid, "{file}");
                assert_eq!(c.fwid_match, Some(true), "{file}");
                assert_eq!(c.driver_version.as_deref(), Some(driver), "{file}");
                // No RIMs for these versions are bundled: exactly the two lookups fail.
                assert_eq!(verdict.failures.len(), 2, "{file}: {:?}", verdict.failures);
                assert!(
                    verdict
                        .failures
                        .iter()
                        .all(|f| matches!(f, Failure::FindRim { .. }))
                );
            }
        }
    }

    #[test]
    fn nvat_serialized_ppcie_evidence_is_flagged() {
        let entry = &nv_verify::evidence::parse_nvat_json(&data(
            "nvat_serialized_evidence/hopper_evidence.json",
        ))
        .unwrap()[0];
        let verdict = verify_gpu(
            &entry.evidence,
            &FixedRims::default(),
            &options(&hex::encode(entry.nonce), T_2026_01),
        );
        assert!(verdict.claims.protected_pcie);
        assert_eq!(verdict.claims.feature_flag, Some(2));
    }

    #[test]
    fn nvat_serialized_switch_evidence_is_refused_as_gpu_evidence_but_signed() {
        for file in ["switch_evidence_ls10.json", "multi_switch_ls10.json"] {
            for entry in nv_verify::evidence::parse_nvat_json(&data(&format!(
                "nvat_serialized_evidence/{file}"
            )))
            .unwrap()
            {
                let verdict = verify_gpu(
                    &entry.evidence,
                    &FixedRims::default(),
                    &VerifyOptions {
                        nonce: entry.nonce,
                        now: UnixTime(T_2026_01),
                        ocsp: OcspMode::Skip,
                    },
                );
                // Named as the wrong device kind, by the arch field and by the leaf.
                assert_eq!(
                    verdict.failures,
                    vec![
                        Failure::CheckDeviceKind {
                            expected: DeviceKind::Gpu,
                            found: DeviceKind::Switch,
                            by: "arch field"
                        },
                        Failure::CheckDeviceKind {
                            expected: DeviceKind::Gpu,
                            found: DeviceKind::Switch,
                            by: "leaf certificate"
                        },
                    ]
                );
                // Evidence-valid as the README says: chain and signature verify.
                assert!(verdict.claims.signature_verified && verdict.claims.nonce_match);
                assert_eq!(verdict.claims.cert_chain, CertStatus::Valid);
            }
        }
    }

    // ---- nvat_rims and rims_vbios_prod

    fn rim_verify(path: &str, now: u64) -> Vec<RimError> {
        let root = certs::parse_pem_cert(certs::CORIM_SIGNING_ROOT_PEM).unwrap();
        Rim::parse(&data(path))
            .unwrap()
            .verify(&root, UnixTime(now))
            .failures
    }

    #[test]
    fn nvat_rims_verdicts() {
        let rim = Rim::parse(&data("nvat_rims/NV_GPU_DRIVER_GH100_550.144.03.xml")).unwrap();
        assert_eq!(rim.version, "550.144.03");
        assert_eq!(rim.active().count(), 21);
        assert_eq!(
            rim_verify("nvat_rims/NV_GPU_DRIVER_GH100_550.144.03.xml", T_2026_01),
            vec![]
        );
        assert_eq!(
            rim_verify("nvat_rims/incorrect_signature_driver_rim.xml", T_2026_01),
            vec![RimError::VerifySignature]
        );
        // Signer issued by "L3 GH100 001 Debug Only" under "CoRIM L1 Root CA Debug Only":
        // the first link already breaks.
        assert_eq!(
            rim_verify("nvat_rims/incorrect_cert_chain_driver_rim.xml", T_2026_01),
            vec![RimError::VerifyChain(ChainError::CheckIssuer { index: 0 })]
        );
        assert_eq!(
            rim_verify(
                "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001.xml",
                T_2026_06
            ),
            vec![]
        );
        // Each tampered copy carries its own (older) signer; pin "now" inside its window.
        for (tampered, now) in [
            (
                "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml",
                T_2026_01,
            ),
            (
                "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml",
                T_2025_06,
            ),
        ] {
            assert_eq!(
                rim_verify(tampered, now),
                vec![RimError::VerifyDigest],
                "{tampered}"
            );
        }
    }

    #[test]
    fn debug_rim_root_is_never_a_trust_anchor() {
        let debug =
            certs::parse_pem_chain(&data("nvat_rims/incorrect_rim_root_debug.crt")).unwrap();
        let rim = Rim::parse(&data("nvat_rims/incorrect_cert_chain_driver_rim.xml")).unwrap();
        // Even a chain ending in the debug cert itself does not reach the pinned root.
        let root = certs::parse_pem_cert(certs::CORIM_SIGNING_ROOT_PEM).unwrap();
        let mut chain = rim.certificates().to_vec();
        chain.extend(debug);
        let result = certs::verify_chain(
            &chain,
            &root,
            certs::RIM_CHAIN_LEN,
            false,
            UnixTime(T_2026_01),
        );
        assert!(
            matches!(
                result,
                Err(ChainError::CheckIssuer { .. }
                    | ChainError::VerifySignature { .. }
                    | ChainError::CheckLength { .. })
            ),
            "{result:?}"
        );
    }

    #[test]
    fn rims_vbios_prod_all_verify_before_2025_06_and_expire_after() {
        let dir = format!("{}/testdata/rims_vbios_prod", env!("CARGO_MANIFEST_DIR"));
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let path = format!("rims_vbios_prod/{name}");
            assert_eq!(rim_verify(&path, T_2024_06), vec![], "{name}");
            let late = rim_verify(&path, T_2026_01);
            assert!(
                matches!(
                    late.as_slice(),
                    [RimError::VerifyChain(ChainError::CheckExpiry {
                        index: 0,
                        ..
                    })]
                ),
                "{name}: {late:?}"
            );
            // The file name carries the version without dots.
            let rim = Rim::parse(&data(&path)).unwrap();
            let version = name.split('_').nth(3).unwrap();
            assert_eq!(rim.version.replace('.', ""), version, "{name}");
            count += 1;
        }
        assert_eq!(count, 24);
    }

    // ---- derived tamperings (spec §4)

    fn verdict_545(report: Vec<u8>, chain: Vec<u8>) -> Vec<Failure> {
        verify_gpu(
            &GpuEvidence {
                report,
                cert_chain: chain,
                arch: None,
            },
            &rims(Some(DRIVER_545), Some(VBIOS_545_TEST)),
            &options(NONCE_545, T_2024_06),
        )
        .failures
    }

    fn report_545() -> Vec<u8> {
        data("hopper_2023_545/attestation_report.bin")
    }

    fn chain_545() -> Vec<u8> {
        data("hopper_2023_545/cert_chain.pem")
    }

    /// Offset of the opaque TLV with `id` (its header) in the report.
    fn opaque_field(report: &[u8], id: u16) -> usize {
        let l1 =
            usize::from(report[42]) | usize::from(report[43]) << 8 | usize::from(report[44]) << 16;
        let len_at = 37 + 8 + l1 + 32;
        let l2 = usize::from(u16::from_le_bytes([report[len_at], report[len_at + 1]]));
        let mut offset = len_at + 2;
        while offset < len_at + 2 + l2 {
            let field = u16::from_le_bytes([report[offset], report[offset + 1]]);
            let len = usize::from(u16::from_le_bytes([report[offset + 2], report[offset + 3]]));
            if field == id {
                return offset;
            }
            offset += 4 + len;
        }
        panic!("field {id} not found")
    }

    #[test]
    fn flipped_responder_nonce_byte_breaks_only_the_signature() {
        let mut report = report_545();
        report[37 + 8 + 3520 + 5] ^= 1;
        assert_eq!(
            verdict_545(report, chain_545()),
            vec![Failure::VerifyReportSignature]
        );
    }

    #[test]
    fn flipped_request_nonce_breaks_signature_and_nonce() {
        let mut report = report_545();
        report[10] ^= 0x80;
        let failures = verdict_545(report, chain_545());
        assert_eq!(failures[0], Failure::VerifyReportSignature);
        assert!(matches!(failures[1], Failure::CheckNonce { .. }));
        assert_eq!(failures.len(), 2);
    }

    #[test]
    fn report_with_another_devices_chain_fails_signature_and_fwid() {
        let failures = verify_gpu(
            &GpuEvidence {
                report: data("nvat_hopper_570_rimexpired/attestation_report.bin"),
                cert_chain: chain_545(),
                arch: None,
            },
            &FixedRims::default(),
            &options(NONCE_931, T_2026_01),
        )
        .failures;
        assert_eq!(failures[0], Failure::VerifyReportSignature);
        // The 2023 leaf has no TcbInfo FWID extension.
        assert!(matches!(
            failures[1],
            Failure::CheckFwid { .. } | Failure::FindCertificateFwid
        ));
    }

    fn pem_blocks(pem: &[u8]) -> Vec<String> {
        let text = String::from_utf8(pem.to_vec()).unwrap();
        text.split_inclusive("-----END CERTIFICATE-----")
            .filter(|b| b.contains("BEGIN"))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn dropped_intermediate_breaks_the_chain() {
        let mut blocks = pem_blocks(&chain_545());
        blocks.remove(2);
        let failures = verdict_545(report_545(), blocks.concat().into_bytes());
        assert_eq!(
            failures,
            vec![Failure::VerifyDeviceChain(ChainError::CheckIssuer {
                index: 1
            })]
        );
    }

    #[test]
    fn foreign_self_signed_root_is_refused() {
        let mut blocks = pem_blocks(&chain_545());
        blocks[4] = certs::CORIM_SIGNING_ROOT_PEM.to_owned();
        let failures = verdict_545(report_545(), blocks.concat().into_bytes());
        assert_eq!(
            failures,
            vec![Failure::VerifyDeviceChain(ChainError::CheckRoot)]
        );
    }

    #[test]
    fn truncated_or_extended_report_fails_the_length_equation() {
        let original = report_545();
        let mut short = original.clone();
        short.pop();
        assert_eq!(
            AttestationReport::parse(&short),
            Err(ReportError::CheckLength {
                expected: original.len(),
                actual: original.len() - 1
            })
        );
        let mut long = original.clone();
        long.push(0);
        assert_eq!(
            AttestationReport::parse(&long),
            Err(ReportError::CheckLength {
                expected: original.len(),
                actual: original.len() + 1
            })
        );
        let failures = verdict_545(long, chain_545());
        assert_eq!(failures[0], Failure::VerifyReportSignature);
        assert!(matches!(
            failures[1],
            Failure::ParseReport(ReportError::CheckLength { .. })
        ));
    }

    #[test]
    fn block_count_inconsistent_with_record_length_fails() {
        let mut report = report_545();
        report[37 + 4] = 63;
        assert_eq!(
            AttestationReport::parse(&report),
            Err(ReportError::CheckBlockCount {
                blocks: 63,
                used: 63 * 55,
                record: 3520
            })
        );
    }

    #[test]
    fn measurement_spec_zero_fails() {
        let mut report = report_545();
        report[37 + 8 + 1] = 0;
        assert_eq!(
            AttestationReport::parse(&report),
            Err(ReportError::CheckMeasurementSpec { index: 1, spec: 0 })
        );
    }

    #[test]
    fn duplicate_block_index_fails() {
        let mut report = report_545();
        report[37 + 8 + 55] = 1;
        assert_eq!(
            AttestationReport::parse(&report),
            Err(ReportError::CheckDuplicateIndex { index: 1 })
        );
    }

    #[test]
    fn nvdaod_opaque_data_fails_closed() {
        let mut report = report_545();
        let first = 37 + 8 + 3520 + 32 + 2;
        assert!(opaque_field(&report, 3) >= first);
        report[first..first + 6].copy_from_slice(b"NVDAOD");
        assert_eq!(
            AttestationReport::parse(&report),
            Err(ReportError::ParseOpaque(OpaqueError::CheckFormat))
        );
    }

    #[test]
    fn unknown_opaque_id_fails_closed() {
        let mut report = report_545();
        let at = opaque_field(&report, 14);
        report[at] = 40;
        assert_eq!(
            AttestationReport::parse(&report),
            Err(ReportError::ParseOpaque(OpaqueError::CheckFieldId {
                id: 40
            }))
        );
    }

    #[test]
    fn index_35_is_compared_only_when_nvdec0_is_enabled() {
        // RIM index 35 = SPDM block 36, value at record offset 35 * 55 + 7.
        let mut report = report_545();
        report[37 + 8 + 35 * 55 + 7] ^= 0xff;
        // NVDEC0 disabled (0x55) in this report: index 35 is skipped.
        assert_eq!(
            verdict_545(report.clone(), chain_545()),
            vec![Failure::VerifyReportSignature]
        );
        let at = opaque_field(&report, 11);
        assert_eq!(report[at + 4], 0x55);
        report[at + 4] = 0xAA;
        let failures = verdict_545(report, chain_545());
        assert_eq!(failures.len(), 2);
        assert!(mismatch(35, RimKind::Driver)(&failures[1]));
    }

    #[test]
    fn edited_golden_value_fails_the_rim_digest() {
        let text = String::from_utf8(data(DRIVER_545)).unwrap();
        let at = text.find("active=\"True\"").unwrap();
        let hash_at = at + text[at..].find("Hash0=\"").unwrap() + 7;
        let mut bytes = text.into_bytes();
        bytes[hash_at] = if bytes[hash_at] == b'0' { b'1' } else { b'0' };
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &FixedRims {
                driver: Some(bytes),
                vbios: Some(data(VBIOS_545_TEST)),
            },
            &options(NONCE_545, T_2024_06),
        );
        assert_eq!(
            verdict.failures,
            vec![rim_failure(
                RimKind::Driver,
                "NV_GPU_DRIVER_GH100_545.00",
                RimError::VerifyDigest
            )]
        );
    }

    #[test]
    fn edited_signature_value_fails_the_rim_signature() {
        let text = String::from_utf8(data(VBIOS_545_TEST)).unwrap();
        let at = text.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len();
        let mut bytes = text.into_bytes();
        bytes[at + 3] = if bytes[at + 3] == b'A' { b'B' } else { b'A' };
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &FixedRims {
                driver: Some(data(DRIVER_545)),
                vbios: Some(bytes),
            },
            &options(NONCE_545, T_2024_06),
        );
        assert_eq!(
            verdict.failures,
            vec![rim_failure(
                RimKind::Vbios,
                "NV_GPU_VBIOS_1010_0200_882_96005E0001",
                RimError::VerifySignature
            )]
        );
    }

    #[test]
    fn rim_for_another_version_is_refused() {
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &rims(
                Some(DRIVER_545),
                Some("rims_vbios_prod/1010_0200_882_96005E0003_PROD.swidtag"),
            ),
            &options(NONCE_545, T_2024_06),
        );
        assert_eq!(
            verdict.failures,
            vec![Failure::CheckRimVersion {
                kind: RimKind::Vbios,
                rim: "96.00.5E.00.03".into(),
                report: "96.00.5E.00.01".into()
            }]
        );
    }

    #[test]
    fn ocsp_required_fails_offline() {
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &rims(Some(DRIVER_545), Some(VBIOS_545_TEST)),
            &VerifyOptions {
                ocsp: OcspMode::Require,
                ..options(NONCE_545, T_2024_06)
            },
        );
        assert_eq!(verdict.failures, vec![Failure::CheckRevocation]);
        assert_eq!(verdict.claims.ocsp, OcspStatus::Unavailable);
    }

    #[test]
    fn every_prefix_and_byte_flip_of_a_report_is_handled() {
        let report = report_545();
        for len in 0..report.len() {
            assert!(
                AttestationReport::parse(&report[..len]).is_err(),
                "prefix {len}"
            );
        }
        for i in (0..report.len()).step_by(7) {
            let mut r = report.clone();
            r[i] ^= 0x5a;
            let _ = AttestationReport::parse(&r);
        }
    }

    // ---- the gate over all GPUs (policy)

    fn cc_on() -> CcState {
        CcState {
            environment: 2,
            cc_feature: 1,
            devtools_mode: 0,
            multi_gpu_mode: 0,
        }
    }

    #[test]
    fn gate_opens_for_the_passing_vector_and_closes_on_cc_off() {
        let mut bundle = RimBundle::default();
        bundle.insert("NV_GPU_DRIVER_GH100_545.00", data(DRIVER_545));
        bundle.insert(
            "NV_GPU_VBIOS_1010_0200_882_96005E0001",
            data(VBIOS_545_TEST),
        );
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &bundle,
            &options(NONCE_545, T_2024_06),
        );
        let input = GateInput {
            pci_gpu_count: 1,
            foreign_display_devices: vec![],
            cc_state: Some(cc_on()),
        };
        let gate = GpuPolicy::strict().evaluate(&input, std::slice::from_ref(&verdict));
        assert_eq!(gate.decision, GateDecision::Ready);
        assert!(gate.failures.is_empty());
        let off = GateInput {
            cc_state: Some(CcState {
                cc_feature: 0,
                ..cc_on()
            }),
            ..input
        };
        let gate = GpuPolicy::strict().evaluate(&off, &[verdict]);
        assert_eq!(
            gate.failures,
            vec![GateFailure::CheckCcMode { cc_feature: 0 }]
        );
    }

    #[test]
    fn gate_refuses_ppcie_evidence_and_mismatched_measurements() {
        let entry = &nv_verify::evidence::parse_nvat_json(&data(
            "nvat_serialized_evidence/hopper_evidence.json",
        ))
        .unwrap()[0];
        let ppcie = verify_gpu(
            &entry.evidence,
            &FixedRims::default(),
            &VerifyOptions {
                nonce: entry.nonce,
                now: UnixTime(T_2026_01),
                ocsp: OcspMode::Skip,
            },
        );
        let input = GateInput {
            pci_gpu_count: 1,
            foreign_display_devices: vec![],
            cc_state: Some(cc_on()),
        };
        let gate = GpuPolicy::strict().evaluate(&input, &[ppcie]);
        assert_eq!(gate.decision, GateDecision::Refuse);
        assert_eq!(gate.failures[0], GateFailure::CheckPpcie);
        let prod = verify_gpu(
            &evidence("hopper_2023_545"),
            &rims(Some(DRIVER_545), Some(VBIOS_545_PROD)),
            &options(NONCE_545, T_2024_06),
        );
        let gate = GpuPolicy::strict().evaluate(&input, &[prod]);
        let codes: Vec<String> = gate.failures.iter().map(ToString::to_string).collect();
        assert_eq!(gate.failures.len(), 6, "{codes:?}");
        assert_eq!(gate.failures[4], GateFailure::CheckSecureBoot { index: 0 });
        assert_eq!(gate.failures[5], GateFailure::CheckDebug { index: 0 });
    }

    #[test]
    fn rim_prefixes_and_byte_flips_never_panic_and_never_verify() {
        let root = certs::parse_pem_cert(certs::CORIM_SIGNING_ROOT_PEM).unwrap();
        let rim = data(DRIVER_545);
        for len in (0..rim.len()).step_by(97) {
            assert!(Rim::parse(&rim[..len]).is_err(), "prefix {len}");
        }
        // Every byte before <ds:Signature> is covered by the document digest.
        let signed_end = String::from_utf8_lossy(&rim).find("<ds:Signature").unwrap();
        for i in (0..signed_end).step_by(113) {
            let mut flipped = rim.clone();
            flipped[i] ^= 0x01;
            if let Ok(parsed) = Rim::parse(&flipped) {
                let result = parsed.verify(&root, UnixTime(T_2024_06));
                assert!(!result.failures.is_empty(), "offset {i}");
            }
        }
    }

    #[test]
    fn stapled_mode_needs_a_good_response_for_every_non_root_certificate() {
        let verdict = nv_verify::verify_gpu_with_ocsp(
            &evidence("hopper_2023_545"),
            &rims(Some(DRIVER_545), Some(VBIOS_545_TEST)),
            &VerifyOptions {
                ocsp: OcspMode::Stapled { allow_hold: false },
                ..options(NONCE_545, T_2024_06)
            },
            &[b"not an OCSP response".to_vec()],
        );
        let expected: Vec<(ChainKind, usize)> = [
            (ChainKind::Device, 1),
            (ChainKind::Device, 2),
            (ChainKind::Device, 3),
            (ChainKind::DriverRim, 0),
            (ChainKind::DriverRim, 1),
            (ChainKind::DriverRim, 2),
            (ChainKind::VbiosRim, 0),
            (ChainKind::VbiosRim, 1),
            (ChainKind::VbiosRim, 2),
        ]
        .to_vec();
        let actual: Vec<(ChainKind, usize)> = verdict
            .failures
            .iter()
            .map(|f| match f {
                Failure::VerifyRevocation {
                    chain,
                    index,
                    error: nv_verify::ocsp::OcspError::FindResponse,
                } => (*chain, *index),
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(actual, expected);
        assert_eq!(verdict.claims.ocsp, OcspStatus::Failed);
        // RIMs without revocation status are not used for the comparison.
        assert_eq!(
            verdict.claims.measurement_result,
            MeasurementResult::NotEvaluated
        );
    }

    #[test]
    fn attest_system_gives_the_init_everything_in_one_call() {
        use nv_verify::evidence::SerializedEvidence;
        use nv_verify::pci::PciInventory;
        use nv_verify::policy::{SystemInput, attest_system};

        let nonce = nonce(NONCE_545);
        let entry = SerializedEvidence::new(
            "HOPPER",
            &nonce,
            &data("hopper_2023_545/attestation_report.bin"),
            &data("hopper_2023_545/cert_chain.pem"),
        );
        let document = serde_json::to_vec(&[entry]).unwrap();
        let pci = PciInventory::from_devices([("0000:41:00.0", "0x10de", "0x030200")]);
        let mut bundle = RimBundle::default();
        bundle.insert("NV_GPU_DRIVER_GH100_545.00", data(DRIVER_545));
        bundle.insert(
            "NV_GPU_VBIOS_1010_0200_882_96005E0001",
            data(VBIOS_545_TEST),
        );
        let policy = serde_json::json!({"attest_gpu": true});
        let input = SystemInput {
            gpu_policy: Some(&policy),
            evidence_document: &document,
            nonce,
            cc_state: Some(cc_on()),
            pci: &pci,
            now: UnixTime(T_2024_06),
            ocsp: OcspMode::Skip,
            ocsp_responses: &[],
        };
        let result = attest_system(&input, &bundle).unwrap();
        assert_eq!(result.gate.decision, GateDecision::Ready);
        assert_eq!(
            result.policy_hash,
            nv_verify::policy::gpu_policy_hash(Some(&policy))
        );
        let payload = String::from_utf8(result.attestation_payload.unwrap()).unwrap();
        let sha = {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(&document))
        };
        assert_eq!(
            payload,
            format!(
                "{{\"version\":2,\"provider\":\"nvidia\",\"devices\":1,\"cc_mode\":\"on\",\
                 \"devtools\":false,\"evidence_sha256\":\"{sha}\",\"ocsp\":\"skipped\"}}"
            )
        );
        // A replayed report (another nonce) closes the gate and yields no payload.
        let replay = attest_system(
            &SystemInput {
                nonce: [9; 32],
                ..input.clone()
            },
            &bundle,
        )
        .unwrap();
        assert_eq!(replay.gate.decision, GateDecision::Refuse);
        assert_eq!(replay.attestation_payload, None);
        // No GPU on the bus: nothing to verify, policy hash still computed.
        let empty = PciInventory::default();
        let none = attest_system(
            &SystemInput {
                pci: &empty,
                gpu_policy: None,
                ..input
            },
            &bundle,
        )
        .unwrap();
        assert_eq!(none.gate.decision, GateDecision::NoGpus);
        assert_eq!(
            hex::encode(none.policy_hash),
            "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn dstack_nvattest_output_names_the_claims_this_verifier_mirrors() {
        // The dstack fixture is nvattest's unsigned (alg "none") claims output: no evidence to
        // verify. Check that every gate-relevant claim it carries has a counterpart here.
        let json: serde_json::Value =
            serde_json::from_slice(&data("dstack/nvattest_output_h100_580.json")).unwrap();
        let claims = &json["claims"][0];
        let verdict = verify_gpu(
            &evidence("hopper_2023_545"),
            &FixedRims::default(),
            &options(NONCE_545, T_2024_06),
        );
        let ours_json = serde_json::to_value(&verdict.claims).unwrap();
        for (nvattest, ours) in [
            ("measres", "measurement_result"),
            ("secboot", "secure_boot"),
            ("dbgstat", "debug_disabled"),
            ("hwmodel", "hwmodel"),
            ("ueid", "ueid"),
            ("oemid", "oemid"),
            ("x-nvidia-gpu-arch-check", "arch"),
            ("x-nvidia-gpu-attestation-report-parsed", "report_parsed"),
            ("x-nvidia-gpu-attestation-report-nonce-match", "nonce_match"),
            (
                "x-nvidia-gpu-attestation-report-signature-verified",
                "signature_verified",
            ),
            (
                "x-nvidia-gpu-attestation-report-cert-chain-fwid-match",
                "fwid_match",
            ),
            ("x-nvidia-gpu-attestation-report-cert-chain", "cert_chain"),
            ("x-nvidia-gpu-driver-rim-cert-chain", "driver_rim"),
            (
                "x-nvidia-gpu-vbios-index-no-conflict",
                "vbios_index_no_conflict",
            ),
            ("x-nvidia-gpu-driver-version", "driver_version"),
            ("x-nvidia-gpu-vbios-version", "vbios_version"),
        ] {
            assert!(
                !claims[nvattest].is_null(),
                "{nvattest} missing in the fixture"
            );
            assert!(ours_json.get(ours).is_some(), "{ours} missing in GpuClaims");
        }
        assert_eq!(claims["measres"], "success");
        assert_eq!(json["result_code"], 0);
    }
}
