//! `cvm-measure`: the auditor's tool. Replays TDX event logs into RTMR0-3, checks them against a
//! quote, shows parsed quotes and decodes dstack runtime event logs. All math lives in the
//! `measure` library, which the init uses too.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use measure::dstack_event_log::{self, DstackEvent};
use measure::event_log::{EV_NO_ACTION, EventLog};
use measure::expected::{self, AcpiDigests, ExpectedRegister, Rtmr0Inputs};
use measure::kernel::{self, DirectBootParams};
use measure::quote::Quote;
use measure::quote_verify::{self, Collateral, QuoteVerdict};
use measure::replay::{Replay, ReplayVerdict};
use measure::rtmr::{RtmrIndex, Sha384Digest};
use measure::runtime_event::{self, DecodedLogLine, LogLineFormat, RuntimeEvent};
use measure::tdvf::{PageOrder, SectionType, Tdvf, TdvfSection};
use serde::Serialize;

mod gpu;

#[derive(Debug, Parser)]
#[command(name = "cvm-measure", version, about = "TDX measurement auditor")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay an event log into RTMR0-3; with a quote, exit non-zero unless they match.
    Replay(ReplayArgs),
    /// Parse a TDX quote (v4/v5) and print its fields.
    ParseQuote(ParseQuoteArgs),
    /// Inspect TDX quotes.
    #[command(subcommand)]
    Quote(QuoteCommand),
    /// Decode a dstack RTMR3 runtime event log and replay RTMR3.
    RuntimeEvents(RuntimeEventsArgs),
    /// Compute MRTD from a TDVF/OVMF image's TDX metadata.
    Mrtd(MrtdArgs),
    /// Compute the expected MRTD and RTMR0-2 of a direct kernel boot from its artifacts or a
    /// build manifest.
    Expected(ExpectedArgs),
    /// Compute one expected register (RTMR0, 1 or 2) of a direct kernel boot.
    Rtmr(RtmrArgs),
    /// Run the verification checklist (platform, application, key management).
    Verify(VerifyArgs),
    /// Verify NVIDIA confidential-GPU evidence against driver/VBIOS RIMs at a given time.
    Gpu(gpu::GpuArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// Quote: raw bytes, hex text, or a GetQuote response (default: the one in --event-log).
    #[arg(long)]
    quote: Option<PathBuf>,
    /// dcap-qvl QuoteCollateralV3 JSON for the signature and TCB checks.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// Verification time in Unix seconds (default: now).
    #[arg(long)]
    now: Option<u64>,
    /// Event log (firmware log, dstack JSON log, GetQuote response or runtime log).
    #[arg(long)]
    event_log: PathBuf,
    /// Runtime event log to append after a firmware log.
    #[arg(long)]
    runtime_events: Option<PathBuf>,
    /// Expected measurements of the build (`cvm-measure expected --json` output).
    #[arg(long)]
    expected: Option<PathBuf>,
    /// Whitelisted OS image hashes (hex, one per line).
    #[arg(long)]
    os_image_whitelist: Option<PathBuf>,
    /// The app-compose.json the TD was started with.
    #[arg(long)]
    app_compose: Option<PathBuf>,
    /// Challenge (hex) that must appear in reportData.
    #[arg(long)]
    challenge: Option<String>,
    /// Expected KMS identity: hex of the KMS root-CA SubjectPublicKeyInfo.
    #[arg(long)]
    kms_identity: Option<String>,
    /// The KMS's own quote (raw, hex or GetQuote response); verified like the app's, and its
    /// reportData must be SHA-512("kms-root-ca:" ‖ the --kms-identity SPKI).
    #[arg(long, requires = "kms_identity")]
    kms_quote: Option<PathBuf>,
    /// Collateral for --kms-quote (default: --collateral).
    #[arg(long)]
    kms_collateral: Option<PathBuf>,
    /// Print JSON instead of the checklist.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum PageOrderArg {
    /// Per page: PAGE.ADD then its MR.EXTENDs (QEMU >= 9).
    Single,
    /// Per section: all PAGE.ADDs, then all MR.EXTENDs (QEMU 8.x TDX).
    Two,
}

impl From<PageOrderArg> for PageOrder {
    fn from(order: PageOrderArg) -> Self {
        match order {
            PageOrderArg::Single => Self::SinglePass,
            PageOrderArg::Two => Self::TwoPass,
        }
    }
}

