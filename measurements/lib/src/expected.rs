//! Expected RTMR0-2 for OVMF/TDVF + QEMU direct kernel boot, event by event
//! (`specs/tdx.md` §6, `specs/dstack-guest.md` §10).
//!
//! The inputs that cannot be derived offline (the ACPI blobs QEMU serves, which depend on vCPUs,
//! devices and QEMU version) are passed in as digests or raw blobs.

use serde::Serialize;

use crate::event_log::event_type_name;
use crate::replay::Replay;
use crate::rtmr::{RtmrIndex, Sha384Digest, extend};

/// EV_SEPARATOR.
pub const EV_SEPARATOR: u32 = 0x4;
/// EV_EVENT_TAG.
pub const EV_EVENT_TAG: u32 = 0x6;
/// EV_PLATFORM_CONFIG_FLAGS.
pub const EV_PLATFORM_CONFIG_FLAGS: u32 = 0xA;
/// EV_EFI_VARIABLE_DRIVER_CONFIG.
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// EV_EFI_VARIABLE_BOOT.
pub const EV_EFI_VARIABLE_BOOT: u32 = 0x8000_0002;
/// EV_EFI_BOOT_SERVICES_APPLICATION.
pub const EV_EFI_BOOT_SERVICES_APPLICATION: u32 = 0x8000_0003;
/// EV_EFI_ACTION.
pub const EV_EFI_ACTION: u32 = 0x8000_0007;
/// EV_EFI_PLATFORM_FIRMWARE_BLOB2.
pub const EV_EFI_PLATFORM_FIRMWARE_BLOB2: u32 = 0x8000_000A;
/// EV_EFI_HANDOFF_TABLES2.
pub const EV_EFI_HANDOFF_TABLES2: u32 = 0x8000_000B;

/// EFI global variable GUID 8be4df61-93ca-11d2-aa0d-00e098032b8c (EFI byte order).
pub const EFI_GLOBAL_VARIABLE_GUID: [u8; 16] = [
    0x61, 0xdf, 0xe4, 0x8b, 0xca, 0x93, 0xd2, 0x11, 0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c,
];
/// EFI image security database GUID d719b2cb-3d3a-4596-a3bc-dad00e67656f (EFI byte order).
pub const EFI_IMAGE_SECURITY_DATABASE_GUID: [u8; 16] = [
    0xcb, 0xb2, 0x19, 0xd7, 0x3a, 0x3d, 0x96, 0x45, 0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f,
];

/// OVMF's Boot0000 load option for UiApp (attributes 0x109, "UiApp", FvFile device path), as
/// logged by OVMF direct boot (taken from the Boot0000 event of dstack's `ccel.bin`).
pub const OVMF_UIAPP_BOOT0000: [u8; 62] = [
    0x09, 0x01, 0x00, 0x00, 0x2c, 0x00, 0x55, 0x00, 0x69, 0x00, 0x41, 0x00, 0x70, 0x00, 0x70, 0x00,
    0x00, 0x00, 0x04, 0x07, 0x14, 0x00, 0xc9, 0xbd, 0xb8, 0x7c, 0xeb, 0xf8, 0x34, 0x4f, 0xaa, 0xea,
    0x3e, 0xe4, 0xaf, 0x65, 0x16, 0xa1, 0x04, 0x06, 0x14, 0x00, 0x21, 0xaa, 0x2c, 0x46, 0x14, 0x76,
    0x03, 0x45, 0x83, 0x6e, 0x8a, 0xb6, 0xf4, 0x66, 0x23, 0x31, 0x7f, 0xff, 0x04, 0x00,
];

/// One expected event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedEvent {
    /// Register.
    pub rtmr: RtmrIndex,
    /// Event type.
    pub event_type: u32,
    /// TCG name of the event type.
    pub event_type_name: Option<&'static str>,
    /// What was hashed.
    pub description: String,
    /// Digest.
    pub digest: Sha384Digest,
}

