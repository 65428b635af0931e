//! `cargo xtask gpu-extension --tree DIR --out FILE`: the GPU driver extension image (EROFS plus
//! its dm-verity tree, `cvm_initramfs::gpu_extension`) of a prepared driver tree; prints the
//! root hash and the kernel command-line fragment that pins it.

use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};

pub(crate) fn cmd(args: &[String]) -> Result<()> {
    let (mut tree, mut out) = (None, None);
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--tree" => tree = it.next().map(PathBuf::from),
            "--out" => out = it.next().map(PathBuf::from),
            other => bail!("unknown option `{other}`: expected --tree DIR --out FILE"),
        }
    }
    let (Some(tree), Some(out)) = (tree, out) else {
        bail!("usage: cargo xtask gpu-extension --tree DIR --out FILE");
    };
    crate::packages::ensure(&[crate::packages::BUILD])?;
    let epoch = crate::dist::source_date_epoch();
    let built = cvm_initramfs::gpu_extension::build(&tree, &out, epoch)
        .with_context(|| format!("build the GPU driver extension of {}", tree.display()))?;
    println!(
        "{}: {} bytes ({} bytes of EROFS, SOURCE_DATE_EPOCH={epoch})",
        out.display(),
        built.image_bytes,
        built.data_bytes
    );
    println!("root hash: {}", hex::encode(built.root_hash));
    println!("kernel command line: {}", built.cmdline_fragment());
    Ok(())
}