#[derive(Debug, clap::Args)]
struct MrtdArgs {
    /// OVMF/TDVF image with TDX metadata.
    #[arg(long)]
    firmware: PathBuf,
    /// Page order (default: print both).
    #[arg(long, value_enum)]
    page_order: Option<PageOrderArg>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ExpectedArgs {
    #[command(flatten)]
    inputs: BootInputArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RtmrArgs {
    /// Register: 0 (firmware, TD HOB, ACPI), 1 (kernel), 2 (command line, initrd).
    #[arg(value_parser = clap::value_parser!(u8).range(0..=2))]
    index: u8,
    #[command(flatten)]
    inputs: BootInputArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// The inputs of a direct kernel boot, from flags or a build manifest (flags win).
#[derive(Debug, Default, clap::Args, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BootInputArgs {
    /// Build manifest (TOML: firmware, kernel, initrd, cmdline, memory, page_order, acpi_*;
    /// paths relative to the manifest). Flags given as well override its entries.
    #[arg(long)]
    #[serde(skip)]
    manifest: Option<PathBuf>,
    /// OVMF/TDVF image (MRTD and RTMR0 need TDX metadata in it).
    #[arg(long)]
    firmware: Option<PathBuf>,
    /// bzImage passed with -kernel.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initrd passed with -initrd (the built initramfs image).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Command line passed with -append (default: empty).
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest RAM, e.g. 2G, 1536M or a byte count.
    #[arg(long)]
    memory: Option<String>,
    /// Page order of the VMM (single: QEMU >= 9; two: QEMU 8.x TDX; default single).
    #[arg(long, value_enum)]
    page_order: Option<PageOrderArg>,
    /// fw_cfg etc/table-loader as served by QEMU (with --acpi-rsdp and --acpi-tables).
    #[arg(long, requires_all = ["acpi_rsdp", "acpi_tables"])]
    acpi_loader: Option<PathBuf>,
    /// fw_cfg etc/acpi/rsdp.
    #[arg(long)]
    acpi_rsdp: Option<PathBuf>,
    /// fw_cfg etc/acpi/tables.
    #[arg(long)]
    acpi_tables: Option<PathBuf>,
    /// Take the three ACPI digests from a trusted boot's event log instead.
    #[arg(long, conflicts_with = "acpi_loader")]
    acpi_from_log: Option<PathBuf>,
    /// Override the CFV digest (default: SHA-384 of the image's CFV section).
    #[arg(long)]
    cfv_digest: Option<Sha384Digest>,
}

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

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Event log: raw CCEL/TCG log, dstack JSON event array, guest-agent GetQuote response, or
    /// runtime event log lines.
    #[arg(long)]
    event_log: PathBuf,
    /// Quote to check against: raw bytes, hex text, or a GetQuote response. A GetQuote response
    /// given as the event log supplies its own quote.
    #[arg(long)]
    quote: Option<PathBuf>,
    /// Runtime event log (RTMR3) to append after a firmware log.
    #[arg(long)]
    runtime_events: Option<PathBuf>,
    /// Registers to compare (default: all four), e.g. `--registers 0,1,2`.
    #[arg(long, value_delimiter = ',')]
    registers: Vec<u8>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ParseQuoteArgs {
    /// Quote: raw bytes, hex text, or a GetQuote response.
    file: PathBuf,
    /// Print all fields as JSON instead of a summary.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum QuoteCommand {
    /// Print the parsed fields of a quote as JSON (same as `parse-quote --json`).
    Show {
        /// Quote: raw bytes, hex text, or a GetQuote response.
        file: PathBuf,
    },
    /// Verify a quote offline against stored collateral (dcap-qvl); exit non-zero if rejected.
    Verify(QuoteVerifyArgs),
}

#[derive(Debug, clap::Args)]
struct QuoteVerifyArgs {
    /// Quote: raw bytes, hex text, or a GetQuote response.
    file: PathBuf,
    /// dcap-qvl QuoteCollateralV3 JSON.
    #[arg(long)]
    collateral: PathBuf,
    /// Verification time in Unix seconds (default: now). Pin it for stored collateral.
    #[arg(long)]
    now: Option<u64>,
    /// INSECURE: trust this root CA (DER) instead of Intel's, e.g. a simulated TEE's test root.
    #[arg(long)]
    insecure_root_ca: Option<PathBuf>,
    /// Also fail unless the TCB status is UpToDate.
    #[arg(long)]
    require_up_to_date: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RuntimeEventsArgs {
    /// Runtime event log (either line format), dstack JSON event array, or GetQuote response.
    file: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut stdout = String::new();
    let result = match cli.command {
        Command::Replay(args) => replay(&args, &mut stdout),
        Command::ParseQuote(args) => parse_quote(&args, &mut stdout),
        Command::Rtmr(args) => rtmr(&args, &mut stdout),
        Command::Quote(QuoteCommand::Show { file }) => quote_show(&file, &mut stdout),
        Command::Quote(QuoteCommand::Verify(args)) => quote_verify(&args, &mut stdout),
        Command::RuntimeEvents(args) => runtime_events(&args, &mut stdout),
        Command::Mrtd(args) => mrtd(&args, &mut stdout),
        Command::Expected(args) => expected(&args, &mut stdout),
        Command::Verify(args) => verify(&args, &mut stdout),
        Command::Gpu(args) => gpu::gpu(&args, &mut stdout),
    };
    print!("{stdout}");
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {}", path.display()))
}

fn text(path: &Path, bytes: &[u8]) -> Result<String> {
    String::from_utf8(bytes.to_vec())
        .with_context(|| format!("{} is not UTF-8 text", path.display()))
}

/// What an event-log file turned out to be.
enum LogInput {
    Tcg(EventLog),
    Dstack(Vec<DstackEvent>),
    GetQuote(Vec<DstackEvent>, Vec<u8>),
    Runtime(Vec<DecodedLogLine>),
}

impl LogInput {
    fn kind(&self) -> &'static str {
        match self {
            Self::Tcg(_) => "tcg",
            Self::Dstack(_) => "dstack-json",
            Self::GetQuote(..) => "dstack-getquote",
            Self::Runtime(_) => "runtime-log",
        }
    }
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

fn load_log(path: &Path) -> Result<LogInput> {
    let bytes = read(path)?;
    let looks_tcg = bytes
        .get(4..8)
        .is_some_and(|t| t == EV_NO_ACTION.to_le_bytes());
    if looks_tcg {
        let log = EventLog::parse(&bytes)
            .with_context(|| format!("parse TCG event log {}", path.display()))?;
        return Ok(LogInput::Tcg(log));
    }
    let text = text(path, &bytes)?;
    match first_non_space(text.as_bytes()) {
        Some(b'[') => Ok(LogInput::Dstack(
            dstack_event_log::parse_event_log(&text)
                .with_context(|| format!("parse dstack event log {}", path.display()))?,
        )),
        Some(b'{') if is_get_quote_response(&text) => {
            let response = dstack_event_log::parse_get_quote_response(&text)
                .with_context(|| format!("parse GetQuote response {}", path.display()))?;
            Ok(LogInput::GetQuote(response.event_log, response.quote))
        }
        _ => Ok(LogInput::Runtime(
            runtime_event::decode_log(&text)
                .with_context(|| format!("parse runtime event log {}", path.display()))?,
        )),
    }
}

fn is_get_quote_response(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .is_some_and(|v| v.get("event_log").is_some() && v.get("quote").is_some())
}

fn load_quote_bytes(path: &Path) -> Result<Vec<u8>> {
    let bytes = read(path)?;
    if first_non_space(&bytes) == Some(b'{') {
        let text = text(path, &bytes)?;
        let response = dstack_event_log::parse_get_quote_response(&text)
            .with_context(|| format!("parse GetQuote response {}", path.display()))?;
        return Ok(response.quote);
    }
    if let Ok(text) = std::str::from_utf8(&bytes) {
        let text = text.trim();
        let hex_text = text.strip_prefix("0x").unwrap_or(text);
        if !hex_text.is_empty() && hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return hex::decode(hex_text).with_context(|| format!("decode hex {}", path.display()));
        }
    }
    Ok(bytes)
}

fn load_quote(path: &Path) -> Result<Quote> {
    let bytes = load_quote_bytes(path)?;
    Quote::parse(&bytes).with_context(|| format!("parse quote {}", path.display()))
}

fn load_runtime_events(path: &Path) -> Result<Vec<RuntimeEvent>> {
    Ok(match load_log(path)? {
        LogInput::Runtime(lines) => lines.into_iter().map(|l| l.event).collect(),
        LogInput::Dstack(events) | LogInput::GetQuote(events, _) => events
            .iter()
            .filter_map(DstackEvent::runtime_event)
            .collect(),
        LogInput::Tcg(_) => bail!("{} is a firmware log, not runtime events", path.display()),
    })
}

#[derive(Serialize)]
struct ReplayOutput<'a> {
    source: &'static str,
    #[serde(flatten)]
    replay: &'a Replay,
    #[serde(skip_serializing_if = "Option::is_none")]
    quote_check: Option<QuoteCheck>,
}

#[derive(Serialize)]
struct QuoteCheck {
    registers: Vec<RtmrIndex>,
    quote_rtmrs: [Sha384Digest; 4],
    verdict: ReplayVerdict,
}

fn replay(args: &ReplayArgs, out: &mut String) -> Result<()> {
    let input = load_log(&args.event_log)?;
    let kind = input.kind();
    let (mut replay, embedded_quote) = match input {
        LogInput::Tcg(log) => (Replay::from_tcg_log(&log).context("replay TCG log")?, None),
        LogInput::Dstack(events) => (
            Replay::from_dstack_events(&events).context("replay dstack log")?,
            None,
        ),
        LogInput::GetQuote(events, quote) => (
            Replay::from_dstack_events(&events).context("replay dstack log")?,
            Some(quote),
        ),
        LogInput::Runtime(lines) => (
            Replay::from_runtime_events(lines.iter().map(|l| &l.event)),
            None,
        ),
    };
    if let Some(path) = &args.runtime_events {
        replay.append_runtime_events(&load_runtime_events(path)?);
    }
    let quote = match (&args.quote, embedded_quote) {
        (Some(path), _) => Some(load_quote(path)?),
        (None, Some(bytes)) => {
            Some(Quote::parse(&bytes).context("parse quote of the GetQuote response")?)
        }
        (None, None) => None,
    };
    let registers = if args.registers.is_empty() {
        RtmrIndex::ALL.to_vec()
    } else {
        args.registers
            .iter()
            .map(|&i| RtmrIndex::try_from(i))
            .collect::<Result<Vec<_>, _>>()
            .context("parse --registers")?
    };
    let quote_check = quote.map(|quote| QuoteCheck {
        verdict: replay.verify_registers(quote.rtmrs(), &registers),
        quote_rtmrs: *quote.rtmrs().values(),
        registers: registers.clone(),
    });
    if args.json {
        let output = ReplayOutput {
            source: kind,
            replay: &replay,
            quote_check,
        };
        writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
        return check_verdict(output.quote_check.as_ref());
    }
    writeln!(
        out,
        "source: {kind}, {} events extended",
        replay.entries.len()
    )?;
    writeln!(
        out,
        "{:>3}  {:<5} {:<34} {:<40} digest",
        "#", "rtmr", "type", "event"
    )?;
    for (i, entry) in replay.entries.iter().enumerate() {
        let event_type = entry
            .event_type_name
            .map_or_else(|| format!("{:#010x}", entry.event_type), str::to_owned);
        writeln!(
            out,
            "{i:>3}  {:<5} {:<34} {:<40} {}",
            entry.rtmr,
            event_type,
            truncate(&entry.description, 40),
            entry.digest
        )?;
    }
    writeln!(out)?;
    for index in RtmrIndex::ALL {
        let replayed = replay.rtmrs.register(index);
        let status = match &quote_check {
            None => "",
            Some(check) if !check.registers.contains(&index) => "  (not compared)",
            Some(check) if check.quote_rtmrs[index.position()] == *replayed => "  ✓ matches quote",
            Some(_) => "  ✗ differs from quote",
        };
        writeln!(out, "{index}: {replayed}{status}")?;
        if let Some(check) = &quote_check
            && check.quote_rtmrs[index.position()] != *replayed
            && check.registers.contains(&index)
        {
            writeln!(out, "  quote: {}", check.quote_rtmrs[index.position()])?;
        }
    }
    check_verdict(quote_check.as_ref())
}

fn check_verdict(check: Option<&QuoteCheck>) -> Result<()> {
    match check.map(|c| &c.verdict) {
        None | Some(ReplayVerdict::Match) => Ok(()),
        Some(ReplayVerdict::Mismatch(mismatches)) => {
            let mut reason = String::from("replayed event log does not match the quote:");
            for m in mismatches {
                write!(
                    reason,
                    " {} quote {} replayed {};",
                    m.index, m.expected, m.actual
                )?;
            }
            bail!(reason.trim_end_matches(';').to_owned())
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

fn quote_show(path: &Path, out: &mut String) -> Result<()> {
    let quote = load_quote(path)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&quote)?)?;
    Ok(())
}

fn parse_quote(args: &ParseQuoteArgs, out: &mut String) -> Result<()> {
    let quote = load_quote(&args.file)?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&quote)?)?;
        return Ok(());
    }
    let body = &quote.body;
    let certification = &quote.signature_data.certification;
    writeln!(
        out,
        "quote v{} (TEE type {:#x}, TD report {:?})",
        quote.header.version, quote.header.tee_type, body.version
    )?;
    writeln!(out, "MRTD:          {}", body.mr_td)?;
    for index in RtmrIndex::ALL {
        writeln!(out, "{index}:         {}", body.rtmrs.register(index))?;
    }
    writeln!(out, "MRCONFIGID:    {}", body.mr_config_id)?;
    writeln!(out, "MROWNER:       {}", body.mr_owner)?;
    writeln!(out, "MROWNERCONFIG: {}", body.mr_owner_config)?;
    writeln!(out, "MRSEAM:        {}", body.mr_seam)?;
    writeln!(out, "TEE TCB SVN:   {}", hex::encode(body.tee_tcb_svn))?;
    writeln!(out, "TD attributes: {:#018x}", body.td_attributes)?;
    writeln!(out, "XFAM:          {:#018x}", body.xfam)?;
    writeln!(out, "reportData:    {}", hex::encode(body.report_data.0))?;
    writeln!(
        out,
        "certification: type {}{}",
        certification.cert_type(),
        if certification.pck_cert_chain_pem().is_some() {
            ", with PCK certificate chain"
        } else {
            ""
        }
    )?;
    if quote.trailing_len > 0 {
        writeln!(
            out,
            "padding:       {} bytes after the quote",
            quote.trailing_len
        )?;
    }
    Ok(())
}

