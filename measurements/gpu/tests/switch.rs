//! NVSwitch (LS10) evidence from NVIDIA's NVAT test data (`testdata/nvat_serialized_evidence/
//! {switch_evidence_ls10,multi_switch_ls10}.json`) against the switch BIOS RIMs of
//! `testdata/nvat_rims/`: the valid set passes, every tampering is named.

#[cfg(test)]
mod tests {
    use nv_verify::certs::ChainError;
    use nv_verify::evidence::parse_nvat_json;
    use nv_verify::report::{OpaqueError, Pdi, ReportError, SwitchReport};
    use nv_verify::rim::RimError;
    use nv_verify::topology::{GpuTopology, SwitchTopology, TopologyFailure, check_topology};
    use nv_verify::{
        CertStatus, DeviceKind, Failure, FixedRims, GpuEvidence, MeasurementResult, OcspMode,
        RimBundle, RimKind, SwitchArch, UnixTime, VerifyOptions, verify_gpu, verify_switch,
    };

    /// 2026-06-01: inside the LS10 switch RIM signer window (2026-05-20..2028-05-19).
    const T_2026_06: u64 = 1_780_272_000;
    /// 2026-01-01: inside the window of the signer the tampered `_invalid_signature` RIM embeds
    /// (it expired 2026-05-20).
    const T_2026_01: u64 = 1_767_225_600;
    /// 2025-06-01: inside the window of the "HCC RIM L4 Signer" the tampered
    /// `_measurement_mismatch` RIM embeds (it expired 2025-12-13).
    const T_2025_06: u64 = 1_748_736_000;
    /// 2028-06-01: after the switch RIM signer expired.
    const T_2028_06: u64 = 1_843_430_400;
    const SWITCH_RIM_ID: &str = "NV_SWITCH_BIOS_5612_0002_890_9610550001";
    const SWITCH_RIM: &str = "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001.xml";
    const SWITCH_RIM_BAD_SIG: &str =
        "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_invalid_signature.xml";
    const SWITCH_RIM_MISMATCH: &str =
        "nvat_rims/NV_SWITCH_BIOS_5612_0002_890_9610550001_measurement_mismatch.xml";

