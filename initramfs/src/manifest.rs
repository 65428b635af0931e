//! The image manifest (TOML): which kernel modules, which CA bundle and which extra files go
//! into the initramfs. See `initramfs/README.md` for the format.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be read.
    #[error("Read manifest {path:?}")]
    ReadManifest {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The manifest is not valid TOML or does not match the format.
    #[error("Parse manifest")]
    ParseManifest {
        #[source]
        source: toml::de::Error,
    },
    /// A `[[file]]` entry has both or neither of `src` and `content`.
    #[error("File entry {dest:?} needs exactly one of src and content")]
    CheckFileSource { dest: String },
    /// A mode is larger than `0o7777` or not an octal string.
    #[error("Bad mode {mode:?} for {dest:?}")]
    CheckMode { dest: String, mode: String },
    /// A device node entry has an unsupported type.
    #[error("Unsupported node type {kind:?} for {dest:?}, expected \"char\"")]
    CheckNodeType { dest: String, kind: String },
}

/// Where a file's contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// A file on the build host.
    Path(PathBuf),
    /// Inline text from the manifest.
    Inline(String),
}

/// An extra regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Absolute path in the image, e.g. `/etc/hostname`.
    pub dest: String,
    /// Contents.
    pub source: FileSource,
    /// Permission bits; `None`: 0755 for a source file with any execute bit, else 0644.
    pub mode: Option<u32>,
}

/// A symbolic link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SymlinkEntry {
    /// Absolute path of the link in the image.
    pub dest: String,
    /// Link target, stored as given.
    pub target: String,
}

/// An (empty) directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// Absolute path in the image.
    pub dest: String,
    /// Permission bits (default 0755).
    pub mode: u32,
}

/// A character device node, e.g. `/dev/console`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEntry {
    /// Absolute path in the image.
    pub dest: String,
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Permission bits (default 0600).
    pub mode: u32,
}

/// A parsed manifest. Relative host paths are resolved against the manifest's directory by
/// [`Manifest::from_path`] and left as they are by [`Manifest::from_toml_str`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Kernel modules to load, in request order (dependencies are added).
    pub modules: Vec<String>,
    /// CA bundle to install at `/etc/ssl/certs/ca-certificates.crt`.
    pub ca_bundle: Option<PathBuf>,
    /// Extra files.
    pub files: Vec<FileEntry>,
    /// Symbolic links.
    pub symlinks: Vec<SymlinkEntry>,
    /// Directories.
    pub dirs: Vec<DirEntry>,
    /// Character device nodes.
    pub nodes: Vec<NodeEntry>,
}

