//! The protected-PCIe (PPCIe) topology check over one HGX board's reports (spec §2, step 4):
//! exactly 8 GPU and 4 NVSwitch reports; every GPU in PPCIe (PROTECTED_PCIE_STATUS 0xAA,
//! FEATURE_FLAG 2); each GPU's non-zero SWITCH_PDI entries (little-endian) form a set of 4 that is
//! the same on every GPU; each switch's DEVICE_PDI is in that set; the first 8 SWITCH_GPU_PDIS
//! entries of each switch are 8 distinct values, the same on every switch.
//!
//! Two rules go beyond NVIDIA's reference (`ppcie-verifier`): the 4 switches must have 4
//! different DEVICE_PDIs (otherwise one switch's report given four times would pass), and a zero
//! GPU PDI on a switch does not count as a GPU.
//!
//! A pure function of the signed fields: the caller takes them from verdicts whose signatures,
//! chains and RIMs were checked (the gate does so, and refuses on any verification failure).

use std::collections::BTreeSet;

use serde::Serialize;
use thiserror::Error;

use crate::report::Pdi;
use crate::verify::{GpuClaims, SwitchClaims};

/// GPUs on a PPCIe HGX board.
pub const PPCIE_GPUS: usize = 8;
/// NVSwitches on a PPCIe HGX board.
pub const PPCIE_SWITCHES: usize = 4;
/// FEATURE_FLAG value of PPCIe (the one value both NVIDIA references agree on).
pub const FEATURE_FLAG_PPCIE: u64 = 2;

/// The topology fields of one GPU report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GpuTopology {
    /// PROTECTED_PCIE_STATUS: `Some(true)` = 0xAA.
    pub protected_pcie: Option<bool>,
    /// FEATURE_FLAG.
    pub feature_flag: Option<u64>,
    /// SWITCH_PDI entries (little-endian; zero = disabled link).
    pub switch_pdis: Option<Vec<Pdi>>,
}

impl From<&GpuClaims> for GpuTopology {
    fn from(claims: &GpuClaims) -> Self {
        Self {
            // The claims keep only "0xAA or not"; a report without the field is not PPCIe.
            protected_pcie: claims.report_parsed.then_some(claims.protected_pcie),
            feature_flag: claims.feature_flag,
            switch_pdis: claims.switch_pdis.clone(),
        }
    }
}

/// The topology fields of one NVSwitch report.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SwitchTopology {
    /// DEVICE_PDI.
    pub device_pdi: Option<Pdi>,
    /// The first 8 SWITCH_GPU_PDIS entries.
    pub gpu_pdis: Option<Vec<Pdi>>,
}

impl From<&SwitchClaims> for SwitchTopology {
    fn from(claims: &SwitchClaims) -> Self {
        Self {
            device_pdi: claims.device_pdi,
            gpu_pdis: claims.gpu_pdis.clone(),
        }
    }
}