    fn data(path: &str) -> Vec<u8> {
        std::fs::read(format!("{}/testdata/{path}", env!("CARGO_MANIFEST_DIR")))
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn switch_entry() -> (GpuEvidence, [u8; 32]) {
        let mut entries =
            parse_nvat_json(&data("nvat_serialized_evidence/switch_evidence_ls10.json")).unwrap();
        assert_eq!(entries.len(), 1);
        let entry = entries.remove(0);
        (entry.evidence, entry.nonce)
    }

    fn gpu_entry() -> (GpuEvidence, [u8; 32]) {
        let entry = parse_nvat_json(&data("nvat_serialized_evidence/hopper_evidence.json"))
            .unwrap()
            .remove(0);
        (entry.evidence, entry.nonce)
    }

    fn rim(path: &str) -> FixedRims {
        FixedRims {
            driver: None,
            vbios: Some(data(path)),
        }
    }

    fn options(nonce: [u8; 32], now: u64) -> VerifyOptions {
        VerifyOptions {
            nonce,
            now: UnixTime(now),
            ocsp: OcspMode::Skip,
        }
    }

    /// Offset of SPDM measurement block `index` (1-based) in the report: every LS10 block is
    /// 4 + 51 bytes and the record starts at 37 + 8.
    fn block_value_offset(index: usize) -> usize {
        37 + 8 + (index - 1) * 55 + 4 + 3
    }

    #[test]
    fn ls10_switch_with_its_bios_rim_passes() {
        let (evidence, nonce) = switch_entry();
        let verdict = verify_switch(&evidence, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(verdict.failures, vec![]);
        assert!(verdict.passed());
        let c = &verdict.claims;
        assert_eq!(c.arch, Some(SwitchArch::Ls10));
        assert_eq!(c.hwmodel.as_deref(), Some("LS_10 A01 FSP BROM"));
        assert!(c.report_parsed && c.nonce_match && c.signature_verified);
        assert_eq!(c.measurement_blocks, Some(31));
        assert_eq!(c.cert_chain, CertStatus::Valid);
        assert_eq!(
            c.fwid_match, None,
            "the sample switch report carries no FWID"
        );
        assert_eq!(c.bios_version.as_deref(), Some("96.10.55.00.01"));
        // DEVICE_PDI in raw byte order, as in the BROM certificate's serial 50203EB31AD9ED0008.
        assert_eq!(c.device_pdi, Some(Pdi(0x203e_b31a_d9ed_0008)));
        let gpu_pdis = c.gpu_pdis.as_ref().unwrap();
        assert_eq!(gpu_pdis.len(), 8);
        assert_eq!(gpu_pdis[0].to_string(), "40b9c6b3d748fd90");
        assert_eq!((c.position_id, c.lock_status), (Some(2), Some(1)));
        assert_eq!(c.bios_rim.id.as_deref(), Some(SWITCH_RIM_ID));
        assert!(c.bios_rim.fetched && c.bios_rim.signature_verified && c.bios_rim.version_match);
        assert_eq!(c.bios_rim.cert_chain, CertStatus::Valid);
        assert_eq!(c.bios_rim.active_measurements, 31);
        assert_eq!(c.measurement_result, MeasurementResult::Success);
        assert!(c.secure_boot && c.debug_disabled);
    }

    #[test]
    fn the_rim_is_looked_up_by_its_switch_bios_id() {
        let (evidence, nonce) = switch_entry();
        let mut bundle = RimBundle::default();
        bundle.insert(SWITCH_RIM_ID, data(SWITCH_RIM));
        assert_eq!(
            verify_switch(&evidence, &bundle, &options(nonce, T_2026_06)).failures,
            vec![]
        );
        let verdict = verify_switch(&evidence, &RimBundle::default(), &options(nonce, T_2026_06));
        assert_eq!(
            verdict.failures,
            vec![Failure::FindRim {
                kind: RimKind::SwitchBios,
                id: SWITCH_RIM_ID.into()
            }]
        );
        assert_eq!(
            verdict.claims.measurement_result,
            MeasurementResult::NotEvaluated
        );
        assert!(!verdict.claims.secure_boot);
    }

    #[test]
    fn every_report_of_the_multi_switch_file_passes() {
        let entries =
            parse_nvat_json(&data("nvat_serialized_evidence/multi_switch_ls10.json")).unwrap();
        assert_eq!(entries.len(), 4);
        for entry in &entries {
            let verdict = verify_switch(
                &entry.evidence,
                &rim(SWITCH_RIM),
                &options(entry.nonce, T_2026_06),
            );
            assert_eq!(verdict.failures, vec![]);
        }
    }

    #[test]
    fn tampered_rims_are_refused_at_the_signature_and_not_compared() {
        let (evidence, nonce) = switch_entry();
        for (path, now) in [
            (SWITCH_RIM_BAD_SIG, T_2026_01),
            (SWITCH_RIM_MISMATCH, T_2025_06),
        ] {
            let verdict = verify_switch(&evidence, &rim(path), &options(nonce, now));
            assert_eq!(
                verdict.failures,
                vec![Failure::VerifyRim {
                    kind: RimKind::SwitchBios,
                    id: SWITCH_RIM_ID.into(),
                    error: RimError::VerifyDigest,
                }],
                "{path}"
            );
            assert!(!verdict.claims.bios_rim.signature_verified);
            assert_eq!(
                verdict.claims.measurement_result,
                MeasurementResult::NotEvaluated
            );
            assert_eq!(
                verdict.failures[0].message(),
                format!(
                    "switch BIOS RIM {SWITCH_RIM_ID}: document digest does not match the signed \
                 DigestValue"
                )
            );
        }
    }

    #[test]
    fn an_expired_rim_signer_is_named() {
        let (evidence, nonce) = switch_entry();
        let verdict = verify_switch(&evidence, &rim(SWITCH_RIM), &options(nonce, T_2028_06));
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        assert!(matches!(
            &verdict.failures[0],
            Failure::VerifyRim {
                kind: RimKind::SwitchBios,
                error: RimError::VerifyChain(ChainError::CheckExpiry { index: 0, .. }),
                ..
            }
        ));
        assert_eq!(verdict.claims.bios_rim.cert_chain, CertStatus::Expired);
    }

    #[test]
    fn another_nonce_is_named() {
        let (evidence, _) = switch_entry();
        let verdict = verify_switch(&evidence, &rim(SWITCH_RIM), &options([0; 32], T_2026_06));
        assert_eq!(verdict.failures.len(), 1);
        assert_eq!(verdict.failures[0].code(), "CheckNonce");
        assert!(verdict.claims.signature_verified && !verdict.claims.nonce_match);
    }

    #[test]
    fn a_tampered_measurement_names_the_signature_and_the_index() {
        let (mut evidence, nonce) = switch_entry();
        // SPDM block 5 = RIM index 4.
        evidence.report[block_value_offset(5)] ^= 0x01;
        let verdict = verify_switch(&evidence, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(verdict.failures.len(), 2, "{:?}", verdict.failures);
        assert_eq!(verdict.failures[0], Failure::VerifyReportSignature);
        assert!(matches!(
            &verdict.failures[1],
            Failure::CompareMeasurement {
                index: 4,
                source_rim: RimKind::SwitchBios,
                ..
            }
        ));
        assert!(
            verdict.failures[1]
                .message()
                .starts_with("switch BIOS RIM index 4: runtime value")
        );
        assert_eq!(
            verdict.claims.measurement_result,
            MeasurementResult::Mismatch
        );
    }

    #[test]
    fn a_flipped_signature_or_nonce_byte_fails_the_signature() {
        let (evidence, nonce) = switch_entry();
        let mut bad_sig = evidence.clone();
        let last = bad_sig.report.len() - 1;
        bad_sig.report[last] ^= 0x80;
        let verdict = verify_switch(&bad_sig, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(verdict.failures, vec![Failure::VerifyReportSignature]);

        let mut bad_nonce = evidence;
        bad_nonce.report[4] ^= 0x01;
        let verdict = verify_switch(&bad_nonce, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        let codes: Vec<&str> = verdict.failures.iter().map(Failure::code).collect();
        assert_eq!(codes, ["VerifyReportSignature", "CheckNonce"]);
    }

    #[test]
    fn a_broken_chain_is_named() {
        let (evidence, nonce) = switch_entry();
        let pem = String::from_utf8(evidence.cert_chain.clone()).unwrap();
        let blocks: Vec<&str> = pem
            .split_inclusive("-----END CERTIFICATE-----")
            .filter(|b| b.contains("BEGIN"))
            .collect();
        assert_eq!(blocks.len(), 5);
        // Drop the provisioner ICA (certificate 2).
        let dropped: String = blocks
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != 2)
            .map(|(_, b)| *b)
            .collect();
        let broken = GpuEvidence {
            cert_chain: dropped.into_bytes(),
            ..evidence
        };
        let verdict = verify_switch(&broken, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(verdict.failures.len(), 1, "{:?}", verdict.failures);
        assert!(matches!(
            verdict.failures[0],
            Failure::VerifyDeviceChain(ChainError::CheckIssuer { index: 1 })
        ));
        assert_eq!(verdict.claims.cert_chain, CertStatus::Invalid);
    }

    #[test]
    fn a_switch_report_with_a_gpu_chain_is_the_wrong_kind() {
        let (switch, nonce) = switch_entry();
        let (gpu, _) = gpu_entry();
        let mixed = GpuEvidence {
            cert_chain: gpu.cert_chain,
            ..switch
        };
        let verdict = verify_switch(&mixed, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(
            verdict.failures,
            vec![
                Failure::CheckDeviceKind {
                    expected: DeviceKind::Switch,
                    found: DeviceKind::Gpu,
                    by: "leaf certificate"
                },
                Failure::VerifyReportSignature,
            ]
        );
    }

    #[test]
    fn gpu_evidence_is_refused_as_switch_evidence() {
        let (gpu, nonce) = gpu_entry();
        let verdict = verify_switch(&gpu, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(
            verdict.failures,
            vec![
                Failure::CheckDeviceKind {
                    expected: DeviceKind::Switch,
                    found: DeviceKind::Gpu,
                    by: "arch field"
                },
                Failure::CheckDeviceKind {
                    expected: DeviceKind::Switch,
                    found: DeviceKind::Gpu,
                    by: "leaf certificate"
                },
            ]
        );
        assert_eq!(
            verdict.failures[0].message(),
            "expected NVSwitch evidence, but its arch field names a GPU"
        );
        // Unlabelled switch evidence given to the GPU verifier is caught by its leaf.
        let (mut switch, nonce) = switch_entry();
        switch.arch = None;
        let verdict = verify_gpu(&switch, &FixedRims::default(), &options(nonce, T_2026_06));
        assert_eq!(
            verdict.failures,
            vec![Failure::CheckDeviceKind {
                expected: DeviceKind::Gpu,
                found: DeviceKind::Switch,
                by: "leaf certificate"
            }]
        );
    }

    #[test]
    fn an_unknown_switch_arch_is_refused() {
        let (mut switch, nonce) = switch_entry();
        switch.arch = Some("LR10".into());
        let verdict = verify_switch(&switch, &rim(SWITCH_RIM), &options(nonce, T_2026_06));
        assert_eq!(
            verdict.failures,
            vec![Failure::CheckArchitecture {
                arch: "LR10".into()
            }]
        );
    }

    #[test]
    fn a_gpu_rim_given_for_the_switch_is_another_version() {
        let (evidence, nonce) = switch_entry();
        let verdict = verify_switch(
            &evidence,
            &rim("nvat_rims/NV_GPU_DRIVER_GH100_550.144.03.xml"),
            &options(nonce, T_2026_06),
        );
        assert_eq!(
            verdict.failures,
            vec![Failure::CheckRimVersion {
                kind: RimKind::SwitchBios,
                rim: "550.144.03".into(),
                report: "96.10.55.00.01".into(),
            }]
        );
    }

    #[test]
    fn switch_report_parser_is_exact_and_fails_closed() {
        let (evidence, _) = switch_entry();
        let report = SwitchReport::parse(&evidence.report).unwrap();
        assert_eq!(report.block_count, 31);
        assert_eq!(report.measurements.len(), 31);
        assert_eq!(report.opaque.bios_rim_id(), SWITCH_RIM_ID);
        assert_eq!(report.opaque.gpu_ports.as_ref().map(Vec::len), Some(64));
        // One byte short or long: the length equation.
        let len = evidence.report.len();
        assert!(matches!(
            SwitchReport::parse(&evidence.report[..len - 1]),
            Err(ReportError::CheckLength { .. })
        ));
        let mut longer = evidence.report.clone();
        longer.push(0);
        assert!(matches!(
            SwitchReport::parse(&longer),
            Err(ReportError::CheckLength { .. })
        ));
        // The GPU parser refuses the switch opaque data (no DRIVER_VERSION).
        assert!(matches!(
            nv_verify::report::AttestationReport::parse(&evidence.report),
            Err(ReportError::ParseOpaque(OpaqueError::FindField {
                name: "DRIVER_VERSION"
            }))
        ));
        // An unknown switch opaque id (28) in place of DISABLED_PORTS (23) fails closed.
        let opaque_start = 37 + 8 + 31 * 55 + 32 + 2;
        let mut offset = opaque_start;
        while u16::from_le_bytes([evidence.report[offset], evidence.report[offset + 1]]) != 23 {
            let field_len = usize::from(u16::from_le_bytes([
                evidence.report[offset + 2],
                evidence.report[offset + 3],
            ]));
            offset += 4 + field_len;
        }
        let mut unknown = evidence.report.clone();
        unknown[offset] = 28;
        assert_eq!(
            SwitchReport::parse(&unknown),
            Err(ReportError::ParseOpaque(OpaqueError::CheckFieldId {
                id: 28
            }))
        );
        // Every prefix is refused without a panic.
        for end in 0..len {
            SwitchReport::parse(&evidence.report[..end]).unwrap_err();
        }
    }

    #[test]
    fn the_public_multi_device_vectors_are_not_a_ppcie_board() {
        // 4 GPUs and one switch's report four times: the topology names each shortfall.
        let gpus: Vec<GpuTopology> =
            parse_nvat_json(&data("nvat_serialized_evidence/multi_gpu_hopper.json"))
                .unwrap()
                .iter()
                .map(|e| {
                    let v = verify_gpu(
                        &e.evidence,
                        &FixedRims::default(),
                        &options(e.nonce, T_2026_06),
                    );
                    GpuTopology::from(&v.claims)
                })
                .collect();
        let switches: Vec<SwitchTopology> =
            parse_nvat_json(&data("nvat_serialized_evidence/multi_switch_ls10.json"))
                .unwrap()
                .iter()
                .map(|e| {
                    let v =
                        verify_switch(&e.evidence, &rim(SWITCH_RIM), &options(e.nonce, T_2026_06));
                    SwitchTopology::from(&v.claims)
                })
                .collect();
        assert_eq!(gpus.len(), 4);
        // Each GPU's 18 links reach the same 4 switches (little-endian).
        let verdict = check_topology(&gpus, &switches);
        assert_eq!(
            verdict
                .gpu_switches
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            [
                "03dba23b3c11bd8a",
                "3a53b743d811e977",
                "666e93e19dec7d2d",
                "9ae3beba9e673275"
            ]
        );
        let switch_pdi = Pdi(0x203e_b31a_d9ed_0008);
        let mut expected = vec![TopologyFailure::CheckGpuCount { actual: 4 }];
        for switch in 0..4 {
            expected.push(TopologyFailure::CheckSwitchDevicePdi {
                switch,
                pdi: switch_pdi,
                gpu_switches: verdict.gpu_switches.clone(),
            });
            if switch > 0 {
                expected.push(TopologyFailure::CheckSwitchDuplicate {
                    switch,
                    first: 0,
                    pdi: switch_pdi,
                });
            }
            // The sample's last two GPU PDIs are equal: 7 distinct GPUs.
            expected.push(TopologyFailure::CheckSwitchGpuCount {
                switch,
                gpus: verdict.switch_gpus.clone(),
            });
        }
        assert_eq!(verdict.switch_gpus.len(), 7);
        assert_eq!(verdict.failures, expected);
    }

    #[test]
    fn the_system_call_refuses_ppcie_without_switches_and_names_the_topology_with_them() {
        use nv_verify::pci::PciInventory;
        use nv_verify::policy::{
            AttestError, CcState, GateDecision, GateFailure, SystemInput, attest_system,
            attest_system_ppcie,
        };
        let gpu_document = data("nvat_serialized_evidence/multi_gpu_hopper.json");
        let switch_document = data("nvat_serialized_evidence/multi_switch_ls10.json");
        let (_, nonce) = gpu_entry();
        let addresses: Vec<String> = (0..4).map(|i| format!("0000:0{i}:00.0")).collect();
        let pci = PciInventory::from_devices(
            addresses.iter().map(|a| (a.as_str(), "0x10de", "0x030200")),
        );
        assert_eq!(pci.nvidia.len(), 4);
        let mut bundle = RimBundle::default();
        bundle.insert(SWITCH_RIM_ID, data(SWITCH_RIM));
        let input = SystemInput {
            gpu_policy: None,
            evidence_document: &gpu_document,
            nonce,
            cc_state: Some(CcState {
                environment: 2,
                cc_feature: 0,
                devtools_mode: 0,
                multi_gpu_mode: 1,
            }),
            pci: &pci,
            now: UnixTime(T_2026_06),
            ocsp: OcspMode::Skip,
            ocsp_responses: &[],
        };
        // The init's call: no switch evidence, PPCIe refused.
        let plain = attest_system(&input, &bundle).unwrap();
        assert_eq!(plain.gate.decision, GateDecision::Refuse);
        assert_eq!(plain.gate.failures[0], GateFailure::CheckPpcie);
        assert!(plain.switch_verdicts.is_empty() && plain.gate.topology.is_none());
        assert_eq!(plain.attestation_payload, None);

        // With the switches (their nonce is another one: every switch fails CheckNonce).
        let with = attest_system_ppcie(&input, Some(&switch_document), &bundle).unwrap();
        assert_eq!(with.gate.decision, GateDecision::Refuse);
        assert_eq!(with.switch_verdicts.len(), 4);
        assert!(!with.gate.failures.contains(&GateFailure::CheckPpcie));
        assert!(with.gate.failures.iter().any(|f| matches!(
            f,
            GateFailure::VerifySwitch {
                index: 0,
                failure: Failure::CheckNonce { .. }
            }
        )));
        assert!(with.gate.failures.contains(&GateFailure::CheckTopology(
            TopologyFailure::CheckGpuCount { actual: 4 }
        )));
        assert!(with.gate.topology.as_ref().is_some_and(|t| !t.passed()));
        assert_eq!(with.attestation_payload, None);

        // A switch document that does not parse is an error, not a pass.
        assert!(matches!(
            attest_system_ppcie(&input, Some(b"not json"), &bundle),
            Err(AttestError::ParseSwitchEvidence(_))
        ));
    }
}
