//! Kernel module dependency resolution.
//!
//! A [`ModuleTree`] is a directory such as `/lib/modules/6.1.0-50-cloud-amd64`. When it holds a
//! `modules.dep` (written by `depmod`), hard dependencies come from there and soft dependencies
//! from `modules.softdep`. Debian's kernel package ships no `modules.dep` (depmod runs at install
//! time), so otherwise the tree is walked and each needed module's ELF `.modinfo` section is read
//! (`name=`, `depends=`, `softdep=`). Names compare with `-` and `_` equivalent, as in modprobe.
//!
//! [`ModuleTree::resolve`] returns the modules in load order: each module after its `depends`
//! and `softdep pre:` modules, `softdep post:` modules right after it, every module once. Modules
//! built into the kernel (`modules.builtin`) are skipped. A soft dependency that names no module
//! in the tree (often an alias such as `crc32c`) is skipped and reported, as modprobe does.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use crate::elf::{self, ElfError};

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    /// The directory name of the tree is not a usable kernel version.
    #[error("Module tree {path:?} has no kernel version as its directory name")]
    ReadKernelVersion { path: PathBuf },
    /// Walking the tree failed.
    #[error("Read module directory {path:?}")]
    ReadTree {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Reading `modules.dep`, `modules.softdep` or `modules.builtin` failed.
    #[error("Read module index {path:?}")]
    ReadIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line of `modules.dep` or `modules.softdep` is malformed.
    #[error("Parse module index {path:?} line {line}")]
    ParseIndex { path: PathBuf, line: usize },
    /// Reading a module file failed.
    #[error("Read module {path:?}")]
    ReadModule {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Decompressing a `.ko.zst` module failed.
    #[error("Decompress module {path:?}")]
    DecompressModule {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The module is compressed in a format this crate does not handle (`.ko.xz`, `.ko.gz`).
    #[error("Unsupported module compression of {path:?}")]
    DecompressModuleFormat { path: PathBuf },
    /// The module is not a readable ELF file.
    #[error("Parse ELF of module {path:?}")]
    ParseModuleElf {
        path: PathBuf,
        #[source]
        source: ElfError,
    },
    /// The `.modinfo` section is missing or malformed.
    #[error("Parse .modinfo of module {path:?}: {reason}")]
    ParseModinfo { path: PathBuf, reason: &'static str },
    /// The `name=` in `.modinfo` does not match the file name.
    #[error("Module {path:?} calls itself {found:?}, expected {expected:?}")]
    CheckModuleName {
        path: PathBuf,
        expected: String,
        found: String,
    },
    /// The module is neither in the tree nor built in.
    #[error("Find module {name:?}{}", required_by_suffix(.required_by.as_deref()))]
    FindModule {
        name: String,
        required_by: Option<String>,
    },
    /// More than one file in the tree provides the module.
    #[error("Module {name:?} is provided by several files: {paths:?}")]
    FindUniqueModule { name: String, paths: Vec<PathBuf> },
    /// The dependencies of the module form a cycle.
    #[error("Order module {name:?}: dependency cycle {}", .chain.join(" -> "))]
    OrderModules { name: String, chain: Vec<String> },
}

fn required_by_suffix(required_by: Option<&str>) -> String {
    required_by.map_or_else(String::new, |by| format!(" (required by {by:?})"))
}

/// The canonical module name: `-` replaced by `_`.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module name a file name implies: `dm-crypt.ko` is `dm_crypt`.
fn name_from_file(file_name: &str) -> Option<String> {
    ["ko", "ko.xz", "ko.zst", "ko.gz"]
        .iter()
        .find_map(|suffix| {
            let stem = file_name.strip_suffix(suffix)?.strip_suffix('.')?;
            (!stem.is_empty()).then(|| canonical_name(stem))
        })
}

/// What `.modinfo` says about a module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Modinfo {
    /// `name=`, if present.
    pub name: Option<String>,
    /// `depends=`, canonical names.
    pub depends: Vec<String>,
    /// `softdep=pre: ...`, canonical names.
    pub softdep_pre: Vec<String>,
    /// `softdep=post: ...`, canonical names.
    pub softdep_post: Vec<String>,
}

/// Parses a `softdep` value (`pre: a b post: c`) into `pre` and `post`.
fn parse_softdep(value: &str, pre: &mut Vec<String>, post: &mut Vec<String>) -> bool {
    let mut target: Option<&mut Vec<String>> = None;
    for word in value.split_whitespace() {
        match word {
            "pre:" => target = Some(&mut *pre),
            "post:" => target = Some(&mut *post),
            name => match target.as_deref_mut() {
                Some(list) => list.push(canonical_name(name)),
                None => return false,
            },
        }
    }
    true
}

/// Parses the contents of a `.modinfo` section: NUL-separated `key=value` strings.
pub fn parse_modinfo(section: &[u8]) -> Result<Modinfo, &'static str> {
    let mut info = Modinfo::default();
    for field in section.split(|&b| b == 0).filter(|f| !f.is_empty()) {
        let Ok(field) = std::str::from_utf8(field) else {
            // Descriptions may hold arbitrary bytes; only the keys below matter.
            continue;
        };
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        match key {
            "name" => {
                if info.name.is_some() {
                    return Err("two name= fields");
                }
                info.name = Some(canonical_name(value));
            }
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(canonical_name),
            ),
            "softdep" if !parse_softdep(value, &mut info.softdep_pre, &mut info.softdep_post) => {
                return Err("softdep= without pre: or post:");
            }
            _ => {}
        }
    }
    Ok(info)
}