#[derive(Serialize)]
struct RuntimeEventOutput {
    name: String,
    version: u32,
    payload_hex: String,
    digest: Sha384Digest,
    rtmr3_after: Sha384Digest,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded_digest_matches: Option<bool>,
}

fn runtime_events(args: &RuntimeEventsArgs, out: &mut String) -> Result<()> {
    let (events, lines): (Vec<RuntimeEvent>, Option<Vec<DecodedLogLine>>) =
        match load_log(&args.file)? {
            LogInput::Runtime(lines) => {
                (lines.iter().map(|l| l.event.clone()).collect(), Some(lines))
            }
            LogInput::Dstack(events) | LogInput::GetQuote(events, _) => (
                events
                    .iter()
                    .filter_map(DstackEvent::runtime_event)
                    .collect(),
                None,
            ),
            LogInput::Tcg(_) => bail!(
                "{} is a firmware log, not runtime events",
                args.file.display()
            ),
        };
    let listing = runtime_event::replay_listing(&events);
    let rows: Vec<RuntimeEventOutput> = listing
        .iter()
        .enumerate()
        .map(|(i, step)| {
            let line = lines.as_ref().and_then(|l| l.get(i));
            RuntimeEventOutput {
                name: step.event.name.clone(),
                version: step.event.version.number(),
                payload_hex: hex::encode(&step.event.payload),
                digest: step.digest,
                rtmr3_after: step.rtmr3_after,
                format: line.map(|l| match l.format {
                    LogLineFormat::Current => "current",
                    LogLineFormat::Legacy => "legacy",
                }),
                recorded_digest_matches: line
                    .filter(|l| l.recorded_digest.is_some())
                    .map(DecodedLogLine::recorded_digest_matches),
            }
        })
        .collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        writeln!(
            out,
            "{:>3}  {:<2} {:<20} {:<40} digest",
            "#", "v", "event", "payload"
        )?;
        for (i, (row, step)) in rows.iter().zip(&listing).enumerate() {
            let mark = if row.recorded_digest_matches == Some(false) {
                "  (recorded digest differs)"
            } else {
                ""
            };
            writeln!(
                out,
                "{i:>3}  {:<2} {:<20} {:<40} {}{mark}",
                row.version,
                truncate(&row.name, 20),
                truncate(&printable_payload(&step.event.payload), 40),
                row.digest
            )?;
        }
        let final_rtmr3 = listing.last().map_or(Sha384Digest::ZERO, |s| s.rtmr3_after);
        writeln!(out, "\nRTMR3: {final_rtmr3}")?;
    }
    if rows
        .iter()
        .any(|r| r.recorded_digest_matches == Some(false))
    {
        bail!("a recorded digest differs from the one computed from its event");
    }
    Ok(())
}

