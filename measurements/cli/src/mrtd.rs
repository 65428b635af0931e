//! `cvm-measure mrtd`: MRTD of a TDVF/OVMF image.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use measure::rtmr::Sha384Digest;
use measure::tdvf::{PageOrder, Tdvf, TdvfSection};
use serde::Serialize;

use crate::MrtdArgs;
use crate::input::read;

#[derive(Serialize)]
struct MrtdOutput {
    sections: Vec<TdvfSection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    single_pass: Option<Sha384Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    two_pass: Option<Sha384Digest>,
}

pub(crate) fn mrtd(args: &MrtdArgs, out: &mut String) -> Result<()> {
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