fn list(pdis: &[Pdi]) -> String {
    let items: Vec<String> = pdis.iter().map(Pdi::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// One reason the topology does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopologyFailure {
    /// Not 8 GPU reports.
    #[error("{actual} GPU reports, PPCIe needs exactly {PPCIE_GPUS}")]
    CheckGpuCount { actual: usize },
    /// Not 4 switch reports.
    #[error("{actual} NVSwitch reports, PPCIe needs exactly {PPCIE_SWITCHES}")]
    CheckSwitchCount { actual: usize },
    /// A GPU's PROTECTED_PCIE_STATUS is not 0xAA.
    #[error("GPU {gpu}: PROTECTED_PCIE_STATUS is not 0xAA (PPCIe off or absent)")]
    CheckGpuPpcieStatus { gpu: usize },
    /// A GPU's FEATURE_FLAG is not 2 (PPCIe).
    #[error("GPU {gpu}: FEATURE_FLAG is {flag:?}, PPCIe is {FEATURE_FLAG_PPCIE}")]
    CheckGpuFeatureFlag { gpu: usize, flag: Option<u64> },
    /// A GPU report has no SWITCH_PDI field.
    #[error("GPU {gpu}: the report has no SWITCH_PDI field")]
    FindGpuSwitchPdis { gpu: usize },
    /// A GPU's non-zero SWITCH_PDI entries are not 4 distinct switches.
    #[error("GPU {gpu}: its NVLinks reach {} distinct switches {}, expected {PPCIE_SWITCHES}", .switches.len(), list(.switches))]
    CheckGpuSwitchCount { gpu: usize, switches: Vec<Pdi> },
    /// A GPU reaches other switches than the first GPU.
    #[error("GPU {gpu}: its switches {} differ from GPU {reference}'s {}", list(.actual), list(.expected))]
    CheckGpuSwitchSet {
        gpu: usize,
        reference: usize,
        expected: Vec<Pdi>,
        actual: Vec<Pdi>,
    },
    /// A switch report has no DEVICE_PDI field.
    #[error("switch {switch}: the report has no DEVICE_PDI field")]
    FindSwitchDevicePdi { switch: usize },
    /// A switch is not one the GPUs' NVLinks reach.
    #[error("switch {switch}: DEVICE_PDI {pdi} is not among the GPUs' switches {}", list(.gpu_switches))]
    CheckSwitchDevicePdi {
        switch: usize,
        pdi: Pdi,
        gpu_switches: Vec<Pdi>,
    },
    /// Two switch reports name the same switch.
    #[error(
        "switch {switch}: DEVICE_PDI {pdi} is the same as switch {first}'s (one switch reported twice)"
    )]
    CheckSwitchDuplicate {
        switch: usize,
        first: usize,
        pdi: Pdi,
    },
    /// A switch report has no SWITCH_GPU_PDIS field.
    #[error("switch {switch}: the report has no SWITCH_GPU_PDIS field")]
    FindSwitchGpuPdis { switch: usize },
    /// A switch's GPU PDIs are not 8 distinct non-zero values.
    #[error("switch {switch}: connects {} distinct GPUs {}, expected {PPCIE_GPUS}", .gpus.len(), list(.gpus))]
    CheckSwitchGpuCount { switch: usize, gpus: Vec<Pdi> },
    /// A switch connects other GPUs than the first switch.
    #[error("switch {switch}: its GPUs {} differ from switch {reference}'s {}", list(.actual), list(.expected))]
    CheckSwitchGpuSet {
        switch: usize,
        reference: usize,
        expected: Vec<Pdi>,
        actual: Vec<Pdi>,
    },
}

/// The topology verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopologyVerdict {
    /// The switches the GPUs reach (the first GPU's set that has a SWITCH_PDI field).
    pub gpu_switches: Vec<Pdi>,
    /// The GPUs the switches connect (the first switch's set).
    pub switch_gpus: Vec<Pdi>,
    /// Every failure (empty: the topology holds).
    #[serde(serialize_with = "serialize_topology_failures")]
    pub failures: Vec<TopologyFailure>,
}

impl TopologyVerdict {
    /// True when the topology holds.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn serialize_topology_failures<S: serde::Serializer>(
    failures: &[TopologyFailure],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(failures.iter().map(ToString::to_string))
}