impl ExpectedEvent {
    fn new(
        rtmr: RtmrIndex,
        event_type: u32,
        description: impl Into<String>,
        digest: Sha384Digest,
    ) -> Self {
        Self {
            rtmr,
            event_type,
            event_type_name: event_type_name(event_type),
            description: description.into(),
            digest,
        }
    }
}

/// One register's expected value and the events that build it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectedRegister {
    /// Final value.
    pub value: Sha384Digest,
    /// Events in extend order.
    pub events: Vec<ExpectedEvent>,
}

impl ExpectedRegister {
    /// Folds `events` from zero.
    pub fn from_events(events: Vec<ExpectedEvent>) -> Self {
        let value = events
            .iter()
            .fold(Sha384Digest::ZERO, |acc, e| extend(&acc, &e.digest));
        Self { value, events }
    }
}

/// The three ACPI digests of RTMR0 (fw_cfg `etc/table-loader`, `etc/acpi/rsdp`,
/// `etc/acpi/tables`, in that order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AcpiDigests {
    /// `etc/table-loader`.
    pub loader: Sha384Digest,
    /// `etc/acpi/rsdp`.
    pub rsdp: Sha384Digest,
    /// `etc/acpi/tables`.
    pub tables: Sha384Digest,
}

impl AcpiDigests {
    /// Hashes the three blobs as QEMU serves them.
    pub fn from_blobs(loader: &[u8], rsdp: &[u8], tables: &[u8]) -> Self {
        Self {
            loader: Sha384Digest::of(loader),
            rsdp: Sha384Digest::of(rsdp),
            tables: Sha384Digest::of(tables),
        }
    }

    /// Takes the digests of the three RTMR0 EV_PLATFORM_CONFIG_FLAGS events of a trusted boot's
    /// log ("lite" path). `None` unless there are exactly three.
    pub fn from_replay(replay: &Replay) -> Option<Self> {
        let digests: Vec<_> = replay
            .entries
            .iter()
            .filter(|e| e.rtmr == RtmrIndex::R0 && e.event_type == EV_PLATFORM_CONFIG_FLAGS)
            .map(|e| e.digest)
            .collect();
        match digests.as_slice() {
            [loader, rsdp, tables] => Some(Self {
                loader: *loader,
                rsdp: *rsdp,
                tables: *tables,
            }),
            _ => None,
        }
    }
}

/// A UEFI variable measured into RTMR0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UefiVariable {
    /// Vendor GUID (EFI byte order).
    #[serde(serialize_with = "crate::bytes::hex_bytes::serialize")]
    pub guid: [u8; 16],
    /// Name.
    pub name: String,
    /// Data.
    #[serde(serialize_with = "crate::bytes::hex_bytes::serialize")]
    pub data: Vec<u8>,
}

impl UefiVariable {
    /// UEFI_VARIABLE_DATA: GUID ‖ u64 name length (chars) ‖ u64 data length ‖ UTF-16LE name ‖ data.
    pub fn variable_data(&self) -> Vec<u8> {
        let name: Vec<u16> = self.name.encode_utf16().collect();
        let mut out = Vec::with_capacity(32 + 2 * name.len() + self.data.len());
        out.extend_from_slice(&self.guid);
        out.extend_from_slice(&(name.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.data.len() as u64).to_le_bytes());
        for unit in name {
            out.extend_from_slice(&unit.to_le_bytes());
        }
        out.extend_from_slice(&self.data);
        out
    }

    /// The Secure Boot variables of a VM with Secure Boot off: SecureBoot, PK, KEK, db, dbx, all
    /// empty.
    pub fn secure_boot_off() -> Vec<Self> {
        let var = |guid, name: &str| Self {
            guid,
            name: name.to_owned(),
            data: Vec::new(),
        };
        vec![
            var(EFI_GLOBAL_VARIABLE_GUID, "SecureBoot"),
            var(EFI_GLOBAL_VARIABLE_GUID, "PK"),
            var(EFI_GLOBAL_VARIABLE_GUID, "KEK"),
            var(EFI_IMAGE_SECURITY_DATABASE_GUID, "db"),
            var(EFI_IMAGE_SECURITY_DATABASE_GUID, "dbx"),
        ]
    }
}

