//! One function per cargo-fuzz target of `measure`'s parsers of untrusted bytes. Each parses, and
//! on success exercises what an auditor does next with the result (re-encoding, replay, hashing),
//! asserting the invariants that must hold for any input. A panic is a bug.
//!
//! The same functions run as plain tests over the seed corpus (`tests/seeds.rs`), so a stable
//! toolchain still exercises them when `cargo +nightly fuzz` is not available.

use measure::ccel::CcelTable;
use measure::dstack_event_log::{parse_event_log, parse_get_quote_response};
use measure::event_log::EventLog;
use measure::kernel::{self, DirectBootParams};
use measure::quote::Quote;
use measure::replay::Replay;
use measure::runtime_event::{LogLineFormat, decode_log, decode_log_line};
use measure::tdreport::TdReport;
use measure::tdvf::{PageOrder, Tdvf};

/// A fuzz target: any bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target: (name, function). The names are the `fuzz_targets/<name>.rs` binaries.
pub const TARGETS: &[(&str, Target)] = &[
    ("quote", quote),
    ("tdreport", tdreport),
    ("ccel", ccel),
    ("tcg_event_log", tcg_event_log),
    ("dstack_event_log", dstack_event_log),
    ("runtime_event_log", runtime_event_log),
    ("tdvf", tdvf),
    ("kernel_pe", kernel_pe),
    ("gpu_report", gpu_report),
    ("gpu_rim", gpu_rim),
    ("gpu_evidence", gpu_evidence),
];

/// Largest number of 4 KiB pages a target lets MRTD hash (metadata may declare terabytes).
const MAX_MRTD_PAGES: u64 = 1 << 12;

/// TDX quote v4/v5: a parsed quote re-encodes to exactly the bytes before its padding.
pub fn quote(data: &[u8]) {
    let Ok(quote) = Quote::parse(data) else {
        return;
    };
    let declared = data.len() - quote.trailing_len;
    if let Ok(bytes) = quote.to_bytes() {
        assert_eq!(bytes.as_slice(), &data[..declared], "quote re-encoding");
    }
    assert!(quote.signed_len() <= declared);
    let _ = quote.qe_report_certification();
}

/// TDREPORT (1024 bytes): re-encodes to the input.
pub fn tdreport(data: &[u8]) {
    let Ok(report) = TdReport::parse(data) else {
        return;
    };
    assert_eq!(report.to_bytes().as_slice(), data, "TDREPORT re-encoding");
    let _ = report.hashes_match();
}

/// The CCEL ACPI table.
pub fn ccel(data: &[u8]) {
    let _ = CcelTable::parse(data);
}

/// TCG crypto-agile event log (CCEL log area or a TPM's binary_bios_measurements), then replay.
pub fn tcg_event_log(data: &[u8]) {
    let Ok(log) = EventLog::parse(data) else {
        return;
    };
    assert!(log.log_len(data.len()) <= data.len());
    for event in &log.events {
        let _ = event.sha384();
        let _ = event.rtmr_index();
    }
    let _ = Replay::from_tcg_log(&log);
}

/// dstack's JSON event log (array) and guest-agent GetQuote response, then replay.
pub fn dstack_event_log(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(events) = parse_event_log(&text) {
        for event in &events {
            let _ = event.runtime_event();
        }
        let _ = Replay::from_dstack_events(&events);
    }
    if let Ok(response) = parse_get_quote_response(&text) {
        let _ = Replay::from_dstack_events(&response.event_log);
        let _ = Quote::parse(&response.quote);
    }
}

/// RTMR3 runtime event log lines (both formats): every decoded event written back as a current
/// line decodes to the same event.
pub fn runtime_event_log(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(lines) = decode_log(&text) else {
        return;
    };
    for line in &lines {
        let _ = line.recorded_digest_matches();
        let _ = line.event.digest();
        if let Ok(encoded) = line.event.to_log_line(LogLineFormat::Current) {
            let decoded = decode_log_line(encoded.trim_end_matches('\n'));
            assert_eq!(
                decoded.ok().map(|d| d.event).as_ref(),
                Some(&line.event),
                "runtime event re-encoding"
            );
        }
    }
    let _ = Replay::from_runtime_events(lines.iter().map(|l| &l.event));
}

