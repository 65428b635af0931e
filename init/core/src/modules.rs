//! The module load list that the initramfs builder writes to `/etc/cvm/modules.load`: one absolute
//! in-image path per line, dependencies first; `#` comments and blank lines are ignored.

/// Where the initramfs builder puts the load list.
pub const LOAD_LIST_PATH: &str = "/etc/cvm/modules.load";
const MAX_ENTRIES: usize = 512;
const MAX_PATH_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModulesError {
    #[error("line {line} of the module load list is not an absolute path: `{text}`")]
    RelativePath { line: usize, text: String },
    #[error("line {line} of the module load list contains `..` or a NUL byte")]
    UnsafePath { line: usize },
    #[error("line {line} of the module load list names `{text}`, which is not a .ko file")]
    NotAModule { line: usize, text: String },
    #[error("module load list has more than {MAX_ENTRIES} entries")]
    TooMany,
    #[error("module `{path}` is listed twice (lines {first} and {second})")]
    Duplicate {
        path: String,
        first: usize,
        second: usize,
    },
}

/// Parse the load list into paths, in load order.
pub fn parse_load_list(text: &str) -> Result<Vec<String>, ModulesError> {
    let mut out: Vec<(String, usize)> = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        if !entry.starts_with('/') {
            return Err(ModulesError::RelativePath {
                line,
                text: entry.to_owned(),
            });
        }
        if entry.len() > MAX_PATH_LEN
            || entry.contains('\0')
            || entry.split('/').any(|part| part == "..")
        {
            return Err(ModulesError::UnsafePath { line });
        }
        if !entry.ends_with(".ko") {
            return Err(ModulesError::NotAModule {
                line,
                text: entry.to_owned(),
            });
        }
        if let Some((_, first)) = out.iter().find(|(p, _)| p == entry) {
            return Err(ModulesError::Duplicate {
                path: entry.to_owned(),
                first: *first,
                second: line,
            });
        }
        if out.len() == MAX_ENTRIES {
            return Err(ModulesError::TooMany);
        }
        out.push((entry.to_owned(), line));
    }
    Ok(out.into_iter().map(|(p, _)| p).collect())
}

/// The module name of a path (`/lib/modules/x/kernel/drivers/md/dm-crypt.ko` → `dm-crypt`).
pub fn module_name(path: &str) -> &str {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.strip_suffix(".ko").unwrap_or(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_in_order_skipping_comments() {
        let text = "# generated\n\n/lib/modules/k/virtio.ko\n  /lib/modules/k/virtio_pci.ko  \n";
        assert_eq!(
            parse_load_list(text).unwrap(),
            vec!["/lib/modules/k/virtio.ko", "/lib/modules/k/virtio_pci.ko"]
        );
        assert!(parse_load_list("").unwrap().is_empty());
    }

    #[test]
    fn rejects_bad_entries() {
        assert!(matches!(
            parse_load_list("a.ko"),
            Err(ModulesError::RelativePath { line: 1, .. })
        ));
        assert_eq!(
            parse_load_list("/x/../y.ko"),
            Err(ModulesError::UnsafePath { line: 1 })
        );
        assert!(matches!(
            parse_load_list("/x/y.txt"),
            Err(ModulesError::NotAModule { .. })
        ));
        assert_eq!(
            parse_load_list("/a.ko\n/a.ko"),
            Err(ModulesError::Duplicate {
                path: "/a.ko".into(),
                first: 1,
                second: 2
            })
        );
        let many: String = (0..=MAX_ENTRIES).map(|i| format!("/m{i}.ko\n")).collect();
        assert_eq!(parse_load_list(&many), Err(ModulesError::TooMany));
    }

    #[test]
    fn names() {
        assert_eq!(
            module_name("/lib/modules/k/kernel/drivers/md/dm-crypt.ko"),
            "dm-crypt"
        );
        assert_eq!(module_name("x.ko"), "x");
    }
}
