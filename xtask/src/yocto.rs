//! The Yocto layer's generated files and its checks.
//!
//! * `cargo xtask yocto-crates` writes `cvm-init-crates.inc` (every crates.io package of
//!   `Cargo.lock` as a `crate://` URI with its sha256, taken from the lock's `checksum`; no
//!   network).
//! * `cargo xtask yocto-fragment` writes the kernel fragment `cvm-init.cfg` from
//!   `init_core::kernel_contract::FEATURES`.
//! * `cargo xtask yocto-check` fails when either generated file is stale, when the initramfs
//!   recipe's `CVM_INITRAMFS_ENTRIES` differ from `initramfs/manifest.toml`, or when
//!   `oelint-adv` (PyPI, pinned in `yocto/requirements-lint.txt`, venv `target/oelint-venv`)
//!   finds anything in the layer. `cargo xtask test` runs it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use cvm_initramfs::Manifest;
use cvm_initramfs::manifest::FileSource;
use sha2::{Digest, Sha256};

use crate::dist::workspace_root;

/// The layer, relative to the workspace root.
pub(crate) const LAYER: &str = "yocto/meta-cvm-init";
/// The generated crate list.
pub(crate) const CRATES_INC: &str = "yocto/meta-cvm-init/recipes-core/cvm-init/cvm-init-crates.inc";
/// The generated kernel fragment.
pub(crate) const FRAGMENT: &str = "yocto/meta-cvm-init/recipes-kernel/linux/files/cvm-init.cfg";
/// The initramfs recipe whose entries must match the manifest.
pub(crate) const IMAGE_RECIPE: &str =
    "yocto/meta-cvm-init/recipes-core/images/cvm-init-initramfs_0.1.0.bb";
/// The manifest of `initramfs/`.
pub(crate) const MANIFEST: &str = "initramfs/manifest.toml";
/// The pinned linter.
const LINT_REQUIREMENTS: &str = "yocto/requirements-lint.txt";
/// Its venv.
const LINT_VENV: &str = "target/oelint-venv";
/// Stamp inside the venv: SHA-256 of the requirements it was installed from.
const LINT_STAMP: &str = "cvm-requirements.sha256";
/// The Yocto series the layer declares (conf/layer.conf LAYERSERIES_COMPAT).
pub(crate) const YOCTO_RELEASE: &str = "wrynose";
/// The registry every locked package must come from.
const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// `cvm-init-crates.inc` for the text of `Cargo.lock`.
pub(crate) fn crates_inc(lock: &str) -> Result<String> {
    let table: toml::Table = toml::from_str(lock).context("parse Cargo.lock")?;
    let packages = table
        .get("package")
        .and_then(toml::Value::as_array)
        .context("Cargo.lock has no [[package]] array")?;
    let mut crates = Vec::new();
    for package in packages {
        let field = |key: &str| package.get(key).and_then(toml::Value::as_str);
        let (Some(name), Some(version)) = (field("name"), field("version")) else {
            bail!("a [[package]] of Cargo.lock lacks name or version");
        };
        let Some(source) = field("source") else {
            continue; // a workspace member
        };
        if source != CRATES_IO {
            bail!(
                "{name} {version} comes from {source}: the layer fetches crates.io packages only"
            );
        }
        let checksum = field("checksum")
            .with_context(|| format!("{name} {version} has no checksum in Cargo.lock"))?;
        let valid = checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit());
        if !valid {
            bail!("{name} {version}: checksum {checksum:?} is not a sha256");
        }
        crates.push((name.to_owned(), version.to_owned(), checksum.to_owned()));
    }
    crates.sort();
    let mut out = String::from(
        "# Generated from Cargo.lock by `cargo xtask yocto-crates`; do not edit (a test regenerates\n\
         # it and fails on any difference). Every crates.io package of the workspace, for bitbake's\n\
         # crate:// fetcher: the build itself needs no network.\n\
         SRC_URI += \"\\\n",
    );
    for (name, version, _) in &crates {
        out.push_str(&format!("    crate://crates.io/{name}/{version} \\\n"));
    }
    out.push_str("\"\n\n");
    for (name, version, checksum) in &crates {
        out.push_str(&format!(
            "SRC_URI[{name}-{version}.sha256sum] = \"{checksum}\"\n"
        ));
    }
    Ok(out)
}

