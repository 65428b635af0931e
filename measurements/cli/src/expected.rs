//! `cvm-measure expected` and `rtmr`: the expected MRTD and RTMR0-2 of a direct kernel boot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use measure::expected::{self, AcpiDigests, ExpectedRegister, Rtmr0Inputs};
use measure::kernel::{self, DirectBootParams};
use measure::replay::Replay;
use measure::rtmr::Sha384Digest;
use measure::tdvf::{PageOrder, SectionType, Tdvf};
use serde::Serialize;

use crate::input::{LogInput, load_log, read, text, truncate};
use crate::{BootInputArgs, ExpectedArgs, PageOrderArg, RtmrArgs};

impl BootInputArgs {
    /// Fills the unset flags from `--manifest`, resolving its paths against its directory.
    fn resolve(&self) -> Result<Self> {
        let Some(path) = &self.manifest else {
            return Ok(self.clone_flags());
        };
        let text = text(path, &read(path)?)?;
        let manifest: Self = toml::from_str(&text)
            .with_context(|| format!("parse build manifest {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let rel = |p: Option<PathBuf>| p.map(|p| base.join(p));
        let flags = self.clone_flags();
        Ok(Self {
            manifest: None,
            firmware: flags.firmware.or(rel(manifest.firmware)),
            kernel: flags.kernel.or(rel(manifest.kernel)),
            initrd: flags.initrd.or(rel(manifest.initrd)),
            cmdline: flags.cmdline.or(manifest.cmdline),
            memory: flags.memory.or(manifest.memory),
            page_order: flags.page_order.or(manifest.page_order),
            acpi_loader: flags.acpi_loader.or(rel(manifest.acpi_loader)),
            acpi_rsdp: flags.acpi_rsdp.or(rel(manifest.acpi_rsdp)),
            acpi_tables: flags.acpi_tables.or(rel(manifest.acpi_tables)),
            acpi_from_log: flags.acpi_from_log.or(rel(manifest.acpi_from_log)),
            cfv_digest: flags.cfv_digest.or(manifest.cfv_digest),
        })
    }

    fn clone_flags(&self) -> Self {
        Self {
            manifest: None,
            firmware: self.firmware.clone(),
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            cmdline: self.cmdline.clone(),
            memory: self.memory.clone(),
            page_order: self.page_order,
            acpi_loader: self.acpi_loader.clone(),
            acpi_rsdp: self.acpi_rsdp.clone(),
            acpi_tables: self.acpi_tables.clone(),
            acpi_from_log: self.acpi_from_log.clone(),
            cfv_digest: self.cfv_digest,
        }
    }
}

fn parse_memory(text: &str) -> Result<u64> {
    let t = text.trim();
    let t = t.strip_suffix("iB").or(t.strip_suffix('B')).unwrap_or(t);
    let (digits, shift) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 30),
        Some('T' | 't') => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let value: u64 = digits
        .parse()
        .with_context(|| format!("parse memory size {text:?}"))?;
    value
        .checked_mul(1u64 << shift)
        .with_context(|| format!("memory size {text:?} is too large"))
}

#[derive(Serialize)]
struct ExpectedOutput {
    memory_size: u64,
    page_order: PageOrder,
    mrtd: Option<Sha384Digest>,
    rtmr0: Option<ExpectedRegister>,
    rtmr1: ExpectedRegister,
    rtmr2: ExpectedRegister,
    /// Why a register is missing (e.g. firmware without TDX metadata).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
}

fn acpi_digests(inputs: &BootInputArgs) -> Result<Option<AcpiDigests>> {
    if let Some(log) = &inputs.acpi_from_log {
        let replay = match load_log(log)? {
            LogInput::Tcg(log) => Replay::from_tcg_log(&log).context("replay ACPI log")?,
            LogInput::Dstack(events) | LogInput::GetQuote(events, _) => {
                Replay::from_dstack_events(&events).context("replay ACPI log")?
            }
            LogInput::Runtime(_) => bail!("{} has no firmware events", log.display()),
        };
        return Ok(Some(AcpiDigests::from_replay(&replay).with_context(
            || format!("{} does not have exactly three ACPI events", log.display()),
        )?));
    }
    match (&inputs.acpi_loader, &inputs.acpi_rsdp, &inputs.acpi_tables) {
        (Some(loader), Some(rsdp), Some(tables)) => Ok(Some(AcpiDigests::from_blobs(
            &read(loader)?,
            &read(rsdp)?,
            &read(tables)?,
        ))),
        (None, None, None) => Ok(None),
        _ => bail!("give all three of --acpi-loader, --acpi-rsdp and --acpi-tables"),
    }
}

/// MRTD and RTMR0 from the firmware; `Err(note)` when they cannot be computed.
fn firmware_registers(
    inputs: &BootInputArgs,
    firmware_path: &Path,
    memory_size: u64,
    page_order: PageOrder,
) -> Result<(
    Result<Sha384Digest, String>,
    Result<ExpectedRegister, String>,
)> {
    let firmware = read(firmware_path)?;
    let tdvf = match Tdvf::parse(&firmware) {
        Ok(tdvf) => tdvf,
        Err(error) => {
            let note = format!(
                "MRTD and RTMR0 not computed: {}: {error}",
                firmware_path.display()
            );
            return Ok((Err(note.clone()), Err(note)));
        }
    };
    let mrtd = tdvf.mrtd(page_order);
    let Some(acpi) = acpi_digests(inputs)? else {
        let note =
            "RTMR0 not computed: give --acpi-loader/--acpi-rsdp/--acpi-tables or --acpi-from-log"
                .to_owned();
        return Ok((Ok(mrtd), Err(note)));
    };
    let td_hob = tdvf
        .td_hob(memory_size)
        .context("firmware metadata has no TD_HOB section")?;
    let cfv = match inputs.cfv_digest {
        Some(digest) => digest,
        None => {
            let section = tdvf
                .section(SectionType::Cfv)
                .context("firmware metadata has no CFV section; pass --cfv-digest")?;
            Sha384Digest::of(tdvf.section_data(section))
        }
    };
    let rtmr0 = expected::rtmr0(&Rtmr0Inputs::direct_boot(
        Sha384Digest::of(&td_hob),
        cfv,
        acpi,
    ));
    Ok((Ok(mrtd), Ok(rtmr0)))
}

fn required<'a, T>(value: Option<&'a T>, flag: &str, what: &str) -> Result<&'a T> {
    value.with_context(|| format!("{what} needs {flag} (or the manifest entry)"))
}

