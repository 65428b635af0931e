//! The Debian packages a task needs: the groups of `.ci/packages`, installed by
//! `.ci/install-packages` (the one list and the one installer `.ci/run` uses too). The script
//! installs only what is missing and never removes a package (see its header).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::dist::workspace_root;

/// Groups of `.ci/packages`.
pub(crate) const BUILD: &str = "build";
pub(crate) const TEST: &str = "test";
pub(crate) const DEMO: &str = "demo";
pub(crate) const BENCH: &str = "bench";

/// The installer script, relative to the workspace root.
pub(crate) const INSTALLER: &str = ".ci/install-packages";

/// Installs whatever the packages of `groups` lack (with sudo when not root).
pub(crate) fn ensure(groups: &[&str]) -> Result<()> {
    ensure_in(&workspace_root(), groups)
}

fn ensure_in(root: &Path, groups: &[&str]) -> Result<()> {
    let script = root.join(INSTALLER);
    let status = Command::new("bash")
        .arg(&script)
        .args(groups)
        .status()
        .with_context(|| format!("run {}", script.display()))?;
    if !status.success() {
        bail!(
            "{} {} failed with {status} (its last lines say why)",
            script.display(),
            groups.join(" ")
        );
    }
    Ok(())
}

/// The packages of `group` in `list` (the text of `.ci/packages`), in list order (the shell
/// installer parses the same format; this checks the list's contents).
#[cfg(test)]
fn group_members(list: &str, group: &str) -> Vec<String> {
    list.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let name = words.next()?;
            let groups = words.next()?;
            (!name.starts_with('#') && groups.split(',').any(|g| g == group))
                .then(|| name.to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_names_the_build_packages_of_build_notes() {
        let list = std::fs::read_to_string(workspace_root().join(".ci/packages")).unwrap();
        let build = group_members(&list, BUILD);
        // shared/specs/build-notes.md: the -sys crates of the static init need these.
        for needed in [
            "libdevmapper-dev",
            "libclang-dev",
            "libseccomp-dev",
            "pkg-config",
        ] {
            assert!(
                build.iter().any(|p| p == needed),
                "{needed} missing: {build:?}"
            );
        }
        for group in [TEST, DEMO, BENCH] {
            let members = group_members(&list, group);
            assert!(
                members.iter().any(|p| p == "qemu-system-x86"),
                "{group}: {members:?}"
            );
            for needed in &build {
                if needed != "git" {
                    assert!(members.contains(needed), "{group} lacks {needed}");
                }
            }
        }
    }

    #[test]
    fn group_members_skips_comments_and_other_groups() {
        let list = "# header\n\na build,test # why\n# b build\nc test\n";
        assert_eq!(group_members(list, BUILD), ["a"]);
        assert_eq!(group_members(list, TEST), ["a", "c"]);
        assert!(group_members(list, BENCH).is_empty());
    }
}