/// The kernel fragment, from the init's own list.
pub(crate) fn fragment() -> String {
    init_core::kernel_contract::render_fragment()
}

/// The options the fragment file must set, compared with the init's list.
pub(crate) fn check_fragment(text: &str) -> Result<()> {
    let (options, other) = init_core::kernel_contract::fragment_options(text);
    if !other.is_empty() {
        bail!(
            "{FRAGMENT} has lines that are not CONFIG_X=y: {}",
            other.join(", ")
        );
    }
    let wanted: Vec<&str> = init_core::kernel_contract::FEATURES
        .iter()
        .map(|f| f.option)
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|o| !options.iter().any(|x| x == o))
        .collect();
    let extra: Vec<&str> = options
        .iter()
        .map(String::as_str)
        .filter(|o| !wanted.contains(o))
        .collect();
    if !missing.is_empty() || !extra.is_empty() {
        bail!(
            "{FRAGMENT} and init_core::kernel_contract::FEATURES disagree: missing from the fragment \
             [{}], not in the init's list [{}]; run `cargo xtask yocto-fragment`",
            missing.join(", "),
            extra.join(", ")
        );
    }
    if text != fragment() {
        bail!(
            "{FRAGMENT} is not the generated text (order or comments); run `cargo xtask yocto-fragment`"
        );
    }
    Ok(())
}

/// The initramfs entries of a manifest in the recipe's one-word form, sorted; `modules` are not
/// entries (the production kernel builds them in).
pub(crate) fn manifest_entries(manifest: &Manifest) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for dir in &manifest.dirs {
        out.push(format!("dir:{}:{:04o}", dir.dest, dir.mode));
    }
    for node in &manifest.nodes {
        out.push(format!(
            "node:{}:char:{}:{}:{:04o}",
            node.dest, node.major, node.minor, node.mode
        ));
    }
    for link in &manifest.symlinks {
        out.push(format!("symlink:{}:{}", link.dest, link.target));
    }
    for file in &manifest.files {
        let FileSource::Path(src) = &file.source else {
            bail!(
                "{MANIFEST}: {} has inline content; the Yocto recipe packs files from `src` only",
                file.dest
            );
        };
        let mode = file.mode.map_or("auto".to_owned(), |m| format!("{m:04o}"));
        out.push(format!("file:{}:{mode}:{}", file.dest, src.display()));
    }
    if let Some(bundle) = &manifest.ca_bundle {
        out.push(format!("ca_bundle:{}", bundle.display()));
    }
    if let Some(bad) = out.iter().find(|e| e.chars().any(char::is_whitespace)) {
        bail!("{MANIFEST}: entry {bad:?} has whitespace, which a bitbake list cannot carry");
    }
    out.sort();
    Ok(out)
}

/// The words of `CVM_INITRAMFS_ENTRIES = "..."` in the recipe, sorted.
pub(crate) fn recipe_entries(recipe: &str) -> Result<Vec<String>> {
    let start = recipe
        .find("CVM_INITRAMFS_ENTRIES = \"")
        .context("the recipe has no CVM_INITRAMFS_ENTRIES = \"...\"")?;
    let rest = &recipe[start + "CVM_INITRAMFS_ENTRIES = \"".len()..];
    let end = rest
        .find('"')
        .context("CVM_INITRAMFS_ENTRIES is not closed")?;
    let mut out: Vec<String> = rest[..end]
        .split_whitespace()
        .filter(|w| *w != "\\")
        .map(str::to_owned)
        .collect();
    out.sort();
    Ok(out)
}

