//! `cvm-measure`: the auditor's tool. Replays TDX event logs into RTMR0-3, checks them against a
//! quote, shows parsed quotes, decodes dstack runtime event logs and checks or pins an app's
//! compose file. All math lives in the
//! `measure` library, which the init uses too; one module per command, this file holds
//! the command line and the dispatch.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use measure::rtmr::Sha384Digest;
use measure::tdvf::PageOrder;

mod compose;
mod expected;
mod gpu;
mod image_hash;
mod input;
mod mrtd;
mod quote;
mod replay;
mod runtime_events;
mod verify;

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
    /// Check an app's compose file against the init's parser, or pin its tag-only images.
    #[command(subcommand)]
    Compose(compose::ComposeCommand),
    /// Recompute a dstack image bundle's os_image_hash (SHA-256 of sha256sum.txt), checking
    /// every listed file and digest.txt; exit non-zero on any mismatch.
    ImageHash(ImageHashArgs),
}

#[derive(Debug, clap::Args)]
struct ImageHashArgs {
    /// Bundle directory (ovmf.fd, bzImage, initramfs.cpio.gz, metadata.json, sha256sum.txt,
    /// digest.txt), e.g. dist/dstack-image.
    dir: PathBuf,
    /// Fail unless os_image_hash equals this (hex).
    #[arg(long)]
    expect: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
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
    /// Whitelisted OS measurements, hex SHA-256(MRTD ‖ RTMR0 ‖ RTMR1 ‖ RTMR2), one per line
    /// (the checklist prints the TD's value; not the KMS-supplied os-image-hash event).
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
    /// The KMS's own quote (raw, hex or GetQuote response); its reportData must be
    /// SHA-512("kms-root-ca:" ‖ SPKI) of the app's KMS (key-provider event, and --kms-identity
    /// if given), its MRTD/RTMR0-2 those of --kms-expected, and it must verify like the app's.
    #[arg(long)]
    kms_quote: Option<PathBuf>,
    /// Expected measurements of the KMS's build (`cvm-measure expected --json` output).
    #[arg(long, requires = "kms_quote")]
    kms_expected: Option<PathBuf>,
    /// Collateral for --kms-quote (default: --collateral).
    #[arg(long)]
    kms_collateral: Option<PathBuf>,
    /// Accept a check undecided (its input not given, or not holding); repeatable. A check
    /// whose input is missing fails unless named here. `quote-signature` covers
    /// `tcb-up-to-date`. Simulated evidence is rejected whatever is skipped.
    #[arg(long = "skip", value_name = "CHECK", value_parser = skip_parser())]
    skip: Vec<String>,
    /// Print JSON instead of the checklist.
    #[arg(long)]
    json: bool,
}

/// `--skip` accepts exactly the skippable checks' names (clap lists them on a typo).
fn skip_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        measure::verify::CheckId::skippable().map(measure::verify::CheckId::name),
    )
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
        Command::Replay(args) => replay::replay(&args, &mut stdout),
        Command::ParseQuote(args) => quote::parse_quote(&args, &mut stdout),
        Command::Rtmr(args) => expected::rtmr(&args, &mut stdout),
        Command::Quote(QuoteCommand::Show { file }) => quote::quote_show(&file, &mut stdout),
        Command::Quote(QuoteCommand::Verify(args)) => quote::quote_verify(&args, &mut stdout),
        Command::RuntimeEvents(args) => runtime_events::runtime_events(&args, &mut stdout),
        Command::Mrtd(args) => mrtd::mrtd(&args, &mut stdout),
        Command::Expected(args) => expected::expected(&args, &mut stdout),
        Command::Verify(args) => verify::verify(&args, &mut stdout),
        Command::Gpu(args) => gpu::gpu(&args, &mut stdout),
        Command::Compose(compose::ComposeCommand::Check(args)) => {
            compose::check(&args, &mut stdout)
        }
        Command::Compose(compose::ComposeCommand::Pin(args)) => compose::pin(&args, &mut stdout),
        Command::ImageHash(args) => image_hash::image_hash(&args, &mut stdout),
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