fn printable_payload(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) if !s.is_empty() && s.chars().all(|c| !c.is_control()) => s.to_owned(),
        _ => hex::encode(payload),
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
struct MrtdOutput {
    sections: Vec<TdvfSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    single_pass: Option<Sha384Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    two_pass: Option<Sha384Digest>,
}

fn mrtd(args: &MrtdArgs, out: &mut String) -> Result<()> {
    let image = read(&args.firmware)?;
    let tdvf = Tdvf::parse(&image)
        .with_context(|| format!("parse TDX metadata of {}", args.firmware.display()))?;
    let want = |order: PageOrder| {
        args.page_order
            .is_none_or(|o| PageOrder::from(o) == order)
            .then(|| tdvf.mrtd(order))
    };
    let output = MrtdOutput {
        sections: tdvf.sections.clone(),
        single_pass: want(PageOrder::SinglePass),
        two_pass: want(PageOrder::TwoPass),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&output)?)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<3} {:<14} {:>10} {:>10} {:>18} {:>10} attributes",
        "#", "type", "offset", "raw size", "address", "size"
    )?;
    for (i, s) in tdvf.sections.iter().enumerate() {
        writeln!(
            out,
            "{i:<3} {:<14} {:>#10x} {:>#10x} {:>#18x} {:>#10x} {:#x}",
            format!("{:?}", s.section_type),
            s.data_offset,
            s.raw_data_size,
            s.memory_address,
            s.memory_data_size,
            s.attributes
        )?;
    }
    if let Some(d) = output.single_pass {
        writeln!(out, "MRTD (single-pass): {d}")?;
    }
    if let Some(d) = output.two_pass {
        writeln!(out, "MRTD (two-pass):    {d}")?;
    }
    Ok(())
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

