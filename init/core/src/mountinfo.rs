//! `/proc/self/mountinfo` parsing, for unmounting in reverse order at shutdown.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountinfoError {
    #[error("mountinfo line {line} has too few fields")]
    ShortLine { line: usize },
}

/// One mount point, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    pub target: String,
    pub fstype: String,
}

/// Decode the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(oct) = bytes.get(i + 1..i + 4)
            && oct.iter().all(|b| (b'0'..=b'7').contains(b))
        {
            let value = oct
                .iter()
                .fold(0u16, |acc, b| acc * 8 + u16::from(b - b'0'));
            if let Ok(v) = u8::try_from(value) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse the whole file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>, MountinfoError> {
    let mut out = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(' ').collect();
        let sep = fields.iter().position(|f| *f == "-");
        let (Some(sep), true) = (sep, fields.len() >= 7) else {
            return Err(MountinfoError::ShortLine { line: idx + 1 });
        };
        let (Some(fstype), Ok(mount_id), Ok(parent_id)) =
            (fields.get(sep + 1), fields[0].parse(), fields[1].parse())
        else {
            return Err(MountinfoError::ShortLine { line: idx + 1 });
        };
        out.push(MountEntry {
            mount_id,
            parent_id,
            target: unescape(fields[4]),
            fstype: (*fstype).to_owned(),
        });
    }
    Ok(out)
}

/// Targets to unmount at shutdown: everything but `/`, children before parents (reverse of the
/// kernel's listing order, which lists parents first).
pub fn unmount_order(entries: &[MountEntry]) -> Vec<String> {
    entries
        .iter()
        .rev()
        .filter(|e| e.target != "/")
        .map(|e| e.target.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
1 1 0:2 / / rw - rootfs rootfs rw
22 1 0:21 / /proc rw,nosuid,nodev,noexec - proc proc rw
23 1 0:22 / /sys rw,nosuid,nodev,noexec - sysfs sysfs rw
24 1 0:5 / /dev rw,nosuid - devtmpfs devtmpfs rw,size=1k
25 24 0:23 / /dev/pts rw - devpts devpts rw
26 23 0:24 / /sys/kernel/config rw shared:1 - configfs configfs rw
27 1 0:25 / /run/my\\040dir rw - tmpfs tmpfs rw
";

    #[test]
    fn parses_and_orders_children_first() {
        let e = parse(SAMPLE).unwrap();
        assert_eq!(e.len(), 7);
        assert_eq!(e[5].fstype, "configfs");
        assert_eq!(e[6].target, "/run/my dir");
        assert_eq!(
            unmount_order(&e),
            [
                "/run/my dir",
                "/sys/kernel/config",
                "/dev/pts",
                "/dev",
                "/sys",
                "/proc"
            ]
        );
    }

    #[test]
    fn short_lines_are_errors_not_panics() {
        assert_eq!(parse("1 2 3"), Err(MountinfoError::ShortLine { line: 1 }));
        parse("a b c d e f - x").unwrap_err();
        for cut in 0..SAMPLE.len() {
            let _ = parse(&SAMPLE[..cut]);
        }
        assert_eq!(unescape("a\\04"), "a\\04");
    }
}
