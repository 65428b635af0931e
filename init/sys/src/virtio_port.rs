//! virtio-serial ports by name. Without udev there are no `/dev/virtio-ports/<name>` links, so
//! the port is found through `/sys/class/virtio-ports/vportNpM/name` and opened as
//! `/dev/vportNpM`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum VirtioPortError {
    #[error("open virtio port {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write to virtio port {name}")]
    Write {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// The device node of the port called `name`, if the guest has one.
pub fn find_port(sys_class: &Path, dev: &Path, name: &str) -> Option<PathBuf> {
    let mut candidates: Vec<_> = std::fs::read_dir(sys_class).ok()?.flatten().collect();
    candidates.sort_by_key(std::fs::DirEntry::file_name);
    candidates.into_iter().find_map(|entry| {
        let port_name = std::fs::read_to_string(entry.path().join("name")).ok()?;
        (port_name.trim_end_matches('\n') == name).then(|| dev.join(entry.file_name()))
    })
}

/// An open port, written line by line.
#[derive(Debug)]
pub struct VirtioPort {
    name: String,
    file: File,
}

impl VirtioPort {
    pub fn open(path: &Path, name: &str) -> Result<Self, VirtioPortError> {
        let file = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| VirtioPortError::Open {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            name: name.to_owned(),
            file,
        })
    }

    pub fn write_line(&mut self, line: &str) -> Result<(), VirtioPortError> {
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|source| VirtioPortError::Write {
                name: self.name.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_port_by_name_in_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        let dev = tempfile::tempdir().unwrap();
        for (port, name) in [
            ("vport0p1", "org.qemu.guest_agent.0\n"),
            ("vport1p1", "cvm.results\n"),
        ] {
            std::fs::create_dir(sys.path().join(port)).unwrap();
            std::fs::write(sys.path().join(port).join("name"), name).unwrap();
        }
        std::fs::create_dir(sys.path().join("vport2p1")).unwrap(); // no name file
        let found = find_port(sys.path(), dev.path(), "cvm.results").unwrap();
        assert_eq!(found, dev.path().join("vport1p1"));
        assert_eq!(find_port(sys.path(), dev.path(), "other"), None);
        assert_eq!(
            find_port(Path::new("/nonexistent"), dev.path(), "cvm.results"),
            None
        );

        std::fs::write(&found, b"").unwrap();
        let mut port = VirtioPort::open(&found, "cvm.results").unwrap();
        port.write_line("{\"event\":\"ready\"}\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&found).unwrap(),
            "{\"event\":\"ready\"}\n"
        );
    }
}