fn expected(args: &ExpectedArgs, out: &mut String) -> Result<()> {
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

fn rtmr(args: &RtmrArgs, out: &mut String) -> Result<()> {
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

fn quote_verify(args: &QuoteVerifyArgs, out: &mut String) -> Result<()> {
    let quote = load_quote_bytes(&args.file)?;
    let collateral_text = text(&args.collateral, &read(&args.collateral)?)?;
    let collateral = Collateral::from_json(&collateral_text)
        .with_context(|| format!("parse collateral {}", args.collateral.display()))?;
    let now = match args.now {
        Some(now) => now,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("read the system clock")?
            .as_secs(),
    };
    let verdict = match &args.insecure_root_ca {
        Some(root) => {
            quote_verify::insecure_verify_quote_with_root(&quote, &collateral, now, &read(root)?)
        }
        None => quote_verify::verify_quote(&quote, &collateral, now),
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&verdict)?)?;
    } else {
        match &verdict {
            QuoteVerdict::Verified {
                tcb_status,
                advisory_ids,
            } => {
                writeln!(out, "✓ quote verified at {now}: TCB status {tcb_status}")?;
                if !advisory_ids.is_empty() {
                    writeln!(out, "  advisories: {}", advisory_ids.join(", "))?;
                }
            }
            QuoteVerdict::Rejected { reason, detail } => {
                writeln!(out, "✗ quote rejected at {now}: {reason:?}: {detail}")?;
            }
        }
        if args.insecure_root_ca.is_some() {
            writeln!(
                out,
                "  WARNING: verified against an insecure root CA, not Intel's"
            )?;
        }
    }
    match verdict {
        QuoteVerdict::Rejected { reason, detail } => {
            bail!("quote rejected ({reason:?}): {detail}")
        }
        QuoteVerdict::Verified { tcb_status, .. }
            if args.require_up_to_date && tcb_status != "UpToDate" =>
        {
            bail!("TCB status is {tcb_status}, not UpToDate")
        }
        QuoteVerdict::Verified { .. } => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
enum CheckStatus {
    Pass,
    Fail,
    Skipped,
    /// A platform check over evidence from the INSECURE simulated TEE: never a pass.
    Simulated,
}

/// QE vendor id of quotes from cvm-init's INSECURE simulated TEE (test builds only).
const SIMULATED_QE_VENDOR_ID: &[u8; 16] = b"INSECURE-SIM-TEE";
/// The event the simulated TEE extends into RTMR3 before anything else.
const SIMULATED_TEE_EVENT: &str = "insecure-simulated-tee";

#[derive(Debug, Serialize)]
struct CheckLine {
    section: &'static str,
    check: &'static str,
    status: CheckStatus,
    reason: String,
}

struct Checklist(Vec<CheckLine>);

impl Checklist {
    fn push(
        &mut self,
        section: &'static str,
        check: &'static str,
        outcome: Option<(bool, String)>,
    ) {
        let (status, reason) = match outcome {
            None => (CheckStatus::Skipped, "input not given".to_owned()),
            Some((true, reason)) => (CheckStatus::Pass, reason),
            Some((false, reason)) => (CheckStatus::Fail, reason),
        };
        self.0.push(CheckLine {
            section,
            check,
            status,
            reason,
        });
    }
}

fn hex_arg(name: &str, value: &str) -> Result<Vec<u8>> {
    hex::decode(value.trim().trim_start_matches("0x"))
        .with_context(|| format!("parse {name} as hex"))
}

/// Lines of a compose file's `image:` keys that are not pinned by `@sha256:<64 hex>`.
fn unpinned_images(compose: &str) -> Vec<String> {
    compose
        .lines()
        .filter_map(|line| line.trim().strip_prefix("image:"))
        .map(|image| {
            image
                .trim()
                .trim_matches(|c| c == '"' || c == '\'')
                .to_owned()
        })
        .filter(|image| {
            image.split_once("@sha256:").is_none_or(|(_, digest)| {
                digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit())
            })
        })
        .collect()
}

fn verify(args: &VerifyArgs, out: &mut String) -> Result<()> {
    let input = load_log(&args.event_log)?;
    let (mut replay, embedded_quote) = match input {
        LogInput::Tcg(log) => (Replay::from_tcg_log(&log).context("replay TCG log")?, None),
        LogInput::Dstack(events) => (
            Replay::from_dstack_events(&events).context("replay dstack log")?,
            None,
        ),
        LogInput::GetQuote(events, quote) => (
            Replay::from_dstack_events(&events).context("replay dstack log")?,
            Some(quote),
        ),
        LogInput::Runtime(lines) => (
            Replay::from_runtime_events(lines.iter().map(|l| &l.event)),
            None,
        ),
    };
    let mut runtime: Vec<RuntimeEvent> = match load_log(&args.event_log)? {
        LogInput::Runtime(lines) => lines.into_iter().map(|l| l.event).collect(),
        LogInput::Dstack(events) | LogInput::GetQuote(events, _) => events
            .iter()
            .filter_map(DstackEvent::runtime_event)
            .collect(),
        LogInput::Tcg(_) => Vec::new(),
    };
    if let Some(path) = &args.runtime_events {
        let extra = load_runtime_events(path)?;
        replay.append_runtime_events(&extra);
        runtime.extend(extra);
    }
    let quote_bytes = match (&args.quote, embedded_quote) {
        (Some(path), _) => load_quote_bytes(path)?,
        (None, Some(bytes)) => bytes,
        (None, None) => bail!("no quote: pass --quote or a GetQuote response as --event-log"),
    };
    let quote = Quote::parse(&quote_bytes).context("parse quote")?;
    let body = &quote.body;
    // Evidence from the simulated TEE of a QEMU test build: every platform line is marked, and
    // the verdict is a rejection whatever else passes.
    let simulated = quote.header.qe_vendor_id == *SIMULATED_QE_VENDOR_ID
        || runtime.iter().any(|e| e.name == SIMULATED_TEE_EVENT);
    let system = measure::dstack_identity::system_events(&runtime);
    let event = |name: &str| system.iter().find(|e| e.name == name);
    let mut list = Checklist(Vec::new());

    // Platform.
    let now = match args.now {
        Some(now) => now,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("read the system clock")?
            .as_secs(),
    };
    let verdict = match &args.collateral {
        Some(path) => {
            let text = text(path, &read(path)?)?;
            let collateral = Collateral::from_json(&text)
                .with_context(|| format!("parse collateral {}", path.display()))?;
            Some(quote_verify::verify_quote(&quote_bytes, &collateral, now))
        }
        None => None,
    };
    list.push(
        "platform",
        "quote signature valid",
        verdict.as_ref().map(|v| match v {
            QuoteVerdict::Verified { .. } => {
                (true, format!("verified against Intel SGX Root CA at {now}"))
            }
            QuoteVerdict::Rejected { reason, detail } => (false, format!("{reason:?}: {detail}")),
        }),
    );
    list.push(
        "platform",
        "TCB status up to date",
        verdict.as_ref().map(|v| match v {
            QuoteVerdict::Verified {
                tcb_status,
                advisory_ids,
            } => (
                tcb_status == "UpToDate",
                format!("{tcb_status} {}", advisory_ids.join(","))
                    .trim()
                    .to_owned(),
            ),
            QuoteVerdict::Rejected { .. } => (false, "quote not verified".to_owned()),
        }),
    );
    let expected: Option<serde_json::Value> = match &args.expected {
        Some(path) => Some(
            serde_json::from_slice(&read(path)?)
                .with_context(|| format!("parse expected measurements {}", path.display()))?,
        ),
        None => None,
    };
    list.push(
        "platform",
        "MRTD and RTMR0-2 match expected",
        expected.as_ref().map(|e| {
            let mut diffs = Vec::new();
            let actual = [
                ("MRTD", &body.mr_td, e.get("mrtd")),
                (
                    "RTMR0",
                    body.rtmrs.register(RtmrIndex::R0),
                    e.pointer("/rtmr0/value"),
                ),
                (
                    "RTMR1",
                    body.rtmrs.register(RtmrIndex::R1),
                    e.pointer("/rtmr1/value"),
                ),
                (
                    "RTMR2",
                    body.rtmrs.register(RtmrIndex::R2),
                    e.pointer("/rtmr2/value"),
                ),
            ];
            for (name, value, want) in actual {
                match want.and_then(serde_json::Value::as_str) {
                    Some(want) if want == value.to_string() => {}
                    Some(want) => diffs.push(format!("{name} quote {value} expected {want}")),
                    None => diffs.push(format!("{name} missing from expected")),
                }
            }
            if diffs.is_empty() {
                (true, "all four match".to_owned())
            } else {
                (false, diffs.join("; "))
            }
        }),
    );
    let whitelist = match &args.os_image_whitelist {
        Some(path) => Some(text(path, &read(path)?)?),
        None => None,
    };
    list.push(
        "platform",
        "OS image hash whitelisted",
        whitelist.map(|list| match event("os-image-hash") {
            None => (
                false,
                "no os-image-hash event before system-ready".to_owned(),
            ),
            Some(e) => {
                let hash = hex::encode(&e.payload);
                let listed = list.lines().any(|l| l.trim().eq_ignore_ascii_case(&hash));
                (listed, format!("os-image-hash {hash}"))
            }
        }),
    );

    // Application.
    let compose = match &args.app_compose {
        Some(path) => Some(read(path)?),
        None => None,
    };
    list.push(
        "application",
        "compose-hash matches app-compose.json",
        compose.as_ref().map(|bytes| {
            let hash: [u8; 32] = sha2_256(bytes);
            match event("compose-hash") {
                None => (
                    false,
                    "no compose-hash event before system-ready".to_owned(),
                ),
                Some(e) if e.payload == hash => {
                    (true, format!("compose-hash {}", hex::encode(hash)))
                }
                Some(e) => (
                    false,
                    format!(
                        "event {} file {}",
                        hex::encode(&e.payload),
                        hex::encode(hash)
                    ),
                ),
            }
        }),
    );
    list.push(
        "application",
        "every image pinned by sha256 digest",
        compose.as_ref().map(|bytes| {
            let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            let compose_file = value
                .get("docker_compose_file")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            let unpinned = unpinned_images(compose_file);
            if compose_file.is_empty() {
                (
                    false,
                    "app-compose.json has no docker_compose_file".to_owned(),
                )
            } else if unpinned.is_empty() {
                (true, "all image: lines use @sha256".to_owned())
            } else {
                (false, format!("unpinned: {}", unpinned.join(", ")))
            }
        }),
    );
    let rtmr3 = replay.rtmrs.register(RtmrIndex::R3);
    let quote_rtmr3 = body.rtmrs.register(RtmrIndex::R3);
    list.push(
        "application",
        "RTMR3 event log replays to the quote",
        Some((
            rtmr3 == quote_rtmr3,
            if rtmr3 == quote_rtmr3 {
                format!("{} events, RTMR3 {rtmr3}", runtime.len())
            } else {
                format!("replayed {rtmr3}, quote {quote_rtmr3}")
            },
        )),
    );
    let challenge = args
        .challenge
        .as_deref()
        .map(|c| hex_arg("--challenge", c))
        .transpose()?;
    list.push(
        "application",
        "reportData contains the challenge",
        challenge.map(|c| {
            let data = &body.report_data.0;
            let found = !c.is_empty()
                && c.len() <= data.len()
                && data.windows(c.len()).any(|w| w == c.as_slice());
            (found, format!("reportData {}", hex::encode(data)))
        }),
    );

    // Key management.
    list.push(
        "key management",
        "key-provider matches the expected KMS identity",
        args.kms_identity
            .as_ref()
            .map(|want| match event("key-provider") {
                None => (
                    false,
                    "no key-provider event before system-ready".to_owned(),
                ),
                Some(e) => {
                    let value: serde_json::Value =
                        serde_json::from_slice(&e.payload).unwrap_or_default();
                    let name = value
                        .get("name")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default();
                    let id = value
                        .get("id")
                        .and_then(serde_json::Value::as_str)
                        .unwrap_or_default();
                    (
                        name == "kms" && id.eq_ignore_ascii_case(want.trim()),
                        format!("key-provider {}", String::from_utf8_lossy(&e.payload)),
                    )
                }
            }),
    );
    let kms = match &args.kms_quote {
        Some(path) => Some(kms_attestation(
            path,
            args.kms_collateral.as_ref().or(args.collateral.as_ref()),
            args.kms_identity.as_deref().unwrap_or_default(),
            now,
        )?),
        None => None,
    };
    list.push("key management", "KMS attestation valid", kms);
    if let Some(line) = list.0.last_mut()
        && line.status == CheckStatus::Skipped
    {
        line.reason = "input not given (--kms-quote)".to_owned();
    }

    if simulated {
        for line in list.0.iter_mut().filter(|l| l.section == "platform") {
            line.status = CheckStatus::Simulated;
            line.reason = format!(
                "INSECURE simulated TEE (QEMU test build), not TDX hardware: {}",
                line.reason
            );
        }
        list.0.insert(
            0,
            CheckLine {
                section: "platform",
                check: "evidence from a real TDX module",
                status: CheckStatus::Simulated,
                reason: format!(
                    "the {SIMULATED_TEE_EVENT} event / QE vendor id INSECURE-SIM-TEE mark \
                     this evidence as simulated: it proves nothing and is always rejected"
                ),
            },
        );
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&list.0)?)?;
    } else {
        if simulated {
            writeln!(
                out,
                "WARNING: INSECURE SIMULATED TEE — the platform lines below are marked SIMULATED; \
                 no verifier may accept this evidence."
            )?;
        }
        let mut section = "";
        for line in &list.0 {
            if line.section != section {
                section = line.section;
                writeln!(out, "{section}:")?;
            }
            let mark = match line.status {
                CheckStatus::Pass => "✓",
                CheckStatus::Fail => "✗",
                CheckStatus::Skipped => "-",
                CheckStatus::Simulated => "~ SIMULATED",
            };
            writeln!(out, "  {mark} {}: {}", line.check, line.reason)?;
        }
    }
    let failed: Vec<_> = list
        .0
        .iter()
        .filter(|l| l.status == CheckStatus::Fail)
        .map(|l| l.check)
        .collect();
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join(", "))
    }
    if simulated {
        bail!("rejected: evidence from the INSECURE simulated TEE (every other check passed)");
    }
    Ok(())
}