/// The recipe's entries must be the manifest's, and every module the manifest loads must be an
/// option the production fragment builds in (the image carries no modules).
pub(crate) fn check_image_entries(manifest_text: &str, recipe: &str) -> Result<()> {
    let manifest = Manifest::from_toml_str(manifest_text).context("parse the manifest")?;
    let unmapped: Vec<&String> = manifest
        .modules
        .iter()
        .filter(|m| init_core::kernel_contract::module_option(m).is_none())
        .collect();
    if !unmapped.is_empty() {
        bail!(
            "{MANIFEST} loads modules the kernel contract does not map to a built-in option: \
             {unmapped:?}; add them to init_core::kernel_contract::MODULE_OPTIONS and FEATURES"
        );
    }
    let wanted = manifest_entries(&manifest)?;
    let have = recipe_entries(recipe)?;
    if wanted != have {
        let missing: Vec<&String> = wanted.iter().filter(|e| !have.contains(e)).collect();
        let extra: Vec<&String> = have.iter().filter(|e| !wanted.contains(e)).collect();
        bail!(
            "{IMAGE_RECIPE} CVM_INITRAMFS_ENTRIES differ from {MANIFEST}: missing {missing:?}, \
             not in the manifest {extra:?}"
        );
    }
    Ok(())
}

fn read(root: &Path, rel: &str) -> Result<String> {
    fs::read_to_string(root.join(rel)).with_context(|| format!("read {rel}"))
}

/// The three consistency checks on the tree at `root`.
pub(crate) fn check_consistency(root: &Path) -> Result<()> {
    let lock = read(root, "Cargo.lock")?;
    if read(root, CRATES_INC)? != crates_inc(&lock)? {
        bail!("{CRATES_INC} does not match Cargo.lock; run `cargo xtask yocto-crates`");
    }
    check_fragment(&read(root, FRAGMENT)?)?;
    check_image_entries(&read(root, MANIFEST)?, &read(root, IMAGE_RECIPE)?)
}

/// Every recipe, include and append of the layer, sorted.
fn layer_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join(LAYER)];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let path = entry.context("read a layer directory entry")?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path
                .extension()
                .is_some_and(|e| e == "bb" || e == "bbappend" || e == "inc")
            {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Creates (or refreshes) the linter's venv; returns its `oelint-adv`.
fn lint_venv(root: &Path) -> Result<PathBuf> {
    let requirements = root.join(LINT_REQUIREMENTS);
    let text =
        fs::read(&requirements).with_context(|| format!("read {}", requirements.display()))?;
    let wanted = hex::encode(Sha256::digest(&text));
    let venv = root.join(LINT_VENV);
    let python = venv.join("bin").join("python");
    let tool = venv.join("bin").join("oelint-adv");
    let stamp = venv.join(LINT_STAMP);
    if tool.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(tool);
    }
    if !python.exists() {
        let base = std::env::var_os("CVM_PYTHON").unwrap_or_else(|| "python3".into());
        let status = Command::new(&base)
            .arg("-m")
            .arg("venv")
            .arg(&venv)
            .status()
            .context("run python3 -m venv for oelint-adv")?;
        if !status.success() {
            bail!("python3 -m venv {} failed with {status}", venv.display());
        }
    }
    let _ = fs::remove_file(&stamp);
    let status = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-virtualenv",
            "-r",
        ])
        .arg(&requirements)
        .status()
        .context("run pip install oelint-adv")?;
    if !status.success() {
        bail!("pip install -r {LINT_REQUIREMENTS} failed with {status}");
    }
    fs::write(&stamp, &wanted).with_context(|| format!("write {}", stamp.display()))?;
    Ok(tool)
}

/// Rules that need the network or a full build tree; each is suppressed for a stated reason.
const LINT_SUPPRESS: &[&str] = &[
    // Pings HOMEPAGE over the network; the checks run offline.
    "oelint.vars.homepageping",
];

/// Runs `oelint-adv` on `files`; true when it reports nothing.
fn lint_clean(tool: &Path, root: &Path, files: &[PathBuf], quiet: bool) -> Result<bool> {
    let mut cmd = Command::new(tool);
    cmd.current_dir(root).args([
        "--quiet",
        "--relpaths",
        "--mode",
        "all",
        "--release",
        YOCTO_RELEASE,
    ]);
    for rule in LINT_SUPPRESS {
        cmd.args(["--suppress", rule]);
    }
    if quiet {
        cmd.stderr(std::process::Stdio::null());
    }
    let status = cmd.args(files).status().context("run oelint-adv")?;
    Ok(status.success())
}