/// Checks the PPCIe topology of `gpus` and `switches` (report order); every failure is listed.
pub fn check_topology(gpus: &[GpuTopology], switches: &[SwitchTopology]) -> TopologyVerdict {
    let mut failures = Vec::new();
    if gpus.len() != PPCIE_GPUS {
        failures.push(TopologyFailure::CheckGpuCount { actual: gpus.len() });
    }
    if switches.len() != PPCIE_SWITCHES {
        failures.push(TopologyFailure::CheckSwitchCount {
            actual: switches.len(),
        });
    }

    let mut reference: Option<(usize, BTreeSet<Pdi>)> = None;
    for (gpu, topology) in gpus.iter().enumerate() {
        if topology.protected_pcie != Some(true) {
            failures.push(TopologyFailure::CheckGpuPpcieStatus { gpu });
        }
        if topology.feature_flag != Some(FEATURE_FLAG_PPCIE) {
            failures.push(TopologyFailure::CheckGpuFeatureFlag {
                gpu,
                flag: topology.feature_flag,
            });
        }
        let Some(entries) = &topology.switch_pdis else {
            failures.push(TopologyFailure::FindGpuSwitchPdis { gpu });
            continue;
        };
        let set: BTreeSet<Pdi> = entries
            .iter()
            .copied()
            .filter(|p| !p.is_disabled())
            .collect();
        if set.len() != PPCIE_SWITCHES {
            failures.push(TopologyFailure::CheckGpuSwitchCount {
                gpu,
                switches: set.iter().copied().collect(),
            });
        }
        match &reference {
            None => reference = Some((gpu, set)),
            Some((first, expected)) if *expected != set => {
                failures.push(TopologyFailure::CheckGpuSwitchSet {
                    gpu,
                    reference: *first,
                    expected: expected.iter().copied().collect(),
                    actual: set.into_iter().collect(),
                });
            }
            Some(_) => {}
        }
    }
    let gpu_switches: BTreeSet<Pdi> = reference.map(|(_, set)| set).unwrap_or_default();

    let mut seen: Vec<(Pdi, usize)> = Vec::new();
    let mut switch_reference: Option<(usize, BTreeSet<Pdi>)> = None;
    for (switch, topology) in switches.iter().enumerate() {
        match topology.device_pdi {
            None => failures.push(TopologyFailure::FindSwitchDevicePdi { switch }),
            Some(pdi) => {
                if !gpu_switches.contains(&pdi) {
                    failures.push(TopologyFailure::CheckSwitchDevicePdi {
                        switch,
                        pdi,
                        gpu_switches: gpu_switches.iter().copied().collect(),
                    });
                }
                if let Some((_, first)) = seen.iter().find(|(p, _)| *p == pdi) {
                    failures.push(TopologyFailure::CheckSwitchDuplicate {
                        switch,
                        first: *first,
                        pdi,
                    });
                } else {
                    seen.push((pdi, switch));
                }
            }
        }
        let Some(entries) = &topology.gpu_pdis else {
            failures.push(TopologyFailure::FindSwitchGpuPdis { switch });
            continue;
        };
        let set: BTreeSet<Pdi> = entries
            .iter()
            .take(PPCIE_GPUS)
            .copied()
            .filter(|p| !p.is_disabled())
            .collect();
        if set.len() != PPCIE_GPUS {
            failures.push(TopologyFailure::CheckSwitchGpuCount {
                switch,
                gpus: set.iter().copied().collect(),
            });
        }
        match &switch_reference {
            None => switch_reference = Some((switch, set)),
            Some((first, expected)) if *expected != set => {
                failures.push(TopologyFailure::CheckSwitchGpuSet {
                    switch,
                    reference: *first,
                    expected: expected.iter().copied().collect(),
                    actual: set.into_iter().collect(),
                });
            }
            Some(_) => {}
        }
    }
    TopologyVerdict {
        gpu_switches: gpu_switches.into_iter().collect(),
        switch_gpus: switch_reference
            .map(|(_, set)| set.into_iter().collect())
            .unwrap_or_default(),
        failures,
    }
}

#[cfg(test)]
mod tests {
    //! Synthetic report fields: the public vectors hold 4 GPUs and one switch's report four
    //! times, not an 8 + 4 board (their real fields are checked in `tests/vectors.rs`).

    use super::*;

    const SWITCHES: [u64; 4] = [0x11, 0x22, 0x33, 0x44];
    const GPUS: [u64; 8] = [0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8];

    fn pdis(values: &[u64]) -> Vec<Pdi> {
        values.iter().copied().map(Pdi).collect()
    }

    /// 18 NVLinks: each of the 4 switches several times, two disabled links.
    fn gpu() -> GpuTopology {
        let mut links: Vec<u64> = SWITCHES.iter().cycle().take(16).copied().collect();
        links.extend([0, 0]);
        GpuTopology {
            protected_pcie: Some(true),
            feature_flag: Some(FEATURE_FLAG_PPCIE),
            switch_pdis: Some(pdis(&links)),
        }
    }

    fn switch(index: usize) -> SwitchTopology {
        SwitchTopology {
            device_pdi: Some(Pdi(SWITCHES[index])),
            gpu_pdis: Some(pdis(&GPUS)),
        }
    }