/// The KMS's quote: signature and TCB with stored collateral, and reportData binding the
/// expected KMS root-CA key (`kms-root-ca` content type, SHA-512).
fn kms_attestation(
    path: &Path,
    collateral: Option<&PathBuf>,
    identity_hex: &str,
    now: u64,
) -> Result<(bool, String)> {
    use sha2::Digest as _;
    let bytes = load_quote_bytes(path)?;
    let quote =
        Quote::parse(&bytes).with_context(|| format!("parse KMS quote {}", path.display()))?;
    let spki = hex_arg("--kms-identity", identity_hex)?;
    let mut hasher = sha2::Sha512::new();
    hasher.update(b"kms-root-ca:");
    hasher.update(&spki);
    let want: [u8; 64] = hasher.finalize().into();
    if quote.body.report_data.0 != want {
        return Ok((
            false,
            format!(
                "KMS quote reportData {} is not SHA-512(\"kms-root-ca:\" ‖ KMS identity)",
                hex::encode(quote.body.report_data.0)
            ),
        ));
    }
    let Some(collateral) = collateral else {
        return Ok((
            false,
            "KMS quote binds the KMS identity but was not verified: give --kms-collateral"
                .to_owned(),
        ));
    };
    let text = text(collateral, &read(collateral)?)?;
    let collateral = Collateral::from_json(&text)
        .with_context(|| format!("parse collateral {}", collateral.display()))?;
    Ok(match quote_verify::verify_quote(&bytes, &collateral, now) {
        QuoteVerdict::Verified { tcb_status, .. } => (
            tcb_status == "UpToDate",
            format!(
                "KMS quote verified at {now}, TCB {tcb_status}, reportData binds the KMS identity"
            ),
        ),
        QuoteVerdict::Rejected { reason, detail } => {
            (false, format!("KMS quote rejected: {reason:?}: {detail}"))
        }
    })
}

fn sha2_256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}