/// Inputs of RTMR0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rtmr0Inputs {
    /// SHA-384 of the TD HOB (see [`crate::tdvf::Tdvf::td_hob`]).
    pub td_hob: Sha384Digest,
    /// SHA-384 of the CFV (variable store) bytes.
    pub cfv: Sha384Digest,
    /// Secure Boot configuration variables (EV_EFI_VARIABLE_DRIVER_CONFIG, whole structure hashed).
    pub secure_boot_variables: Vec<UefiVariable>,
    /// ACPI digests.
    pub acpi: AcpiDigests,
    /// BootOrder data (`00 00` for direct boot).
    #[serde(serialize_with = "crate::bytes::hex_bytes::serialize")]
    pub boot_order: Vec<u8>,
    /// Boot0000 data ([`OVMF_UIAPP_BOOT0000`]).
    #[serde(serialize_with = "crate::bytes::hex_bytes::serialize")]
    pub boot0000: Vec<u8>,
}

impl Rtmr0Inputs {
    /// Direct boot with Secure Boot off, BootOrder 0000 and OVMF's UiApp Boot0000.
    pub fn direct_boot(td_hob: Sha384Digest, cfv: Sha384Digest, acpi: AcpiDigests) -> Self {
        Self {
            td_hob,
            cfv,
            secure_boot_variables: UefiVariable::secure_boot_off(),
            acpi,
            boot_order: vec![0, 0],
            boot0000: OVMF_UIAPP_BOOT0000.to_vec(),
        }
    }
}

/// RTMR0 events in logged order.
pub fn rtmr0(inputs: &Rtmr0Inputs) -> ExpectedRegister {
    let r0 = RtmrIndex::R0;
    let mut events = vec![
        ExpectedEvent::new(r0, EV_EFI_HANDOFF_TABLES2, "TD HOB", inputs.td_hob),
        ExpectedEvent::new(r0, EV_EFI_PLATFORM_FIRMWARE_BLOB2, "CFV", inputs.cfv),
    ];
    for var in &inputs.secure_boot_variables {
        events.push(ExpectedEvent::new(
            r0,
            EV_EFI_VARIABLE_DRIVER_CONFIG,
            var.name.clone(),
            Sha384Digest::of(&var.variable_data()),
        ));
    }
    events.push(ExpectedEvent::new(
        r0,
        EV_SEPARATOR,
        "separator",
        separator(),
    ));
    for (name, digest) in [
        ("etc/table-loader", inputs.acpi.loader),
        ("etc/acpi/rsdp", inputs.acpi.rsdp),
        ("etc/acpi/tables", inputs.acpi.tables),
    ] {
        events.push(ExpectedEvent::new(
            r0,
            EV_PLATFORM_CONFIG_FLAGS,
            name,
            digest,
        ));
    }
    events.push(ExpectedEvent::new(
        r0,
        EV_EFI_VARIABLE_BOOT,
        "BootOrder",
        Sha384Digest::of(&inputs.boot_order),
    ));
    events.push(ExpectedEvent::new(
        r0,
        EV_EFI_VARIABLE_BOOT,
        "Boot0000",
        Sha384Digest::of(&inputs.boot0000),
    ));
    ExpectedRegister::from_events(events)
}

fn separator() -> Sha384Digest {
    Sha384Digest::of(&[0; 4])
}

/// RTMR1 events: the kernel (Authenticode of the patched image, see
/// [`crate::kernel::kernel_measurement`]), then OVMF's fixed actions and separator.
pub fn rtmr1(kernel: Sha384Digest) -> ExpectedRegister {
    let r1 = RtmrIndex::R1;
    let action =
        |text: &str| ExpectedEvent::new(r1, EV_EFI_ACTION, text, Sha384Digest::of(text.as_bytes()));
    ExpectedRegister::from_events(vec![
        ExpectedEvent::new(r1, EV_EFI_BOOT_SERVICES_APPLICATION, "kernel", kernel),
        action("Calling EFI Application from Boot Option"),
        ExpectedEvent::new(r1, EV_SEPARATOR, "separator", separator()),
        action("Exit Boot Services Invocation"),
        action("Exit Boot Services Returned with Success"),
    ])
}