/// Reads a module file, decompressing `.ko.zst`.
pub fn read_module(path: &Path) -> Result<Vec<u8>, ModulesError> {
    let bytes = fs::read(path).map_err(|source| ModulesError::ReadModule {
        path: path.to_owned(),
        source,
    })?;
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if file_name.ends_with(".ko.zst") {
        zstd::stream::decode_all(&bytes[..]).map_err(|source| ModulesError::DecompressModule {
            path: path.to_owned(),
            source,
        })
    } else if file_name.ends_with(".ko") {
        Ok(bytes)
    } else {
        Err(ModulesError::DecompressModuleFormat {
            path: path.to_owned(),
        })
    }
}

/// Reads the `.modinfo` of the module at `path`.
pub fn read_modinfo(path: &Path) -> Result<Modinfo, ModulesError> {
    let image = read_module(path)?;
    let section = elf::find_section(&image, ".modinfo")
        .map_err(|source| ModulesError::ParseModuleElf {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| ModulesError::ParseModinfo {
            path: path.to_owned(),
            reason: "no .modinfo section",
        })?;
    parse_modinfo(section).map_err(|reason| ModulesError::ParseModinfo {
        path: path.to_owned(),
        reason,
    })
}

/// Dependencies of one module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    /// Path relative to the tree root, `/`-separated.
    relative_path: String,
    depends: Vec<String>,
    softdep_pre: Vec<String>,
    softdep_post: Vec<String>,
}

/// Where dependency information comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexSource {
    /// `modules.dep` (and `modules.softdep`) in the tree.
    ModulesDep,
    /// The `.modinfo` sections of the module files.
    Modinfo,
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Canonical name, e.g. `dm_crypt`.
    pub name: String,
    /// Path relative to the tree root, `/`-separated, e.g. `kernel/drivers/md/dm-crypt.ko`.
    pub relative_path: String,
}

/// The outcome of [`ModuleTree::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// Modules in load order.
    pub modules: Vec<ResolvedModule>,
    /// Requested or depended-on modules that are built into the kernel, sorted.
    pub builtin: Vec<String>,
    /// Soft dependencies that name no module in the tree: `(module, softdep)`, sorted.
    pub skipped_softdeps: Vec<(String, String)>,
}

/// A kernel module directory.
#[derive(Debug)]
pub struct ModuleTree {
    root: PathBuf,
    kernel_version: String,
    source: IndexSource,
    /// Module name to relative paths (more than one only for a broken tree).
    files: BTreeMap<String, Vec<String>>,
    /// Dependencies from `modules.dep`; filled lazily from `.modinfo` otherwise.
    nodes: BTreeMap<String, Node>,
    builtin: BTreeSet<String>,
}

