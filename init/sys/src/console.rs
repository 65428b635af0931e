//! The console: make sure PID 1 has stdin/stdout/stderr on /dev/console.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("open console {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("attach console to fd {fd}")]
    Dup {
        fd: i32,
        #[source]
        source: std::io::Error,
    },
}

fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor table; `fd` need not be open (EBADF then).
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// If any of fds 0-2 is closed (the kernel found no /dev/console in the initramfs), open
/// `console` and attach it to the missing ones. Returns whether anything was attached.
pub fn ensure_stdio(console: &Path) -> Result<bool, ConsoleError> {
    let missing: Vec<i32> = (0..=2).filter(|fd| !fd_is_open(*fd)).collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(console)
        .map_err(|source| ConsoleError::Open {
            path: console.display().to_string(),
            source,
        })?;
    for fd in missing {
        // SAFETY: `file` is an open descriptor owned by this function for the whole call and
        // `fd` is one of 0-2, which we just saw closed: dup2 does not close anything we own.
        let rc = unsafe { libc::dup2(file.as_raw_fd(), fd) };
        if rc == -1 {
            return Err(ConsoleError::Dup {
                fd,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdio_is_open_under_the_test_runner() {
        assert!(fd_is_open(2));
        assert!(!fd_is_open(-1));
        assert!(!ensure_stdio(Path::new("/nonexistent")).unwrap());
    }
}