/// OVMF's LoadOptions for a direct boot: every byte of `cmdline` (plus `" initrd=initrd"` when an
/// initrd is passed) zero-extended to 16 bits, then a 16-bit NUL.
pub fn load_options(cmdline: &[u8], has_initrd: bool) -> Vec<u8> {
    let suffix: &[u8] = if has_initrd { b" initrd=initrd" } else { b"" };
    let mut out = Vec::with_capacity(2 * (cmdline.len() + suffix.len() + 1));
    for &b in cmdline.iter().chain(suffix) {
        out.extend_from_slice(&[b, 0]);
    }
    out.extend_from_slice(&[0, 0]);
    out
}

/// RTMR2 from digests: the LoadOptions digest, then the initrd digest (if any).
pub fn rtmr2_from_digests(
    load_options: Sha384Digest,
    initrd: Option<Sha384Digest>,
) -> ExpectedRegister {
    let r2 = RtmrIndex::R2;
    let mut events = vec![ExpectedEvent::new(
        r2,
        EV_EVENT_TAG,
        "LOADED_IMAGE::LoadOptions",
        load_options,
    )];
    if let Some(initrd) = initrd {
        events.push(ExpectedEvent::new(r2, EV_EVENT_TAG, "Linux initrd", initrd));
    }
    ExpectedRegister::from_events(events)
}