fn rtmr1_register(inputs: &BootInputArgs, initrd_len: Option<u64>) -> Result<ExpectedRegister> {
    let kernel_path = required(inputs.kernel.as_ref(), "--kernel", "RTMR1")?;
    let memory = required(inputs.memory.as_ref(), "--memory", "RTMR1")?;
    let params = DirectBootParams::q35(
        parse_memory(memory)?,
        initrd_len,
        inputs.cmdline.clone().unwrap_or_default(),
    );
    let kernel_digest = kernel::kernel_measurement(&read(kernel_path)?, &params)
        .with_context(|| format!("measure kernel {}", kernel_path.display()))?;
    Ok(expected::rtmr1(kernel_digest))
}

fn write_register(out: &mut String, name: &str, register: &ExpectedRegister) -> Result<()> {
    writeln!(out, "{name}: {}", register.value)?;
    for event in &register.events {
        writeln!(
            out,
            "    {:<34} {:<40} {}",
            event.event_type_name.unwrap_or("?"),
            truncate(&event.description, 40),
            event.digest
        )?;
    }
    Ok(())
}

pub(crate) fn expected(args: &ExpectedArgs, out: &mut String) -> Result<()> {
    let inputs = args.inputs.resolve()?;
    let firmware_path = required(inputs.firmware.as_ref(), "--firmware", "expected")?;
    let memory_size = parse_memory(required(inputs.memory.as_ref(), "--memory", "expected")?)?;
    let page_order = PageOrder::from(inputs.page_order.unwrap_or(PageOrderArg::Single));
    let initrd = inputs.initrd.as_deref().map(read).transpose()?;
    let cmdline = inputs.cmdline.clone().unwrap_or_default();
    let (mrtd, rtmr0) = firmware_registers(&inputs, firmware_path, memory_size, page_order)?;
    let mut notes = Vec::new();
    for note in [mrtd.as_ref().err(), rtmr0.as_ref().err()]
        .into_iter()
        .flatten()
    {
        if !notes.contains(note) {
            notes.push(note.clone());
        }
    }
    let output = ExpectedOutput {
        memory_size,
        page_order,
        mrtd: mrtd.ok(),
        rtmr0: rtmr0.ok(),
        rtmr1: rtmr1_register(&inputs, initrd.as_ref().map(|i| i.len() as u64))?,
        rtmr2: expected::rtmr2(cmdline.as_bytes(), initrd.as_deref()),
        notes,
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
        return Ok(());
    }
    match &output.mrtd {
        Some(mrtd) => writeln!(out, "MRTD ({page_order:?}): {mrtd}")?,
        None => writeln!(out, "MRTD: not computed")?,
    }
    match &output.rtmr0 {
        Some(register) => write_register(out, "RTMR0", register)?,
        None => writeln!(out, "RTMR0: not computed")?,
    }
    write_register(out, "RTMR1", &output.rtmr1)?;
    write_register(out, "RTMR2", &output.rtmr2)?;
    for note in &output.notes {
        writeln!(out, "note: {note}")?;
    }
    Ok(())
}

pub(crate) fn rtmr(args: &RtmrArgs, out: &mut String) -> Result<()> {
    let inputs = args.inputs.resolve()?;
    let initrd = inputs.initrd.as_deref().map(read).transpose()?;
    let cmdline = inputs.cmdline.clone().unwrap_or_default();
    let register = match args.index {
        0 => {
            let firmware_path = required(inputs.firmware.as_ref(), "--firmware", "RTMR0")?;
            let memory = parse_memory(required(inputs.memory.as_ref(), "--memory", "RTMR0")?)?;
            let order = PageOrder::from(inputs.page_order.unwrap_or(PageOrderArg::Single));
            let (_, rtmr0) = firmware_registers(&inputs, firmware_path, memory, order)?;
            rtmr0.map_err(anyhow::Error::msg)?
        }
        1 => rtmr1_register(&inputs, initrd.as_ref().map(|i| i.len() as u64))?,
        _ => expected::rtmr2(cmdline.as_bytes(), initrd.as_deref()),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&register)?)?;
    } else {
        write_register(out, &format!("RTMR{}", args.index), &register)?;
    }
    Ok(())
}