impl ModuleTree {
    /// Opens the tree at `root`; its directory name is the kernel version.
    pub fn open(root: &Path) -> Result<Self, ModulesError> {
        let kernel_version = root
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && !n.contains('\n'))
            .ok_or_else(|| ModulesError::ReadKernelVersion {
                path: root.to_owned(),
            })?
            .to_owned();
        let builtin = read_builtin(&root.join("modules.builtin"))?;
        let dep_path = root.join("modules.dep");
        let mut tree = Self {
            root: root.to_owned(),
            kernel_version,
            source: IndexSource::Modinfo,
            files: BTreeMap::new(),
            nodes: BTreeMap::new(),
            builtin,
        };
        if dep_path.is_file() {
            tree.source = IndexSource::ModulesDep;
            tree.load_modules_dep(&dep_path)?;
            tree.load_modules_softdep(&root.join("modules.softdep"))?;
        } else {
            let mut files = BTreeMap::new();
            walk(root, "", &mut files)?;
            tree.files = files;
        }
        Ok(tree)
    }

    /// The kernel version (the tree's directory name).
    pub fn kernel_version(&self) -> &str {
        &self.kernel_version
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where dependency information comes from.
    pub fn index_source(&self) -> IndexSource {
        self.source
    }

    fn load_modules_dep(&mut self, path: &Path) -> Result<(), ModulesError> {
        let text = fs::read_to_string(path).map_err(|source| ModulesError::ReadIndex {
            path: path.to_owned(),
            source,
        })?;
        for (index, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let parse_error = || ModulesError::ParseIndex {
                path: path.to_owned(),
                line: index + 1,
            };
            let (module, deps) = line.split_once(':').ok_or_else(parse_error)?;
            let module = module.trim();
            let file_name = module.rsplit('/').next().unwrap_or(module);
            let name = name_from_file(file_name).ok_or_else(parse_error)?;
            let mut depends = Vec::new();
            for dep in deps.split_whitespace() {
                let dep_file = dep.rsplit('/').next().unwrap_or(dep);
                depends.push(name_from_file(dep_file).ok_or_else(parse_error)?);
            }
            self.files
                .entry(name.clone())
                .or_default()
                .push(module.to_owned());
            self.nodes.insert(
                name,
                Node {
                    relative_path: module.to_owned(),
                    depends,
                    softdep_pre: Vec::new(),
                    softdep_post: Vec::new(),
                },
            );
        }
        Ok(())
    }

    fn load_modules_softdep(&mut self, path: &Path) -> Result<(), ModulesError> {
        let text = match fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(source) => {
                return Err(ModulesError::ReadIndex {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parse_error = || ModulesError::ParseIndex {
                path: path.to_owned(),
                line: index + 1,
            };
            let rest = line.strip_prefix("softdep").ok_or_else(parse_error)?;
            let mut words = rest.split_whitespace();
            let name = canonical_name(words.next().ok_or_else(parse_error)?);
            let value = words.collect::<Vec<_>>().join(" ");
            if let Some(node) = self.nodes.get_mut(&name) {
                let (mut pre, mut post) = (Vec::new(), Vec::new());
                if !parse_softdep(&value, &mut pre, &mut post) {
                    return Err(parse_error());
                }
                node.softdep_pre.extend(pre);
                node.softdep_post.extend(post);
            }
        }
        Ok(())
    }

    /// The dependency node of `name`, reading `.modinfo` when needed. `None` if no file
    /// provides the module.
    fn node(&mut self, name: &str) -> Result<Option<Node>, ModulesError> {
        if let Some(node) = self.nodes.get(name) {
            return Ok(Some(node.clone()));
        }
        let Some(paths) = self.files.get(name) else {
            return Ok(None);
        };
        let relative_path = match paths.as_slice() {
            [one] => one.clone(),
            _ => {
                return Err(ModulesError::FindUniqueModule {
                    name: name.to_owned(),
                    paths: paths.iter().map(PathBuf::from).collect(),
                });
            }
        };
        let path = self.root.join(&relative_path);
        let info = read_modinfo(&path)?;
        if let Some(found) = info.name
            && found != name
        {
            return Err(ModulesError::CheckModuleName {
                path,
                expected: name.to_owned(),
                found,
            });
        }
        let node = Node {
            relative_path,
            depends: info.depends,
            softdep_pre: info.softdep_pre,
            softdep_post: info.softdep_post,
        };
        self.nodes.insert(name.to_owned(), node.clone());
        Ok(Some(node))
    }

    /// Resolves `names` (in this order) and their dependencies into a load order.
    pub fn resolve<S: AsRef<str>>(&mut self, names: &[S]) -> Result<Resolution, ModulesError> {
        let mut state = ResolveState::default();
        for name in names {
            self.visit(&canonical_name(name.as_ref()), None, &mut state)?;
        }
        Ok(Resolution {
            modules: state.order,
            builtin: state.builtin.into_iter().collect(),
            skipped_softdeps: state.skipped_softdeps.into_iter().collect(),
        })
    }

    fn visit(
        &mut self,
        name: &str,
        required_by: Option<&str>,
        state: &mut ResolveState,
    ) -> Result<(), ModulesError> {
        if state.done.contains(name) {
            return Ok(());
        }
        if let Some(start) = state.stack.iter().position(|n| n == name) {
            let mut chain = state.stack[start..].to_vec();
            chain.push(name.to_owned());
            return Err(ModulesError::OrderModules {
                name: name.to_owned(),
                chain,
            });
        }
        let Some(node) = self.node(name)? else {
            if self.builtin.contains(name) {
                state.builtin.insert(name.to_owned());
                state.done.insert(name.to_owned());
                return Ok(());
            }
            return Err(ModulesError::FindModule {
                name: name.to_owned(),
                required_by: required_by.map(str::to_owned),
            });
        };
        state.stack.push(name.to_owned());
        // Sorted, so the order does not depend on how the index lists dependencies.
        let mut hard = node.depends.clone();
        hard.sort();
        hard.dedup();
        for dep in &node.softdep_pre {
            self.visit_soft(name, dep, state)?;
        }
        for dep in &hard {
            self.visit(dep, Some(name), state)?;
        }
        state.stack.pop();
        state.done.insert(name.to_owned());
        state.order.push(ResolvedModule {
            name: name.to_owned(),
            relative_path: node.relative_path.clone(),
        });
        for dep in &node.softdep_post {
            self.visit_soft(name, dep, state)?;
        }
        Ok(())
    }

    fn visit_soft(
        &mut self,
        name: &str,
        dep: &str,
        state: &mut ResolveState,
    ) -> Result<(), ModulesError> {
        let known = self.files.contains_key(dep) || self.builtin.contains(dep);
        if known {
            self.visit(dep, Some(name), state)
        } else {
            state
                .skipped_softdeps
                .insert((name.to_owned(), dep.to_owned()));
            Ok(())
        }
    }
}

#[derive(Debug, Default)]
struct ResolveState {
    order: Vec<ResolvedModule>,
    done: BTreeSet<String>,
    stack: Vec<String>,
    builtin: BTreeSet<String>,
    skipped_softdeps: BTreeSet<(String, String)>,
}

/// Reads `modules.builtin` (one relative `.ko` path per line) into canonical names; a missing
/// file means no built-in modules are known.
fn read_builtin(path: &Path) -> Result<BTreeSet<String>, ModulesError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(text
            .lines()
            .filter_map(|line| name_from_file(line.trim().rsplit('/').next().unwrap_or("")))
            .collect()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(BTreeSet::new()),
        Err(source) => Err(ModulesError::ReadIndex {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Collects module files below `dir` (relative prefix `prefix`) by canonical name.
fn walk(
    dir: &Path,
    prefix: &str,
    files: &mut BTreeMap<String, Vec<String>>,
) -> Result<(), ModulesError> {
    let read_error = |source| ModulesError::ReadTree {
        path: dir.to_owned(),
        source,
    };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let file_type = entry.file_type().map_err(read_error)?;
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        entries.push((file_name, file_type));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    for (file_name, file_type) in entries {
        let relative = if prefix.is_empty() {
            file_name.clone()
        } else {
            format!("{prefix}/{file_name}")
        };
        if file_type.is_dir() {
            walk(&dir.join(&file_name), &relative, files)?;
        } else if file_type.is_file()
            && let Some(name) = name_from_file(&file_name)
        {
            files.entry(name).or_default().push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(name_from_file("dm-crypt.ko").as_deref(), Some("dm_crypt"));
        assert_eq!(name_from_file("a.ko.zst").as_deref(), Some("a"));
        assert_eq!(name_from_file(".ko"), None);
        assert_eq!(name_from_file("modules.dep"), None);
    }

    #[test]
    fn modinfo_fields() {
        let info = parse_modinfo(
            b"license=GPL\0depends=dm-mod,dm-bufio\0softdep=pre: ecb cbc post: foo-bar\0name=xts\0\0",
        )
        .unwrap();
        assert_eq!(info.name.as_deref(), Some("xts"));
        assert_eq!(info.depends, ["dm_mod", "dm_bufio"]);
        assert_eq!(info.softdep_pre, ["ecb", "cbc"]);
        assert_eq!(info.softdep_post, ["foo_bar"]);
        assert_eq!(
            parse_modinfo(b"depends=\0").unwrap().depends,
            Vec::<String>::new()
        );
        assert_eq!(
            parse_modinfo(b"softdep=ecb\0"),
            Err("softdep= without pre: or post:")
        );
        assert_eq!(parse_modinfo(b"name=a\0name=b\0"), Err("two name= fields"));
    }
}