/// `oelint-adv` over the layer; fails on any finding. Then a deliberately broken copy of the
/// PID 1 recipe (no LICENSE) must fail, so a linter that passes everything is caught too.
pub(crate) fn lint(root: &Path) -> Result<()> {
    let tool = lint_venv(root)?;
    let files = layer_files(root)?;
    if !lint_clean(&tool, root, &files, false)? {
        bail!("oelint-adv found problems in {LAYER}");
    }
    let recipe = root
        .join(LAYER)
        .join("recipes-core/cvm-init/cvm-init_0.1.0.bb");
    let text = fs::read_to_string(&recipe).with_context(|| format!("read {}", recipe.display()))?;
    let scratch = tempfile_dir(root)?;
    let broken = scratch.join("cvm-init-broken_0.1.0.bb");
    let without_summary: String = text
        .lines()
        .filter(|l| !l.starts_with("SUMMARY") && !l.starts_with("require"))
        .map(|l| format!("{l}\n"))
        .collect();
    fs::write(&broken, without_summary).with_context(|| format!("write {}", broken.display()))?;
    let caught = !lint_clean(&tool, root, &[broken], true)?;
    let _ = fs::remove_dir_all(&scratch);
    if !caught {
        bail!("oelint-adv passed a recipe without SUMMARY and LICENSE: the linter is not working");
    }
    Ok(())
}

