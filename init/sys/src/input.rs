//! The ACPI power button as an evdev input device (`button` + `evdev` modules in distribution
//! kernels): found through `/sys/class/input/eventN/device/name`.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use init_core::input::{INPUT_EVENT_SIZE, POWER_BUTTON_NAME, contains_power_press};

/// Device nodes of every input device named "Power Button".
pub fn find_power_buttons(sys_class_input: &Path, dev_input: &Path) -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(sys_class_input) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("event"))
        .filter(|e| {
            std::fs::read_to_string(e.path().join("device/name"))
                .is_ok_and(|n| n.trim_end() == POWER_BUTTON_NAME)
        })
        .map(|e| dev_input.join(e.file_name()))
        .collect();
    out.sort();
    out
}

/// An open power-button device.
#[derive(Debug)]
pub struct PowerButton(File);

impl PowerButton {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map(Self)
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Read what is pending; true if it contains a press.
    pub fn pressed(&mut self) -> bool {
        let mut buf = [0u8; INPUT_EVENT_SIZE * 16];
        let mut pressed = false;
        while let Ok(n) = self.0.read(&mut buf) {
            if n == 0 {
                break;
            }
            pressed |= contains_power_press(buf.get(..n).unwrap_or_default());
        }
        pressed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_power_button_in_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        for (ev, name) in [
            ("event0", "Power Button\n"),
            ("event1", "AT Keyboard\n"),
            ("mouse0", "Power Button\n"),
        ] {
            std::fs::create_dir_all(sys.path().join(ev).join("device")).unwrap();
            std::fs::write(sys.path().join(ev).join("device/name"), name).unwrap();
        }
        let found = find_power_buttons(sys.path(), Path::new("/dev/input"));
        assert_eq!(found, vec![PathBuf::from("/dev/input/event0")]);
    }
}
