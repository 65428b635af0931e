//! The host share: how a dstack host hands configuration to the guest
//! (`shared/specs/dstack-guest.md` §1.1, §1.5), as pure rules.
//!
//! The share is a read-only 9p mount (tag [`HOST_SHARE_9P_TAG`]) or a read-only disk whose
//! filesystem label is [`HOST_SHARE_LABEL`]. Exactly the files in [`HOST_SHARE_FILES`] are copied
//! (no symlinks followed, each with a size cap) into a private tmpfs, then the share is unmounted.
//! Without udev or blkid the init finds the disk by reading filesystem labels itself:
//! [`filesystem_label`] decodes ext2/3/4 and FAT superblocks.

use std::collections::BTreeMap;

use crate::app_compose::{AppComposeError, AppComposeFile, InstanceInfo, SysConfig};

/// 9p mount tag of the host share.
pub const HOST_SHARE_9P_TAG: &str = "host-shared";
/// Filesystem label of the host-share disk.
pub const HOST_SHARE_LABEL: &str = "DSTACKSHR";

/// One file the guest takes from the host share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostShareFile {
    /// File name in the share root.
    pub name: &'static str,
    /// Largest accepted size in bytes.
    pub max_len: u64,
    /// Boot fails when the file is absent.
    pub required: bool,
}

/// `app-compose.json`.
pub const APP_COMPOSE: HostShareFile = HostShareFile {
    name: "app-compose.json",
    max_len: 50 * 1024 * 1024,
    required: true,
};
/// `.sys-config.json`.
pub const SYS_CONFIG: HostShareFile = HostShareFile {
    name: ".sys-config.json",
    max_len: 32 * 1024,
    required: true,
};
/// `.instance_info` (underscore, as the VMM writes it).
pub const INSTANCE_INFO: HostShareFile = HostShareFile {
    name: ".instance_info",
    max_len: 10 * 1024,
    required: false,
};
/// `.encrypted-env` (raw binary).
pub const ENCRYPTED_ENV: HostShareFile = HostShareFile {
    name: ".encrypted-env",
    max_len: 256 * 1024,
    required: false,
};
/// `.user-config`.
pub const USER_CONFIG: HostShareFile = HostShareFile {
    name: ".user-config",
    max_len: 50 * 1024 * 1024,
    required: false,
};

/// Every file copied from the host share, with its cap.
pub const HOST_SHARE_FILES: [HostShareFile; 5] = [
    APP_COMPOSE,
    SYS_CONFIG,
    INSTANCE_INFO,
    ENCRYPTED_ENV,
    USER_CONFIG,
];