/// A fresh scratch directory under target/.
fn tempfile_dir(root: &Path) -> Result<PathBuf> {
    let dir = root.join("target").join("yocto-lint-scratch");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

fn write(root: &Path, rel: &str, text: &str) -> Result<()> {
    fs::write(root.join(rel), text).with_context(|| format!("write {rel}"))?;
    eprintln!("xtask: wrote {rel}");
    Ok(())
}

/// `cargo xtask yocto-crates [--lock FILE]` (default: the workspace's Cargo.lock)
pub(crate) fn crates_cmd(args: &[String]) -> Result<()> {
    let root = workspace_root();
    let lock = match args {
        [flag, path] if flag == "--lock" => {
            fs::read_to_string(path).with_context(|| format!("read {path}"))?
        }
        [] => read(&root, "Cargo.lock")?,
        _ => bail!("usage: cargo xtask yocto-crates [--lock FILE]"),
    };
    write(&root, CRATES_INC, &crates_inc(&lock)?)
}

/// `cargo xtask yocto-fragment`
pub(crate) fn fragment_cmd(_args: &[String]) -> Result<()> {
    write(&workspace_root(), FRAGMENT, &fragment())
}

/// `cargo xtask yocto-check [--no-lint]`
pub(crate) fn check_cmd(args: &[String]) -> Result<()> {
    let root = workspace_root();
    check_consistency(&root)?;
    eprintln!("xtask: yocto layer: crate list, kernel fragment and initramfs entries agree");
    if !args.iter().any(|a| a == "--no-lint") {
        lint(&root)?;
        eprintln!("xtask: yocto layer: oelint-adv --release {YOCTO_RELEASE} is clean");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> PathBuf {
        workspace_root()
    }

    fn file(rel: &str) -> String {
        read(&root(), rel).unwrap()
    }

    /// (a) The checked-in crate list is what Cargo.lock generates.
    #[test]
    fn crate_list_matches_cargo_lock() {
        let generated = crates_inc(&file("Cargo.lock")).unwrap();
        assert!(
            file(CRATES_INC) == generated,
            "{CRATES_INC} is stale: run `cargo xtask yocto-crates`"
        );
    }

    /// (a, broken copy) A lock with a bumped version, a changed checksum or one more package
    /// no longer matches the checked-in list.
    #[test]
    fn crate_list_check_catches_a_changed_lock() {
        let lock = file("Cargo.lock");
        let inc = file(CRATES_INC);
        let bumped = lock.replacen(
            "name = \"adler2\"\nversion = \"2.0.1\"",
            "name = \"adler2\"\nversion = \"2.0.2\"",
            1,
        );
        assert_ne!(
            bumped, lock,
            "fixture: adler2 2.0.1 is no longer in Cargo.lock"
        );
        assert_ne!(crates_inc(&bumped).unwrap(), inc);
        let first_sum = lock.find("checksum = \"").unwrap() + "checksum = \"".len();
        let mut resummed = lock.clone();
        resummed.replace_range(first_sum..first_sum + 4, "0000");
        assert_ne!(crates_inc(&resummed).unwrap(), inc);
        let extra = format!(
            "{lock}\n[[package]]\nname = \"zzz-extra\"\nversion = \"1.0.0\"\nsource = \"{CRATES_IO}\"\nchecksum = \"{}\"\n",
            "ab".repeat(32)
        );
        let with_extra = crates_inc(&extra).unwrap();
        assert!(with_extra.contains("crate://crates.io/zzz-extra/1.0.0"));
        assert_ne!(with_extra, inc);
    }

    #[test]
    fn crate_list_refuses_git_sources_and_missing_checksums() {
        let git = "version = 4\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"git+https://example.invalid/a\"\n";
        crates_inc(git).unwrap_err();
        let unsummed = format!(
            "version = 4\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"{CRATES_IO}\"\n"
        );
        crates_inc(&unsummed).unwrap_err();
        let bad = format!("{unsummed}checksum = \"xyz\"\n");
        crates_inc(&bad).unwrap_err();
    }

    #[test]
    fn crate_list_format_is_bitbakes() {
        let lock = format!(
            "version = 4\n[[package]]\nname = \"member\"\nversion = \"0.1.0\"\n\n[[package]]\nname = \"b\"\nversion = \"2.0.0\"\nsource = \"{CRATES_IO}\"\nchecksum = \"{}\"\n\n[[package]]\nname = \"a\"\nversion = \"1.0.0\"\nsource = \"{CRATES_IO}\"\nchecksum = \"{}\"\n",
            "bb".repeat(32),
            "aa".repeat(32)
        );
        let inc = crates_inc(&lock).unwrap();
        let body: Vec<&str> = inc.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                "SRC_URI += \"\\",
                "    crate://crates.io/a/1.0.0 \\",
                "    crate://crates.io/b/2.0.0 \\",
                "\"",
                "",
                &format!("SRC_URI[a-1.0.0.sha256sum] = \"{}\"", "aa".repeat(32)),
                &format!("SRC_URI[b-2.0.0.sha256sum] = \"{}\"", "bb".repeat(32)),
            ]
        );
    }

    /// (b) The checked-in fragment and the init's required list agree.
    #[test]
    fn kernel_fragment_matches_the_init_list() {
        check_fragment(&file(FRAGMENT)).unwrap();
    }

    /// (b, broken copies) A dropped option, an added one, or one switched to a module fails.
    #[test]
    fn kernel_fragment_check_catches_edits() {
        let text = file(FRAGMENT);
        let dropped = text.replace("CONFIG_DM_CRYPT=y\n", "");
        assert_ne!(dropped, text);
        let error = check_fragment(&dropped).unwrap_err().to_string();
        assert!(error.contains("CONFIG_DM_CRYPT"), "{error}");
        let added = format!("{text}CONFIG_CVM_NOT_IN_THE_LIST=y\n");
        let error = check_fragment(&added).unwrap_err().to_string();
        assert!(error.contains("CONFIG_CVM_NOT_IN_THE_LIST"), "{error}");
        let module = text.replace("CONFIG_EXT4_FS=y", "CONFIG_EXT4_FS=m");
        let error = check_fragment(&module).unwrap_err().to_string();
        assert!(error.contains("CONFIG_EXT4_FS=m"), "{error}");
        let reordered = text.replacen("# stage early\n", "# stage first\n", 1);
        check_fragment(&reordered).unwrap_err();
    }

    /// (c) The initramfs recipe packs what the manifest lists.
    #[test]
    fn initramfs_recipe_matches_the_manifest() {
        check_image_entries(&file(MANIFEST), &file(IMAGE_RECIPE)).unwrap();
    }

    /// (c, broken copies) A directory dropped from the recipe, a changed mode in the manifest,
    /// or a new manifest entry fails.
    #[test]
    fn initramfs_recipe_check_catches_edits() {
        let manifest = file(MANIFEST);
        let recipe = file(IMAGE_RECIPE);
        let dropped = recipe.replace("    dir:/mnt:0755 \\\n", "");
        assert_ne!(dropped, recipe);
        let error = check_image_entries(&manifest, &dropped)
            .unwrap_err()
            .to_string();
        assert!(error.contains("dir:/mnt:0755"), "{error}");
        let remoded = manifest.replace("mode = 0o1777", "mode = 0o0755");
        assert_ne!(remoded, manifest);
        check_image_entries(&remoded, &recipe).unwrap_err();
        let added = format!("{manifest}\n[[symlink]]\ndest = \"/bin/sh\"\ntarget = \"/init\"\n");
        let error = check_image_entries(&added, &recipe)
            .unwrap_err()
            .to_string();
        assert!(error.contains("symlink:/bin/sh:/init"), "{error}");
        let module = manifest.replace("\"evdev\",", "\"evdev\", \"cvm_unknown_module\",");
        assert_ne!(module, manifest);
        let error = check_image_entries(&module, &recipe)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cvm_unknown_module"), "{error}");
        let inline = format!("{manifest}\n[[file]]\ndest = \"/etc/x\"\ncontent = \"x\"\n");
        check_image_entries(&inline, &recipe).unwrap_err();
    }

    /// The recipe's own Python (`cvm_initramfs_manifest`, run with python3 and a stub `bb`)
    /// turns `CVM_INITRAMFS_ENTRIES` into a manifest with the same entries as
    /// `initramfs/manifest.toml` and no modules: the Yocto image is `dist --no-modules`'s.
    #[test]
    fn recipe_python_writes_the_manifest_entries() {
        let recipe = file(IMAGE_RECIPE);
        let start = recipe.find("def cvm_initramfs_manifest").unwrap();
        let end = start + recipe[start..].find("\npython do_compile").unwrap();
        let script = format!(
            "import sys\nclass bb:\n    @staticmethod\n    def fatal(m):\n        sys.exit(m)\n{}\nsys.stdout.write(cvm_initramfs_manifest(sys.argv[1], 'SRC'))\n",
            &recipe[start..end]
        );
        let entries = recipe_entries(&recipe).unwrap().join(" ");
        let python = std::env::var_os("CVM_PYTHON").unwrap_or_else(|| "python3".into());
        let out = Command::new(python)
            .arg("-c")
            .arg(&script)
            .arg(&entries)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let written = Manifest::from_toml_str(&String::from_utf8(out.stdout).unwrap()).unwrap();
        assert!(written.modules.is_empty());
        let original = Manifest::from_toml_str(&file(MANIFEST)).unwrap();
        assert_eq!(
            manifest_entries(&written).unwrap(),
            manifest_entries(&original).unwrap()
        );
        assert_eq!(written.dirs.len(), original.dirs.len());
        assert_eq!(written.nodes, original.nodes);
    }

    #[test]
    fn recipe_entries_are_parsed_as_words() {
        let recipe =
            "A = \"b\"\nCVM_INITRAMFS_ENTRIES = \"\\\n    dir:/b:0755 \\\n    dir:/a:0755 \\\n\"\n";
        assert_eq!(
            recipe_entries(recipe).unwrap(),
            ["dir:/a:0755", "dir:/b:0755"]
        );
        recipe_entries("X = \"\"").unwrap_err();
        recipe_entries("CVM_INITRAMFS_ENTRIES = \"dir:/a").unwrap_err();
    }

    #[test]
    fn the_layer_has_its_recipes() {
        let files = layer_files(&root()).unwrap();
        let names: Vec<String> = files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        for wanted in [
            "cvm-init_0.1.0.bb",
            "cvm-initramfs_0.1.0.bb",
            "cvm-gpu-evidence_0.1.0.bb",
            "cvm-init-initramfs_0.1.0.bb",
            "cvm-init-crates.inc",
            "linux-yocto_%.bbappend",
        ] {
            assert!(
                names.iter().any(|n| n == wanted),
                "{wanted} missing: {names:?}"
            );
        }
    }
}