/// RTMR2 (Linux EFI stub measurements) for a command line and an optional initrd.
pub fn rtmr2(cmdline: &[u8], initrd: Option<&[u8]>) -> ExpectedRegister {
    rtmr2_from_digests(
        Sha384Digest::of(&load_options(cmdline, initrd.is_some())),
        initrd.map(Sha384Digest::of),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dstack_event_log::parse_get_quote_response;
    use crate::event_log::EventLog;
    use crate::quote::Quote;
    use crate::tdvf::build_td_hob;

    const GET_QUOTE: &str = include_str!("../testdata/dstack-tdx-lite-getquote.json");
    const CCEL: &[u8] = include_bytes!("../testdata/dstack-ccel.bin");
    const TAPPD_QUOTE_HEX: &str = include_str!("../testdata/dcap-qvl-quote-from-tappd.hex");
    /// dstack's hard-coded CFV digest: a fresh empty 0x84000-byte variable store.
    const CFV: &str = "344bc51c980ba621aaa00da3ed7436f7d6e549197dfe699515dfa2c6583d95e6412af21c097d473155875ffd561d6790";

    fn digest(hex: &str) -> Sha384Digest {
        hex.parse().unwrap()
    }

    fn kernel_event(replay: &Replay) -> Sha384Digest {
        replay
            .entries
            .iter()
            .find(|e| e.event_type == EV_EFI_BOOT_SERVICES_APPLICATION)
            .unwrap()
            .digest
    }

    /// dstack TDX-lite fixture (2 GiB, QEMU 8.2.2): RTMR0 from the TD HOB model, the CFV constant,
    /// Secure Boot off, the logged ACPI digests and OVMF's boot variables; RTMR1 from the logged
    /// kernel digest; RTMR2 from the CBOR cmdline/initrd digests — all equal the quote.
    #[test]
    fn tdx_lite_fixture_registers() {
        let response = parse_get_quote_response(GET_QUOTE).unwrap();
        let quote = Quote::parse(&response.quote).unwrap();
        let replay = Replay::from_dstack_events(&response.event_log).unwrap();
        let layout = [
            (0x80_0000, 0x6000),
            (0x80_9000, 0x2000),
            (0x80_B000, 0x2000),
            (0x81_0000, 0x1_0000),
        ];
        let td_hob = Sha384Digest::of(&build_td_hob(0x80_9000, &layout, 2 << 30));
        let acpi = AcpiDigests::from_replay(&replay).unwrap();
        let expected = rtmr0(&Rtmr0Inputs::direct_boot(td_hob, digest(CFV), acpi));
        assert_eq!(expected.events.len(), 13);
        assert_eq!(&expected.value, quote.rtmrs().register(RtmrIndex::R0));
        // Every event digest equals the logged one, in order.
        let logged: Vec<_> = replay
            .entries
            .iter()
            .filter(|e| e.rtmr == RtmrIndex::R0)
            .map(|e| e.digest)
            .collect();
        let computed: Vec<_> = expected.events.iter().map(|e| e.digest).collect();
        assert_eq!(computed, logged);

        let expected = rtmr1(kernel_event(&replay));
        assert_eq!(&expected.value, quote.rtmrs().register(RtmrIndex::R1));
        assert_eq!(kernel_event(&replay).to_string()[..8], *"ac7e632d");

        // CBOR tdx_measurement: cmdline_sha384 78628084…, initrd_sha384 4fe4f771….
        let cmdline = digest(
            "786280842b7364287a3a70d96f7e309252857beb45fb1f91314a2ea863db0adc04c8431ecbf29a966405604631a5aab8",
        );
        let initrd = digest(
            "4fe4f7710134a61d7def357add6ac50bdbfeee5032a4c100375e207216ffe42a3bd5822b24e679f91501fff795b81521",
        );
        let expected = rtmr2_from_digests(cmdline, Some(initrd));
        assert_eq!(&expected.value, quote.rtmrs().register(RtmrIndex::R2));
    }

    /// dstack's ccel.bin (1 GiB, Debian trixie OVMF layout): RTMR0 computed from inputs equals the
    /// tappd quote's RTMR0, RTMR1 equals the log's replay.
    #[test]
    fn ccel_sample_registers() {
        let replay = Replay::from_tcg_log(&EventLog::parse(CCEL).unwrap()).unwrap();
        let layout = [
            (0x80_0000, 0x6000),
            (0x80_9000, 0x2000),
            (0x80_B000, 0x2000),
            (0x81_1000, 0xF000),
        ];
        let td_hob = Sha384Digest::of(&build_td_hob(0x80_9000, &layout, 1 << 30));
        let acpi = AcpiDigests::from_replay(&replay).unwrap();
        let expected = rtmr0(&Rtmr0Inputs::direct_boot(td_hob, digest(CFV), acpi));
        let text = TAPPD_QUOTE_HEX.trim();
        let quote =
            Quote::parse(&hex::decode(text.strip_prefix("0x").unwrap_or(text)).unwrap()).unwrap();
        assert_eq!(&expected.value, quote.rtmrs().register(RtmrIndex::R0));
        let expected = rtmr1(kernel_event(&replay));
        assert_eq!(&expected.value, replay.rtmrs.register(RtmrIndex::R1));
    }

    #[test]
    fn fixed_event_digests() {
        let events = rtmr1(Sha384Digest::ZERO).events;
        let prefixes: Vec<_> = events[1..]
            .iter()
            .map(|e| e.digest.to_string()[..8].to_owned())
            .collect();
        assert_eq!(prefixes, ["77a0dab2", "394341b7", "214b0bef", "0a2e01c8"]);
        assert_eq!(
            Sha384Digest::of(&OVMF_UIAPP_BOOT0000).to_string()[..8],
            *"23ada07f"
        );
    }

    #[test]
    fn load_options_widen_bytes() {
        // measured-boot-oracle §4.2: UTF-8 "é" (c3 a9) is widened byte by byte.
        assert_eq!(
            load_options("x=é".as_bytes(), false),
            [b'x', 0, b'=', 0, 0xc3, 0, 0xa9, 0, 0, 0]
        );
        let with_initrd = load_options(b"", true);
        assert_eq!(with_initrd.len(), 2 * 14 + 2);
        assert_eq!(&with_initrd[..4], &[b' ', 0, b'i', 0]);
        let register = rtmr2(b"console=ttyS0", Some(b"initrd"));
        assert_eq!(register.events.len(), 2);
        assert_eq!(register.events[1].digest, Sha384Digest::of(b"initrd"));
        assert_eq!(
            register.events[0].digest,
            Sha384Digest::of(&load_options(b"console=ttyS0", true))
        );
        assert_eq!(rtmr2(b"", None).events.len(), 1);
    }
}