/// A mode as written in TOML: an integer (`0o644`) or an octal string (`"0644"`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawMode {
    Number(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    dest: String,
    src: Option<PathBuf>,
    content: Option<String>,
    mode: Option<RawMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSymlink {
    dest: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDir {
    dest: String,
    mode: Option<RawMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    dest: String,
    #[serde(rename = "type")]
    kind: String,
    major: u32,
    minor: u32,
    mode: Option<RawMode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    modules: Vec<String>,
    ca_bundle: Option<PathBuf>,
    #[serde(default)]
    file: Vec<RawFile>,
    #[serde(default)]
    symlink: Vec<RawSymlink>,
    #[serde(default)]
    dir: Vec<RawDir>,
    #[serde(default)]
    node: Vec<RawNode>,
}

fn parse_mode(dest: &str, mode: Option<RawMode>, default: u32) -> Result<u32, ManifestError> {
    let error = |mode: String| ManifestError::CheckMode {
        dest: dest.to_owned(),
        mode,
    };
    let value = match mode {
        None => return Ok(default),
        Some(RawMode::Number(n)) => u32::try_from(n).map_err(|_| error(n.to_string()))?,
        Some(RawMode::Text(text)) => {
            let digits = text.strip_prefix("0o").unwrap_or(&text);
            u32::from_str_radix(digits, 8).map_err(|_| error(text.clone()))?
        }
    };
    if value > 0o7777 {
        return Err(error(format!("{value:#o}")));
    }
    Ok(value)
}

impl Manifest {
    /// Reads a manifest file; relative `src` and `ca_bundle` paths are taken relative to the
    /// manifest's directory.
    pub fn from_path(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::ReadManifest {
            path: path.to_owned(),
            source,
        })?;
        let mut manifest = Self::from_toml_str(&text)?;
        let base = path.parent().unwrap_or(Path::new(""));
        if let Some(bundle) = &mut manifest.ca_bundle {
            *bundle = base.join(&*bundle);
        }
        for file in &mut manifest.files {
            if let FileSource::Path(src) = &mut file.source {
                *src = base.join(&*src);
            }
        }
        Ok(manifest)
    }

    /// Parses a manifest; host paths are kept as written.
    pub fn from_toml_str(text: &str) -> Result<Self, ManifestError> {
        let raw: RawManifest =
            toml::from_str(text).map_err(|source| ManifestError::ParseManifest { source })?;
        let mut files = Vec::with_capacity(raw.file.len());
        for file in raw.file {
            let source = match (file.src, file.content) {
                (Some(src), None) => FileSource::Path(src),
                (None, Some(content)) => FileSource::Inline(content),
                _ => return Err(ManifestError::CheckFileSource { dest: file.dest }),
            };
            let mode = match file.mode {
                None => None,
                mode => Some(parse_mode(&file.dest, mode, 0o644)?),
            };
            files.push(FileEntry {
                dest: file.dest,
                source,
                mode,
            });
        }
        let mut dirs = Vec::with_capacity(raw.dir.len());
        for dir in raw.dir {
            let mode = parse_mode(&dir.dest, dir.mode, 0o755)?;
            dirs.push(DirEntry {
                dest: dir.dest,
                mode,
            });
        }
        let mut nodes = Vec::with_capacity(raw.node.len());
        for node in raw.node {
            if node.kind != "char" {
                return Err(ManifestError::CheckNodeType {
                    dest: node.dest,
                    kind: node.kind,
                });
            }
            let mode = parse_mode(&node.dest, node.mode, 0o600)?;
            nodes.push(NodeEntry {
                dest: node.dest,
                major: node.major,
                minor: node.minor,
                mode,
            });
        }
        Ok(Self {
            modules: raw.modules,
            ca_bundle: raw.ca_bundle,
            files,
            symlinks: raw
                .symlink
                .into_iter()
                .map(|s| SymlinkEntry {
                    dest: s.dest,
                    target: s.target,
                })
                .collect(),
            dirs,
            nodes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_entry_kinds() {
        let manifest = Manifest::from_toml_str(
            r#"
modules = ["virtio-pci", "dm_crypt"]
ca_bundle = "certs.pem"

[[file]]
dest = "/etc/hostname"
content = "cvm\n"

[[file]]
dest = "/bin/tool"
src = "tool"
mode = 0o750

[[file]]
dest = "/etc/x"
content = ""
mode = "0600"

[[symlink]]
dest = "/bin/sh"
target = "/init"

[[dir]]
dest = "/mnt"

[[node]]
dest = "/dev/console"
type = "char"
major = 5
minor = 1
"#,
        )
        .unwrap();
        assert_eq!(manifest.modules, ["virtio-pci", "dm_crypt"]);
        assert_eq!(manifest.ca_bundle.as_deref(), Some(Path::new("certs.pem")));
        assert_eq!(manifest.files[0].source, FileSource::Inline("cvm\n".into()));
        assert_eq!(manifest.files[0].mode, None);
        assert_eq!(manifest.files[1].mode, Some(0o750));
        assert_eq!(manifest.files[2].mode, Some(0o600));
        assert_eq!(manifest.symlinks[0].target, "/init");
        assert_eq!(manifest.dirs[0].mode, 0o755);
        assert_eq!(manifest.nodes[0].mode, 0o600);
    }

    #[test]
    fn rejects_bad_entries() {
        let both = "[[file]]\ndest = \"/a\"\nsrc = \"x\"\ncontent = \"y\"\n";
        assert!(matches!(
            Manifest::from_toml_str(both),
            Err(ManifestError::CheckFileSource { dest }) if dest == "/a"
        ));
        let mode = "[[file]]\ndest = \"/a\"\ncontent = \"y\"\nmode = 0o17777\n";
        assert!(matches!(
            Manifest::from_toml_str(mode),
            Err(ManifestError::CheckMode { .. })
        ));
        let unknown = "modulez = []\n";
        assert!(matches!(
            Manifest::from_toml_str(unknown),
            Err(ManifestError::ParseManifest { .. })
        ));
        let node = "[[node]]\ndest = \"/dev/sda\"\ntype = \"block\"\nmajor = 8\nminor = 0\n";
        assert!(matches!(
            Manifest::from_toml_str(node),
            Err(ManifestError::CheckNodeType { .. })
        ));
    }
}