    fn board() -> (Vec<GpuTopology>, Vec<SwitchTopology>) {
        (vec![gpu(); 8], (0..4).map(switch).collect())
    }

    fn failures(gpus: &[GpuTopology], switches: &[SwitchTopology]) -> Vec<TopologyFailure> {
        check_topology(gpus, switches).failures
    }

    #[test]
    fn a_complete_board_passes() {
        let (gpus, switches) = board();
        let verdict = check_topology(&gpus, &switches);
        assert_eq!(verdict.failures, vec![]);
        assert!(verdict.passed());
        assert_eq!(verdict.gpu_switches, pdis(&SWITCHES));
        assert_eq!(verdict.switch_gpus, pdis(&GPUS));
    }

    #[test]
    fn gpu_and_switch_counts_are_exact() {
        let (mut gpus, mut switches) = board();
        gpus.pop();
        switches.pop();
        assert_eq!(
            failures(&gpus, &switches),
            vec![
                TopologyFailure::CheckGpuCount { actual: 7 },
                TopologyFailure::CheckSwitchCount { actual: 3 },
            ]
        );
        let (mut gpus, switches) = board();
        gpus.push(gpu());
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::CheckGpuCount { actual: 9 }]
        );
    }

    #[test]
    fn every_gpu_must_be_in_ppcie() {
        let (mut gpus, switches) = board();
        gpus[2].protected_pcie = Some(false);
        gpus[3].protected_pcie = None;
        gpus[5].feature_flag = Some(1);
        assert_eq!(
            failures(&gpus, &switches),
            vec![
                TopologyFailure::CheckGpuPpcieStatus { gpu: 2 },
                TopologyFailure::CheckGpuPpcieStatus { gpu: 3 },
                TopologyFailure::CheckGpuFeatureFlag {
                    gpu: 5,
                    flag: Some(1)
                },
            ]
        );
    }

    #[test]
    fn a_gpu_without_switch_pdis_fails() {
        let (mut gpus, switches) = board();
        gpus[4].switch_pdis = None;
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::FindGpuSwitchPdis { gpu: 4 }]
        );
    }

    #[test]
    fn a_gpu_must_reach_exactly_four_switches() {
        let (mut gpus, switches) = board();
        // Every GPU reaches only 3: the count fails on each, the set stays consistent.
        for g in &mut gpus {
            g.switch_pdis = Some(pdis(&[0x11, 0x22, 0x33, 0x33, 0]));
        }
        let found = failures(&gpus, &switches);
        assert_eq!(found.len(), 8 + 1, "{found:?}");
        assert_eq!(
            found[0],
            TopologyFailure::CheckGpuSwitchCount {
                gpu: 0,
                switches: pdis(&[0x11, 0x22, 0x33])
            }
        );
        // Switch 3 (0x44) is then not among the GPUs' switches.
        assert_eq!(
            found[8],
            TopologyFailure::CheckSwitchDevicePdi {
                switch: 3,
                pdi: Pdi(0x44),
                gpu_switches: pdis(&[0x11, 0x22, 0x33]),
            }
        );
    }

    #[test]
    fn zero_entries_are_disabled_links_not_switches() {
        let (mut gpus, switches) = board();
        gpus[0].switch_pdis = Some(pdis(&[0x11, 0x22, 0x33, 0x44, 0, 0, 0]));
        assert_eq!(failures(&gpus, &switches), vec![]);
        gpus[0].switch_pdis = Some(pdis(&[0x11, 0x22, 0x33, 0]));
        assert!(matches!(
            failures(&gpus, &switches)[0],
            TopologyFailure::CheckGpuSwitchCount { gpu: 0, .. }
        ));
    }

    #[test]
    fn every_gpu_must_reach_the_same_switches() {
        let (mut gpus, switches) = board();
        gpus[6].switch_pdis = Some(pdis(&[0x11, 0x22, 0x33, 0x55]));
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::CheckGpuSwitchSet {
                gpu: 6,
                reference: 0,
                expected: pdis(&SWITCHES),
                actual: pdis(&[0x11, 0x22, 0x33, 0x55]),
            }]
        );
    }

    #[test]
    fn gpu_pdis_are_read_little_endian_and_switch_pdis_raw() {
        // The same switch seen from both sides: a GPU entry's bytes are reversed.
        let raw = [0x20, 0x3e, 0xb3, 0x1a, 0xd9, 0xed, 0x00, 0x08];
        let mut reversed = raw;
        reversed.reverse();
        assert_eq!(Pdi::from_raw(raw), Pdi::from_le(reversed));
        assert_eq!(Pdi::from_raw(raw).to_string(), "203eb31ad9ed0008");
        assert_ne!(Pdi::from_raw(raw), Pdi::from_le(raw));
    }

    #[test]
    fn a_switch_without_device_pdi_fails() {
        let (gpus, mut switches) = board();
        switches[1].device_pdi = None;
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::FindSwitchDevicePdi { switch: 1 }]
        );
    }

    #[test]
    fn a_foreign_switch_fails() {
        let (gpus, mut switches) = board();
        switches[2].device_pdi = Some(Pdi(0x99));
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::CheckSwitchDevicePdi {
                switch: 2,
                pdi: Pdi(0x99),
                gpu_switches: pdis(&SWITCHES),
            }]
        );
    }

    #[test]
    fn one_switch_reported_twice_fails() {
        let (gpus, mut switches) = board();
        switches[3] = switch(0);
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::CheckSwitchDuplicate {
                switch: 3,
                first: 0,
                pdi: Pdi(0x11),
            }]
        );
    }

    #[test]
    fn a_switch_without_gpu_pdis_fails() {
        let (gpus, mut switches) = board();
        switches[0].gpu_pdis = None;
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::FindSwitchGpuPdis { switch: 0 }]
        );
    }

    #[test]
    fn a_switch_must_connect_eight_distinct_gpus() {
        let (gpus, mut switches) = board();
        // As in the public LS10 sample: the last two entries are equal.
        let mut seven = GPUS;
        seven[7] = seven[6];
        for s in &mut switches {
            s.gpu_pdis = Some(pdis(&seven));
        }
        let found = failures(&gpus, &switches);
        assert_eq!(found.len(), 4, "{found:?}");
        assert_eq!(
            found[0],
            TopologyFailure::CheckSwitchGpuCount {
                switch: 0,
                gpus: pdis(&GPUS[..7])
            }
        );
        // A zero entry is not a GPU.
        let mut zero = GPUS;
        zero[3] = 0;
        let (gpus, mut switches) = board();
        for s in &mut switches {
            s.gpu_pdis = Some(pdis(&zero));
        }
        assert!(matches!(
            failures(&gpus, &switches)[0],
            TopologyFailure::CheckSwitchGpuCount { switch: 0, .. }
        ));
    }

    #[test]
    fn only_the_first_eight_gpu_pdis_count() {
        let (gpus, mut switches) = board();
        let mut longer = GPUS.to_vec();
        longer.push(0xff);
        switches[1].gpu_pdis = Some(pdis(&longer));
        assert_eq!(failures(&gpus, &switches), vec![]);
    }

    #[test]
    fn every_switch_must_connect_the_same_gpus() {
        let (gpus, mut switches) = board();
        let mut other = GPUS;
        other[0] = 0xb1;
        switches[3].gpu_pdis = Some(pdis(&other));
        assert_eq!(
            failures(&gpus, &switches),
            vec![TopologyFailure::CheckSwitchGpuSet {
                switch: 3,
                reference: 0,
                expected: pdis(&GPUS),
                actual: {
                    let mut v = other.to_vec();
                    v.sort_unstable();
                    pdis(&v)
                },
            }]
        );
    }

    #[test]
    fn failure_messages_name_the_device() {
        let failure = TopologyFailure::CheckSwitchDevicePdi {
            switch: 2,
            pdi: Pdi(0x99),
            gpu_switches: pdis(&[0x11]),
        };
        assert_eq!(
            failure.to_string(),
            "switch 2: DEVICE_PDI 0000000000000099 is not among the GPUs' switches \
             [0000000000000011]"
        );
    }
}