/// TDVF/OVMF image: TDX metadata, then MRTD (when small enough), TD HOB and section data.
pub fn tdvf(data: &[u8]) {
    let Ok(tdvf) = Tdvf::parse(data) else {
        return;
    };
    for section in &tdvf.sections {
        let _ = tdvf.section_data(section);
    }
    let pages = tdvf
        .sections
        .iter()
        .fold(0u64, |sum, s| sum.saturating_add(s.pages()));
    if pages <= MAX_MRTD_PAGES {
        let _ = tdvf.mrtd(PageOrder::SinglePass);
        let _ = tdvf.mrtd(PageOrder::TwoPass);
    }
    for memory in [0, 1 << 30, 0xB000_0000, 1 << 40, u64::MAX] {
        let _ = tdvf.td_hob(memory);
    }
}

/// Kernel bzImage / PE: QEMU's setup-header edits and the Authenticode hash.
pub fn kernel_pe(data: &[u8]) {
    let _ = kernel::authenticode_sha384(data);
    let _ = kernel::authenticode_sha256(data);
    let cmdline = data
        .iter()
        .position(|&b| b == 0)
        .and_then(|end| std::str::from_utf8(&data[..end]).ok())
        .unwrap_or("console=ttyS0 vga=0x317");
    for (memory, initrd) in [
        (512 << 20, Some(12_288)),
        (0xC000_0000, Some(u64::from(u32::MAX))),
        (1 << 20, None),
    ] {
        let params = DirectBootParams::q35(memory, initrd, cmdline);
        if let Ok(patched) = kernel::patch_setup_header(data, &params) {
            assert_eq!(
                patched.len(),
                data.len(),
                "setup-header edits change the size"
            );
        }
        let _ = kernel::kernel_measurement(data, &params);
    }
}

/// An NVIDIA SPDM GET_MEASUREMENTS attestation report (exact length rules, opaque TLVs), read
/// as a GPU's and as an NVSwitch's: the SPDM layout must agree between the two, and a parsed
/// switch report's RIM id and PDIs are derived.
pub fn gpu_report(data: &[u8]) {
    use nv_verify::report::{AttestationReport, SwitchReport};
    let gpu = AttestationReport::parse(data);
    if let Ok(report) = &gpu {
        let _ = format!("{report:?}");
        assert_eq!(report.signed_len + 96, data.len(), "GPU signed length");
    }
    let switch = SwitchReport::parse(data);
    if let Ok(report) = &switch {
        assert_eq!(report.signed_len + 96, data.len(), "switch signed length");
        assert!(report.measurements.len() <= usize::from(report.block_count));
        let id = report.opaque.bios_rim_id();
        assert!(id.starts_with("NV_SWITCH_BIOS_5612_0002_890_"), "{id}");
        if let Some(pdis) = &report.opaque.gpu_pdis {
            assert_eq!(pdis.len(), nv_verify::report::SWITCH_GPU_PDI_COUNT);
        }
    }
    // Both parsers share the SPDM part: when both parse, they read the same measurements.
    if let (Ok(g), Ok(s)) = (&gpu, &switch) {
        assert_eq!(g.measurements, s.measurements, "SPDM blocks differ by kind");
        assert_eq!(g.request_nonce, s.request_nonce);
    }
}

/// An NVIDIA RIM (SWID tag with an XML-DSig signature).
pub fn gpu_rim(data: &[u8]) {
    if let Ok(rim) = nv_verify::rim::Rim::parse(data) {
        let _ = format!("{rim:?}");
    }
}

/// The NVAT JSON evidence document the GPU helper returns (GPU and `LS10` switch entries):
/// each decoded report is parsed as its device kind's and its chain as PEM.
pub fn gpu_evidence(data: &[u8]) {
    use nv_verify::DeviceKind;
    use nv_verify::report::{AttestationReport, SwitchReport};
    let Ok(entries) = nv_verify::evidence::parse_nvat_json(data) else {
        return;
    };
    for entry in &entries {
        let evidence = &entry.evidence;
        match evidence.arch.as_deref().and_then(DeviceKind::from_arch_name) {
            Some(DeviceKind::Switch) => {
                let _ = SwitchReport::parse(&evidence.report);
            }
            _ => {
                let _ = AttestationReport::parse(&evidence.report);
            }
        }
        let _ = nv_verify::certs::parse_pem_chain(&evidence.cert_chain);
    }
}
