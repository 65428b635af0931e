//! `cvm-measure parse-quote`, `quote show` and `quote verify`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use measure::quote_verify::{self, Collateral, QuoteVerdict};
use measure::rtmr::RtmrIndex;

use crate::input::{load_quote, load_quote_bytes, read, text};
use crate::{ParseQuoteArgs, QuoteVerifyArgs};

pub(crate) fn quote_show(path: &Path, out: &mut String) -> Result<()> {
    let quote = load_quote(path)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&quote)?)?;
    Ok(())
}

pub(crate) fn parse_quote(args: &ParseQuoteArgs, out: &mut String) -> Result<()> {
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

pub(crate) fn quote_verify(args: &QuoteVerifyArgs, out: &mut String) -> Result<()> {
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