/// Errors of validating the host share.
#[derive(Debug, thiserror::Error)]
pub enum HostShareError {
    /// A required file is absent.
    #[error("host share lacks required file {name}")]
    MissingRequiredFile { name: &'static str },
    /// A file exceeds its size cap.
    #[error("host share file {name} is {len} bytes, cap is {max_len}")]
    FileTooLarge {
        name: &'static str,
        len: u64,
        max_len: u64,
    },
    /// A file is not a regular file (symlink, directory, device …).
    #[error("host share file {name} is not a regular file")]
    NotRegularFile { name: &'static str },
    /// A file name outside [`HOST_SHARE_FILES`] was handed to [`HostShare::from_files`].
    #[error("unexpected host share file {name}")]
    UnexpectedFile { name: String },
    /// app-compose.json, .sys-config.json or .instance_info failed to parse. Every
    /// [`AppComposeError`] names its file or field, so this adds no segment of its own.
    #[error(transparent)]
    ParseFile(AppComposeError),
}

/// Checks one file's size against its cap (call before and after reading: the size reported by
/// `fstat` and the bytes actually read).
pub fn check_len(file: &HostShareFile, len: u64) -> Result<(), HostShareError> {
    if len > file.max_len {
        return Err(HostShareError::FileTooLarge {
            name: file.name,
            len,
            max_len: file.max_len,
        });
    }
    Ok(())
}

/// The host share after copying: every file parsed that the init needs.
#[derive(Debug, Clone, PartialEq)]
pub struct HostShare {
    /// app-compose.json (exact bytes + parsed).
    pub app_compose: AppComposeFile,
    /// .sys-config.json.
    pub sys_config: SysConfig,
    /// .instance_info (default when absent).
    pub instance_info: InstanceInfo,
    /// .encrypted-env, if present.
    pub encrypted_env: Option<Vec<u8>>,
    /// .user-config, if present.
    pub user_config: Option<Vec<u8>>,
}

impl HostShare {
    /// Validates and parses the files read from the share (name → bytes).
    pub fn from_files(mut files: BTreeMap<String, Vec<u8>>) -> Result<Self, HostShareError> {
        if let Some(name) = files
            .keys()
            .find(|n| !HOST_SHARE_FILES.iter().any(|f| f.name == n.as_str()))
        {
            return Err(HostShareError::UnexpectedFile { name: name.clone() });
        }
        for file in HOST_SHARE_FILES {
            match files.get(file.name) {
                None if file.required => {
                    return Err(HostShareError::MissingRequiredFile { name: file.name });
                }
                None => {}
                Some(bytes) => check_len(&file, u64::try_from(bytes.len()).unwrap_or(u64::MAX))?,
            }
        }
        let mut take = |file: HostShareFile| files.remove(file.name);
        let app_compose = AppComposeFile::parse(take(APP_COMPOSE).unwrap_or_default())
            .map_err(HostShareError::ParseFile)?;
        let sys_config = SysConfig::parse(&take(SYS_CONFIG).unwrap_or_default())
            .map_err(HostShareError::ParseFile)?;
        let instance_info = match take(INSTANCE_INFO) {
            Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => {
                InstanceInfo::parse(&bytes).map_err(HostShareError::ParseFile)?
            }
            _ => InstanceInfo::default(),
        };
        Ok(Self {
            app_compose,
            sys_config,
            instance_info,
            encrypted_env: take(ENCRYPTED_ENV),
            user_config: take(USER_CONFIG),
        })
    }
}

/// How many bytes from the start of a block device [`filesystem_label`] needs.
pub const LABEL_PROBE_LEN: usize = 2048;

/// A filesystem type whose label [`filesystem_label`] can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelledFs {
    /// ext2, ext3 or ext4.
    Ext,
    /// FAT12/16 (also QEMU's `vvfat` default).
    Fat16,
    /// FAT32.
    Fat32,
}

/// The filesystem type and label in the first [`LABEL_PROBE_LEN`] bytes of a block device,
/// or `None` when it is none of the known filesystems. Never panics on arbitrary bytes.
///
/// * ext2/3/4: superblock at 1024, magic `0xEF53` at +56, `s_volume_name[16]` at +120
///   (NUL-padded).
/// * FAT: boot-sector signature `55 AA` at 510; FAT12/16 extended boot signature `0x29` at 38
///   with the 11-byte label at 43 and `FAT1x` at 54; FAT32 signature at 66, label at 71, `FAT32`
///   at 82. Labels are space-padded; `NO NAME` means none.
pub fn filesystem_label(head: &[u8]) -> Option<(LabelledFs, String)> {
    if let Some(label) = ext_label(head) {
        return Some((LabelledFs::Ext, label));
    }
    fat_label(head)
}

fn ext_label(head: &[u8]) -> Option<String> {
    const SB: usize = 1024;
    let magic = head.get(SB + 56..SB + 58)?;
    if magic != [0x53, 0xEF] {
        return None;
    }
    let name = head.get(SB + 120..SB + 136)?;
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

fn fat_label(head: &[u8]) -> Option<(LabelledFs, String)> {
    if head.get(510..512)? != [0x55, 0xAA] {
        return None;
    }
    let candidates = [
        (
            LabelledFs::Fat32,
            66usize,
            71usize,
            82usize,
            b"FAT32".as_slice(),
        ),
        (LabelledFs::Fat16, 38, 43, 54, b"FAT1".as_slice()),
    ];
    for (kind, sig_at, label_at, type_at, type_prefix) in candidates {
        let signature = head.get(sig_at).copied();
        let fs_type = head.get(type_at..type_at + type_prefix.len());
        if signature == Some(0x29) && fs_type == Some(type_prefix) {
            let raw = head.get(label_at..label_at + 11)?;
            let label = String::from_utf8_lossy(raw)
                .trim_end_matches([' ', '\0'])
                .to_owned();
            let label = if label == "NO NAME" {
                String::new()
            } else {
                label
            };
            return Some((kind, label));
        }
    }
    None
}

/// Whether the probed head of a device carries the host-share label.
pub fn is_host_share_device(head: &[u8]) -> bool {
    filesystem_label(head).is_some_and(|(_, label)| label == HOST_SHARE_LABEL)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_files() -> BTreeMap<String, Vec<u8>> {
        let mut m = BTreeMap::new();
        m.insert(
            "app-compose.json".to_owned(),
            br#"{"manifest_version":2,"name":"x"}"#.to_vec(),
        );
        m.insert(
            ".sys-config.json".to_owned(),
            br#"{"vm_config":"{}"}"#.to_vec(),
        );
        m
    }

    #[test]
    fn caps_match_dstack() {
        let caps: Vec<_> = HOST_SHARE_FILES
            .iter()
            .map(|f| (f.name, f.max_len, f.required))
            .collect();
        assert_eq!(
            caps,
            vec![
                ("app-compose.json", 52_428_800, true),
                (".sys-config.json", 32_768, true),
                (".instance_info", 10_240, false),
                (".encrypted-env", 262_144, false),
                (".user-config", 52_428_800, false),
            ]
        );
    }

    #[test]
    fn minimal_share_parses() {
        let share = HostShare::from_files(minimal_files()).unwrap();
        assert_eq!(share.app_compose.compose().name, "x");
        assert_eq!(share.instance_info, InstanceInfo::default());
        assert_eq!(share.encrypted_env, None);
    }

    #[test]
    fn optional_files_are_carried() {
        let mut files = minimal_files();
        files.insert(".instance_info".into(), br#"{"app_id":"00"}"#.to_vec());
        files.insert(".encrypted-env".into(), vec![1, 2, 3]);
        files.insert(".user-config".into(), b"cfg".to_vec());
        let share = HostShare::from_files(files).unwrap();
        assert_eq!(share.instance_info.app_id, vec![0]);
        assert_eq!(share.encrypted_env, Some(vec![1, 2, 3]));
        assert_eq!(share.user_config, Some(b"cfg".to_vec()));
    }

    #[test]
    fn missing_oversized_unexpected_and_malformed() {
        let mut files = minimal_files();
        files.remove("app-compose.json");
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::MissingRequiredFile {
                name: "app-compose.json"
            })
        ));
        let mut files = minimal_files();
        files.remove(".sys-config.json");
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::MissingRequiredFile {
                name: ".sys-config.json"
            })
        ));
        let mut files = minimal_files();
        files.insert(".sys-config.json".into(), vec![b' '; 32 * 1024 + 1]);
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::FileTooLarge {
                name: ".sys-config.json",
                len: 32_769,
                max_len: 32_768
            })
        ));
        let mut files = minimal_files();
        files.insert("../etc/passwd".into(), vec![]);
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::UnexpectedFile { .. })
        ));
        let mut files = minimal_files();
        files.insert("app-compose.json".into(), b"{".to_vec());
        assert!(matches!(
            HostShare::from_files(files),
            Err(HostShareError::ParseFile(
                AppComposeError::ParseAppCompose { .. }
            ))
        ));
        check_len(&ENCRYPTED_ENV, 256 * 1024).unwrap();
    }

    fn ext4_head(label: &[u8]) -> Vec<u8> {
        let mut head = vec![0u8; LABEL_PROBE_LEN];
        head[1024 + 56] = 0x53;
        head[1024 + 57] = 0xEF;
        head[1024 + 120..1024 + 120 + label.len()].copy_from_slice(label);
        head
    }

    fn fat_head(fat32: bool, label: &[u8; 11]) -> Vec<u8> {
        let mut head = vec![0u8; LABEL_PROBE_LEN];
        head[510] = 0x55;
        head[511] = 0xAA;
        let (sig, lab, ty, name): (usize, usize, usize, &[u8]) = if fat32 {
            (66, 71, 82, b"FAT32   ")
        } else {
            (38, 43, 54, b"FAT16   ")
        };
        head[sig] = 0x29;
        head[lab..lab + 11].copy_from_slice(label);
        head[ty..ty + 8].copy_from_slice(name);
        head
    }

    #[test]
    fn ext4_label() {
        let head = ext4_head(b"DSTACKSHR");
        assert_eq!(
            filesystem_label(&head),
            Some((LabelledFs::Ext, "DSTACKSHR".to_owned()))
        );
        assert!(is_host_share_device(&head));
        assert!(!is_host_share_device(&ext4_head(b"rootfs")));
        // A full 16-byte label without NUL terminator.
        assert_eq!(
            filesystem_label(&ext4_head(b"0123456789abcdef")).map(|l| l.1),
            Some("0123456789abcdef".to_owned())
        );
    }

    #[test]
    fn real_mke2fs_image_head() {
        // First 2 KiB of `mkfs.ext4 -L DSTACKSHR` (see testdata/README.md).
        let head = include_bytes!("../testdata/ext4-dstackshr.head");
        assert_eq!(
            filesystem_label(head),
            Some((LabelledFs::Ext, "DSTACKSHR".to_owned()))
        );
    }

    #[test]
    fn fat_labels() {
        let head = fat_head(false, b"DSTACKSHR  ");
        assert_eq!(
            filesystem_label(&head),
            Some((LabelledFs::Fat16, "DSTACKSHR".to_owned()))
        );
        assert!(is_host_share_device(&head));
        let head = fat_head(true, b"DSTACKSHR  ");
        assert_eq!(
            filesystem_label(&head),
            Some((LabelledFs::Fat32, "DSTACKSHR".to_owned()))
        );
        assert_eq!(
            filesystem_label(&fat_head(false, b"NO NAME    ")),
            Some((LabelledFs::Fat16, String::new()))
        );
    }

    #[test]
    fn junk_never_panics() {
        assert_eq!(filesystem_label(&[]), None);
        assert_eq!(filesystem_label(&[0xFF; 100]), None);
        assert_eq!(filesystem_label(&[0u8; LABEL_PROBE_LEN]), None);
        let mut head = ext4_head(b"x");
        head.truncate(1024 + 100); // magic present, label cut off
        assert_eq!(filesystem_label(&head), None);
        let mut head = vec![0u8; 512];
        head[510] = 0x55;
        head[511] = 0xAA;
        assert_eq!(filesystem_label(&head), None);
        for len in 0..LABEL_PROBE_LEN {
            let _ = filesystem_label(&fat_head(true, b"DSTACKSHR  ")[..len]);
            let _ = filesystem_label(&ext4_head(b"DSTACKSHR")[..len]);
        }
    }
}
